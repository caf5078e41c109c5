"""Clients that do not read their response, against a real two-worker server on 127.0.0.1.

A response the socket does not take at once is sent by the worker's loop as the client reads, so a
client that never reads costs a connection slot and the response's memory, never a worker's time:
``/ping`` and other requests are answered meanwhile, and the connection is closed after the send
timeout. A response finished by the loop still keeps the connection alive when the client asked."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from container.sidecar import ModelServer, start_model_server
from container.sidecar.limits import RequestLimits

# A long body timeout: the worker used to block on writing a response for that long.
LIMITS = RequestLimits(max_body_bytes=1024 * 1024, header_timeout=30.0, body_timeout=30.0, max_connections=16,
                       send_timeout=5.0)
BIG_RESPONSE_BYTES = 12 * 1024 * 1024  # more than a loopback socket's largest send buffer (4 MB) can hold
UNREAD_MESSAGE = "did not read the response within 5 s"

INFERENCE = f'''
def model_fn(model_dir):
    return None

def transform_fn(model, payload, content_type, accept):
    if payload.startswith("big"):
        return b"x" * {BIG_RESPONSE_BYTES}, "text/plain"
    return "echo:" + payload, "text/plain"
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = tmp_path_factory.mktemp("big-output-model")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(INFERENCE)
    with start_model_server(folder, workers=2, limits=LIMITS) as started:
        started.wait_healthy(60)
        yield started


def request(body: bytes, connection: str = "close") -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {connection}\r\n\r\n").encode() + body


def non_reading_client(server: ModelServer) -> socket.socket:
    """A socket with a 4 KB receive buffer (set before connecting, so the window stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    return sock


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def response_started(sock: socket.socket) -> bool:
    """Part of the response has arrived (peeked at, not read: the window stays full)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def read_to_end(sock: socket.socket, timeout: float) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(1024 * 1024):
            data += chunk
            assert time.monotonic() < deadline, "the connection was not closed"
    except ConnectionResetError:
        pass
    return bytes(data)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed response from ``sock``; what follows it stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(1024 * 1024)
        assert chunk, f"closed mid-response: {bytes(buffer[:200])!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    status_line, *lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[:end + 4]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(buffer) < length:
        chunk = sock.recv(1024 * 1024)
        assert chunk, "closed mid-body"
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(status_line.split()[1]), headers, body


def ping_and_invoke(server: ModelServer) -> float:
    """Seconds for a /ping and a small /invocations, each answered correctly."""
    started = time.monotonic()
    with urllib.request.urlopen(f"{server.url}/ping", timeout=30) as response:
        assert response.status == 200
    invocation = urllib.request.Request(f"{server.url}/invocations", data=b"1,2", method="POST",
                                        headers={"Content-Type": "text/csv"})
    with urllib.request.urlopen(invocation, timeout=30) as response:
        assert (response.status, response.read()) == (200, b"echo:1,2")
    return time.monotonic() - started


def test_clients_that_do_not_read_cost_no_worker_time_and_are_closed_after_the_send_timeout(server):
    before = server.log_tail(10_000).count(UNREAD_MESSAGE)
    stalled = [non_reading_client(server) for _ in range(4)]  # two per worker, as the kernel spreads them
    try:
        for sock in stalled:
            sock.sendall(request(b"big"))
        wait_for(lambda: all(response_started(sock) for sock in stalled), 20, "the big responses did not start")
        # The workers have run the big requests and their clients read nothing: both workers must still
        # answer, well before the send timeout frees them (and long before the 30 s body timeout).
        for _ in range(4):
            assert ping_and_invoke(server) < LIMITS.send_timeout
        wait_for(lambda: server.log_tail(10_000).count(UNREAD_MESSAGE) - before >= len(stalled),
                 LIMITS.send_timeout + 20, "the non-reading connections were not closed after the send timeout")
        for sock in stalled:
            received = read_to_end(sock, timeout=20)
            assert received.startswith(b"HTTP/1.1 200 ")
            assert 0 < len(received) < BIG_RESPONSE_BYTES  # cut off: the rest was never sent
    finally:
        for sock in stalled:
            sock.close()
    assert ping_and_invoke(server) < LIMITS.send_timeout


def test_a_response_finished_by_the_loop_keeps_the_connection_alive(server):
    with non_reading_client(server) as sock:
        sock.sendall(request(b"big", connection="keep-alive"))
        wait_for(lambda: response_started(sock), 20, "the big response did not start")
        assert ping_and_invoke(server) < LIMITS.send_timeout  # while this client has not read yet
        buffer = bytearray()
        status, headers, body = read_response(sock, buffer)
        assert (status, len(body), body[:3], headers["connection"].lower()) == (200, BIG_RESPONSE_BYTES, b"xxx",
                                                                                 "keep-alive")
        sock.sendall(request(b"7,8", connection="keep-alive"))
        status, headers, body = read_response(sock, buffer)
        assert (status, body, headers["connection"].lower()) == (200, b"echo:7,8", "keep-alive")
        sock.sendall(request(b"9", connection="close"))
        status, headers, body = read_response(sock, buffer)
        assert (status, body, headers["connection"].lower()) == (200, b"echo:9", "close")
        assert read_to_end(sock, timeout=10) == bytes(buffer) == b""
