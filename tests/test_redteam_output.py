"""Red-team findings on the output folder: a disk with room for a folder but not for a file is found
before the work, and a write that fails in the staging folder names the file the user will look for.
Real small tmpfs mounts (root only; skipped otherwise)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from analyzer.errors import UserError
from analyzer.output import STAGING_PREFIX, OutputStaging, check_output_folder, write_bytes_atomic
from tests.conftest import JobRoot
from tests.test_inputs_hostile import bias_job, fill, mounted_tmpfs, read_only, run_fails


def use_every_inode(folder: Path, leave: int) -> list[Path]:
    """Create empty files in ``folder`` until its filesystem has no inode left, then remove ``leave`` of
    them: blocks stay free, but only ``leave`` new files or folders can be made."""
    made = []
    while True:
        path = folder / f"inode-{len(made)}"
        try:
            path.touch(exist_ok=False)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            break
        made.append(path)
    for path in made[-leave:] if leave else []:
        path.unlink()
    return made[:-leave] if leave else made


@pytest.fixture
def one_inode_left(tmp_path) -> Path:
    """A small tmpfs with free blocks and one free inode: the staging folder fits, no file does."""
    folder = tmp_path / "output"
    with mounted_tmpfs(folder, "size=256k,nr_inodes=32"):
        use_every_inode(folder, leave=1)
        stats = os.statvfs(folder)
        assert stats.f_bavail > 0 and stats.f_favail == 1
        yield folder


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("inode-"))


def test_check_output_folder_writes_a_file_not_only_a_folder(one_inode_left):
    with pytest.raises(UserError) as raised:
        check_output_folder(one_inode_left)
    assert str(raised.value) == (f"The output folder {one_inode_left} cannot be written ({one_inode_left}: No space "
                                 "left on device). Make it writable, free some space, or use another processing root.")
    assert entries(one_inode_left) == []  # the probe and its folder are gone


def test_output_staging_fails_before_the_work_and_leaves_nothing(one_inode_left):
    with pytest.raises(UserError, match=f"The output folder {one_inode_left} cannot be written"):
        OutputStaging(one_inode_left)
    assert entries(one_inode_left) == []
    assert os.statvfs(one_inode_left).f_favail == 1


def test_a_job_on_a_disk_with_no_room_for_a_file_fails_before_reading_the_data(tmp_path, capsys):
    job = bias_job(JobRoot(tmp_path / "job"))
    with mounted_tmpfs(job.output_dir, "size=256k,nr_inodes=32"):
        use_every_inode(job.output_dir, leave=1)
        run_fails(job, capsys, f"The output folder {job.output_dir} cannot be written", "No space left on device")


def test_a_failed_write_in_staging_names_the_published_path(tmp_path):
    output = tmp_path / "output"
    with mounted_tmpfs(output, "size=256k"):
        fill(output, leave=16 * 1024)
        with pytest.raises(OSError) as raised, OutputStaging(output) as staging:
            write_bytes_atomic(staging.path("reports/report.html"), bytes(64 * 1024))
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(output / "reports" / "report.html")
        assert not any(p.name.startswith(STAGING_PREFIX) for p in output.iterdir())


def test_a_job_that_fills_the_disk_names_the_output_file_not_the_staging_folder(tmp_path):
    job = bias_job(JobRoot(tmp_path / "job"), methods={"pre_training_bias": {"methods": "all"}})
    with mounted_tmpfs(job.output_dir, "size=256k"):
        fill(job.output_dir, leave=4096)
        assert job.run() == 1
        assert job.message.startswith(f"ClientError: cannot write {job.output_dir}/"), job.message
        assert STAGING_PREFIX not in job.message and ".tmp" not in job.message, job.message


def test_final_path_maps_only_staged_files(tmp_path):
    with OutputStaging(tmp_path / "out") as staging:
        staged = staging.staging_dir
        assert staging.final_path(str(staged / "a" / ".report.html.k2j_9x0a.tmp")) == str(tmp_path / "out" / "a" /
                                                                                         "report.html")
        assert staging.final_path(str(staged / "analysis.json")) == str(tmp_path / "out" / "analysis.json")
        assert staging.final_path("/etc/passwd") == "/etc/passwd"
        assert staging.final_path(None) is None


def test_a_folder_the_job_cannot_write_publishes_nothing(tmp_path):
    """An earlier run's folder this job cannot write (another user's; here a read-only mount, which binds
    root too): the commit used to publish analysis.json, then fail on the folder, half the run beside the
    earlier one's other files. Now nothing is renamed and the error names the folder."""
    output = tmp_path / "output"
    with OutputStaging(output) as staging:
        staging.write_text("analysis.json", "earlier")
        staging.write_text("explanations_shap/out.csv", "earlier")
        staging.commit()
    with read_only(output / "explanations_shap"):
        with OutputStaging(output) as staging:
            staging.write_text("analysis.json", "this run")
            staging.write_text("explanations_shap/out.csv", "this run")
            with pytest.raises(UserError, match=r"explanations_shap cannot be written .*Nothing was published"):
                staging.commit()
        assert (output / "analysis.json").read_text() == "earlier"
        assert not any(p.name.startswith(STAGING_PREFIX) for p in output.iterdir())


def test_no_writable_temporary_folder_is_named_before_the_work(tmp_path, monkeypatch):
    """docker run --read-only without a tmpfs at /tmp: the report's process died at its start with a bare
    traceback, and the job said so only after all its work. Python's own search (TMPDIR, /tmp, ...) is
    pointed at one read-only folder here: the job refuses at once, naming what to do."""
    import tempfile

    from analyzer.report.process import check_temporary_folder

    check_temporary_folder()  # this machine has one
    with read_only(tmp_path / "tmp"):
        monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(tmp_path / "tmp")])
        monkeypatch.setattr(tempfile, "tempdir", None)
        with pytest.raises(UserError, match=r"No temporary folder can be written .*--tmpfs /tmp"):
            check_temporary_folder()
        job = bias_job(JobRoot(tmp_path / "job"), methods={"pre_training_bias": {"methods": ["CI"]},
                                                           "report": {"name": "report"}})
        assert job.run() == 1
        assert job.message.startswith("ClientError: No temporary folder can be written"), job.message
        assert job.output_files() == []
