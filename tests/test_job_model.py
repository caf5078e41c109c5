"""Post-training bias from a real model: the built-in sidecar, an existing endpoint, and their faults."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from container.demo import COLUMNS, FEATURES, MODEL_DEMO_CONFIG, write_demo_job
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, http_server
from tests.test_job import assert_same_metrics


def descendants(pid: int) -> set[int]:
    """Live processes whose parent chain (``PPid`` in /proc) leads to ``pid``: what it started, and what
    those started. Other jobs' processes on the machine are not counted."""
    parent_of = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if not fields.get("State", "").startswith("Z"):
            parent_of[int(entry)] = int(fields["PPid"])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def lucent_children() -> list[int]:
    """Model-server processes started by this test process (or by a job it started) still alive."""
    alive = []
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"container.sidecar" in cmdline:
            alive.append(pid)
    return alive


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.02)


@pytest.fixture
def model_job(tmp_path) -> JobRoot:
    # These tests are about the built-in model server (its lifecycle, its faults, how the job reports
    # them), which a model folder only gets with lucent_scoring "server" (tests/test_inprocess_scoring.py:
    # the default, in process).
    config = {**MODEL_DEMO_CONFIG, "predictor": {**MODEL_DEMO_CONFIG["predictor"], "lucent_scoring": "server"}}
    write_demo_job(tmp_path / "job", n_rows=400, seed=5, config=config, with_model=True)
    return JobRoot(tmp_path / "job")


@pytest.mark.slow
@pytest.mark.oracle
def test_post_training_bias_through_the_builtin_sidecar_matches_smclarify(model_job):
    assert model_job.run() == 0, model_job.message
    assert model_job.message == SUCCESS_MESSAGE
    section = model_job.analysis()["post_training_bias_metrics"]

    # Oracle: the same model in-process, Clarify's threshold rule (score > 0.5 -> 1), smclarify's metrics.
    df = pd.read_csv(model_job.data_dir / "credit.csv", header=None, names=COLUMNS[:8])
    model = joblib.load(model_job.root / "input" / "model" / "model.joblib")
    scores = model.predict_proba(df[FEATURES].to_numpy(dtype=object))[:, 1]
    predicted = pd.Series((scores > 0.5).astype(np.int64), name="predicted_label")
    assert_post_training_like_smclarify(section, df, predicted)
    assert lucent_children() == []


@pytest.mark.oracle
def test_probability_threshold_cuts_the_positive_score_of_a_bare_model(tmp_path, caplog):
    """A bare scikit-learn model answers predict_proba's two columns and the SDK's config has no
    predictor.probability: probability_threshold (0.7) cuts P(1), not an argmax (a 0.5 cut)."""

    predictor = {key: value for key, value in MODEL_DEMO_CONFIG["predictor"].items() if key != "probability"}
    config = {**MODEL_DEMO_CONFIG, "probability_threshold": 0.7, "predictor": predictor,
              "methods": {"post_training_bias": {"methods": "all"}}}
    write_demo_job(tmp_path / "job", n_rows=400, seed=5, config=config, with_model=True)
    job = JobRoot(tmp_path / "job")
    assert job.run() == 0, job.message
    assert "We assume a prediction above 0.700 indicates 1" in caplog.text
    df = pd.read_csv(job.data_dir / "credit.csv", header=None, names=COLUMNS[:8])
    scores = joblib.load(job.root / "input" / "model" / "model.joblib").predict_proba(
        df[FEATURES].to_numpy(dtype=object))[:, 1]
    predicted = pd.Series((scores > 0.7).astype(np.int64), name="predicted_label")
    assert 0 < predicted.sum() < (scores > 0.5).sum()  # the cut matters here
    section = job.analysis()["post_training_bias_metrics"]
    assert_post_training_like_smclarify(section, df, predicted)


def assert_post_training_like_smclarify(section: dict, df: pd.DataFrame, predicted: pd.Series) -> None:
    """The job's post-training metrics for each demo facet equal smclarify's on ``predicted``."""
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report

    for facet in MODEL_DEMO_CONFIG["facet"]:
        name = facet["name_or_index"]
        expected = bias_report(df.drop(columns=["approved"]), FacetColumn(name, facet.get("value_or_threshold")),
                               LabelColumn("approved", df["approved"], [1]), StageType.POST_TRAINING,
                               LabelColumn("predicted_label", predicted, [1]), group_variable=df["age_group"])
        assert_same_metrics(section["facets"][name], expected)


