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


def test_catch_up_of_a_job_description(scheduled, tmp_path):
    """The windows of a launch job are caught up too; a failed one counts as attempted."""
    (tmp_path / "job" / "input" / "config" / "analysis_config.json").write_text('{"dataset_type": "text/csv"}')
    assert cron_runs(scheduled).returncode == 1  # the 12:00 window fails
    catch_up = scheduled["command"].replace(" --run ", " --catch-up --now 2024-05-01T18:30Z ")
    env = {**scheduled["env"], "LUCENT_SCHEDULE_NOW": ""}
    assert subprocess.run(catch_up, shell=True, env=env, timeout=120).returncode == 1
    assert sorted(path.name for path in scheduled["state"].glob("*.failed")) == [
        "20240501T120000Z.failed", "20240501T180000Z.failed"]  # 18:00 missed; 12:00 not retried
    assert "catching up 1 window(s): 20240501T180000Z" in cron_log(scheduled)


def test_bad_job_description(tmp_path, capsys):
    from container.schedule import main

    (tmp_path / "job.yaml").write_text("name: x\nschedule: weekly\nconfig: c\noutput: o\n")
    assert main([str(tmp_path / "job.yaml"), "--print"]) == 1
    assert "weekly" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "_x", "café", "a/b", "a b"])
def test_a_job_name_must_start_with_a_letter_or_digit(tmp_path, capsys, name):
    from container.schedule import main

    (tmp_path / "job.json").write_text(json.dumps({"name": name, "schedule": "hourly", "config": "c", "output": "o"}))
    assert main([str(tmp_path / "job.json"), "--print"]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'job.json'}: name {name!r} must start with an ASCII "
                                       "letter or digit, followed by ASCII letters, digits, '-', '_' or '.'\n")


@pytest.mark.parametrize("name", ["a..b", "0.x", "A_b-c.d", "x."])
def test_job_names_that_are_accepted(tmp_path, capsys, name):
    from container.schedule import main

    (tmp_path / "job.json").write_text(json.dumps({"name": name, "schedule": "hourly", "config": "c", "output": "o"}))
    assert main([str(tmp_path / "job.json"), "--print"]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith(f"# lucent-schedule:{name}")


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
    env = {**os.environ, "LUCENT_STATE_DIR": str(tmp_path / "state")}  # --install records its time there
    for _ in range(2):  # installing again replaces the entry instead of adding a second one
        subprocess.run([sys.executable, "-m", "container.schedule", str(job_file), "--install"], check=True,
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], env=env)
    lines = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "# kept by lucent tests" in lines
    entries = [line for line in lines if line.endswith("# lucent-schedule:nightly-bias")]
    assert len(entries) == 1 and entries[0].startswith("0 2 * * * ")


# --- monitoring schedules: `lucent monitor` per window ------------------------------------------------------------

RECORDER = """
import json, os, sys
with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
now = sys.argv[sys.argv.index("--now") + 1]
sys.exit(1 if now in os.environ.get("RECORD_FAIL_AT", "").split(",") else 0)
"""


@pytest.fixture
def monitoring(tmp_path, monkeypatch) -> dict:
    """The SDK's hourly bias schedule and job definition as files, and `lucent monitor` replaced by a script
    that records its arguments (and fails for the ticks in RECORD_FAIL_AT)."""
    from tests.test_monitor_definition import (
        BIAS_DEFINITION,
        BIAS_SCHEDULE,
        EXPLAIN_DEFINITION,
        EXPLAIN_SCHEDULE,
        ONCE_DEFINITION,
        ONCE_SCHEDULE,
    )

    files = {}
    for name, body in (("bias", BIAS_DEFINITION), ("bias-schedule", BIAS_SCHEDULE), ("explain", EXPLAIN_DEFINITION),
                       ("explain-schedule", EXPLAIN_SCHEDULE), ("once", ONCE_DEFINITION),
                       ("once-schedule", ONCE_SCHEDULE)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(body), encoding="utf-8")
    (tmp_path / "recorder.py").write_text(RECORDER, encoding="utf-8")
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("LUCENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LUCENT_MONITOR_COMMAND", f"{sys.executable} {tmp_path / 'recorder.py'}")
    monkeypatch.setenv("RECORD_FILE", str(record))
    monkeypatch.delenv("LUCENT_SCHEDULE_NOW", raising=False)
    monkeypatch.chdir(tmp_path)
    return {**files, "record": record, "capture": tmp_path / "capture", "state": tmp_path / "state" / ".monitoring",
            "tmp": tmp_path}


