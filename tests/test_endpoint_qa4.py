"""``lucent endpoint``: the stop with kept-alive clients, model failures (a refused record, a crashing worker),
the capture's stop bound and temporary files, and the log's volume under failures (QA round 4)."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from analyzer.config.model import Predictor
from analyzer.errors import UserError
from analyzer.predict import ModelClient
from container.capture import CaptureWriter
from container.endpoint.cli import open_endpoint
from container.endpoint.config import parse_endpoint_config
from tests.conftest import FakeContainer, http_server

REPO = Path(__file__).resolve().parents[1]
NAME = "qa4-endpoint"
CALLS = "LUCENT_TEST_MODEL_CALLS"  # the handler script appends one line per predict to this file

# predict_fn logs each call (rows, first feature of the first row), and its worker kills itself on a
# record whose first feature is 999: what an OOM kill or a segfault on a poison record looks like.
HANDLER = """\
import os, signal, joblib, numpy as np

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    X = np.asarray(data, dtype=float)
    with open(os.environ["LUCENT_TEST_MODEL_CALLS"], "a") as calls:
        calls.write(f"{X.shape[0]} {X[0, 0]:g}\\n")
    if (X[:, 0] == 999).any():
        os.kill(os.getpid(), signal.SIGKILL)
    return model.predict_proba(X)
