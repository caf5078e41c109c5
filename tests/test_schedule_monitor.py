"""`lucent schedule` with monitoring schedules, as real processes: the offsets a schedule passes on, run
end to end; the window's lock held by `lucent monitor` while it runs; SIGTERM passed on to it; windows that
are not over yet; the CloudWatch folder passed through.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from container.monitor.demo import make_churn_data
from tests.test_monitor_run import Setup

REPO = Path(__file__).parents[1]

# A `lucent monitor` stand-in: records its arguments, tells the test it started (its pid, over a Unix
# socket), and waits until the test releases it (or SIGTERM, which it records). Without SLOW_SOCKET it ends.
SLOW_MONITOR = """\
import json, os, signal, socket, sys
folder = os.environ["SLOW_DIR"]
def stopped(signum, frame):
    with open(os.path.join(folder, "terminated"), "w") as out:
        out.write(str(os.getpid()))
    sys.exit(2)
signal.signal(signal.SIGTERM, stopped)
with open(os.path.join(folder, "argv.jsonl"), "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("SLOW_SOCKET"):
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(os.environ["SLOW_SOCKET"])
    peer.sendall(f"{os.getpid()}\\n".encode())
    peer.recv(1)  # until the test releases it
"""


def schedule_body(name: str = "churn-bias", **config) -> dict:
    return {"MonitoringScheduleName": name, "MonitoringScheduleConfig": {
        "MonitoringJobDefinitionName": "churn-bias-job-definition", "MonitoringType": "ModelBias",
        "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)", **config}}}


def test_a_schedule_with_data_analysis_offsets_runs_end_to_end(tmp_path: Path) -> None:
    """-PT3H / -PT1H at the 07:00 tick: the window [04:00, 06:00), which holds the captured hour 05:00."""
    setup = Setup(tmp_path, make_churn_data(300, seed=2))
    schedule_file = tmp_path / "schedule.json"
    schedule_file.write_text(json.dumps(schedule_body(DataAnalysisStartTime="-PT3H", DataAnalysisEndTime="-PT1H")))
    env = {k: v for k, v in os.environ.items() if k != "LUCENT_MONITOR_COMMAND"}
    env["LUCENT_STATE_DIR"] = str(tmp_path / "state")
    run = subprocess.run([sys.executable, "-m", "container.schedule", "--monitoring-schedule", str(schedule_file),
                          "--job-definition", str(setup.definition), "--capture-uri", str(setup.capture), "--run",
                          "--now", "2024-05-01T07:05Z"], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    folder = tmp_path / "monitoring" / "churn-endpoint" / "churn-bias" / "2024/05/01/07"
    status = json.loads((folder / "monitoring_execution.json").read_text())
    assert status["ExecutionStatus"] == "Completed", status
    assert status["Window"] == "[2024-05-01T04:00:00Z, 2024-05-01T06:00:00Z)"
    assert status["Records"]["captured_records"] == 300 and status["Records"]["records_without_ground_truth"] == 0
    assert (tmp_path / "state" / ".monitoring" / "churn-bias" / "20240501T070000Z.done").exists()


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[dict]:
    """Files for the bias schedule, the stand-in monitor, and a listening Unix socket it reports to."""
    from tests.test_monitor_definition import BIAS_DEFINITION, BIAS_SCHEDULE

    (tmp_path / "definition.json").write_text(json.dumps(BIAS_DEFINITION))
    (tmp_path / "schedule.json").write_text(json.dumps(BIAS_SCHEDULE))
    (tmp_path / "slow.py").write_text(SLOW_MONITOR)
    short = Path(tempfile.mkdtemp(prefix="lq", dir="/tmp"))  # a socket path has at most 107 bytes
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(short / "s"))
    listener.listen(4)
    listener.settimeout(60)
    env = {**os.environ, "LUCENT_STATE_DIR": str(tmp_path / "state"), "SLOW_DIR": str(tmp_path),
           "SLOW_SOCKET": str(short / "s"), "LUCENT_MONITOR_COMMAND": f"{sys.executable} {tmp_path / 'slow.py'}"}
    env.pop("LUCENT_SCHEDULE_NOW", None)
    command = [sys.executable, "-m", "container.schedule", "--monitoring-schedule", str(tmp_path / "schedule.json"),
               "--job-definition", str(tmp_path / "definition.json"), "--capture-uri", str(tmp_path / "capture"),
               "--run", "--now", "2024-05-01T13:05Z"]
    try:
        yield {"env": env, "command": command, "listener": listener, "dir": tmp_path,
               "state": tmp_path / "state" / ".monitoring" / "churn-bias"}
    finally:
        listener.close()
        shutil.rmtree(short, ignore_errors=True)


def started(slow: dict) -> tuple[socket.socket, int]:
    """Wait for the stand-in monitor to report; its connection (close it to release it) and pid."""
    connection, _ = slow["listener"].accept()
    connection.settimeout(60)
    pid = int(connection.makefile().readline())
    return connection, pid


def runs(slow: dict) -> int:
    path = slow["dir"] / "argv.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_is_passed_on_to_lucent_monitor_and_waited_for(slow) -> None:
    process = subprocess.Popen(slow["command"], env=slow["env"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    connection, pid = started(slow)
    with connection:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output  # an internal error: the window did not finish
    assert (slow["dir"] / "terminated").read_text() == str(pid)  # the monitor got SIGTERM ...
    with pytest.raises(ProcessLookupError):  # ... and ended before `lucent schedule` did (it was reaped)
        os.kill(pid, 0)
    assert "stopped by SIGTERM" in output
    assert (slow["state"] / "20240501T130000Z.failed").exists()  # may be rerun
    assert not (slow["state"] / "20240501T130000Z.done").exists()


def test_the_window_stays_locked_while_lucent_monitor_runs_after_schedule_was_killed(slow) -> None:
    first = subprocess.Popen(slow["command"], env=slow["env"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    connection, _ = started(slow)
    first.kill()  # SIGKILL: nothing of `lucent schedule` runs any more; its monitor does
    first.wait(timeout=60)
    with connection:
        second = subprocess.run([*slow["command"], "--force"], env=slow["env"], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 0 and "already running; nothing done" in second.stdout, second.stdout
        assert runs(slow) == 1
    # Released: the lock goes with the monitor's end (wait for it by taking the lock ourselves).
    with open(slow["state"] / "20240501T130000Z.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert not (slow["dir"] / "terminated").exists()  # it ended on its own , not stopped
    third = subprocess.run([*slow["command"], "--force"], env={**slow["env"], "SLOW_SOCKET": ""}, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 0 and runs(slow) == 2, third.stdout + third.stderr


def test_a_window_not_over_yet_is_not_started_and_leaves_no_marker(slow) -> None:
    tick = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    env = {**slow["env"], "SLOW_SOCKET": ""}

    def at(when: datetime, action: str = "--run") -> subprocess.CompletedProcess:
        command = [*slow["command"][:-3], action, "--now", when.strftime("%Y-%m-%dT%H:%M:%SZ")]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)

    assert at(tick - timedelta(hours=3) + timedelta(minutes=5)).returncode == 0
    assert runs(slow) == 1
    ahead = at(tick + timedelta(hours=2, minutes=5))  # the window [tick + 1 h, tick + 2 h) is not over
    assert ahead.returncode == 1 and "not started" in ahead.stdout and "is not over yet" in ahead.stdout, ahead.stdout
    first = f"{tick - timedelta(hours=3):%Y%m%dT%H%M%SZ}.done"
    assert runs(slow) == 1 and [p.name for p in slow["state"].glob("*.done")] == [first]
    assert not list(slow["state"].glob("*.failed"))
    # The catch-up after it still takes the windows after the last one attempted.
    caught = at(tick - timedelta(minutes=30), "--catch-up")
    assert caught.returncode == 0 and "catching up 2 window(s)" in caught.stdout, caught.stdout
    assert runs(slow) == 3


def test_the_cloudwatch_folder_is_passed_to_lucent_monitor(slow, capsys) -> None:
    from container.cli import build_parser

    folder = slow["dir"] / "cw"
    env = {**slow["env"], "SLOW_SOCKET": ""}
    run = subprocess.run([*slow["command"], "--cloudwatch-dir", str(folder)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    [argv] = [json.loads(line) for line in (slow["dir"] / "argv.jsonl").read_text().splitlines()]
    assert build_parser().parse_args(["monitor", *argv]).cloudwatch_dir == folder
    printed = subprocess.run([*slow["command"][:-3], "--print", "--cloudwatch-dir", str(folder)], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and f" --cloudwatch-dir {folder} " in printed.stdout