def schedule(m: dict, *action: str, kind: str = "bias", capture: str = "capture") -> int:
    """`lucent schedule --monitoring-schedule ... <action>`, in this process; the capture URI relative to tmp."""
    from container.schedule import main

    return main(["--monitoring-schedule", str(m[f"{kind}-schedule"]), "--job-definition", str(m[kind]),
                 "--capture-uri", capture, *action])


def recorded(m: dict) -> list[list[str]]:
    """Every `lucent monitor` argument list so far, and forget them."""
    if not m["record"].exists():
        return []
    runs = [json.loads(line) for line in m["record"].read_text(encoding="utf-8").splitlines()]
    m["record"].unlink()
    return runs


def monitor_args(m: dict, tick: str, name: str = "churn-bias", kind: str = "bias", *extra: str) -> list[str]:
    return ["--job-definition", str(m[kind]), "--capture-uri", str(m["capture"]), "--now", tick,
            "--schedule-name", name, *extra]


def test_monitoring_entries(monitoring, capsys):
    assert schedule(monitoring, "--print") == 0
    tick, reboot = capsys.readouterr().out.strip().split("\n")
    mark = "# lucent-schedule:monitoring/churn-bias"
    assert tick.startswith("5 * * * * mkdir -p ") and tick.endswith(mark) and " --run >> " in tick
    assert reboot.startswith("@reboot mkdir -p ") and reboot.endswith(mark) and " --catch-up >> " in reboot
    state = monitoring["state"] / "churn-bias"
    assert f"LUCENT_STATE_DIR={monitoring['tmp'] / 'state'} " in tick and f"{state}/cron.log" in tick
    assert f"--capture-uri {monitoring['capture']} " in tick  # a local capture folder is made absolute
    assert schedule(monitoring, "--print", kind="explain") == 0
    assert capsys.readouterr().out.startswith("5 1-23/6 * * * ")  # cron(0 1/6 ? * * *), 5 minutes after the tick


def test_the_crontab_line_runs_lucent_monitor_for_its_tick(monitoring, capsys):
    """The entry's command exactly as cron runs it (a shell, cron's minimal environment plus the clock)."""
    assert schedule(monitoring, "--print") == 0
    command = capsys.readouterr().out.split("\n")[0].split(" ", 5)[5]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "LUCENT_SCHEDULE_NOW": "2024-05-01T13:05:00Z",
           "LUCENT_MONITOR_COMMAND": os.environ["LUCENT_MONITOR_COMMAND"], "RECORD_FILE": str(monitoring["record"])}
    for _ in range(2):  # the second run of the window is a no-op
        assert subprocess.run(command, shell=True, env=env, timeout=120).returncode == 0
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T13:00:00Z")]
    log = (monitoring["state"] / "churn-bias" / "cron.log").read_text()
    assert "churn-bias 20240501T130000Z: already completed" in log
    assert (monitoring["state"] / "churn-bias" / "20240501T130000Z.done").exists()
    assert schedule(monitoring, "--run", "--force", "--now", "2024-05-01T13:05Z") == 0  # --force: once more
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T13:00:00Z")]


def test_every_n_hours_with_a_model(monitoring, tmp_path):
    (tmp_path / "model").mkdir()
    assert schedule(monitoring, "--model-dir", "model", "--run", "--now", "2024-05-01T12:59Z", kind="explain") == 0
    assert schedule(monitoring, "--model-url", "http://127.0.0.1:8080", "--run", "--now", "2024-05-01T13:00Z",
                    kind="explain") == 0
    assert recorded(monitoring) == [  # ticks at 01, 07, 13 and 19 h
        monitor_args(monitoring, "2024-05-01T07:00:00Z", "churn-explain", "explain", "--model-dir",
                     str(tmp_path / "model")),
        monitor_args(monitoring, "2024-05-01T13:00:00Z", "churn-explain", "explain", "--model-url",
                     "http://127.0.0.1:8080")]


