"""The model server's error answers, for real (a server process on 127.0.0.1, urllib and raw sockets):
secrets in a model's exception text are redacted from the body, Accept is negotiated with q-values and
wildcards, gunicorn's own refusals and a request past ``--timeout`` are answered text/plain (504 for the
timeout), 405 carries Allow, an HTTP/1.0 POST without Content-Length is 411, and bad settings are one
``error:`` line."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.sidecar import ModelServer, start_model_server
from container.sidecar.app import accept_ranges, negotiate_accept
from container.sidecar.cli import main as serve_model_main

HEALTHY_TIMEOUT_S = 60
JAVA_ACCEPT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"  # HttpURLConnection's default
ROWS = np.array([[0.5, -1.0, 2.0], [-2.0, 0.3, 0.1]])
# What a careless model puts in its exception text (analyzer.redact hides each of these values).
SECRETS = ("hunter2", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "abc123secret", "AKIAIOSFODNN7EXAMPLE")
SECRET_SCRIPT = '''
def predict_fn(data, model):
    raise ValueError("cannot connect to postgres://admin:hunter2@db.internal/x "
                     "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY token=abc123secret "
                     "key id AKIAIOSFODNN7EXAMPLE")
'''
# First value of the first record: seconds to sleep; negative: sleep with SIGABRT blocked (as a model stuck
# in native code that never returns to Python), so only the arbiter's SIGKILL ends it.
SLOW_SCRIPT = '''
import signal, time
import numpy as np

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    seconds = float(data[0][0])
    if seconds < 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGABRT})
    time.sleep(abs(seconds))
    return np.asarray(data)[:, :1]
'''


def post(server: ModelServer, body: bytes, content_type: str = "text/csv", accept: str | None = None,
         timeout: float = 30) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one POST /invocations."""
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept is not None else {})}
    request = urllib.request.Request(f"{server.url}/invocations", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def raw(server: ModelServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of the one response to ``data`` sent on a new connection."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def script_folder(folder: Path, script: str) -> Path:
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(script)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, LogisticRegression]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    fitted = LogisticRegression().fit(x, x[:, 0] > 0)
    folder = tmp_path_factory.mktemp("model")
    joblib.dump(fitted, folder / "model.joblib")
    return folder, fitted


@pytest.fixture(scope="module")
def server(model):
    with start_model_server(model[0], workers=1) as started:
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        yield started


# -- 1. secrets ------------------------------------------------------------------------------------------


def test_secrets_in_a_models_exception_are_redacted_from_the_500_body(tmp_path, model):
    folder = script_folder(tmp_path / "secret", SECRET_SCRIPT)
    joblib.dump(model[1], folder / "model.joblib")
    with start_model_server(folder, workers=1) as started:
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        status, content_type, body = post(started, b"0.1,0.2,0.3")
        log = started.log_tail(200)
    text = body.decode()
    assert status == 500 and content_type.startswith("text/plain")
    assert "predict_fn failed: ValueError: cannot connect to postgres://***@db.internal/x" in text
    for secret in SECRETS:
        assert secret not in text, secret
        assert secret not in log, secret
    assert "predict_fn failed" in log  # the failure is still logged


# -- 3. Accept -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    ("*/*;q=0.1", "application/json"),
    ("text/*", "text/csv"),
    ("application/*", "application/json"),  # the default (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) when it matches
    (JAVA_ACCEPT, "application/json"),
    ("application/json;q=0, text/csv", "text/csv"),  # q=0: not acceptable
    ("application/jsonlines;q=0.5, text/csv;q=0.9", "text/csv"),  # higher q first
    ("TEXT/CSV", "text/csv"),
    ("text/html;q=0.9, application/x-npy;q=0.2", "application/x-npy"),
])
def test_accept_ranges_with_wildcards_and_q_values_pick_the_preferred_supported_type(server, model, accept,
                                                                                     expected):
    status, content_type, body = post(server, b"0.5,-1,2\n-2,0.3,0.1", accept=accept)
    assert status == 200, body
    assert content_type == expected
    expected_scores = model[1].predict_proba(ROWS)
    if expected == "application/json":
        scores = np.array(json.loads(body))
    elif expected == "text/csv":
        scores = np.array([[float(v) for v in line.split(",")] for line in body.decode().split()])
    else:
        import io

        scores = np.load(io.BytesIO(body))
    np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("accept", ["application/json;q=0", "text/html", "image/*", "*/*;q=0"])
def test_accept_without_a_supported_type_is_406(server, accept):
    status, content_type, body = post(server, b"0.5,-1,2", accept=accept)
    assert status == 406 and content_type.startswith("text/plain")
    assert body.decode().startswith(f"unsupported Accept {accept!r}")


def test_a_406_quotes_only_a_short_escaped_excerpt_of_the_accept_header(server):
    accept = "text/html;\tx=<script>," + "image/png," * 500  # (gunicorn refuses control characters but HTAB)
    status, _, body = post(server, b"0.5,-1,2", accept=accept)
    text = body.decode()
    assert status == 406
    assert len(text) < 300 and "\t" not in text and "image/png,image/png,image/png,image/png,image/png" not in text
    assert "'text/html;\\tx=<script>,image/png," in text


def test_content_type_is_matched_case_insensitively(server, model):
    status, _, body = post(server, b"0.5,-1,2", content_type="TEXT/CSV; Charset=UTF-8", accept="text/csv")
    assert status == 200
    assert float(body.split(b",")[1]) == model[1].predict_proba(ROWS[:1])[0, 1]


