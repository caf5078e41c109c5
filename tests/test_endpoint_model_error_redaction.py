"""``lucent endpoint`` in front of a model container whose error text holds credentials: boto3's ModelError
(its message and OriginalMessage) carries the text redacted (analyzer.redact), not the secrets."""

from __future__ import annotations

import threading

import boto3
import pytest
from botocore.config import Config

from container.endpoint.cli import open_endpoint
from container.endpoint.config import parse_endpoint_config
from tests.conftest import FakeContainer, http_server

NAME = "my-endpoint"
LEAK = (b"predict_fn failed: cannot connect to postgres://admin:hunter2@db.internal/x "
        b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY key AKIAIOSFODNN7EXAMPLE")


class _Leaky(FakeContainer):
    """A model container (not Lucent's: any image or URL) whose 500 body quotes secrets."""

    def do_POST(self) -> None:  # noqa: N802
        self.request_body()
        self.answer(500, LEAK, "text/plain")


def test_model_error_original_message_is_redacted() -> None:
    with http_server(_Leaky) as leaky, \
            open_endpoint(parse_endpoint_config({}), NAME, f"http://127.0.0.1:{leaky.server_address[1]}") as parts:
        thread = threading.Thread(target=parts.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            client = boto3.session.Session().client(
                "sagemaker-runtime", endpoint_url=parts.server.url, region_name="us-east-1", aws_access_key_id="a",
                aws_secret_access_key="b", config=Config(retries={"total_max_attempts": 1}, read_timeout=30))
            with pytest.raises(client.exceptions.ModelError) as caught:
                client.invoke_endpoint(EndpointName=NAME, Body=b"1,2,3", ContentType="text/csv")
        finally:
            parts.server.shutdown()
    error = caught.value.response
    assert error["OriginalStatusCode"] == 500
    assert error["OriginalMessage"].startswith("predict_fn failed: cannot connect to postgres://***@db.internal/x")
    for text in (error["OriginalMessage"], error["Error"]["Message"]):
        for secret in ("hunter2", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AKIAIOSFODNN7EXAMPLE"):
            assert secret not in text
