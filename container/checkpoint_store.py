"""The SHAP checkpoint store the job hands to the analyzer (``analyzer.explain.checkpoint_store``): an
S3 prefix (any S3-compatible store, through ``container.storage``'s one client) or a local folder.

The analyzer declares what it needs (``CheckpointStore``); S3 stays on this side, as the model loader
does (docs/architecture.md).

``lucent launch --image`` gives its container no credentials: the launcher copies the checkpoints between
the store and the job's work area on the host, before and after the container (``WorkAreaCopy``), and
tells the job so (``COPIED_BY_LAUNCHER``), which then keeps them in its work area only.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analyzer.config import AnalysisConfig
from analyzer.explain.checkpoint_store import (
    CHECKPOINT_URI_KEY,
    SHAP_PREFIX,
    CheckpointStore,
    FolderStore,
    checkpoint_names,
    checkpoint_uri,
    is_checkpoint_name,
)
from container.storage import Location, StorageError, boto_problem, s3_client

log = logging.getLogger(__name__)

# Set by `lucent launch --image` to the store it copies the checkpoints to and from (shown in the log).
COPIED_BY_LAUNCHER = "LUCENT_CHECKPOINTS_COPIED_BY_LAUNCHER"


class S3Store:
    """``CheckpointStore`` under an ``s3://bucket/prefix`` location. Picklable: the client is made on
    first use in each process (the shard settings carry the store to worker processes, which never use it)."""

    def __init__(self, location: Location, endpoint_url: str | None = None):
        self.location, self.endpoint_url = location, endpoint_url
        self._client: Any = None

    def __str__(self) -> str:
        return str(self.location)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint_url, retries={"mode": "standard", "max_attempts": 5})
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.location.prefix}{name}"

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.location.bucket}/{self._key(name)}"
        try:
            yield
        except ClientError as error:
            info = error.response.get("Error", {})
            raise StorageError(f"SHAP checkpoints: {action} {where}: {info.get('Code', '?')}: "
                               f"{info.get('Message', '')}") from None
        except BotoCoreError as error:
            raise StorageError(f"SHAP checkpoints: {action} {where}: {boto_problem(error)}") from None

    def names(self, prefix: str) -> list[str]:
        found = []
        with self._errors("listing", prefix + "/"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                          Prefix=self._key(prefix + "/"))
            for page in pages:
                found.extend(item["Key"][len(self.location.prefix):] for item in page.get("Contents", []))
        return sorted(found)

    def read(self, name: str) -> bytes:
        with self._errors("reading", name):
            return self.client.get_object(Bucket=self.location.bucket, Key=self._key(name))["Body"].read()

    def write(self, name: str, data: bytes) -> None:
        with self._errors("writing", name):  # one PUT: the object is whole or absent
            self.client.put_object(Bucket=self.location.bucket, Key=self._key(name), Body=data)

    def remove(self, names: Iterable[str]) -> None:
        """Delete the checkpoints ``names``; any other name is left alone (``checkpoint_names``)."""
        keys = sorted(self._key(name) for name in checkpoint_names(names, self))
        for start in range(0, len(keys), 1000):  # the API's limit per request
            with self._errors("deleting", keys[start].removeprefix(self.location.prefix)):
                self.client.delete_objects(Bucket=self.location.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                   "Quiet": True})


def open_checkpoint_store(config: AnalysisConfig, output_uri: str | None) -> CheckpointStore | None:
    """The store for ``config``'s SHAP checkpoints (``"lucent": {"checkpoint_uri": ...}``, else the
    published output's ``.lucent-work``), or None: the job's work area only, also when the launcher copies
    them (``COPIED_BY_LAUNCHER``)."""
    uri = checkpoint_uri(config.lucent, output_uri)
    if uri is None:
        return None
    if copied_from := os.environ.get(COPIED_BY_LAUNCHER, "").strip():
        log.info("SHAP checkpoints: kept in the work area; `lucent launch` copies them from and to %s", copied_from)
        return None
    try:
        return store_at(uri)
    except StorageError as error:
        raise StorageError(f"lucent.{CHECKPOINT_URI_KEY}: {error}") from None


def local_checkpoint_folder(config: AnalysisConfig) -> Path | None:
    """The local folder ``config``'s ``lucent.checkpoint_uri`` names, as ``store_at`` opens it: where the job
    would write, list and remove SHAP checkpoints (``container.job.inputs_outside_root`` holds it to the
    processing root, as the datasets). None: no such key, an S3 URI, or a malformed one (reported when the
    store is opened)."""
    configured = config.lucent.get(CHECKPOINT_URI_KEY) if isinstance(config.lucent, dict) else None
    if not configured:
        return None
    try:
        location = Location(str(configured))
    except StorageError:
        return None
    return None if location.is_s3 else location.path


def store_at(uri: str, endpoint_url: str | None = None) -> CheckpointStore:
    """The checkpoint store at ``uri`` (an ``s3://`` prefix or a local folder)."""
    location = Location(uri)
    return S3Store(location, endpoint_url) if location.is_s3 else FolderStore(location.path)


class WorkAreaCopy:
    """The SHAP checkpoints of a job that cannot reach their store (a container given no credentials),
    copied on its behalf: the store's into the job's work area (``<output>/.lucent-work``) before the job
    starts, and back when it has ended, however it ended (a failed or stopped job's shards are what a
    rerun resumes from). The names are the work area's (``shap/<fingerprint>/shard-000000.npz``), as a
    ``CheckpointMirror`` keeps them."""

    def __init__(self, store: CheckpointStore, work_area: Path):
        self.store, self.work_area = store, Path(work_area)
        self.local = FolderStore(self.work_area)
        self.pulled: dict[str, tuple[int, int] | None] = {}  # name -> the copy's (size, mtime) in the work area

    def __str__(self) -> str:
        return str(self.store)

    def _stamp(self, name: str) -> tuple[int, int] | None:
        try:
            stat = os.lstat(self.work_area / name)
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def _work_area_is_real(self) -> bool:
        """The work area is a folder of its own, not a link the job made to elsewhere on this machine."""
        if os.path.islink(self.work_area):
            log.warning("SHAP checkpoints: the job's work area %s is a symbolic link, not followed: nothing is "
                        "copied from it", self.work_area)
            return False
        return True

    def _local_names(self) -> list[str]:
        """The work area's checkpoints, never through a link (``FolderStore.names``)."""
        return [name for name in self.local.names(SHAP_PREFIX) if is_checkpoint_name(name)]

    def _read_local(self, name: str) -> bytes | None:
        """The work area's file ``name``, opened without following a link (the job, or its image, may have
        put one there to a file of this machine); None, with a warning naming it, when it is not a plain file."""
        path = self.work_area / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            if error.errno == errno.ELOOP:
                log.warning("SHAP checkpoints: %s is a symbolic link, not followed: not copied", path)
                return None
            raise
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                log.warning("SHAP checkpoints: %s is not a plain file: not copied", path)
                return None
            return handle.read()

    def pull(self) -> int:
        """Copy every checkpoint of the store into the work area; returns how many. Names a job never
        writes (hidden, temporary, deeper) are left in the store."""
        names = [name for name in self.store.names(SHAP_PREFIX) if is_checkpoint_name(name)]
        for name in names:
            self.local.write(name, self.store.read(name))
            self.pulled[name] = self._stamp(name)
        if names:
            log.info("SHAP: %d checkpoint file(s) copied from %s into the job's work area", len(names), self.store)
        return len(names)

    def push(self, succeeded: bool) -> tuple[int, int]:
        """Copy the work area's new and changed checkpoints to the store, and remove from the store those
        the job removed: every one after a success, and those of other fingerprints once the job has
        made its own folder (as ``CheckpointMirror.pull`` does); returns (copied, removed). A failed job
        that removed its work area (no shard to resume from) leaves the store as it was."""
        real = self._work_area_is_real()
        local = self._local_names() if real else []
        changed = []
        for name in local:
            if name in self.pulled and self.pulled[name] == self._stamp(name):
                continue
            data = self._read_local(name)
            if data is not None:
                self.store.write(name, data)
                changed.append(name)
        shap = self.work_area / SHAP_PREFIX
        folders = ({path.name for path in shap.iterdir() if path.is_dir() and not path.is_symlink()}
                   if real and shap.is_dir() and not shap.is_symlink() else set())
        removed = [name for name in sorted(self.pulled) if name.split("/")[1] not in folders] \
            if succeeded or folders else []
        if removed:
            self.store.remove(removed)
        if changed or removed:
            log.info("SHAP: %d checkpoint file(s) copied to %s, %d removed there", len(changed), self.store,
                     len(removed))
        return len(changed), len(removed)


__all__ = ["COPIED_BY_LAUNCHER", "S3Store", "WorkAreaCopy", "local_checkpoint_folder", "open_checkpoint_store",
           "store_at"]
