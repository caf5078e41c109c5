"""Fuzzing the model server's request handling: generated methods, paths, headers and bodies.

In-process against the WSGI app (fast, hundreds of examples per property), the worker's framing and
chunk decoders, and a smaller number of raw requests against a real server on 127.0.0.1. Every input
must end in an HTTP response with a 2xx/4xx/5xx status and a readable body: never a traceback in the
body, an exception out of the app, a dead worker or a hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
import urllib.request

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from container.sidecar import start_model_server
from container.sidecar.app import SidecarApp
from container.sidecar.limits import RequestLimits
from container.sidecar.worker import _ChunkedBody, _framing, _Refusal

CAP = 4096
FEATURES = 3
TYPES = ["text/csv", "application/json", "application/jsonlines", "application/x-npy", "text/csv; charset=utf-8",
         "application/json; charset=utf-8", "image/png", "*/*", "text/html", "application/x-npy; q=0.5"]
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    x = np.random.default_rng(0).normal(size=(100, FEATURES))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), folder / "model.joblib")
    return folder


@pytest.fixture(scope="module")
def app(model_dir):
    return SidecarApp(model_dir, max_body_bytes=CAP)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                  st.text(max_size=8), st.just(""), st.none())
rows = st.lists(st.lists(cells, min_size=0, max_size=FEATURES + 2), min_size=0, max_size=5)


def _csv(table: list[list]) -> bytes:
    return "\n".join(",".join("" if v is None else str(v) for v in row) for row in table).encode("utf-8")


def _npy(table: list[list]) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, np.array(table, dtype=float), allow_pickle=False)
    except (ValueError, TypeError, OverflowError):
        np.save(buffer, np.zeros((1, FEATURES)))
    return buffer.getvalue()


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=20)
bodies = st.one_of(
    st.binary(max_size=600),
    rows.map(_csv),
    rows.map(_npy),
    json_values.map(lambda value: json.dumps(value).encode()),
    rows.map(lambda table: "\n".join(json.dumps(row, default=str) for row in table).encode()),
    st.binary(min_size=CAP - 10, max_size=CAP + 10),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]) | st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8)
paths = st.sampled_from(["/ping", "/invocations", "/lucent/info", "/", "/invocations/", "/ping?x=1"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=20).map(lambda text: "/" + text)
media_types = st.none() | st.sampled_from(TYPES) | header_text


@st.composite
def wsgi_requests(draw) -> dict:
    body = draw(bodies)
    length = draw(st.one_of(st.just(str(len(body))), st.none(), st.integers(-5, 10**20).map(str), header_text,
                            st.integers(0, len(body) + 5).map(str)))
    environ = {"REQUEST_METHOD": draw(methods), "PATH_INFO": draw(paths), "SERVER_NAME": "x", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http"}
    optional = {"CONTENT_TYPE": draw(media_types), "HTTP_ACCEPT": draw(media_types), "CONTENT_LENGTH": length,
                "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES": draw(st.none() | header_text),
                "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL": draw(st.none() | header_text),
                "HTTP_TRANSFER_ENCODING": draw(st.none() | st.sampled_from(["chunked", "gzip", "Chunked"]))}
    environ.update({key: value for key, value in optional.items() if value is not None})
    return environ


def call(app, environ: dict) -> tuple[int, dict, bytes]:
    captured = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(captured["status"].split()[0]), captured["headers"], body


# --------------------------------------------------------------------------------------------
# In-process: the WSGI app
# --------------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(environ=wsgi_requests())
@example(environ={"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "CONTENT_LENGTH": "9" * 5000,
                  "wsgi.input": io.BytesIO(b"")})
@example(environ={"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "CONTENT_LENGTH": "-1",
                  "wsgi.input": io.BytesIO(b"1,2,3")})
@example(environ={"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "CONTENT_LENGTH": "²",
                  "wsgi.input": io.BytesIO(b"1,2,3")})
@example(environ={"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "HTTP_TRANSFER_ENCODING": "chunked",
                  "wsgi.input": io.BytesIO(b"1,2,3\n" * 1000)})
def test_every_request_gets_a_status_and_a_readable_body(app, environ):
    body_sent = environ["wsgi.input"].getvalue()
    status, headers, body = call(app, environ)
    assert 200 <= status < 600 and not 300 <= status < 400
    assert headers["Content-Length"] == str(len(body))
    if headers["Content-Type"].startswith("text/plain"):
        text = body.decode("utf-8")
        assert TRACEBACK not in text
        if status >= 400:
            assert text.strip(), "an error needs a reason"
    length = environ.get("CONTENT_LENGTH", "")
    if length.isascii() and length.isdigit() and (len(length) > 30 or int(length) > CAP):
        assert status in (413, 404, 405, 503)
    if status == 200 and environ["PATH_INFO"] == "/invocations":
        assert len(body_sent) <= CAP


# --------------------------------------------------------------------------------------------
# In-process: the worker's framing and chunk decoding
# --------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.binary(max_size=60).filter(lambda b: b"\r\n" not in b), max_size=8),
       first=st.sampled_from([b"POST / HTTP/1.1", b"GET /ping HTTP/1.0", b"", b"X"]))
@example(lines=[b"Content-Length: " + b"9" * 5000], first=b"POST / HTTP/1.1")
@example(lines=[b"Content-Length: \xb2"], first=b"POST / HTTP/1.1")
def test_framing_answers_or_refuses_any_header_block(lines, first):
    head = b"\r\n".join([first, *lines])
    try:
        length, chunked, _ = _framing(head, CAP)
    except _Refusal as refusal:
        assert refusal.status in (400, 413) and str(refusal)
    else:
        assert 0 <= length <= CAP and not (chunked and length)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), split=st.integers(1, 50))
@example(data=b"ffffffffffffffffff\r\n", split=50)
@example(data=b"1\r\nab\r\n", split=1)
def test_chunk_decoder_answers_or_refuses_any_bytes(data, split):
    decoder = _ChunkedBody(CAP)
    try:
        for i in range(0, len(data), split):
            if decoder.feed(data[i:i + split]):
                break
    except _Refusal as refusal:
        assert refusal.status in (400, 413, 431) and str(refusal)
    assert len(decoder.body) <= CAP


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=200), max_size=6), split=st.integers(1, 64),
       extension=st.sampled_from([b"", b";a=b", b" ;x"]))
def test_chunk_decoder_rebuilds_any_body_from_any_pieces(parts, split, extension):
    encoded = b"".join(b"%x%s\r\n%s\r\n" % (len(part), extension, part) for part in parts) + b"0\r\nT: 1\r\n\r\n"
    decoder = _ChunkedBody(CAP)
    done = [decoder.feed(encoded[i:i + split]) for i in range(0, len(encoded), split)]
    assert done[-1] and decoder.body == b"".join(parts)


# --------------------------------------------------------------------------------------------
# A real server: raw requests on a socket
# --------------------------------------------------------------------------------------------

token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12)


@st.composite
def raw_requests(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # plain garbage now and then (answered 400, or 408 after 1 s)
        return draw(st.binary(max_size=200)) + b"\r\n\r\n"
    body = draw(bodies)
    headers = draw(st.lists(st.tuples(token | header_text, header_text), max_size=4))
    headers += [("Content-Type", draw(st.sampled_from(TYPES))), ("Accept", draw(st.sampled_from(TYPES)))]
    framing = draw(st.sampled_from(["length", "length", "chunked", "none", "wrong"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "wrong":
        headers.append(("Content-Length", draw(header_text | st.integers(-3, 10**15).map(str))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x"]))
    head = f"{draw(methods)} {draw(paths)} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_raw_requests_on_a_real_socket_always_get_a_response(model_dir):
    limits = RequestLimits(max_body_bytes=CAP, header_timeout=1.0, body_timeout=1.0, max_connections=16)
    with start_model_server(model_dir, workers=2, limits=limits) as server:
        server.wait_healthy(60)

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(raw=raw_requests())
        @example(raw=b"POST /invocations HTTP/1.1\r\nContent-Length: 5\r\n\r\n")  # body never sent
        @example(raw=b"POST /invocations HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")
        @example(raw=b"GET /ping HTTP/1.1\r\nHost: x")  # headers never end
        @example(raw=b"GET /ping HTTP/1.0\r\nContent-Length: 0\r\n\r\n")  # answered in HTTP/1.0
        def check(raw: bytes) -> None:
            started = time.monotonic()
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(raw)
                response = read_response(sock, timeout=15)
            assert response[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 "), (raw[:200], response[:200])
            status = int(response.split(b" ", 2)[1])
            assert 200 <= status < 600 and not 300 <= status < 400
            assert TRACEBACK.encode() not in response
            assert time.monotonic() - started < 10  # bounded by the 1 s read timeouts, with room for load

        check()
        with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as response:
            assert response.status == 200
        log = server.log_tail(100_000)
        assert log.count("Booting worker") == 2, "a worker died and was replaced"
        assert "Exception in worker process" not in log
