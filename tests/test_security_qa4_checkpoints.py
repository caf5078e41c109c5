"""QA4 security findings F1 and F2 (/work/qa4/security/REPRO.md): SHAP checkpoint stores and the launcher
never remove, copy or publish what the job did not write.

F1: ``lucent.checkpoint_uri`` named a folder (or S3 prefix) whose ``shap/`` held the user's own files; a run
removed them all as "stale SHAP checkpoints". Now only checkpoint-shaped names (``is_checkpoint_name``) are
listed for removal or pulled, a folder store walks no deeper than a checkpoint's name and through no link,
a local ``checkpoint_uri`` outside the processing root is refused as ``dataset_uri`` is (with the same
``--allow-paths-outside-root``), and ``lucent launch`` refuses a local one.

F2: ``lucent launch --image``: the image made ``/opt/ml/output/message`` or the work area's ``shap`` folder a
symbolic link to a file or folder of the launching machine, which the launcher then published (the message)
or uploaded (as checkpoints). Links the job made are now skipped with a warning naming them.

Later rounds: a user's file named exactly as a checkpoint (``shap/photos/shard-000000.npz``) was still taken for
one: a checkpoint's fingerprint must now be shaped as a job makes it (24 lowercase hex digits). And the exit
message, which an image can make gigabytes long, is read and published 1 MiB at most, cut with a note.

Real files, links and a moto S3 server on 127.0.0.1; the job's endpoint is a loopback HTTP model.
"""

# ruff: noqa: F811 - the fixtures shared with other test files are imported, then named as test arguments
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from analyzer.explain import shards
from analyzer.explain.checkpoint_store import (
    CheckpointMirror,
    FolderStore,
    is_checkpoint_name,
    remove_checkpoints,
)
from container.checkpoint_store import WorkAreaCopy
from container.launcher import MAX_CONTAINER_MESSAGE_BYTES, container_message, launch
from tests import test_explain_job as tabular
from tests.conftest import JobRoot, http_server, run_crashing_after_shards

N_RECORDS = 30
ROWS_PER_RECORD = (14 + 2) * 2 + 1  # num_samples 14, 2 baseline rows: synthetic rows of one record

# Fingerprints as a job makes them (24 lowercase hex digits): the job's own, a stale one, one a link is named.
FP, OLD, LINKED = "5d41402abc4b2a76b9719d91", "7e240de74fb1ed08fa08d38c", "9b74c9897bac770ffc029102"

# The user's own files in the checkpoint folder's shap/: at the top, in sub-folders, deep, one shaped like a
# fingerprint folder with a file that is not a checkpoint, and files named exactly as checkpoints in folders
# not named as a job names its fingerprints (QA: pulled, and removed as stale, until the name was checked).
USER_FILES = {
    "shap/notes.txt": "top level",
    "shap/photos/cat.jpg": "a picture",
    "shap/photos/2024/dog.jpg": "a deeper picture",
    "shap/a/b/c/d/e.txt": "very deep",
    "shap/0123456789abcdef01234567/readme.md": "beside a fingerprint-like name",
    "shap/old/segments-8/report.csv": "in a segments-like folder",
    "shap/photos/shard-000000.npz": "the user's own shard-named file",
    "shap/my-run/seed.json": "the user's own seed.json",
    "shap/old/segments-8/shard-000001.npz": "in a segments-like folder",
    "shap/5D41402ABC4B2A76B9719D91/seed.json": "upper-case hex",
    "shap/5d41402abc4b2a76b9719d9/shard-000000.npz": "23 hex digits",
    "shap/5d41402abc4b2a76b9719d91a/shard-000000.npz": "25 hex digits",
    f"shap/{'ab' * 32}/shard-000000.npz": "a whole SHA-256 digest",
}


@pytest.fixture
def model_server():
    with http_server(tabular._Model, request_rows=[]) as server:
        yield server


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(2 * ROWS_PER_RECORD))  # 15 shards of 2 records