@pytest.mark.parametrize(("url", "shown"), [
    ("http://lucent:S3cr3t@127.0.0.1:8080", "http://***@127.0.0.1:8080"),
    ("http://lucent:S3c@r3t'@127.0.0.1:8080/m", "http://***@127.0.0.1:8080/m"),  # '@' and a quote in the password
])
def test_a_model_url_with_credentials_is_not_written_into_the_crontab(monitoring, crontab_lines, capsys, url, shown):
    """As a pinned $AWS_ENDPOINT_URL with userinfo is refused: the crontab (crontab -l, backups) and the
    schedule's log are no place for a password, even one the user typed. Named, never echoed."""
    for action in ("--print", "--install"):
        assert schedule(monitoring, "--model-url", url, action, kind="explain") == 1
        out, err = capsys.readouterr()
        assert (f"error: --model-url: holds credentials in its URL ({shown}); a crontab line must not hold them: "
                "give the URL without user:password@\n") in err, err
        assert "S3c" not in out + err and "lucent:" not in out + err
    assert crontab_lines() == ["# kept by lucent tests"]
    assert not monitoring["state"].exists()  # not even the --install time

    assert schedule(monitoring, "--model-url", "http://127.0.0.1:8080", "--print", kind="explain") == 0
    assert " --model-url http://127.0.0.1:8080 --run >> " in capsys.readouterr().out  # without them: written


def test_catch_up_runs_the_missed_windows_oldest_first(monitoring):
    assert schedule(monitoring, "--run", "--now", "2024-05-01T09:10Z") == 0
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T13:20Z") == 0
    assert recorded(monitoring) == [monitor_args(monitoring, f"2024-05-01T{hour:02d}:00:00Z") for hour in
                                    (9, 10, 11, 12, 13)]
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T13:40Z") == 0  # nothing missed since
    assert recorded(monitoring) == []


def test_catch_up_without_state_runs_the_current_window(monitoring):
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T13:20Z") == 0
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T13:00:00Z")]


def test_catch_up_is_capped_and_since_reaches_back(monitoring, capsys):
    assert schedule(monitoring, "--run", "--now", "2024-05-01T09:10Z") == 0
    recorded(monitoring)
    assert schedule(monitoring, "--catch-up", "--max-windows", "2", "--now", "2024-05-01T13:20Z") == 0
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T12:00:00Z"),
                                    monitor_args(monitoring, "2024-05-01T13:00:00Z")]
    assert ("churn-bias: 2 older missed window(s) not run (--max-windows 2): 20240501T100000Z to 20240501T110000Z; "
            "run them with --catch-up --since 2024-05-01T10:00:00Z --max-windows 4") in capsys.readouterr().out
    assert schedule(monitoring, "--catch-up", "--since", "2024-05-01T10:00:00Z", "--now", "2024-05-01T13:30Z") == 0
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T10:00:00Z"),
                                    monitor_args(monitoring, "2024-05-01T11:00:00Z")]


def test_a_failed_window_is_not_retried_until_asked(monitoring, monkeypatch):
    assert schedule(monitoring, "--run", "--now", "2024-05-01T09:10Z") == 0
    monkeypatch.setenv("RECORD_FAIL_AT", "2024-05-01T11:00:00Z")
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T13:20Z") == 1  # the worst exit code ...
    assert [run[5] for run in recorded(monitoring)] == ["2024-05-01T09:00:00Z", "2024-05-01T10:00:00Z",
                                                        "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z",
                                                        "2024-05-01T13:00:00Z"]  # ... after every window ran
    state = monitoring["state"] / "churn-bias"
    assert sorted(path.name for path in state.glob("*.failed")) == ["20240501T110000Z.failed"]
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T14:05Z") == 0  # 11:00 was attempted
    assert [run[5] for run in recorded(monitoring)] == ["2024-05-01T14:00:00Z"]
    monkeypatch.delenv("RECORD_FAIL_AT")
    assert schedule(monitoring, "--catch-up", "--since", "2024-05-01T09:00Z", "--now", "2024-05-01T14:05Z") == 0
    assert [run[5] for run in recorded(monitoring)] == ["2024-05-01T11:00:00Z"]
    assert not list(state.glob("*.failed"))
    monkeypatch.setenv("RECORD_FAIL_AT", "2024-05-01T12:00:00Z")  # a forced rerun that fails: no longer complete
    assert schedule(monitoring, "--run", "--force", "--now", "2024-05-01T12:30Z") == 1
    assert [path.name for path in state.glob("20240501T120000Z.*") if path.suffix != ".lock"] == [
        "20240501T120000Z.failed"]


