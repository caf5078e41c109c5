"""``lucent launch``: a SageMaker-style processing job against any S3-compatible store.

What SageMaker Processing does around the Clarify container, done on this machine:

1. parse every URI (a malformed one is the command line's error: nothing is written), then check that
   ``--output`` can be written (the bucket exists, a probe object can be put and deleted; or the local
   folder can be created and written), so a misspelled bucket fails before any computing;
2. stage the inputs (``--config``, ``--data``, ``--model``; S3 URIs or local paths) into a temporary
   processing root, plus the datasets the config names by ``s3://`` URI (``dataset_uri``,
   ``facet_dataset_uri``, ``predicted_label_dataset_uri``, string SHAP baselines), rewriting the
   staged config copy to their local paths (spec clarify-contract.md section 1.2). Every staged file
   stays inside its folder, and the config may name no local file outside the staged inputs;
3. run the job, in-process or in a container (``--image``) with the staged folders mounted;
4. publish ``output/`` to ``--output``, replacing the previous results and nothing else. On S3 (managed
   transfer: multipart for large files, concurrent, objects already there with the same size and ETag
   skipped) the old ``analysis.json`` and ``message`` are removed first, then the new files are put,
   the objects the previous publication's manifest (``.lucent-outputs.json``, the local output folder's
   format, analyzer/output.py) lists and this run did not produce are removed (the launch's own inputs
   excepted; a prefix without a manifest loses nothing), the manifest is replaced, and
   ``analysis.json`` and ``message`` come last, so their presence marks a complete result. A local
   folder is published as a job publishes its output folder (``OutputStaging``: complete copies
   renamed into place; what the previous run published and this one did not is removed, the user's
   own files are kept), with the message last. The job's work area (``.lucent-*``) is not a result and
   is never uploaded from the job's folder; a job that explains writes its SHAP checkpoints to
   ``<output>/.lucent-work/`` itself while it runs (so a rerun elsewhere resumes), kept after a failed
   job and removed after a successful one. A job in a container (``--image``) is given no credentials:
   the launcher copies its checkpoints from there into the job's work area before it starts and back
   after it ends (``container.checkpoint_store.WorkAreaCopy``).

Exit messages name the inputs by the URIs given, never by their temporary staged copies. A failed job
publishes its message alone and exits non-zero: the earlier run's results at ``--output``
stay (as ``lucent run`` keeps them), and the message says they are not this run's. A launch that starts
removes the earlier message first. SIGTERM and SIGINT stop it as they stop a job (``Stopped: ...``, exit
2). A failed publication keeps the local copy and says where it is. S3 credentials come from boto3's
usual chain; ``--endpoint-url`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) points it at MinIO,
Ceph, moto, ...
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from analyzer.environment import environment_set
from analyzer.errors import UserError
from analyzer.logs import add_log_arguments, level_from_args
from analyzer.output import (
    ANALYSIS_FILE,
    INTERNAL_PREFIX,
    MANIFEST_FILE,
    OutputStaging,
    check_output_folder,
    read_manifest,
    write_bytes_atomic,
    write_manifest,
    write_text_atomic,
)
from analyzer.redact import install_redaction, redact, redact_url
from container.engine import EngineUnavailable, connect_engine, discard_container
from container.job import (
    OUTPUT_URI_VARIABLE,
    JobPaths,
    configure_logging,
    earlier_results_note,
    remove_empty_work_area,
    run_job,
    stop_on_signals,
)
from container.outcome import (
    ALGORITHM_ERROR,
    CLIENT_ERROR,
    EXIT_STOPPED,
    EXIT_USER_ERROR,
    JobStopped,
    outcome_of,
)
from container.storage import Location, StorageError, boto_problem, s3_client, uri_scheme

log = logging.getLogger("lucent.launch")

PART_SIZE = 8 * 1024 * 1024  # multipart threshold and part size; the skip test recomputes ETags with it
CONTAINER_ROOT = Path("/opt/ml/processing")
MESSAGE_FILE = "message"
# Config keys that name a dataset by URI: the real container downloads them itself (spec section 1.2).
URI_KEYS = (("dataset_uri",), ("facet_dataset_uri",), ("predicted_label_dataset_uri",),
            ("methods", "shap", "baseline"), ("methods", "asymmetric_shapley_value", "baseline"))
MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems: a longer S3 key segment cannot be a file name

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LaunchError(StorageError):
    """The job could not be staged, started or published; the message says what and where (redacted,
    as every ``StorageError``). ``code``: the exit code of ``lucent launch`` when it ends with this error."""

    def __init__(self, message: str, code: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.code = code


def locate(option: str, uri: str) -> Location:
    """``uri`` given for ``option`` (``--data``, ``dataset_uri``, ...), with the option named in errors."""
    try:
        return Location(uri)
    except StorageError as error:
        raise LaunchError(f"{option}: {error}") from error


def _segment_problem(segment: str) -> str | None:
    """Why ``segment`` (one ``/``-separated part of an S3 key) cannot be a file name inside the staging
    folder, or None. ``..``, empty segments (a leading or doubled ``/``) and backslashes would climb
    out of the folder or change meaning on another system; control characters (NUL included) are
    refused by the OS or mangle log lines."""
    if segment in ("", ".", ".."):
        return "an empty, '.' or '..' path segment (a leading '/', '//' or '..' in the key)"
    if "\\" in segment:
        return "a backslash"
    if _CONTROL.search(segment):
        return "a control character (NUL, newline, ...)"
    try:
        size = len(segment.encode("utf-8"))
    except UnicodeEncodeError:
        return "a character that is not valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"a path segment of {size} bytes (at most {MAX_NAME_BYTES})"
    return None


# Characters that change how a line reads without being seen: controls (Cc: C0, DEL, C1 with U+0085
# NEXT LINE), format characters (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, zero-width ones, ...), line and
# paragraph separators (Zl, Zp) and lone surrogates (Cs).
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    code = ord(char)
    if unicodedata.category(char) not in _UNPRINTABLE_CATEGORIES:
        return char
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every invisible control character escaped as Python writes it (``\\x0a``,
    ``\\u202e``, ``\\U000e0001``): an S3 key in a message must not break the message file or a log
    line, smuggle a NUL into them, or reorder what the reader sees (right-to-left override)."""
    if text.isascii() and not _CONTROL.search(text):
        return text  # the usual key: nothing to escape
    return "".join(map(_escape, text))


