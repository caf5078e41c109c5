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
import email.utils
import io
import logging
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from container.endpoint.app import ApiError, EndpointApp, Request, Response, validation_error
from container.sidecar.limits import RequestLimits, announced_size, body_too_large_message

log = logging.getLogger("lucent.endpoint")

LINGER_S = 2.0
_DRAIN_BYTES = 256 * 1024
# The endpoint's body limit is SageMaker's, fixed: no setting to name (the model server's has one).
ENDPOINT_BODY_HINT = "SageMaker's InvokeEndpoint limit; send fewer records per request"


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
        self._read_and_serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._read_and_serve()

    def do_POST(self) -> None:  # noqa: N802
        self._read_and_serve()

    def _read_and_serve(self) -> None:
        """Read the body its framing announces (any method: a GET's unread body would be read as the
        next request on a kept-alive connection), then answer. Framing that two parsers could read two
        ways (RFC 9112 6.3: Transfer-Encoding, several Content-Length values) is refused and the
        connection closed, so that no proxy in front can be made to see another request boundary."""
        if self.headers.get_all("Transfer-Encoding"):
            self._refuse(validation_error("a request body must have a Content-Length (chunked bodies are not "
                                          "accepted)", 411))
            return
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if len(values) > 1:
            shown = ", ".join(sorted(value[:20] for value in values)[:4])
            self._refuse(validation_error(f"conflicting Content-Length headers ({shown}): send one"))
            return
        text = values.pop() if values else "0"
        if not (text.isascii() and text.isdigit()):
            self._refuse(validation_error(f"Content-Length must be a whole number of bytes, got {text[:40]!r}"))
            return
        length, cap = announced_size(text), self.server.limits.max_body_bytes
        if length is None or length > cap:
            self._refuse(validation_error(body_too_large_message(length, cap, hint=ENDPOINT_BODY_HINT), 413))
            return
        self.deadline = time.monotonic() + self.server.limits.body_timeout
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            self._refuse(ApiError(408, "ValidationError", f"the request body did not arrive within "
                                                          f"{self.server.limits.body_timeout:g} s"))
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
        # Headers and body in one write: one segment for a small response, so the client wakes once.
        self.wfile.write(encode_response(response, server=self.version_string(), date=self.date_time_string(),
                                         close=self.close_connection,
                                         head_only=getattr(self, "command", None) == "HEAD"))

    def _refuse(self, error: ApiError) -> None:
        """Answer ``error`` without reading the body (counted in the metrics, like every answer), then
        drain what the client still sends for a moment."""
        self.close_connection = True
        # command and path are not set yet when the request line itself is refused
        self._send(self.server.app.refused(error, getattr(self, "command", None) or "", getattr(self, "path", None) or ""))
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(_DRAIN_BYTES):
                    break

    def parse_request(self) -> bool:
        """http.server's parsing, plus a 408 when the headers do not arrive in time (http.server would
        close the connection without a word)."""
        try:
            return super().parse_request()
        except TimeoutError:
            self.send_error(408, f"the request headers did not arrive within {self.server.limits.header_timeout:g} s")
            return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server refuses itself (a bad request line, headers too large or too many, an
        unsupported method, HTTP/2.0) answered in the runtime API's JSON shape, as the app answers."""
        text = message or _phrase(code) or "error"
        if explain and explain != text:
            text = f"{text}: {explain}"
        if len(text) > 300:  # http.server quotes the request line, which may be 64 KB of anything
            text = text[:300] + "..."
        kind = "ValidationError" if 400 <= code < 500 or code in (501, 505) else "InternalFailure"
        with contextlib.suppress(OSError):
            self._refuse(ApiError(code, kind, text))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", None) or ""
        log.debug("%s %s -> %s", getattr(self, "command", None) or "-", path.split("?", 1)[0][:200], code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- http.server's signature
        log.info("%s: %s", self.address_string(), format % args)


def encode_response(response: Response, *, server: str, date: str, close: bool, head_only: bool = False) -> bytes:
    """The status line, headers and (unless ``head_only``) body of ``response``, as sent."""
    lines = [f"HTTP/1.1 {response.status} {_phrase(response.status)}", f"Server: {server}", f"Date: {date}",
             f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")
    return head if head_only else head + response.body


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
        self._stop_lock = threading.Lock()
        self.stopping = False
        self.failure: str | None = None  # why the endpoint stopped, when it was not asked to
        super().__init__(address, EndpointHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%d connections open (the limit): refusing one from %s", self.limits.max_connections,
                        client_address[0])
            response = self.app.refused(ApiError(503, "ServiceUnavailable", "too many connections; try again"), "", "")
            with contextlib.suppress(OSError):
                request.sendall(encode_response(response, server=EndpointHandler.server_version,
                                                date=email.utils.formatdate(usegmt=True), close=True))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def stop(self, failure: str | None = None) -> bool:
        """Stop serving (once): ``serve_forever`` returns, requests in flight finish. ``failure``: why, when
        the endpoint cannot go on (its model server died); the command then exits 2. False if already
        stopping. Safe from a signal handler and from any thread but ``serve_forever``'s own."""
        with self._stop_lock:
            if self.stopping:
                return False
            self.stopping, self.failure = True, failure
        threading.Thread(target=self.shutdown, name="endpoint-stop").start()  # not from serve_forever's thread
        return True

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


def serve_until_stopped(server: EndpointServer, drain_seconds: float = 60.0,
                        announce: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT or ``server.stop()``; then stop accepting and let requests in flight finish.
    ``announce`` (the "in service" line) runs once the handlers are installed: a supervisor that signals the
    endpoint as soon as it reads that line gets a clean stop.

    The signal handlers stay installed when this returns: a second SIGTERM (or Ctrl-C) while the caller
    flushes the capture files and stops the model server is logged, not obeyed, so that it cannot end the
    process half-way (capture lost, a traceback); the caller restores the previous handlers once it is
    done. SIGKILL remains for an endpoint that will not stop."""

    def stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if server.stop():
            log.info("%s: stopping the endpoint", name)
        else:
            log.info("%s: the endpoint is already stopping", name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    if announce is not None:
        announce()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # no new connections
        if not server.wait_idle(drain_seconds):
            log.warning("requests still running after %g s; stopping anyway", drain_seconds)
