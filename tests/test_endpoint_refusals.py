"""What the endpoint refuses, and how: every refusal in the runtime API's JSON shape (also those made by
http.server itself), ambiguous framing refused, SigV4 failures with AWS's error types, messages that
name the endpoint's settings, and an endpoint that stops (exit 2) when its built-in model server dies."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import joblib
import numpy as np
import pytest
import urllib3
from botocore.config import Config
from sklearn.linear_model import LogisticRegression

from analyzer.errors import UserError
from container.endpoint.auth import SigV4Verifier
from container.endpoint.cli import main as endpoint_main
from container.sidecar import start_model_server
from container.sidecar.limits import RequestLimits
from tests.conftest import FakeContainer, http_server
from tests.test_endpoint_server import endpoint as served_endpoint

NAME = "my-endpoint"
KEY_ID, SECRET = "AKIDLUCENTTEST000001", "lucent-test-secret"
REPO = Path(__file__).resolve().parents[1]
EXPLAINED = {"ExplainerConfig": {"ClarifyExplainerConfig": {
    "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0"}},
    "InferenceConfig": {"FeatureHeaders": ["a", "b", "c", "d"]}}}}


def _model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    features = np.random.default_rng(0).normal(size=(200, 4))
    joblib.dump(LogisticRegression().fit(features, features[:, 0] + features[:, 1] > 0), folder / "model.joblib")
    return folder


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_model_server(_model_folder(tmp_path_factory.mktemp("model")), workers=1) as server:
        server.wait_healthy(timeout=60)
        yield server.url


def endpoint(model_url: str, config: dict | None = None, **options):
    """test_endpoint_server's endpoint on a thread, the model URL first."""
    return served_endpoint(config or {}, model_url, **options)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection; the one response (status, headers, body), read to the close."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body[:int(headers["content-length"])]


def assert_api_error(status: int, headers: dict[str, str], body: bytes, expected_status: int,
                     expected_type: str = "ValidationError") -> str:
    """The runtime API's error shape (what botocore's rest-json parser reads); returns the message."""
    assert status == expected_status
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-errortype"] == expected_type
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-requestid"])
    message = json.loads(body)["message"]
    assert message and "<" not in message  # no HTML
    return message


def lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def metrics(url: str) -> str:
    return urllib3.PoolManager().request("GET", f"{url}/metrics").data.decode()


# -- framing --------------------------------------------------------------------------------------------


def test_two_content_lengths_are_refused_and_a_get_body_is_not_a_request(model_url: str) -> None:
    with endpoint(model_url) as url:
        message = assert_api_error(*raw(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                                              b"Content-Length: 7\r\nContent-Length: 3\r\n\r\n1,2,3,4"), 400)
        assert "Content-Length" in message
        status, headers, body = raw(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n7\r\n1,2,3,4\r\n0\r\n\r\n")
        assert_api_error(status, headers, body, 411)
        # Same value twice is one length: accepted.
        status, _, body = raw(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nAccept: text/csv\r\n"
                                   b"Connection: close\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n1,2,3,4")
        assert status == 200 and 0 < float(body.split(b",")[-1]) < 1
        # A GET's body is read as its body, not as the next request on the connection.
        smuggled = b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
                         + b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert re.findall(rb"HTTP/1.1 (\d+)", received) == [b"200", b"200"]
        text = metrics(url)
        assert 'lucent_endpoint_requests_total{route="invocations",code="400"} 1' in text
        assert 'lucent_endpoint_requests_total{route="invocations",code="411"} 1' in text
        assert 'code="404"' not in text


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"PUT /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET /ping HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
], ids=["request-line", "method", "version", "header-count", "header-size", "target-size"])
def test_what_http_server_refuses_has_the_api_shape_and_is_counted(model_url: str, request_bytes: bytes,
                                                                   status: int) -> None:
    with endpoint(model_url) as url:
        assert_api_error(*raw(url, request_bytes), status)
        assert f'code="{status}"}} 1' in metrics(url)
        assert 'lucent_endpoint_errors_total{type="ValidationError"} 1' in metrics(url)


