"""``lucent launch`` against a real S3 API: moto's server on 127.0.0.1, spoken to over HTTP by boto3."""

from __future__ import annotations

import contextlib
import http.client
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from container.demo import DEMO_CONFIG, write_demo_job  # noqa: E402
from container.job import SUCCESS_MESSAGE  # noqa: E402
from container.launcher import PART_SIZE, Location, Store, etag, main  # noqa: E402
from tests.conftest import JobRoot, http_server, moto_s3, use_test_credentials  # noqa: E402

CONFIG = {**DEMO_CONFIG, "methods": {k: v for k, v in DEMO_CONFIG["methods"].items() if k != "report"}}


@pytest.fixture(scope="module")
def endpoint() -> str:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch):
    """A client on the moto endpoint, with a fresh bucket; AWS_ENDPOINT_URL points the launcher there."""
    use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=endpoint)
    client = boto3.client("s3")
    client.create_bucket(Bucket="jobs")
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="jobs"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="jobs", Key=item["Key"])
    client.delete_bucket(Bucket="jobs")


@pytest.fixture(scope="module")
def local_job(tmp_path_factory) -> JobRoot:
    """The demo bias job (no report, to stay fast) run on local folders: the reference results."""
    job = JobRoot(write_demo_job(tmp_path_factory.mktemp("local") / "job", n_rows=300, seed=7, config=CONFIG))
    assert job.run() == 0, job.message
    return job


def put_tree(client, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), "jobs", f"{prefix}/{path.relative_to(folder).as_posix()}")


def get_text(client, key: str) -> str:
    return client.get_object(Bucket="jobs", Key=key)["Body"].read().decode()


def keys(client, prefix: str = "") -> list[str]:
    return sorted(item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="jobs", Prefix=prefix)
                  for item in page.get("Contents", []))


def test_job_on_s3_inputs_publishes_the_same_results(s3, local_job, capsys):
    put_tree(s3, local_job.root / "input", "in")
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"message: {SUCCESS_MESSAGE}" in printed and "results: s3://jobs/out" in printed
    assert keys(s3, "out/") == ["out/.lucent-outputs.json", "out/analysis.json", "out/message"]
    # the local output folder's manifest, in its format: what the next launch may replace
    assert json.loads(get_text(s3, "out/.lucent-outputs.json")) == {"published": ["analysis.json", "message"]}
    assert json.loads(get_text(s3, "out/analysis.json")) == local_job.analysis()
    assert get_text(s3, "out/message").strip() == SUCCESS_MESSAGE


def test_dataset_uri_in_the_config_is_staged_and_rewritten(s3, local_job, tmp_path):
    put_tree(s3, local_job.data_dir, "datasets/credit")
    config = {**CONFIG, "dataset_uri": "s3://jobs/datasets/credit/credit.csv"}
    (tmp_path / "analysis_config.json").write_text(json.dumps(config))
    # A local config file and no --data: the dataset comes from the URI named inside the config.
    assert main(["--config", str(tmp_path / "analysis_config.json"), "--output", "s3://jobs/out2"]) == 0
    assert json.loads(get_text(s3, "out2/analysis.json")) == local_job.analysis()


def test_local_paths_only(local_job, tmp_path):
    inputs = local_job.root / "input"
    assert main(["--config", str(inputs / "config"), "--data", str(inputs / "data"),
                 "--output", str(tmp_path / "results")]) == 0
    assert json.loads((tmp_path / "results" / "analysis.json").read_text()) == local_job.analysis()
    assert (tmp_path / "results" / "message").read_text().strip() == SUCCESS_MESSAGE


def test_failed_job_uploads_its_message_and_no_results(s3, local_job, capsys):
    put_tree(s3, local_job.root / "input", "in")
    s3.put_object(Bucket="jobs", Key="bad/config/analysis_config.json", Body=b'{"dataset_type": "text/csv"}')
    code = main(["--config", "s3://jobs/bad/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out"])
    assert code == 1
    assert keys(s3, "out/") == ["out/message"]
    assert get_text(s3, "out/message").startswith("ClientError: ")
    assert "message: ClientError: " in capsys.readouterr().out


