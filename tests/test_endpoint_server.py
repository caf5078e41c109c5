"""``lucent endpoint`` on loopback: a real built-in model server (a scikit-learn model trained here), the
endpoint's real HTTP server, and boto3's own sagemaker-runtime client."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import joblib
import numpy as np
import pytest
import urllib3
from botocore.config import Config
from sklearn.linear_model import LogisticRegression

from analyzer.errors import ConfigError
from container.endpoint.auth import SigV4Verifier
from container.endpoint.cli import main as endpoint_main
from container.endpoint.cli import open_endpoint
from container.endpoint.config import EndpointConfig, load_endpoint_config, parse_endpoint_config
from container.sidecar import start_model_server
from container.sidecar.limits import RequestLimits
from tests.conftest import FakeContainer, http_server

NAME = "my-endpoint"
KEY_ID, SECRET = "AKIDLUCENTTEST000001", "lucent-test-secret"


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 4))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    folder = tmp_path_factory.mktemp("model")
    joblib.dump(LogisticRegression().fit(features, labels), folder / "model.joblib")
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=60)
        yield server.url


@contextmanager
def endpoint(config: EndpointConfig | dict, model_url: str, name: str = NAME, **options) -> Iterator[str]:
    """``lucent endpoint`` (``open_endpoint``) serving on a thread; its URL. Leaving it closes the capture
    writer: every capture file is published."""
    if isinstance(config, dict):
        config = parse_endpoint_config(config)
    with open_endpoint(config, name, model_url, **options) as parts:
        thread = threading.Thread(target=parts.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield parts.server.url
        finally:
            parts.server.shutdown()


def runtime(url: str, key_id: str = "anything", secret: str = "anything"):
    return boto3.session.Session().client(
        "sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
        aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}, read_timeout=30))


def invoke(client, body: bytes | str = b"0.5,1,2,3\n-2,-1,0,1", **extra):
    return client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="text/csv", Accept="text/csv", **extra)


# -- pass-through, routes, errors ------------------------------------------------------------------------


def test_invoke_passes_the_model_answer_through(model_url: str) -> None:
    with endpoint({}, model_url) as url:
        client = runtime(url)
        response = invoke(client, CustomAttributes="trace=1")
        body = response["Body"].read().decode()
        assert response["ContentType"].startswith("text/csv")
        assert response["InvokedProductionVariant"] == "AllTraffic"
        scores = [float(line.split(",")[-1]) for line in body.split()]  # predict_proba: P(1) last
        assert len(scores) == 2 and scores[0] > 0.5 > scores[1]
        http = urllib3.PoolManager()
        assert http.request("GET", f"{url}/ping").status == 200
        plain = http.request("POST", f"{url}/invocations", body=b"0.5,1,2,3",
                             headers={"Content-Type": "text/csv", "Accept": "text/csv"})
        assert plain.status == 200 and float(plain.data.split(b",")[-1]) == pytest.approx(scores[0])
        metrics = http.request("GET", f"{url}/metrics").data.decode()
        assert 'lucent_endpoint_requests_total{route="invocations",code="200"} 2' in metrics
        assert 'lucent_endpoint_invocation_seconds_count 2' in metrics


def test_wrong_endpoint_name_and_bad_headers_are_validation_errors(model_url: str) -> None:
    with endpoint({}, model_url) as url:
        client = runtime(url)
        with pytest.raises(client.exceptions.ValidationError, match="other not found"):
            client.invoke_endpoint(EndpointName="other", Body=b"1,2,3,4", ContentType="text/csv")
        with pytest.raises(client.exceptions.ValidationError, match="JMESPath"):
            invoke(client, EnableExplanations="[[")


def test_model_failure_is_model_error_and_the_endpoint_stays_up(model_url: str) -> None:
    with endpoint({}, model_url) as url:
        client = runtime(url)
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, body=b"1,2")  # the model expects 4 features
        error = caught.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert error["OriginalStatusCode"] in (400, 500)
        assert "from primary with message" in error["Error"]["Message"]
        assert error["OriginalMessage"]
        assert invoke(client)["Body"].read()  # still serving


class _Faulty(FakeContainer):
    """A model container that answers too few rows, fails, hangs until released, drips or cuts its answer."""

    def do_POST(self) -> None:  # noqa: N802
        self.request_body()
        if self.server.mode == "hang":
            self.server.release.wait(30)
        if self.server.mode == "drip":  # an answer that never ends: one byte each time the test lets one go
            self.answer(200, b"", length=1000)
            for _ in range(1000):
                self.server.release.wait(0.05)  # paced by the fault, not by the test: the endpoint must give up
                if self.server.release.is_set():
                    return
                self.wfile.write(b"0")
                self.wfile.flush()
            return
        self.server.calls = getattr(self.server, "calls", 0) + 1
        if self.server.mode == "truncate" and self.server.calls > 1:  # promises 100 bytes, sends 4, hangs up
            self.answer(200, b"0.5\n", length=100)
            self.close_connection = True
            return
        if self.server.mode in ("short", "truncate"):
            self.answer(200, b"0.5\n")
        else:
            self.answer(503, b"boom")


def test_model_down_or_slow_is_model_error(model_url: str) -> None:
    release = threading.Event()
    with http_server(_Faulty, mode="hang", release=release) as hanging:
        hung_url = f"http://127.0.0.1:{hanging.server_address[1]}"
        try:
            with endpoint({}, hung_url, model_timeout=0.3) as url:
                client = runtime(url)
                with pytest.raises(client.exceptions.ModelError, match="timed out") as caught:
                    invoke(client)
                assert caught.value.response["OriginalStatusCode"] == 0
        finally:
            release.set()
    with endpoint({}, hung_url) as url:  # the faulty server is gone now: connection refused
        client = runtime(url)
        with pytest.raises(client.exceptions.ModelError, match="cannot reach"):
            invoke(client)
        assert urllib3.PoolManager().request("GET", f"{url}/ping").status == 503


def test_a_model_answer_that_drips_in_is_cut_at_the_timeout() -> None:
    """A socket timeout bounds each read, not the answer: a container sending one byte at a time would
    hold the request forever. The timeout is the whole answer's, and the caller gets ModelError."""
    release = threading.Event()
    with http_server(_Faulty, mode="drip", release=release) as dripping:
        try:
            with endpoint({}, f"http://127.0.0.1:{dripping.server_address[1]}", model_timeout=0.5) as url:
                client = boto3.session.Session().client(
                    "sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
                    aws_secret_access_key="b", config=Config(retries={"total_max_attempts": 1}, read_timeout=20))
                with pytest.raises(client.exceptions.ModelError, match="timed out") as caught:
                    invoke(client)  # the drip lasts 50 s: boto3's own read timeout (20 s) fails the test first
                assert caught.value.response["OriginalStatusCode"] == 0
        finally:
            release.set()


