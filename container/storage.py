"""Where Lucent reads and writes: ``s3://`` URIs (any S3-compatible store) and local paths.

One parser for every URI a user gives (``lucent launch`` inputs and outputs, config URIs, the
endpoint's baseline and capture destination): schemes are case-insensitive, and a string that looks
like a URI but is not a well-formed S3 or ``file://`` one is an error, never a local path (``s3:/b/k``
would otherwise become a folder named ``s3:``). Also the one way to make an S3 client, so every
caller honours ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and none shares boto3's cached session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyzer.data import resolve_local_path
from analyzer.errors import UserError
from analyzer.redact import redact, redact_url

_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):")
# Loose on purpose (legacy buckets and S3-compatible stores differ); it only has to keep URL syntax
# (userinfo, ports, query strings) out of the bucket name.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,254}")


class StorageError(UserError):
    """A URI is malformed, or an object or file could not be read or written; the message names it.

    Redacted when made: it is printed, logged and uploaded as an exit message, and boto's errors can
    quote an endpoint URL with credentials in it.
    """

    def __init__(self, message: str):
        super().__init__(redact(message))


def uri_scheme(uri: str) -> str | None:
    """The URI's scheme in lower case, or None for a plain path (one letter is a Windows drive)."""
    match = _SCHEME.match(uri)
    return match["scheme"].lower() if match and len(match["scheme"]) > 1 else None


def parse_uri(uri: str) -> tuple[str, str, Path | None]:
    """``(bucket, key, None)`` for an S3 URI, ``("", "", path)`` for a local path or ``file://`` URI.

    Schemes are case-insensitive (``S3://b/k`` is S3), and anything that looks like a URI but is not a
    well-formed S3 or file one is an error: treated as a path, ``s3:/b/k`` would quietly become a local
    folder named ``s3:``.
    """
    if not uri.strip():
        raise StorageError("an empty URI: give s3://bucket/key or a local path")
    scheme = uri_scheme(uri)
    if scheme == "s3":
        rest = uri[len("s3:"):]
        bucket, _, key = rest[2:].partition("/")
        if not rest.startswith("//") or not _BUCKET.fullmatch(bucket):
            problem = "no bucket" if rest.startswith("//") and not bucket else "not a well-formed S3 URI"
            raise StorageError(f"{uri}: {problem} (write s3://bucket/key)")
        return bucket, key, None
    if scheme not in (None, "file"):
        raise StorageError(f"{uri}: unsupported URI scheme {scheme!r} (give s3://bucket/key, a local path or "
                          "a file:// URI; write ./name for a local name with a colon)")
    try:
        return "", "", resolve_local_path(uri)
    except UserError as error:
        raise StorageError(str(error)) from error


@dataclass(frozen=True)
class Location:
    """An ``s3://bucket/key`` URI or a local path (plain or ``file://``); malformed URIs raise
    ``StorageError`` when the location is made."""

    uri: str
    bucket: str = field(init=False, default="", compare=False)
    key: str = field(init=False, default="", compare=False)
    local: Path | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        bucket, key, local = parse_uri(self.uri)
        object.__setattr__(self, "bucket", bucket)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "local", local)

    @property
    def is_s3(self) -> bool:
        return bool(self.bucket)

    @property
    def path(self) -> Path:
        if self.local is None:
            raise ValueError(f"{self.uri} is not a local path")
        return self.local

    @property
    def prefix(self) -> str:
        """The key as a folder (``key/``; empty for the bucket root): what lies under this location.
        ``out`` alone would also match ``out2/...``."""
        return f"{self.key.rstrip('/')}/" if self.key.strip("/") else ""

    def child(self, name: str) -> Location:
        if self.is_s3:
            return Location(f"s3://{self.bucket}/{self.prefix}{name}")
        return Location(str(self.path / name))

    def holds(self, bucket: str, key: str) -> bool:
        """``s3://bucket/key`` is this object or lies below this prefix."""
        return self.is_s3 and bucket == self.bucket and (key == self.key or key.startswith(self.prefix))

    def __str__(self) -> str:
        return redact_url(self.uri)


def s3_client(endpoint_url: str | None = None, **config: Any) -> Any:
    """A boto3 S3 client on a session of its own (boto3's default session caches the credentials it
    first found). ``endpoint_url`` None lets botocore read ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``;
    ``config`` goes to ``botocore.config.Config`` (retries, timeouts)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=Config(**config) if config else None)


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """The content of the object or file at ``uri``; ``StorageError`` naming it when it cannot be read."""
    location = Location(uri)
    if not location.is_s3:
        try:
            return location.path.read_bytes()
        except OSError as error:
            raise StorageError(f"cannot read {location.path}: {error.strerror or error}") from None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = s3_client(endpoint_url).get_object(Bucket=location.bucket, Key=location.key)
        return response["Body"].read()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "?")
        raise StorageError(f"cannot read {location}: {code}: {error.response.get('Error', {}).get('Message', '')}"
                           ) from None
    except BotoCoreError as error:
        raise StorageError(f"cannot read {location}: {boto_problem(error)}") from None


# What to do about botocore's "Unable to locate credentials" (and "Partial credentials found"): its own
# message says nothing about where boto3 looks.
CREDENTIALS_HINT = ("give S3 credentials as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile of "
                    "~/.aws/credentials with AWS_PROFILE (or write a [default] one there), or run where an "
                    "instance role provides them")


def boto_problem(error: BaseException) -> str:
    """``error`` (botocore's, not S3's answer) as the text a message quotes; missing credentials say how
    to provide them."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return f"{error}: {CREDENTIALS_HINT}"
    return str(error)
