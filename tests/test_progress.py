"""Progress of long steps: a bar on a terminal (a real pseudo-terminal), log lines in a pipe."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from io import StringIO
from pathlib import Path

import pytest

from analyzer.progress import Progress, bars_drawn

ROOT = Path(__file__).parent.parent

SCRIPT = """
import logging
from analyzer.logs import configure_logging
from analyzer.progress import progress
configure_logging(logging.INFO)
log = logging.getLogger("analyzer.step")
with progress("SHAP", total=3, unit="records") as bar:
    bar.update(1)
    log.info("a line while the bar is drawn")
    bar.update(2)
log.info("after the bar")
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_every_interval_with_rate_and_eta(caplog) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="analyzer.progress")
    with Progress("SHAP", total=2000, unit="records", stream=StringIO(), interval=5, clock=clock) as bar:
        clock.now = 101
        bar.update(100)  # 1 s in: too early for a line
        clock.now = 105
        bar.update(900)  # 5 s in: 1,000 done at 200/s, 1,000 left
        clock.now = 109.9
        bar.update(500)  # 4.9 s after the last line: none
        clock.now = 110
        bar.update(100)  # 1,600 in 10 s: 160/s, 400 left
    assert [r.getMessage() for r in caplog.records] == [
        "SHAP: 1,000 of 2,000 records (50%), 200 records/s, ETA 5 s",
        "SHAP: 1,600 of 2,000 records (80%), 160 records/s, ETA 2 s",
    ]
    assert not bars_drawn()


def test_unknown_total_and_long_durations() -> None:
    clock = Clock()
    bar = Progress("Loading", total=None, stream=StringIO(), interval=5, clock=clock)
    clock.now = 102
    bar.update(5)
    assert bar.line() == "Loading: 5 rows, 2.5 rows/s"
    slow = Progress("PDP", total=10_000, unit="rows", stream=StringIO(), clock=clock)
    clock.now = 112
    slow.update(1)
    assert slow.line() == "PDP: 1 of 10,000 rows (0%), 0.1 rows/s, ETA 27 h 46 min"
    nothing = Progress("PDP", total=10, stream=StringIO(), clock=clock)
    assert nothing.line().endswith("ETA unknown")


def test_a_bad_interval_setting_names_the_variable(monkeypatch) -> None:
    from analyzer.errors import UserError

    monkeypatch.setenv("LUCENT_PROGRESS_SECONDS", "soon")
    with pytest.raises(UserError, match="LUCENT_PROGRESS_SECONDS='soon': must be a positive number of seconds"):
        Progress("SHAP", total=1, stream=StringIO())


def _run_on_terminal() -> str:
    """Run SCRIPT with its stderr on a pseudo-terminal; return everything written to it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, as a window has
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=follower, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=30) == 0
    return b"".join(chunks).decode()


def test_a_terminal_gets_a_bar_with_rate_and_eta_and_log_lines_above_it() -> None:
    output = _run_on_terminal()
    assert "\r" in output  # a bar redrawn in place
    screens = [line.split("\r") for line in output.replace("\r\n", "\n").split("\n")]
    final = [segments[-1].strip() or segments[-2].strip() for segments in screens if any(s.strip() for s in segments)]
    # The bar's last state: 3 of 3, the elapsed time and time left, and the rate in records per second.
    bar = next(line for line in final if line.startswith("SHAP"))
    assert re.fullmatch(r"SHAP: 100%\|█+\| 3/3 \[00:00<00:00, *[\d.]+ records/s\]", bar), bar
    # The log line written while the bar was drawn has a line of its own, whole.
    assert any(re.fullmatch(r"\S+ \S+ INFO analyzer\.step: a line while the bar is drawn", s.strip())
               for segments in screens for s in segments), output
    assert final[-1].endswith("INFO analyzer.step: after the bar")


def test_a_pipe_gets_log_lines_and_no_bar(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "LUCENT_PROGRESS_SECONDS": "1e-9"})
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "█" not in result.stderr
    lines = [line.split(": ", 1)[1] if "progress" in line else line.split(" ", 3)[3]
             for line in result.stderr.splitlines()]
    assert [re.sub(r"[\d,.]+ records/s", "N records/s", line) for line in lines] == [
        "SHAP: 1 of 3 records (33%), N records/s, ETA 0 s",
        "analyzer.step: a line while the bar is drawn",
        "SHAP: 3 of 3 records (100%), N records/s, ETA 0 s",
        "analyzer.step: after the bar",
    ]