def contained_path(folder: Path, relative: str, source: str) -> Path:
    """``folder / relative`` for a ``relative`` path someone else chose (the rest of an S3 key):
    refused, with ``source`` named, unless every segment is an ordinary file name and the resolved
    result is inside ``folder``."""
    segments = relative.split("/")
    for segment in segments:
        problem = _segment_problem(segment)
        if problem:
            raise LaunchError(f"{printable(source)}: the key has {problem}, so it cannot be staged inside the "
                              "processing root; rename or remove the object")
    target = folder.joinpath(*segments)
    if not target.resolve().is_relative_to(folder.resolve()):
        raise LaunchError(f"{printable(source)}: the key would be staged outside its folder")
    return target


def staging_targets(location: Location, keys: Iterable[str], dest: Path) -> dict[str, Path]:
    """Where each object of an input goes, as SageMaker's S3Prefix input lays it out: the object itself
    (as ``dest/<name>``) if ``location`` names one, else every object below ``key/`` with its relative
    path. Raises ``LaunchError`` for a key that cannot be staged inside ``dest`` and for two keys that
    would make one path both a file and a folder."""
    keys = set(keys)
    if location.key in keys and location.key and not location.key.endswith("/"):
        relatives = {location.key: location.key.rsplit("/", 1)[-1]}
    else:
        prefix = location.prefix
        relatives = {key: key[len(prefix):] for key in keys if key.startswith(prefix) and not key.endswith("/")}
    if (not relatives and location.key and not location.key.endswith("/")
            and not any(key.startswith(location.prefix) for key in keys)):
        # Nothing at the key and no key/ folder (not even its empty marker): the key as a plain string
        # prefix, as SageMaker's S3Prefix input reads it (s3://b/data/train stages data/train.csv as
        # train.csv, relative to data/).
        folder = location.key.rsplit("/", 1)[0] + "/" if "/" in location.key else ""
        relatives = {key: key[len(folder):] for key in keys
                     if key.startswith(location.key) and not key.endswith("/")}
        if relatives:
            log.info("%s: no object at this key or below %s; staging the %d object(s) whose key starts with it, "
                     "as SageMaker's S3Prefix input does", location, prefix, len(relatives))
    if not relatives:
        raise LaunchError(f"reading {location}: no object at this key or below this prefix")
    targets = {key: contained_path(dest, relative, f"s3://{location.bucket}/{key}")
               for key, relative in sorted(relatives.items())}
    _check_no_file_is_a_folder(targets)
    return targets


def _check_no_file_is_a_folder(targets: dict[str, Path]) -> None:
    """``a`` and ``a/b`` both objects: S3 allows it, a file system does not."""
    files = {target: key for key, target in targets.items()}
    for key, target in targets.items():
        for parent in target.parents:
            if parent in files:
                raise LaunchError(f"s3 objects '{printable(files[parent])}' and '{printable(key)}' would make "
                                  f"'{printable(parent.name)}' both a file and a folder; remove one of them")


def is_work_file(relative: PurePosixPath) -> bool:
    """Not a result: Lucent's own files (``.lucent-*``: SHAP checkpoints in ``.lucent-work``, staging
    leftovers, the output manifest, our probes) and temporary files of atomic writes (``.name.xxxx.tmp``)."""
    return (any(part.startswith(INTERNAL_PREFIX) for part in relative.parts)
            or (relative.name.startswith(".") and relative.name.endswith(".tmp")))


def result_files(folder: Path) -> dict[str, Path]:
    """The files to publish from the job's output folder, by relative POSIX path. Symbolic links are
    skipped, not followed: a job (or an image) could otherwise publish any file of this machine."""
    files = {}
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith(INTERNAL_PREFIX))
        for name in sorted(names):
            path = Path(parent) / name
            relative = PurePosixPath(path.relative_to(folder).as_posix())
            if not path.is_symlink() and path.is_file() and not is_work_file(relative):
                files[relative.as_posix()] = path
    return files


