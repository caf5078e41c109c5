"""The endpoint explains a request while the model answers it, when nothing depends on that answer:
the response is the very document the one-after-the-other path gives, and a failing model call still
wins over the explanation, as before. A real built-in model server (two workers) on 127.0.0.1, the
endpoint's app called in process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.endpoint.app import ENABLE_EXPLANATIONS, EndpointApp, Request, Response
from container.endpoint.cli import open_endpoint
from container.endpoint.config import parse_endpoint_config
from container.sidecar import start_model_server

NAME = "overlap"
RECORDS = b"0.5,1,2,3\n-2,-1,0,1\n1.5,0.25,-1,2"
ALWAYS_TRUE = "length(@) > `0`"  # true for every record, but only known from the model's answer


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointApp]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 4))
    folder = tmp_path_factory.mktemp("model")
    joblib.dump(LogisticRegression().fit(features, features[:, 0] + features[:, 1] > 0), folder / "model.joblib")
    config = parse_endpoint_config({"ExplainerConfig": {"ClarifyExplainerConfig": {
        "InferenceConfig": {"ProbabilityIndex": 1},
        "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0\n1,-1,0.5,0"},
                       "Seed": 3}}}})
    with start_model_server(folder, workers=2) as server:
        server.wait_healthy(timeout=60)
        with open_endpoint(config, NAME, server.url, default_io=True) as parts:
            yield parts.app


def invoke(app: EndpointApp, body: bytes = RECORDS, accept: str = "text/csv", **headers: str) -> Response:
    return app.handle(Request("POST", f"/endpoints/{NAME}/invocations",
                              [("Content-Type", "text/csv"), ("Accept", accept), *headers.items()], body))


def test_explanations_start_only_when_the_model_answer_cannot_switch_them_off(app: EndpointApp):
    explanations = app.explanations
    assert explanations is not None
    for header in (None, "`true`", " `true` "):
        started = explanations.start(RECORDS, "text/csv", header)
        assert started is not None, header
        assert len(started.future.result(timeout=30)) == 3
    assert explanations.start(RECORDS, "text/csv", ALWAYS_TRUE) is None
    assert explanations.start(RECORDS, "text/csv", "`false`") is None
    assert explanations.start(b"1,2\n1,2,3", "text/csv", None) is None  # unreadable: reported after the answer


def test_started_and_sequential_explanations_give_the_same_document(app: EndpointApp):
    started = invoke(app)
    forced = invoke(app, **{ENABLE_EXPLANATIONS: "`true`"})
    sequential = invoke(app, **{ENABLE_EXPLANATIONS: ALWAYS_TRUE})
    assert started.status == forced.status == sequential.status == 200
    assert started.body == forced.body == sequential.body
    document = json.loads(started.body)
    assert len(document["explanations"]["kernel_shap"]) == 3
    assert document["predictions"]["data"].count("\n") >= 2


def test_a_failing_model_call_wins_over_a_started_explanation(app: EndpointApp):
    refused = invoke(app, accept="text/html")  # the caller's call is refused; the synthetic rows' would not be
    assert refused.status == 424
    error = json.loads(refused.body)
    assert error["OriginalStatusCode"] == 406 and "text/html" in error["OriginalMessage"]
    unreadable = invoke(app, body=b"1,2,3,4\n1,2")  # the model refuses it before the explainer would
    assert unreadable.status == 424 and json.loads(unreadable.body)["OriginalStatusCode"] == 400
    assert invoke(app).status == 200  # and the endpoint goes on
