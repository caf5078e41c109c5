"""ModelClient against real HTTP servers on loopback: batching, headers, ordering, failures, retries.

Each test starts a ``ThreadingHTTPServer`` whose handler calls a Python function per request, so a
test can play a well-behaved model or a misbehaving one (refusing large batches, hanging, dropping
connections, miscounting predictions) without mocking the HTTP layer.
"""

from __future__ import annotations

import io
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import numpy as np
import pandas as pd
import pytest

from analyzer.config.model import Predictor
from analyzer.errors import DependencyError, UserError
from analyzer.predict import (
    ModelClient,
    ModelEndpoint,
    ModelError,
    ModelTransportError,
    RetryPolicy,
    model_timeout_seconds,
    predicted_labels_for_bias,
    wait_until_healthy,
)
from analyzer.predict.client import retry_after_seconds
from analyzer.progress import Progress

WEIGHTS = np.array([0.5, -0.25, 1.0, 0.75])
FEATURES = ["a", "b", "c", "d"]
FAST_RETRY = RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05, max_elapsed_seconds=5)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, bytes] | tuple[int, bytes, dict[str, str]] | None  # None: drop the connection without answering


class ModelServer:
    """A loopback HTTP server answering POST /invocations with ``respond(request)``."""

    def __init__(self, respond: Callable[[Request], Reply], ping: Callable[[], int] = lambda: 200):
        self.requests: list[Request] = []
        self.release = threading.Event()  # set at teardown so hanging handlers return
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a SageMaker model server
            disable_nagle_algorithm = True  # else headers and body, sent apart, wait for a delayed ACK

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request(self.path, dict(self.headers), body)
                server.requests.append(request)
                reply = respond(request)
                if reply is None:
                    self.close_connection = True
                    return
                self._send(*reply)

            def do_GET(self) -> None:
                self._send(ping(), b"")

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def record_counts(self) -> list[int]:
        return [_csv_rows(r.body).shape[0] for r in self.requests if r.body]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ModelServer]]:
    servers: list[ModelServer] = []

    def start(respond: Callable[[Request], Reply], **kwargs: object) -> ModelServer:
        servers.append(ModelServer(respond, **kwargs))  # type: ignore[arg-type]
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _csv_rows(body: bytes) -> np.ndarray:
    return np.loadtxt(io.BytesIO(body), delimiter=",", ndmin=2)


def score(rows: np.ndarray) -> np.ndarray:
    # Written out rather than rows @ WEIGHTS: BLAS rounds differently for different batch sizes.
    logit = sum(rows[:, j] * w for j, w in enumerate(WEIGHTS))
    return 1 / (1 + np.exp(-logit))


def linear_csv(request: Request) -> Reply:
    """The toy model: one probability per CSV line, written round-trip exact."""
    return 200, "\n".join(repr(float(s)) for s in score(_csv_rows(request.body))).encode()


def data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(FEATURES)))


def client(server: ModelServer, predictor: Predictor | None = None, **options: object) -> ModelClient:
    options = {"retry": FAST_RETRY, "timeout": 5.0, **options}
    return ModelClient(server.url, predictor or Predictor(content_type="text/csv"), FEATURES, **options)  # type: ignore[arg-type]


# -- well-behaved models ----------------------------------------------------------------------------

def test_csv_predictions_in_order_across_batches(serve, caplog):
    server = serve(linear_csv)
    rows = data(2000)
    with caplog.at_level(logging.INFO, logger="analyzer.predict"), \
            client(server, max_payload_bytes=8_000, concurrency=4) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))  # floats travel bit-exact both ways
    assert len(server.requests) > 10 and sum(server.record_counts()) == 2000
    assert max(len(r.body) for r in server.requests) <= 8_000
    assert caplog.text.count("to fit max payload size limit.") == 1
    assert "Model endpoint delivered" in caplog.text


def test_record_count_limit(serve):
    server = serve(linear_csv)
    with client(server, max_records_per_request=7) as model:
        model.predict(data(50))
    assert max(server.record_counts()) == 7