class Store:
    """The S3 operations a launch needs, with S3's errors turned into ``LaunchError``s."""

    def __init__(self, endpoint_url: str | None = None):
        from boto3.s3.transfer import TransferConfig

        self.client = s3_client(endpoint_url)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)

    @contextlib.contextmanager
    def errors(self, action: str, uri: str) -> Iterator[None]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                yield
            except S3UploadFailedError as error:  # upload_file wraps the ClientError that says why
                cause = error.__cause__ or error.__context__
                raise (cause if isinstance(cause, ClientError | BotoCoreError) else error) from None
        except ClientError as error:
            info = error.response.get("Error", {})
            code = info.get("Code", "?")
            hint = {"NoSuchBucket": "the bucket does not exist", "NoSuchKey": "no such object",
                    "404": "no such object", "AccessDenied": "access denied: check the credentials' policy",
                    "403": "access denied: check the credentials' policy"}.get(code, info.get("Message", ""))
            raise LaunchError(f"{action} {uri}: {code}: {hint}") from error
        except (BotoCoreError, S3UploadFailedError, OSError) as error:  # no credentials, endpoint down, retries exhausted, ...
            raise LaunchError(f"{action} {uri}: {boto_problem(error)}") from error

    def objects(self, location: Location, prefix: str | None = None) -> dict[str, tuple[int, str]]:
        """Every object whose key starts with ``prefix`` (default: the location's key as given):
        key -> (size, ETag without quotes)."""
        found = {}
        with self.errors("listing", str(location)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.key if prefix is None else prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
        return found

    def download(self, location: Location, dest: Path) -> dict[str, Path]:
        """Stage ``location`` into ``dest`` (see ``staging_targets``); every key is checked before
        anything is written. Returns where each key went."""
        targets = staging_targets(location, self.objects(location), dest)
        for source, target in targets.items():
            with self.errors("downloading", f"s3://{location.bucket}/{source}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(location.bucket, source, str(target), Config=self.transfer)
        return targets

    def upload(self, files: dict[str, Path], location: Location, remote: dict[str, tuple[int, str]]) -> tuple[int, int]:
        """Put ``files`` (key -> local path) into the location's bucket, concurrently, skipping those
        ``remote`` already holds with the same size and ETag; returns (uploaded, unchanged)."""
        from boto3.s3.transfer import create_transfer_manager

        changed = [(path, key) for key, path in files.items() if remote.get(key) != (path.stat().st_size, etag(path))]
        with self.errors("uploading to", str(location)), create_transfer_manager(self.client, self.transfer) as manager:
            futures = [manager.upload(str(path), location.bucket, key) for path, key in changed]
            for future in futures:
                future.result()  # raises the first failure (after botocore's own retries)
        return len(changed), len(files) - len(changed)

    def upload_folder(self, folder: Path, location: Location) -> tuple[int, int]:
        """Upload every result file below ``folder`` under the prefix; returns (uploaded, unchanged)."""
        files = {location.child(name).key: path for name, path in result_files(folder).items()}
        return self.upload(files, location, self.objects(location, location.prefix))

    def delete(self, location: Location, keys: Iterable[str]) -> None:
        """Delete ``keys`` from the location's bucket, 1,000 per request (the API's limit)."""
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            with self.errors("deleting old results in", str(location)):
                answer = self.client.delete_objects(Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True})
            for failure in answer.get("Errors", []):
                raise LaunchError(f"deleting s3://{location.bucket}/{failure.get('Key')}: "
                                  f"{failure.get('Code')}: {failure.get('Message', '')}")

    def check_writable(self, location: Location) -> None:
        """Put and delete a probe object under the prefix: the bucket exists and we may write and
        delete there (publishing replaces old results, so it needs both)."""
        probe = location.child(f"{INTERNAL_PREFIX}probe-{uuid.uuid4().hex}").key
        with self.errors("writing to", str(location)):
            self.client.put_object(Bucket=location.bucket, Key=probe, Body=b"")
        with self.errors(f"deleting s3://{location.bucket}/{probe} (publishing replaces old results) in",
                         str(location)):
            self.client.delete_object(Bucket=location.bucket, Key=probe)


def etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives ``path`` uploaded with ``part_size`` parts: the MD5, or for a multipart upload the
    MD5 of the parts' MD5s and the part count."""
    parts = []
    with path.open("rb") as stream:
        while chunk := stream.read(part_size):
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if path.stat().st_size < part_size:
        return (parts[0] if parts else hashlib.md5(b"", usedforsecurity=False).digest()).hex()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class Launch:
    """One launch: where things come from and go, and the store that reaches S3 (created lazily, so a
    launch on local paths alone needs neither boto3 credentials nor a network)."""

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url
        self._store: Store | None = None
        self.sources: list[Location] = []  # every input read: never removed as a stale output
        # (staged file or folder, the URI the user gave for it, whether names below it map below the URI)
        self.staged: list[tuple[Path, str, bool]] = []

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.endpoint_url)
        return self._store

    def check_output(self, output: Location) -> None:
        """Fail before any computing if the results could not be published."""
        if output.is_s3:
            if not output.prefix:
                raise LaunchError(f"--output {output} is a whole bucket: give a prefix (s3://{output.bucket}/"
                                  "results/), since publishing replaces everything under --output")
            self.store.check_writable(output)
        else:
            try:
                check_output_folder(output.path)
            except UserError as error:
                raise LaunchError(f"--output: {error}") from error

    def fetch(self, location: Location, dest: Path, option: str | None = None) -> None:
        """Stage ``location`` into the folder ``dest``. A local input given for ``option`` (``--config``,
        ``--data``) is copied with ``copy_local_input``: no link in it may lead out of it."""
        dest.mkdir(parents=True, exist_ok=True)
        self.sources.append(location)
        if location.is_s3:
            targets = self.store.download(location, dest)
            if location.key in targets:  # one object, staged as dest/<its name>
                self.staged.append((targets[location.key], location.uri, False))
            self.staged.append((dest, location.uri, location.key not in targets))
            return
        if location.path.is_file():
            self.staged.append((dest / location.path.name, location.uri, False))
        self.staged.append((dest, location.uri, location.path.is_dir()))
        if option is not None and (location.path.is_dir() or location.path.is_file()):
            copy_local_input(option, location.path, dest)
        elif location.path.is_dir():
            shutil.copytree(location.path, dest, dirs_exist_ok=True)
        elif location.path.is_file():
            shutil.copy2(location.path, dest / location.path.name)
        else:
            raise LaunchError(f"reading {location}: no such file or folder")

    def user_names(self, text: str, root: Path, job_root: Path) -> str:
        """``text`` (an exit message) with the paths of the staged inputs, as this machine (below ``root``)
        or the job (below ``job_root``) names them, replaced by the URIs the user gave: the processing
        root is temporary and removed after the launch. A file below a staged prefix or folder is named
        by its key or path below the URI (``.../input/data/a.csv`` -> ``s3://b/datasets/a.csv``)."""
        replacements: dict[str, tuple[str, bool]] = {}
        for staged, uri, below in self.staged:
            for base in (root, job_root):
                replacements.setdefault(str(base / staged.relative_to(root)), (uri.rstrip("/") if below else uri, below))
        if not replacements:
            return text
        # A path ends where a name does (a final '.' ends a sentence); one with nothing below it also
        # before a '/'. Longest first: input/data is not the start of input/dataset_uri.
        end = r"(?![\w\-]|\.[\w\-])"
        pattern = re.compile("|".join(re.escape(path) + end + ("" if below else "(?!/)") for path, (_, below)
                                      in sorted(replacements.items(), key=lambda item: -len(item[0]))))
        return pattern.sub(lambda match: printable(replacements[match[0]][0]), text)

    def publish(self, root: Path, message: str, output: Location, *, failed: bool = False) -> tuple[str, str]:
        """Replace the results at ``output`` with ``root/output`` and ``message``; returns a one-line
        summary and the message published. ``analysis.json`` and ``message`` go last: together they mark a
        complete result. Lucent's work files there (a failed job's SHAP checkpoints, for its rerun) are not
        results and are never removed by publishing. A failed job that produced no result publishes its
        message alone and removes nothing, as ``lucent run`` does, the message saying when the results
        there are an earlier run's."""
        message_file = root / MESSAGE_FILE
        files = result_files(root / "output") if (root / "output").is_dir() else {}
        if failed and not files:
            message += self.earlier_results_note(output)
            write_text_atomic(message_file, message + "\n")
            return self.publish_files({MESSAGE_FILE: message_file}, output, last=[MESSAGE_FILE],
                                      keep_others=True), message
        write_text_atomic(message_file, message + "\n")
        files[MESSAGE_FILE] = message_file
        summary = self.publish_files(files, output, last=[ANALYSIS_FILE, MESSAGE_FILE])
        if not failed and not output.is_s3:  # a FolderStore's checkpoints (.lucent-work) were removed: its folders too
            remove_empty_work_area(output.path)
        return summary, message

    def earlier_results_note(self, output: Location) -> str:
        """The note a failed job's message gets when ``output`` still holds an earlier run's ``analysis.json``."""
        if not output.is_s3:
            return earlier_results_note(output.path)
        if output.child(ANALYSIS_FILE).key not in self.store.objects(output, output.child(ANALYSIS_FILE).key):
            return ""
        return (f"; {output} still holds an earlier run's results ({ANALYSIS_FILE}, ...), not this run's: this "
                "run published nothing")

    def clear_message(self, output: Location) -> None:
        """Remove the exit message an earlier launch published at ``output``: from now on it would describe
        another run (a launch killed by SIGKILL publishes nothing, and must not leave "Completed" there)."""
        if output.is_s3:
            key = output.child(MESSAGE_FILE).key
            with self.store.errors("deleting the previous exit message in", str(output)):
                self.store.client.delete_object(Bucket=output.bucket, Key=key)
        else:
            with contextlib.suppress(FileNotFoundError):
                (output.path / MESSAGE_FILE).unlink()

    def publish_files(self, files: dict[str, Path], output: Location, last: Sequence[str], *,
                      keep_others: bool = False) -> str:
        """Replace the results at ``output`` with ``files`` (relative name -> local file); returns a one-line
        summary. The ``last`` names are removed first and written last, in order, so that their presence
        marks a complete result (a name in ``last`` that is not in ``files`` is only removed). What the
        previous publication listed in its manifest (``.lucent-outputs.json``) and this one did not
        produce is removed, and nothing else: not the user's files, not the launch's inputs, not what
        a version that kept no manifest published. ``keep_others``: only the ``last`` names change."""
        if output.is_s3:
            return self._publish_s3(files, output, last, keep_others)
        try:
            return self._publish_local(files, output.path, last, keep_others)
        except (OSError, UserError) as error:
            raise LaunchError(f"publishing to {output.path}: {error}") from error

    def _publish_s3(self, files: dict[str, Path], output: Location, last: Sequence[str],
                    keep_others: bool = False) -> str:
        """``publish_files`` to an S3 prefix, with the local folder's manifest (analyzer/output.py: the
        same object name and format) published beside the results: listing both sets while the objects
        change, as ``OutputStaging`` does, so that a launch killed halfway leaves nothing untracked, then
        this publication's alone."""
        store = self.store
        remote = store.objects(output, output.prefix)
        keys = {name: output.child(name).key for name in {*files, *last}}
        store.delete(output, [keys[name] for name in last if keys[name] in remote])
        body = {keys[name]: path for name, path in files.items() if name not in last}
        stale: list[str] = []
        others: list[str] = []  # objects below the prefix that Lucent did not publish: left as they are
        if keep_others:
            uploaded, unchanged = store.upload(body, output, remote)
        else:
            manifest = output.child(MANIFEST_FILE).key
            with tempfile.TemporaryDirectory(prefix="lucent-manifest-") as scratch:
                previous = self._read_manifest(output, manifest, Path(scratch)) if manifest in remote else None
                self._put_manifest(output, sorted({*(previous or ()), *files}), Path(scratch))
                uploaded, unchanged = store.upload(body, output, remote)
                stale = sorted(key for key in {output.child(name).key for name in previous or ()} - set(keys.values())
                               if key in remote and not self._is_source(output.bucket, key))
                store.delete(output, stale)
                self._put_manifest(output, sorted(files), Path(scratch))
            others = [key for key in remote if key not in keys.values() and key not in stale
                      and not is_work_file(PurePosixPath(key[len(output.prefix):]))]
            self._log_others(output, others, previous is not None)
        markers = [(files[name], keys[name]) for name in last if name in files]
        for path, key in markers:
            with store.errors("uploading to", f"s3://{output.bucket}/{key}"):
                store.client.upload_file(str(path), output.bucket, key, Config=store.transfer)
        left = f", {len(others)} other object(s) left" if others else ""
        return f"{uploaded + len(markers)} file(s) uploaded, {unchanged} unchanged, {len(stale)} old removed{left}"

    def _read_manifest(self, output: Location, key: str, scratch: Path) -> list[str]:
        """The names the previous publication's manifest object lists (analyzer/output.py reads it)."""
        with self.store.errors("reading", f"s3://{output.bucket}/{key}"):
            data = self.store.client.get_object(Bucket=output.bucket, Key=key)["Body"].read()
        write_bytes_atomic(scratch / MANIFEST_FILE, data)
        return read_manifest(scratch)

    def _put_manifest(self, output: Location, names: list[str], scratch: Path) -> None:
        """Publish the manifest listing ``names`` (written by analyzer/output.py) as one object."""
        write_manifest(scratch, names)
        key = output.child(MANIFEST_FILE).key
        with self.store.errors("uploading to", f"s3://{output.bucket}/{key}"):
            self.store.client.put_object(Bucket=output.bucket, Key=key, Body=(scratch / MANIFEST_FILE).read_bytes())

    @staticmethod
    def _log_others(output: Location, others: list[str], has_manifest: bool) -> None:
        """Say that the objects at ``output`` that Lucent did not publish were left as they were."""
        if not others:
            return
        why = ("no Lucent manifest lists them" if has_manifest else
               f"there is no Lucent manifest ({MANIFEST_FILE}) there, so they are not Lucent's (or an earlier "
               "version's, which kept no list)")
        log.info("Left %d object(s) below %s as they are: %s (e.g. %s)", len(others), output, why,
                 printable(sorted(others)[0]))

    def _publish_local(self, files: dict[str, Path], dest: Path, last: Sequence[str], keep_others: bool = False) -> str:
        """The job's own publication (``OutputStaging``: staged copies, one rename each, and the files the
        previous launch published but this one did not removed, the user's other files kept), between
        removing the old markers and writing the new ones. ``keep_others``: only the ``last`` files."""
        for name in last:
            (dest / name).unlink(missing_ok=True)
        if keep_others:
            dest.mkdir(parents=True, exist_ok=True)
            for name in last:
                if name in files:
                    write_bytes_atomic(dest / name, files[name].read_bytes())
            return f"{len(files)} file(s) copied"
        with OutputStaging(dest) as staging:
            for name, path in files.items():
                if name not in last:
                    shutil.copyfile(path, staging.path(name))
            staging.commit()
        for name in last:
            if name in files:
                write_bytes_atomic(dest / name, files[name].read_bytes())
        return f"{len(files)} file(s) copied"

    def run_image(self, image: str, root: Path, environment: dict[str, str], output: Location,
                  run_container: ContainerRunner) -> int:
        """Run the job in ``image`` on the staged ``root``. The container is given no credentials, so its
        SHAP checkpoints are copied here, with the launcher's: from their store into the job's work area
        before it starts, and back when it has ended, however it ended (``WorkAreaCopy``)."""
        from container.checkpoint_store import COPIED_BY_LAUNCHER

        copy = self.checkpoint_copy(root, output)
        if copy is not None:
            try:
                copy.pull()
            except UserError as error:
                raise LaunchError(str(error)) from error
            environment = {**environment, COPIED_BY_LAUNCHER: str(copy)}
        code = None
        try:
            code = run_container(image, root, environment)
        finally:
            if copy is not None:
                try:
                    copy.push(succeeded=code == 0)
                except (UserError, OSError) as error:  # the results still get published
                    log.error("The SHAP checkpoints could not be copied to %s (a rerun starts over): %s", copy,
                              error)
        return code

    def checkpoint_copy(self, root: Path, output: Location):  # -> WorkAreaCopy | None (imported lazily)
        """The copy of the job's SHAP checkpoints to and from the store it would use (the config's
        ``lucent.checkpoint_uri``, else ``<output>/.lucent-work``), or None when the config asks for no
        SHAP (the job then leaves its store alone), or when the URI is malformed (the job says so)."""
        from analyzer.explain.checkpoint_store import WORK_AREA, checkpoint_uri
        from container.checkpoint_store import WorkAreaCopy, store_at

        staged = _read_staged_config(root / "input")
        _, shap = _lookup(staged[1], ("methods", "shap")) if staged else (None, None)
        if shap is None:
            return None
        uri = checkpoint_uri(staged[1].get("lucent"), output.uri)
        if uri is None:
            return None
        try:
            store = store_at(uri, self.endpoint_url)
        except StorageError:
            return None
        return WorkAreaCopy(store, root / "output" / WORK_AREA)

    def _is_source(self, bucket: str, key: str) -> bool:
        return any(source.holds(bucket, key) for source in self.sources)

    def stage(self, root: Path, config: Location, data: Location | None, model: Location | None,
              job_root: Path) -> None:
        """Lay out ``root`` as the processing root; ``job_root`` is where the job will see it."""
        inputs = root / "input"
        self.fetch(config, inputs / "config", "--config")
        check_inputs_given(inputs / "config", data, model)
        if data is not None:
            self.fetch(data, inputs / "data", "--data")
        if model is not None:
            self.fetch(model, inputs / "model")
        self._stage_config_uris(inputs, job_root / "input")

    def _stage_config_uris(self, inputs: Path, job_inputs: Path) -> None:
        """Download the config's ``s3://`` datasets and point the staged config at them; refuse any other
        location. A config fetched from elsewhere must not make the job read (and publish) a file of this
        machine, such as ``~/.aws/credentials``."""
        staged = _read_staged_config(inputs)
        if staged is None:
            return
        config_file, tree = staged
        job_config_dir = job_inputs / config_file.parent.relative_to(inputs)
        changed = False
        for path in URI_KEYS:
            parent, value = _lookup(tree, path)
            if not isinstance(value, str):
                continue  # absent, or inline rows / a JSON document
            key = ".".join(path)
            if uri_scheme(value) == "s3":
                new = self._stage_s3_dataset(key, locate(key, value), inputs / "_".join(path), job_inputs)
            else:
                new = staged_input_path(key, value, inputs, job_inputs, job_config_dir)
            if new != value:
                parent[path[-1]] = new
                changed = True
        _check_checkpoint_uri(tree)
        if changed:
            write_text_atomic(config_file, json.dumps(tree, indent=2))

    def _stage_s3_dataset(self, key: str, location: Location, dest: Path, job_inputs: Path) -> str:
        self.fetch(location, dest)
        staged = list(dest.iterdir())
        only_file = len(staged) == 1 and staged[0].is_file()
        job_path = job_inputs / (staged[0].relative_to(dest.parent) if only_file else dest.name)
        log.info("Staged %s %s as %s", key, location, job_path)
        return str(job_path)


