"""The endpoint's HTTP server against hostile clients, on loopback with a fake model container: header
blocks two parsers could read two ways (whitespace before the colon, a bare CR, obs-fold, NUL) refused
400 before anything reads them; a connection cap that a client holding half-sent requests cannot fill
(the oldest incomplete connection is closed for a new one; 503 only when every connection is busy);
a listen queue that takes a burst of connections; deeply nested JSON Lines answered 400, not 500."""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import urllib3

from container.endpoint.cli import open_endpoint
from container.endpoint.config import parse_endpoint_config
from container.endpoint.server import LISTEN_BACKLOG, EndpointServer
from container.sidecar.limits import RequestLimits
from tests.conftest import FakeContainer, http_server
from tests.test_endpoint_refusals import EXPLAINED, assert_api_error

NAME = "my-endpoint"
HALF_SENT = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"  # no end of headers


class _Model(FakeContainer):
    """A model container that counts its invocations and answers 0.5 per line; while ``server.hold`` is
    set to an Event, each invocation waits for it first (``server.holding`` counts those waiting)."""

    def do_POST(self) -> None:  # noqa: N802
        body = self.request_body()
        with self.server.lock:
            self.server.calls += 1
        if self.server.hold is not None:
            with self.server.lock:
                self.server.holding += 1
            self.server.hold.wait(30)
        self.answer(200, b"\n".join(b"0.5" for _ in body.strip().split(b"\n")))


@contextmanager
def model() -> Iterator[tuple[str, object]]:
    with http_server(_Model, calls=0, holding=0, hold=None, lock=threading.Lock()) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", server


@contextmanager
def endpoint(model_url: str, config: dict | None = None, **options) -> Iterator[EndpointServer]:
    """The endpoint serving on a thread; yields its server (``server.url``)."""
    with open_endpoint(parse_endpoint_config(config or {}), NAME, model_url, **options) as parts:
        thread = threading.Thread(target=parts.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield parts.server
        finally:
            parts.server.shutdown()


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.005)  # polling a condition, not waiting for time to pass


def connect(server: EndpointServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=10)


