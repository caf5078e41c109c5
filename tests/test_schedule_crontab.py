"""`lucent schedule` and the user's crontab: one that `crontab -l` cannot read is never replaced (only "no crontab
for USER" is an empty one); `--list` and `--remove`; the S3 endpoint and the region pinned on the line, as cron's
environment has neither, and credentials never.

The failures of `crontab -l` come from a fake `crontab` first on PATH (the real one cannot be made to fail that
way); everything else uses the real crontab of this machine, saved and restored (test_schedule.user_crontab).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from container.schedule import ENTRY_MARK
from tests import test_schedule, test_schedule_hostile
from tests.test_schedule import schedule

# test_schedule's fixtures: the SDK's monitoring schedule as files, and the real crontab, restored afterwards
crontab_lines, monitoring, user_crontab = test_schedule.crontab_lines, test_schedule.monitoring, test_schedule.user_crontab
job_file = test_schedule_hostile.job_file  # a job description whose --print / --install works

KEPT = "# kept by lucent tests"  # what user_crontab leaves in the crontab
MONITOR_MARK = f"{ENTRY_MARK}monitoring/churn-bias"
AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-access-key-value",
               "AWS_SESSION_TOKEN": "session-token-value", "AWS_PROFILE": "minio-profile"}


@pytest.fixture(autouse=True)
def no_aws_settings(monkeypatch):
    """No endpoint or region from the environment the tests run in: each test sets those it means."""
    for name in AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def lucent(*arguments: str) -> int:
    """`lucent schedule ARGUMENTS`, in this process."""
    from container.schedule import main

    return main([*arguments])


def crontab_text() -> str:
    """The real crontab, exactly (lines with a form feed or U+2028 included)."""
    return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout


# --- a crontab that cannot be read ---------------------------------------------------------------------------------

@pytest.fixture
def fake_crontab(tmp_path, monkeypatch):
    """A `crontab` first on PATH. ``answer(stderr, code, stdout)`` sets what `crontab -l` says; `crontab -` keeps
    its input in the file returned (absent: the crontab was never written) and exits ``write_code``."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    written = folder / "written"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def answer(stderr: str, code: int = 1, stdout: str = "", write_code: int = 0, write_stderr: str = "") -> Path:
        (folder / "crontab").write_text(f"""#!/bin/sh
case "$1" in
  -l) printf %s {shlex.quote(stdout)}; printf %s {shlex.quote(stderr)} >&2; exit {code} ;;
  -) cat > {shlex.quote(str(written))}; printf %s {shlex.quote(write_stderr)} >&2; exit {write_code} ;;
esac
exit 2
""", encoding="utf-8")
        (folder / "crontab").chmod(0o755)
        return written

    return answer


@pytest.mark.parametrize(("stderr", "stdout"), [
    ("crontab: can't open your crontab file: Resource temporarily unavailable\n", ""),  # the QA reproduction
    ("/var/spool/cron/crontabs/alice: Permission denied\n", ""),  # cronie / vixie: perror() of anything but ENOENT
    ("crontab: can't open 'alice': Permission denied\n", ""),  # BusyBox, another error than ENOENT
    ("crontab: can't change directory to '/var/spool/cron/crontabs': No such file or directory\n", ""),  # no spool
    ("", ""),  # no message at all
    ("no crontab for alice\nfree(): invalid pointer\n", ""),  # the usual answer, and more
    ("no crontab for alice\n", "0 3 * * * /home/alice/backup.sh\n"),  # ... with part of a table
])
def test_a_crontab_that_cannot_be_read_is_never_replaced(job_file, fake_crontab, capsys, stderr, stdout):
    written = fake_crontab(stderr, stdout=stdout)
    said = " / ".join(line.strip() for line in stderr.strip().split("\n")) or "no message"
    assert lucent(str(job_file), "--install") == 1
    out, err = capsys.readouterr()
    assert err == (f"error: cannot read your crontab: `crontab -l` exited 1: {said}; nothing installed (installing "
                   "writes the whole crontab, which could not be read)\n") and out == ""
    assert not written.exists()  # `crontab -` never ran: the user's lines are still there
    assert not (job_file.parent / "state").exists()  # no --install time either
    assert lucent(str(job_file), "--remove") == 1
    assert f"`crontab -l` exited 1: {said}; nothing removed\n" in capsys.readouterr().err
    assert lucent("--list") == 1
    assert f"`crontab -l` exited 1: {said}; nothing listed\n" in capsys.readouterr().err
    assert not written.exists()


