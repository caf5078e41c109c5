"""SHAP checkpoints kept in a store outside the job's work area, so that a rerun after a lost driver
(or a ``lucent launch`` on a fresh machine) resumes from the shards already done.

The job's work area (``<output>/.lucent-work/shap/<fingerprint>/``) stays the working copy: shards are
checked (``shards._Checkpoints``) and assembled there. A ``CheckpointMirror`` copies it to and from a
store under the same relative names (``shap/<fingerprint>/shard-000000.npz``, ``seed.json``):

* before the job looks at its checkpoints, every file the store holds for this fingerprint and the work
  area lacks is downloaded (``pull``), and the store's checkpoints of other fingerprints are removed
  (they can never be reused, as in the work area);
* each shard is uploaded as soon as its checkpoint is written (``push``), by the process that writes it
  (the job's main process, or the Spark driver), before the shard is counted as done;
* on success the store's checkpoints are removed with the work area's.

Only checkpoint-shaped names (``is_checkpoint_name``: ``shap/<fingerprint>/shard-000000.npz``, ``seed.json``,
image SHAP's ``segments-<m>/`` folders, the fingerprint 24 lowercase hex digits) are ever pulled, pushed or
removed: the store's folder or prefix may hold the user's own files, under ``shap/`` too, and they stay. A
folder store is walked no deeper than a checkpoint's name and through no symbolic link.

Where the store is: ``"lucent": {"checkpoint_uri": "s3://bucket/prefix"}`` in ``analysis_config.json``
(a local path or ``file://`` URI for a shared file system), else ``<published output URI>/.lucent-work``
when the job's output is published (``LUCENT_OUTPUT_URI`` or SageMaker's processing output), else none.
A job that cannot reach the store itself (``lucent launch --image``: the container gets no credentials)
keeps its checkpoints in its work area only, and the launcher copies them from the store before the job
and back after it (``container.checkpoint_store.WorkAreaCopy``).

The analyzer never talks to S3 itself: it declares ``CheckpointStore`` and the container hands it an
implementation (``container.checkpoint_store``), as it hands down the model loader. A folder store
(``FolderStore``) is implemented here: it needs no client.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from analyzer.errors import UserError
from analyzer.output import INTERNAL_PREFIX, atomic_writer

log = logging.getLogger(__name__)

CHECKPOINT_URI_KEY = "checkpoint_uri"  # "lucent": {"checkpoint_uri": ...} in analysis_config.json
WORK_AREA = f"{INTERNAL_PREFIX}work"  # the output folder's work area, also its name under a published output
SHAP_PREFIX = "shap"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a file or folder name Lucent writes: no dot first
# A fingerprint as the jobs make it (``fingerprint``: a SHA-256 hex digest cut to FINGERPRINT_CHARS), so that a
# user's folder of another name (``shap/photos/seed.json``) is never taken for one.
FINGERPRINT_CHARS = 24
_FINGERPRINT = re.compile(rf"[0-9a-f]{{{FINGERPRINT_CHARS}}}")
_SUB_FOLDER = re.compile(r"segments-[0-9]+")  # image SHAP: a folder per number of segments (image_job.py)
_FILE = re.compile(r"shard-[0-9]{6,}\.npz|seed\.json")  # shards.shard_path, job._job_seed
MAX_NAME_PARTS = 4  # shap/<fingerprint>/<sub-folder>/<file>


class CheckpointStore(Protocol):
    """Objects named by relative POSIX paths (``shap/<fingerprint>/shard-000000.npz``). Errors are
    ``UserError``s naming the store (a bucket that does not exist, access denied)."""

    def names(self, prefix: str) -> list[str]:
        """Every object name under ``prefix`` (a folder name, without a trailing slash)."""
        ...

    def read(self, name: str) -> bytes:
        ...

    def write(self, name: str, data: bytes) -> None:
        """Write the whole object (a reader never sees part of it)."""
        ...

    def remove(self, names: Iterable[str]) -> None:
        ...


class FolderStore:
    """A store in a local folder (a shared file system mounted on every host that may run the driver)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def names(self, prefix: str) -> list[str]:
        """The files under ``prefix`` as deep as a checkpoint's name goes (``is_checkpoint_name``), never
        through a symbolic link (``prefix`` itself included): a folder holding the user's own files, or a
        link a job (an image) made to elsewhere on this machine, is not walked."""
        base = self.root / prefix
        folder = self.root
        for part in PurePosixPath(prefix).parts:
            folder = folder / part
            if not _is_real_folder(folder):
                if os.path.islink(folder):
                    log.warning("SHAP checkpoints: %s is a symbolic link, not followed", folder)
                return []
        found: list[str] = []
        self._walk(base, len(PurePosixPath(prefix).parts), found)
        return sorted(found)

    def _walk(self, folder: Path, depth: int, found: list[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_symlink():  # neither a checkpoint nor a folder of them: Lucent writes no link there
                log.warning("SHAP checkpoints: %s is a symbolic link, not followed", entry.path)
                continue
            if entry.is_file(follow_symlinks=False):
                if not entry.name.endswith(".tmp"):
                    found.append(Path(entry.path).relative_to(self.root).as_posix())
            elif entry.is_dir(follow_symlinks=False) and depth + 1 < MAX_NAME_PARTS:
                self._walk(Path(entry.path), depth + 1, found)

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as error:
            raise UserError(f"cannot read the SHAP checkpoint {self.root / name}: {error.strerror or error}") from None

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path, "wb") as handle:
                handle.write(data)
        except OSError as error:
            raise UserError(f"cannot write the SHAP checkpoint {path}: {error.strerror or error}") from None

    def remove(self, names: Iterable[str]) -> None:
        """Remove the checkpoints ``names``; any other name is left alone (``checkpoint_names``)."""
        for name in checkpoint_names(names, self):
            path = self.root / name
            if any(os.path.islink(folder) for folder in list(path.parents)[:name.count("/")]):
                continue  # a link where Lucent writes folders: what lies beyond it is not a checkpoint
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                log.warning("SHAP: could not remove the checkpoint %s: %s", path, error)
            for folder in path.parents:  # the folders it leaves empty, up to the store's root
                if folder == self.root or not folder.is_relative_to(self.root):
                    break
                try:
                    folder.rmdir()
                except OSError:
                    break


def checkpoint_uri(lucent: Any, output_uri: str | None) -> str | None:
    """Where the SHAP checkpoints are kept beside the work area (module docstring): ``lucent``'s
    ``checkpoint_uri`` (the config's ``"lucent"`` object, validated by the schema), else the published
    output's work area, else None (the work area only)."""
    configured = lucent.get(CHECKPOINT_URI_KEY) if isinstance(lucent, dict) else None
    if configured:
        return str(configured)
    if output_uri and output_uri.strip():
        return f"{output_uri.strip().rstrip('/')}/{WORK_AREA}"
    return None


class CheckpointMirror:
    """The job's checkpoint folder (``local``) mirrored in ``store`` under ``shap/<fingerprint>``.

    Sent to worker processes with the shard settings (plain data; a store drops its client when
    pickled), where it is never used: only the process that writes a checkpoint pushes it."""

    def __init__(self, store: CheckpointStore, fingerprint: str, local: Path):
        self.store, self.fingerprint, self.local = store, fingerprint, Path(local)
        self.prefix = f"{SHAP_PREFIX}/{fingerprint}"

    def __str__(self) -> str:
        return f"{self.store}/{self.prefix}"

    def pull(self) -> int:
        """Remove the store's checkpoints of other fingerprints, then download this fingerprint's files
        the work area lacks; returns how many were downloaded."""
        stale = [name for name in self.store.names(SHAP_PREFIX)
                 if is_checkpoint_name(name) and not name.startswith(self.prefix + "/")]
        if stale:
            log.info("Removing %d stale SHAP checkpoint(s) from %s", len(stale), self.store)
            self.store.remove(stale)
        self.local.mkdir(parents=True, exist_ok=True)
        fetched = 0
        for name in self.store.names(self.prefix):
            if not is_checkpoint_name(name):
                continue
            parts = name[len(self.prefix) + 1:].split("/")
            # Only the files Lucent writes there: a plain name, or one in a sub-folder (``child``), never a
            # hidden name, an empty part or a way out of the work area.
            if len(parts) > 2 or not all(_PLAIN_NAME.fullmatch(part) for part in parts):
                continue
            target = self.local.joinpath(*parts)
            if os.path.lexists(target):
                continue
            target.parent.mkdir(exist_ok=True)
            with atomic_writer(target, "wb") as handle:
                handle.write(self.store.read(name))
            fetched += 1
        if fetched:
            log.info("SHAP: %d checkpoint file(s) downloaded from %s", fetched, self)
        return fetched

    def child(self, name: str) -> CheckpointMirror:
        """The mirror of the sub-folder ``name`` of the work area (image SHAP: a folder per number of
        segments), pulled with this one (``pull`` fetches one level of sub-folders)."""
        if not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"not a plain folder name: {name!r}")
        return CheckpointMirror(self.store, f"{self.fingerprint}/{name}", self.local / name)

    def push(self, path: Path) -> None:
        """Upload one file of the work area (a shard's checkpoint, the seed)."""
        self.store.write(f"{self.prefix}/{Path(path).name}", Path(path).read_bytes())

    def push_missing(self) -> None:
        """Upload the work area's files the store lacks (the seed just drawn, shards of an earlier run)."""
        there = set(self.store.names(self.prefix))
        for path in sorted(self.local.iterdir()) if self.local.is_dir() else []:
            name = f"{self.prefix}/{path.name}"
            if path.is_file() and not path.is_symlink() and is_checkpoint_name(name) and name not in there:
                self.push(path)


