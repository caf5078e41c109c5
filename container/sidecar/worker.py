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
still parses and validates the header block and writes the response.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import time
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from container.sidecar.app import ReceivedBody
from container.sidecar.limits import RequestLimits, body_too_large_message

log = logging.getLogger("lucent.sidecar")

MAX_HEADER_BYTES = 64 * 1024  # request line and headers (gunicorn's own limits are checked after)
MAX_CHUNK_LINE_BYTES = 4096
LINGER_S = 2.0  # after refusing a request: read and discard what the client still sends, then close
_RECV_BYTES = 256 * 1024
_FIRST_BODY_BUFFER = 256 * 1024  # grown as bytes arrive: an announced size alone reserves no memory


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
        self._state = "size"  # size -> data -> data-end -> size ... -> trailer
        self._trailer_bytes = 0

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

    def __init__(self, sock: socket.socket, addr: Any, listener: socket.socket, deadline: float):
        self.sock = sock
        self.addr = addr
        self.listener = listener
        self.deadline = deadline
        self.head = bytearray()  # request line and headers, up to and including the empty line
        self.headers_done = False
        self.length: int | None = None  # Content-Length of the body
        self.body = bytearray()
        self.received = 0  # body bytes received (Content-Length bodies)
        self.chunked: _ChunkedBody | None = None
        self.lingering = False


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
        if codings[-1] != b"chunked":
            raise _Refusal(400, f"unsupported Transfer-Encoding {b', '.join(codings)[:60]!r}: "
                                "a request body must be chunked or have a Content-Length")
        return 0, True, expect_continue
    if not lengths:
        return 0, False, False
    if len(lengths) > 1:
        raise _Refusal(400, "a request may have only one Content-Length")
    text = lengths[0]
    if not text.isdigit():
        raise _Refusal(400, f"Content-Length must be a whole number of bytes, got {text[:40]!r}")
    if len(text) > 15 or int(text) > cap:
        raise _Refusal(413, body_too_large_message(int(text) if len(text) <= 30 else None, cap))
    return int(text), False, expect_continue


def _drop_expect(head: bytes) -> bytes:
    """The header block without ``Expect``: the worker has answered it (or the body came anyway)."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))


def _simple_response(status: int, message: str) -> bytes:
    body = (message.rstrip("\n") + "\n").encode("utf-8", errors="replace")
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body


class _ReceivedSocket:
    """The connection as gunicorn's request handling sees it: ``recv`` gives the header block the
    worker received (then end of input), the rest goes to the socket; ``close`` hands the socket back
    to the worker's loop, which waits for the client to close without blocking the worker."""

    def __init__(self, sock: socket.socket, head: bytes, on_close: Any):
        self._sock = sock
        self._head = head
        self._on_close = on_close

    def recv(self, size: int, *flags: int) -> bytes:
        data, self._head = self._head[:size], self._head[size:]
        return data

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self._sock)
            self._on_close = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferingWorker(SyncWorker):
    """A sync worker whose requests are received by a selector loop first (see the module docstring).

    ``limits`` is set on a subclass by :func:`worker_class`; gunicorn instantiates the class itself.
    """

    limits = RequestLimits()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi

        def with_received_body(environ: dict, start_response: Any) -> Any:
            environ["wsgi.input"] = ReceivedBody(self._request_body)
            return app(environ, start_response)

        self.wsgi = with_received_body

    def run(self) -> None:
        self._request_body = bytearray()
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
                        if self._connections.get(key.fileobj) is key.data:
                            self._on_readable(key.data)
                    else:
                        self._accept(key.data)
                    if not self.alive:
                        break
                self._expire()
        finally:
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()

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
                    conn.head += data
                    end = conn.head.find(b"\r\n\r\n", start)
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
            conn.body = bytearray(max(min(length, _FIRST_BODY_BUFFER), len(extra[:length])))
            conn.body[:len(extra[:length])] = extra[:length]
            conn.received = min(len(extra), length)
            complete = conn.received == length
        if expect_continue and not complete and not extra:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return complete

    def _dispatch(self, conn: _Connection) -> None:
        """Run the complete request through gunicorn's request handling and the app (blocking)."""
        self._forget(conn)
        sock = conn.sock
        sock.setblocking(True)
        sock.settimeout(self.limits.body_timeout)  # for writing the response to a client that does not read
        self._request_body = conn.chunked.body if conn.chunked is not None else conn.body
        started = time.monotonic()
        try:
            self.handle(conn.listener, _ReceivedSocket(sock, bytes(conn.head), self._linger_after_response),
                        conn.addr)
        finally:
            self._request_body = bytearray()
        busy = time.monotonic() - started
        for other in self._connections.values():  # waiting on this worker is not the client's slowness
            other.deadline += busy

    def _linger_after_response(self, sock: socket.socket) -> None:
        """gunicorn has sent the response and half-closed the socket: wait for the client's close here,
        in the loop, instead of blocking the worker for up to two seconds as gunicorn would."""
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
            if conn.lingering:
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


def worker_class(limits: RequestLimits) -> type[BufferingWorker]:
    """The worker class gunicorn instantiates, with these limits."""
    return type("LucentWorker", (BufferingWorker,), {"limits": limits, "__module__": __name__})