class _KeepAliveFaulty(_Faulty):
    protocol_version = "HTTP/1.1"  # keeps its connections: the endpoint's second call reuses the first's


def test_a_model_answer_cut_short_is_model_error_and_is_not_sent_again(model_url: str) -> None:
    with http_server(_KeepAliveFaulty, mode="truncate") as truncating, \
            endpoint({}, f"http://127.0.0.1:{truncating.server_address[1]}") as url:
        client = runtime(url)
        assert invoke(client)["Body"].read() == b"0.5\n"  # the first answer is whole, its connection kept
        with pytest.raises(client.exceptions.ModelError, match="IncompleteRead") as caught:
            invoke(client)  # on the kept connection: the answer starts, then stops
        assert caught.value.response["OriginalStatusCode"] == 0
        assert truncating.calls == 2  # the container ran the second invocation once: it was not sent again


def test_model_http_error_keeps_its_status(model_url: str) -> None:
    with http_server(_Faulty, mode="error") as failing, \
            endpoint({}, f"http://127.0.0.1:{failing.server_address[1]}") as url:
        client = runtime(url)
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client)
        assert caught.value.response["OriginalStatusCode"] == 503
        assert caught.value.response["OriginalMessage"] == "boom"


def test_body_over_the_limit_is_refused_before_it_is_read(model_url: str) -> None:
    limits = RequestLimits(max_body_bytes=1000)
    with endpoint({}, model_url, limits=limits) as url:
        client = runtime(url)
        with pytest.raises(client.exceptions.ValidationError) as caught:
            invoke(client, body=b"1," * 2000)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
        assert invoke(client)["Body"].read()