def test_data_analysis_offsets_are_passed_on(monitoring):
    body = json.loads(monitoring["bias-schedule"].read_text())
    body["MonitoringScheduleConfig"]["ScheduleConfig"].update(DataAnalysisStartTime="-PT3H", DataAnalysisEndTime="-PT1H")
    monitoring["bias-schedule"].write_text(json.dumps(body))
    assert schedule(monitoring, "--run", "--now", "2024-05-01T13:05Z") == 0
    [argv] = recorded(monitoring)
    assert argv == monitor_args(monitoring, "2024-05-01T13:00:00Z", "churn-bias", "bias",
                                "--data-analysis-start-time=-PT3H", "--data-analysis-end-time=-PT1H")
    # What `lucent monitor`'s own parser makes of that command line (a separate "-PT3H" is an option to it).
    from container.cli import build_parser

    args = build_parser().parse_args(["monitor", *argv])
    assert (args.data_analysis_start_time, args.data_analysis_end_time) == ("-PT3H", "-PT1H")
    assert args.now == datetime(2024, 5, 1, 13, tzinfo=UTC) and args.schedule_name == "churn-bias"


def test_now_runs_once_immediately(monitoring, capsys):
    expected = ["--data-analysis-start-time=-PT5H", "--data-analysis-end-time=-PT1H"]
    assert schedule(monitoring, "--run", "--now", "2024-05-01T13:25Z", kind="once") == 0
    assert schedule(monitoring, "--run", "--now", "2024-05-01T13:55Z", kind="once") == 0  # same hour: done
    assert recorded(monitoring) == [monitor_args(monitoring, "2024-05-01T13:00:00Z", "churn-bias-once", "once",
                                                 *expected)]
    assert schedule(monitoring, "--print", kind="once") == 0
    line = capsys.readouterr().out.strip().split("\n")[-1]
    assert line.startswith("cd ") and line.endswith(" --run") and "#" not in line
    assert schedule(monitoring, "--catch-up", kind="once") == 1
    assert "a NOW schedule runs once" in capsys.readouterr().err


@pytest.fixture
def crontab_lines(user_crontab):
    def lines() -> list[str]:
        return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout.splitlines()
    return lines


def test_install_and_catch_up_after_the_machine_was_off(monitoring, monkeypatch, crontab_lines):
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    for _ in range(2):  # installing again replaces both lines
        assert schedule(monitoring, "--install") == 0
    lines = crontab_lines()
    assert "# kept by lucent tests" in lines
    ours = [line for line in lines if line.endswith("# lucent-schedule:monitoring/churn-bias")]
    assert [line.split(" ")[0] for line in ours] == ["5", "@reboot"]  # 5 minutes after the tick
    monkeypatch.delenv("LUCENT_SCHEDULE_NOW")
    assert schedule(monitoring, "--catch-up", "--now", "2024-05-01T13:20Z") == 0  # off from 10:30 to 13:20
    assert [run[5] for run in recorded(monitoring)] == ["2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z",
                                                        "2024-05-01T13:00:00Z"]


def test_a_now_schedule_installs_nothing(monitoring, monkeypatch, crontab_lines):
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T15:10:00Z")
    assert schedule(monitoring, "--install", kind="once") == 0
    assert crontab_lines() == ["# kept by lucent tests"]
    assert [run[5] for run in recorded(monitoring)] == ["2024-05-01T15:00:00Z"]


