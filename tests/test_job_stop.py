"""Stopping `lucent run`: SIGTERM (SageMaker's StopProcessingJob) and SIGINT (Ctrl-C) stop the job the same
way, and no earlier run's exit message outlives a run that started. Real processes, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from container.demo import write_demo_job
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot

# A model whose prediction blocks (until the job is stopped) once LUCENT_TEST_MARKER is set, after saying
# so by creating that file: the test signals the job at a known point, mid-work. It waits in short steps, as
# a model at work runs Python steps: a signal the kernel hands to another thread (numpy's, when the main
# thread has one pending already) is handled at the next step, whereas one long wait is not interrupted.
BLOCKING_SCRIPT = """\
import os, threading
def predict_fn(data, model):
    marker = os.environ.get("LUCENT_TEST_MARKER")
    if marker:
        open(marker, "w").close()
        for _ in range(2400):
            threading.Event().wait(0.05)
    return model.predict_proba(data)
"""


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``path`` exists (the job reached the model); fails early if the job ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the job ended (code {process.returncode}) before reaching the model"
        assert time.monotonic() < deadline, f"the job did not reach the model within {timeout} s"
        time.sleep(0.02)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def blocking_job(tmp_path) -> JobRoot:
    """A job that ran once (Completed, results published) and whose model blocks on the next run."""
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=200, seed=5, with_model=True))
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"] = {"post_training_bias": {"methods": ["DPPL"]}}
    job.write_config(config)
    (job.root / "input" / "model" / "code").mkdir()
    (job.root / "input" / "model" / "code" / "inference.py").write_text(BLOCKING_SCRIPT)
    assert job.run() == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    return job


def start_blocked_job(job: JobRoot, marker: Path) -> subprocess.Popen:
    """`lucent run` in a process group of its own (as a terminal's foreground job), blocked in the model."""
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root)],
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "LUCENT_TEST_MARKER": str(marker)})
    wait_for(marker, process)
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_says_so_keeps_the_earlier_results_and_exits_2(blocking_job, tmp_path, signum):
    job = blocking_job
    before = digest(job.output_dir)
    process = start_blocked_job(job, tmp_path / "reached")
    try:
        os.killpg(process.pid, signum)  # Ctrl-C signals the whole foreground group
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert f"Signal {int(signum)} received, cleaning up" in stderr
    assert job.message == (f"Stopped: the job was stopped ({name}) before it finished; {job.output_dir} still holds "
                           "an earlier run's results (analysis.json, ...), not this run's: this run published nothing")
    assert digest(job.output_dir) == before  # the earlier results, untouched


def test_a_killed_run_leaves_no_earlier_message_standing(blocking_job, tmp_path):
    job = blocking_job
    process = start_blocked_job(job, tmp_path / "reached")
    # The job has started: the earlier "Completed" is gone already (SIGKILL lets the job write nothing).
    assert not (job.root / "message").exists()
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (job.root / "message").exists()
    assert (job.output_dir / "analysis.json").is_file()


def test_a_failed_run_names_the_earlier_results_it_did_not_replace(blocking_job):
    job = blocking_job
    before = digest(job.output_dir)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    job.write_config({**config, "label": "no_such_column"})
    assert job.run() == 1
    assert job.message.startswith("ClientError: "), job.message
    assert job.message.endswith(f"; {job.output_dir} still holds an earlier run's results (analysis.json, ...), "
                                "not this run's: this run published nothing"), job.message
    assert digest(job.output_dir) == before


def test_a_first_failed_run_says_nothing_about_earlier_results(tmp_path):
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=50))
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    job.write_config({**config, "label": "no_such_column"})
    assert job.run() == 1
    assert "earlier run" not in job.message


def test_a_successful_shap_run_leaves_no_empty_work_folder(tmp_path):
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=60, seed=2, with_model=True))
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"] = {"shap": {"num_clusters": 1, "num_samples": 20, "seed": 0}}
    job.write_config(config)
    (job.output_dir / ".lucent-work" / "mine").mkdir(parents=True)
    (job.output_dir / ".lucent-work" / "mine" / "keep.txt").write_text("not empty: kept")
    assert job.run() == 0, job.message
    assert (job.output_dir / ".lucent-work" / "mine" / "keep.txt").is_file()
    (job.output_dir / ".lucent-work" / "mine" / "keep.txt").unlink()
    assert job.run() == 0, job.message
    assert not (job.output_dir / ".lucent-work").exists(), job.output_files()


def read_until(process: subprocess.Popen, text: str) -> None:
    """Read the job's log until a line holds ``text`` (the job got that far); fails if it ended first."""
    for line in process.stderr:
        if text in line:
            return
    raise AssertionError(f"the job ended (code {process.wait()}) before logging {text!r}")


# (log line to wait for, signals then sent to the job's pid), in order: the job is stopped by the first
# SIGINT, and what follows lands while it stops, while it cleans up, or once it has written its message.
REPEATED_STOPS = {
    "at-once": [("", [signal.SIGINT, signal.SIGINT, signal.SIGTERM])],
    "while-cleaning-up": [("", [signal.SIGINT]), ("Signal 2 received, cleaning up", [signal.SIGINT, signal.SIGTERM])],
    "after-the-message": [("", [signal.SIGINT]), ("exit_message: ", [signal.SIGTERM, signal.SIGINT, signal.SIGTERM])],
}


@pytest.mark.parametrize("sequence", list(REPEATED_STOPS))
def test_repeated_stop_requests_stop_the_job_once(blocking_job, tmp_path, sequence):
    """Ctrl-C pressed again, or SageMaker's SIGTERM after the user's SIGINT: the first request stops the job,
    the others change nothing; never killed by a later one (exit 143) or a traceback. Several times each."""
    job = blocking_job
    before = digest(job.output_dir)
    for attempt in range(3):
        process = start_blocked_job(job, tmp_path / f"reached-{attempt}")
        try:
            for wait, signals in REPEATED_STOPS[sequence]:
                if wait:
                    read_until(process, wait)
                for signum in signals:
                    os.kill(process.pid, signum)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == 2, (attempt, stderr)
        assert "Traceback" not in stderr, stderr
        assert job.message == (f"Stopped: the job was stopped (SIGINT) before it finished; {job.output_dir} still "
                               "holds an earlier run's results (analysis.json, ...), not this run's: this run "
                               "published nothing"), (attempt, job.message)
        assert digest(job.output_dir) == before


def test_a_stop_request_during_the_cleanup_is_recorded_and_one_swallowed_is_raised_again():
    """In this process, with real signals: a second request while the first one's ``JobStopped`` is handled
    (a ``finally`` under way) is recorded, not raised; after code that caught the first one and went on,
    the next request stops again (the job is never left unstoppable). The handlers are restored after."""
    from container.job import JobStopped, stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as requests:
        with pytest.raises(JobStopped) as stopped:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # while cleaning up: recorded only
        assert stopped.value.signum == signal.SIGINT
        assert requests.received == [signal.SIGINT, signal.SIGTERM]
        with pytest.raises(JobStopped) as again:  # the first was caught above and the block went on
            os.kill(os.getpid(), signal.SIGTERM)
        assert again.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
