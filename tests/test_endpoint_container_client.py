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
from container.endpoint.scoring import EXPLAINER_RETRY, ContainerClient
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
        if mode in ("busy", "throttle") and self.server.retry_after is not None:
            self.send_response(503 if mode == "busy" else 429)
            self.send_header("Retry-After", self.server.retry_after)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")
            return
        body = _npy(np.array([[0.25, 0.75]] * self.server.rows)) if mode in ("ok", "truncate") else b"busy"
        self.answer({"ok": 200, "truncate": 200, "busy": 503, "throttle": 429, "refuse": 400, "fail": 500}[mode],
                    body, NPY, length=len(body) + (100 if mode == "truncate" else 0))
        if mode == "truncate":
            self.close_connection = True


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def faulty(*modes: str, retry_after: str | None = None, rows: int = 1):
    """``rows``: how many score rows an "ok" answer holds. ``retry_after``: the Retry-After of a busy answer."""
    return http_server(_Faulty, modes=modes, calls=0, lock=threading.Lock(), release=threading.Event(),
                       retry_after=retry_after, rows=rows)


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


# -- the explainer's policy (container.endpoint.scoring.EXPLAINER_RETRY): 429 / 503 once more, nothing else ---


@pytest.mark.parametrize(("modes", "rows", "outcome", "calls"), [
    (("busy", "ok"), 1, None, 2),  # refused before it ran: sent once more
    (("throttle", "ok"), 4, None, 2),
    (("busy", "busy", "ok"), 1, (ModelTransportError, r"gave no answer for row 0 after 2 attempt\(s\): HTTP 503"), 2),
    (("fail", "ok"), 1, (ModelError, r"row 0: HTTP 500: 'busy' \(after 1 attempts\)"), 1),  # it ran: not again
    (("fail", "ok"), 4, (ModelError, r"rows 0 to 3: HTTP 500"), 1),  # online: not halved, not asked as CSV
    (("refuse", "ok"), 1, (ModelError, r"row 0: HTTP 400"), 1),
    (("truncate", "ok"), 1, (ModelTransportError, r"connection failed .*IncompleteRead"), 1),  # dropped once written
])
def test_the_explainer_sends_a_call_again_only_after_429_or_503(modes, rows, outcome, calls) -> None:
    with faulty(*modes, rows=rows) as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}", retry=EXPLAINER_RETRY, online=True)
        try:
            if outcome is None:
                np.testing.assert_array_equal(scorer.predict(np.zeros((rows, 3))).scores, [[0.25, 0.75]] * rows)
            else:
                with pytest.raises(outcome[0], match=outcome[1]):
                    scorer.predict(np.zeros((rows, 3)))
        finally:
            scorer.close()
        assert server.calls == calls


def test_the_explainer_cannot_connect_once_and_stops() -> None:
    scorer = client(f"http://127.0.0.1:{_free_port()}", retry=EXPLAINER_RETRY, online=True)
    with pytest.raises(ModelTransportError, match=r"after 1 attempt\(s\): cannot connect"):
        scorer.predict(np.zeros((1, 3)))
    scorer.close()


def test_retry_after_is_honoured_within_the_cap() -> None:
    # A 60 s backoff would pass the 5 s wait for an answer (a ModelTransportError at once): "Retry-After: 0" is
    # what the client waits instead.
    waits_long = RetryPolicy(attempts=2, busy_only=True, backoff_seconds=60, max_backoff_seconds=60)
    with faulty("busy", "ok", retry_after="0") as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}", retry=waits_long, timeout=5, online=True)
        np.testing.assert_array_equal(scorer.predict(np.zeros((1, 3))).scores, [[0.25, 0.75]])
        scorer.close()
        assert server.calls == 2
    # An hour's Retry-After is cut to the policy's cap (0.05 s): the call is sent again, well within its 5 s.
    capped = RetryPolicy(attempts=2, busy_only=True, backoff_seconds=0.01, max_backoff_seconds=0.05)
    with faulty("throttle", "ok", retry_after="3600") as server:
        scorer = client(f"http://127.0.0.1:{server.server_address[1]}", retry=capped, timeout=5, online=True)
        np.testing.assert_array_equal(scorer.predict(np.zeros((1, 3))).scores, [[0.25, 0.75]])
        scorer.close()
        assert server.calls == 2
