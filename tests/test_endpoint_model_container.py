"""The endpoint's client of the model container (``container.endpoint.scoring.ModelContainer``), for real:
Lucent's model server (one worker, a short idle timeout) and raw sockets on 127.0.0.1. An invocation is
sent, other work may run, and its answer is read later; kept-alive connections are reused, a kept-alive
connection the container closed meanwhile costs one re-send, the timeout counts from the send, and a
container that cannot be reached is named as such."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from container.endpoint.scoring import ModelContainer, ModelUnreachable
from container.sidecar import ModelServer, start_model_server
from container.sidecar.limits import RequestLimits
from tests.test_sidecar_keepalive import INFERENCE

LIMITS = RequestLimits(max_body_bytes=1024 * 1024, header_timeout=0.5, body_timeout=5.0, max_connections=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = tmp_path_factory.mktemp("container-model")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(INFERENCE)  # predict_fn: the sum of each row
    with start_model_server(folder, workers=1, limits=LIMITS) as started:
        started.wait_healthy(60)
        yield started


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_answers_are_read_after_other_work_and_connections_are_kept(server: ModelServer):
    container = ModelContainer(server.url, timeout=10)
    try:
        first = container.send(b"1,2,3", "text/csv", "text/csv")
        second = container.send(b"4,5\n6,7", "text/csv", "text/csv")  # a second connection: the first is busy
        assert [container.invoke(b"10,1", "text/csv", "text/csv").body.strip()] == [b"11"]
        answers = [second.answer(), first.answer()]
        assert [answer.status for answer in answers] == [200, 200]
        assert [answer.body.split() for answer in answers] == [[b"9", b"13"], [b"6"]]
        assert answers[0].content_type.startswith("text/csv")
        assert len(container._idle) == 3  # every connection went back to the pool
        idle = list(container._idle)
        assert container.invoke(b"1,1", "text/csv", "text/csv").body.strip() == b"2"
        assert container._idle[-1] in idle  # reused, not a new one
        assert container.ping()
    finally:
        container.close()
    assert not container._idle


def test_a_kept_alive_connection_the_container_closed_costs_one_resend(server: ModelServer):
    container = ModelContainer(server.url, timeout=10)
    try:
        assert container.invoke(b"1,2", "text/csv", "text/csv").status == 200
        (kept,) = container._idle
        deadline = time.monotonic() + 10
        while not _closed_by_peer(kept.sock):  # the server closes an idle connection after 0.5 s
            assert time.monotonic() < deadline, "the server never closed the idle connection"
        answer = container.invoke(b"2,2", "text/csv", "text/csv")
        assert (answer.status, answer.body.strip()) == (200, b"4")
        assert container._idle and container._idle[0] is not kept
    finally:
        container.close()


def test_the_timeout_counts_from_the_send_and_an_unreachable_container_is_named():
    with socket.socket() as listener:  # accepts, reads, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        container = ModelContainer(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        started = time.monotonic()
        pending = container.send(b"1", "text/csv", None)
        with pytest.raises(ModelUnreachable, match="no answer within 0.3 s") as caught:
            pending.answer()
        assert caught.value.timed_out and time.monotonic() - started < 5
        port = listener.getsockname()[1]
        for sock in accepted:
            sock.close()
    refused = ModelContainer(f"http://127.0.0.1:{port}", timeout=1)
    with pytest.raises(ModelUnreachable, match="cannot reach the model container") as caught:
        refused.invoke(b"1", "text/csv", None)
    assert not caught.value.timed_out
    assert not refused.ping()