def _check_checkpoint_uri(tree: dict[str, Any]) -> None:
    """A ``lucent.checkpoint_uri`` must be an ``s3://`` URI under ``lucent launch``: a local one names a folder
    of this machine (or of the container) outside the staged processing root, where the job would write,
    list and remove files. As for the datasets, a config fetched from elsewhere names no local path;
    without the key the checkpoints are kept beside ``--output`` (``<output>/.lucent-work``)."""
    from analyzer.explain.checkpoint_store import CHECKPOINT_URI_KEY

    _, value = _lookup(tree, ("lucent", CHECKPOINT_URI_KEY))
    if isinstance(value, str) and value.strip() and uri_scheme(value) != "s3":
        raise LaunchError(f"lucent.{CHECKPOINT_URI_KEY}: {value!r} is not an s3:// URI; under `lucent launch` "
                          "the SHAP checkpoints are kept on S3 (an s3:// checkpoint_uri), or beside --output when "
                          "the key is left out, never in another local folder")


def check_inputs_given(config_dir: Path, data: Location | None, model: Location | None) -> None:
    """Before the data and the model are staged: a config that needs a dataset (no ``dataset_uri``) or a
    model folder (predictions, and no ``predictor.endpoint_url`` / ``image_uri``) got ``--data`` /
    ``--model``. Otherwise the job would fail later naming a temporary folder the user never saw. A
    config that does not load is left to the job, which lists its problems."""
    if data is not None and model is not None:
        return
    from analyzer.config import find_config_file, load_config
    from analyzer.pipeline import needs_model

    try:
        config = load_config(find_config_file(config_dir))
    except UserError:
        return
    missing = []
    if data is None and not config.dataset_uri:
        missing.append("the config has no dataset_uri: pass --data URI (the dataset: an s3:// object or prefix, "
                       "or a local file or folder)")
    predictor = config.predictor
    if (model is None and predictor is not None and needs_model(config) and not predictor.endpoint_url
            and not predictor.image_uri):
        named = (f" (predictor.endpoint_name {predictor.endpoint_name!r} names a SageMaker endpoint, which cannot be "
                 "called here)" if predictor.endpoint_name else "")
        missing.append(f"the config asks for predictions{named}: pass --model URI (the model folder or "
                       "model.tar.gz, on S3 or local), or set predictor.endpoint_url to a running model server")
    if missing:
        raise LaunchError("; ".join(missing))


