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
* the request line and header block are checked as received, before anything reads them (RFC 9112,
  as gunicorn checks them in the model server): field names are tokens with no whitespace before the
  colon, lines end with CRLF or LF, no bare CR, no NUL, no obs-fold (a line continuing the previous one);
  anything else is answered 400, so that no other parser (http.server's email parser, a proxy in front,
  the model container) can read another header, or another request, out of the same bytes;
* at most ``max_connections`` connections at once. When all are open, a new connection closes the
  oldest one that has not delivered a complete request (its headers or body still arriving, or kept
  alive and waiting for the next request), as the model server's worker does: a client holding many
  half-sent requests cannot lock out one that sends its request at once. Only when every connection
  is busy with a request, for ``BUSY_GRACE_S`` (a connection that has just answered is marked waiting
  a moment later, and its client may connect again before that), is the new one answered 503;
* the listen queue holds ``max(LISTEN_BACKLOG, max_connections)`` connections not yet accepted
  (socketserver's default of 5 made a burst of connections wait for SYN retransmits, a second each).

SIGTERM (or SIGINT): stop accepting; close every connection without a request being answered (kept
alive and idle, or its request still arriving: a request completed after the stop is not started); answer
each request in progress with ``Connection: close``; wait for those (bounded); only then the caller
flushes the capture writer and stops the model server it started. Counting requests in progress alone
was not enough: kept-alive connections went on being served, and one that sent its next request after
the count reached 0 met a closed capture and a stopped model server.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import re
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
LISTEN_BACKLOG = 128  # connections the kernel queues before they are accepted (at least max_connections)
EVICTION_LOG_INTERVAL_S = 10.0
# A connection that has just sent its response is marked waiting by its thread a moment later; a client
# that got the response may connect again before that moment. At the cap with every connection busy, a new
# connection waits this long for one to become evictable before it is answered 503.
BUSY_GRACE_S = 0.5

# RFC 9110 5.6.2: a field name (and a method) is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 3: method SP request-target SP HTTP-version; the target is printable ASCII (RFC 3986 2).
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")


def _line_content(line: bytes) -> bytes | None:
    """A received line without its CRLF or LF; None when it has neither (the input ended in it)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return None


def _shown(name: bytes) -> str:
    text = name.decode("latin-1")
    return repr(text if len(text) <= 40 else text[:40] + "...")


def request_line_problem(line: bytes) -> str | None:
    """Why a complete request line (with its line end) is refused with 400, or None."""
    content = _line_content(line)
    if content is None:
        return "the request line has no line end"
    if b"\r" in content:
        return "malformed request line: a bare CR (a line ends with CRLF or LF)"
    if not _REQUEST_LINE.fullmatch(content):
        return ("malformed request line: it must be a method, a target of printable ASCII characters and "
                "HTTP/1.x, separated by single spaces")
    return None


def header_problem(lines: list[bytes]) -> str | None:
    """Why a header block (its lines as received, each with its line end, without the empty line that
    ends the block) is refused with 400, or None. Nothing of a field's value is quoted: it may be a secret."""
    for number, line in enumerate(lines, 1):
        content = _line_content(line)
        if content is None:
            return f"malformed header line {number}: it has no line end"
        name = content.partition(b":")[0]
        which = f"header line {number}" + (f" ({_shown(name)})" if _TOKEN.fullmatch(name) else "")
        if b"\x00" in content:
            return f"malformed {which}: a NUL byte"
        if b"\r" in content:
            return f"malformed {which}: a bare CR inside the line (a line ends with CRLF or LF)"
        if content[:1] in (b" ", b"\t"):
            return (f"malformed header line {number}: it starts with whitespace, which would continue the previous "
                    "line (obsolete line folding, RFC 9112 5.2, is not accepted): send each field on one line")
        if b":" not in content:
            return f"malformed header line {number}: no colon after the field name"
        stripped = name.rstrip(b" \t")
        if stripped != name and _TOKEN.fullmatch(stripped):
            return (f"malformed header line {number}: whitespace between the field name {_shown(stripped)} "
                    "and the colon (RFC 9112 5.1)")
        if not _TOKEN.fullmatch(name):
            return (f"malformed header line {number}: the field name {_shown(name)} is not a token "
                    "(letters, digits and !#$%&'*+-.^_`|~)")
    return None


class _HeadRecorder:
    """The handler's reader while http.server reads the header block: keeps each line as received, for
    :func:`header_problem` to check before the parsed headers are used."""

    def __init__(self, reader: io.BufferedReader):
        self.reader = reader
        self.lines: list[bytes] = []

    def readline(self, limit: int = -1) -> bytes:
        line = self.reader.readline(limit)
        self.lines.append(line)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


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
        if not self.server.waiting(self.connection):  # evictable until its request is complete
            self.close_connection = True  # the endpoint is stopping: no next request on this connection
            return
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
            self.close_connection = True  # the client went away (or the connection was evicted)
            return
        if not self.server.claim(self.connection):
            self.close_connection = True  # evicted for a newer connection as the body completed
            return
        self._serve(body)

    def _serve(self, body: bytes) -> None:
        with self.server.in_flight():
            response = self.server.app.handle(Request(self.command, self.path, list(self.headers.items()), body))
        self._send(response)

    def _send(self, response: Response) -> None:
        if self.server.stopping:
            self.close_connection = True  # answered with Connection: close, and no next request read
        self.connection.settimeout(self.server.limits.body_timeout)  # a client that does not read
        self.log_request(response.status)
        # Headers and body in one write: one segment for a small response, so the client wakes once.
        self.wfile.write(encode_response(response, server=self.version_string(), date=self.date_time_string(),
                                         close=self.close_connection,
                                         head_only=getattr(self, "command", None) == "HEAD"))

    def _refuse(self, error: ApiError) -> None:
        """Answer ``error`` without reading the body (counted in the metrics, like every answer), then
        drain what the client still sends for a moment. Nothing for a connection evicted for a newer one
        (its socket is shut down: what it sent last was cut short by that, not by its client)."""
        self.close_connection = True
        if self.server.evicted(self.connection):
            return
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
        close the connection without a word), and the request line and header block checked as received
        (:func:`header_problem`) before the parsed headers are used."""
        recorder = _HeadRecorder(self.rfile)
        self.rfile, self._head_lines = recorder, recorder.lines  # type: ignore[assignment]
        try:
            return super().parse_request() and self._head_acceptable()
        except TimeoutError:
            self.send_error(408, f"the request headers did not arrive within {self.server.limits.header_timeout:g} s")
            return False
        finally:
            self.rfile = recorder.reader

    def handle_expect_100(self) -> bool:
        """No ``100 Continue`` for a request whose head is refused."""
        return self._head_acceptable() and super().handle_expect_100()

    def _head_acceptable(self) -> bool:
        """False (answered 400, or closed when the input ended before the head did) unless the request
        line and the header block read by http.server are well-formed."""
        if _line_content(self.raw_requestline) is None:  # the input ended in the request line
            self.close_connection = True
            return False
        problem = request_line_problem(self.raw_requestline)
        if problem is None:
            lines = self._head_lines
            if not lines or lines[-1] not in (b"\r\n", b"\n"):  # the input ended before the empty line
                self.close_connection = True
                return False
            problem = header_problem(lines[:-1])
        if problem is not None:
            self.send_error(400, problem)
            return False
        return True

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


class _Open:
    """One open connection as the server counts it."""

    __slots__ = ("address", "since", "busy")

    def __init__(self, address: Any, since: float):
        self.address = address
        self.since = since  # accepted, or its previous response sent (kept alive)
        self.busy = False  # its request is complete and being answered: never evicted


class EndpointServer(socketserver.ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``limits.max_connections`` at once (see the module docstring)."""

    daemon_threads = True  # idle keep-alive connections must not hold up the exit
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: EndpointApp, limits: RequestLimits):
        self.app = app
        self.limits = limits
        self._open: dict[socket.socket, _Open] = {}  # evicted connections are removed at once
        self._open_lock = threading.Lock()
        self._open_changed = threading.Condition(self._open_lock)  # a connection waits again, or closed
        self._last_eviction_log = -EVICTION_LOG_INTERVAL_S
        self.request_queue_size = max(LISTEN_BACKLOG, limits.max_connections)  # listen()'s backlog
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
        now = time.monotonic()
        with self._open_changed:
            admitted, evicted = self._admit()
            grace_ends = now + BUSY_GRACE_S
            while not admitted and (left := grace_ends - time.monotonic()) > 0:
                self._open_changed.wait(left)
                admitted, evicted = self._admit()
            if admitted:
                self._open[request] = _Open(client_address, now)
        if evicted is not None and now - self._last_eviction_log >= EVICTION_LOG_INTERVAL_S:
            self._last_eviction_log = now
            log.warning("%d connections open (--max-connections): closed the oldest without a complete request, "
                        "from %s, for a new one from %s", self.limits.max_connections, evicted.address[0],
                        client_address[0])
        if not admitted:
            log.warning("%d connections open (the limit), all busy with requests: refusing one from %s",
                        self.limits.max_connections, client_address[0])
            response = self.app.refused(ApiError(503, "ServiceUnavailable", "too many connections; try again"), "", "")
            with contextlib.suppress(OSError):
                request.sendall(encode_response(response, server=EndpointHandler.server_version,
                                                date=email.utils.formatdate(usegmt=True), close=True))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _admit(self) -> tuple[bool, _Open | None]:
        """(room for one more connection, the connection closed to make it); under ``_open_lock``."""
        if len(self._open) < self.limits.max_connections:
            return True, None
        oldest = min(((sock, conn) for sock, conn in self._open.items() if not conn.busy),
                     key=lambda item: item[1].since, default=None)
        if oldest is None:
            return False, None
        sock, evicted = oldest
        del self._open[sock]
        with contextlib.suppress(OSError):  # its thread reads the end of input and closes it
            sock.shutdown(socket.SHUT_RDWR)
        return True, evicted

    def shutdown_request(self, request: Any) -> None:
        """Close a connection (its handler is done, or it was refused), under the lock that eviction
        shuts connections down with: never a socket closed meanwhile, whose descriptor may be reused."""
        with self._open_changed:
            self._open.pop(request, None)
            super().shutdown_request(request)
            self._open_changed.notify_all()

    def waiting(self, sock: socket.socket) -> bool:
        """The connection waits for a request: evictable; after a response (kept alive), as the newest
        such. A new connection's place stays its accept time, whenever its thread gets here. False when
        the endpoint is stopping: the connection is to be closed, not read."""
        with self._open_changed:
            conn = self._open.get(sock)
            if conn is not None and conn.busy:
                conn.busy, conn.since = False, time.monotonic()
                self._open_changed.notify_all()
            return not self.stopping

    def claim(self, sock: socket.socket) -> bool:
        """The connection's request is complete: not evictable until it waits again. False if it was
        evicted already."""
        with self._open_lock:
            conn = self._open.get(sock)
            if conn is None or self.stopping:  # evicted, or completed after the stop: not started
                return False
            conn.busy = True
            return True

    def evicted(self, sock: socket.socket) -> bool:
        """The connection (whose handler is still running) was closed for a newer one."""
        with self._open_lock:
            return sock not in self._open

    def connection_counts(self) -> tuple[int, int]:
        """(connections open, of which busy with a request)."""
        with self._open_lock:
            return len(self._open), sum(conn.busy for conn in self._open.values())

    def stop(self, failure: str | None = None) -> bool:
        """Stop serving (once): ``serve_forever`` returns, requests in flight finish. ``failure``: why, when
        the endpoint cannot go on (its model server died); the command then exits 2. False if already
        stopping. Safe from a signal handler and from any thread but ``serve_forever``'s own."""
        with self._stop_lock:
            if self.stopping:
                return False
            self.stopping, self.failure = True, failure
        # Not from serve_forever's thread (shutdown waits for it), nor from the signal handler (which may
        # have interrupted a holder of the connections' lock).
        threading.Thread(target=self._stop_serving, name="endpoint-stop").start()
        return True

    def _stop_serving(self) -> None:
        self._close_idle()
        self.shutdown()

    def _close_idle(self) -> None:
        """Close every connection not busy with a request (``stopping`` is set): kept alive and waiting,
        or its request still arriving. Their threads read the end of input and end; a busy one ends after
        its answer (``waiting`` returns False)."""
        with self._open_changed:
            idle = [sock for sock, conn in self._open.items() if not conn.busy]
            for sock in idle:
                del self._open[sock]
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open_changed.notify_all()

    def wait_answered(self, timeout: float) -> bool:
        """Once stopping: wait until no connection is busy with a request (each has been answered, its
        capture record submitted); False if some still are after ``timeout``."""
        with self._open_changed:
            return self._open_changed.wait_for(lambda: not any(conn.busy for conn in self._open.values()), timeout)

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
        if not server.stopping:  # serve_forever ended otherwise (an exception): stop as on SIGTERM
            server.stopping = True
            server._close_idle()
        started = time.monotonic()
        # Requests in progress are answered (Connection: close); nothing new is started on any connection.
        if not (server.wait_answered(drain_seconds)
                and server.wait_idle(max(0.0, drain_seconds - (time.monotonic() - started)))):
            log.warning("requests still running after %g s; stopping anyway", drain_seconds)