def write_user_files(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def user_files_left(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in USER_FILES if (folder / name).is_file()}


def shap_job_with_store(job: JobRoot, server, store: Path | str) -> None:
    tabular.shap_job(job, server, num_samples=14)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["lucent"] = {"checkpoint_uri": str(store)}
    job.write_config(config)


# -- the names a store lists, pulls and removes -------------------------------------------------------

def test_only_checkpoint_shaped_names_are_checkpoints():
    for name in (f"shap/{FP}/shard-000000.npz", f"shap/{FP}/seed.json", f"shap/{FP}/segments-8/shard-000012.npz",
                 "shap/0123456789abcdef01234567/shard-1234567.npz"):
        assert is_checkpoint_name(name), name
    for name in (*USER_FILES, f"shap/{FP}/.shard-000000.npz.x.tmp", f"shap/{FP}/shard-0.npz", "shap/.abc/seed.json",
                 f"shap/{FP}/other/shard-000000.npz", f"shap/{FP}/segments-8/x/shard-000000.npz", "shapx/a/seed.json",
                 f"shap/{FP}/../seed.json", "shap//shard-000000.npz", f"shap/{FP}/shard-000000.npz/x"):
        assert not is_checkpoint_name(name), name


def test_a_folder_store_walks_no_deeper_than_a_checkpoint_and_through_no_link(tmp_path, caplog):
    store = FolderStore(tmp_path / "store")
    write_user_files(store.root)
    store.write(f"shap/{FP}/shard-000000.npz", b"zero")
    store.write(f"shap/{FP}/segments-8/shard-000001.npz", b"one")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / FP).mkdir(parents=True)
    (elsewhere / FP / "shard-000000.npz").write_bytes(b"someone else's")
    (elsewhere / "shard-000002.npz").write_bytes(b"someone else's")
    (store.root / "shap" / LINKED).symlink_to(elsewhere / FP)  # a folder link
    (store.root / "shap" / FP / "shard-000002.npz").symlink_to(elsewhere / "shard-000002.npz")  # a file link
    with caplog.at_level(logging.WARNING):
        listed = store.names("shap")
    assert "shap/a/b/c/d/e.txt" not in listed and "shap/photos/2024/dog.jpg" in listed  # 4 parts at most
    assert not any(name.startswith(f"shap/{LINKED}") for name in listed) and f"shap/{FP}/shard-000002.npz" not in listed
    assert str(store.root / "shap" / LINKED) in caplog.text  # the link is named
    assert [name for name in listed if is_checkpoint_name(name)] == [
        f"shap/{FP}/segments-8/shard-000001.npz", f"shap/{FP}/shard-000000.npz"]

    remove_checkpoints(store)
    assert user_files_left(store.root) == USER_FILES
    assert (elsewhere / FP / "shard-000000.npz").read_bytes() == b"someone else's"
    assert (elsewhere / "shard-000002.npz").read_bytes() == b"someone else's"
    assert not (store.root / "shap" / FP / "shard-000000.npz").exists()

    # Named directly, a store still removes nothing that is not a checkpoint, nor anything through a link.
    store.remove([*USER_FILES, f"shap/{LINKED}/shard-000000.npz"])
    assert user_files_left(store.root) == USER_FILES
    assert (elsewhere / FP / "shard-000000.npz").exists()


def test_a_mirror_pull_removes_only_stale_checkpoints(tmp_path):
    store = FolderStore(tmp_path / "store")
    write_user_files(store.root)
    store.write(f"shap/{OLD}/shard-000000.npz", b"stale")
    store.write(f"shap/{FP}/shard-000003.npz", b"three")
    (store.root / "shap" / FP / "notes.txt").write_text("the user's, in our own folder")
    mirror = CheckpointMirror(store, FP, tmp_path / "work" / FP)
    assert mirror.pull() == 1
    assert sorted(p.name for p in (tmp_path / "work" / FP).iterdir()) == ["shard-000003.npz"]
    assert not (store.root / "shap" / OLD / "shard-000000.npz").exists()
    assert user_files_left(store.root) == USER_FILES
    assert (store.root / "shap" / FP / "notes.txt").read_text() == "the user's, in our own folder"


