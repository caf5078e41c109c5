"""A stop request (SIGTERM) never tears a publication or a staging folder: it is handled right after."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from analyzer.output import STAGING_PREFIX, OutputStaging, held_stop_signals, read_manifest


class Stopped(BaseException):
    pass


@pytest.fixture
def stop_handler():
    def stop(signum, frame):  # noqa: ARG001
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_stop_request_inside_the_block_is_handled_after_it(stop_handler) -> None:
    done = []
    with pytest.raises(Stopped), held_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("the rest of the block")
    assert done == ["the rest of the block"]


def test_a_stop_request_during_commit_publishes_every_file_first(tmp_path: Path, stop_handler, monkeypatch) -> None:
    out = tmp_path / "out"
    staging = OutputStaging(out)
    for name in ("analysis.json", "report.html", "report.pdf"):
        staging.write_text(name, name)
    real_replace = os.replace

    def replace_and_stop(source, target):  # the stop request arrives in the middle of the renames
        real_replace(source, target)
        if str(target).endswith("analysis.json"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace_and_stop)
    with pytest.raises(Stopped):
        staging.commit()
    assert read_manifest(out) == ["analysis.json", "report.html", "report.pdf"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == read_manifest(out)
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_a_stop_request_while_staging_opens_leaves_no_staging_folder(tmp_path: Path, stop_handler, monkeypatch) -> None:
    import analyzer.output

    def probe_and_stop(folder, output_dir):  # the stop request arrives while the folder is probed
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(analyzer.output, "_probe_write", probe_and_stop)
    with pytest.raises(Stopped):
        OutputStaging(tmp_path / "out")
    assert not list((tmp_path / "out").glob(f"{STAGING_PREFIX}*"))


def test_a_stop_request_held_while_the_folder_is_made_leaves_no_staging_folder(tmp_path: Path, stop_handler,
                                                                                monkeypatch) -> None:
    """The request is held while the folder is made and locked, and handled right after: at that moment the
    folder exists, and the constructor must remove it (no object is returned, so no ``with`` block would)."""
    import analyzer.output

    real_lock = analyzer.output._lock_folder

    def lock_and_stop(folder):
        os.kill(os.getpid(), signal.SIGTERM)  # held: handled when the folder is made and locked
        return real_lock(folder)

    monkeypatch.setattr(analyzer.output, "_lock_folder", lock_and_stop)
    with pytest.raises(Stopped):
        OutputStaging(tmp_path / "out")
    assert not list((tmp_path / "out").glob(f"{STAGING_PREFIX}*"))