def copy_local_input(option: str, source: Path, dest: Path) -> None:
    """Copy the local file or folder ``source`` (given for ``option``) into the folder ``dest``, links
    followed, refusing any link that leads out of the input (for a folder, the folder itself; for a
    file, the folder holding it), a link to nothing, a folder linked into itself, and anything that is
    neither a file nor a folder (a FIFO would block the copy).

    Why: an input folder may come from someone else, and ``ldata/creds.csv -> ~/.aws/credentials``
    would otherwise be staged, read and published, which ``lucent run`` refuses for the same layout.
    """
    root = (source.parent if source.is_file() else source).resolve()
    if source.is_symlink() and not source.resolve().is_relative_to(source.parent.resolve()):
        raise LaunchError(_link_refusal(option, source, source.resolve(), source.parent))
    if source.is_file():
        shutil.copy2(source, dest / source.name)
        return
    _copy_folder(option, source, dest, root, frozenset({root}))


def _copy_folder(option: str, folder: Path, dest: Path, root: Path, open_folders: frozenset[Path]) -> None:
    """``copy_local_input`` of one folder; ``open_folders`` are the real folders being copied around it
    (a link back to one of them would copy forever)."""
    dest.mkdir(exist_ok=True)
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        path = folder / name
        real = path
        if path.is_symlink():
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                raise LaunchError(f"{option}: {printable(str(path))} is a link to nothing (or a loop of "
                                  "links); remove it or make it point to a file in the input") from None
            if not real.is_relative_to(root):
                raise LaunchError(_link_refusal(option, path, real, root))
        if path.is_dir():
            real = real.resolve()
            if real in open_folders:
                raise LaunchError(f"{option}: {printable(str(path))} is a link to one of its own parent "
                                  "folders; remove it")
            _copy_folder(option, path, dest / name, root, open_folders | {real})
        elif path.is_file():
            shutil.copy2(path, dest / name)
        else:
            raise LaunchError(f"{option}: {printable(str(path))} is neither a file nor a folder (a FIFO, "
                              "socket or device); remove it from the input")


