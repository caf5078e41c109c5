"""Post-training bias from a real model: the built-in sidecar, an existing endpoint, and their faults."""

from __future__ import annotations

import json
import os
import signal
import socket
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


def lucent_children() -> list[int]:
    """Model-server processes started by this test process that are still alive."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"container.sidecar" in b" ".join(cmdline) and "State:\tZ" not in status:
            alive.append(int(pid))
    return alive


@pytest.fixture
def model_job(tmp_path) -> JobRoot:
    write_demo_job(tmp_path / "job", n_rows=400, seed=5, with_model=True)
    return JobRoot(tmp_path / "job")


@pytest.mark.slow
def test_post_training_bias_through_the_builtin_sidecar_matches_smclarify(model_job):
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report

    assert model_job.run() == 0, model_job.message
    assert model_job.message == SUCCESS_MESSAGE
    section = model_job.analysis()["post_training_bias_metrics"]

    # Oracle: the same model in-process, Clarify's threshold rule (score > 0.5 -> 1), smclarify's metrics.
    df = pd.read_csv(model_job.data_dir / "credit.csv", header=None, names=COLUMNS[:8])
    model = joblib.load(model_job.root / "input" / "model" / "model.joblib")
    scores = model.predict_proba(df[FEATURES].to_numpy(dtype=object))[:, 1]
    predicted = pd.Series((scores > 0.5).astype(np.int64), name="predicted_label")
    for facet in MODEL_DEMO_CONFIG["facet"]:
        name = facet["name_or_index"]
        expected = bias_report(df.drop(columns=["approved"]), FacetColumn(name, facet.get("value_or_threshold")),
                               LabelColumn("approved", df["approved"], [1]), StageType.POST_TRAINING,
                               LabelColumn("predicted_label", predicted, [1]), group_variable=df["age_group"])
        assert_same_metrics(section["facets"][name], expected)
    assert lucent_children() == []


def assert_model_error(job: JobRoot, *fragments: str) -> None:
    assert job.run() == 1
    assert job.message.startswith("ClientError: ")
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
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root",
                                str(model_job.root)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not lucent_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Signal 15 received, cleaning up" in stderr
    assert model_job.output_files() == []
    time.sleep(1)
    assert lucent_children() == []
