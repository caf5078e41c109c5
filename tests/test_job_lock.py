"""One `lucent run` at a time on an output folder: a second one (a cron job that overran) is refused at once,
exit 1, naming the folder and the running job's pid, and writes neither the message nor any output. The
lock is the kernel's (flock), released however the holder ends. Real processes, real locks."""

# ruff: noqa: F811 - `blocking_job` is test_job_stop's fixture, imported

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.output import OutputFolderBusy, lock_holder, output_folder_lock
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot
from tests.test_job import SIMPLE_CONFIG, SIMPLE_DATA
from tests.test_job_stop import blocking_job, digest, start_blocked_job  # noqa: F401 - a fixture


def lucent_run(job: JobRoot) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root)],
                          capture_output=True, text=True, timeout=300)


def stop(process: subprocess.Popen, signum: int) -> str:
    try:
        os.killpg(process.pid, signum)
        return process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_second_run_on_a_busy_output_folder_is_refused_and_changes_nothing(blocking_job, tmp_path):
    job = blocking_job
    # What a second run would otherwise remove as stale, before publishing over the first one's results.
    stale = job.output_dir / ".lucent-work" / "shap" / "0123456789abcdef01234567" / "shard-000000.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a checkpoint of the running job")
    first = start_blocked_job(job, tmp_path / "reached")  # holds the lock; it removed the earlier message
    try:
        assert not (job.root / "message").exists()
        before = digest(job.output_dir)
        second = lucent_run(job)
        assert first.poll() is None  # refused while the first one still runs: it did not wait for it
        assert second.returncode == 1, second.stderr
        assert (f"Not started: another job (pid {first.pid}) is running on the output folder {job.output_dir}: "
                "it holds the folder's lock until it ends.") in second.stderr
        assert f"no exit message in {job.root / 'message'}, which belongs to the job that is running" in second.stderr
        assert "Traceback" not in second.stderr
        assert not (job.root / "message").exists()  # the running job's message file: not written
        assert digest(job.output_dir) == before  # its staging folder and the checkpoints included
        assert "Starting Lucent" not in second.stderr  # nothing of the job itself ran
    finally:
        stderr = stop(first, signal.SIGTERM)
    assert first.returncode == 2, stderr
    assert job.message.startswith("Stopped: the job was stopped (SIGTERM)"), job.message  # the first run's own
    assert stale.read_bytes() == b"a checkpoint of the running job"


def test_the_lock_goes_with_a_killed_run(blocking_job, tmp_path):
    job = blocking_job
    first = start_blocked_job(job, tmp_path / "reached")
    assert lock_holder(job.output_dir) == first.pid
    stop(first, signal.SIGKILL)  # no cleanup at all: the kernel releases the lock
    assert first.returncode == -signal.SIGKILL
    assert lock_holder(job.output_dir) is None
    again = lucent_run(job)
    assert again.returncode == 0, again.stderr
    assert job.message == SUCCESS_MESSAGE


def test_the_lock_names_its_holder_and_refuses_a_second_holder(tmp_path):
    output = tmp_path / "job" / "output"
    with output_folder_lock(output) as locked:
        assert locked and output.is_dir()
        assert lock_holder(output) == os.getpid()
        with pytest.raises(OutputFolderBusy) as busy, output_folder_lock(output):
            pass  # a second open file: flock refuses it even in this process
        assert busy.value.holder == os.getpid()
        assert str(busy.value) == (f"another job (pid {os.getpid()}) is running on the output folder {output}: "
                                   "it holds the folder's lock until it ends")
    assert lock_holder(tmp_path) is None
    assert not (tmp_path / "job").exists()  # the folders made for the lock, empty, are gone with it


def test_the_lock_keeps_a_folder_that_holds_something(tmp_path):
    output = tmp_path / "output"
    with output_folder_lock(output):
        (output / "analysis.json").write_text("{}")
    assert (output / "analysis.json").read_text() == "{}"
    with output_folder_lock(output):  # free again
        pass


def test_a_folder_that_cannot_be_made_runs_unlocked_and_the_job_names_it(tmp_path):
    (tmp_path / "output").write_text("a file where the output folder should be")
    with output_folder_lock(tmp_path / "output") as locked:
        assert not locked
    job = JobRoot(tmp_path)
    job.write_data(SIMPLE_DATA)
    job.write_config(SIMPLE_CONFIG)  # valid: the job gets as far as its output folder
    assert job.run() == 1
    assert job.message == (f"ClientError: The output folder {job.output_dir} cannot be created: {job.output_dir} is a "
                           "file, not a folder. Move the file away or use another processing root.")


def test_lock_holder_reads_proc_locks_lines(tmp_path):
    """The format of /proc/locks (fs/locks.c): a holder's line, and a waiter's, which names no holder."""
    folder = tmp_path / "out"
    folder.mkdir()
    stats = os.stat(folder)
    where = f"{os.major(stats.st_dev):02x}:{os.minor(stats.st_dev):02x}:{stats.st_ino}"
    locks = tmp_path / "locks"
    locks.write_text(f"1: POSIX  ADVISORY  WRITE 11 {where} 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 22 {where} 0 EOF\n"
                     f"2: FLOCK  ADVISORY  WRITE 33 00:00:1 0 EOF\n3: FLOCK  ADVISORY  WRITE 44 {where} 0 EOF\n")
    assert lock_holder(folder, locks) == 44
    locks.write_text(f"3: FLOCK  ADVISORY  WRITE 0 {where} 0 EOF\n")  # a holder in a pid namespace not seen here
    assert lock_holder(folder, locks) is None
    assert lock_holder(folder, tmp_path / "missing") is None
    assert lock_holder(Path("/nonexistent/folder")) is None
