"""The SHAP checkpoint store the job hands to the analyzer (``analyzer.explain.checkpoint_store``): an
S3 prefix (any S3-compatible store, through ``container.storage``'s one client) or a local folder.

The analyzer declares what it needs (``CheckpointStore``); S3 stays on this side, as the model loader
does (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from analyzer.config import AnalysisConfig
from analyzer.explain.checkpoint_store import CHECKPOINT_URI_KEY, CheckpointStore, FolderStore, checkpoint_uri
from container.storage import Location, StorageError, s3_client


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
            raise StorageError(f"SHAP checkpoints: {action} {where}: {error}") from None

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
        keys = sorted(self._key(name) for name in names)
        for start in range(0, len(keys), 1000):  # the API's limit per request
            with self._errors("deleting", keys[start].removeprefix(self.location.prefix)):
                self.client.delete_objects(Bucket=self.location.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                   "Quiet": True})


def open_checkpoint_store(config: AnalysisConfig, output_uri: str | None) -> CheckpointStore | None:
    """The store for ``config``'s SHAP checkpoints (``"lucent": {"checkpoint_uri": ...}``, else the
    published output's ``.lucent-work``), or None: the job's work area only."""
    uri = checkpoint_uri(config.lucent, output_uri)
    if uri is None:
        return None
    try:
        location = Location(uri)
    except StorageError as error:
        raise StorageError(f"lucent.{CHECKPOINT_URI_KEY}: {error}") from None
    return S3Store(location) if location.is_s3 else FolderStore(location.path)


__all__ = ["S3Store", "open_checkpoint_store"]
