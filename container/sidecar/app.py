"""The WSGI application each server worker runs: ``GET /ping`` and ``POST /invocations``.

The model is loaded when the worker starts. A model that fails to load does not stop the worker:
``/ping`` then answers 503 with the reason as plain text, so whoever started the server can report
*why* (SageMaker would only see a failing health check).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from analyzer.media import IMAGE_COALITIONS
from analyzer.redact import redact
from container.sidecar import codecs
from container.sidecar.limits import SAGEMAKER_MAX_BODY_BYTES, announced_size, body_too_large_message
from container.sidecar.model import (
    InvocationContext,
    InvocationError,
    ModelHandlers,
    ModelLoadError,
    load_handlers,
)
from container.sidecar.pictures import PictureComposer

log = logging.getLogger("lucent.sidecar")

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
INFO_PATH = "/lucent/info"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class RequestRefused(Exception):
    """The request body cannot be read: answered with ``status`` and this text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ReceivedBody(io.RawIOBase):
    """``wsgi.input`` for a body the server has already received in full (see ``worker.py``). The app
    decodes ``data`` itself, in place; any other reader gets an ordinary binary stream."""

    def __init__(self, data: bytearray):
        super().__init__()
        self.data = data
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(self.data) as data, memoryview(buffer) as target:
            n = min(len(target), len(data) - self._position)
            target[:n] = data[self._position:self._position + n]
        self._position += n
        return n


def default_accept(model: Any = None) -> str:
    """Accept used when a request has none (or ``*/*``): SageMaker's variable, else what SageMaker's own
    container for the model answers: CSV for an XGBoost model (its algorithm container writes text/csv),
    JSON otherwise (the scikit-learn and other framework containers)."""
    from container.sidecar.model import XGBoostBooster

    configured = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")
    if configured:
        return configured
    return codecs.CSV if isinstance(model, XGBoostBooster) else codecs.JSON