def _link_refusal(option: str, link: Path, target: Path, root: Path) -> str:
    return (f"{option}: {printable(str(link))} is a link to {printable(str(target))}, outside "
            f"{printable(str(root))}; `lucent launch` stages no file from outside a local input (copy the "
            "file into it instead)")


def staged_input_path(key: str, value: str, inputs: Path, job_inputs: Path, job_config_dir: Path) -> str:
    """The path the job will use for config ``key``'s local ``value``, which must lie in the staged
    inputs as the job sees them (``job_inputs``; relative paths are taken from the config's folder, and
    ``/opt/ml/processing/input/...`` is accepted for an in-process job too). Anything else, ``~/...``,
    ``/etc/...`` or ``file:///...`` included, is a ``LaunchError`` naming ``key``."""
    # The value goes before a word, not a colon: "passwd':" would read as a secret field to redact().
    refusal = (f"{key}: {value!r} is not an s3:// URI or a path in the staged inputs (e.g. "
               "/opt/ml/processing/input/data/..., or relative to the config: ../data/...); under "
               "`lucent launch` the job reads no other local file")
    if "\x00" in value:
        raise LaunchError(refusal)
    try:
        from analyzer.data import resolve_local_path  # pandas: only when a config is staged

        job_path = Path(os.path.normpath(resolve_local_path(value, base_dir=job_config_dir)))
    except UserError as error:
        raise LaunchError(f"{key}: {error}") from error
    for seen_as in (job_inputs, CONTAINER_ROOT / "input"):
        if job_path.is_relative_to(seen_as):
            relative = job_path.relative_to(seen_as)
            break
    else:
        raise LaunchError(refusal)
    if not (inputs / relative).resolve().is_relative_to(inputs.resolve()):  # a symbolic link out of the inputs
        raise LaunchError(refusal)
    return str(job_inputs / relative)


def _read_staged_config(inputs: Path) -> tuple[Path, dict[str, Any]] | None:
    """The staged config file and its JSON, read as the job reads it (a UTF-8 BOM allowed), or None
    when the job will refuse it anyway (then it reports the problem properly)."""
    from analyzer.config import find_config_file

    try:
        config_file = find_config_file(inputs / "config")
        tree = json.loads(config_file.read_bytes().decode("utf-8-sig"))
    except (UserError, OSError, ValueError, RecursionError) as error:
        log.debug("config not rewritten: %s", error)
        return None
    return (config_file, tree) if isinstance(tree, dict) else None


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any] | None, Any]:
    """The dict holding ``path``'s last key, and its value (None, None when a level is missing)."""
    parent: Any = tree
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    return (parent, parent.get(path[-1])) if isinstance(parent, dict) else (None, None)