# -- lucent run with a checkpoint_uri ------------------------------------------------------------------

def test_the_users_files_beside_the_checkpoints_survive_a_run_and_a_resume(job, model_server, monkeypatch, caplog):
    """The QA repro, inside the processing root: a folder whose shap/ holds the user's files. A crashed run
    leaves its checkpoints there, a rerun on a fresh work area resumes from them, and the success removes
    the checkpoints only."""
    store = job.root / "checkpoints"
    write_user_files(store)
    shap_job_with_store(job, model_server, store)
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    assert user_files_left(store) == USER_FILES
    saved = sorted(name for p in store.rglob("shard-*.npz") if (name := p.relative_to(store).as_posix()) not in USER_FILES)
    assert len(saved) == 3 and all(is_checkpoint_name(name) for name in saved), saved

    shards.discard_entry(job.output_dir / ".lucent-work")  # a new machine: nothing in the work area
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert job.run() == 0, job.message
    assert "3 checkpoint file(s) downloaded" in caplog.text
    assert "resuming, 3 of 15 shards already done" in caplog.text
    assert "stale SHAP checkpoint" not in caplog.text
    assert len(tabular.read_local(job)) == N_RECORDS
    assert user_files_left(store) == USER_FILES  # the user's files, all of them, as they were
    assert not [p for p in store.rglob("*.npz") if p.relative_to(store).as_posix() not in USER_FILES]  # no checkpoint


def test_a_checkpoint_uri_outside_the_processing_root_is_refused_as_a_dataset_uri_is(job, model_server, tmp_path):
    victim = tmp_path / "outside" / "victim"
    write_user_files(victim)
    (victim / "shap" / OLD).mkdir(exist_ok=True)
    (victim / "shap" / OLD / "shard-000000.npz").write_bytes(b"shaped like a checkpoint")
    shap_job_with_store(job, model_server, victim)
    assert job.run() == 1
    assert job.message.startswith("ClientError: lucent.checkpoint_uri: "), job.message
    assert "outside the processing root" in job.message and "--allow-paths-outside-root" in job.message
    assert user_files_left(victim) == USER_FILES
    assert (victim / "shap" / OLD / "shard-000000.npz").read_bytes() == b"shaped like a checkpoint"
    assert job.run(command="validate") == 1  # `lucent validate` says so too

    # The owner of the config and of the folder means it: the same escape as for dataset_uri.
    assert job.run("--allow-paths-outside-root") == 0, job.message
    assert user_files_left(victim) == USER_FILES
    assert not (victim / "shap" / OLD / "shard-000000.npz").exists()  # a stale checkpoint: removed


def test_lucent_launch_refuses_a_local_checkpoint_uri(job, model_server, tmp_path):
    victim = tmp_path / "outside" / "victim2"
    write_user_files(victim)
    shap_job_with_store(job, model_server, victim)
    code, message = launch(str(job.config_dir), str(tmp_path / "results"), data=str(job.data_dir))
    assert code == 1
    assert message.startswith("ClientError: lucent.checkpoint_uri: ") and "is not an s3:// URI" in message, message
    assert user_files_left(victim) == USER_FILES
    assert (tmp_path / "results" / "message").read_text().strip() == message


# -- S3: the same, under a prefix others write to ----------------------------------------------------------

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from tests.test_container import engine  # noqa: E402, F401
from tests.test_launcher import endpoint, keys, s3  # noqa: E402, F401


@pytest.fixture
def s3_store(s3):
    from container.checkpoint_store import store_at

    for name, text in USER_FILES.items():
        s3.put_object(Bucket="jobs", Key=f"victim/{name}", Body=text.encode())
    return store_at("s3://jobs/victim")