def test_requests_are_equal_parts_and_a_small_call_still_uses_every_concurrent_slot(serve):
    server = serve(linear_csv)
    with client(server, max_records_per_request=40) as model:
        model.predict(data(100))  # 34 + 34 + 32 rather than 40 + 40 + 20: the parts finish together
    assert sorted(server.record_counts()) == [32, 34, 34]
    server = serve(linear_csv)
    with client(server, concurrency=4) as model:
        out = model.predict(data(20_000))  # fits one request, sent as four so that four model workers get work
    assert server.record_counts() == [5_000] * 4 and np.array_equal(out.scores[:, 0], score(data(20_000)))
    server = serve(linear_csv)
    with client(server, concurrency=4) as model:
        model.predict(data(7_000))  # parts of at least 4,000 records: the hand-off costs more than it saves
    assert server.record_counts() == [7_000]
    server = serve(linear_csv)
    with client(server, concurrency=4, spread=False, max_records_per_request=9_000) as model:
        out = model.predict(data(20_000))  # a caller running calls side by side: cut by the caps alone
    assert sorted(server.record_counts()) == [6_666, 6_667, 6_667]
    assert np.array_equal(out.scores[:, 0], score(data(20_000)))


def test_headers_and_path(serve):
    server = serve(linear_csv)
    predictor = Predictor(content_type="text/csv", accept_type="text/csv", custom_attributes="c=1;mode=test",
                          target_model="model-a.tar.gz")
    with client(server, predictor) as model:
        model.predict(data(3))
    request = server.requests[0]
    assert request.path == "/invocations"
    assert request.headers["Content-Type"] == "text/csv"
    assert request.headers["Accept"] == "text/csv"
    assert request.headers["X-Amzn-SageMaker-Custom-Attributes"] == "c=1;mode=test"
    assert request.headers["X-Amzn-SageMaker-Target-Model"] == "model-a.tar.gz"


def test_jsonlines_model(serve):
    def respond(request: Request) -> Reply:
        rows = np.array([json.loads(line)["features"] for line in request.body.split(b"\n")])
        return 200, b"\n".join(json.dumps({"predicted_label": int(s > 0.5), "score": s}).encode()
                               for s in score(rows).tolist())

    server = serve(respond)
    predictor = Predictor(content_type="application/jsonlines", content_template='{"features":$features}',
                          label="predicted_label", probability="score")
    rows = data(300)
    with client(server, predictor, max_payload_bytes=5_000) as model:
        out = model.predict(pd.DataFrame(rows, columns=FEATURES))
    assert np.array_equal(out.scores[:, 0], score(rows))
    assert predicted_labels_for_bias(out).tolist() == (score(rows) > 0.5).astype(int).tolist()
    assert server.requests[0].headers["Content-Type"] == "application/jsonlines"


def test_json_model_with_records_template(serve):
    def respond(request: Request) -> Reply:
        rows = np.array([[r[name] for name in FEATURES] for r in json.loads(request.body)["instances"]])
        return 200, json.dumps({"predictions": [{"score": s} for s in score(rows).tolist()]}).encode()

    server = serve(respond)
    predictor = Predictor(content_type="application/json", content_template='{"instances": $records}',
                          record_template="$features_kvp", probability="predictions[*].score")
    rows = data(120)
    with client(server, predictor, max_payload_bytes=3_000) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))
    assert len(server.requests) > 1


def test_single_record_template_sends_one_request_per_record(serve):
    def respond(request: Request) -> Reply:
        record = json.loads(request.body)
        return 200, json.dumps({"score": float(score(np.array([[record[n] for n in FEATURES]]))[0])}).encode()

    server = serve(respond)
    predictor = Predictor(content_type="application/json", content_template="$record",
                          record_template="$features_kvp", probability="score")
    with client(server, predictor) as model:
        out = model.predict(data(9))
    assert len(server.requests) == 9
    assert np.array_equal(out.scores[:, 0], score(data(9)))


def test_npy_requests(serve):
    def respond(request: Request) -> Reply:
        rows = np.load(io.BytesIO(request.body))
        return 200, json.dumps(score(rows).tolist()).encode()

    server = serve(respond)
    predictor = Predictor(content_type="application/x-npy", accept_type="application/json")
    with client(server, predictor, max_payload_bytes=1_000) as model:
        out = model.predict(data(100))
    assert np.array_equal(out.scores[:, 0], score(data(100)))
    assert all(len(r.body) <= 1_000 for r in server.requests)


def test_results_in_input_order_whatever_the_completion_order(serve):
    generator = random.Random(4)

    def respond(request: Request) -> Reply:
        time.sleep(generator.uniform(0, 0.03))
        return linear_csv(request)

    server = serve(respond)
    rows = data(400)
    with client(server, max_records_per_request=10, concurrency=8) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))


