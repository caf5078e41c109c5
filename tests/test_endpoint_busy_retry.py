"""``lucent endpoint`` and a model container that answers 429 / 503 (busy, starting): the explainer's
synthetic-rows call is sent once more, nothing else is. A real loopback model container (http.server) that
counts what it received, the endpoint's real HTTP server and boto3's own sagemaker-runtime client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import urllib3

from tests.conftest import FakeContainer, http_server
from tests.test_endpoint_server import NAME, endpoint, runtime

RECORD = b"1,2,3,4"
CONFIG = {"ExplainerConfig": {"ClarifyExplainerConfig": {
    "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0"}},
    "InferenceConfig": {"FeatureHeaders": ["a", "b", "c", "d"]}}}}


class _BusyModel(FakeContainer):
    """A linear model, score = 0.5 + (x_a + x_b + x_c + x_d) / 10 per CSV row, whose synthetic-rows calls (a
    body of more than one row) are answered ``server.status`` while ``server.refusals`` lasts (-1: always),
    and the caller's own invocation (the body ``RECORD``) too when ``server.refuse_record``."""

    protocol_version = "HTTP/1.1"  # keeps its connections, as a SageMaker model server

    def do_POST(self) -> None:  # noqa: N802 -- http.server API
        body = self.request_body()
        rows = [line for line in body.decode().splitlines() if line.strip()]
        server = self.server
        with server.lock:
            kind = "synthetic" if len(rows) > 1 else "record" if body == RECORD else "other"
            server.received.append(kind)
            refuse = (kind == "synthetic" or (kind == "record" and server.refuse_record)) and server.refusals != 0
            if refuse and server.refusals > 0:
                server.refusals -= 1
        if refuse:
            payload = b"busy: try again"
            self.send_response(server.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            if server.retry_after is not None:
                self.send_header("Retry-After", server.retry_after)
            self.end_headers()
            self.wfile.write(payload)
            return
        scores = [0.5 + sum(float(v) for v in row.split(",")) / 10 for row in rows]
        self.answer(200, "\n".join(repr(s) for s in scores).encode())


@contextmanager
def busy_model(refusals: int, status: int = 503, retry_after: str | None = None,
               refuse_record: bool = False) -> Iterator[tuple[object, str]]:
    with http_server(_BusyModel, refusals=refusals, status=status, retry_after=retry_after,
                     refuse_record=refuse_record, received=[], lock=threading.Lock()) as server, \
            endpoint(CONFIG, f"http://127.0.0.1:{server.server_address[1]}") as url:
        yield server, url


def attributions(body: bytes) -> np.ndarray:
    (entry,) = json.loads(body)["explanations"]["kernel_shap"]
    return np.array([item["attribution"] for feature in entry for item in feature["attributions"]])


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, "0")])
def test_a_synthetic_rows_call_refused_as_busy_once_is_sent_once_more(status: int, retry_after: str | None) -> None:
    with busy_model(refusals=1, status=status, retry_after=retry_after) as (server, url):
        before = len(server.received)
        response = runtime(url).invoke_endpoint(EndpointName=NAME, Body=RECORD, ContentType="text/csv")
        body = response["Body"].read()
        received = server.received[before:]
    # a linear model on a zero baseline: each feature's attribution is its own term, x / 10
    np.testing.assert_allclose(attributions(body), [[0.1], [0.2], [0.3], [0.4]], atol=1e-9)
    assert sorted(received) == ["record", "synthetic", "synthetic"]  # the busy answer, then the same call again
    assert server.refusals == 0


def test_a_container_busy_for_good_fails_the_request_and_the_endpoint_serves_on() -> None:
    with busy_model(refusals=-1) as (server, url):
        client = runtime(url)
        before = len(server.received)
        with pytest.raises(client.exceptions.ModelError) as caught:
            client.invoke_endpoint(EndpointName=NAME, Body=RECORD, ContentType="text/csv")
        received = server.received[before:]
        error = caught.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert error["OriginalStatusCode"] == 503  # the container's last answer to the synthetic rows
        assert "after 2 attempt(s): HTTP 503: 'busy: try again'" in error["OriginalMessage"]
        assert sorted(received) == ["record", "synthetic", "synthetic"]  # one retry, not more
        # still up: pinged healthy, and an invocation without explanations is answered
        assert urllib3.PoolManager().request("GET", f"{url}/ping").status == 200
        plain = client.invoke_endpoint(EndpointName=NAME, Body=RECORD, ContentType="text/csv",
                                       EnableExplanations="`false`")
        assert json.loads(plain["Body"].read())["predictions"]["data"].strip() == repr(0.5 + 1.0)


def test_the_callers_own_invocation_refused_as_busy_is_the_callers_and_sent_once() -> None:
    """As SageMaker's runtime: the container's 503 is the caller's ModelError, with its status; not retried."""
    with busy_model(refusals=-1, refuse_record=True) as (server, url):
        client = runtime(url)
        before = len(server.received)
        with pytest.raises(client.exceptions.ModelError) as caught:
            client.invoke_endpoint(EndpointName=NAME, Body=RECORD, ContentType="text/csv",
                                   EnableExplanations="`false`")
        assert caught.value.response["OriginalStatusCode"] == 503
        assert caught.value.response["OriginalMessage"] == "busy: try again"
        assert server.received[before:] == ["record"]