def test_a_monitoring_schedule_is_not_installed_over_an_unreadable_crontab(monitoring, fake_crontab, capsys):
    written = fake_crontab("crontab: can't open your crontab file: Resource temporarily unavailable\n", code=1)
    assert schedule(monitoring, "--install") == 1
    assert "`crontab -l` exited 1: crontab: can't open your crontab file: Resource temporarily unavailable; " \
           "nothing installed" in capsys.readouterr().err
    assert not written.exists() and not monitoring["state"].exists()


@pytest.mark.parametrize("stderr", [
    "no crontab for alice\n",  # cronie; vixie cron (Debian's and Ubuntu's cron)
    "No Crontab For alice\n",  # any case
    "crontab: no crontab for alice\n",  # with the program's name first
    "crontab: can't open 'alice': No such file or directory\n",  # BusyBox: cats the user's file in the spool
])
def test_no_crontab_yet_is_an_empty_one(job_file, fake_crontab, capsys, stderr):
    written = fake_crontab(stderr, code=1)
    assert lucent(str(job_file), "--install") == 0
    [line] = written.read_text().split("\n")[:-1]
    assert line.startswith("0 2 * * * ") and line.endswith(f"{ENTRY_MARK}nightly")
    assert capsys.readouterr().out == f"installed: {line}\n"


def test_a_crontab_that_refuses_the_new_table_is_an_error(job_file, fake_crontab, capsys):
    fake_crontab("", code=0, stdout=f"{KEPT}\n", write_code=1,
                 write_stderr='"-":1: bad minute\nerrors in crontab file, can\'t install.\n')
    assert lucent(str(job_file), "--install") == 1
    assert capsys.readouterr().err == ("error: `crontab -` exited 1: \"-\":1: bad minute / errors in crontab file, "
                                       "can't install.\n")
    assert not (job_file.parent / "state").exists()


def test_install_with_no_crontab_at_all(job_file, user_crontab):
    """The real `crontab -l` of a user without a crontab (exit 1, "no crontab for USER")."""
    subprocess.run(["crontab", "-r"], check=True, capture_output=True)
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    assert before.returncode == 1 and before.stderr.startswith("no crontab for ")
    assert lucent(str(job_file), "--install") == 0
    [line] = crontab_text().split("\n")[:-1]
    assert line.startswith("0 2 * * * ") and line.endswith(f"{ENTRY_MARK}nightly")


# --- --list and --remove ------------------------------------------------------------------------------------------

def test_list_shows_the_installed_entries(monitoring, job_file, crontab_lines, capsys, monkeypatch):
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    assert lucent("--list") == 0
    assert capsys.readouterr().out == "no Lucent schedule is installed in your crontab\n"
    odd = job_file.parent / "jobs 50%" / "job.json"  # a space (quoted on the line) and a % (escaped: \%)
    odd.parent.mkdir()
    job_file.rename(odd)
    assert lucent(str(odd), "--install") == 0
    assert schedule(monitoring, "--install") == 0
    capsys.readouterr()
    assert lucent("--list") == 0
    assert capsys.readouterr().out.split("\n") == [
        "NAME                   SCHEDULE (crontab, UTC)  FILE",
        f"nightly                0 2 * * *                {odd}",
        f"monitoring/churn-bias  5 * * * *, @reboot       {monitoring['bias-schedule']}",
        ""]
    assert crontab_lines()[0] == KEPT


@pytest.mark.parametrize("arguments", [["job.json"], ["--monitoring-schedule", "s.json"], ["--capture-uri", "c"]])
def test_list_takes_no_job(capsys, arguments):
    assert lucent("--list", *arguments) == 1
    assert "error: --list lists every entry Lucent installed: give it no " in capsys.readouterr().err