def assert_model_error(job: JobRoot, *fragments: str, code: int = 1) -> None:
    """The job fails with ``code``: 1 and ClientError for the user's model or its answers, 2 and
    AlgorithmError when the model server died or no answer came."""
    assert job.run() == code
    assert job.message.startswith("ClientError: " if code == 1 else "AlgorithmError: "), job.message
    for fragment in fragments:
        assert fragment in job.message, (fragment, job.message)
    assert job.output_files() == []
    assert lucent_children() == [], "no model server may outlive the job"


def test_missing_model_folder(model_job):
    for path in (model_job.root / "input" / "model").iterdir():
        path.unlink()
    (model_job.root / "input" / "model").rmdir()
    assert_model_error(model_job, "input/model", "does not exist")


def test_empty_model_folder(model_job):
    (model_job.root / "input" / "model" / "model.joblib").unlink()
    assert_model_error(model_job, "model folder unloadable", "empty")


def test_unloadable_model_file(model_job):
    (model_job.root / "input" / "model" / "model.joblib").write_bytes(b"not a pickle")
    assert_model_error(model_job, "model folder unloadable")


@pytest.mark.slow
def test_inference_script_raising(model_job):
    code = model_job.root / "input" / "model" / "code"
    code.mkdir()
    (code / "inference.py").write_text(
        "def predict_fn(data, model):\n    raise RuntimeError('scaler not fitted for column 3')\n")
    assert_model_error(model_job, "scaler not fitted for column 3")


class _Answers(BaseHTTPRequestHandler):
    """A model endpoint that answers with whatever the test sets in ``server.reply(n_records)``."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        status, text = self.server.reply(len(body.strip().splitlines()))
        self.send_response(status)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    with http_server(_Answers) as server:
        yield server


def use_endpoint(job: JobRoot, server, **predictor) -> None:
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["predictor"] = {"endpoint_url": f"http://127.0.0.1:{server.server_port}", **predictor}
    job.write_config(config)


def test_existing_endpoint_with_too_few_predictions(model_job, endpoint):
    endpoint.reply = lambda n: (200, "0.9\n" * max(n - 1, 0))
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "exactly one prediction per record", "got 399")


def test_existing_endpoint_with_non_numeric_scores(model_job, endpoint):
    endpoint.reply = lambda n: (200, "high\n" * n)
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "high")


def test_existing_endpoint_label_not_in_label_headers(model_job, endpoint):
    endpoint.reply = lambda n: (200, "maybe\n" * n)
    use_endpoint(model_job, endpoint, label=0, label_headers=["no", "yes"])
    assert_model_error(model_job, "maybe")


def test_existing_endpoint_that_is_down(model_job, monkeypatch):
    import container.model_endpoint

    monkeypatch.setattr(container.model_endpoint, "EXISTING_ENDPOINT_WAIT_SECONDS", 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = json.loads((model_job.config_dir / "analysis_config.json").read_text())
    config["predictor"] = {"endpoint_url": f"http://127.0.0.1:{port}"}
    model_job.write_config(config)
    assert_model_error(model_job, "predictor.endpoint_url")


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_existing_endpoint_wait_setting_that_is_not_a_number(model_job, endpoint, monkeypatch, value):
    # Read when a URL is used, by the one LUCENT_* parser: a message naming the variable, not a traceback
    # (it was float()ed when the module was imported).
    monkeypatch.setenv("LUCENT_ENDPOINT_WAIT_SECONDS", value)
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "LUCENT_ENDPOINT_WAIT_SECONDS", repr(value), "positive number of seconds")


def test_existing_endpoint_label_locator_gives_predicted_labels(model_job, endpoint):
    # label locator: the model's own label is the predicted label (no threshold); all "1" -> DPPL 0 etc.
    endpoint.reply = lambda n: (200, "1,0.3\n" * n)
    use_endpoint(model_job, endpoint, label=0, probability=1)
    assert model_job.run() == 0
    metrics = {m["name"]: m["value"] for m in
               model_job.analysis()["post_training_bias_metrics"]["facets"]["sex"][0]["metrics"]}
    assert metrics["DPPL"] == 0.0 and metrics["DI"] == 1.0


def test_serve_model_port_already_taken(tmp_path, capsys):
    from container.cli import main

    write_demo_job(tmp_path / "job", n_rows=50, with_model=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve-model", "--model-dir", str(tmp_path / "job" / "input" / "model"), "--port", str(port),
                     "--host", "127.0.0.1"])
    assert code == 1
    assert str(port) in capsys.readouterr().err


def test_sigterm_during_prediction_stops_the_sidecar(model_job):
    """A job stopped by SageMaker (SIGTERM) cleans up: exit message, no outputs, no model server."""
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root",
                                str(model_job.root)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(pid in descendants(process.pid) for pid in lucent_children()), 60,
                   "the job starts its model server")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "Signal 15 received, cleaning up" in stderr
    assert model_job.output_files() == []
    wait_until(lambda: lucent_children() == [], 10, "the model server is gone")


# -- a model that stops answering, a server that dies, scores that are not numbers ---------------------

class _Hangs(BaseHTTPRequestHandler):
    """A model endpoint that is healthy but never answers a prediction (until the test releases it)."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts += 1
        self.server.release.wait(60)

    def log_message(self, *args):
        pass


