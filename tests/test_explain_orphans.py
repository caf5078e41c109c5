"""No orphans: SHAP worker processes (and anything using ``analyzer.parent.exit_with_parent``) exit when
the process that started them dies, even by SIGKILL, which runs no cleanup in it.

Only processes these tests start are looked at: the descendants of the process each test launched,
found in /proc while it is alive, and identified by pid and start time afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from analyzer.explain import shards
from tests import test_explain_job as tabular
from tests.conftest import JobRoot, http_server

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 20.0  # seconds for a watcher (0.5 s polling) to notice; far above the expected ~1 s


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """``{pid: start time}`` of every live descendant of ``root``."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] != "Z":
                parents.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found, todo = {}, [root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            found[pid] = started
            todo.append(pid)
    return found


def alive(pid: int, started: int) -> bool:
    """Still running: same pid and start time, and not a zombie waiting for its new parent to reap it."""
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[1] != "Z"


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_leftovers(processes: dict[int, int]) -> None:
    for pid, started in processes.items():
        if alive(pid, started):
            os.kill(pid, signal.SIGKILL)


# -- the watcher itself -------------------------------------------------------------------------------

CHILD = """
import os, signal, sys, threading
from analyzer.parent import exit_with_parent

mode = sys.argv[1]
if mode == "terminate":  # the model server's way: stop through its own SIGTERM
    exit_with_parent(int(sys.argv[2]), lambda: os.kill(os.getpid(), signal.SIGTERM))
elif mode == "death-signal":
    exit_with_parent(int(sys.argv[2]), death_signal=signal.SIGKILL, interval=3600)  # the signal alone must do it
else:
    exit_with_parent(int(sys.argv[2]))
print("ready", os.getpid(), flush=True)
sys.stdin.read()  # blocked on a pipe whose writer stays open, as a pool worker is
"""

PARENT = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())],
                         stdin=subprocess.PIPE)
child.wait()
"""


@pytest.mark.parametrize("mode", ["exit", "terminate", "death-signal"])
def test_a_child_exits_when_its_parent_is_killed(mode):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, textwrap.dedent(CHILD), mode], stdout=subprocess.PIPE,
                              text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    children: dict[int, int] = {}
    try:
        line = parent.stdout.readline()
        assert line.startswith("ready"), line
        children = descendants(parent.pid)
        assert int(line.split()[1]) in children
        parent.kill()
        parent.wait()
        wait_until(lambda: not any(alive(pid, started) for pid, started in children.items()), DEADLINE,
                   f"the child of a killed parent to exit ({mode})")
    finally:
        kill_leftovers(children)
        parent.kill()
        parent.wait()
        parent.stdout.close()


# -- a real job killed with SIGKILL -------------------------------------------------------------------

class _StuckModel(tabular._Model):
    """Answers the job's first request (the baseline rows), then keeps every later request waiting."""

    def do_POST(self):  # noqa: N802 - http.server API
        with self.server.lock:
            self.server.calls += 1
            first = self.server.calls == 1
        if first:
            super().do_POST()
            return
        self.server.release.wait(60)
        self.send_response(503)
        self.end_headers()


@pytest.mark.slow
def test_shap_workers_exit_when_the_job_is_killed(tmp_path):
    job = JobRoot(tmp_path / "job")
    with http_server(_StuckModel, request_rows=[], calls=0, lock=threading.Lock(),
                     release=threading.Event()) as server:
        tabular.shap_job(job, server, tabular.make_data(n=20), num_samples=14)
        # 3 workers: the job process and two spawned ones
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), shards.WORKERS_ENV: "3", shards.SHARD_ROWS_ENV: "70"}
        process = subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root)],
                                   cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers: dict[int, int] = {}
        try:
            def spawned_workers() -> dict[int, int]:
                found = {pid: started for pid, started in descendants(process.pid).items()
                         if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
                return found if len(found) == 2 and server.calls >= 3 else {}

            workers = wait_until(spawned_workers, 120, "two SHAP workers waiting on the model")
            process.send_signal(signal.SIGKILL)
            process.wait()
            wait_until(lambda: not any(alive(pid, started) for pid, started in workers.items()), DEADLINE,
                       "the SHAP workers of a killed job to exit")
        finally:
            kill_leftovers(workers)
            process.kill()
            process.wait()
            server.release.set()