def user_keys() -> list[str]:
    return sorted(f"victim/{name}" for name in USER_FILES)


def test_an_s3_store_removes_only_checkpoints(s3, s3_store):
    s3_store.write(f"shap/{OLD}/shard-000000.npz", b"stale")
    s3_store.write(f"shap/{OLD}/segments-8/seed.json", b"1")
    s3_store.write(f"shap/{FP}/shard-000001.npz", b"one")
    stale = [name for name in s3_store.names("shap") if is_checkpoint_name(name) and not name.startswith(f"shap/{FP}/")]
    assert stale == [f"shap/{OLD}/segments-8/seed.json", f"shap/{OLD}/shard-000000.npz"]
    s3_store.remove([*USER_FILES, *stale])  # named directly: the user's objects stay all the same
    assert keys(s3, "victim/") == sorted([*user_keys(), f"victim/shap/{FP}/shard-000001.npz"])
    remove_checkpoints(s3_store)
    assert keys(s3, "victim/") == user_keys()


def test_an_s3_mirror_pull_keeps_the_users_objects(s3, s3_store, tmp_path):
    s3_store.write(f"shap/{OLD}/shard-000000.npz", b"stale")
    s3_store.write(f"shap/{FP}/shard-000001.npz", b"one")
    assert CheckpointMirror(s3_store, FP, tmp_path / FP).pull() == 1
    assert keys(s3, "victim/") == sorted([*user_keys(), f"victim/shap/{FP}/shard-000001.npz"])


def test_the_launchers_work_area_copy_keeps_the_users_objects(s3, s3_store, tmp_path):
    s3_store.write(f"shap/{OLD}/shard-000000.npz", b"stale")
    work = tmp_path / "work"
    copy = WorkAreaCopy(s3_store, work)
    assert copy.pull() == 1  # the checkpoint only, none of the user's objects
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == [
        f"shap/{OLD}/shard-000000.npz"]
    shards.discard_entry(work / "shap" / OLD)
    (work / "shap" / FP).mkdir()
    (work / "shap" / FP / "shard-000000.npz").write_bytes(b"fresh")
    assert copy.push(succeeded=True) == (1, 1)
    assert keys(s3, "victim/") == sorted([*user_keys(), f"victim/shap/{FP}/shard-000000.npz"])


# -- F2: links the job (the image) made are not followed by the launcher --------------------------------

def test_a_work_area_linked_to_this_machine_is_not_uploaded(s3, tmp_path, caplog):
    """img2's attack: the image makes output/.lucent-work/shap a link to a folder of this machine, or a
    checkpoint a link to a file of it; nothing of them reaches the store."""
    from container.checkpoint_store import store_at

    host = tmp_path / "host-tree"
    (host / FP).mkdir(parents=True)
    (host / FP / "shard-000000.npz").write_bytes(b"a host file")
    (host / "secret.txt").write_text("a host secret")
    store = store_at("s3://jobs/ckpt")

    work = tmp_path / "work"
    work.mkdir()
    copy = WorkAreaCopy(store, work)
    assert copy.pull() == 0
    (work / "shap").symlink_to(host)  # what the job did
    with caplog.at_level(logging.WARNING):
        assert copy.push(succeeded=False) == (0, 0)
    assert keys(s3, "ckpt/") == []
    assert str(work / "shap") in caplog.text and "symbolic link" in caplog.text

    (work / "shap").unlink()  # now a real folder, a checkpoint in it a link to a host file
    (work / "shap" / FP).mkdir(parents=True)
    (work / "shap" / FP / "shard-000000.npz").symlink_to(host / "secret.txt")
    (work / "shap" / FP / "shard-000001.npz").write_bytes(b"a real checkpoint")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert copy.push(succeeded=False) == (1, 0)
    assert keys(s3, "ckpt/") == [f"ckpt/shap/{FP}/shard-000001.npz"]
    assert str(work / "shap" / FP / "shard-000000.npz") in caplog.text

    # The whole work area a link: nothing is listed through it either.
    linked = tmp_path / "linked-work"
    linked.symlink_to(host.parent / "host-tree-work")
    (host.parent / "host-tree-work" / "shap" / FP).mkdir(parents=True)
    (host.parent / "host-tree-work" / "shap" / FP / "shard-000000.npz").write_bytes(b"a host file")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert WorkAreaCopy(store, linked).push(succeeded=True) == (0, 0)
    assert keys(s3, "ckpt/") == [f"ckpt/shap/{FP}/shard-000001.npz"]
    assert str(linked) in caplog.text


