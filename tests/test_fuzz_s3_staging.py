"""Property tests for S3 key staging (``lucent launch``): whatever keys a bucket holds under an input
prefix, each ends staged inside the destination folder or in a clear ``LaunchError``; never a write
outside it and never another exception.

Thousands of key sets go through ``staging_targets`` (the function that maps keys to paths); fewer go
through a real moto S3 server on 127.0.0.1 and ``Store.download``, which writes the files."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from analyzer.redact import redact
from container.launcher import LaunchError, Location, Store, printable, staging_targets
from tests.conftest import moto_s3, use_test_credentials

# Segments that try to leave the folder or break a file name, mixed with ordinary and odd names.
HOSTILE_SEGMENTS = ["", ".", "..", "...", "\\", "..\\..", "a\\b", "\x00", "a\x00b", "\n", "\r", "\x7f", "\t",
                    "é", "名前", "𝔘", "\u202e", " ", "x" * 255, "x" * 256, "ü" * 128, "\ud800", "~", "$HOME", "*", "%2e%2e"]
ordinary = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFFF, exclude_characters="/"), min_size=1,
                   max_size=12)
# One hostile segment in four: enough to hit every refusal, few enough that many key sets are staged.
segments = st.one_of(ordinary, ordinary, ordinary, st.sampled_from(HOSTILE_SEGMENTS))
relative_keys = st.lists(segments, min_size=1, max_size=6).map("/".join)
PREFIX = "in/data"


def check_targets(location: Location, keys: list[str], dest: Path) -> dict[str, Path] | None:
    """The property: a clear ``LaunchError`` (naming a key, or saying nothing matched), or one distinct
    path per key, inside ``dest``, made of the key's own segments."""
    try:
        targets = staging_targets(location, keys, dest)
    except LaunchError as error:
        message = str(error)
        assert ("no object at this key" in message or "both a file and a folder" in message
                or any(redact(f"s3://jobs/{printable(key)}:") in message for key in keys)), message
        assert "\x00" not in message and "\n" not in message
        event("refused")
        return None
    event("staged")
    root = dest.resolve()
    assert len(set(targets.values())) == len(targets)
    for key, target in targets.items():
        assert target.resolve().is_relative_to(root) and target.resolve() != root, (key, target)
        relative = target.relative_to(dest).as_posix()
        assert key == location.key or key == f"{location.prefix}{relative}", (key, relative)
    return targets


@settings(max_examples=1000, deadline=None)
@given(st.lists(relative_keys, min_size=1, max_size=5), st.sampled_from([PREFIX, f"{PREFIX}/", ""]))
@example(["../../../../evil"], PREFIX)
@example(["/abs"], PREFIX)
@example(["a//b"], PREFIX)
@example(["a", "a/b"], PREFIX)
@example(["ok.csv", "..\\..\\evil"], PREFIX)
@example(["\ud800"], "")
def test_every_key_below_a_prefix_is_staged_inside_or_refused(tmp_path_factory, relatives, prefix):
    dest = tmp_path_factory.getbasetemp() / "dest"
    keys = [f"{prefix.rstrip('/')}/{relative}" if prefix else relative for relative in relatives]
    keys.append("in/database/other.csv")  # shares the prefix as a string, not as a folder: never staged
    targets = check_targets(Location(f"s3://jobs/{prefix}"), keys, dest)
    if targets is not None and prefix:
        assert "in/database/other.csv" not in targets


@settings(max_examples=400, deadline=None)
@given(relative_keys)
@example("..")
@example(".")
@example("a\\b")
@example("x\x00")
def test_a_single_object_is_staged_by_its_name_or_refused(tmp_path_factory, relative):
    key = f"in/{relative}"
    if key.endswith("/"):
        return  # a folder marker names a prefix, not an object
    targets = check_targets(Location(f"s3://jobs/{key}"), [key], tmp_path_factory.getbasetemp() / "dest")
    if targets is not None:
        assert [path.name for path in targets.values()] == [key.rsplit("/", 1)[-1]]


# --- the same through a real S3 API --------------------------------------------------------------------

# What an S3 API carries: UTF-8 (no lone surrogates), no CR/LF (moto's HTTP router refuses them), at most
# 1,024 bytes a key.
S3_SEGMENTS = [s for s in HOSTILE_SEGMENTS if "\ud800" not in s and "\n" not in s and "\r" not in s]
s3_ordinary = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFFF, exclude_characters="/",
                                    exclude_categories=("Cs",)), min_size=1, max_size=12)
s3_segments = st.one_of(s3_ordinary, s3_ordinary, st.sampled_from(S3_SEGMENTS))
s3_keys = st.lists(st.lists(s3_segments, min_size=1, max_size=4).map("/".join), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def store():
    with moto_s3() as url, pytest.MonkeyPatch.context() as patch:
        use_test_credentials(patch, AWS_ENDPOINT_URL=url)
        store = Store()
        store.client.create_bucket(Bucket="jobs")
        yield store


def files_below(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s3_keys)
@example(["../../../../evil"])
@example(["ok.csv", "/abs.csv"])
@example(["a", "a/b"])
def test_download_writes_only_inside_the_destination(store, relatives):
    prefix = f"{uuid.uuid4().hex}/in"  # one prefix per example: no key of an earlier example is seen
    keys = [f"{prefix}/{relative}" for relative in relatives if len(f"{prefix}/{relative}".encode()) <= 1024]
    for key in keys:
        store.client.put_object(Bucket="jobs", Key=key, Body=key.encode())
    sandbox = Path(tempfile.mkdtemp(prefix="lucent-fuzz-"))
    try:
        (sandbox / "sentinel").write_bytes(b"untouched")
        dest = sandbox / "a" / "b" / "c" / "dest"  # room to climb: '..' x4 would reach the sandbox
        dest.mkdir(parents=True)
        try:
            store.download(Location(f"s3://jobs/{prefix}"), dest)
        except LaunchError:
            assert files_below(sandbox) == {"sentinel": b"untouched"}  # keys are checked before any write
            event("refused")
            return
        event("staged")
        written = files_below(dest)
        assert files_below(sandbox) == {"sentinel": b"untouched", **{f"a/b/c/dest/{k}": v for k, v in written.items()}}
        expected = {key: key.encode() for key in keys if not key.endswith("/")}
        assert {f"{prefix}/{relative}": body for relative, body in written.items()} == expected
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
        assert not os.path.exists(sandbox)


def test_a_key_with_nothing_at_or_below_it_is_a_plain_prefix_as_sagemakers_s3prefix(tmp_path):
    """s3://b/data/train with only data/train.csv (seed 001's prepared_data/train): SageMaker's S3Prefix
    input stages it; so does Lucent, relative to the key's folder."""
    keys = ["data/train.csv", "data/train_extra/part-0.csv", "data/test.csv"]
    targets = staging_targets(Location("s3://jobs/data/train"), keys, tmp_path)
    assert {key: path.relative_to(tmp_path).as_posix() for key, path in targets.items()} == {
        "data/train.csv": "train.csv", "data/train_extra/part-0.csv": "train_extra/part-0.csv"}
    # An object at the key, or objects below key/, win as before: the plain prefix is only a fallback.
    assert list(staging_targets(Location("s3://jobs/data/train"), [*keys, "data/train/a.csv"], tmp_path)) == [
        "data/train/a.csv"]
    with pytest.raises(LaunchError, match="no object at this key"):
        staging_targets(Location("s3://jobs/data/validation"), keys, tmp_path)