def test_default_body_cap_is_sagemakers() -> None:
    from container.endpoint.cli import open_endpoint as opener  # noqa: F401 -- the default lives there

    assert RequestLimits().max_body_bytes == 6_291_456


# -- SigV4 ---------------------------------------------------------------------------------------------


@pytest.fixture
def signed_endpoint(model_url: str) -> Iterator[str]:
    with endpoint({}, model_url, verifier=SigV4Verifier(KEY_ID, SECRET)) as url:
        yield url


def test_sigv4_signed_request_is_accepted(signed_endpoint: str) -> None:
    assert invoke(runtime(signed_endpoint, KEY_ID, SECRET))["Body"].read()


@pytest.mark.parametrize(("key_id", "secret"), [("AKIDSOMEONEELSE00001", SECRET), (KEY_ID, "wrong-secret")])
def test_sigv4_wrong_credentials_are_refused(signed_endpoint: str, key_id: str, secret: str) -> None:
    client = runtime(signed_endpoint, key_id, secret)
    with pytest.raises(client.exceptions.ClientError) as caught:
        invoke(client)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_sigv4_unsigned_or_tampered_requests_are_refused(signed_endpoint: str) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    http = urllib3.PoolManager()
    url = f"{signed_endpoint}/endpoints/{NAME}/invocations"
    assert http.request("POST", url, body=b"1,2,3,4", headers={"Content-Type": "text/csv"}).status == 403
    request = AWSRequest("POST", url, data=b"1,2,3,4", headers={"Content-Type": "text/csv"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    assert http.request("POST", url, body=b"1,2,3,4", headers=headers).status == 200
    assert http.request("POST", url, body=b"9,9,9,9", headers=headers).status == 403
    forged = {**headers, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    assert http.request("POST", url, body=b"9,9,9,9", headers=forged).status == 403
    assert http.request("GET", f"{signed_endpoint}/metrics").status == 403
    assert http.request("GET", f"{signed_endpoint}/ping").status == 200


def test_sigv4_old_signature_is_refused() -> None:
    from datetime import UTC, datetime, timedelta

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from container.endpoint.auth import AuthenticationError

    request = AWSRequest("POST", "http://127.0.0.1:9/invocations", data=b"x", headers={"Content-Type": "text/csv"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "eu-west-1").add_auth(request)
    headers = [*request.headers.items(), ("Host", "127.0.0.1:9")]
    verifier = SigV4Verifier(KEY_ID, SECRET)
    verifier.verify("POST", "/invocations", headers, b"x")
    with pytest.raises(AuthenticationError, match="clock skew"):
        verifier.verify("POST", "/invocations", headers, b"x", now=datetime.now(UTC) + timedelta(minutes=20))


def test_sigv4_region_is_checked_when_the_endpoint_names_one(model_url: str, monkeypatch) -> None:
    """LUCENT_ENDPOINT_REGION: a signature scoped to another region gets AWS's answer; unset, any region."""
    monkeypatch.setenv("LUCENT_ENDPOINT_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("LUCENT_ENDPOINT_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("LUCENT_ENDPOINT_REGION", "eu-west-1")
    verifier = SigV4Verifier.from_environment()
    assert verifier is not None and verifier.region == "eu-west-1"
    with endpoint({}, model_url, verifier=verifier) as url:
        client = runtime(url, KEY_ID, SECRET)  # signs for us-east-1
        with pytest.raises(client.exceptions.ClientError) as caught:
            invoke(client)
        assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert caught.value.response["Error"]["Message"] == "Credential should be scoped to a valid region, not 'us-east-1'."
        here = boto3.session.Session().client(
            "sagemaker-runtime", endpoint_url=url, region_name="eu-west-1", aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET, config=Config(retries={"total_max_attempts": 1}, read_timeout=30))
        assert invoke(here)["Body"].read()
    monkeypatch.delenv("LUCENT_ENDPOINT_REGION")
    assert SigV4Verifier.from_environment().region is None


# -- config ------------------------------------------------------------------------------------------

_EXPLAINER = "ExplainerConfig.ClarifyExplainerConfig"


def _explainer(**shap) -> dict:
    shap_config = {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0"}, **shap}
    return {"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": shap_config}}}


BAD_CONFIGS = [
    (_explainer(NumberOfSamples="many"), f'{_EXPLAINER}.ShapConfig.NumberOfSamples: expected an integer, got "many"'),
    (_explainer(NumberOfSamples=0), f"{_EXPLAINER}.ShapConfig.NumberOfSamples: must be >= 1"),
    (_explainer(UseLogit="yes"), f"{_EXPLAINER}.ShapConfig.UseLogit: expected a boolean"),
    (_explainer(TextConfig={"Language": "klingon", "Granularity": "token"}),
     f"{_EXPLAINER}.ShapConfig.TextConfig.Language: 'klingon' is not one of"),
    (_explainer(TextConfig={"Language": "en", "Granularity": "word"}),
     f"{_EXPLAINER}.ShapConfig.TextConfig.Granularity: 'word' is not one of token, sentence, paragraph"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {"ShapBaselineConfig": {
        "ShapBaseline": "1", "ShapBaselineUri": "s3://b/k"}}}}},
     f"{_EXPLAINER}.ShapConfig.ShapBaselineConfig: ShapBaseline and ShapBaselineUri are mutually exclusive"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {"ShapBaselineConfig": {}}}}},
     f"{_EXPLAINER}.ShapConfig.ShapBaselineConfig: one of ShapBaseline (inline) and ShapBaselineUri is required"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {"ShapBaselineConfig": {
        "ShapBaseline": "x" * 4097}}}}}, f"{_EXPLAINER}.ShapConfig.ShapBaselineConfig.ShapBaseline: must have at most 4096"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {"ShapBaselineConfig": {
        "MimeType": "application/json", "ShapBaseline": "1"}}}}},
     f"{_EXPLAINER}.ShapConfig.ShapBaselineConfig.MimeType: must be one of text/csv, application/jsonlines"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {}}}, f"{_EXPLAINER}.ShapConfig: required key missing"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"EnableExplanations": "[0]>", **_explainer()["ExplainerConfig"][
        "ClarifyExplainerConfig"]}}}, f"{_EXPLAINER}.EnableExplanations: '[0]>' is not a valid JMESPath expression"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"InferenceConfig": {"MaxPayloadInMB": 26},
                                                     **_explainer()["ExplainerConfig"]["ClarifyExplainerConfig"]}}},
     f"{_EXPLAINER}.InferenceConfig.MaxPayloadInMB: must be <= 25, got 26"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"InferenceConfig": {"LabelHeaders": ["a"] * 17},
                                                     **_explainer()["ExplainerConfig"]["ClarifyExplainerConfig"]}}},
     f"{_EXPLAINER}.InferenceConfig.LabelHeaders: must have at most 16 items"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"InferenceConfig": {"FeatureTypes": ["number"]},
                                                     **_explainer()["ExplainerConfig"]["ClarifyExplainerConfig"]}}},
     f"{_EXPLAINER}.InferenceConfig.FeatureTypes[0]: 'number' is not one of numerical, categorical, text"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"InferenceConfig": {"ProbabilityIndex": -1},
                                                     **_explainer()["ExplainerConfig"]["ClarifyExplainerConfig"]}}},
     f"{_EXPLAINER}.InferenceConfig.ProbabilityIndex: must be >= 0"),
    ({"ExplainerConfig": {"ClarifyExplainerConfig": {"InferenceConfig": {"FeatureHeaders": [""]},
                                                     **_explainer()["ExplainerConfig"]["ClarifyExplainerConfig"]}}},
     f"{_EXPLAINER}.InferenceConfig.FeatureHeaders[0]: must have at least 1 character"),
    ({"DataCaptureConfig": {"InitialSamplingPercentage": 101, "DestinationS3Uri": "s3://b/p",
                            "CaptureOptions": [{"CaptureMode": "Input"}]}},
     "DataCaptureConfig.InitialSamplingPercentage: must be <= 100, got 101"),
    ({"DataCaptureConfig": {"InitialSamplingPercentage": 10, "DestinationS3Uri": "s3://b/p", "CaptureOptions": []}},
     "DataCaptureConfig.CaptureOptions: must have at least 1 item"),
    ({"DataCaptureConfig": {"InitialSamplingPercentage": 10, "DestinationS3Uri": "s3://b/p",
                            "CaptureOptions": [{"CaptureMode": "Both"}]}},
     "DataCaptureConfig.CaptureOptions[0].CaptureMode: 'Both' is not one of Input, Output, InputAndOutput"),
    ({"DataCaptureConfig": {"InitialSamplingPercentage": 10, "CaptureOptions": [{"CaptureMode": "Input"}]}},
     "DataCaptureConfig.DestinationS3Uri: required key missing"),
    ({"DataCaptureConfig": {"InitialSamplingPercentage": 10, "DestinationS3Uri": "s3://b/p",
                            "CaptureOptions": [{"CaptureMode": "Input"}],
                            "CaptureContentTypeHeader": {"CsvContentTypes": ["not a type"]}}},
     "DataCaptureConfig.CaptureContentTypeHeader.CsvContentTypes[0]: 'not a type' is not a media type"),
    ({"ProductionVariants": [{"VariantName": "has space"}]}, "ProductionVariants[0].VariantName: 'has space' is not"),
]