def test_a_linked_exit_message_is_not_published(tmp_path, caplog):
    """img's attack: the image makes /opt/ml/output/message a link to a file of this machine."""
    host_file = tmp_path / "host-file.txt"
    host_file.write_text("a host secret\n")
    message = tmp_path / "message-dir" / "message"
    message.parent.mkdir()
    message.symlink_to(host_file)
    with caplog.at_level(logging.WARNING):
        assert container_message(message) is None
    assert str(message) in caplog.text and "symbolic link" in caplog.text
    message.unlink()
    os.mkfifo(message)  # a pipe would block a plain open
    assert container_message(message) is None
    message.unlink()
    assert container_message(message) is None  # no message at all
    message.write_text("AlgorithmError: x\n")
    assert container_message(message) == b"AlgorithmError: x\n"


def test_an_exit_message_longer_than_the_cap_is_published_cut(tmp_path, caplog):
    """An image can write gigabytes as its exit message: at most MAX_CONTAINER_MESSAGE_BYTES (1 MiB) of it are
    read, and published with a note saying it was cut. Real files, of 3 MiB and at the cap."""
    cap = MAX_CONTAINER_MESSAGE_BYTES
    assert cap == 2**20
    message = tmp_path / "message"
    head = b"AlgorithmError: the model failed\n"
    message.write_bytes(head + b"x" * (3 * 2**20))
    size = message.stat().st_size
    with caplog.at_level(logging.WARNING):
        published = container_message(message)
    assert published == head + b"x" * (cap - len(head)) + (
        f"\n[the job container's exit message was cut here: it holds {size} bytes, only the first {cap} are "
        "published]\n").encode()
    assert f"{message} holds {size} bytes: only its first {cap} are published" in caplog.text

    message.write_bytes(head + b"x" * (cap - len(head)))  # exactly the cap: whole
    assert container_message(message) == head + b"x" * (cap - len(head))

    # Published as text: a character the cut splits, and bytes that are not UTF-8, are replaced.
    message.write_bytes(b"x" * (cap - 1) + "é".encode() + b"more")
    assert container_message(message).startswith(b"x" * (cap - 1) + "\ufffd\n[the job container's exit message was cut here".encode())
    message.write_bytes(b"AlgorithmError: caf\xe9\n")
    assert container_message(message) == "AlgorithmError: caf\ufffd\n".encode()


def test_launch_publishes_a_long_exit_message_cut(tmp_path):
    """Through ``lucent launch`` (the container run replaced by what the image did): a 4 MiB exit message,
    not UTF-8 at that, is published cut to 1 MiB, and the launch's own message is the same text."""
    from container import launcher
    from container.demo import write_demo_job

    inputs = write_demo_job(tmp_path / "job", n_rows=60, seed=2) / "input"

    def run_container(image: str, root: Path, environment: dict[str, str]) -> int:
        (root / "message-dir").mkdir(exist_ok=True)
        (root / "message-dir" / "message").write_bytes(b"AlgorithmError: caf\xe9 " + b"x" * (4 * 2**20))
        launcher.keep_container_message(root, 1)
        return 1

    code, message = launch(str(inputs / "config"), str(tmp_path / "out"), data=str(inputs / "data"), image="big",
                           run_container=run_container)
    published = (tmp_path / "out" / "message").read_text(encoding="utf-8")
    assert code == 1 and published == message + "\n"
    head = "AlgorithmError: caf\ufffd "  # 21 bytes written, the first 1 MiB of them published
    assert message == head + "x" * (MAX_CONTAINER_MESSAGE_BYTES - 21) + (
        f"\n[the job container's exit message was cut here: it holds {21 + 4 * 2**20} bytes, only the first "
        f"{MAX_CONTAINER_MESSAGE_BYTES} are published]")


