"""``model.tar.gz`` extraction (``container.sidecar.model``): a hostile member is refused with the archive and the
member named, and nothing is written outside the extraction folder -- also where ``tarfile`` has no extraction
filters (Debian bookworm's Python 3.11.2, the image's base): every test runs with ``tarfile.data_filter`` and
without it."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.sidecar.errors import ModelLoadError
from container.sidecar.model import (
    EXTRACTED_DIR_PREFIX,
    check_archive_member,
    extract_model_archive,
    load_handlers,
    prepare_model_dir,
)

INFERENCE = b"""
import numpy as np

def model_fn(model_dir):
    return float(open(f"{model_dir}/weights/scale.txt").read())

def predict_fn(data, model):
    return np.asarray(data, dtype=float) * model
"""


@pytest.fixture(params=["data filter", "no data filter"])
def filters(request, monkeypatch) -> str:
    """Both ways: with ``tarfile.data_filter`` (Python >= 3.11.4) and without it (the image's Python 3.11.2)."""
    if request.param == "no data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.fixture
def temp(tmp_path, monkeypatch) -> Path:
    """The temporary folder ``prepare_model_dir`` extracts into, inside this test's folder."""
    folder = tmp_path / "temp" / "a" / "b"
    folder.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    if kind in tarfile.REGULAR_TYPES:
        info.size = len(data)
        return info, data
    return info, None


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    """A ``model.tar.gz`` holding exactly ``members``, in this order, written as a hostile tool would."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def every_path(root: Path) -> set[Path]:
    return {Path(folder, name) for folder, folders, files in os.walk(root) for name in (*folders, *files)}


# name of the hostile archive -> its members; each is refused, naming this member
def hostile(outside: Path) -> dict[str, tuple[str, list]]:
    """``outside``: a folder outside the extraction folder that the archive tries to write into."""
    return {
        "dot-dot": ("../../../../ESCAPED", [member("../../../../ESCAPED")]),
        "nested dot-dot": ("code/../../ESCAPED", [member("code/inference.py"), member("code/../../ESCAPED")]),
        "absolute": (str(outside / "ABSOLUTE"), [member(str(outside / "ABSOLUTE"))]),
        "symlink out, written through": ("lnk", [member("lnk", tarfile.SYMTYPE, link=str(outside)),
                                                 member("lnk/.bashrc", data=b"echo PWNED")]),
        "symlink up": ("up", [member("up", tarfile.SYMTYPE, link="../../../.."), member("up/ESCAPED")]),
        "symlink through an inside link": ("b", [member("sub/dir", tarfile.DIRTYPE),
                                                 member("a", tarfile.SYMTYPE, link="sub/dir"),
                                                 member("b", tarfile.SYMTYPE, link="a/.."),
                                                 member("a", tarfile.SYMTYPE, link="."),
                                                 member("b/ESCAPED")]),
        "absolute symlink to a file": ("passwd", [member("passwd", tarfile.SYMTYPE, link="/etc/passwd")]),
        "hardlink out": ("hard", [member("hard", tarfile.LNKTYPE, link=str(outside / "victim.txt"))]),
        "hardlink up": ("hard", [member("hard", tarfile.LNKTYPE, link="../../victim.txt")]),
        "character device": ("null", [member("null", tarfile.CHRTYPE)]),
        "block device": ("disk", [member("disk", tarfile.BLKTYPE)]),
        "fifo": ("pipe", [member("pipe", tarfile.FIFOTYPE)]),
        "empty symlink": ("empty", [member("empty", tarfile.SYMTYPE, link="")]),
    }


CASES = list(hostile(Path("/x")))


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "victim.txt").write_text("untouched")
    return folder


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(case, filters, temp, tmp_path, outside):
    name, members = hostile(outside)[case]
    tarball = archive(tmp_path / "model.tar.gz", *members)
    before = every_path(tmp_path)
    with pytest.raises(ModelLoadError) as raised:
        prepare_model_dir(tarball)
    assert str(raised.value).startswith(f"model archive {tarball}: member {name!r} ")
    assert str(raised.value).endswith("; refused")
    assert every_path(tmp_path) == before  # the extraction folder removed, nothing written anywhere else
    assert (outside / "victim.txt").read_text() == "untouched"
    assert not list(temp.glob(f"{EXTRACTED_DIR_PREFIX}*"))


@pytest.mark.parametrize("case", CASES)
def test_the_check_itself_refuses_each_hostile_member(case, filters, tmp_path, outside):
    """``check_archive_member`` on the crafted archive's members, member by member, no extraction: it refuses
    the hostile one whether or not tarfile has filters."""
    name, members = hostile(outside)[case]
    tarball = archive(tmp_path / "model.tar.gz", *members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tarball) as tar, pytest.raises(ModelLoadError, match="; refused$") as raised:
        for info in tar:
            check_archive_member(info, dest, tarball)
    assert f"member {name!r} " in str(raised.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(("info", "why"), [
    (member("/etc/cron.d/x"), "is an absolute path"),
    (member("a/../../x"), "has a '..' component"),
    (member("l", tarfile.SYMTYPE, link="/home/lucent"), "is a symlink to the absolute path '/home/lucent'"),
    (member("d/l", tarfile.SYMTYPE, link="../x"), "is a symlink to '../x', through '..'"),
    (member("h", tarfile.LNKTYPE, link="/etc/shadow"), "is a hardlink to the absolute path '/etc/shadow'"),
    (member("dev", tarfile.CHRTYPE), "is a device file"),
    (member("dev", tarfile.BLKTYPE), "is a device file"),
    (member("p", tarfile.FIFOTYPE), "is a FIFO"),
    (member("weird", b"Z"), "has the special type b'Z'"),
])
def test_each_reason_is_named(info, why, tmp_path):
    with pytest.raises(ModelLoadError) as raised:
        check_archive_member(info[0], tmp_path, "m.tar.gz")
    assert str(raised.value).startswith(f"model archive m.tar.gz: member {info[0].name!r} {why}")


def test_a_member_resolving_outside_through_a_link_already_there_is_refused(tmp_path, outside):
    """The second line of defence: the destination resolved on disk, links included."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "pre").symlink_to(outside)
    with pytest.raises(ModelLoadError, match=r"member 'pre/\.bashrc' resolves outside the extraction folder"):
        check_archive_member(member("pre/.bashrc")[0], dest, "m.tar.gz")
    with pytest.raises(ModelLoadError, match=r"member 'l' is a symlink to 'pre', which resolves outside"):
        check_archive_member(member("l", tarfile.SYMTYPE, link="pre")[0], dest, "m.tar.gz")


def test_a_normal_archive_extracts_and_serves(filters, temp, tmp_path):
    """Nested folders, ``./`` names, code/inference.py, links inside the folder: extracted and served."""
    tarball = archive(tmp_path / "model.tar.gz",
                      member(".", tarfile.DIRTYPE, mode=0o755),
                      member("./code", tarfile.DIRTYPE, mode=0o755),
                      member("./code/inference.py", data=INFERENCE),
                      member("./weights/", tarfile.DIRTYPE, mode=0o755),
                      member("./weights/scale.txt", data=b"2.5"),
                      member("./weights/deep/er/notes.txt", data=b"nested"),
                      member("./weights/current", tarfile.SYMTYPE, link="scale.txt"),
                      member("./weights/deep/link", tarfile.SYMTYPE, link="er"),
                      member("./weights/deep/link/through.txt", data=b"through an inside link"),
                      member("./copy.txt", tarfile.LNKTYPE, link="weights/scale.txt"),
                      member("./tool.sh", data=b"#!/bin/sh\n", mode=0o4777))  # set-uid, world-writable
    folder, extracted = prepare_model_dir(tarball)
    try:
        assert folder.parent == temp
        assert (folder / "weights" / "deep" / "er" / "notes.txt").read_bytes() == b"nested"
        assert (folder / "weights" / "deep" / "er" / "through.txt").read_bytes() == b"through an inside link"
        assert (folder / "weights" / "current").is_symlink() and (folder / "weights" / "current").read_text() == "2.5"
        assert (folder / "copy.txt").read_text() == "2.5"
        assert stat.S_IMODE((folder / "tool.sh").stat().st_mode) == 0o755  # what filter="data" leaves of 0o4777
        handlers = load_handlers(folder)
        body, _ = handlers.invoke(b"1,2\n3,4", "text/csv", "text/csv")
        np.testing.assert_allclose(np.loadtxt(io.BytesIO(body), delimiter=","), [[2.5, 5.0], [7.5, 10.0]])
    finally:
        extracted.cleanup()
    assert not folder.exists()


def test_an_archive_made_by_tarfile_add_extracts(filters, tmp_path):
    """The SageMaker SDK's way of packing a model folder (``tar.add(folder, arcname=".")``), to a given folder."""
    source = tmp_path / "src"
    (source / "code").mkdir(parents=True)
    (source / "code" / "inference.py").write_bytes(INFERENCE)
    x = np.random.default_rng(0).normal(size=(40, 2))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), source / "model.joblib")
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source, arcname=".")
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_model_archive(tarball, dest)
    assert every_path(dest) == {dest / "code", dest / "code" / "inference.py", dest / "model.joblib"}
    assert (dest / "code" / "inference.py").read_bytes() == INFERENCE


@pytest.mark.parametrize("damage", ["cut", "broken deflate"])
def test_a_cut_or_corrupt_archive_is_a_model_load_error_naming_it(damage, tmp_path):
    """A model.tar.gz cut short in transfer (gzip's EOFError) or with a broken deflate stream (zlib.error)
    is the server's ModelLoadError naming the archive, not a traceback; no extraction folder is left."""
    import gzip
    import zlib

    payload = os.urandom(300_000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member = tarfile.TarInfo("model.joblib")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    plain = buffer.getvalue()
    if damage == "cut":
        data = gzip.compress(plain)
        data = data[: len(data) // 2]
    else:  # the member's header and first bytes deflate well, then the stream breaks
        deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: with gzip's header
        data = deflate.compress(plain[:200_000]) + deflate.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 5000
    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(data)
    before = set(Path(tempfile.gettempdir()).glob(f"{EXTRACTED_DIR_PREFIX}{os.getpid()}-*"))
    with pytest.raises(ModelLoadError, match=r"cannot extract .*model\.tar\.gz: the archive is cut short or corrupt"):
        prepare_model_dir(tarball)
    assert set(Path(tempfile.gettempdir()).glob(f"{EXTRACTED_DIR_PREFIX}{os.getpid()}-*")) == before
