"""``lucent schedule``: schedule names to crontab, and the crontab entry's own command line, run as cron would."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from container.demo import DEMO_CONFIG, write_demo_job
from container.job import SUCCESS_MESSAGE
from container.schedule import ScheduleError, crontab_expression, window_of

CONFIG = {**DEMO_CONFIG, "methods": {k: v for k, v in DEMO_CONFIG["methods"].items() if k != "report"}}


@pytest.mark.parametrize(("schedule", "expected"), [
    ("hourly", "0 * * * *"),
    ("daily", "0 0 * * *"),
    ("daily(17)", "0 17 * * *"),
    ("daily_every_x_hours(6)", "0 0-23/6 * * *"),
    ("daily_every_x_hours(12, 5)", "0 5-23/12 * * *"),
    # What the SDK's CronExpressionGenerator returns, as given to SageMaker.
    ("cron(0 * ? * * *)", "0 * * * *"),
    ("cron(0 17/12 ? * * *)", "0 17-23/12 * * *"),
    ("cron(30 2 ? * MON-FRI *)", "30 2 * * MON-FRI"),
    ("15 3 * * 1", "15 3 * * 1"),
])
def test_schedule_to_crontab(schedule, expected):
    assert crontab_expression(schedule) == expected


@pytest.mark.parametrize("schedule", ["weekly", "daily(25)", "daily_every_x_hours(0)", "cron(0 1 ? * 2 *)",
                                      "cron(0 1 ? * * 2030)", "61 * * * *", "* * *"])
def test_bad_schedules_are_refused(schedule):
    with pytest.raises(ScheduleError):
        crontab_expression(schedule)


def test_window_is_the_latest_tick():
    at = datetime(2024, 5, 1, 13, 59, 30, tzinfo=UTC)
    assert window_of("0 0-23/6 * * *", at) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert window_of("0 * * * *", datetime(2024, 5, 1, 13, 0, 0, tzinfo=UTC)) == datetime(2024, 5, 1, 13, tzinfo=UTC)


@pytest.fixture
def scheduled(tmp_path, monkeypatch) -> dict:
    """A job description on local folders, and the crontab entry ``--print`` gives for it."""
    root = write_demo_job(tmp_path / "job", n_rows=200, seed=2, config=CONFIG)
    description = {"name": "credit-bias", "schedule": "daily_every_x_hours(6)",
                   "config": str(root / "input" / "config"), "data": str(root / "input" / "data"),
                   "output": str(tmp_path / "results")}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(description))
    env = {**os.environ, "LUCENT_STATE_DIR": str(tmp_path / "state"), "LUCENT_SCHEDULE_NOW": "2024-05-01T13:05:00+00:00"}
    printed = subprocess.run([sys.executable, "-m", "container.schedule", str(job_file), "--print"], env=env,
                             capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]).stdout
    entry = printed.strip()
    assert entry.startswith("0 0-23/6 * * * ") and entry.endswith("# lucent-schedule:credit-bias")
    return {"command": entry.split(" ", 5)[5], "env": env, "window": tmp_path / "results" / "credit-bias" /
            "20240501T120000Z", "state": tmp_path / "state" / "credit-bias"}


def cron_runs(scheduled: dict, extra: str = "") -> subprocess.CompletedProcess:
    """The entry's command line exactly, through a shell as cron runs it."""
    command = scheduled["command"].replace(" --run ", f" --run {extra} ") if extra else scheduled["command"]
    return subprocess.run(command, shell=True, env=scheduled["env"], capture_output=True, text=True, timeout=120)


def cron_log(scheduled: dict) -> str:
    return (scheduled["state"] / "cron.log").read_text()


def test_the_crontab_command_runs_the_window_once(scheduled):
    assert cron_runs(scheduled).returncode == 0, cron_log(scheduled)
    window = scheduled["window"]
    assert (window / "message").read_text().strip() == SUCCESS_MESSAGE
    assert "pre_training_bias_metrics" in json.loads((window / "analysis.json").read_text())
    first = (window / "analysis.json").stat().st_mtime_ns

    assert cron_runs(scheduled).returncode == 0  # same window again: a no-op
    assert "already completed" in cron_log(scheduled)
    assert (window / "analysis.json").stat().st_mtime_ns == first

    assert cron_runs(scheduled, "--force").returncode == 0
    assert (window / "analysis.json").stat().st_mtime_ns != first


def test_a_window_already_running_is_not_started_again(scheduled):
    scheduled["state"].mkdir(parents=True)
    with open(scheduled["state"] / "20240501T120000Z.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run of the window holds the lock
        assert cron_runs(scheduled).returncode == 0
    assert "already running" in cron_log(scheduled)
    assert not scheduled["window"].exists()


def test_a_failed_window_is_not_marked_done(scheduled, tmp_path):
    (tmp_path / "job" / "input" / "config" / "analysis_config.json").write_text('{"dataset_type": "text/csv"}')
    assert cron_runs(scheduled).returncode == 1
    assert (scheduled["window"] / "message").read_text().startswith("ClientError: ")
    assert not list(scheduled["state"].glob("*.done"))


def test_bad_job_description(tmp_path, capsys):
    from container.schedule import main

    (tmp_path / "job.yaml").write_text("name: x\nschedule: weekly\nconfig: c\noutput: o\n")
    assert main([str(tmp_path / "job.yaml"), "--print"]) == 1
    assert "weekly" in capsys.readouterr().err


@pytest.fixture
def user_crontab():
    """The real crontab of this user, restored afterwards (the test installs into it for real)."""
    if shutil.which("crontab") is None:
        pytest.skip("no crontab command (Debian package cron; `make test` installs it)")
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    subprocess.run(["crontab", "-"], input="# kept by lucent tests\n", text=True, check=True)
    yield
    if before.returncode == 0:
        subprocess.run(["crontab", "-"], input=before.stdout, text=True, check=True)
    else:
        subprocess.run(["crontab", "-r"], capture_output=True)


def test_install_adds_the_entry_once_and_keeps_other_lines(user_crontab, tmp_path):
    description = {"name": "nightly-bias", "schedule": "daily(2)", "config": str(tmp_path / "c"),
                   "data": str(tmp_path / "d"), "output": str(tmp_path / "results")}
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(description))
    for _ in range(2):  # installing again replaces the entry instead of adding a second one
        subprocess.run([sys.executable, "-m", "container.schedule", str(job_file), "--install"], check=True,
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    lines = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "# kept by lucent tests" in lines
    entries = [line for line in lines if line.endswith("# lucent-schedule:nightly-bias")]
    assert len(entries) == 1 and entries[0].startswith("0 2 * * * ")