def test_launch_publishes_no_host_file_through_a_linked_message(s3, tmp_path, monkeypatch):
    """The launch as the QA repro ran it, with the container run replaced by what the image did (a link
    as its exit message): the published message is the launcher's own, not the host file."""
    from container import launcher
    from container.demo import write_demo_job
    from tests.test_launcher import put_tree

    host_file = tmp_path / "host-file.txt"
    host_file.write_text("a host secret\n")
    inputs = write_demo_job(tmp_path / "job", n_rows=60, seed=2) / "input"
    put_tree(s3, inputs, "in")

    def run_container(image: str, root: Path, environment: dict[str, str]) -> int:
        (root / "message-dir").mkdir(exist_ok=True)
        (root / "message-dir" / "message").symlink_to(host_file)  # what the image did
        launcher.keep_container_message(root, 1)  # run_in_container's ending, once the container has exited
        return 1

    code, message = launch("s3://jobs/in/config", "s3://jobs/out", data="s3://jobs/in/data", image="evil",
                           run_container=run_container)
    assert code == 1
    published = s3.get_object(Bucket="jobs", Key="out/message")["Body"].read().decode()
    assert "a host secret" not in published and "left no exit message" in published, published


@pytest.mark.slow
def test_hostile_images_make_the_launcher_publish_no_host_file(engine, tmp_path):
    """Both QA images for real, on the machine's container engine (local --config/--data/--model and
    --output): img links its exit message to a host file, img2 links the work area's shap/ to a host tree
    holding a checkpoint-shaped file. Neither reaches --output."""
    from container.demo import write_demo_job
    from tests.test_container import build_from_text
    from tests.test_launch_image_checkpoints import SHAP_CONFIG

    host = tmp_path / "host"
    (host / "tree" / FP).mkdir(parents=True)
    (host / "host-file.txt").write_text("a host secret\n")
    (host / "tree" / FP / "shard-000000.npz").write_bytes(b"a host file shaped like a checkpoint")
    base = os.environ.get("LUCENT_BASE_IMAGE", "python:3.11-slim")
    images = {
        "message": f"ln -s {host / 'host-file.txt'} /opt/ml/output/message; exit 1",
        "work-area": (f"mkdir -p /opt/ml/processing/output/.lucent-work && ln -s {host / 'tree'} "
                      "/opt/ml/processing/output/.lucent-work/shap; echo 'AlgorithmError: x' > /opt/ml/output/message;"
                      " exit 2"),
    }
    inputs = write_demo_job(tmp_path / "job", n_rows=60, seed=2, config=SHAP_CONFIG, with_model=True) / "input"
    published = {}
    for name, command in images.items():
        tag = build_from_text(engine, f"FROM {base}\nENTRYPOINT []\nCMD {json.dumps(['sh', '-c', command])}\n",
                              f"localhost/lucent-qa4-{name}:test", tmp_path / f"image-{name}")
        try:
            published[name] = launch(str(inputs / "config"), str(tmp_path / f"out-{name}"), data=str(inputs / "data"),
                                     model=str(inputs / "model"), image=tag)
        finally:
            engine.images.remove(tag, force=True)
    code, message = published["message"]
    assert code == 1 and "exited with code 1 and left no exit message" in message, message
    assert "a host secret" not in (tmp_path / "out-message" / "message").read_text()
    assert published["work-area"] == (2, "AlgorithmError: x")
    out = tmp_path / "out-work-area"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["message"]