def test_several_requests_in_flight(serve):
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most seen

    def respond(request: Request) -> Reply:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return linear_csv(request)

    server = serve(respond)
    with client(server, max_records_per_request=5, concurrency=4) as model:
        model.predict(data(100))
    assert in_flight[1] == 4


def test_empty_input_sends_nothing(serve):
    server = serve(linear_csv)
    with client(server) as model:
        out = model.predict(np.empty((0, 4)))
    assert len(out) == 0 and out.scores.shape == (0, 0)
    assert server.requests == []


@pytest.mark.parametrize("rows", [100, 7])  # batches answered concurrently; a single request
def test_progress_counts_the_rows_as_their_batches_are_answered(serve, caplog, rows):
    server = serve(linear_csv)
    with caplog.at_level(logging.INFO, logger="analyzer.progress"), \
            client(server, max_records_per_request=10) as model, \
            Progress("Predictions", total=rows, stream=StringIO(), interval=0.0) as bar:
        model.predict(data(rows), progress=bar)
    assert bar.done == rows
    lines = [record.getMessage() for record in caplog.records if record.name == "analyzer.progress"]
    assert lines[-1].startswith(f"Predictions: {rows:,} of {rows:,} rows (100%), ")
    assert len(lines) == -(-rows // 10)  # one line per answered batch (interval 0)


# -- models that refuse batches ---------------------------------------------------------------------

def test_model_error_for_large_batches_splits_them(serve, caplog):
    def respond(request: Request) -> Reply:
        if _csv_rows(request.body).shape[0] > 6:
            return 500, b"batch too large"
        return linear_csv(request)

    server = serve(respond)
    rows = data(200)
    with caplog.at_level(logging.INFO, logger="analyzer.predict"), \
            client(server, max_records_per_request=50, concurrency=2) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))
    assert caplog.text.count("Fallback to per-record prediction because of model error.") == 1
    # later batches start at the size that worked instead of failing again
    assert server.record_counts()[-1] <= 6
    assert sum(count > 6 for count in server.record_counts()) < 10


def test_payload_too_large_splits_batches(serve):
    def respond(request: Request) -> Reply:
        return (413, b"Request Entity Too Large") if len(request.body) > 600 else linear_csv(request)

    server = serve(respond)
    rows = data(100)
    with client(server) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))


def test_connection_dropped_for_large_batches_splits_them_after_one_retry(serve):
    server = serve(lambda request: None if _csv_rows(request.body).shape[0] > 4 else linear_csv(request))
    rows = data(16)
    with client(server) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))
    # retried as is once (a keep-alive connection the server closed), then split to find what crashes it
    assert server.record_counts()[:3] == [16, 16, 8]


def test_connection_dropped_by_one_record_is_a_transport_failure_naming_it(serve):
    def respond(request: Request) -> Reply:
        return None if (_csv_rows(request.body)[:, 0] > 100).any() else linear_csv(request)

    server = serve(respond)
    rows = data(16)
    rows[11, 0] = 500.0
    with client(server) as model, pytest.raises(ModelTransportError) as caught:
        model.predict(rows)
    assert not isinstance(caught.value, UserError) and isinstance(caught.value, DependencyError)
    assert "gave no answer for row 11 after 3 attempt(s): connection failed" in str(caught.value)
    assert not hasattr(caught.value, "row")  # SHAP maps a .row to a record the model refused: not this


def test_a_timeout_is_not_split_nor_retried(serve):
    def respond(request: Request) -> Reply:
        server.release.wait(10)
        return linear_csv(request)

    server = serve(respond)
    started = time.monotonic()
    with client(server, timeout=0.3) as model, pytest.raises(ModelTransportError) as caught:
        model.predict(data(8))
    assert time.monotonic() - started < 3
    assert f"The model at {server.url}/invocations did not answer within 0.3 s (rows 0 to 7)" in str(caught.value)
    assert "LUCENT_MODEL_TIMEOUT_SECONDS" in str(caught.value)
    assert server.record_counts() == [8]  # one request: no halves, no retry