def run_in_container(image: str, root: Path, environment: dict[str, str] | None = None) -> int:
    """Run ``image`` on the staged processing root as SageMaker would: no arguments, inputs read-only;
    ``environment``: variables the job is given."""
    import docker.errors

    try:
        client = connect_engine("--image")
    except EngineUnavailable as error:
        raise LaunchError(str(error)) from error
    volumes = {str(root / "input"): {"bind": str(CONTAINER_ROOT / "input"), "mode": "ro"},
               str(root / "output"): {"bind": str(CONTAINER_ROOT / "output"), "mode": "rw"},
               str(root / "message-dir"): {"bind": "/opt/ml/output", "mode": "rw"}}
    for folder in ("output", "message-dir"):
        (root / folder).mkdir(exist_ok=True)
    try:
        # Our uid, so the results belong to whoever launched the job (the image runs any uid).
        container = client.containers.run(image, detach=True, volumes=volumes, user=f"{os.getuid()}:{os.getgid()}",
                                          labels={"lucent.role": "job"}, environment=environment or {})
    except docker.errors.ImageNotFound as error:
        raise LaunchError(f"--image: image {image!r} not found: {error.explanation}") from error
    except docker.errors.APIError as error:
        raise LaunchError(f"--image: could not start {image!r}: {error.explanation}") from error
    try:
        for line in container.logs(stream=True, follow=True):
            log.info("[job] %s", line.decode("utf-8", "replace").rstrip())
        code = container.wait()["StatusCode"]
    finally:
        discard_container(container, "job")
    keep_container_message(root, code)
    return code


def keep_container_message(root: Path, code: int) -> None:
    """Write ``root/message`` (what is published) from the message the job container wrote in
    ``root/message-dir``, or say it left none (``container_message``)."""
    message = container_message(root / "message-dir" / "message")
    if message is not None:
        write_bytes_atomic(root / "message", message)
    else:
        (root / "message").write_text(f"{ALGORITHM_ERROR}: the job container exited with code {code} and left no "
                                      "exit message\n", encoding="utf-8")


# The most of a job container's exit message that is read and published. SageMaker itself cuts a job's exit
# message at 1 KB (its FailureReason), and Lucent's own are a few lines; 1 MiB keeps whole any message a job
# means to leave, while an image that writes gigabytes there fills neither this machine's memory nor --output.
MAX_CONTAINER_MESSAGE_BYTES = 2**20


