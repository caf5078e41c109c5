"""``lucent endpoint`` under load and with its baseline elsewhere, on loopback: the built-in model server,
the endpoint's real HTTP server, boto3's sagemaker-runtime clients, and moto's S3 server."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pytest
import urllib3

from analyzer.monitor.capture import payload_bytes, read_capture_lines
from container.endpoint.cli import main as endpoint_main
from container.endpoint.cli import open_endpoint
from container.endpoint.config import parse_endpoint_config
from container.sidecar.limits import RequestLimits
from tests import test_endpoint_explain
from tests.conftest import moto_s3, use_test_credentials
from tests.test_endpoint_explain import _csv, attributions, exact_shapley, tabular_game
from tests.test_endpoint_server import NAME, endpoint, runtime

csv_model = test_endpoint_explain.csv_model  # the 3-class, 6-feature model behind the built-in server

FIELD = "ExplainerConfig.ClarifyExplainerConfig.ShapConfig.ShapBaselineConfig.ShapBaselineUri"
BASELINE = np.array([[0.5, -0.5, 0.0, 1.0, -1.0, 0.25]])


def _config(baseline: dict, **extra) -> dict:
    return {"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {"ShapBaselineConfig": {
        "MimeType": "text/csv", **baseline}}}}, **extra}


def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def s3_url() -> str:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3(s3_url: str, monkeypatch: pytest.MonkeyPatch):
    use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=s3_url)
    client = boto3.client("s3")
    client.create_bucket(Bucket="baselines")
    yield client
    for item in client.list_objects_v2(Bucket="baselines").get("Contents", []):
        client.delete_object(Bucket="baselines", Key=item["Key"])
    client.delete_bucket(Bucket="baselines")


def _explained(url: str, record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    document = json.loads(runtime(url).invoke_endpoint(EndpointName=NAME, Body=_csv(record), ContentType="text/csv",
                                                       Accept="text/csv")["Body"].read())
    prediction = np.array([float(v) for v in document["predictions"]["data"].split(",")])
    return prediction, attributions(document["explanations"]["kernel_shap"][0])


@pytest.mark.parametrize("where", ["s3", "path", "file-uri"])
def test_baseline_uri_from_s3_a_path_or_a_file_uri(csv_model, s3, tmp_path: Path, where: str) -> None:
    model_url, model = csv_model
    if where == "s3":
        s3.put_object(Bucket="baselines", Key="shap/baseline.csv", Body=_csv(BASELINE).encode())
        uri = "s3://baselines/shap/baseline.csv"
    else:
        (tmp_path / "baseline.csv").write_text(_csv(BASELINE) + "\n")
        uri = str(tmp_path / "baseline.csv") if where == "path" else (tmp_path / "baseline.csv").as_uri()
    record = np.linspace(-1, 1, 6)
    with endpoint(_config({"ShapBaselineUri": uri}), model_url) as url:
        prediction, got = _explained(url, record)
    np.testing.assert_allclose(got, exact_shapley(tabular_game(model.predict_proba, record, BASELINE, False), 6),
                               atol=1e-9)
    np.testing.assert_allclose(got.sum(axis=0), prediction - model.predict_proba(BASELINE)[0], atol=1e-9)


@pytest.mark.parametrize("where", ["s3://baselines/missing.csv", "s3://no-such-bucket/baseline.csv", "local"])
def test_missing_baseline_is_a_startup_error_naming_the_field(csv_model, s3, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture, where: str) -> None:
    uri = str(tmp_path / "missing.csv") if where == "local" else where
    (tmp_path / "config.json").write_text(json.dumps(_config({"ShapBaselineUri": uri})))
    code = endpoint_main(["--config", str(tmp_path / "config.json"), "--endpoint-name", NAME,
                          "--model-url", csv_model[0], "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {FIELD}: cannot read" in err and (uri in err if where != "local" else "missing.csv" in err)
    assert f"Endpoint {NAME} (variant" not in err  # it never came into service (the model's own log may say so)


def test_eight_concurrent_clients_get_every_answer_right_and_every_call_captured(csv_model, tmp_path: Path) -> None:
    model_url, model = csv_model
    records = np.random.default_rng(11).normal(size=(8, 6))
    references = [exact_shapley(tabular_game(model.predict_proba, r, BASELINE, False), 6) for r in records]
    document = _config({"ShapBaseline": _csv(BASELINE)})
    document["DataCaptureConfig"] = {"InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path / "capture"),
                                     "CaptureOptions": [{"CaptureMode": "InputAndOutput"}],
                                     "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]}}
    per_client = 12
    sent: dict[str, bytes] = {}
    lock = threading.Lock()

    def client_run(number: int) -> int:
        client = runtime(url)
        correct = 0
        for call in range(per_client):
            which = (number + call) % len(records)
            inference_id = f"c{number}-{call}"
            response = client.invoke_endpoint(EndpointName=NAME, Body=_csv(records[which]), ContentType="text/csv",
                                              Accept="text/csv", InferenceId=inference_id)
            body = response["Body"].read()
            with lock:
                sent[inference_id] = body
            answer = json.loads(body)
            prediction = np.array([float(v) for v in answer["predictions"]["data"].split(",")])
            np.testing.assert_allclose(prediction, model.predict_proba(records[which:which + 1])[0], rtol=1e-12)
            np.testing.assert_allclose(attributions(answer["explanations"]["kernel_shap"][0]), references[which],
                                       atol=1e-9)
            correct += 1
        return correct

    with open_endpoint(parse_endpoint_config(document), NAME, model_url, default_io=True) as parts:
        url = parts.server.url
        serving = threading.Thread(target=parts.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serving.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                assert sum(pool.map(client_run, range(8))) == 8 * per_client
            metrics = urllib3.PoolManager().request("GET", f"{url}/metrics").data.decode()
        finally:
            parts.server.shutdown()
    # the endpoint is closed: the capture writer flushed everything it was given
    assert f'lucent_endpoint_requests_total{{route="invocations",code="200"}} {8 * per_client}' in metrics
    assert f"lucent_endpoint_explained_records_total {8 * per_client}" in metrics
    files = sorted((tmp_path / "capture").rglob("*.jsonl"))
    captured = [line for path in files for line in read_capture_lines(path.read_text(), str(path))]
    assert len(captured) == len(sent) == 8 * per_client
    by_id = {line["eventMetadata"]["inferenceId"]: line for line in captured}
    assert by_id.keys() == sent.keys()
    for inference_id, body in sent.items():
        assert payload_bytes(by_id[inference_id]["captureData"]["endpointOutput"]) == body


def test_idle_connections_past_the_cap_make_room_for_a_request(csv_model) -> None:
    """Connections that send nothing hold slots until a request needs one: the oldest is closed for it
    (503 is for when every connection is busy with a request: tests/test_endpoint_http_hardening.py)."""
    model_url, _ = csv_model
    limits = RequestLimits(max_connections=2)
    with open_endpoint(parse_endpoint_config({}), NAME, model_url, limits=limits) as parts:
        server = parts.server
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serving.start()
        host, port = server.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]  # each holds a slot
        try:
            _until(lambda: server.connection_counts() == (2, 0))
            for _ in range(2):
                answer = runtime(server.url).invoke_endpoint(EndpointName=NAME, Body=b"0,0,0,0,0,0",
                                                             ContentType="text/csv")
                assert len(answer["Body"].read().split(b",")) == 3
            assert [sock.recv(1) for sock in idle] == [b"", b""]  # both closed for the clients' connections
        finally:
            for sock in idle:
                sock.close()
        server.shutdown()
