"""The WSGI application each server worker runs: ``GET /ping`` and ``POST /invocations``.

The model is loaded when the worker starts. A model that fails to load does not stop the worker:
``/ping`` then answers 503 with the reason as plain text, so whoever started the server can report
*why* (SageMaker would only see a failing health check).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from container.sidecar import codecs
from container.sidecar.model import (
    InvocationContext,
    InvocationError,
    ModelHandlers,
    ModelLoadError,
    load_handlers,
)

log = logging.getLogger("lucent.sidecar")

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
INFO_PATH = "/lucent/info"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

def default_accept() -> str:
    """Accept used when a request has none (or ``*/*``): SageMaker's variable, else JSON as there."""
    return os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or codecs.JSON


class SidecarApp:
    """WSGI callable serving one loaded model (or the reason it could not be loaded)."""

    def __init__(self, model_dir: Path | None, load_error: str | None = None):
        self.handlers: ModelHandlers | None = None
        self.load_error = load_error
        if load_error is None and model_dir is not None:
            try:
                self.handlers = load_handlers(model_dir)
                log.info("model loaded from %s", self.handlers.source)
            except ModelLoadError as exc:
                self.load_error = str(exc)
            except Exception as exc:  # an unexpected failure must still be reported through /ping
                log.exception("loading the model failed")
                self.load_error = f"{type(exc).__name__}: {exc}"
        if self.load_error:
            log.error("model folder unloadable: %s", self.load_error)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/ping":
            if method not in ("GET", "HEAD"):
                return _respond(start_response, 405, b"use GET /ping\n")
            if self.handlers is None:
                return _respond(start_response, 503, (self.load_error or "model not loaded").encode("utf-8"))
            return _respond(start_response, 200, b"")
        if path == "/invocations":
            if method != "POST":
                return _respond(start_response, 405, b"use POST /invocations\n")
            return self._invoke(environ, start_response)
        if path == INFO_PATH and method == "GET":
            return _respond(start_response, 200, json.dumps(self.info()).encode(), codecs.JSON)
        return _respond(start_response, 404, f"no route {method} {path}: use GET /ping or POST /invocations\n".encode())

    def info(self) -> dict[str, Any]:
        """What a client may rely on beyond the SageMaker contract (served at ``GET /lucent/info``).

        ``default_io`` is true when the default input_fn and output_fn are in use: requests and
        responses are then plain arrays in any supported type, so a client may switch to the
        cheapest one (application/x-npy both ways) for all-numeric data and get the same numbers.
        """
        handlers = self.handlers
        return {
            "loaded": handlers is not None,
            "error": self.load_error,
            "model": handlers.source if handlers else None,
            "default_io": bool(handlers and handlers.input_fn is None and handlers.output_fn is None
                               and handlers.transform_fn is None),
            "content_types": list(codecs.SUPPORTED_TYPES),
        }

    def _invoke(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.handlers is None:
            message = f"model folder unloadable: {self.load_error or 'model not loaded'}"
            return _respond(start_response, 503, message.encode("utf-8"))
        body = _read_body(environ)
        # SageMaker's containers assume JSON when Content-Type is missing; so do we.
        content_type = environ.get("CONTENT_TYPE") or codecs.JSON
        accept = environ.get("HTTP_ACCEPT") or ""
        if not accept or accept.strip() == "*/*":
            accept = default_accept()
        elif self.handlers.output_fn is None and self.handlers.transform_fn is None:
            accept = _pick_supported(accept)
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        context = InvocationContext(custom_attributes=headers.get(CUSTOM_ATTRIBUTES_HEADER.lower()),
                                    target_model=headers.get(TARGET_MODEL_HEADER.lower()),
                                    headers=headers, model_dir=str(self.handlers.model_dir))
        try:
            payload, response_type = self.handlers.invoke(body, content_type, accept, context)
        except InvocationError as exc:
            return _respond(start_response, exc.status, str(exc).encode("utf-8"))
        return _respond(start_response, 200, payload, response_type)


def _pick_supported(accept: str) -> str:
    """First type of a multi-valued Accept that the default encoder produces (else the first)."""
    offered = [part for part in accept.split(",") if part.strip()]
    for part in offered:
        if codecs.media_type(part) in codecs.SUPPORTED_TYPES:
            return part.strip()
    return offered[0].strip() if offered else default_accept()


def _read_body(environ: dict[str, Any]) -> bytes | bytearray:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if not length:
        return stream.read()  # chunked transfer encoding: read to the end
    size = int(length)
    body = _read_from_socket(stream, environ.get("gunicorn.socket"), size)
    return stream.read(size) if body is None else body


def _read_from_socket(stream: Any, sock: socket.socket | None, size: int) -> bytearray | None:
    """The request body received straight into one buffer, under gunicorn's sync worker; else None.

    gunicorn's reader passes a body through several BytesIO buffers in Python (before gunicorn 24, in
    1 KiB steps): 9-14 ms of CPU for an 8 MB SHAP request with gunicorn 27, 3 ms with ``recv_into``.
    It needs gunicorn's reader objects, so it only runs when they look as expected (a Content-Length
    body, nothing of it read yet); otherwise the caller reads through ``wsgi.input``. The bytes
    gunicorn already received with the headers come first.
    """
    reader = getattr(stream, "reader", None)
    unreader = getattr(reader, "unreader", None)
    received = getattr(unreader, "buf", None)
    if (sock is None or getattr(unreader, "sock", None) is not sock or getattr(reader, "length", None) != size
            or not isinstance(received, io.BytesIO) or not isinstance(getattr(stream, "buf", None), io.BytesIO)
            or stream.buf.tell() or not callable(getattr(unreader, "unread", None))):
        return None
    ahead = received.getvalue()
    body = bytearray(size)
    got = min(len(ahead), size)
    body[:got] = ahead[:got]
    unreader.buf = io.BytesIO()
    if len(ahead) > size:
        unreader.unread(ahead[size:])  # a pipelined next request stays gunicorn's to read
    view = memoryview(body)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:  # gunicorn ignores a reset connection, as it does when its own reader runs dry
            raise ConnectionResetError(errno.ECONNRESET, "the client closed the connection before the "
                                       f"end of the body ({got} of {size} bytes)")
        got += n
    reader.length = 0  # the body is consumed: gunicorn must not wait for it
    return body


def _respond(start_response: StartResponse, status: int, body: bytes,
             content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