def test_a_model_that_never_answers_fails_the_job_within_the_timeout(model_job, monkeypatch):
    monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", "1")
    release = threading.Event()
    with http_server(_Hangs, posts=0, release=release) as server:
        try:
            port = server.server_port
            config = json.loads((model_job.config_dir / "analysis_config.json").read_text())
            config["predictor"] = {"endpoint_url": f"http://lucent:hunter2@127.0.0.1:{port}"}
            model_job.write_config(config)
            started = time.monotonic()
            assert_model_error(model_job, f"The model at http://***@127.0.0.1:{port}/invocations did not answer "
                                          "within 1 s (rows 0 to 399)", "LUCENT_MODEL_TIMEOUT_SECONDS", code=2)
            assert time.monotonic() - started < 10
            assert server.posts == 1, "no retry and no halves after a timeout"
            assert "hunter2" not in model_job.message
        finally:
            release.set()


def test_a_bad_model_timeout_setting_is_named(model_job, endpoint, monkeypatch):
    monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", "ten minutes")
    endpoint.reply = lambda n: (200, "0.9\n" * n)
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "LUCENT_MODEL_TIMEOUT_SECONDS='ten minutes': must be a positive number")


def test_an_endpoint_busy_for_longer_than_the_timeout_is_not_the_users_error(model_job, endpoint, monkeypatch):
    monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", "1")
    endpoint.reply = lambda n: (503, "no capacity")
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "did not answer within 1 s (rows 0 to 399; last attempt: HTTP 503: 'no capacity')",
                       code=2)


def write_inference_script(job: JobRoot, source: str) -> None:
    code = job.root / "input" / "model" / "code"
    code.mkdir()
    (code / "inference.py").write_text(source)


@pytest.mark.slow  # the client retries the refused connection for ~8 s before it gives up
def test_builtin_server_killed_mid_job_says_so_with_its_last_log_lines(model_job):
    write_inference_script(model_job, (
        "import os, signal, sys\n"
        "def predict_fn(data, model):\n"
        "    print('inference.py: taking the whole model server down', file=sys.stderr, flush=True)\n"
        "    os.killpg(os.getpgid(0), signal.SIGKILL)\n"))
    assert_model_error(model_job, "the built-in model server was killed by signal 9 (SIGKILL) during the job",
                       "The model server's last log lines:", "inference.py: taking the whole model server down",
                       code=2)


def test_builtin_server_that_cannot_start_names_its_exit_code_and_log(model_job):
    write_inference_script(model_job, (
        "import os, sys\n"
        "def model_fn(model_dir):\n"
        "    print('inference.py: giving up while loading', file=sys.stderr, flush=True)\n"
        "    os._exit(3)\n"))
    assert_model_error(model_job, "the built-in model server did not start", "exited with code")


def nan_scores(n: int) -> list[float]:
    scores = [0.75] * n
    scores[3], scores[17], scores[250] = math.nan, math.inf, -math.inf
    return scores


NON_FINITE_ROWS = "for 3 of 400 record(s), at dataset rows 3 (nan), 17 (inf), 250 (-inf)"


def test_non_finite_csv_scores_fail_the_job_naming_the_rows(model_job, endpoint):
    endpoint.reply = lambda n: (200, "".join(f"{score}\n" for score in nan_scores(n)))
    use_endpoint(model_job, endpoint)
    assert_model_error(model_job, "NaN or infinite predictor.probability", NON_FINITE_ROWS)


