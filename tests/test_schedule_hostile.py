"""``lucent schedule``: no value can add a line to the crontab (a crontab line ends at a newline, shell quotes or
not). Each route a value takes to the line is refused with its source named, and nothing is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from container.schedule import ENTRY_MARK
from tests import test_schedule
from tests.test_schedule import schedule

# test_schedule's fixtures: the SDK's monitoring schedule as files, and the real crontab, restored afterwards
crontab_lines, monitoring, user_crontab = test_schedule.crontab_lines, test_schedule.monitoring, test_schedule.user_crontab

INJECTED = "\n* * * * * touch /tmp/PWNED #"
IN_NAME = "\n* * * * * touch PWNED #"  # the same in a file name (no '/')
KEPT = ["# kept by lucent tests"]  # what user_crontab leaves in the crontab
MARK = f"{ENTRY_MARK}monitoring/churn-bias"


def refused(capsys, source: str, character: str = "newline") -> None:
    out, err = capsys.readouterr()
    assert f"error: {source}: contains a control character ({character}); a crontab line cannot hold it" in err, err
    assert "installed" not in out and MARK not in out and "PWNED" not in out, out


@pytest.fixture
def job_file(tmp_path, monkeypatch) -> Path:
    """A job description whose --print / --install works (nothing is run)."""
    monkeypatch.setenv("LUCENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "nightly", "schedule": "daily(2)", "config": "s3://b/config/",
                                "output": "s3://b/results/"}), encoding="utf-8")
    return path


def job(path: Path, action: str = "--install") -> int:
    from container.schedule import main

    return main([str(path), action])


# --- the monitoring schedule's routes -----------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["--print", "--install"])
def test_a_newline_in_the_capture_uri_is_refused(monitoring, crontab_lines, capsys, action):
    assert schedule(monitoring, action, capture=f"s3://bucket/cap{INJECTED}") == 1
    refused(capsys, "--capture-uri")
    assert crontab_lines() == KEPT
    assert not monitoring["state"].exists()  # not even the --install time


@pytest.mark.parametrize(("character", "name"), [
    ("\r", "carriage return"), ("\t", "tab"), ("\x1b", "U+001B"), ("\x7f", "DEL"), ("\x85", "NEL, U+0085"),
    ("\u2028", "line separator, U+2028"), ("\u2029", "paragraph separator, U+2029"), ("\x0b", "U+000B"),
])
def test_every_control_character_and_line_separator_is_refused(monitoring, crontab_lines, capsys, character, name):
    assert schedule(monitoring, "--install", capture=f"s3://bucket/cap{character}x") == 1
    refused(capsys, "--capture-uri", name)
    assert crontab_lines() == KEPT


@pytest.mark.parametrize("option", ["--monitoring-schedule", "--job-definition"])
def test_a_newline_in_a_file_path_is_refused(monitoring, crontab_lines, capsys, option):
    kind = "bias-schedule" if option == "--monitoring-schedule" else "bias"
    folder = monitoring["tmp"] / f"files{IN_NAME}"
    folder.mkdir()
    monitoring[kind] = monitoring[kind].rename(folder / monitoring[kind].name)
    assert schedule(monitoring, "--install") == 1
    refused(capsys, option)
    assert crontab_lines() == KEPT


@pytest.mark.parametrize(("option", "value"), [
    ("--model-dir", f"model{IN_NAME}"), ("--model-url", f"http://127.0.0.1:8080/{INJECTED}"),
    ("--cloudwatch-dir", f"metrics{IN_NAME}"),
])
def test_a_newline_in_the_model_or_cloudwatch_option_is_refused(monitoring, crontab_lines, capsys, option, value):
    if option == "--model-dir":
        (monitoring["tmp"] / value).mkdir()
    assert schedule(monitoring, option, value, "--install", kind="explain") == 1
    refused(capsys, option)
    assert crontab_lines() == KEPT


def test_a_newline_in_the_current_directory_is_refused(monitoring, crontab_lines, capsys, monkeypatch):
    here = monitoring["tmp"] / f"here{IN_NAME}"
    here.mkdir()
    monkeypatch.chdir(here)
    assert schedule(monitoring, "--install", capture="s3://bucket/capture") == 1
    refused(capsys, "the current directory")
    assert crontab_lines() == KEPT


def test_a_newline_in_the_state_folder_is_refused(monitoring, crontab_lines, capsys, monkeypatch):
    monkeypatch.setenv("LUCENT_STATE_DIR", str(monitoring["tmp"] / f"state{IN_NAME}"))
    assert schedule(monitoring, "--install") == 1
    refused(capsys, "$LUCENT_STATE_DIR")
    assert crontab_lines() == KEPT
    assert [path.name for path in monitoring["tmp"].iterdir() if path.name.startswith("state")] == []


def test_a_newline_in_home_is_refused_when_it_makes_the_state_folder(monitoring, crontab_lines, capsys, monkeypatch):
    monkeypatch.delenv("LUCENT_STATE_DIR")
    monkeypatch.setenv("HOME", str(monitoring["tmp"] / f"home{IN_NAME}"))
    assert schedule(monitoring, "--install") == 1
    refused(capsys, "the state folder (~/.cache/lucent/schedules, from $HOME)")
    assert crontab_lines() == KEPT


def test_a_newline_in_the_schedule_expression_is_refused(monitoring, crontab_lines, capsys):
    body = json.loads(monitoring["bias-schedule"].read_text())
    body["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"] = "cron(0\n* ? * * *)"
    monitoring["bias-schedule"].write_text(json.dumps(body))
    assert schedule(monitoring, "--install") == 1  # refused before the line is made: not a crontab expression
    assert "cron(0\\n* ? * * *)" in capsys.readouterr().err
    assert crontab_lines() == KEPT


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION"])
def test_a_newline_in_a_pinned_aws_setting_is_refused(monitoring, crontab_lines, capsys, monkeypatch, variable):
    """The S3 endpoint and the region set at --install are pinned on the line (cron's environment has neither)."""
    monkeypatch.setenv(variable, f"http://127.0.0.1:9000{INJECTED}")
    assert schedule(monitoring, "--install") == 1
    refused(capsys, f"${variable}")
    assert crontab_lines() == KEPT
    assert not monitoring["state"].exists()


def test_a_newline_in_aws_endpoint_url_is_refused_for_a_job_too(job_file, crontab_lines, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:9000{INJECTED}")
    assert job(job_file) == 1
    assert "error: $AWS_ENDPOINT_URL: contains a control character (newline); a crontab line cannot hold it" \
           in capsys.readouterr().err
    assert crontab_lines() == KEPT


def test_the_python_path_is_checked_too(monitoring, crontab_lines, capsys, monkeypatch):
    monkeypatch.setattr(sys, "executable", f"/opt/venv{INJECTED}/python")
    assert schedule(monitoring, "--install") == 1
    refused(capsys, "the Python interpreter's path (sys.executable)")
    assert crontab_lines() == KEPT


def test_the_printed_reproduction_gives_no_second_entry(monitoring):
    """The reviewer's reproduction, as a user types it."""
    printed = subprocess.run([sys.executable, "-m", "container.schedule", "--monitoring-schedule",
                              str(monitoring["bias-schedule"]), "--job-definition", str(monitoring["bias"]),
                              "--capture-uri", f"s3://bucket/cap{INJECTED}", "--print"],
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert printed.returncode == 1 and printed.stdout == ""
    assert printed.stderr == "error: --capture-uri: contains a control character (newline); a crontab line cannot " \
                             "hold it\n"


def test_normal_values_are_installed_and_replaced(monitoring, crontab_lines, capsys, monkeypatch):
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    for capture in ("s3://bucket/capture one", "s3://bucket/capture-ü%"):  # a space, a non-ASCII letter and a %
        assert schedule(monitoring, "--install", capture=capture) == 0
    lines = crontab_lines()
    assert lines[0] == KEPT[0] and len(lines) == 3
    assert all(line.endswith(MARK) and "'s3://bucket/capture-ü\\%'" in line for line in lines[1:])
    assert (monitoring["state"] / "churn-bias" / "installed").is_file()


def test_reinstalling_keeps_other_lines_whole(monitoring, crontab_lines, monkeypatch):
    """Other lines of the crontab holding a form feed or U+2028 (line ends to str.splitlines, not to cron) are
    kept as they are, not cut in two."""
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    other = "0 3 * * * echo 'a\x0cb\u2028c' # lucent-schedule:monitoring/churn-bias but not at the end"
    subprocess.run(["crontab", "-"], input=f"{KEPT[0]}\n{other}\n", text=True, check=True)
    assert schedule(monitoring, "--install") == 0
    lines = crontab_lines()  # splitlines here too, but the other line must be intact: compare the whole text
    text = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout
    assert text.startswith(f"{KEPT[0]}\n{other}\n") and text.count("\n") == 4
    assert sum(line.endswith(MARK) for line in lines) == 2


# --- the job description's routes --------------------------------------------------------------------------------

def test_a_newline_in_the_job_file_path_is_refused(job_file, crontab_lines, capsys):
    folder = job_file.parent / f"jobs{IN_NAME}"
    folder.mkdir()
    assert job(job_file.rename(folder / "job.json")) == 1
    out, err = capsys.readouterr()
    assert "error: the job file's path: contains a control character (newline); a crontab line cannot hold it" \
           in err and "installed" not in out
    assert crontab_lines() == KEPT


def test_a_newline_in_the_job_schedule_is_refused(job_file, crontab_lines, capsys):
    description = json.loads(job_file.read_text())
    job_file.write_text(json.dumps({**description, "schedule": "0\n2\n*\n*\n*"}))  # 5 fields to croniter
    assert job(job_file) == 1
    assert "error: the schedule: contains a control character (newline)" in capsys.readouterr().err
    assert crontab_lines() == KEPT


@pytest.mark.parametrize("route", ["state", "cwd"])
def test_a_job_description_with_a_newline_in_its_state_or_directory_is_refused(job_file, crontab_lines, capsys,
                                                                                monkeypatch, route):
    if route == "state":
        monkeypatch.setenv("LUCENT_STATE_DIR", str(job_file.parent / f"state{IN_NAME}"))
    else:
        (job_file.parent / f"cwd{IN_NAME}").mkdir()
        monkeypatch.chdir(job_file.parent / f"cwd{IN_NAME}")
    assert job(job_file) == 1
    source = "$LUCENT_STATE_DIR" if route == "state" else "the current directory"
    assert f"error: {source}: contains a control character (newline)" in capsys.readouterr().err
    assert crontab_lines() == KEPT


def test_job_fields_that_do_not_reach_the_line_cannot_add_one(job_file, capsys):
    """config, output, data, model, image and endpoint_url are read by the run, from the file: not on the line."""
    description = json.loads(job_file.read_text())
    fields = ("config", "output", "data", "model", "image", "endpoint_url")
    job_file.write_text(json.dumps({**description, **{key: f"s3://b/{key}{INJECTED}" for key in fields}}))
    assert job(job_file, "--print") == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "PWNED" not in printed and printed.rstrip("\n").endswith(
        f"{ENTRY_MARK}nightly")


def test_a_normal_job_description_is_installed(job_file, crontab_lines):
    assert job(job_file) == 0
    lines = crontab_lines()
    assert lines[0] == KEPT[0] and len(lines) == 2 and lines[1].startswith("0 2 * * * ")
    assert lines[1].endswith(f"{ENTRY_MARK}nightly") and str(job_file) in lines[1]


def test_install_refuses_an_entry_with_a_line_not_its_own(user_crontab):
    from container.schedule import ScheduleError, install

    with pytest.raises(ScheduleError, match="every line installed must end with its mark"):
        install(f"0 * * * * true {ENTRY_MARK}x\n* * * * * touch /tmp/PWNED", "x")
    assert subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout == f"{KEPT[0]}\n"
