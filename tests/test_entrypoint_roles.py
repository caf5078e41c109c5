"""The image's entrypoint (container/entrypoint.py): ``serve`` (how SageMaker hosting starts a model
container) is the model server, ``lucent`` subcommands pass through, anything else is ``lucent run``."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.cli import build_parser
from container.entrypoint import LUCENT_COMMANDS, lucent_arguments
from container.entrypoint import main as entrypoint_main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_pass_through_list_is_every_lucent_subcommand():
    subcommands = next(action for action in build_parser()._actions if action.dest == "command").choices
    assert set(LUCENT_COMMANDS) == set(subcommands)


@pytest.mark.parametrize(("args", "expected"), [
    ([], ["run"]),  # the processing job, as before
    (["--processing-root", "/x"], ["run", "--processing-root", "/x"]),
    (["serve"], ["serve-model"]),
    (["serve", "--workers", "2"], ["serve-model", "--workers", "2"]),
    (["serve-model", "--port", "9000"], ["serve-model", "--port", "9000"]),
    (["endpoint", "--help"], ["endpoint", "--help"]),
    (["validate"], ["validate"]),
    (["monitor", "--help"], ["monitor", "--help"]),
])
def test_arguments_map_to_a_lucent_command_line(args, expected):
    assert lucent_arguments(args) == expected


def test_subcommands_reach_their_own_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        entrypoint_main(["serve-model", "--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("usage: lucent serve-model")
    with pytest.raises(SystemExit) as stopped:
        entrypoint_main(["--help"])  # no subcommand: `lucent run`'s arguments
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("usage: lucent run")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_starts_the_model_server_on_sagemaker_bind_to_port(tmp_path):
    """``IMAGE serve`` as SageMaker runs it: the server on $SAGEMAKER_BIND_TO_PORT answers /ping and
    /invocations with the model's own predictions, and stops cleanly on SIGTERM."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    joblib.dump(model, tmp_path / "model.joblib")
    port = _free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "LUCENT_HOST": "127.0.0.1",
           "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "PYTHONPATH": str(REPO_ROOT)}
    code = "import sys; from container.entrypoint import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "serve", "--model-dir", str(tmp_path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        log = _read_until(process, b"model loaded from", timeout=60)
        assert f"127.0.0.1:{port}".encode() in log
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as response:
            assert response.status == 200
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b"0.5,-1,2",
                                         headers={"Content-Type": "text/csv", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == model.predict_proba([[0.5, -1, 2]]).tolist()
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()


def _read_until(process: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """The process's stderr up to the line holding ``marker`` (AssertionError with what came, if it exits
    or ``timeout`` passes first)."""
    received = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while marker not in received:
            left = deadline - time.monotonic()
            assert left > 0, received.decode(errors="replace")
            if selector.select(left):
                chunk = os.read(process.stderr.fileno(), 65536)
                assert chunk, received.decode(errors="replace")  # exited
                received += chunk
    return received