def test_non_finite_json_scores_fail_the_job_naming_the_rows(model_job, endpoint):
    # Python's json writes NaN / Infinity / -Infinity, as many model servers (Lucent's own included) do.
    endpoint.reply = lambda n: (200, json.dumps({"predictions": [{"score": s} for s in nan_scores(n)]}))
    use_endpoint(model_job, endpoint, accept_type="application/json", probability="predictions[*].score")
    assert_model_error(model_job, "NaN or infinite predictor.probability", NON_FINITE_ROWS)


@pytest.mark.slow  # starts the built-in model server
def test_non_finite_scores_from_the_builtin_server_fail_the_job(model_job):
    write_inference_script(model_job, (
        "import numpy as np\n"
        "def predict_fn(data, model):\n"
        "    scores = model.predict_proba(data)\n"
        "    scores[[5, 42], 1] = np.nan\n"
        "    return scores\n"))
    assert_model_error(model_job, "for 2 of 400 record(s), at dataset rows 5 (nan), 42 (nan)")


class _AnswersOneRecordAtATime(BaseHTTPRequestHandler):
    """Answers a one-record request (the SHAP baseline), hangs on larger ones until released."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        if len(body.strip().splitlines()) > 1:
            self.server.release.wait(60)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(b"0.5\n")

    def log_message(self, *args):
        pass


@pytest.mark.slow  # starts SHAP worker processes
def test_a_model_that_stops_answering_shap_workers_fails_the_job_as_not_the_users_error(model_job, monkeypatch):
    monkeypatch.setenv("LUCENT_MODEL_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "2")
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", "2000")  # several shards, so the worker processes call the model
    release = threading.Event()
    with http_server(_AnswersOneRecordAtATime, release=release) as server:
        try:
            config = json.loads((model_job.config_dir / "analysis_config.json").read_text())
            config["predictor"] = {"endpoint_url": f"http://127.0.0.1:{server.server_port}"}
            config["methods"] = {"shap": {"baseline": [[40, "Male", "White", 12, 40, 5000, "30-44"]],
                                          "num_samples": 20}}
            model_job.write_config(config)
            assert_model_error(model_job, "did not answer within 2 s", code=2)
        finally:
            release.set()


@pytest.mark.parametrize(("headers", "warned"), [(["denied", "approved"], True), ([0, 1], False), (["0", "1"], False)])
def test_label_headers_without_a_positive_label_value_are_warned_of(tmp_path, caplog, headers, warned):
    """Predicted labels named by label_headers that hold none of label_values_or_threshold are never
    positive: validate (which calls no model) says so beforehand, in the words of the config."""
    predictor = {key: value for key, value in MODEL_DEMO_CONFIG["predictor"].items() if key != "probability"}
    config = {**MODEL_DEMO_CONFIG, "predictor": {**predictor, "label_headers": headers},
              "methods": {"post_training_bias": {"methods": ["DPPL"]}}}
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=100, seed=5, config=config, with_model=True))
    assert job.run(command="validate") == 0
    warning = f"predictor.label_headers {headers} holds none of label_values_or_threshold [1]"
    assert (warning in caplog.text) is warned


def test_a_large_analysis_is_not_copied_into_the_log(tmp_path, caplog, monkeypatch):
    """The results are logged as Clarify logs them up to a size; a larger analysis.json (thousands of facet
    values: tens of MB, then tens of seconds of redaction before the exit message) is only named."""
    import container.job

    config = {**MODEL_DEMO_CONFIG, "methods": {"pre_training_bias": {"methods": ["CI", "DPL"]}}}
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=100, seed=5, config=config, with_model=True))
    assert job.run() == 0
    logged = json.loads(caplog.text.split("Collected analyses:\n", 1)[1].split("\n}\n", 1)[0] + "\n}")
    assert logged == job.analysis()
    caplog.clear()
    size = len(json.dumps(job.analysis(), indent=4))
    monkeypatch.setattr(container.job, "LOGGED_ANALYSES_CHARS", size // 2)
    assert job.run() == 0
    assert "Collected analyses:\n" not in caplog.text
    assert "Collected analyses: " in caplog.text and "characters, in analysis.json (too large to log" in caplog.text