def test_remove_takes_out_its_lines_and_nothing_else(monitoring, job_file, crontab_lines, capsys, monkeypatch):
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    others = [KEPT, "0 3 * * * echo 'a\x0cb\u2028c' # lucent-schedule:monitoring/churn-bias but not at the end",
              f"0 4 * * * echo mine {ENTRY_MARK}nightly-2", "MAILTO=me@example.com"]
    subprocess.run(["crontab", "-"], input="\n".join(others) + "\n", text=True, check=True)
    assert schedule(monitoring, "--install") == 0
    assert lucent(str(job_file), "--install") == 0
    installed = crontab_text().split("\n")[:-1]
    assert installed[:4] == others and len(installed) == 7
    capsys.readouterr()

    # The monitoring schedule file is enough (--job-definition and --capture-uri, as at --install, are accepted)
    assert lucent("--monitoring-schedule", str(monitoring["bias-schedule"]), "--remove") == 0
    assert capsys.readouterr().out == "removed:\n" + "\n".join(installed[4:6]) + "\n"
    assert crontab_text() == "\n".join([*others, installed[6]]) + "\n"
    assert schedule(monitoring, "--remove") == 1  # not installed any more: said, nothing changed
    # (the last line: in this process, an earlier test's --run may have configured logging, and the schedule's
    # "key Tags is not used" INFO line comes first)
    assert capsys.readouterr().err.split("\n")[-2:] == [
        f"error: monitoring/churn-bias (from {monitoring['bias-schedule']}): not installed: no line of your crontab "
        f"ends with {MONITOR_MARK} (lucent schedule --list shows what is)", ""]

    assert lucent(str(job_file), "--remove") == 0
    assert capsys.readouterr().out == f"removed:\n{installed[6]}\n"
    assert crontab_text() == "\n".join(others) + "\n"  # the other lines exactly as they were
    assert (monitoring["state"] / "churn-bias" / "installed").is_file()  # the state is kept


def test_other_lines_that_are_not_utf8_are_kept_byte_for_byte(job_file, user_crontab):
    other = b"0 5 * * * echo caf\xe9 \xff # Latin-1, not UTF-8\n"
    subprocess.run(["crontab", "-"], input=b"# kept by lucent tests\n" + other, check=True)
    for action in ("--install", "--remove"):
        assert lucent(str(job_file), action) == 0
        table = subprocess.run(["crontab", "-l"], capture_output=True, check=True).stdout
        assert table.startswith(b"# kept by lucent tests\n" + other)
    assert table == b"# kept by lucent tests\n" + other


def test_remove_by_name(monitoring, job_file, crontab_lines, capsys, monkeypatch):
    """A name as --list shows it; a bare name that is both a job and a monitoring schedule is refused."""
    monkeypatch.setenv("LUCENT_SCHEDULE_NOW", "2024-05-01T10:30:00Z")
    job_file.write_text(json.dumps({**json.loads(job_file.read_text()), "name": "churn-bias"}))
    assert schedule(monitoring, "--install") == 0
    assert lucent(str(job_file), "--install") == 0
    capsys.readouterr()
    assert lucent("churn-bias", "--remove") == 1
    assert capsys.readouterr().err == ("error: churn-bias: both a job and a monitoring schedule of that name are "
                                       "installed: give churn-bias or monitoring/churn-bias\n")
    assert len(crontab_lines()) == 4
    assert lucent("monitoring/churn-bias", "--remove") == 0
    assert [line.rsplit(ENTRY_MARK, 1)[1] for line in crontab_lines()[1:]] == ["churn-bias"]
    assert lucent("churn-bias", "--remove") == 0
    assert crontab_lines() == [KEPT]
    assert lucent("churn-bias", "--remove") == 1
    assert capsys.readouterr().err == (
        f"error: churn-bias (no file of that name here: read as a name): not installed: no line of your crontab ends "
        f"with {ENTRY_MARK}churn-bias or {MONITOR_MARK} (lucent schedule --list shows what is)\n")
    assert lucent("../jobs/x.yaml", "--remove") == 1
    assert capsys.readouterr().err == ("error: ../jobs/x.yaml: no such job description, and not the name of an "
                                       "entry (lucent schedule --list shows them)\n")