def test_slow_headers_get_408_and_too_many_connections_503(model_url: str) -> None:
    with endpoint(model_url, limits=RequestLimits(header_timeout=0.3, body_timeout=5)) as url:
        message = assert_api_error(*raw(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\n"), 408)
        assert "headers" in message
        assert 'lucent_endpoint_requests_total{route="invocations",code="408"} 1' in metrics(url)
    with endpoint(model_url, limits=RequestLimits(max_connections=1)) as url, \
            socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as first:
        first.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then kept alive: the one slot
        assert first.recv(1024).startswith(b"HTTP/1.1 200")
        # Idle when a new connection comes: closed to make room for it (503 is for when every one is busy:
        # tests/test_endpoint_http_hardening.py).
        assert raw(url, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
        assert first.recv(1024) == b""
    with endpoint(model_url) as url:
        status, headers, body = raw(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 6291457\r\n\r\n")
        message = assert_api_error(status, headers, body, 413)
        assert "6,291,456" in message and "SageMaker" in message and "serve-model" not in message
        assert 'lucent_endpoint_requests_total{route="invocations",code="413"} 1' in metrics(url)


def test_accept_and_content_type_are_checked_before_they_are_forwarded(model_url: str) -> None:
    http = urllib3.PoolManager()
    with endpoint(model_url) as url:
        for headers, name in (({"Accept": "text/csv" + "x" * 16_000}, "Accept"),
                              ({"Accept": "text/csv\x01"}, "Accept"),
                              ({"Content-Type": "text/" + "c" * 1100}, "Content-Type")):
            response = http.request("POST", f"{url}/invocations", body=b"1,2,3,4",
                                    headers={"Content-Type": "text/csv", **headers})
            message = assert_api_error(response.status, lower(response.headers), response.data, 400)
            assert message.startswith(f"{name}: ") and "1024" in message and "xxxx" not in message
        assert http.request("POST", f"{url}/invocations", body=b"1,2,3,4",
                            headers={"Content-Type": "text/csv", "Accept": "x" * 5 + "/csv"}).status != 400


# -- SigV4 ------------------------------------------------------------------------------------------------


def _signed_headers(url: str, body: bytes, key_id: str, secret: str, at: datetime) -> dict[str, str]:
    """Headers of a request signed by botocore's signer as boto3 would sign it at time ``at``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    amz_date = at.strftime("%Y%m%dT%H%M%SZ")
    host = url.split("//", 1)[1]
    request = AWSRequest("POST", f"{url}/invocations", data=body,
                         headers={"Content-Type": "text/csv", "Host": host, "X-Amz-Date": amz_date})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, secret), "sagemaker", "us-east-1")
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    return {"Content-Type": "text/csv", "Host": host, "X-Amz-Date": amz_date,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{amz_date[:8]}/us-east-1/sagemaker/aws4_request, "
                             f"SignedHeaders={signed}, Signature={signature}"}


def test_sigv4_failures_have_aws_error_types(model_url: str) -> None:
    http = urllib3.PoolManager()
    with endpoint(model_url, verifier=SigV4Verifier(KEY_ID, SECRET)) as url:
        now = datetime.now(UTC)

        def post(headers: dict[str, str]) -> tuple[str, str]:
            response = http.request("POST", f"{url}/invocations", body=b"1,2,3,4", headers=headers)
            message = assert_api_error(response.status, lower(response.headers), response.data, 403,
                                       response.headers["x-amzn-ErrorType"])
            assert SECRET not in response.data.decode() and "Signature=" not in message
            return response.headers["x-amzn-ErrorType"], message

        assert post({"Content-Type": "text/csv"}) == ("MissingAuthenticationTokenException", "Missing Authentication Token")
        assert post(_signed_headers(url, b"1,2,3,4", "AKIDSOMEONEELSE00001", SECRET, now)) == (
            "UnrecognizedClientException", "The security token included in the request is invalid.")
        old = now - timedelta(minutes=20)
        kind, message = post(_signed_headers(url, b"1,2,3,4", KEY_ID, SECRET, old))
        assert kind == "InvalidSignatureException"
        assert message.startswith(f"Signature expired: {old:%Y%m%dT%H%M%SZ} is now earlier than ")
        kind, message = post(_signed_headers(url, b"1,2,3,4", KEY_ID, "wrong-secret", now))
        assert kind == "InvalidSignatureException" and message.startswith("The request signature we calculated")
        good = _signed_headers(url, b"1,2,3,4", KEY_ID, SECRET, now)
        assert http.request("POST", f"{url}/invocations", body=b"1,2,3,4", headers=good).status == 200
        # boto3 raises by the error type, as against AWS.
        client = boto3.session.Session().client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                                                aws_access_key_id="AKIDSOMEONEELSE00001", aws_secret_access_key=SECRET,
                                                config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(client.exceptions.ClientError) as caught:
            client.invoke_endpoint(EndpointName=NAME, Body=b"1,2,3,4", ContentType="text/csv")
        assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"


# -- messages that name the endpoint's settings -------------------------------------------------------------


class _Model(FakeContainer):
    """A model container: one record answered "0.25,0.75" (or the server's ``answer``); several records
    (the explainer's synthetic rows) held until the test releases them, when ``hold`` is set."""

    def do_POST(self) -> None:  # noqa: N802
        body = self.request_body()
        if body.count(b"\n") > 1 and self.server.hold is not None:
            self.server.hold.wait(30)
            return
        self.answer(200, b"\n".join(self.server.answer for _ in body.strip().split(b"\n")))


def _with_inference(**inference) -> dict:
    document = json.loads(json.dumps(EXPLAINED))
    document["ExplainerConfig"]["ClarifyExplainerConfig"]["InferenceConfig"].update(inference)
    return document


def test_model_problems_name_the_endpoints_settings() -> None:
    with http_server(_Model, answer=b"0.25,0.75", hold=None) as model:
        url = f"http://127.0.0.1:{model.server_address[1]}"
        with pytest.raises(UserError) as raised, endpoint(url, _with_inference(ProbabilityIndex=5)):
            pass
        assert "InferenceConfig.ProbabilityIndex is column 5" in str(raised.value)
        assert "predictor." not in str(raised.value)
    with http_server(_Model, answer=b"yes", hold=None) as model:
        url = f"http://127.0.0.1:{model.server_address[1]}"
        with pytest.raises(UserError) as raised, endpoint(url, EXPLAINED):
            pass
        assert "InferenceConfig.ProbabilityIndex (CSV)" in str(raised.value)
        assert "predictor." not in str(raised.value)
    release = threading.Event()
    try:
        with http_server(_Model, answer=b"0.75", hold=release) as model, \
                endpoint(f"http://127.0.0.1:{model.server_address[1]}", _with_inference(ProbabilityIndex=0),
                         model_timeout=0.5) as url:
            client = boto3.session.Session().client(
                "sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
                aws_secret_access_key="b", config=Config(retries={"total_max_attempts": 1}))
            with pytest.raises(client.exceptions.ModelError) as caught:  # the answer first, then the synthetic rows
                client.invoke_endpoint(EndpointName=NAME, Body=b"1,2,3,4", ContentType="text/csv",
                                       EnableExplanations="`true` && `true`")
            message = caught.value.response["Error"]["Message"]
            assert "--model-timeout" in message and "LUCENT_MODEL_TIMEOUT_SECONDS" not in message
            with pytest.raises(client.exceptions.ValidationError) as caught:  # the message says it once
                client.invoke_endpoint(EndpointName=NAME, Body=b"1,2,3,4", ContentType="text/csv",
                                       EnableExplanations="[0]")
            assert caught.value.response["Error"]["Message"].count("EnableExplanations") == 1
    finally:
        release.set()


def test_image_without_a_container_engine_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "config.json").write_text("{}")
    assert endpoint_main(["--config", str(tmp_path / "config.json"), "--endpoint-name", NAME,
                          "--image", "example/model:1"]) == 1
    error = capsys.readouterr().err
    assert "--image" in error and "predictor.image_uri" not in error


def test_baseline_width_is_checked_before_the_model_is_reached(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on: reaching the model would wait a minute
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    (tmp_path / "config.json").write_text(json.dumps(_with_inference(FeatureHeaders=["a", "b", "c"])))
    assert endpoint_main(["--config", str(tmp_path / "config.json"), "--endpoint-name", NAME,
                          "--model-url", f"http://127.0.0.1:{closed}"]) == 1
    error = capsys.readouterr().err
    assert "baseline records have 4 features but InferenceConfig.FeatureHeaders lists 3" in error


# -- the built-in model server's exit ------------------------------------------------------------------------


@contextmanager
def endpoint_process(tmp_path: Path, document: dict) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """`lucent endpoint --model-dir` in a process of its own: (process, its URL, its model server's pid)."""
    folder = _model_folder(tmp_path / "model")
    (tmp_path / "config.json").write_text(json.dumps(document))
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "endpoint", "--config",
                                str(tmp_path / "config.json"), "--endpoint-name", NAME, "--model-dir", str(folder),
                                "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        url = pid = None
        lines = []
        for line in process.stderr:  # ends if the process exits
            lines.append(line)
            if found := re.search(r"model server: pid (\d+)", line):
                pid = int(found.group(1))
            if found := re.search(r"in service at (http://\S+)", line):
                url = found.group(1)
                break
        assert url is not None and pid is not None, "".join(lines)
        yield process, url, pid
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_the_endpoint_exits_2_when_its_model_server_dies(tmp_path: Path) -> None:
    document = {"DataCaptureConfig": {"InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path / "capture"),
                                      "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]}}
    with endpoint_process(tmp_path, document) as (process, url, model_pid):
        answer = urllib3.PoolManager().request("POST", f"{url}/invocations", body=b"1,2,3,4",
                                               headers={"Content-Type": "text/csv"})
        assert answer.status == 200
        os.kill(model_pid, signal.SIGTERM)  # the model server ends as if stopped from outside: exit code 0
        assert process.wait(timeout=30) == 2
        rest = process.stderr.read()
    assert "Traceback" not in rest
    assert re.search(r" ERROR .*built-in model server \(pid \d+\) exited with code 0 while the endpoint was "
                     r"serving; its log, \S+server\.log", rest)
    final = rest.strip().splitlines()[-1]
    assert final.startswith("error: the built-in model server exited with code 0") and "endpoint" in final
    assert "job" not in final
    captured = [line for path in (tmp_path / "capture").rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(captured) == 1  # flushed on the way out


def test_sigterm_to_the_endpoint_and_its_model_server_is_a_clean_stop(tmp_path: Path) -> None:
    """What systemd's control-group kill does: both get SIGTERM. Exit 0, no traceback."""
    with endpoint_process(tmp_path, {}) as (process, url, model_pid):
        process.send_signal(signal.SIGTERM)
        os.kill(model_pid, signal.SIGTERM)
        process.send_signal(signal.SIGTERM)  # a second one while stopping is not obeyed half-way
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
    assert "Traceback" not in rest and " ERROR " not in rest and "error:" not in rest