def exchange(server: EndpointServer, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``data`` on a new connection and read to its close: every response that came back."""
    with connect(server) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    responses = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        responses.append((int(lines[0].split()[1]), headers, rest[:length]))
        received = rest[length:]
    return responses


def metrics(server: EndpointServer) -> str:
    return urllib3.PoolManager().request("GET", f"{server.url}/metrics").data.decode()


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """The server closed ``sock`` (end of input or a reset) within ``timeout``; False if it is still open."""
    if not select.select([sock], [], [], timeout)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- 1. header blocks that two parsers could read two ways ------------------------------------------------

REQUEST = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
SMUGGLED = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 7\r\nConnection: close\r\n\r\n1,2,3,4"


@pytest.mark.parametrize(("head", "body", "expected"), [
    # RFC 9112 5.1: http.server's email parser took "Transfer-Encoding " as an unknown header, and the
    # body was then run as a second request on the connection.
    (b"Transfer-Encoding : chunked\r\n", SMUGGLED, "whitespace between the field name 'Transfer-Encoding' and the colon"),
    (b"Content-Length\t: 7\r\n", b"1,2,3,4", "whitespace between the field name 'Content-Length' and the colon"),
    # A bare CR ended the line for the email parser: a header (or a Content-Length) hidden behind it.
    (b"X-Amzn-SageMaker-Custom-Attributes: a\rX-Evil: 1\r\nContent-Length: 7\r\n", b"1,2,3,4",
     "header line 3 ('X-Amzn-SageMaker-Custom-Attributes'): a bare CR inside the line"),
    (b"X-Note: a\rContent-Length: 7\r\n", b"1,2,3,4", "header line 3 ('X-Note'): a bare CR"),
    # obs-fold went on to the model container, which answered its own error.
    (b"X-Amzn-SageMaker-Custom-Attributes: a\r\n b\r\nContent-Length: 7\r\n", b"1,2,3,4",
     "header line 4: it starts with whitespace"),
    (b"Content-Length: 7\r\n\tX-More: 1\r\n", b"1,2,3,4", "obsolete line folding"),
    (b"X-Note: a\x00b\r\nContent-Length: 7\r\n", b"1,2,3,4", "header line 3 ('X-Note'): a NUL byte"),
    (b"X Note: 1\r\nContent-Length: 7\r\n", b"1,2,3,4", "the field name 'X Note' is not a token"),
    (b"X-N\xf6te: 1\r\nContent-Length: 7\r\n", b"1,2,3,4", "is not a token"),
    (b"Content-Length 7\r\nX-Note: 1\r\n", b"1,2,3,4", "header line 3: no colon"),
    (b": 7\r\nContent-Length: 7\r\n", b"1,2,3,4", "the field name '' is not a token"),
], ids=["te-space-colon", "cl-tab-colon", "cr-custom-attributes", "cr-hides-content-length", "obs-fold-space",
        "obs-fold-tab", "nul", "space-in-name", "non-ascii-name", "no-colon", "empty-name"])
def test_malformed_header_blocks_are_refused_400_before_anything_reads_them(head: bytes, body: bytes,
                                                                           expected: str) -> None:
    with model() as (model_url, container), endpoint(model_url) as server:
        responses = exchange(server, REQUEST + head + b"\r\n" + body)
        assert len(responses) == 1  # nothing in the body was read as a request
        message = assert_api_error(*responses[0], 400)
        assert expected in message and message.startswith("malformed header line")
        assert responses[0][1]["connection"] == "close"
        assert container.calls == 0  # nothing reached the model container
        assert "a\\rX-Evil" not in message and "Evil" not in message  # no value quoted back
        text = metrics(server)
        assert 'lucent_endpoint_requests_total{route="invocations",code="400"} 1' in text
        assert 'route="invocations",code="200"' not in text


@pytest.mark.parametrize(("request_line", "expected"), [
    (b"POST /invocations\r HTTP/1.1\r\n", "a bare CR"),
    (b"POST\t/invocations HTTP/1.1\r\n", "separated by single spaces"),
    (b"POST  /invocations HTTP/1.1\r\n", "separated by single spaces"),
    (b"POST /invo\x01cations HTTP/1.1\r\n", "printable ASCII"),
    (b"POST /invocations HTTP/1.10\r\n", "HTTP/1.x"),
], ids=["bare-cr", "tab", "two-spaces", "control-in-target", "version"])
def test_malformed_request_lines_are_refused_400(request_line: bytes, expected: str) -> None:
    with model() as (model_url, container), endpoint(model_url) as server:
        responses = exchange(server, request_line + b"Host: x\r\nContent-Type: text/csv\r\nContent-Length: 7\r\n\r\n1,2,3,4")
        assert len(responses) == 1
        message = assert_api_error(*responses[0], 400)
        assert expected in message
        assert container.calls == 0


def test_well_formed_heads_still_pass_lf_line_ends_tabs_and_obs_text_in_values() -> None:
    with model() as (model_url, container), endpoint(model_url) as server:
        for data in (b"POST /invocations HTTP/1.1\nHost: x\nContent-Type: text/csv\nContent-Length: 7\n"
                     b"Connection: close\n\n1,2,3,4",
                     b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type:text/csv\r\n"
                     b"X-Amzn-SageMaker-Custom-Attributes: \ttrace=1\t; caf\xe9\t\r\n"
                     b"Content-Length: 7\r\nConnection: close\r\n\r\n1,2,3,4"):
            [(status, _, body)] = exchange(server, data)
            assert (status, body) == (200, b"0.5")
        assert container.calls == 2


def test_a_refused_head_gets_no_100_continue() -> None:
    with model() as (model_url, container), endpoint(model_url) as server:
        with connect(server) as sock:
            sock.sendall(REQUEST + b"Expect: 100-continue\r\nContent-Length: 7\r\nX-Bad : 1\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 400 ") and b"100 Continue" not in received
        assert b"whitespace between the field name 'X-Bad' and the colon" in received
        # A good one still gets its 100 Continue, then its answer.
        with connect(server) as sock:
            sock.sendall(REQUEST + b"Expect: 100-continue\r\nContent-Length: 7\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"1,2,3,4")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\n0.5")
        assert container.calls == 1


def test_headers_cut_short_by_the_client_are_not_a_request() -> None:
    """The client half-closes inside the header block: no request is made of what came (http.server's
    parser ended the block at the end of input)."""
    with model() as (model_url, container), endpoint(model_url) as server:
        for partial in (REQUEST + b"Content-Length: 7\r\n", b"POST /invocations HTTP/1.1"):
            with connect(server) as sock:
                sock.sendall(partial)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(65536) == b""
        assert container.calls == 0
        assert 'lucent_endpoint_requests_total{route="invocations"' not in metrics(server)


# -- 2. connections: the oldest incomplete one makes way; 503 only when all are busy -------------------------


def test_half_sent_requests_cannot_lock_out_a_client() -> None:
    limits = RequestLimits(header_timeout=60, max_connections=4)
    with model() as (model_url, container), endpoint(model_url, limits=limits) as server, ExitStack() as stack:
        held = []
        for _ in range(4):
            sock = stack.enter_context(connect(server))
            sock.sendall(HALF_SENT)
            held.append(sock)
        until(lambda: server.connection_counts() == (4, 0), "four half-sent requests held")
        http = urllib3.PoolManager()
        answer = http.request("POST", f"{server.url}/invocations", body=b"1,2,3,4", headers={"Content-Type": "text/csv"})
        assert (answer.status, answer.data) == (200, b"0.5")
        assert closed_by_server(held[0])  # the oldest made way
        # The attacker reopens as its connections close: every new connection costs it its oldest.
        for round_ in range(3):
            sock = stack.enter_context(connect(server))
            sock.sendall(HALF_SENT)
            held.append(sock)
            assert closed_by_server(held[1 + round_])
            answer = http.request("POST", f"{server.url}/invocations", body=b"1,2,3,4",
                                  headers={"Content-Type": "text/csv"})
            assert (answer.status, answer.data) == (200, b"0.5")
        # The last one reopened is untouched: its request completes and is answered.
        held[-1].sendall(b"Content-Length: 7\r\nConnection: close\r\n\r\n1,2,3,4")
        received = b""
        while chunk := held[-1].recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\n0.5")
        assert container.calls == 5
        text = metrics(server)
        assert 'lucent_endpoint_requests_total{route="invocations",code="200"} 5' in text
        assert 'code="503"' not in text and 'code="400"' not in text  # evicted connections are not answered


def test_an_idle_kept_alive_connection_makes_way_for_a_new_one() -> None:
    with model() as (model_url, _), endpoint(model_url, limits=RequestLimits(max_connections=1)) as server, \
            connect(server) as first:
        first.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(1024).startswith(b"HTTP/1.1 200")  # kept alive, waiting for its next request
        [(status, _, _)] = exchange(server, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200
        assert closed_by_server(first)


def test_503_only_when_every_connection_is_busy_with_a_request() -> None:
    release = threading.Event()
    with model() as (model_url, container), endpoint(model_url, limits=RequestLimits(max_connections=2)) as server:
        container.hold = release
        answers: list[bytes] = []

        def invoke() -> None:
            answers.append(urllib3.PoolManager().request(
                "POST", f"{server.url}/invocations", body=b"1,2,3,4", headers={"Content-Type": "text/csv"}).data)

        callers = [threading.Thread(target=invoke) for _ in range(2)]
        try:
            for caller in callers:
                caller.start()
            until(lambda: server.connection_counts() == (2, 2) and container.holding == 2, "two requests in flight")
            [(status, headers, body)] = exchange(server, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert "too many connections" in assert_api_error(status, headers, body, 503, "ServiceUnavailable")
        finally:
            release.set()
            for caller in callers:
                caller.join(30)
        assert answers == [b"0.5", b"0.5"]


# -- 3. the listen queue ------------------------------------------------------------------------------------------


def _listen_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting to be accepted, the queue's size) of a listening socket, from Linux's
    TCP_INFO (what ``ss -l`` shows as Recv-Q and Send-Q)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    unacked, sacked = struct.unpack_from("=II", info, 24)  # tcpi_unacked, tcpi_sacked
    return unacked, sacked


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the queue with Linux's TCP_INFO")
@pytest.mark.parametrize("max_connections", [64, 300])
def test_the_listen_queue_takes_a_burst_of_connections(max_connections: int) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with model() as (model_url, _), \
            open_endpoint(parse_endpoint_config({}), NAME, model_url,
                          limits=RequestLimits(max_connections=max_connections)) as parts, ExitStack() as stack:
        server = parts.server  # not serving: nothing is accepted
        size = max(LISTEN_BACKLOG, max_connections)
        assert server.request_queue_size == size
        assert _listen_queue(server.socket) == (0, min(size, somaxconn))
        burst = min(size, somaxconn)
        for _ in range(burst):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            sock.connect_ex(server.server_address[:2])
        # Every handshake completes into the queue. With socketserver's backlog of 5 the queue holds 6 for
        # good (nothing accepts them), and the rest wait for SYN retransmits, a second and more each.
        until(lambda: _listen_queue(server.socket)[0] == burst, f"{burst} connections queued")


# -- 4. records nested too deeply -------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body", "expected"), [
    ("application/jsonlines", b"[" * 1000 + b"]" * 1000, "line 1 is nested too deeply (more than 64 levels"),
    ("application/jsonlines", b"[1, 2, 3, 4]\n" + b"[" * 900 + b"]" * 900, "line 2 is nested too deeply"),
    ("application/jsonlines", b'[1, 2, 3, {"a": ' * 65 + b"4" + b"}]" * 65, "line 1 is nested too deeply"),
    ("application/jsonlines", b"[1, 2, 3, " + b"4" * 5000 + b"]", "line 1 has a number with too many digits"),
    ("text/csv", b"1,2,3," + b"4" * 200_000, "CSV line 1 cannot be read: field larger than field limit"),
    ("application/json", b"[" * 1000 + b"]" * 1000, "cannot be explained; use text/csv or application/jsonlines"),
], ids=["jsonlines-1000", "jsonlines-line-2", "objects-65", "long-integer", "csv-field-size", "json"])
def test_records_nested_too_deeply_are_a_validation_error(content_type: str, body: bytes, expected: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with model() as (model_url, _), endpoint(model_url, EXPLAINED) as server:
        http = urllib3.PoolManager()
        answer = http.request("POST", f"{server.url}/invocations", body=body, headers={"Content-Type": content_type})
        message = assert_api_error(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.data, 400)
        assert message.startswith("the request body cannot be explained: the request") and expected in message
        text = metrics(server)
        assert 'lucent_endpoint_requests_total{route="invocations",code="400"} 1' in text
        assert 'code="500"' not in text
        assert not [record for record in caplog.records if record.exc_info or "internal error" in record.getMessage()]
        # The endpoint goes on explaining.
        answer = http.request("POST", f"{server.url}/invocations", body=b'[1, 2, 3, 4]',
                              headers={"Content-Type": "application/jsonlines"})
        assert answer.status == 200
        document = json.loads(answer.data)
        assert [entry["feature_header"] for entry in document["explanations"]["kernel_shap"][0]] == ["a", "b", "c", "d"]


def test_the_nesting_limit_leaves_ordinary_records_alone() -> None:
    """64 levels are read; records with many lists side by side (many brackets, little depth) too."""
    from container.endpoint.scoring import RecordError, parse_records

    assert parse_records(b"[" * 63 + b"[1, 2]" + b"]" * 63, "application/jsonlines").shape == (1, 1)
    with pytest.raises(RecordError, match=re.escape("line 1 is nested too deeply (more than 64 levels")):
        parse_records(b"[" * 64 + b"[1, 2]" + b"]" * 64, "application/jsonlines")
    wide = b"[" + b", ".join([b"[[1]]"] * 500) + b"]"
    assert parse_records(wide, "application/jsonlines").shape == (1, 500)
    brackets_in_text = b'{"f": [1, "' + b"[" * 200 + b'"]}'
    assert parse_records(brackets_in_text, "application/jsonlines", features_attribute="f").tolist() == [[1.0, "[" * 200]]


def test_json_lines_records_are_split_at_newlines_only() -> None:
    """U+2028, U+0085 and other characters str.splitlines breaks at may stand unescaped inside a JSON string:
    the record is one line (the capture reader splits the same way, analyzer/monitor/capture.py)."""
    from container.endpoint.scoring import parse_outputs, parse_records

    body = '{"f": [1, "a\u2028b\u0085c"]}\r\n{"f": [2, "e"]}\n'.encode()
    assert parse_records(body, "application/jsonlines", features_attribute="f").tolist() == [
        [1.0, "a\u2028b\u0085c"], [2.0, "e"]]
    assert parse_outputs('{"label": "x\u2028y"}\n{"label": "z"}\n'.encode(), "application/jsonlines", 2) == [
        {"label": "x\u2028y"}, {"label": "z"}]