def test_a_schedule_without_schedule_config_says_when_it_runs(monitoring, monkeypatch, crontab_lines, capsys):
    """Without ScheduleConfig Lucent runs daily at 00:00 UTC: --print and --install say so (on stderr)."""
    body = json.loads(monitoring["bias-schedule"].read_text())
    del body["MonitoringScheduleConfig"]["ScheduleConfig"]
    monitoring["bias-schedule"].write_text(json.dumps(body))
    note = (f"note: {monitoring['bias-schedule']}: MonitoringScheduleConfig has no ScheduleConfig: Lucent runs it "
            "daily at 00:00 UTC, cron(0 0 ? * * *) (SageMaker runs such a schedule daily at a time it picks); give "
            "ScheduleConfig.ScheduleExpression to choose the hour\n")
    command = [sys.executable, "-m", "container.schedule", "--monitoring-schedule", str(monitoring["bias-schedule"]),
               "--job-definition", str(monitoring["bias"]), "--capture-uri", "capture", "--print"]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=120)  # as typed: a process of its own
    assert printed.returncode == 0 and printed.stdout.startswith("5 0 * * * ") and printed.stderr == note
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    assert schedule(monitoring, "--install") == 0
    # (in this process, an earlier test's --run may have configured logging: the INFO line may come too)
    assert [line for line in capsys.readouterr().err.split("\n") if line.startswith("note: ")] == [note.strip()]
    assert [line.split(" ")[:2] for line in crontab_lines()[1:]] == [["5", "0"], ["@reboot", "mkdir"]]
    body["MonitoringScheduleConfig"]["ScheduleConfig"] = {"ScheduleExpression": "cron(0 0 ? * * *)"}
    monitoring["bias-schedule"].write_text(json.dumps(body))
    printed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and printed.stderr == ""  # given: nothing to say


@pytest.mark.parametrize(("arguments", "message"), [
    (["--print"], "error: 2 problem(s):"),  # the explainability definition with the bias schedule
    (["--catch-up", "--max-windows", "0"], "--max-windows must be at least 1"),
    (["--run", "--since", "2024-05-01T00:00Z"], "--since goes with --catch-up"),
])
def test_bad_monitoring_schedules(monitoring, capsys, arguments, message):
    from container.schedule import main

    mismatched = arguments == ["--print"]
    code = main(["--monitoring-schedule", str(monitoring["bias-schedule"]), "--job-definition",
                 str(monitoring["explain" if mismatched else "bias"]), "--capture-uri", "capture", *arguments])
    err = capsys.readouterr().err
    assert code == 1 and message in err
    if mismatched:
        assert f"{monitoring['bias-schedule']}: MonitoringScheduleConfig.MonitoringJobDefinitionName: the schedule " \
               "runs 'model-bias-job-definition-2026-12-06-07-36-32-776'" in err


@pytest.mark.parametrize(("arguments", "message"), [
    (["job.yaml", "--monitoring-schedule", "s.json", "--print"], "give a job description"),
    (["--monitoring-schedule", "s.json", "--job-definition", "d.json", "--print"], "needs --job-definition FILE and "
                                                                                   "--capture-uri URI"),
    (["job.yaml", "--model-dir", "m", "--print"], "--model-dir: only with --monitoring-schedule"),
])
def test_bad_schedule_arguments(capsys, arguments, message):
    from container.schedule import main

    assert main(arguments) == 1
    assert message in capsys.readouterr().err


def test_bad_files_are_refused_when_the_entry_is_made(monitoring, capsys):
    body = json.loads(monitoring["bias-schedule"].read_text())
    body["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"] = "cron(0 2 ? * MON *)"
    monitoring["bias-schedule"].write_text(json.dumps(body))
    assert schedule(monitoring, "--print") == 1
    assert f"{monitoring['bias-schedule']}: MonitoringScheduleConfig.ScheduleConfig.ScheduleExpression: " \
           "'cron(0 2 ? * MON *)' is not one SageMaker accepts" in capsys.readouterr().err
    assert schedule(monitoring, "--print", kind="explain", capture="s3:/bucket/capture") == 1
    assert "s3:/bucket/capture: not a well-formed S3 URI" in capsys.readouterr().err
    assert not monitoring["state"].exists()


def test_missed_ticks_of_a_daily_schedule(tmp_path):
    from container.schedule import missed_ticks

    now = datetime(2024, 5, 10, 3, tzinfo=UTC)
    (tmp_path / "20240505T020000Z.done").write_text("")
    (tmp_path / "20240507T020000Z.done").write_text("")  # completed in a --since run
    assert missed_ticks("0 2 * * *", tmp_path, now) == [datetime(2024, 5, day, 2, tzinfo=UTC) for day in (8, 9, 10)]
    assert missed_ticks("0 2 * * *", tmp_path, now, since=datetime(2024, 5, 5, 2, tzinfo=UTC)) == [
        datetime(2024, 5, day, 2, tzinfo=UTC) for day in (6, 8, 9, 10)]
    assert len(missed_ticks("0 2 * * *", tmp_path, now, since=datetime(2024, 5, 5, 2, tzinfo=UTC), force=True)) == 6
