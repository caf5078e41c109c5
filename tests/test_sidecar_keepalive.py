"""Keep-alive in the model server's worker, for real: a one-worker server on 127.0.0.1 and raw sockets.

Clients that send ``Connection: keep-alive`` get several requests answered on one connection; idle
kept-alive connections are closed silently after the header timeout and count against the connection
cap; a request that arrived while the worker ran another one, pipelined bytes, and clients that do not
ask all get ``Connection: close``, as before."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from container.sidecar import ModelServer, start_model_server
from container.sidecar.app import SidecarApp
from container.sidecar.limits import RequestLimits

LIMITS = RequestLimits(max_body_bytes=1024 * 1024, header_timeout=1.0, body_timeout=5.0, max_connections=4)
HOLD = 999.0  # a record starting with this makes predict_fn wait for the test's "release" file

INFERENCE = f'''
import time
from pathlib import Path

def model_fn(model_dir):
    return Path(model_dir)

def predict_fn(data, model_dir):
    if data[0, 0] == {HOLD}:
        (model_dir / "started").write_text("1")
        deadline = time.monotonic() + 30
        while not (model_dir / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    return data.sum(axis=1)
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keepalive-model")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(INFERENCE)
    return folder


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ModelServer]:
    with start_model_server(model_dir, workers=1, limits=LIMITS) as started:
        started.wait_healthy(60)
        yield started


def connect(server: ModelServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def request(body: bytes, connection: str | None = "keep-alive") -> bytes:
    lines = ["POST /invocations HTTP/1.1", "Host: x", "Content-Type: text/csv", "Accept: text/csv",
             f"Content-Length: {len(body)}", *([f"Connection: {connection}"] if connection else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Responses read one at a time from a socket (Content-Length framing)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def rest_until_closed(self, timeout: float) -> bytes:
        """What else arrives before the server closes the connection (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        data = self.buffer
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f"the server did not close the connection within {timeout} s")

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {self.buffer[:200]!r}"
        self.buffer += chunk


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_several_requests_are_answered_on_one_kept_alive_connection(server):
    with connect(server) as sock:
        reader = Reader(sock)
        for i in range(5):
            sock.sendall(request(f"{i},1,2\n{i},0,0".encode()))
            status, headers, body = reader.response()
            assert (status, headers["connection"]) == (200, "keep-alive")
            assert [float(value) for value in body.split()] == [i + 3, i]


def test_clients_that_do_not_ask_see_the_connection_closed_after_the_response(server):
    with connect(server) as sock:
        sock.sendall(request(b"1,2,3", connection=None))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, headers["connection"], body) == (200, "close", b"6\n")
        assert reader.rest_until_closed(timeout=5) == b""


def test_an_idle_kept_alive_connection_is_closed_silently_after_the_header_timeout(server):
    with connect(server) as sock:
        sock.sendall(request(b"1,2,3"))
        reader = Reader(sock)
        assert reader.response()[0] == 200
        answered = time.monotonic()
        assert reader.rest_until_closed(timeout=LIMITS.header_timeout + 5) == b""  # no 408 to a client that sent nothing
        assert time.monotonic() - answered >= LIMITS.header_timeout * 0.9


def test_a_next_request_that_stalls_on_a_kept_alive_connection_gets_408(server):
    with connect(server) as sock:
        sock.sendall(request(b"1,2,3"))
        reader = Reader(sock)
        assert reader.response()[0] == 200
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert reader.rest_until_closed(timeout=LIMITS.header_timeout + 5).startswith(b"HTTP/1.1 408 ")


def test_pipelined_requests_get_the_first_answer_and_a_close(server):
    with connect(server) as sock:
        sock.sendall(request(b"1,2,3") + request(b"4,5,6"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, headers["connection"], body) == (200, "close", b"6\n")
        assert reader.rest_until_closed(timeout=5) == b""


def test_idle_kept_alive_connections_count_against_the_cap(server):
    kept = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        for sock in kept:
            sock.sendall(request(b"1,2,3"))
            assert Reader(sock).response()[1]["connection"] == "keep-alive"
        with connect(server) as newcomer:  # one more: the oldest kept-alive connection makes room
            newcomer.sendall(request(b"1,1,1"))
            assert Reader(newcomer).response()[:1] == (200,)
        assert Reader(kept[0]).rest_until_closed(timeout=5) == b""
    finally:
        for sock in kept:
            sock.close()


def test_a_request_that_waited_for_the_busy_worker_gets_connection_close(server, model_dir: Path):
    """So that its client's next connection goes to whichever worker is free."""
    for name in ("started", "release"):
        (model_dir / name).unlink(missing_ok=True)
    with connect(server) as waiting, connect(server) as busy:
        waiting_reader, busy_reader = Reader(waiting), Reader(busy)
        waiting.sendall(request(b"1,2,3"))
        assert waiting_reader.response()[1]["connection"] == "keep-alive"
        busy.sendall(request(f"{HOLD},0,0".encode()))
        wait_for((model_dir / "started").exists, 10, "the held request did not start")
        waiting.sendall(request(b"4,5,6"))  # arrives while the worker runs the held request
        (model_dir / "release").write_text("1")
        status, headers, _ = busy_reader.response()
        assert (status, headers["connection"]) == (200, "keep-alive")
        status, headers, body = waiting_reader.response()
        assert (status, headers["connection"], body) == (200, "close", b"15\n")
        assert waiting_reader.rest_until_closed(timeout=5) == b""
        busy.sendall(request(b"0,0,1"))  # the connection that did not wait is still served
        assert busy_reader.response()[2] == b"1\n"


def test_ping_over_the_body_cap_is_refused_like_any_route():
    """Found by tests/test_fuzz_sidecar.py: the app refuses an announced body over the cap on every route,
    as the worker does before routing."""
    app = SidecarApp(None, "no model", max_body_bytes=4096)
    captured = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ping", "CONTENT_LENGTH": "4097",
               "wsgi.input": io.BytesIO(b"")}
    body = b"".join(app(environ, lambda status, headers: captured.update(status=status)))
    assert captured["status"].startswith("413 ")
    assert b"4,097 bytes is larger than the server's limit of 4,096 bytes" in body
