"""The model server's gunicorn worker: every request is received in full, without blocking, before the
WSGI app runs it.

Why not gunicorn's sync worker as such: it reads a request with blocking calls, one connection at a
time, so a client that sends its headers a byte at a time, or announces a body and never sends it,
holds the worker; with two workers, two such sockets stopped ``/ping`` for minutes. gthread does no
better against a trickling client (a thread takes the connection at its first byte and blocks on the
rest), and a socket timeout alone only bounds how long *each* slow client holds a worker: a few more
clients than workers, reconnecting, still starve the server. So each worker does what a buffering
proxy in front of sync workers would do: one selector loop accepts connections and receives headers
and body as they arrive, and only a complete request reaches the app, which still runs one at a time
per process (requests are CPU-bound). A slow client costs a connection slot and the bytes it sent,
never a worker's time.

Limits (:class:`container.sidecar.limits.RequestLimits`): a body larger than ``max_body_bytes`` is refused with 413 as soon
as the headers say so (Content-Length) or as soon as it passes the cap (chunked), before the rest
is read; the headers must arrive within ``header_timeout`` seconds of the connection and the body
within ``body_timeout`` seconds of the headers (408 otherwise; time the worker spends running other
requests does not count against a client); each worker holds at most ``max_connections``
connections, and one more closes the oldest incomplete one, so a flood of idle sockets cannot lock
out a client that sends its request at once.

The body reaches the app as :class:`container.sidecar.app.ReceivedBody` in ``wsgi.input``: received
with ``recv_into`` straight into one buffer (gunicorn's reader copies a body several times in
Python: 9-14 ms of CPU for an 8 MB request against 3 ms), which the app decodes in place. gunicorn
still parses and validates the header block and produces the response.

Responses: the socket stays non-blocking, and what it does not take at once is kept (views of the
response's own bytes) and sent by the selector loop as the client reads (``EVENT_WRITE``), so a
client that does not read its answer costs a connection slot and the response's memory, never a
worker's time: with blocking writes, two such clients (one per worker) stopped ``/ping`` for the
whole write timeout. A response not sent within ``send_timeout`` of the app's end has its
connection closed; one finished by the loop keeps the connection alive as any other would.

Keep-alive, for clients that ask for it (``Connection: keep-alive``; Lucent's endpoint does): a new
connection per request (connect, accept, close handshake, lingering) costs about 0.2 ms of a 1.5 ms
one-record request on loopback, and a sequential client pays it on every call.
gunicorn's sync worker closes after every response because a kept-alive connection pins its client
to one pre-forked worker, which may be busy while another idles. Here the connection goes back to the
selector loop (idle, it counts against ``max_connections`` and is closed silently after
``header_timeout``); a request that was already waiting when this worker finished another one is
answered with ``Connection: close``, so that client's next connection goes to whichever worker is
free. Clients that do not ask (plain HTTP/1.1 clients that read a response to the connection's end,
Clarify's) see the connection closed after each response, as before.
"""

from __future__ import annotations

import contextlib
import errno
import html
import logging
import os
import re
import selectors
import socket
import sys
import time
from datetime import datetime
from http import HTTPStatus
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.sync import SyncWorker

from analyzer.redact import redact
from container.sidecar.app import ReceivedBody
from container.sidecar.limits import RequestLimits, announced_size, body_too_large_message

log = logging.getLogger("lucent.sidecar")

MAX_HEADER_BYTES = 64 * 1024  # request line and headers (gunicorn's own limits are checked after)
MAX_CHUNK_LINE_BYTES = 4096
LINGER_S = 2.0  # after refusing a request: read and discard what the client still sends, then close
SEND_ON_EXIT_S = 5.0  # a stopping worker's last chance for responses its clients have not read yet
_RECV_BYTES = 256 * 1024
_FIRST_BODY_BUFFER = 256 * 1024  # grown as bytes arrive: an announced size alone reserves no memory
# Bodies at least this large are kept after their request and received into again by a later request of the
# same size (see BufferingWorker._spare_for), up to _SPARE_BYTES in all per worker (several, as a worker
# receives several requests at once): fresh memory costs page faults, zeroing, growing copies and unmapping,
# ~40 % of the worker's CPU for 5 MB image batches. The array the app decoded in place was a view of it.
_REUSE_BODY_BYTES = 1024 * 1024
_SPARE_BYTES = 64 * 1024 * 1024
_COALESCE_BYTES = 256 * 1024  # a response body up to this size goes out in one write with its headers
_BARE_LF = re.compile(rb"(?<!\r)\n")  # a header line ending without CR: its end of headers never comes