def test_removing_the_last_entry_leaves_an_empty_crontab(job_file, user_crontab, capsys):
    subprocess.run(["crontab", "-r"], check=True, capture_output=True)
    assert lucent(str(job_file), "--install") == 0
    assert lucent("nightly", "--remove") == 0
    assert crontab_text() == ""
    capsys.readouterr()
    assert lucent("--list") == 0
    assert capsys.readouterr().out == "no Lucent schedule is installed in your crontab\n"


def test_a_now_schedule_is_never_installed_so_not_removed(monitoring, crontab_lines, capsys):
    assert schedule(monitoring, "--remove", kind="once") == 1
    assert "monitoring/churn-bias-once (from " in capsys.readouterr().err
    assert crontab_lines() == [KEPT]


# --- what cron's environment lacks: the S3 endpoint and the region ------------------------------------------------

ENV_RECORDER = """
import json, os, sys
with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
    out.write(json.dumps({"now": sys.argv[sys.argv.index("--now") + 1],
                          "aws": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}) + "\\n")
"""
SETTINGS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9001/s3 50%",
            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-2"}


def test_the_endpoint_and_region_reach_lucent_monitor_under_cron(monitoring, capsys, monkeypatch):
    for name, value in {**SETTINGS, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    assert schedule(monitoring, "--print") == 0
    lines = capsys.readouterr().out.strip().split("\n")
    pinned = (f"LUCENT_STATE_DIR={monitoring['tmp'] / 'state'} AWS_ENDPOINT_URL=http://127.0.0.1:9000 "
              "AWS_ENDPOINT_URL_S3='http://127.0.0.1:9001/s3 50\\%' AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-2 "
              f"{sys.executable} -m container.schedule --monitoring-schedule ")
    assert len(lines) == 2 and all(pinned in line for line in lines)
    assert not any(secret in line for line in lines for secret in [*CREDENTIALS, *CREDENTIALS.values()])

    # The line's command as cron runs it: a shell, cron's environment (no AWS variable), and the clock.
    (monitoring["tmp"] / "env_recorder.py").write_text(ENV_RECORDER, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "LUCENT_SCHEDULE_NOW": "2024-05-01T13:05:00Z",
           "LUCENT_MONITOR_COMMAND": f"{sys.executable} {monitoring['tmp'] / 'env_recorder.py'}",
           "RECORD_FILE": str(monitoring["record"])}
    # cron turns `\%` into `%` before the shell sees the command
    command = lines[0].split(" ", 5)[5].replace("\\%", "%")
    assert subprocess.run(command, shell=True, env=env, timeout=120).returncode == 0
    [run] = [json.loads(line) for line in monitoring["record"].read_text(encoding="utf-8").splitlines()]
    assert run == {"now": "2024-05-01T13:00:00Z", "aws": SETTINGS}


def test_a_job_description_pins_them_too_unless_it_gives_its_endpoint(job_file, capsys, monkeypatch):
    for name, value in {**SETTINGS, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    assert lucent(str(job_file), "--print") == 0
    line = capsys.readouterr().out
    assert (f"LUCENT_STATE_DIR={job_file.parent / 'state'} AWS_ENDPOINT_URL=http://127.0.0.1:9000 "
            "AWS_ENDPOINT_URL_S3='http://127.0.0.1:9001/s3 50\\%' AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-2 "
            f"{sys.executable} -m container.schedule {job_file} --run ") in line
    job_file.write_text(json.dumps({**json.loads(job_file.read_text()), "endpoint_url": "http://minio.local:9000"}))
    assert lucent(str(job_file), "--print") == 0
    line = capsys.readouterr().out
    assert (f"LUCENT_STATE_DIR={job_file.parent / 'state'} AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-2 "
            f"{sys.executable} -m container.schedule {job_file} --run ") in line
    assert "AWS_ENDPOINT_URL" not in line
    assert not any(secret in line for secret in [*CREDENTIALS, *CREDENTIALS.values()])


def test_nothing_is_pinned_when_nothing_is_set(monitoring, capsys, monkeypatch):
    monkeypatch.delenv("LUCENT_STATE_DIR")
    monkeypatch.setenv("HOME", str(monitoring["tmp"]))
    assert schedule(monitoring, "--print") == 0
    tick = capsys.readouterr().out.split("\n")[0]
    assert f" && cd {monitoring['tmp']} && {sys.executable} -m container.schedule " in tick