def container_message(path: Path) -> bytes | None:
    """The exit message the job container wrote at ``path``, or None when it wrote none. The file is opened
    without following a link (as ``result_files`` skips them): the image could otherwise make this
    launcher publish any file of this machine. A link, or anything but a plain file, is skipped with a
    warning naming it. At most ``MAX_CONTAINER_MESSAGE_BYTES`` are read: a longer message is published cut
    there, with a note saying so. It is published as UTF-8 text: bytes that are not (a character the cut
    split, an image's other encoding) are replaced by U+FFFD."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        why = "a symbolic link, not followed" if error.errno == errno.ELOOP else error.strerror or str(error)
        log.warning("The job container's exit message %s is %s: not published", path, why)
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log.warning("The job container's exit message %s is not a plain file: not published", path)
            return None
        message = handle.read(MAX_CONTAINER_MESSAGE_BYTES + 1)
        size = max(os.fstat(handle.fileno()).st_size, len(message))  # for the note: the rest is never read
    text = message[:MAX_CONTAINER_MESSAGE_BYTES].decode("utf-8", "replace")
    if len(message) > MAX_CONTAINER_MESSAGE_BYTES:
        log.warning("The job container's exit message %s holds %d bytes: only its first %d are published", path,
                    size, MAX_CONTAINER_MESSAGE_BYTES)
        text = (f"{text.rstrip()}\n[the job container's exit message was cut here: it holds {size} bytes, only "
                f"the first {MAX_CONTAINER_MESSAGE_BYTES} are published]\n")
    return text.encode()


ContainerRunner = Callable[[str, Path, dict[str, str]], int]  # run_in_container's signature


def launch(config: str, output: str, data: str | None = None, model: str | None = None, image: str | None = None,
           endpoint_url: str | None = None, work_dir: Path | None = None,
           run_container: ContainerRunner | None = None) -> tuple[int, str]:
    """Check the output, stage, run and publish one job; returns (exit code, exit message). Raises
    ``LaunchError`` only when not even the message could be published: then nothing was computed (the
    URIs are malformed or the output is not writable) or the local copy is kept, and the error says
    where. ``run_container``: what runs ``image`` (default ``run_in_container``)."""
    with stop_on_signals():  # SIGTERM and Ctrl-C stop the launch as they stop a job: a message, no traceback
        runner = Launch(endpoint_url)
        # Every URI is parsed before anything is written: a typing mistake is the command line's error, not
        # an exit message that replaces the previous run's at --output.
        destination = locate("--output", output)
        inputs = (locate("--config", config), None if data is None else locate("--data", data),
                  None if model is None else locate("--model", model))
        runner.check_output(destination)
        runner.clear_message(destination)
        root = Path(tempfile.mkdtemp(prefix="lucent-launch-", dir=work_dir))
        published = False
        try:
            code, message = _run(runner, root, inputs, destination, image, run_container or run_in_container)
            try:
                summary, message = runner.publish(root, message, destination, failed=code != 0)
            except StorageError as error:
                raise LaunchError(f"{error}; the results are kept in {root / 'output'} and the exit message in "
                                  f"{root / MESSAGE_FILE}") from error
            except JobStopped as stop:
                raise LaunchError(f"stopped ({stop.signal_name}) while publishing to {destination}; the results "
                                  f"are kept in {root / 'output'} and the exit message in {root / MESSAGE_FILE}",
                                  EXIT_STOPPED) from None
            published = True
        finally:
            if published:
                shutil.rmtree(root, ignore_errors=True)
            else:  # the job's results may be the only copy: never delete them unpublished
                log.error("Nothing (or not everything) was published to %s; the job's folder is kept: %s",
                          destination, root)
    log.info("Results in %s (%s)", destination, summary)
    return code, message


def _run(runner: Launch, root: Path, inputs: tuple[Location, Location | None, Location | None], destination: Location,
         image: str | None, run_container: ContainerRunner) -> tuple[int, str]:
    """Stage and run the job in ``root``; returns (exit code, redacted exit message naming the user's
    URIs, not the staged copies). A problem staging or starting it is the job's ``ClientError``, published
    like any other failure. The job is told where its output is published (``LUCENT_OUTPUT_URI``), for
    the paths analysis.json names and for its SHAP checkpoints."""
    (root / "output").mkdir()
    job_root = CONTAINER_ROOT if image else root
    try:
        runner.stage(root, *inputs, job_root)
        told = {OUTPUT_URI_VARIABLE: redact_url(destination.uri)}
        if image:
            code = runner.run_image(image, root, told, destination, run_container)
        else:
            with environment_set(told):
                code = run_job(JobPaths.for_root(root))
        message = (root / MESSAGE_FILE).read_text(encoding="utf-8").strip()
    except (StorageError, JobStopped) as error:  # while staging or starting (the job writes its own message)
        failed = outcome_of(error)
        code, message = failed.code, failed.message
        if isinstance(error, JobStopped):
            log.error("Signal %d received, cleaning up", error.signum)
        else:
            log.error("%s", message)
        shutil.rmtree(root / "output", ignore_errors=True)  # nothing half-made gets published
    return code, redact(runner.user_names(message, root, job_root))


LAUNCH_DESCRIPTION = """\
Run one processing job as SageMaker Processing runs the Clarify container, on S3 (any S3-compatible
store: AWS, MinIO, Ceph, ...) or local inputs:

  1. check that --output can be written (before anything is downloaded or computed);
  2. download --config, --data and --model into a temporary processing root, and the files the config
     names by s3:// URI (dataset_uri, facet_dataset_uri, predicted_label_dataset_uri, SHAP baselines);
  3. run the job (in this process, or in a container with --image);
  4. publish the results and the exit message ("message") to --output, replacing what the previous
     launch published there (listed in .lucent-outputs.json) and nothing else; analysis.json and
     message are written last. A failed job publishes its message alone (an earlier run's results
     stay, and the message says they are not this run's).

A launch that cannot run the job or publish its results (a malformed URI, an output that cannot be
written, no credentials, a failed upload) prints "error: ..." on stderr and exits non-zero.

--model is needed when the config asks for predictions (SHAP, PDP, or post-training bias without
predicted labels) and names no predictor.endpoint_url or image_uri; --data unless the config has a
dataset_uri. S3 credentials come from boto3's usual chain (environment, ~/.aws, instance role).
"""

LAUNCH_EPILOG = """\
example (MinIO on minio.local; omit AWS_ENDPOINT_URL for AWS S3):
  export AWS_ENDPOINT_URL_S3=http://minio.local:9000   # or AWS_ENDPOINT_URL, or --endpoint-url
  lucent launch --config s3://bucket/jobs/credit/config/ --data s3://bucket/datasets/credit/ \\
                --model s3://bucket/models/credit/model.tar.gz --output s3://bucket/results/credit/
  # results: s3://bucket/results/credit/analysis.json, report.html, ...; exit message: .../message

exit codes: 0 success, 1 a problem with the inputs (ClientError: ...), 2 an internal or model error
(AlgorithmError: ...) or a stopped job (Stopped: ..., after SIGTERM or Ctrl-C). See docs/running.md.
"""


def add_launch_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``launch`` on the ``lucent`` subcommand parser."""
    parser = subparsers.add_parser(
        "launch", help="run a job on S3 (or local) inputs and publish its results, as SageMaker Processing does",
        description=LAUNCH_DESCRIPTION, epilog=LAUNCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="URI",
                        help="analysis config: s3://bucket/key (an object or a prefix) or a local file/folder")
    parser.add_argument("--data", metavar="URI", help="dataset (object, prefix or local path); optional when the "
                                                      "config has dataset_uri")
    parser.add_argument("--model", metavar="URI",
                        help="model folder or model.tar.gz (object, prefix or local path); needed when the config "
                             "asks for predictions and has no predictor.endpoint_url / image_uri")
    parser.add_argument("--output", required=True, metavar="URI",
                        help="where the results and the exit message (message) go: s3://bucket/prefix/ or a "
                             "local folder")
    parser.add_argument("--image", help="run the job in this container image (default: in this process)")
    parser.add_argument("--endpoint-url", default=None, metavar="URL",
                        help="S3 API endpoint (default: $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="where to stage (default: the temp folder)")
    add_log_arguments(parser)
    return parser


def run_launch(args: argparse.Namespace) -> int:
    """``lucent launch``: prints where the results are and the exit message; returns the exit code."""
    configure_logging(level=level_from_args(args))
    install_redaction()  # botocore's debug log (-v) prints request headers and credentials
    try:
        code, message = launch(args.config, args.output, args.data, args.model, args.image, args.endpoint_url,
                               args.work_dir)
    except (Exception, JobStopped) as error:  # noqa: BLE001 - a launch that fails must still end with a clear line
        code, said = launch_failure(error)
        print(f"error: {said}", file=sys.stderr)
        return code
    print(f"results: {redact_url(args.output)}\nmessage: {message}")
    return code


def launch_failure(error: BaseException) -> tuple[int, str]:
    """The exit code and the ``error: ...`` line of a ``launch`` that raised ``error`` (and so published no
    message), by ``container.outcome``: the user's error prints its reason, any other its exit message. A
    ``LaunchError`` keeps its own code (2 when the launch was stopped while publishing)."""
    failed = outcome_of(error)
    if failed.internal:
        log.exception("launch failed", exc_info=error)
    if isinstance(error, LaunchError):
        return error.code, failed.reason
    return failed.code, redact(failed.reason if failed.prefix == CLIENT_ERROR else failed.message)


def main(argv: list[str] | None = None) -> int:
    """``python -m container.launcher ...`` is ``lucent launch ...``."""
    from container.cli import main as lucent

    return lucent(["launch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
