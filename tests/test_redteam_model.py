"""Red-team findings on reaching the model: an answer trickled a byte at a time must not outlast
``LUCENT_MODEL_TIMEOUT_SECONDS``, and an ``endpoint_url`` with a path prefix is pinged and invoked at the
right place. Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from analyzer.config.model import Predictor
from analyzer.predict import ModelClient, ModelTransportError, RetryPolicy, wait_until_healthy
from analyzer.predict.client import model_route
from tests.conftest import http_server

FEATURES = ["a", "b"]
BYTE_EVERY_SECONDS = 0.2  # the trickling server's pace: well inside the socket timeout, forever
ANNOUNCED_BYTES = 100_000


class Trickle(BaseHTTPRequestHandler):
    """Answers fully on the routes in ``server.fast`` and, on the others, announces ``ANNOUNCED_BYTES``
    and sends one byte every ``BYTE_EVERY_SECONDS`` until ``server.stop`` is set."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._answer()

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        self.server.paths.append(f"{self.command} {self.path}")
        self.send_response(200)
        if self.path in self.server.fast:
            payload = self.server.fast[self.path]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Content-Length", str(ANNOUNCED_BYTES))
        self.end_headers()
        self.wfile.flush()
        for _ in range(ANNOUNCED_BYTES):
            if self.server.stop.wait(BYTE_EVERY_SECONDS):
                break
            try:
                self.wfile.write(b"0")
                self.wfile.flush()
            except OSError:  # the client gave up and closed the connection: what the test wants
                break
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickling() -> Iterator:
    def start(fast: dict[str, bytes]):
        stack.append(http_server(Trickle, fast=fast, stop=stop, paths=[]))
        return stack[-1].__enter__()

    stop, stack = threading.Event(), []
    yield start
    stop.set()
    for server in stack:
        server.__exit__(None, None, None)


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_trickled_answer_is_cut_off_at_the_model_timeout(trickling):
    server = trickling({"/ping": b""})
    assert wait_until_healthy(url(server), timeout=5, interval=0.05) >= 0  # /ping answers at once
    client = ModelClient(url(server), Predictor(content_type="text/csv"), FEATURES, timeout=1.0,
                         retry=RetryPolicy(attempts=2, backoff_seconds=0.01))
    started = time.monotonic()
    with client, pytest.raises(ModelTransportError) as raised:
        client.predict(np.zeros((3, 2)))
    waited = time.monotonic() - started
    assert str(raised.value).startswith(f"The model at {url(server)}/invocations did not answer within 1 s (rows 0 "
                                        "to 2)"), raised.value
    assert "LUCENT_MODEL_TIMEOUT_SECONDS" in str(raised.value)
    assert 1.0 <= waited < 1.0 + 5 * BYTE_EVERY_SECONDS, waited  # the deadline, not ANNOUNCED_BYTES * pace


def test_a_trickled_ping_is_not_healthy(trickling):
    server = trickling({})
    started = time.monotonic()
    with pytest.raises(ModelTransportError) as raised:
        wait_until_healthy(url(server), timeout=1.0, interval=0.05)
    assert time.monotonic() - started < 1.0 + 5 * BYTE_EVERY_SECONDS
    assert "did not become healthy within 1 s (GET /ping: no complete answer within" in str(raised.value)


def test_an_endpoint_url_with_a_path_prefix(trickling):
    server = trickling({"/models/a/ping": b"", "/models/a/invocations": b"0.25\n0.75\n"})
    base = f"{url(server)}/models/a/"
    wait_until_healthy(base, timeout=5, interval=0.05)
    with ModelClient(base, Predictor(content_type="text/csv"), FEATURES, timeout=5.0) as client:
        predictions = client.predict(np.zeros((2, 2)))
    assert predictions.scores.tolist() == [[0.25], [0.75]]
    assert server.paths == ["GET /models/a/ping", "POST /models/a/invocations"]


@pytest.mark.parametrize(("base", "ping", "invocations"), [
    ("http://h:8080", "http://h:8080/ping", "http://h:8080/invocations"),
    ("http://h:8080/", "http://h:8080/ping", "http://h:8080/invocations"),
    ("https://u:p@h/models/a//", "https://u:p@h/models/a/ping", "https://u:p@h/models/a/invocations"),
    ("http://[::1]:9/x", "http://[::1]:9/x/ping", "http://[::1]:9/x/invocations"),
    # refused by config validation; dropped here rather than sent to the wrong place
    ("http://h/x?access_token=t#f", "http://h/x/ping", "http://h/x/invocations"),
])
def test_model_route(base, ping, invocations):
    assert (model_route(base, "ping"), model_route(base, "invocations")) == (ping, invocations)
