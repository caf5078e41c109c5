"""QA4 security finding F8 (/work/qa4/security/REPRO.md): a 1 MB ``model.tar.gz`` wrote 1 GiB to /tmp. The
archive is now read through once before anything is written, and refused, naming it, when its files'
declared sizes would not fit in the free space of the extraction folder (less a margin); while extracting,
the bytes written are counted and extraction stops past the declared total. An archive of more members than
``MAX_ARCHIVE_MEMBERS`` (millions of empty files: no free space, an inode each) is refused too, before anything
is written.

Real archives of zero-filled members (a few kB compressed). The free space of the extraction folder is
the one fault injected (``shutil.disk_usage``): no small file system is at hand here. So is a file system
without hard links (``os.link`` failing), on which ``tarfile`` copies a hard link's target: the one way a
real archive writes more than its files declare.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

from container.sidecar import model
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


def many_members(path: Path, count: int, then: int = 0) -> Path:
    """A ``model.tar.gz`` of ``count`` empty members, a folder, a link and files after it (then ``then`` more
    empty files, of 100 random bytes each, so that they do not compress away)."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count + then):
            info = tarfile.TarInfo("sub" if i == 0 else "link" if i == 1 else f"sub/file-{i}")
            if i == 0:
                info.type = tarfile.DIRTYPE
            elif i == 1:
                info.type, info.linkname = tarfile.SYMTYPE, "sub"
            body = os.urandom(100) if i >= count else b""
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def test_an_archive_of_too_many_members_is_refused_before_anything_is_written(filters, tmp_path,  # noqa: F811
                                                                              monkeypatch):
    """Empty files take no free space but an inode each: an archive of millions of them (a few MB) would fill
    the inode table. One holding more than ``MAX_ARCHIVE_MEMBERS`` members (files, folders and links) is refused,
    naming it and the cap, before anything is extracted. Real archives; the cap is lowered to 20 (one of
    100,000 empty files takes some 13 s to write and read here)."""
    monkeypatch.setattr(model, "MAX_ARCHIVE_MEMBERS", 20)
    at_cap = many_members(tmp_path / "at-cap.tar.gz", 20)
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_model_archive(at_cap, dest)
    assert len(list(dest.rglob("*"))) == 20 and (dest / "link").is_symlink()

    over = many_members(tmp_path / "model.tar.gz", 21)
    dest = tmp_path / "dest-over"
    dest.mkdir()
    with pytest.raises(ModelLoadError) as error:
        extract_model_archive(over, dest)
    assert str(error.value) == (
        f"model archive {over}: it holds more than 20 members (files, folders and links), far more than a model "
        "folder needs, each taking an inode however small; refused. Leave out of the archive what the model does "
        "not load (caches, a whole Python environment)")
    assert list(dest.iterdir()) == []  # nothing written


def test_the_member_count_stops_reading_at_the_cap(tmp_path, monkeypatch):
    """The members past the cap are not even read: an archive cut short after them (the rest of its millions
    of members, in the attack) is refused for its member count, not for the cut."""
    monkeypatch.setattr(model, "MAX_ARCHIVE_MEMBERS", 20)
    tarball = many_members(tmp_path / "model.tar.gz", 21, then=3000)
    data = tarball.read_bytes()
    tarball.write_bytes(data[:len(data) // 2])  # the gzip stream ends long after the 21st member's header
    with pytest.raises(ModelLoadError, match=f"model archive {tarball}: it holds more than 20 members"):
        extract_model_archive(tarball, tmp_path)


def test_the_server_refuses_too_many_members_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(model, "MAX_ARCHIVE_MEMBERS", 20)
    folder = tmp_path / "model"
    folder.mkdir()
    tarball = many_members(folder / "model.tar.gz", 21)
    with pytest.raises(ModelLoadError, match=f"model archive {tarball}: it holds more than 20 members"):
        prepare_model_dir(folder)
    assert list(temp.iterdir()) == []