def test_the_wait_covers_retries_and_smaller_batches(serve):
    # Busy (503) for ever: retried with backoff until the batch's time is up, not attempts x backoff.
    server = serve(lambda request: (503, b"busy"))
    slow_retry = RetryPolicy(attempts=50, backoff_seconds=0.1, max_backoff_seconds=0.1, max_elapsed_seconds=60)
    started = time.monotonic()
    with client(server, timeout=0.5, retry=slow_retry) as model, \
            pytest.raises(ModelTransportError, match=r"did not answer within 0.5 s \(rows 0 to 7; last attempt: "
                                                     r"HTTP 503: 'busy'\)"):
        model.predict(data(8))
    assert time.monotonic() - started < 3
    assert 2 <= len(server.requests) < 10
    assert server.record_counts() == [8] * len(server.requests)  # throttling is not split


def test_every_answer_renews_the_wait(serve):
    # 12 one-record requests of 0.1 s each take longer than the timeout together; each is answered in time.
    def respond(request: Request) -> Reply:
        time.sleep(0.1)  # the model's own pace
        return linear_csv(request)

    server = serve(respond)
    rows = data(12)
    with client(server, timeout=0.5, max_records_per_request=1, concurrency=1) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))


def test_a_record_the_model_rejects_is_named(serve):
    def respond(request: Request) -> Reply:
        rows = _csv_rows(request.body)
        return (400, b"feature c must be below 3") if (rows[:, 2] >= 3).any() else linear_csv(request)

    server = serve(respond)
    rows = data(40)
    rows[17, 2] = 5.0
    with client(server) as model, pytest.raises(ModelError, match=r"row 17: HTTP 400: 'feature c must be below 3'"):
        model.predict(rows)


def test_fewer_predictions_than_records(serve):
    server = serve(lambda request: (200, b"0.5"))
    with client(server, max_records_per_request=4) as model, \
            pytest.raises(UserError, match=r"sent 4 record\(s\) \(rows 0 to 3\), got 1 line"):
        model.predict(data(4))


def test_wrong_count_names_the_batch_first_row(serve):
    def respond(request: Request) -> Reply:
        n = _csv_rows(request.body).shape[0]
        extra = 1 if len(server.requests) == 3 else 0  # the third request (rows 10 to 14) gets one too many
        return 200, b"\n".join([b"0.5"] * (n + extra))

    server = serve(respond)
    with client(server, max_records_per_request=5, concurrency=1) as model, \
            pytest.raises(UserError, match=r"rows 10 to 14\), got 6 line"):
        model.predict(data(30))


def test_non_numeric_scores(serve):
    server = serve(lambda request: (200, b"0.5\nhigh\n0.1"))
    with client(server) as model, pytest.raises(UserError, match=r"row 1 is not a number: 'high'"):
        model.predict(data(3))


def test_label_not_in_label_headers(serve):
    server = serve(lambda request: (200, b'{"label":"cat"}\n{"label":"cow"}'))
    predictor = Predictor(content_type="application/jsonlines", content_template="$features", label="label",
                          label_headers=["cat", "dog"])
    with client(server, predictor) as model:
        out = model.predict(data(2))
    with pytest.raises(UserError, match="'cow' .*not one of predictor.label_headers"):
        predicted_labels_for_bias(out)


# -- transient failures -------------------------------------------------------------------------------