def fingerprint(settings: dict, data: Iterable[bytes]) -> str:
    """The name of a job's checkpoint folder (``shap/<fingerprint>/``): a digest of ``settings`` (JSON, keys
    sorted, other objects by ``repr``) and of ``data`` (bytes, in order), ``FINGERPRINT_CHARS`` hex digits.
    What goes in is the caller's: everything the checkpointed values depend on, and nothing else."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode())
    for part in data:
        digest.update(part)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def is_checkpoint_name(name: str) -> bool:
    """``name`` is one a job writes below its work area and a mirror copies: ``shap/<fingerprint>/<file>``
    or ``shap/<fingerprint>/segments-<m>/<file>`` (image SHAP's ``CheckpointMirror.child``), the fingerprint
    24 lowercase hex digits as the job makes it (``_FINGERPRINT``) and the file a shard's checkpoint
    (``shard-000000.npz``) or the drawn seed (``seed.json``): no hidden or temporary file, no empty part, no way
    out of the work area, and none of the user's own files that a ``checkpoint_uri`` folder (or prefix) may
    also hold. Only such names are ever pulled, pushed or removed."""
    parts = name.split("/")
    return (parts[0] == SHAP_PREFIX and 3 <= len(parts) <= MAX_NAME_PARTS and bool(_FINGERPRINT.fullmatch(parts[1]))
            and (len(parts) == 3 or bool(_SUB_FOLDER.fullmatch(parts[2]))) and bool(_FILE.fullmatch(parts[-1])))


def checkpoint_names(names: Iterable[str], store: object) -> list[str]:
    """``names`` that are checkpoints' (``is_checkpoint_name``); the others are named in a warning and
    left alone: a store never removes what a job did not write."""
    names = list(names)
    kept = [name for name in names if is_checkpoint_name(name)]
    if others := sorted(set(names) - set(kept)):
        log.warning("SHAP checkpoints: not removing %d name(s) in %s that are not SHAP checkpoints: %s",
                    len(others), store, ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
    return kept


def remove_checkpoints(store: CheckpointStore) -> None:
    """The job succeeded: its SHAP checkpoints are no longer needed anywhere. Only checkpoints are removed
    (``is_checkpoint_name``): the user's own files beside them stay."""
    store.remove([name for name in store.names(SHAP_PREFIX) if is_checkpoint_name(name)])


def _is_real_folder(path: Path) -> bool:
    """A folder, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


__all__ = ["CHECKPOINT_URI_KEY", "CheckpointMirror", "CheckpointStore", "FolderStore", "checkpoint_uri",
           "checkpoint_names", "is_checkpoint_name", "remove_checkpoints"]
