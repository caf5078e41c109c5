"""``container.outcome``: the one mapping from how a command ended to its exit code and message, as the docs
give it, and the commands that use it ending the same way for the same failure."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest

from analyzer import __version__
from analyzer.errors import ConfigError, DependencyError, UserError
from analyzer.report import ReportError
from container.cli import main
from container.demo import DEMO_CONFIG, write_demo_job
from container.launcher import LaunchError, launch_failure
from container.outcome import EXIT_STOPPED, JobStopped, outcome_of
from container.storage import StorageError

DOCS = Path(__file__).parents[1] / "docs"
OUTPUT = Path("/job/output")
FULL = OSError(errno.ENOSPC, "No space left on device", str(OUTPUT / ".lucent-staging-k2j/report.html"))


def _report_error(cause: BaseException) -> ReportError:
    return ReportError("the report could not be written (pdf: OSError: ...)", [], {"pdf": cause})


@pytest.mark.parametrize(("error", "code", "message"), [
    (UserError("label: no column 'y'"), 1, "ClientError: label: no column 'y'"),
    (ConfigError(["methods: missing", "label: missing"]), 1, "ClientError: methods: missing; label: missing"),
    (StorageError("reading s3://b/k: no object at this key"), 1, "ClientError: reading s3://b/k: no object at this key"),
    (FULL, 1, "ClientError: cannot write /job/output/report.html: No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 1, "ClientError: cannot write /job/output: Disk quota exceeded"),
    (_report_error(FULL), 1, "ClientError: cannot write /job/output/report.html: No space left on device"),
    (DependencyError("The model at http://m did not answer within 60 s"), 2,
     "AlgorithmError: The model at http://m did not answer within 60 s"),
    (_report_error(RuntimeError("no font")), 2, "AlgorithmError: the report could not be written (pdf: OSError: ...)"),
    (JobStopped(signal.SIGTERM), 2, "Stopped: the job was stopped (SIGTERM) before it finished"),
    (JobStopped(signal.SIGINT), 2, "Stopped: the job was stopped (SIGINT) before it finished"),
    (KeyError("x"), 2, f"AlgorithmError: internal error in Lucent {__version__}: KeyError: 'x'"),
    (OSError(errno.EACCES, "Permission denied"), 2,
     f"AlgorithmError: internal error in Lucent {__version__}: PermissionError: [Errno 13] Permission denied"),
], ids=["user", "config", "storage-uri", "full-disk", "quota", "report-full-disk", "dependency", "report",
        "SIGTERM", "SIGINT", "internal", "other-oserror"])
def test_each_outcome_gets_its_documented_code_and_prefix(error, code, message):
    ended = outcome_of(error, output_dir=OUTPUT)
    assert (ended.code, ended.message) == (code, message)
    assert ended.internal == message.startswith("AlgorithmError: internal error")
    prefix = message.split(":", 1)[0]
    # docs/running.md, "Exit codes and messages": the row of this code and prefix
    assert f"| {code} | `{prefix}: " in (DOCS / "running.md").read_text()


def test_a_command_words_its_own_reason_never_another_code_or_prefix():
    stop = JobStopped(signal.SIGTERM)
    execution = outcome_of(stop, subject="execution")
    assert (execution.code, execution.message) == (2, "Stopped: the execution was stopped (SIGTERM) before it finished")
    assert execution.message in (DOCS / "monitoring.md").read_text()
    on_host = outcome_of(stop, where=" on algo-2")
    assert on_host.message == "Stopped: the job was stopped (SIGTERM) on algo-2 before it finished"
    assert outcome_of(ValueError("bad"), where=" on algo-2").message == (
        f"AlgorithmError: internal error in Lucent {__version__} on algo-2: ValueError: bad")
    assert outcome_of(UserError("x"), where=" on algo-2").message == "ClientError: x"


def test_a_launch_that_raised_prints_the_line_of_its_outcome():
    stopped = LaunchError("stopped (SIGTERM) while publishing to s3://b/out; the results are kept in /tmp/x",
                          EXIT_STOPPED)
    assert launch_failure(stopped) == (2, "stopped (SIGTERM) while publishing to s3://b/out; the results are kept "
                                          "in /tmp/x")
    assert launch_failure(LaunchError("--output: s3:/b: not a well-formed S3 URI")) == (
        1, "--output: s3:/b: not a well-formed S3 URI")
    assert launch_failure(JobStopped(signal.SIGINT)) == (2, "Stopped: the job was stopped (SIGINT) before it finished")
    assert launch_failure(DependencyError("the model died")) == (2, "AlgorithmError: the model died")
    assert launch_failure(KeyError("x")) == (2, f"AlgorithmError: internal error in Lucent {__version__}: KeyError: 'x'")


def test_a_scheduled_launch_that_fails_ends_as_lucent_launch_does(tmp_path, monkeypatch, capsys):
    """Both commands map the launch's failure the same way. Before, ``lucent schedule --run`` let any error but a
    ``LaunchError`` out of the window: exit 1 (not ``lucent launch``'s 2) and no ``.failed`` marker, so a
    catch-up never counted the window as attempted; and a launch stopped while publishing exited 1, not 2."""
    config = {**DEMO_CONFIG, "methods": {"pre_training_bias": DEMO_CONFIG["methods"]["pre_training_bias"]}}
    inputs = write_demo_job(tmp_path / "job", n_rows=50, seed=2, config=config) / "input"
    window = tmp_path / "results" / "credit-bias" / "20240501T120000Z"
    (window / "message").mkdir(parents=True)  # the previous message cannot be removed: a folder (EISDIR)
    expected = (f"error: AlgorithmError: internal error in Lucent {__version__}: IsADirectoryError: [Errno 21] Is a "
                f"directory: '{window / 'message'}'")

    launched = main(["launch", "--config", str(inputs / "config"), "--data", str(inputs / "data"),
                     "--output", str(window)])
    assert (launched, capsys.readouterr().err.splitlines()[-1]) == (2, expected)

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "credit-bias", "schedule": "daily_every_x_hours(6)", "output": str(tmp_path /
                               "results"), "config": str(inputs / "config"), "data": str(inputs / "data")}))
    monkeypatch.setenv("LUCENT_STATE_DIR", str(tmp_path / "state"))
    scheduled = main(["schedule", str(job), "--run", "--now", "2024-05-01T13:05Z"])
    assert scheduled == 2
    assert f"credit-bias 20240501T120000Z: exit code 2: {expected}\n" in capsys.readouterr().out
    failed = (tmp_path / "state" / "credit-bias" / "20240501T120000Z.failed").read_text()
    assert failed.endswith(f" exit 2 {window}\n")
    assert not (tmp_path / "state" / "credit-bias" / "20240501T120000Z.done").exists()