@pytest.mark.parametrize(("document", "problem"), BAD_CONFIGS, ids=[p.split(":")[0] for _, p in BAD_CONFIGS])
def test_each_bad_config_field_is_named(document: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint_config(document)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_a_missing_baseline_config_is_reported_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint_config({"ExplainerConfig": {"ClarifyExplainerConfig": {"ShapConfig": {}}}})
    assert [p for p in caught.value.problems if "ShapBaselineConfig" in p] == [
        f"{_EXPLAINER}.ShapConfig.ShapBaselineConfig: required key missing"], caught.value.problems


def test_sdk_config_is_read_and_other_keys_ignored(caplog: pytest.LogCaptureFixture) -> None:
    document = {
        "EndpointConfigName": "cfg", "Tags": [],
        "ProductionVariants": [{"VariantName": "Blue", "ModelName": "m", "InitialInstanceCount": 1}],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 50, "DestinationS3Uri": "s3://b/p",
                              "KmsKeyId": "key", "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"],
                                                           "JsonContentTypes": ["application/jsonlines"]}},
        **_explainer(NumberOfSamples=100, Seed=1, UseLogit=True)}
    with caplog.at_level("INFO", logger="lucent.endpoint"):
        config = parse_endpoint_config(document)
    assert config.variant_name == "Blue"
    assert config.capture.sampling_percentage == 50 and config.capture.json_types == ("application/jsonlines",)
    assert config.explainer.num_samples == 100 and config.explainer.use_logit
    for ignored in ("EndpointConfigName", "Tags", "ProductionVariants[0].ModelName", "KmsKeyId"):
        assert sum(ignored in record.getMessage() for record in caplog.records) == 1, ignored