def failing_first(n_failures: int, failure: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
    calls = iter(range(10**6))
    lock = threading.Lock()

    def respond(request: Request) -> Reply:
        with lock:
            call = next(calls)
        return failure(request) if call < n_failures else linear_csv(request)

    return respond


@pytest.mark.parametrize(("failure", "failures"), [
    (lambda request: (503, b"busy"), 2),
    (lambda request: (429, b"throttled"), 2),
    (lambda request: None, 1),  # connection closed mid-request (twice: the batch is split, see above)
])
def test_transient_failures_are_retried(serve, failure, failures):
    server = serve(failing_first(failures, failure))
    rows = data(20)
    with client(server) as model:
        out = model.predict(rows)
    assert np.array_equal(out.scores[:, 0], score(rows))
    assert server.record_counts() == [20] * (failures + 1)  # the failures, then the same batch again


def test_the_batch_client_waits_what_retry_after_says_within_its_cap(serve):
    # With a 60 s backoff the retry would pass the 5 s wait for an answer: it is sent at once, as "Retry-After: 0"
    # says. The batch job and the endpoint's explainer share this code (RetryPolicy, ModelClient._post).
    server = serve(failing_first(1, lambda request: (503, b"busy", {"Retry-After": "0"})))
    waits_long = RetryPolicy(attempts=3, backoff_seconds=60, max_backoff_seconds=60)
    rows = data(5)
    with client(server, retry=waits_long) as model:
        assert np.array_equal(model.predict(rows).scores[:, 0], score(rows))
    assert server.record_counts() == [5, 5]


@pytest.mark.parametrize(("header", "seconds"), [
    ("0", 0.0), ("2", 2.0), (" 1.5 ", 1.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date past: now
    (None, None), ("", None), ("-3", None), ("soon", None), ("nan", None), ("inf", None),
])
def test_retry_after_values(header, seconds):
    assert retry_after_seconds(header) == seconds
    policy = RetryPolicy(max_backoff_seconds=1.0)
    assert policy.delay(1, 3600.0) == 1.0 and policy.delay(3, 0.25) == 0.25  # capped; else as sent


def test_retry_after_as_a_date_to_come():
    from email.utils import formatdate

    waited = retry_after_seconds(formatdate(time.time() + 120, usegmt=True))
    assert waited is not None and 118 <= waited <= 120


def test_server_error_for_one_record_is_retried(serve):
    server = serve(failing_first(2, lambda request: (500, b"warming up")))
    with client(server) as model:
        out = model.predict(data(1))
    assert out.scores[0, 0] == score(data(1))[0]
    assert len(server.requests) == 3


def test_server_error_for_one_record_is_retried_then_reported(serve):
    server = serve(lambda request: (500, b"internal error"))
    with client(server) as model, pytest.raises(ModelError, match=r"row 0: HTTP 500: 'internal error' \(after 3"):
        model.predict(data(1))
    assert len(server.requests) == 3


def test_hanging_model_times_out(serve):
    def respond(request: Request) -> Reply:
        server.release.wait(10)
        return linear_csv(request)

    server = serve(respond)
    started = time.monotonic()
    with client(server, timeout=0.2, retry=RetryPolicy(attempts=2, backoff_seconds=0.01)) as model, \
            pytest.raises(ModelTransportError, match=r"did not answer within 0.2 s \(row 0\)"):
        model.predict(data(1))
    assert time.monotonic() - started < 5


def test_unreachable_model(serve):
    server = serve(linear_csv)
    url = server.url
    server.close()
    model = ModelClient(url, Predictor(content_type="text/csv"), FEATURES, retry=FAST_RETRY)
    with model, pytest.raises(ModelTransportError, match=r"gave no answer for rows 0 to 4 after 3 attempt\(s\): "
                                                         r"cannot connect"):
        model.predict(data(5))


def test_the_endpoint_password_is_not_in_messages(serve):
    server = serve(lambda request: (400, b"no"))
    url = server.url.replace("http://", "http://lucent:hunter2@")
    with ModelClient(url, Predictor(content_type="text/csv"), FEATURES, retry=FAST_RETRY) as model, \
            pytest.raises(ModelError) as caught:
        model.predict(data(1))
    assert "hunter2" not in str(caught.value) and "http://***@127.0.0.1" in str(caught.value)


# -- the wait's configuration --------------------------------------------------------------------------

def test_model_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv("LUCENT_MODEL_TIMEOUT_SECONDS", raising=False)
    assert model_timeout_seconds() == 600.0
    monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", "2.5")
    assert model_timeout_seconds() == 2.5
    endpoint = ModelEndpoint("http://127.0.0.1:1", Predictor(content_type="text/csv"), tuple(FEATURES))
    assert endpoint.timeout == 2.5
    with endpoint.client() as model:
        assert model.timeout == 2.5
    for bad in ("0", "-1", "ten", "nan", "inf"):
        monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", bad)
        with pytest.raises(UserError, match=f"LUCENT_MODEL_TIMEOUT_SECONDS='{bad}': must be a positive number"):
            model_timeout_seconds()


# -- health check -------------------------------------------------------------------------------------

def test_wait_until_healthy(serve):
    ready_at = time.monotonic() + 0.3
    server = serve(linear_csv, ping=lambda: 200 if time.monotonic() >= ready_at else 503)
    waited = wait_until_healthy(server.url, timeout=5, interval=0.05)
    assert 0.2 <= waited < 5


def test_wait_until_healthy_gives_up(serve):
    server = serve(linear_csv, ping=lambda: 500)
    with pytest.raises(ModelTransportError, match=r"did not become healthy within 0.3 s \(GET /ping: HTTP 500\)"):
        wait_until_healthy(server.url, timeout=0.3, interval=0.05)