class SidecarApp:
    """WSGI callable serving one loaded model (or the reason it could not be loaded)."""

    def __init__(self, model_dir: Path | None, load_error: str | None = None, *,
                 max_body_bytes: int = SAGEMAKER_MAX_BODY_BYTES):
        self.handlers: ModelHandlers | None = None
        self.load_error = load_error
        self.max_body_bytes = max_body_bytes
        self._composer = PictureComposer()  # IMAGE_COALITIONS requests (it holds nothing until the first)
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
        announced = (environ.get("CONTENT_LENGTH") or "").strip()
        size = announced_size(announced) if announced.isascii() and announced.isdigit() else 0
        if size is None or size > self.max_body_bytes:
            # Any route, as Lucent's worker refuses it before routing (under another WSGI server: unread)
            message = body_too_large_message(size, self.max_body_bytes)
            return _respond(start_response, 413, (message + "\n").encode("utf-8"))
        if path == "/ping":
            if method not in ("GET", "HEAD"):
                return _respond(start_response, 405, b"use GET /ping\n", headers=(("Allow", "GET, HEAD"),))
            if self.handlers is None:
                return _respond(start_response, 503, (self.load_error or "model not loaded").encode("utf-8"))
            return _respond(start_response, 200, b"")
        if path == "/invocations":
            if method != "POST":
                return _respond(start_response, 405, b"use POST /invocations\n", headers=(("Allow", "POST"),))
            return self._invoke(environ, start_response)
        if path == INFO_PATH and method == "GET":
            return _respond(start_response, 200, json.dumps(self.info()).encode(), codecs.JSON)
        return _respond(start_response, 404, f"no route {method} {path}: use GET /ping or POST /invocations\n".encode())

    def info(self) -> dict[str, Any]:
        """What a client may rely on beyond the SageMaker contract (served at ``GET /lucent/info``).

        ``default_io`` is true when the default input_fn and output_fn are in use: requests and
        responses are then plain arrays in any supported type, so a client may switch to the
        cheapest one (application/x-npy both ways) for all-numeric data and get the same numbers.
        ``composes_pictures``: the server takes coalition pictures described (``IMAGE_COALITIONS``) and
        draws them itself (container/sidecar/pictures.py).
        """
        handlers = self.handlers
        return {
            "loaded": handlers is not None,
            "error": self.load_error,
            "model": handlers.source if handlers else None,
            "default_io": bool(handlers and handlers.default_io),
            "content_types": list(codecs.SUPPORTED_TYPES),
            "composes_pictures": bool(handlers and handlers.default_io),
        }

    def _invoke(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.handlers is None:
            message = f"model folder unloadable: {self.load_error or 'model not loaded'}"
            return _respond(start_response, 503, message.encode("utf-8"))
        try:
            body = read_body(environ, self.max_body_bytes)
        except RequestRefused as refusal:
            return _respond(start_response, refusal.status, (str(refusal) + "\n").encode("utf-8"))
        # SageMaker's containers assume JSON when Content-Type is missing; so do we.
        content_type = environ.get("CONTENT_TYPE") or codecs.JSON
        accept = negotiate_accept(environ.get("HTTP_ACCEPT") or "",
                                  own_output=self.handlers.output_fn is not None or self.handlers.transform_fn is not None,
                                  default=default_accept(self.handlers.model))
        if accept is None:
            message = (f"unsupported Accept {_excerpt(environ.get('HTTP_ACCEPT') or '')}: the default output_fn "
                       f"produces {', '.join(codecs.SUPPORTED_TYPES)} (a q=0 range means not acceptable)")
            return _respond(start_response, 406, message.encode("utf-8"))
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        context = InvocationContext(custom_attributes=headers.get(CUSTOM_ATTRIBUTES_HEADER.lower()),
                                    target_model=headers.get(TARGET_MODEL_HEADER.lower()),
                                    headers=headers, model_dir=str(self.handlers.model_dir))
        try:
            if codecs.media_type(content_type) == IMAGE_COALITIONS:
                payload, response_type = self._invoke_pictures(body, accept, context)
            else:
                payload, response_type = self.handlers.invoke(body, content_type, accept, context)
        except InvocationError as exc:
            return _respond(start_response, exc.status, str(exc).encode("utf-8"))
        return _respond(start_response, 200, payload, response_type)


    def _invoke_pictures(self, body: bytes | bytearray, accept: str, context: InvocationContext) -> tuple[bytes, str]:
        """An ``IMAGE_COALITIONS`` request: the pictures drawn here (container/sidecar/pictures.py),
        then the model as for an npy body of them."""
        if not self.handlers.default_io:
            raise InvocationError(f"Content-Type {IMAGE_COALITIONS} is read only by the default input_fn; this "
                                  "model has its own input handling", 415)
        try:
            pictures = self._composer.pictures(body, self.max_body_bytes)
        except codecs.CodecError as exc:
            raise InvocationError(str(exc), exc.status) from None
        return self.handlers.invoke_decoded(pictures, accept, context)


def accept_ranges(accept: str) -> list[tuple[str, float]]:
    """The media ranges of an Accept header with their q-values (RFC 9110 12.5.1), most preferred first
    (a stable sort: ties keep the client's order); ranges with q=0 (not acceptable) are left out. A bare
    ``*`` (Java's default Accept) is ``*/*``; a malformed q counts as 1, as most servers read it."""
    ranges = []
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        if q > 0:
            ranges.append(("*/*" if media == "*" else codecs.media_type(media), q))
    ranges.sort(key=lambda item: -item[1])
    return ranges


def negotiate_accept(accept: str, own_output: bool = False, default: str | None = None) -> str | None:
    """The media type to answer with for this Accept header, or None when the default output_fn can
    write none of the types it accepts (406).

    A missing Accept, or a most preferred range of ``*/*`` / ``*``, is ``default`` (:func:`default_accept`);
    ``type/*`` is the default when it matches, else the first supported type of that kind. A model with
    its own ``output_fn`` / ``transform_fn`` gets the header itself (it may serve other types), except
    where a wildcard is the client's first choice: then it gets the default, as without an Accept.
    """
    default = default or default_accept()
    if not accept.strip():
        return default
    ranges = accept_ranges(accept)
    if own_output:
        first = ranges[0][0] if ranges else ""
        return default if first in ("*/*", "") else accept
    for media, _ in ranges:
        if media == "*/*":
            return default
        if media.endswith("/*"):
            kind = media[:-1]
            for candidate in (codecs.media_type(default), *codecs.SUPPORTED_TYPES):
                if candidate.startswith(kind) and candidate in codecs.SUPPORTED_TYPES:
                    return candidate
        elif media in codecs.SUPPORTED_TYPES:
            return media
    return None


def _excerpt(text: str, limit: int = 60) -> str:
    """A short, escaped excerpt of a client's header for an error message (``repr``: no control
    characters or markup reach the client's terminal verbatim)."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes | bytearray:
    """The request body, at most ``max_bytes``; RequestRefused (400/413) when it cannot be read.

    Lucent's worker has already received it (:class:`ReceivedBody`, checked against the same cap);
    under any other WSGI server it is read here, refusing an announced size over the cap before
    reading anything and a chunked body as soon as it passes the cap.
    """
    stream = environ["wsgi.input"]
    if isinstance(stream, ReceivedBody):
        return stream.data
    length = (environ.get("CONTENT_LENGTH") or "").strip()
    if length:
        if not (length.isascii() and length.isdigit()):
            raise RequestRefused(400, f"Content-Length must be a whole number of bytes, got {length[:40]!r}")
        size = announced_size(length)
        if size is None or size > max_bytes:
            raise RequestRefused(413, body_too_large_message(size, max_bytes))
        body = stream.read(size) if size else b""
        if len(body) < size:
            raise RequestRefused(400, f"the request body ended after {len(body):,} of {size:,} bytes")
        return body
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""  # no framing: no body (PEP 3333: never read past CONTENT_LENGTH)
    body = stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise RequestRefused(413, body_too_large_message(None, max_bytes, chunked=True))
    return body


def _respond(start_response: StartResponse, status: int, body: bytes,
             content_type: str = "text/plain; charset=utf-8", headers: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
    """One response; an error's text is redacted (analyzer.redact): a model's exception may quote a
    connection string or a key, and the log is not the only place it would reach."""
    if status >= 400:
        body = redact(body.decode("utf-8", errors="replace")).encode("utf-8")
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers])
    return [body]