def test_missing_input_key_is_a_client_error_in_the_message(s3, capsys):
    code = main(["--config", "s3://jobs/nothing/here", "--output", "s3://jobs/out"])
    assert code == 1
    message = get_text(s3, "out/message")
    assert message.startswith("ClientError: reading s3://jobs/nothing/here: no object"), message
    assert keys(s3, "out/") == ["out/message"]
    assert "ClientError" in capsys.readouterr().out


def test_missing_bucket_is_a_clear_error(s3, local_job, capsys):
    put_tree(s3, local_job.root / "input", "in")
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data",
                 "--output", "s3://no-such-bucket/out"])
    printed = capsys.readouterr()
    assert code == 1
    assert printed.err.startswith("error: ") and "no-such-bucket" in printed.err and "NoSuchBucket" in printed.err
    assert printed.out == ""  # nothing reported as published


def test_image_without_a_reachable_engine(s3, local_job, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    put_tree(s3, local_job.root / "input", "in")
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out",
                 "--image", "lucent:dev"])
    assert code == 1
    assert "no container engine reachable" in get_text(s3, "out/message")
    assert keys(s3, "out/") == ["out/message"]
    capsys.readouterr()


@pytest.fixture
def results(tmp_path) -> Path:
    """An output folder as a big job leaves it: a 20 MB file (3 parts of 8 MB) and 200 small ones."""
    folder = tmp_path / "output"
    (folder / "explanations_shap").mkdir(parents=True)
    (folder / "explanations_shap" / "out.csv").write_bytes(bytes(range(256)) * (20 * 1024 * 1024 // 256))
    for index in range(200):
        (folder / "parts" / f"part-{index:03d}.csv").parent.mkdir(exist_ok=True)
        (folder / "parts" / f"part-{index:03d}.csv").write_text(f"{index},{index * 2}\n")
    return folder


def test_upload_is_multipart_and_a_rerun_uploads_only_what_changed(s3, results):
    store, output = Store(), Location("s3://jobs/results")
    assert store.upload_folder(results, output) == (201, 0)
    big = s3.head_object(Bucket="jobs", Key="results/explanations_shap/out.csv")
    assert big["ETag"].strip('"').endswith("-3") and big["ContentLength"] == 20 * 1024 * 1024
    assert big["ETag"].strip('"') == etag(results / "explanations_shap" / "out.csv")

    assert store.upload_folder(results, output) == (0, 201)  # identical objects: nothing re-sent
    (results / "parts" / "part-007.csv").write_text("changed\n")
    assert store.upload_folder(results, output) == (1, 200)
    assert len(keys(s3, "results/")) == 201  # no duplicates
    assert get_text(s3, "results/parts/part-007.csv") == "changed\n"


class S3Proxy(BaseHTTPRequestHandler):
    """Forwards every request to moto and records it in ``server.requests`` as (method, path). A request
    for which ``server.fault(method, path)`` returns ``(status, code, message)`` is answered with that S3
    error instead, as an overloaded store or a bucket policy would."""

    protocol_version = "HTTP/1.1"

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        self.server.requests.append((self.command, path))
        fault = self.server.fault(self.command, self.path)
        if fault is not None:
            status, code, message = fault
            self._answer(status, f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode(), {})
            return
        # http.client, not urllib: urllib adds a form Content-Type to bodies, which moto would then parse.
        upstream = http.client.HTTPConnection(self.server.target, timeout=60)
        upstream.request(self.command, self.path, body=body or None,
                         headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect")})
        response = upstream.getresponse()
        payload = response.read()
        headers = {name: value for name, value in response.headers.items()
                   if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")}
        upstream.close()
        self._answer(response.status, payload, headers)

    def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815 - http.server API

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def s3_proxy(endpoint: str, fault=lambda method, path: None):
    """An :class:`S3Proxy` on 127.0.0.1 in front of the moto server at ``endpoint``."""
    with http_server(S3Proxy, target=endpoint.removeprefix("http://"), requests=[], fault=fault) as server:
        yield server


def test_interrupted_uploads_are_retried(s3, endpoint, results, monkeypatch):
    failed = set()

    def fail_first_upload_attempt(method, path):
        # Every upload request (PUT, or the POST that completes a multipart upload) fails once.
        if method in ("PUT", "POST") and (method, path) not in failed:
            failed.add((method, path))
            return 500, "InternalError", "try again"
        return None

    with s3_proxy(endpoint, fail_first_upload_attempt) as proxy:
        store = Store(f"http://127.0.0.1:{proxy.server_port}")
        assert store.upload_folder(results, Location("s3://jobs/flaky")) == (201, 0)
    assert len(failed) >= 201  # every upload request failed once and was retried by botocore
    assert len(keys(s3, "flaky/")) == 201
    big = s3.head_object(Bucket="jobs", Key="flaky/explanations_shap/out.csv")
    assert big["ETag"].strip('"') == etag(results / "explanations_shap" / "out.csv")


def test_access_denied_by_the_credentials_policy(s3, local_job, monkeypatch, capsys):
    """moto enforces IAM here: a user allowed to read the inputs but not to write the output."""
    from moto import settings

    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    put_tree(s3, local_job.root / "input", "in")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out"])
    printed = capsys.readouterr().err
    monkeypatch.undo()  # back to unauthenticated moto for the cleanup
    assert code == 1
    assert "AccessDenied" in printed and "s3://jobs/out" in printed, printed
    assert key["SecretAccessKey"] not in printed
    assert keys(s3, "out/") == []
    PART_SIZE  # noqa: B018 - the part size the multipart assertions above rely on


def test_time_series_results_path_names_the_published_object(s3, tmp_path):
    """Clarify writes the S3 URI of a time-series job's out.jsonl in analysis.json (spec 4.6): the
    launcher tells the job where its output goes, and the path names the object it uploads."""
    from tests.test_time_series_job import SPEC_CONFIG, timestamp_records, write_json, write_model

    job = JobRoot(tmp_path / "ts")
    write_model(job)
    write_json(job, timestamp_records())
    job.write_config(SPEC_CONFIG)
    put_tree(s3, job.root / "input", "ts")
    assert main(["--config", "s3://jobs/ts/config", "--data", "s3://jobs/ts/data", "--model", "s3://jobs/ts/model",
                 "--output", "s3://jobs/ts-out/"]) == 0
    section = json.loads(get_text(s3, "ts-out/analysis.json"))["explanations"]["asymmetric_shapley_value"]
    key = "ts-out/asymmetric_shapley_value/fine_grained_chronological/out.jsonl"
    assert section["explanation_results_path"] == f"s3://jobs/{key}"
    assert key in keys(s3, "ts-out/")


def test_output_uri_from_sagemaker_processing_job_config(tmp_path, monkeypatch):
    from container.job import OUTPUT_URI_VARIABLE, JobPaths, published_output_uri

    monkeypatch.delenv(OUTPUT_URI_VARIABLE, raising=False)
    paths = JobPaths.for_root(tmp_path / "processing")
    job_config = tmp_path / "processingjobconfig.json"
    assert published_output_uri(paths, job_config) is None  # not on SageMaker
    outputs = [{"OutputName": "other", "S3Output": {"S3Uri": "s3://b/other", "LocalPath": "/elsewhere"}},
               {"OutputName": "analysis_result",
                "S3Output": {"S3Uri": "s3://b/clarify-output", "LocalPath": str(paths.output_dir)}}]
    job_config.write_text(json.dumps({"ProcessingOutputConfig": {"Outputs": outputs}}))
    assert published_output_uri(paths, job_config) == "s3://b/clarify-output"
    job_config.write_text("{not json")
    assert published_output_uri(paths, job_config) is None
    monkeypatch.setenv(OUTPUT_URI_VARIABLE, "s3://b/told")
    assert published_output_uri(paths, job_config) == "s3://b/told"