class _Refusal(Exception):
    """The request is answered by the worker itself with ``status`` and this text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The client closed the connection (or reset it) before its request was complete."""


class _ChunkedBody:
    """Incremental decoder of a chunked request body (RFC 9112 section 7.1) that stops at ``cap``."""

    def __init__(self, cap: int):
        self.cap = cap
        self.body = bytearray()
        self._pending = bytearray()
        self._left = 0  # data bytes still to come in the current chunk
        self._state = "size"  # size -> data -> data-end -> size ... -> trailer -> done
        self._trailer_bytes = 0

    @property
    def trailing(self) -> bool:
        """Bytes past the end of the body (the trailer's empty line) have arrived."""
        return self._state == "done" and bool(self._pending)

    def feed(self, data: bytes) -> bool:
        """Take the next received bytes; True once the last chunk and the trailer have arrived."""
        pending = self._pending
        pending += data
        pos = 0
        try:
            while True:
                if self._state == "data":
                    take = min(self._left, len(pending) - pos)
                    self.body += memoryview(pending)[pos:pos + take]
                    pos += take
                    self._left -= take
                    if self._left:
                        return False
                    self._state = "data-end"
                if self._state == "data-end":
                    if len(pending) - pos < 2:
                        return False
                    if pending[pos:pos + 2] != b"\r\n":
                        raise _Refusal(400, "malformed chunked body: a chunk does not end with CRLF")
                    pos += 2
                    self._state = "size"
                end = pending.find(b"\r\n", pos)
                if end < 0:
                    if len(pending) - pos > MAX_CHUNK_LINE_BYTES:
                        raise _Refusal(400, "malformed chunked body: a chunk-size line has no end")
                    return False
                line = bytes(pending[pos:end])
                pos = end + 2
                if self._state == "trailer":
                    if not line:
                        self._state = "done"
                        return True
                    self._trailer_bytes += len(line) + 2
                    if self._trailer_bytes > MAX_HEADER_BYTES:
                        raise _Refusal(431, "chunked body: the trailer fields are too large")
                    continue
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                    raise _Refusal(400, f"malformed chunked body: invalid chunk size {line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = "trailer"
                    continue
                if len(self.body) + size > self.cap:
                    raise _Refusal(413, body_too_large_message(len(self.body) + size, self.cap, chunked=True))
                self._left = size
                self._state = "data"
        finally:
            del pending[:pos]


class _Connection:
    """One accepted connection while its request arrives (or while a refused one lingers)."""

    def __init__(self, sock: socket.socket, addr: Any, listener: socket.socket, deadline: float,
                 kept_alive: bool = False):
        self.sock = sock
        self.addr = addr
        self.listener = listener
        self.deadline = deadline
        self.kept_alive = kept_alive  # after a response; idle (closed silently at the deadline) until bytes come
        self.head = bytearray()  # request line and headers, up to and including the empty line
        self.headers_done = False
        self.length: int | None = None  # Content-Length of the body
        self.body = bytearray()
        self.received = 0  # body bytes received (Content-Length bodies)
        self.chunked: _ChunkedBody | None = None
        self.lingering = False
        self.unsent: list[memoryview] | None = None  # the response's rest, sent by the loop (EVENT_WRITE)
        self.keep_after_send = False  # the response said keep-alive: back to reading once it is sent
        self.trailing = False  # bytes past the request arrived with it (pipelining): closed after the response
        self.waited = False  # bytes arrived while this worker ran another request: closed after the response

    @property
    def idle(self) -> bool:
        return self.kept_alive and not self.head


def _framing(head: bytes, cap: int) -> tuple[int, bool, bool]:
    """(Content-Length or 0, chunked, expects 100-continue) from a header block; _Refusal if unusable.

    Only what is needed to know where the body ends: gunicorn parses and validates the headers again
    (and answers 400 to anything it rejects) once the request is complete.
    """
    lines = head.split(b"\r\n")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expect_continue = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(coding.strip(b" \t").lower() for coding in value.split(b","))
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue" and lines[0].endswith(b"HTTP/1.1")
    if codings:
        if lengths:
            raise _Refusal(400, "a request may not have both Transfer-Encoding and Content-Length")
        if codings[-1] != b"chunked":  # RFC 9112 6.3: the body's end cannot be known
            raise _Refusal(400, f"unsupported Transfer-Encoding {b', '.join(codings)[:60]!r}: "
                                "a request body must be chunked or have a Content-Length")
        if len(codings) > 1:  # RFC 9112 6.1: a coding the server does not decode (gzip, ...) is 501
            raise _Refusal(501, f"unsupported Transfer-Encoding {b', '.join(codings)[:60]!r}: "
                                "this server decodes plain chunked only")
        return 0, True, expect_continue
    if not lengths:
        if lines[0].startswith(b"POST ") and lines[0].endswith(b"HTTP/1.0"):
            # HTTP/1.0 has no chunked coding: without Content-Length the body would run to the connection's end
            raise _Refusal(411, "an HTTP/1.0 POST needs a Content-Length header")
        return 0, False, False
    if len(lengths) > 1:
        raise _Refusal(400, "a request may have only one Content-Length")
    text = lengths[0]
    if not text.isdigit():
        raise _Refusal(400, f"Content-Length must be a whole number of bytes, got {text[:40]!r}")
    size = announced_size(text.decode("ascii"))
    if size is None or size > cap:
        raise _Refusal(413, body_too_large_message(size, cap))
    return size, False, expect_continue


def _drop_expect(head: bytes) -> bytes:
    """The header block without ``Expect``: the worker has answered it (or the body came anyway)."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))


def _simple_response(status: int, message: str) -> bytes:
    """A plain-text response that closes the connection; the message is redacted as the app's errors are."""
    body = (redact(message).rstrip("\n") + "\n").encode("utf-8", errors="replace")
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body


class _ErrorPage:
    """Stands in for the client while gunicorn's ``handle_error`` writes its HTML error page, so that the
    worker can answer the same status and reason as plain text instead (see ``BufferingWorker.handle_error``)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # util.write_nonblock leaves a non-blocking socket as it is

    def sendall(self, data: bytes, *flags: int) -> None:
        self.data += bytes(data)

    def plain(self) -> tuple[int, str]:
        """(status, message) of the page written: the reason, and gunicorn's text when it gave one."""
        head, _, page = self.data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 500
        reason = status_line[2] if len(status_line) > 2 else HTTPStatus(status).phrase
        text = page.decode("latin-1").partition("</h1>")[2].partition("</body>")[0].strip()
        detail = html.unescape(text)
        if status >= 500 and not detail:
            return status, "internal server error: the request failed in the server (see its log)"
        return status, f"{reason.lower()}: {detail}" if detail else reason.lower()


class _ReceivedSocket:
    """The connection as gunicorn's request parsing and response see it: ``recv`` gives the header
    block the worker received (then end of input), the rest goes to the socket; ``close`` does nothing,
    since the worker decides what happens to the connection after the response.

    The response's first write (gunicorn's header block) is held and sent with the next one (the body,
    up to ``_COALESCE_BYTES``): one segment, so the client wakes once for a small response, not twice.
    ``flush`` sends what is still held.

    The socket is non-blocking: what it does not take at once stays in ``unsent`` (views of the
    response's own bytes, not copies), for the worker's loop to send as the client reads."""

    def __init__(self, sock: socket.socket, head: bytes):
        self._sock = sock
        self._head = head
        self._held: bytes | None = None
        self._wrote = False
        self.unsent: list[memoryview] = []

    def recv(self, size: int, *flags: int) -> bytes:
        data, self._head = self._head[:size], self._head[size:]
        return data

    def sendall(self, data: Any, *flags: int) -> None:
        if not self._wrote and self._held is None:
            self._held = bytes(data)
            return
        self._wrote = True
        held, self._held = self._held, None
        if held is not None and len(data) <= _COALESCE_BYTES:
            data = held + bytes(data)
        elif held is not None:
            self._send(held)
        self._send(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """A file response (the app sends none) goes out like any other: socket.sendfile refuses a
        non-blocking socket, and the loop sends only what is in memory."""
        file.seek(offset)
        data = file.read(count) if count else file.read()
        self.sendall(data)
        return len(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._wrote = True
            self._send(held)

    def _send(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if view:
            self.unsent.append(view)
            _send_queued(self._sock, self.unsent)

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferingWorker(SyncWorker):
    """A sync worker whose requests are received by a selector loop first (see the module docstring).

    ``limits`` is set on a subclass by :func:`worker_class`; gunicorn instantiates the class itself.
    """

    limits = RequestLimits()
    _aborted = False  # the arbiter sent SIGABRT: the request running now outlasted --timeout

    def handle_abort(self, sig: int, frame: Any) -> None:
        """SIGABRT from the arbiter (a request ran past ``--timeout``): remembered, so that the request's
        ``SystemExit`` is answered 504 by :meth:`handle_error` before the worker exits (gunicorn's own
        answer is an HTML 500)."""
        self._aborted = True
        super().handle_abort(sig, frame)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answers (a refused header block, an app failure, a timeout) as text/plain with
        their reason, not gunicorn's HTML page; the status and reason are gunicorn's own."""
        if self._aborted and isinstance(exc, SystemExit):
            message = (f"the model did not answer within --timeout {self.cfg.timeout:g} s; its worker was "
                       "restarted")
            self.log.error("%s %s: %s", getattr(req, "method", "?"), getattr(req, "uri", "?"), message)
            with contextlib.suppress(OSError):
                client.sendall(_simple_response(504, message))
            return
        page = _ErrorPage()
        super().handle_error(req, page, addr, exc)
        with contextlib.suppress(OSError):
            client.sendall(_simple_response(*page.plain()))

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi

        def with_received_body(environ: dict, start_response: Any) -> Any:
            environ["wsgi.input"] = ReceivedBody(self._request_body)
            return app(environ, start_response)

        self.wsgi = with_received_body

    def run(self) -> None:
        self._request_body = bytearray()
        self._spare_bodies: list[bytearray] = []  # the last large Content-Length bodies, to receive into again
        self._connections: dict[socket.socket, _Connection] = {}  # oldest first
        self._last_eviction_log = 0.0
        self._selector = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, listener)
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, None)
        try:
            while self.alive:
                self.notify()
                if not self.is_parent_alive():
                    return
                for key, _ in self._selector.select(self._wait_seconds()):
                    if key.data is None:  # a signal woke us up
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.PIPE[0], 4096)
                    elif isinstance(key.data, _Connection):
                        # Skip a connection closed or handed on earlier in this round (its socket may be
                        # registered again by now, lingering after its response, with a new state).
                        if self._connections.get(key.fileobj) is not key.data:
                            pass
                        elif key.data.unsent is not None:
                            self._on_writable(key.data)
                        else:
                            self._on_readable(key.data)
                    else:
                        self._accept(key.data)
                    if not self.alive:
                        break
                self._expire()
        finally:
            self._finish_sending()
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()

    def _finish_sending(self) -> None:
        """The worker is stopping: give responses still being sent a few seconds in all to go out."""
        deadline = time.monotonic() + SEND_ON_EXIT_S
        for conn in [conn for conn in self._connections.values() if conn.unsent]:
            left = min(deadline, conn.deadline) - time.monotonic()
            if left <= 0:
                continue
            with contextlib.suppress(OSError):
                conn.sock.settimeout(left)
                for view in conn.unsent:
                    conn.sock.sendall(view)

    def _wait_seconds(self) -> float:
        now = time.monotonic()
        soonest = min((conn.deadline for conn in self._connections.values()), default=now + 1.0)
        return max(0.0, min(1.0, soonest - now))

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # then let the connections already accepted have their turn
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                raise
            client.setblocking(False)
            util.close_on_exec(client)
            with contextlib.suppress(OSError):  # a large response is two writes; no Nagle wait between them
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self._connections) >= self.limits.max_connections:
                self._evict_oldest()
            conn = _Connection(client, addr, listener, time.monotonic() + self.limits.header_timeout)
            self._connections[client] = conn
            self._selector.register(client, selectors.EVENT_READ, conn)
            self._on_readable(conn)  # a short request has usually arrived with the connection
            if not self.alive:
                return

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._connections.values()))
        now = time.monotonic()
        if now - self._last_eviction_log > 10:
            self._last_eviction_log = now
            log.warning("%d connections open in this worker (--max-connections): closing the oldest "
                        "incomplete one, from %s", len(self._connections), oldest.addr)
        self._close(oldest)

    def _on_readable(self, conn: _Connection) -> None:
        try:
            if conn.lingering:
                self._discard(conn)
            elif self._receive(conn):
                self._dispatch(conn)
        except _Refusal as refusal:
            self._refuse(conn, refusal.status, str(refusal))
        except (_Gone, OSError):
            self._close(conn)

    def _receive(self, conn: _Connection) -> bool:
        """Read what has arrived; True once the request is complete."""
        sock = conn.sock
        try:
            while True:
                if not conn.headers_done:
                    data = sock.recv(_RECV_BYTES)
                    if not data:
                        raise _Gone
                    start = max(0, len(conn.head) - 3)
                    received_from = len(conn.head)
                    conn.head += data
                    end = conn.head.find(b"\r\n\r\n", start)
                    if _BARE_LF.search(conn.head, received_from, len(conn.head) if end < 0 else end + 4):
                        raise _Refusal(400, "malformed request: a header line ends with a bare LF, not CRLF")
                    if end < 0:
                        if len(conn.head) > MAX_HEADER_BYTES:
                            raise _Refusal(431, f"the request line and headers exceed {MAX_HEADER_BYTES} bytes")
                        continue
                    extra = bytes(conn.head[end + 4:])
                    del conn.head[end + 4:]
                    if self._start_body(conn, extra):
                        return True
                elif conn.chunked is not None:
                    data = sock.recv(_RECV_BYTES)
                    if not data:
                        raise _Gone
                    if conn.chunked.feed(data):
                        return True
                else:
                    if conn.received == len(conn.body):
                        conn.body.extend(bytes(min(len(conn.body), conn.length - len(conn.body))))
                    n = sock.recv_into(memoryview(conn.body)[conn.received:])
                    if n == 0:
                        raise _Gone
                    conn.received += n
                    if conn.received == conn.length:
                        return True
        except (BlockingIOError, InterruptedError):
            return False

    def _start_body(self, conn: _Connection, extra: bytes) -> bool:
        """The header block is complete: learn the body's framing; True if the request is complete."""
        length, chunked, expect_continue = _framing(bytes(conn.head), self.limits.max_body_bytes)
        conn.headers_done = True
        conn.deadline = time.monotonic() + self.limits.body_timeout
        if expect_continue:
            conn.head = bytearray(_drop_expect(bytes(conn.head)))
        if chunked:
            conn.chunked = _ChunkedBody(self.limits.max_body_bytes)
            complete = conn.chunked.feed(extra)
        else:
            conn.length = length
            arrived = memoryview(extra)[:length]  # a view: slicing bytes would copy them (up to 256 KiB) each time
            conn.body = self._spare_for(length) or bytearray(max(min(length, _FIRST_BODY_BUFFER), len(arrived)))
            conn.body[:len(arrived)] = arrived
            conn.received = min(len(extra), length)
            conn.trailing = len(extra) > length
            complete = conn.received == length
        if expect_continue and not complete and not extra:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return complete

    def _spare_for(self, length: int) -> bytearray | None:
        """A previous request's body buffer of this size that nothing uses any more (the new body is
        received into it, replacing its bytes), else None.

        The app decodes an npy body as a view of the buffer; a model that kept its input (or anything
        else holding a reference, such as a view) keeps the buffer out of reuse: only this worker's
        references (the list's and getrefcount's argument) may remain.
        """
        spares = self._spare_bodies
        for i in range(len(spares)):  # not enumerate(): its cached result tuple holds one more reference
            if len(spares[i]) == length and sys.getrefcount(spares[i]) <= 2:
                return spares.pop(i)  # the connection owns it until its request is done
        return None

    def _keep_spare(self, body: bytearray) -> None:
        """Keep a large body's buffer for a later request, newest first, dropping the oldest beyond ``_SPARE_BYTES``."""
        self._spare_bodies.insert(0, body)
        while sum(map(len, self._spare_bodies)) > _SPARE_BYTES:
            self._spare_bodies.pop()

    def _dispatch(self, conn: _Connection) -> None:
        """Run the complete request through gunicorn's request handling and the app (blocking), then
        keep the connection for the client's next request or close it."""
        self._forget(conn)
        if conn.chunked is not None:
            self._request_body = conn.chunked.body
            conn.trailing = conn.chunked.trailing
        else:
            self._request_body = conn.body
        may_keep = not (conn.waited or conn.trailing)
        started = time.monotonic()
        client = _ReceivedSocket(conn.sock, bytes(conn.head))
        try:
            keep = self._serve(conn, client, may_keep)
        finally:
            self._request_body = bytearray()
        if conn.chunked is None and len(conn.body) >= _REUSE_BODY_BYTES:
            self._keep_spare(conn.body)
        busy = time.monotonic() - started
        for other in self._connections.values():  # waiting on this worker is not the client's slowness
            other.deadline += busy
        if client.unsent:
            self._send_later(conn, client.unsent, keep)
        else:
            self._after_response(conn, keep)

    def _after_response(self, conn: _Connection, keep: bool) -> None:
        """The whole response is sent: keep the connection for the next request, or close it."""
        if keep and self.alive:
            self._keep_alive(conn)
        else:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._linger_after_response(conn.sock)

    def _send_later(self, conn: _Connection, unsent: list[memoryview], keep: bool) -> None:
        """The client has not read enough for the response to go out at once: the loop sends the rest
        as it reads (``send_timeout`` in all, then the connection is closed); this worker goes on."""
        sending = _Connection(conn.sock, conn.addr, conn.listener, time.monotonic() + self.limits.send_timeout)
        sending.unsent = unsent
        sending.keep_after_send = keep
        try:
            if len(self._connections) >= self.limits.max_connections:
                self._evict_oldest()
            self._connections[conn.sock] = sending
            self._selector.register(conn.sock, selectors.EVENT_WRITE, sending)
        except (OSError, ValueError):
            self._close(sending)

    def _on_writable(self, conn: _Connection) -> None:
        assert conn.unsent is not None
        try:
            _send_queued(conn.sock, conn.unsent)
        except OSError:
            self._close(conn)
            return
        if not conn.unsent:
            self._forget(conn)
            self._after_response(conn, conn.keep_after_send)

    def _serve(self, conn: _Connection, client: _ReceivedSocket, may_keep: bool) -> bool:
        """gunicorn's ``SyncWorker.handle`` for a request already received; True if the connection
        stays open (the response said ``Connection: keep-alive``)."""
        req = None
        try:
            req = next(http.get_parser(self.cfg, client, conn.addr))
            keep = self._handle_request(conn.listener, req, client, conn.addr, may_keep)
            client.flush()
            return keep
        except (http.errors.NoMoreData, StopIteration):
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            return False
        except BaseException as exc:  # gunicorn answers what it can (400 for a bad header, else 500)
            self.handle_error(req, client, conn.addr, exc)
            with contextlib.suppress(OSError):
                client.flush()
            return False

    def _handle_request(self, listener: socket.socket, req: Any, client: _ReceivedSocket, addr: Any,
                        may_keep: bool) -> bool:
        """gunicorn's ``SyncWorker.handle_request``, except that the connection is kept when the client
        asked for it and ``may_keep``, instead of always closed."""
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, client, addr, listener.getsockname(), self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not (may_keep and self.alive and _asks_keep_alive(req.headers)):
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            self._mark_waiting()
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:  # a 500 written now would corrupt the response
                self.log.exception("Error handling request")
                return False
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def _mark_waiting(self) -> None:
        """Mark the connections whose client sent bytes while the app ran: they waited for this worker,
        so their responses close the connection (see the module docstring). Checked before the response
        goes out, so a client answered just now cannot have sent anything yet."""
        for key, events in self._selector.select(0):
            if events & selectors.EVENT_READ and isinstance(key.data, _Connection):
                key.data.waited = True

    def _keep_alive(self, conn: _Connection) -> None:
        """Back to the loop for the next request, with a new header deadline; counted against the cap."""
        sock = conn.sock
        kept = _Connection(sock, conn.addr, conn.listener, time.monotonic() + self.limits.header_timeout,
                           kept_alive=True)
        try:
            sock.setblocking(False)
            if len(self._connections) >= self.limits.max_connections:
                self._evict_oldest()
            self._connections[sock] = kept
            self._selector.register(sock, selectors.EVENT_READ, kept)
        except (OSError, ValueError):
            self._close(kept)

    def _linger_after_response(self, sock: socket.socket) -> None:
        """The response is sent and the socket half-closed: wait for the client's close here, in the
        loop, instead of blocking the worker for up to two seconds as gunicorn would."""
        conn = _Connection(sock, None, sock, time.monotonic() + LINGER_S)
        conn.lingering = True
        try:
            sock.setblocking(False)
            self._connections[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            self._close(conn)

    def _refuse(self, conn: _Connection, status: int, message: str) -> None:
        log.info("refused a request from %s: %d %s", conn.addr, status, message)
        try:
            conn.sock.send(_simple_response(status, message))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.deadline = time.monotonic() + LINGER_S

    def _discard(self, conn: _Connection) -> None:
        try:
            while conn.sock.recv(_RECV_BYTES):
                pass
        except (BlockingIOError, InterruptedError):
            return
        self._close(conn)  # end of input, or the client reset the connection

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [conn for conn in self._connections.values() if conn.deadline <= now]:
            if conn.lingering or conn.idle:  # an idle kept-alive connection is closed without a word (RFC 9112 9.5)
                self._close(conn)
            elif conn.unsent is not None:
                log.info("closed the connection from %s: its client did not read the response within %g s "
                         "(%d bytes unsent)", conn.addr, self.limits.send_timeout, sum(map(len, conn.unsent)))
                self._close(conn)
            else:
                stage = "request body" if conn.headers_done else "request headers"
                limit = self.limits.body_timeout if conn.headers_done else self.limits.header_timeout
                self._refuse(conn, 408, f"the {stage} did not arrive within {limit:g} s")

    def _forget(self, conn: _Connection) -> None:
        if self._connections.pop(conn.sock, None) is not None:
            self._selector.unregister(conn.sock)

    def _close(self, conn: _Connection) -> None:
        self._forget(conn)
        util.close(conn.sock)


def _send_queued(sock: socket.socket, views: list[memoryview]) -> None:
    """Send from the front of ``views`` until done or the non-blocking socket is full; the rest stays."""
    try:
        while views:
            sent = sock.send(views[0])
            views[0] = views[0][sent:]
            if not views[0]:
                views.pop(0)
    except BlockingIOError:
        pass


def _asks_keep_alive(headers: list[tuple[str, str]]) -> bool:
    """The client sent ``Connection: keep-alive`` (gunicorn's header names are upper case)."""
    return any(name == "CONNECTION" and "keep-alive" in value.lower() for name, value in headers)


def worker_class(limits: RequestLimits) -> type[BufferingWorker]:
    """The worker class gunicorn instantiates, with these limits."""
    return type("LucentWorker", (BufferingWorker,), {"limits": limits, "__module__": __name__})