def test_cli_lists_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "endpoint-config.json"
    document = _explainer(NumberOfSamples="many", UseLogit=3)
    document["DataCaptureConfig"] = {"InitialSamplingPercentage": -1, "DestinationS3Uri": "s3://b/p",
                                     "CaptureOptions": [{"CaptureMode": "Input"}]}
    config.write_text(json.dumps(document))
    code = endpoint_main(["--config", str(config), "--endpoint-name", NAME, "--model-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1
    assert "3 problem(s)" in err and 'NumberOfSamples: expected an integer, got "many"' in err
    assert "UseLogit" in err and "InitialSamplingPercentage" in err


def test_log_level_options_are_the_other_commands(tmp_path: Path, monkeypatch, capsys) -> None:
    # --log-level and $LUCENT_LOG_LEVEL, as lucent run has them (the endpoint had only -v).
    config = tmp_path / "endpoint-config.json"
    config.write_text(json.dumps({"ProductionVariants": [{"VariantName": "AllTraffic"}]}))
    argv = ["--config", str(config), "--endpoint-name", NAME, "--model-url", "http://127.0.0.1:9"]
    monkeypatch.setenv("LUCENT_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit, match="LUCENT_LOG_LEVEL='loud': choose from debug, info, warning, error"):
        endpoint_main(argv)
    with pytest.raises(SystemExit) as refused:
        endpoint_main([*argv, "--log-level", "chatty"])
    assert refused.value.code == 2 and "--log-level: invalid choice: 'chatty'" in capsys.readouterr().err


# -- explanations and capture ----------------------------------------------------------------------


def _explained_config(**clarify) -> dict:
    document = _explainer()
    document["ExplainerConfig"]["ClarifyExplainerConfig"].update(
        {"InferenceConfig": {"FeatureHeaders": ["a", "b", "c", "d"], "LabelHeaders": ["no", "yes"]}, **clarify})
    return document


def test_explanations_by_config_and_header(model_url: str) -> None:
    with endpoint(_explained_config(EnableExplanations="[1]>`0.5`"), model_url) as url:
        client = runtime(url)
        response = invoke(client)
        assert response["ContentType"] == "application/json"
        document = json.loads(response["Body"].read())
        assert document["version"] == "1.0" and document["label_headers"] == ["no", "yes"]
        assert document["predictions"]["content_type"].startswith("text/csv")
        first, second = document["explanations"]["kernel_shap"]
        assert second is None  # P(yes) < 0.5: not explained
        assert [feature["feature_header"] for feature in first] == ["a", "b", "c", "d"]
        p_yes = float(document["predictions"]["data"].split()[0].split(",")[1])
        baseline = json.loads(invoke(client, body=b"0,0,0,0", EnableExplanations="`false`")["Body"].read())
        assert baseline["explanations"] == {}
        expected = float(baseline["predictions"]["data"].split(",")[1])
        total = sum(feature["attributions"][0]["attribution"][1] for feature in first)
        assert total == pytest.approx(p_yes - expected, abs=1e-6)  # efficiency, 4 features: exact
        both = json.loads(invoke(client, EnableExplanations="`true`")["Body"].read())
        assert all(entry is not None for entry in both["explanations"]["kernel_shap"])
        with pytest.raises(client.exceptions.ValidationError, match="true or false"):
            invoke(client, EnableExplanations="[1]")
        metrics = urllib3.PoolManager().request("GET", f"{url}/metrics").data.decode()
        assert "lucent_endpoint_explained_records_total 3" in metrics


def test_explainer_with_a_model_answering_too_few_rows(model_url: str) -> None:
    with http_server(_Faulty, mode="short") as short:
        short_url = f"http://127.0.0.1:{short.server_address[1]}"
        with endpoint(_explained_config(), short_url) as url:
            client = runtime(url)
            with pytest.raises(client.exceptions.ModelError, match="returned 1 record"):
                invoke(client)
            with pytest.raises(client.exceptions.ModelError, match="sent 15 record"):  # the synthetic rows
                invoke(client, body=b"1,2,3,4")
            assert urllib3.PoolManager().request("GET", f"{url}/ping").status == 200


def test_capture_lines_hold_what_the_caller_received(model_url: str, tmp_path: Path) -> None:
    document = _explained_config()
    document["DataCaptureConfig"] = {"InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path / "capture"),
                                     "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                     "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"],
                                                                  "JsonContentTypes": ["application/json"]}}
    received = []
    with endpoint(document, model_url) as url:
        client = runtime(url)
        for number in range(3):
            received.append(invoke(client, InferenceId=f"id-{number}")["Body"].read().decode())
    lines = [json.loads(line) for path in sorted((tmp_path / "capture").rglob("*.jsonl"))
             for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert all(path.relative_to(tmp_path / "capture").parts[:2] == (NAME, "AllTraffic")
               for path in (tmp_path / "capture").rglob("*.jsonl"))
    by_id = {line["eventMetadata"]["inferenceId"]: line for line in lines}
    for number, body in enumerate(received):
        captured = by_id[f"id-{number}"]["captureData"]
        assert captured["endpointOutput"]["data"] == body and captured["endpointOutput"]["encoding"] == "JSON"
        assert captured["endpointInput"]["data"] == "0.5,1,2,3\n-2,-1,0,1"


def test_command_serves_the_model_folder_and_flushes_capture_on_sigterm(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    folder = tmp_path / "model"
    folder.mkdir()
    features = np.random.default_rng(1).normal(size=(100, 4))
    joblib.dump(LogisticRegression().fit(features, features[:, 0] > 0), folder / "model.joblib")
    document = _explained_config()
    document["DataCaptureConfig"] = {"InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path / "capture"),
                                     "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]}
    (tmp_path / "config.json").write_text(json.dumps(document))
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "endpoint", "--config", str(tmp_path / "config.json"),
                                "--endpoint-name", NAME, "--model-dir", str(folder), "--port", "0"],
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        url = None
        for line in process.stderr:  # ends if the process exits
            if found := re.search(r"in service at (http://\S+)", line):
                url = found.group(1)
                break
        assert url is not None, "the endpoint did not start"
        document = json.loads(invoke(runtime(url))["Body"].read())
        assert len(document["explanations"]["kernel_shap"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    lines = [line for path in (tmp_path / "capture").rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) == 1 and json.loads(lines[0])["captureData"]["endpointInput"]["encoding"] == "BASE64"


def test_command_names_model_url_when_that_model_never_answers(tmp_path: Path) -> None:
    """The wait for --model-url names the option (not the batch job's predictor.endpoint_url) and hides the
    URL's password."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "config.json").write_text(json.dumps({"ProductionVariants": [{"VariantName": "AllTraffic"}]}))
    done = subprocess.run([sys.executable, "-m", "container.cli", "endpoint", "--config", str(tmp_path / "config.json"),
                           "--endpoint-name", NAME, "--model-url", f"http://user:hunter2@127.0.0.1:{port}/"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "LUCENT_ENDPOINT_WAIT_SECONDS": "1"})
    assert done.returncode != 0
    assert (f"error: --model-url: The model at http://***@127.0.0.1:{port}/ did not become healthy within 1 s"
            in done.stderr), done.stderr
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.parametrize(("content", "expected"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply to read"),
    (b'{"NumberOfSamples": ' + b"9" * 5000 + b"}", "digits"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b'{"ProductionVariants": [', "line 1, column"),
])
def test_an_unreadable_config_file_is_a_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_endpoint_config(path)
    assert expected in str(raised.value) and "endpoint config (--config)" in str(raised.value)


def test_a_config_file_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"ProductionVariants": [{"VariantName": "Blue"}]}')
    assert load_endpoint_config(path).variant_name == "Blue"


@pytest.mark.parametrize("document, problem", [
    # the SDK's ExplainerConfig._to_request_dict() given as the whole body: no silent endpoint without explanations
    ({"ClarifyExplainerConfig": {"ShapConfig": {}}},
     'ClarifyExplainerConfig: not a CreateEndpointConfig key; it belongs inside ExplainerConfig'),
    ({"EnableCapture": True}, "EnableCapture: not a CreateEndpointConfig key; it belongs inside DataCaptureConfig"),
    ({"DataCaptureConfigs": {}}, "DataCaptureConfigs: not a CreateEndpointConfig key (did you mean DataCaptureConfig?)"),
    ({"Explainer": {}}, "Explainer: not a CreateEndpointConfig key (did you mean ExplainerConfig?)"),
])
def test_a_key_sagemaker_would_refuse_is_a_problem_not_ignored(document, problem) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint_config(document)
    assert [p for p in caught.value.problems if p.startswith(problem)], caught.value.problems