"""


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def model_folder(folder: Path, handler: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    features = np.random.default_rng(0).normal(size=(200, 4))
    joblib.dump(LogisticRegression().fit(features, features[:, 0] + features[:, 1] > 0), folder / "model.joblib")
    if handler:
        (folder / "code").mkdir()
        (folder / "code" / "inference.py").write_text(HANDLER)
    return folder


def explained(**clarify) -> dict:
    return {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0"}},
        "InferenceConfig": {"FeatureHeaders": ["a", "b", "c", "d"], "LabelHeaders": ["no", "yes"]}, **clarify}}}


def capture_config(destination: str) -> dict:
    return {"DataCaptureConfig": {"InitialSamplingPercentage": 100, "DestinationS3Uri": destination,
                                  "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]}}


class Endpoint:
    """`lucent endpoint --model-dir` in a process of its own; its stderr is read by a thread into ``lines``."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self.url: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            if self.url is None and (found := re.search(r"in service at (http://\S+)", line)):
                self.url = found.group(1)
            self.lines.append(line)

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(10)
        return code, time.monotonic() - started


@contextmanager
def endpoint_process(tmp_path: Path, document: dict, *, handler: bool = False,
                     env: dict[str, str] | None = None) -> Iterator[Endpoint]:
    folder = model_folder(tmp_path / "model", handler)
    (tmp_path / "config.json").write_text(json.dumps(document))
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "endpoint", "--config",
                                str(tmp_path / "config.json"), "--endpoint-name", NAME, "--model-dir", str(folder),
                                "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, CALLS: str(tmp_path / "calls.txt"), **(env or {})})
    running = Endpoint(process)
    try:
        wait_for(lambda: running.url is not None or process.poll() is not None, 120, "the endpoint to start")
        assert running.url is not None, running.log()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "text/csv", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ping(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def calls(tmp_path: Path) -> list[tuple[int, float]]:
    path = tmp_path / "calls.txt"
    if not path.exists():
        return []
    return [(int(rows), float(first)) for rows, first in (line.split() for line in path.read_text().splitlines())]


def captured_ids(folder: Path) -> list[str]:
    return [json.loads(line)["eventMetadata"].get("inferenceId") for path in folder.rglob("*.jsonl")
            for line in path.read_text().splitlines()]


# -- 1. SIGTERM with keep-alive clients -----------------------------------------------------------------


def test_sigterm_closes_kept_alive_connections_and_captures_every_answer(tmp_path: Path) -> None:
    """8 keep-alive clients sending steadily, SIGTERM: the endpoint answers what it has started with
    Connection: close, starts nothing new on any connection, exits within the bound, no accepted request
    is answered 424 (the model server stopped under it), and every 200 answer is in the capture."""
    clients, answers, stopped = 8, [], threading.Event()
    lock = threading.Lock()
    with endpoint_process(tmp_path, capture_config(str(tmp_path / "capture"))) as running:
        port = running.port

        def client(number: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            sequence = 0
            try:
                while True:
                    inference_id = f"c{number}-{sequence}"
                    sequence += 1
                    connection.request("POST", "/invocations", b"0.5,1,2,3",
                                       {"Content-Type": "text/csv", "X-Amzn-SageMaker-Inference-Id": inference_id})
                    response = connection.getresponse()
                    response.read()
                    with lock:
                        answers.append((inference_id, response.status))
                    if response.will_close:  # Connection: close: the endpoint is stopping
                        return
            except (OSError, http.client.HTTPException):  # closed while idle: that request was not started
                return
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(answers) >= 40 * clients, 60, "steady traffic")
        stopped.set()
        code, seconds = running.stop(timeout=60)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), "a client is still being served after the endpoint exited"
    assert code == 0 and seconds < 30, (code, seconds)
    statuses = {status for _, status in answers}
    assert statuses == {200}, f"answers other than 200: {sorted(statuses)}"
    answered = {inference_id for inference_id, _ in answers}
    in_capture = captured_ids(tmp_path / "capture")
    assert set(in_capture) == answered and len(in_capture) == len(answered)
    assert f"Capture flushed: {len(answered)} record(s) written, 0 dropped" in running.log()


# -- 2. a refused record does not slow later requests ---------------------------------------------------


def test_a_refused_record_changes_nothing_for_later_explained_requests(tmp_path: Path) -> None:
    """The model refuses an inf; the next explained request makes as many model calls as before it (the
    batch job's "later batches start at the smaller size" made it one synthetic row per call)."""
    with endpoint_process(tmp_path, explained(), handler=True) as running:
        port = running.port
        before = len(calls(tmp_path))
        assert post(port, b"0.5,1,2,3")[0] == 200
        per_request = len(calls(tmp_path)) - before
        assert per_request == 2  # the caller's own call and one call for the synthetic rows
        status, body = post(port, b"1e309,1,2,3")
        assert status == 424, body
        refused = len(calls(tmp_path)) - before - per_request
        for _ in range(3):
            before = len(calls(tmp_path))
            status, body = post(port, b"0.5,1,2,3")
            assert status == 200 and len(json.loads(body)["explanations"]["kernel_shap"]) == 1
            assert len(calls(tmp_path)) - before == per_request
        assert refused <= 2, f"{refused} model calls for one refused request (a halving search)"
        code, _ = running.stop(timeout=60)
    assert code == 0
    # 7. the batch job's request summary is not the endpoint's: no "Model endpoint delivered ..." line
    assert "Model endpoint delivered" not in running.log()


def test_the_batch_clients_request_summary_and_fallback_are_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    """The batch job's client (online=False, the default) still halves a refused batch, keeps the smaller
    size for later batches and logs its request summary."""

    class RefusesNegatives(FakeContainer):
        def do_POST(self) -> None:  # noqa: N802 -- http.server API
            rows = [line for line in self.request_body().decode().splitlines() if line]
            if any(line.startswith("-") for line in rows):
                self.answer(400, b"negative")
            else:
                self.answer(200, "\n".join("0.5" for _ in rows).encode())

    with http_server(RefusesNegatives) as server, caplog.at_level(logging.INFO, "analyzer.predict.client"):
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rows = np.array([[1.0], [2.0], [-3.0], [4.0]])
        batch = ModelClient(url, Predictor(content_type="text/csv"), ["x"], concurrency=1)
        with pytest.raises(Exception, match="row 2"):
            batch.predict(rows)
        assert batch._records_cap == 1
        batch.close()
        online = ModelClient(url, Predictor(content_type="text/csv"), ["x"], concurrency=1, online=True)
        with pytest.raises(Exception, match="rows 0 to 3"):
            online.predict(rows)
        assert online._records_cap > 1 and online.stats.requests == 1
        online.close()
    summaries = [r.getMessage() for r in caplog.records if "Model endpoint delivered" in r.getMessage()]
    assert len(summaries) == 1


# -- 3. a request that crashes a worker is sent once ----------------------------------------------------


def test_a_request_that_kills_a_model_worker_is_sent_once(tmp_path: Path) -> None:
    """A worker dies on the record: the endpoint answers 424 without sending the record again (on a new
    connection, or to the explainer's retries and halving), and serves again once the model server has
    replaced the worker."""
    with endpoint_process(tmp_path, explained(EnableExplanations="`false`"), handler=True) as running:
        port = running.port
        for _ in range(3):  # kept-alive connections to the model server, idle when the poison record comes
            assert post(port, b"0.5,1,2,3")[0] == 200
        status, body = post(port, b"999,1,2,3")
        assert status == 424 and json.loads(body)["OriginalStatusCode"] == 0, body
        assert [call for call in calls(tmp_path) if call[1] == 999] == [(1, 999.0)]
        wait_for(lambda: ping(port) == 200 and post(port, b"0.5,1,2,3")[0] == 200, 60, "the model server to recover")
        # Explained: the caller's call and the synthetic rows' call run side by side, each sent at most once
        # (the one that reaches the worker first kills it; the other may then never reach predict).
        before = len(calls(tmp_path))
        status, body = post(port, b"999,1,2,3", {"X-Amzn-SageMaker-Enable-Explanations": "`true`"})
        assert status == 424, body
        poisoned = [call for call in calls(tmp_path)[before:] if call[1] == 999]
        assert 1 <= len(poisoned) <= 2 and poisoned.count((1, 999.0)) <= 1, poisoned
        assert len([rows for rows, _ in poisoned if rows > 1]) <= 1, poisoned
        wait_for(lambda: ping(port) == 200 and post(port, b"0.5,1,2,3")[0] == 200, 60, "the model server to recover")
        assert running.process.poll() is None


# -- 4. the capture's flush on stop is bounded ----------------------------------------------------------


@contextmanager
def silent_tcp_server() -> Iterator[int]:
    """Accepts connections on loopback and never answers; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()


def test_sigterm_with_an_s3_destination_that_never_answers_is_bounded(tmp_path: Path) -> None:
    s3_variables = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "LUCENT_CAPTURE_FLUSH_SECONDS": "2"}
    with silent_tcp_server() as port:
        s3_variables["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        with endpoint_process(tmp_path, capture_config("s3://capture-bucket/prefix"), env=s3_variables) as running:
            for _ in range(5):
                assert post(running.port, b"0.5,1,2,3")[0] == 200
            code, seconds = running.stop(timeout=60)
    assert code == 0 and seconds < 15, (code, seconds)
    text = running.log()
    assert re.search(r"not written and published within 2 s of the stop \(LUCENT_CAPTURE_FLUSH_SECONDS\): "
                     r"5 record\(s\) dropped", text), text
    assert "Capture flushed: 0 record(s) written, 5 dropped" in text


def test_a_bad_flush_bound_is_refused_at_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_endpoint_config(capture_config(str(tmp_path / "capture")))
    monkeypatch.setenv("LUCENT_CAPTURE_FLUSH_SECONDS", "soon")
    with pytest.raises(UserError, match=r"LUCENT_CAPTURE_FLUSH_SECONDS='soon': must be a positive number"), \
            open_endpoint(config, NAME, "http://127.0.0.1:9"):
        pass


# -- 5. no temporary file left behind -------------------------------------------------------------------


def _writer(folder: Path) -> CaptureWriter:
    return CaptureWriter(str(folder), NAME, "AllTraffic", sampling_percentage=100, capture_input=True,
                         capture_output=True, csv_types=["text/csv"], json_types=[], disk_usage=lambda _: 0.0)


WHEN = datetime(2026, 12, 7, 9, 35, 37, tzinfo=UTC)


def _submit(writer: CaptureWriter, count: int) -> None:
    for number in range(count):
        assert writer.submit(input_body=b"1,2,3", input_content_type="text/csv", output_body=b"0.5",
                             output_content_type="text/csv", inference_id=f"id-{number}", inference_time=WHEN)


def test_a_capture_file_whose_folder_was_replaced_leaves_no_temporary_file(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "capture")
    _submit(writer, 20)
    hour = tmp_path / "capture" / NAME / "AllTraffic" / "2026" / "12" / "07" / "09"
    wait_for(lambda: writer.queued == 0 and list(hour.glob(".*.tmp")), 10, "the records to be written")
    moved = tmp_path / "moved"
    hour.rename(moved)
    hour.write_text("not a folder")
    writer.close(10)
    assert list(moved.iterdir()) == []
    assert writer.captured == 0 and writer.dropped_by_reason["publish_failed"] == 20


def test_a_capture_file_that_fills_the_disk_leaves_no_temporary_file(tmp_path: Path) -> None:
    """ENOSPC on a write (simulated: a full disk cannot be made here), after some records went in."""
    writer = _writer(tmp_path / "capture")
    _submit(writer, 5)
    hour = tmp_path / "capture" / NAME / "AllTraffic" / "2026" / "12" / "07" / "09"
    wait_for(lambda: writer.queued == 0 and list(hour.glob(".*.tmp")), 10, "the records to be written")

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    (opened,) = writer._open.values()
    real, opened.handle = opened.handle, Full()
    real.close()
    _submit(writer, 3)
    writer.close(10)
    assert list(hour.glob(".*")) == []  # no temporary file
    (published,) = hour.glob("*.jsonl")
    assert len(published.read_text().splitlines()) == 2
    assert writer.dropped_by_reason["publish_failed"] == 6  # the 5 in the file and the one that failed
    assert writer.captured == 2  # the next two went to a new file


# -- 6. failed invocations do not flood the log ---------------------------------------------------------


def test_failed_invocations_are_summarised_in_the_log_and_counted_exactly(caplog: pytest.LogCaptureFixture) -> None:
    class Down(FakeContainer):
        def do_POST(self) -> None:  # noqa: N802 -- http.server API
            self.request_body()
            self.answer(500, b"the model is down")

    with http_server(Down) as model, caplog.at_level(logging.WARNING, "lucent.endpoint"):
        url = f"http://127.0.0.1:{model.server_address[1]}"
        with open_endpoint(parse_endpoint_config({}), NAME, url) as parts:
            thread = threading.Thread(target=parts.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            try:
                for _ in range(200):
                    assert post(parts.server.server_address[1], b"1,2,3,4")[0] == 424
                metrics = parts.app.metrics.render(None)
            finally:
                parts.server.shutdown()
    assert 'lucent_endpoint_errors_total{type="ModelError"} 200' in metrics
    lines = [record.getMessage() for record in caplog.records if record.name == "lucent.endpoint"]
    failures = [line for line in lines if "ModelError" in line or "failed invocation" in line]
    assert len(failures) == 2, failures  # the first failure, then the count of the others when it stopped
    assert "the model is down" in failures[0]
    assert failures[1].startswith("199 more failed invocation(s)")