def test_accept_ranges_and_negotiation_rules(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    assert accept_ranges(JAVA_ACCEPT) == [("text/html", 1.0), ("image/gif", 1.0), ("image/jpeg", 1.0),
                                          ("*/*", 0.2), ("*/*", 0.2)]
    assert accept_ranges("a/b;q=0, c/d;q=x, e/f;Q=0.5") == [("c/d", 1.0), ("e/f", 0.5)]
    assert negotiate_accept("") == "application/json"
    assert negotiate_accept("text/*;q=0.5, application/jsonlines;q=0.6") == "application/jsonlines"
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv")
    assert negotiate_accept("*/*;q=0.1") == "text/csv"
    assert negotiate_accept("application/*") == "application/jsonlines"  # first supported application/ type
    # A model with its own output_fn gets the header itself, unless a wildcard comes first.
    assert negotiate_accept("image/png, */*;q=0.1", own_output=True) == "image/png, */*;q=0.1"
    assert negotiate_accept("*/*;q=0.9", own_output=True) == "text/csv"


# -- 4. gunicorn's refusals and the timeout --------------------------------------------------------------


def test_gunicorn_refusals_are_plain_text_with_their_reason(server):
    many = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n"
    status, headers, body = raw(server, many)
    assert status == 431 and headers["content-type"].startswith("text/plain")
    assert b"<html" not in body and body.startswith(b"request header fields too large")
    bare_cr = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nAccept: text/csv\rX-Evil: 1\r\n"
               b"Content-Length: 8\r\n\r\n0.5,-1,2")
    status, headers, body = raw(server, bare_cr)
    assert status == 400 and headers["content-type"].startswith("text/plain")
    assert b"<html" not in body and body.startswith(b"bad request: ")
    assert post(server, b"0.5,-1,2", accept="text/csv")[0] == 200  # still serving


def test_a_request_past_the_timeout_is_504_and_a_stuck_worker_is_logged_as_timed_out(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "2")
    folder = script_folder(tmp_path / "slow", SLOW_SCRIPT)
    with start_model_server(folder, workers=1) as started:
        started.wait_healthy(HEALTHY_TIMEOUT_S)
        assert post(started, b"0,1\n2,3", accept="text/csv")[:3:2] == (200, b"0\n2\n")
        status, content_type, body = post(started, b"60,1", accept="text/csv")
        assert status == 504 and content_type.startswith("text/plain")
        assert body.decode() == "the model did not answer within --timeout 2 s; its worker was restarted\n"
        assert post(started, b"0,1", accept="text/csv")[0] == 200  # a new worker serves
        # Stuck with SIGABRT blocked: the arbiter kills it; the client sees the connection end, no answer.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            post(started, b"-60,1", accept="text/csv")
        assert post(started, b"0,1", accept="text/csv")[0] == 200  # served by the worker started after the reap
        log = started.log_tail(400)
    assert "WORKER TIMEOUT" in log and "a request ran longer than --timeout 2 s" in log
    assert "did not stop on SIGABRT" in log
    assert "Perhaps out of memory?" not in log


# -- 6. Allow and 411 ------------------------------------------------------------------------------------


def test_405_answers_carry_allow(server):
    status, headers, _ = raw(server, b"GET /invocations HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = raw(server, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_an_http_1_0_post_without_content_length_is_411(server):
    status, headers, body = raw(server, b"POST /invocations HTTP/1.0\r\nContent-Type: text/csv\r\n\r\n0.5,-1,2")
    assert status == 411 and body == b"an HTTP/1.0 POST needs a Content-Length header\n"
    status, _, _ = raw(server, b"POST /invocations HTTP/1.0\r\nContent-Type: text/csv\r\nContent-Length: 8\r\n\r\n"
                               b"0.5,-1,2")
    assert status == 200


# -- 5. bad settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variables", "options", "expected"), [
    ({"SAGEMAKER_BIND_TO_PORT": "abc"}, [], "error: SAGEMAKER_BIND_TO_PORT='abc': must be a positive number"),
    ({"SAGEMAKER_BIND_TO_PORT": "70000"}, [], "error: SAGEMAKER_BIND_TO_PORT=70000: must be a port number"),
    ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "x"}, [],
     "error: SAGEMAKER_MODEL_SERVER_TIMEOUT='x': must be a positive number of seconds"),
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "two"}, [], "error: SAGEMAKER_MODEL_SERVER_WORKERS='two'"),
    ({}, ["--port", "70000"], "error: --port must be from 0 to 65535"),
    ({}, ["--timeout", "0"], "error: --timeout must be at least 1 second"),
])
def test_bad_settings_are_one_error_line_and_exit_1(tmp_path, monkeypatch, capsys, variables, options, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert serve_model_main(["--model-dir", str(tmp_path), *options]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "Traceback" not in err


def test_log_level_warning_leaves_out_the_info_lines_of_lucent_and_gunicorn(model, tmp_path, monkeypatch):
    """``LUCENT_LOG_LEVEL=warning`` (or ``serve-model --log-level warning``): the server runs and answers,
    and its log holds no INFO line (neither Lucent's start line nor gunicorn's 'Booting worker'), which
    the default level shows. A server a job starts inherits the variable."""
    logs = {}
    for level in ("info", "warning"):
        monkeypatch.setenv("LUCENT_LOG_LEVEL", level)
        log = tmp_path / f"{level}.log"
        with start_model_server(model[0], workers=1, log_file=log) as started:
            started.wait_healthy(HEALTHY_TIMEOUT_S)
            assert post(started, b"1,2,3")[0] == 200
        logs[level] = log.read_text()
    assert "Lucent model server for" in logs["info"] and "Booting worker" in logs["info"], logs["info"]
    assert "[INFO]" not in logs["warning"], logs["warning"]


def test_a_bad_log_level_variable_is_refused_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LUCENT_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit, match="LUCENT_LOG_LEVEL='loud'"):
        serve_model_main(["--model-dir", str(tmp_path), "--port", "0"])
