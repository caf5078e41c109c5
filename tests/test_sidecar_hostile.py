"""The model server against hostile or unlucky clients, for real: a server process on 127.0.0.1 and
raw sockets. Oversized and malformed bodies, slow clients, connection floods, the listening address,
and temporary folders left by a server killed with SIGKILL."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.sidecar import ModelServer, start_model_server
from container.sidecar.app import read_body
from container.sidecar.cli import main as serve_model_main
from container.sidecar.limits import MIB, SAGEMAKER_MAX_BODY_BYTES, RequestLimits
from container.sidecar.model import EXTRACTED_DIR_PREFIX, remove_abandoned_dirs
from container.sidecar.server import STARTED_SERVER_MAX_BODY_BYTES, default_host
from container.sidecar.worker import _ChunkedBody, _framing, _Refusal

REPO_ROOT = Path(__file__).resolve().parents[1]
HEALTHY_TIMEOUT_S = 60
CAP = 1 * MIB
SHORT = RequestLimits(max_body_bytes=CAP, header_timeout=3.0, body_timeout=3.0, max_connections=16)
FEATURES = 3


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def model_folder(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, FEATURES))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), folder / "model.joblib")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(model_dir):
    """Two workers, a 1 MB body cap and 3 s read timeouts."""
    with start_model_server(model_dir, workers=2, limits=SHORT) as started:
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        yield started


def connect(server: ModelServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of the one response on ``sock``, read until the server closes it."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), body


def exchange(server: ModelServer, raw: bytes) -> tuple[int, bytes]:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_response(sock)


def request_head(length: str | None = None, *extra: str, path: str = "/invocations") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: text/csv", "Accept: text/csv",
             *([f"Content-Length: {length}"] if length is not None else []), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ping(server: ModelServer, timeout: float = 10.0) -> int:
    with urllib.request.urlopen(f"{server.url}/ping", timeout=timeout) as response:
        return response.status


def invoke(server: ModelServer, body: bytes = b"1,2,3\n4,5,6\n", content_type: str = "text/csv",
           timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{server.url}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": "text/csv"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (after any response it sent), without waiting."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def wait_closed(socks: list[socket.socket], timeout: float) -> list[bytes]:
    """Wait until the server has closed every socket; returns what each received."""
    received = [b""] * len(socks)
    deadline = time.monotonic() + timeout
    pending = set(range(len(socks)))
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            socks[i].settimeout(0.05)
            try:
                chunk = socks[i].recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[i] += chunk
            else:
                pending.discard(i)
    assert not pending, f"{len(pending)} slow socket(s) still open after {timeout} s"
    return received


# --------------------------------------------------------------------------------------------
# Body size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [str(CAP + 1), str(10**9), str(10**13), "9" * 40, "9" * 5000,
                                    "0" * 30 + str(CAP + 1)])
def test_announced_body_over_the_cap_is_refused_before_it_is_sent(server, length):
    status, body = exchange(server, request_head(length))  # headers only: the answer must not wait for a body
    assert status == 413
    assert f"limit of {CAP:,} bytes (1 MB;" in body.decode() and "Traceback" not in body.decode()
    assert ping(server) == 200


def test_two_gigabyte_announcements_do_not_freeze_the_workers(server):
    socks = [connect(server) for _ in range(2)]
    try:
        for sock in socks:
            sock.sendall(request_head(str(10**9)))
        assert ping(server, timeout=5) == 200
        assert invoke(server)[0] == 200
        assert [read_response(sock)[0] for sock in socks] == [413, 413]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("headers", [
    ("Content-Length: -1",), ("Content-Length: abc",), ("Content-Length: 1.5",), ("Content-Length: 0x10",),
    ("Content-Length: 1, 2",), ("Content-Length: 3", "Content-Length: 3"), ("Content-Length: ²",),
    ("Content-Length: 3", "Transfer-Encoding: chunked"), ("Transfer-Encoding: gzip",),
    ("Transfer-Encoding: chunked, identity",),
])
def test_malformed_framing_gets_400_with_a_reason(server, headers):
    raw = ("\r\n".join(["POST /invocations HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode("utf-8") + b"1,2"
    status, body = exchange(server, raw)
    assert status == 400, body
    assert body.strip() and b"Traceback" not in body


def test_body_over_the_cap_sent_at_once_still_gets_its_413(server):
    """The client sends the whole body before reading: the server refuses it, reads and drops the rest,
    and only then closes, so the client sees the 413 instead of a reset connection."""
    status, body = invoke(server, b"1,2,3\n" * (CAP // 6 + 1000))
    assert status == 413 and b"limit of 1,048,576 bytes" in body


def test_leading_zeros_do_not_make_a_content_length_larger(server):
    body = b"1,2,3\n4,5,6\n"
    status, answer = exchange(server, request_head("0" * 20 + str(len(body))) + body)
    assert status == 200, answer
    assert len(answer.splitlines()) == 2
    environ = {"CONTENT_LENGTH": "00000000000000000003", "wsgi.input": io.BytesIO(b"abcdef")}
    assert read_body(environ, CAP) == b"abc"  # the app's own reading, under any other WSGI server


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,Chunked", "chunked, chunked"])
def test_transfer_codings_other_than_plain_chunked_get_501(server, coding):
    status, body = exchange(server, request_head(None, f"Transfer-Encoding: {coding}") + b"3\r\n1,2\r\n0\r\n\r\n")
    assert status == 501, body
    assert b"this server decodes plain chunked only" in body
    assert ping(server) == 200


@pytest.mark.parametrize("raw", [b"GET /ping HTTP/1.1\nHost: x\n\n", b"GET /ping HTTP/1.1\r\nHost: x\n\r\n",
                                 b"GET /ping HTTP/1.1\nHost: x"])
def test_a_bare_lf_in_the_headers_gets_400_at_once(server, raw):
    with connect(server) as sock:
        sock.sendall(raw)  # and nothing more: without the check, only the header timeout would answer (408)
        status, body = read_response(sock, timeout=SHORT.header_timeout + 5)
    assert status == 400, body
    assert b"bare LF" in body


def test_body_at_the_cap_is_accepted(server):
    rows = (CAP - 100) // 6
    status, body = invoke(server, b"1,2,3\n" * rows)
    assert status == 200 and len(body.splitlines()) == rows


def test_chunked_bodies_are_decoded_and_capped(server):
    chunks = [b"1,2,", b"3\n4,5", b",6\n"]
    raw = request_head(None, "Transfer-Encoding: chunked") + b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\nX-Trailer: 1\r\n\r\n"
    status, body = exchange(server, raw)
    assert status == 200 and len(body.splitlines()) == 2

    with connect(server) as sock:  # past the cap: refused without waiting for the last chunk
        sock.sendall(request_head(None, "Transfer-Encoding: chunked"))
        piece = b"1,2,3\n" * 10_000
        for _ in range(CAP // len(piece) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, body = read_response(sock)
    assert status == 413 and b"chunked request body larger than" in body


@pytest.mark.parametrize("raw_body", [b"zz\r\n1\r\n0\r\n\r\n", b"3\r\n1,2XX0\r\n\r\n", b"-1\r\n\r\n",
                                      b"1" * 5000])
def test_malformed_chunked_bodies_get_400(server, raw_body):
    status, body = exchange(server, request_head(None, "Transfer-Encoding: chunked") + raw_body)
    assert status == 400 and b"chunk" in body


def test_expect_100_continue_is_answered_before_the_body_and_refused_over_the_cap(server):
    with connect(server) as sock:
        sock.sendall(request_head("12", "Expect: 100-continue"))
        sock.settimeout(10)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"1,2,3\n4,5,6\n")
        status, body = read_response(sock)
    assert status == 200 and len(body.splitlines()) == 2
    status, _ = exchange(server, request_head(str(CAP + 1), "Expect: 100-continue"))
    assert status == 413


def test_the_job_payload_fits_the_server_it_starts(model_dir):
    """container.job sizes requests to its own server by this constant; the server accepts them."""
    job_source = (REPO_ROOT / "container" / "job.py").read_text()
    assert "LOCAL_MAX_PAYLOAD_BYTES = STARTED_SERVER_MAX_BODY_BYTES" in job_source
    assert STARTED_SERVER_MAX_BODY_BYTES > SAGEMAKER_MAX_BODY_BYTES
    x = np.random.default_rng(1).normal(size=((STARTED_SERVER_MAX_BODY_BYTES - 128) // (8 * FEATURES), FEATURES))
    buffer = __import__("io").BytesIO()
    np.save(buffer, x)
    payload = buffer.getvalue()
    assert SAGEMAKER_MAX_BODY_BYTES < len(payload) <= STARTED_SERVER_MAX_BODY_BYTES
    with start_model_server(model_dir, workers=1) as started:  # the job's way: default limits
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        assert started.limits.max_body_bytes == STARTED_SERVER_MAX_BODY_BYTES
        status, body = invoke(started, payload, "application/x-npy", timeout=60)
        assert status == 200 and len(body.splitlines()) == len(x)
        assert invoke(started, payload + b"\0" * (STARTED_SERVER_MAX_BODY_BYTES - len(payload) + 1),
                      "application/x-npy")[0] == 413


# --------------------------------------------------------------------------------------------
# Slow clients and floods
# --------------------------------------------------------------------------------------------


def test_slow_clients_do_not_starve_ping_or_requests_and_are_closed_after_the_timeout(server):
    slow = [connect(server) for _ in range(6)]  # three per worker
    try:
        for i, sock in enumerate(slow):
            if i % 2:
                sock.sendall(request_head("1000")[:-2])  # headers one byte short of their end
            else:
                sock.sendall(request_head("1000") + b"1,2")  # announces a body, sends 3 bytes of it
        slow[1].send(b"\r")  # one more byte of headers: still one short
        started = time.monotonic()
        assert ping(server, timeout=SHORT.header_timeout) == 200
        assert invoke(server, timeout=SHORT.header_timeout)[0] == 200
        answered_in = time.monotonic() - started
        assert not any(closed_by_server(sock) for sock in slow), "answered only after the slow sockets were dropped"
        assert answered_in < SHORT.header_timeout
        received = wait_closed(slow, timeout=SHORT.body_timeout + 15)
        assert all(data.startswith(b"HTTP/1.1 408 ") for data in received), received
        assert b"did not arrive within 3 s" in received[0]
    finally:
        for sock in slow:
            sock.close()


FEW_CONNECTIONS = RequestLimits(max_body_bytes=CAP, header_timeout=30.0, body_timeout=30.0, max_connections=4)


@pytest.fixture(scope="module")
def one_worker(model_dir):
    """One worker holding at most 4 connections, with 30 s read timeouts."""
    with start_model_server(model_dir, workers=1, limits=FEW_CONNECTIONS) as started:
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        yield started


def test_a_flood_of_idle_connections_cannot_lock_out_a_real_request(one_worker):
    idle = [connect(one_worker) for _ in range(12)]
    try:
        for sock in idle:
            sock.sendall(b"GET /pi")
        assert ping(one_worker, timeout=10) == 200  # long before the 30 s timeouts
        assert invoke(one_worker)[0] == 200
        deadline = time.monotonic() + 10
        while sum(closed_by_server(sock) for sock in idle) < len(idle) - FEW_CONNECTIONS.max_connections:
            assert time.monotonic() < deadline, "the oldest idle connections were not closed"
            time.sleep(0.05)
        assert "closing the oldest incomplete one" in one_worker.log_tail(200)
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_never_closes_after_its_response_does_not_hold_the_worker(one_worker):
    with connect(one_worker) as lingering:
        lingering.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        lingering.settimeout(10)
        assert lingering.recv(100).startswith(b"HTTP/1.1 200 ")
        started_at = time.monotonic()  # gunicorn alone would now wait up to 2 s for this client
        assert ping(one_worker) == 200
        assert time.monotonic() - started_at < 1.5


# --------------------------------------------------------------------------------------------
# Options: address and limits
# --------------------------------------------------------------------------------------------


def test_listening_address_defaults_to_this_machine_and_the_image_sets_all_interfaces(monkeypatch):
    monkeypatch.delenv("LUCENT_HOST", raising=False)
    assert default_host() == "127.0.0.1"
    monkeypatch.setenv("LUCENT_HOST", "0.0.0.0")
    assert default_host() == "0.0.0.0"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "LUCENT_HOST=0.0.0.0" in dockerfile


def test_serve_model_listens_on_loopback_by_default(model_dir, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "LUCENT_HOST"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "container.sidecar", "--model-dir", str(model_dir),
                                    "--port", "0", "--workers", "1"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while "Lucent model server for" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert " on http://127.0.0.1:" in log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--max-body-mb", "0"], {}, "--max-body-mb must be more than 0"),
    (["--max-body-mb", "-3"], {}, "--max-body-mb must be more than 0"),
    (["--max-body-mb", "lots"], {}, "--max-body-mb must be a number of megabytes"),
    (["--max-body-mb", "nan"], {}, "--max-body-mb must be more than 0"),
    ([], {"LUCENT_MAX_BODY_MB": "six"}, "LUCENT_MAX_BODY_MB must be a number of megabytes"),
    (["--header-timeout", "0"], {}, "--header-timeout must be more than 0"),
    (["--body-timeout", "-1"], {}, "--body-timeout must be more than 0"),
    (["--max-connections", "0"], {}, "--max-connections must be at least 1"),
])
def test_bad_limits_are_refused_with_the_option_named(monkeypatch, capsys, tmp_path, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert serve_model_main(["--model-dir", str(tmp_path), "--port", "0", *argv]) == 1
    assert message in capsys.readouterr().err


def test_max_body_from_the_environment(monkeypatch):
    from container.sidecar.limits import default_max_body_bytes

    monkeypatch.delenv("LUCENT_MAX_BODY_MB", raising=False)
    assert default_max_body_bytes() == 6 * MIB
    monkeypatch.setenv("LUCENT_MAX_BODY_MB", "2.5")
    assert default_max_body_bytes() == int(2.5 * MIB)


# --------------------------------------------------------------------------------------------
# Framing, in-process
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "expected"), [
    (b"POST / HTTP/1.1\r\nContent-Length: 12", (12, False, False)),
    (b"POST / HTTP/1.1\r\ncontent-length:   7  ", (7, False, False)),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked", (0, True, False)),
    (b"POST / HTTP/1.1\r\nContent-Length: 00000000000000000031", (31, False, False)),
    (b"POST / HTTP/1.1\r\nContent-Length: " + b"0" * 5000 + b"7", (7, False, False)),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue", (5, False, True)),
    (b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue", (5, False, False)),
    (b"GET /ping HTTP/1.1\r\nHost: x", (0, False, False)),
])
def test_framing(head, expected):
    assert _framing(head, CAP) == expected


def test_chunked_decoder_takes_bytes_in_any_pieces():
    body = bytes(range(256)) * 40
    encoded = b"".join(b"%X\r\n%s\r\n" % (len(part), part) for part in (body[:1], body[1:4000], body[4000:]))
    encoded += b"0\r\n\r\n"
    for step in (1, 7, 4096, len(encoded)):
        decoder = _ChunkedBody(CAP)
        done = [decoder.feed(encoded[i:i + step]) for i in range(0, len(encoded), step)]
        assert done[-1] and not any(done[:-1]) and decoder.body == body
    with pytest.raises(_Refusal) as refusal:
        _ChunkedBody(10).feed(b"B\r\n")
    assert refusal.value.status == 413


# --------------------------------------------------------------------------------------------
# Temporary folders left by SIGKILL
# --------------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_abandoned_folders_of_dead_owners_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f"{EXTRACTED_DIR_PREFIX}{dead_pid()}-abc"
    live = tmp_path / f"{EXTRACTED_DIR_PREFIX}{os.getpid()}-def"
    unrelated = [tmp_path / f"{EXTRACTED_DIR_PREFIX}server-{dead_pid()}-x", tmp_path / f"{EXTRACTED_DIR_PREFIX}abc",
                 tmp_path / "other-1-x"]
    for folder in (dead, live, *unrelated):
        (folder / "code").mkdir(parents=True)
    (dead / "code" / "inference.py").write_text("x")
    not_a_folder = tmp_path / f"{EXTRACTED_DIR_PREFIX}{dead_pid()}-file"
    not_a_folder.write_text("x")
    assert remove_abandoned_dirs(EXTRACTED_DIR_PREFIX, tmp_path) == [dead]
    assert not dead.exists() and live.is_dir() and all(folder.is_dir() for folder in unrelated)
    assert not_a_folder.is_file()


def test_extracted_model_of_a_killed_server_is_removed_on_the_next_start(model_dir, tmp_path):
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(model_dir / "model.joblib", arcname="model.joblib")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO_ROOT)}

    def start() -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"server-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "container.sidecar", "--model-dir", str(tarball),
                                        "--port", "0", "--workers", "1"], stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while "Booting worker" not in log.read_text():  # gunicorn handles SIGTERM from here on
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return process, log

    first, _ = start()
    (extracted,) = temp.glob(f"{EXTRACTED_DIR_PREFIX}{first.pid}-*")
    assert (extracted / "model.joblib").is_file()
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup runs
    first.wait(30)
    assert extracted.is_dir()
    second, log = start()
    try:
        assert not extracted.exists()
        assert len(list(temp.glob(f"{EXTRACTED_DIR_PREFIX}{second.pid}-*"))) == 1  # its own, live
        assert "removed 1 temporary folder(s) left by stopped processes" in log.read_text()
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    assert not list(temp.glob(f"{EXTRACTED_DIR_PREFIX}{second.pid}-*"))  # a graceful stop cleans up itself
