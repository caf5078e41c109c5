"""QA4 security finding F8 (/work/qa4/security/REPRO.md): a 1 MB ``model.tar.gz`` wrote 1 GiB to /tmp. The
archive is now read through once before anything is written, and refused, naming it, when its files'
declared sizes would not fit in the free space of the extraction folder (less a margin); while extracting,
the bytes written are counted and extraction stops past the declared total.

Real archives of zero-filled members (a few kB compressed). The free space of the extraction folder is
the one fault injected (``shutil.disk_usage``): no small file system is at hand here. So is a file system
without hard links (``os.link`` failing), on which ``tarfile`` copies a hard link's target: the one way a
real archive writes more than its files declare.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

from container.sidecar.errors import ModelLoadError
from container.sidecar.model import (
    EXTRACTED_DIR_PREFIX,
    MIN_FREE_SPACE_MARGIN,
    extract_model_archive,
    prepare_model_dir,
)
from tests.test_model_archive import filters  # noqa: F401 - both ways: with tarfile's data filter and without

MiB = 2**20
Usage = namedtuple("Usage", "total used free")


class Zeros:
    """``size`` zero bytes, read in pieces: a large member without holding it in memory."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def zero_archive(path: Path, *sizes: int, hardlink: bool = False) -> Path:
    """A ``model.tar.gz`` of zero-filled files ``file-<i>`` of these sizes (and a hard link to the first)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"file-{i}")
            info.size = size
            tar.addfile(info, Zeros(size))
        if hardlink:
            info = tarfile.TarInfo("copy-of-file-0")
            info.type, info.linkname = tarfile.LNKTYPE, "file-0"
            tar.addfile(info)
    return path


def free_space(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(real(path).total, 0, free))


def test_a_bomb_is_refused_before_anything_is_written(filters, tmp_path, monkeypatch):  # noqa: F811
    tarball = zero_archive(tmp_path / "model.tar.gz", 200 * MiB, 56 * MiB)
    assert tarball.stat().st_size < 2 * MiB  # 256 MiB once extracted
    dest = tmp_path / "dest"
    dest.mkdir()
    free_space(monkeypatch, 100 * MiB)
    with pytest.raises(ModelLoadError) as error:
        extract_model_archive(tarball, dest)
    message = str(error.value)
    assert message.startswith(f"model archive {tarball}: its 2 file(s) hold 256.0 MiB ({256 * MiB} bytes)"), message
    assert f"{dest} has 100.0 MiB free" in message and message.rstrip().endswith("a larger folder")
    assert list(dest.iterdir()) == []  # nothing written


def test_the_margin_is_kept_free(tmp_path, monkeypatch):
    tarball = zero_archive(tmp_path / "model.tar.gz", 8 * MiB)
    dest = tmp_path / "dest"
    dest.mkdir()
    free_space(monkeypatch, 8 * MiB + MIN_FREE_SPACE_MARGIN - 1)  # fits, but not with the margin
    with pytest.raises(ModelLoadError, match="once extracted"):
        extract_model_archive(tarball, dest)
    assert list(dest.iterdir()) == []
    free_space(monkeypatch, 8 * MiB + MIN_FREE_SPACE_MARGIN)
    extract_model_archive(tarball, dest)
    assert (dest / "file-0").stat().st_size == 8 * MiB


def test_a_large_model_extracts_where_there_is_room(filters, tmp_path):  # noqa: F811
    """No fixed cap: the real free space decides (a model of 48 MiB here)."""
    tarball = zero_archive(tmp_path / "model.tar.gz", 40 * MiB, 8 * MiB)
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_model_archive(tarball, dest)
    assert sorted((p.name, p.stat().st_size) for p in dest.iterdir()) == [("file-0", 40 * MiB), ("file-1", 8 * MiB)]


def test_the_server_refuses_the_bomb_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Through ``prepare_model_dir``, as the model server extracts a ``model.tar.gz`` in the temp folder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model = tmp_path / "model"
    model.mkdir()
    tarball = zero_archive(model / "model.tar.gz", 256 * MiB)
    free_space(monkeypatch, 64 * MiB)
    with pytest.raises(ModelLoadError, match=f"model archive {tarball}: .* 256.0 MiB"):
        prepare_model_dir(model)
    assert not [p for p in temp.iterdir() if p.name.startswith(EXTRACTED_DIR_PREFIX)]


def test_extraction_stops_past_the_declared_total(filters, tmp_path, monkeypatch):  # noqa: F811
    """A hard link extracted as a copy of its target (a file system without hard links) writes bytes no
    file declared: extraction stops there instead of writing them."""
    tarball = zero_archive(tmp_path / "model.tar.gz", 4 * MiB, hardlink=True)
    dest = tmp_path / "dest"
    dest.mkdir()

    def no_hard_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    with pytest.raises(ModelLoadError, match=f"model archive {tarball}: member 'file-0' would take the bytes "
                                             f"extracted past the {4 * MiB} its files declare"):
        extract_model_archive(tarball, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["file-0"]  # the copy was never written
