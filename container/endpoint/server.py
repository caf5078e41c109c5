"""Serving the endpoint: one process, a thread per connection, limits on what a client may cost.

Why threads in one process (not the model server's pre-forked gunicorn workers): the endpoint holds
one fitted explainer, one capture writer and one set of metrics, and a request spends its time
waiting for the model container or in numpy, both of which release the GIL. Limits
(:class:`container.sidecar.limits.RequestLimits`, shared with the model server):

* a body over ``max_body_bytes`` (SageMaker's 6,291,456) is answered 413 from its Content-Length,
  before it is read; what the client still sends is drained briefly and dropped, so that it reads
  the answer instead of a connection reset;
* the request line and headers must arrive within ``header_timeout`` of the connection (or of the
  previous response on a kept-alive connection) and the body within ``body_timeout`` of the headers:
  a deadline for the whole read, not per ``recv``, so a client trickling a byte at a time is cut off too;
* at most ``max_connections`` connections at once; one more is answered 503 ServiceUnavailable.

SIGTERM (or SIGINT): stop accepting, let requests in flight finish, then the caller flushes the
capture writer and stops the model server it started.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from container.endpoint.app import ApiError, EndpointApp, Request, Response, validation_error
from container.sidecar.limits import RequestLimits, body_too_large_message

log = logging.getLogger("lucent.endpoint")

LINGER_S = 2.0
_DRAIN_BYTES = 256 * 1024


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once the handler's current deadline has passed."""

    def __init__(self, sock: socket.socket, handler: EndpointHandler):
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._handler.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class EndpointHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    # Headers and body go out in two writes: with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers (40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server: EndpointServer
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 64 * 1024)

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.server.limits.header_timeout
        super().handle_one_request()

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        self._serve(b"")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding"):
            self._refuse(validation_error("a request body must have a Content-Length (chunked bodies are not "
                                          "accepted)", 411).response())
            return
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():
            self._refuse(validation_error(f"Content-Length must be a whole number of bytes, got {text[:40]!r}").response())
            return
        length, cap = int(text), self.server.limits.max_body_bytes
        if length > cap:
            self._refuse(validation_error(body_too_large_message(length, cap), 413).response())
            return
        self.deadline = time.monotonic() + self.server.limits.body_timeout
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self._refuse(ApiError(408, "ValidationError", f"the request body did not arrive within "
                                                          f"{self.server.limits.body_timeout:g} s").response())
            return
        if len(body) < length:
            self.close_connection = True  # the client went away
            return
        self._serve(body)

    def _serve(self, body: bytes) -> None:
        with self.server.in_flight():
            response = self.server.app.handle(Request(self.command, self.path, list(self.headers.items()), body))
        self._send(response)

    def _send(self, response: Response) -> None:
        self.connection.settimeout(self.server.limits.body_timeout)  # a client that does not read
        self.log_request(response.status)
        lines = [f"{self.protocol_version} {response.status} {_phrase(response.status)}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        # Headers and body in one write: one segment for a small response, so the client wakes once.
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")
        self.wfile.write(head if self.command == "HEAD" else head + response.body)

    def _refuse(self, response: Response) -> None:
        """Answer without reading the body, then drain what the client still sends for a moment."""
        self.close_connection = True
        self._send(response)
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(_DRAIN_BYTES):
                    break

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, self.path.split("?", 1)[0][:200], code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- http.server's signature
        log.info("%s: %s", self.address_string(), format % args)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class EndpointServer(socketserver.ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``limits.max_connections`` at once."""

    daemon_threads = True  # idle keep-alive connections must not hold up the exit
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: EndpointApp, limits: RequestLimits):
        self.app = app
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._busy = 0
        self._busy_changed = threading.Condition()
        super().__init__(address, EndpointHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%d connections open (the limit): refusing one from %s", self.limits.max_connections,
                        client_address[0])
            with contextlib.suppress(OSError):
                body = b'{"message": "too many connections; try again"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"x-amzn-ErrorType: ServiceUnavailable\r\nConnection: close\r\n"
                                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def in_flight(self) -> Any:
        with self._busy_changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_changed:
                self._busy -= 1
                self._busy_changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if some still are after ``timeout``."""
        with self._busy_changed:
            return self._busy_changed.wait_for(lambda: self._busy == 0, timeout)


def serve_until_stopped(server: EndpointServer, drain_seconds: float = 60.0) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting and let requests in flight finish."""
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("%s: stopping the endpoint", signal.Signals(signum).name)
            threading.Thread(target=server.shutdown, name="endpoint-stop").start()  # not from serve_forever's thread

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()  # no new connections
        if not server.wait_idle(drain_seconds):
            log.warning("requests still running after %g s; stopping anyway", drain_seconds)
