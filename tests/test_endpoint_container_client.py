"""The explainer's model client in the endpoint (container.endpoint.scoring.ContainerClient): ModelClient's
batching and answer handling over the endpoint's keep-alive http.client connections. Real servers on
127.0.0.1: the built-in model server for the answers, small faulty servers for each way an answer fails."""

from __future__ import annotations

import io
import threading

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from analyzer.config.model import Predictor
from analyzer.media import NPY
from analyzer.predict import ModelError, ModelTransportError, RetryPolicy
from container.endpoint.scoring import ContainerClient
from container.model_endpoint import _free_port
from container.sidecar import start_model_server
from tests.conftest import FakeContainer, http_server

NAMES = ["a", "b", "c"]


def client(url: str, **options) -> ContainerClient:
    options.setdefault("retry", RetryPolicy(attempts=2, backoff_seconds=0.01, max_elapsed_seconds=5))
    return ContainerClient(url, Predictor(content_type=NPY, accept_type=NPY), NAMES, spread=False, **options)


def test_scores_equal_the_models_own_and_connections_are_kept(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    model = LogisticRegression().fit(x, (x[:, 0] - x[:, 2] > 0).astype(int))
    joblib.dump(model, tmp_path / "model.joblib")
    with start_model_server(tmp_path, workers=1) as server:
        server.wait_healthy(timeout=60)
        scorer = client(server.url, max_records_per_request=120)
        try:
            scores = scorer.predict(x).scores  # three requests of at most 120 rows, side by side
            opened = set(scorer._container._idle)
            again = scorer.predict(x[:5]).scores
            kept = set(scorer._container._idle)
        finally:
            scorer.close()
    np.testing.assert_array_equal(scores, model.predict_proba(x))
    np.testing.assert_array_equal(again, model.predict_proba(x[:5]))
    assert scorer.stats.requests == 4
    # three requests side by side open up to three connections (fewer when one ends before the next starts);
    # the later request goes over one of them, kept alive: no new connection
    assert 1 <= len(opened) <= 3 and kept == opened


class _Faulty(FakeContainer):
    """Answers by ``server.modes``, one mode per request in turn (the last one repeats)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        self.request_body()
        with self.server.lock:
            mode = self.server.modes[min(self.server.calls, len(self.server.modes) - 1)]
            self.server.calls += 1
        if mode == "hang":
            self.server.release.wait(30)
            return
        body = _npy(np.array([[0.25, 0.75]])) if mode in ("ok", "truncate") else b"busy"
        self.answer({"ok": 200, "truncate": 200, "busy": 503, "refuse": 400}[mode], body, NPY,
                    length=len(body) + (100 if mode == "truncate" else 0))
        if mode == "truncate":
            self.close_connection = True


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def faulty(*modes: str):
    return http_server(_Faulty, modes=modes, calls=0, lock=threading.Lock(), release=threading.Event())


def test_a_busy_answer_is_retried_and_a_client_error_is_not() -> None:
    with faulty("busy", "ok") as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}")
        np.testing.assert_array_equal(scorer.predict(np.zeros((1, 3))).scores, [[0.25, 0.75]])
        scorer.close()
        assert server.calls == 2
    with faulty("refuse") as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ModelError, match="failed on the record at row 0: HTTP 400: 'busy'"):
            scorer.predict(np.zeros((1, 3)))
        scorer.close()
        assert server.calls == 1


def test_no_answer_in_time_is_a_transport_error_after_one_wait() -> None:
    with faulty("hang") as server:
        try:
            scorer = client(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.3)
            with pytest.raises(ModelTransportError, match="did not answer within 0.3 s"):
                scorer.predict(np.zeros((1, 3)))
            scorer.close()
            assert server.calls == 1  # the whole wait was spent: not sent again
        finally:
            server.release.set()


def test_a_broken_answer_and_a_refused_connection_are_named() -> None:
    with faulty("truncate") as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ModelTransportError, match=r"connection failed .*IncompleteRead"):
            scorer.predict(np.zeros((1, 3)))
        scorer.close()
        assert server.calls == 2  # the policy's two attempts, each sent once
    scorer = client(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ModelTransportError, match=r"cannot connect \(cannot reach the model container"):
        scorer.predict(np.zeros((1, 3)))
    scorer.close()
