"""Finding and opening dataset files: URIs to local paths, folders to file lists, transparent gzip.

A dataset is a file or a folder. A folder is read recursively, like Clarify reads an S3 prefix: every
file below it, in the order of their relative paths, so that a dataset split into ``part-00000``,
``part-00001``, ... keeps its row order. Hidden files and Spark/Hadoop markers (any path component
starting with ``.`` or ``_``: ``.part-0.crc``, ``_SUCCESS``, ``_committed_123``) are not data and are
skipped. Files whose name ends in ``.gz`` are decompressed on the fly.

Symbolic links are followed, to files and to folders alike, as ``cat`` and ``aws s3 sync`` would: a
linked folder is read as if its files were there. A link that points to one of its own parent folders
(a loop) or to nothing is an error naming the link, never silently skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa

from analyzer.errors import DataError


def resolve_local_path(uri: str, *, base_dir: Path | None = None, key: str | None = None) -> Path:
    """The local path a dataset URI names: an absolute or relative path, or a ``file://`` URI.

    Relative paths are taken from ``base_dir`` (default: the current directory). ``s3://`` URIs are
    refused: ``lucent launch`` downloads them and gives the job local paths. ``key``: the config key
    the URI was given for, named in the error (``methods.shap.baseline: s3://...``).
    """
    if "\x00" in uri or "%00" in uri:  # the OS refuses such names; say so instead of a ValueError later
        raise DataError(f"{uri!r}: a path cannot contain a NUL character.")
    parsed = urlparse(uri)
    if parsed.scheme.lower() == "s3":
        raise DataError(s3_refusal(uri, key))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"{uri}: file:// URIs must name a local file (file:///path/to/data).")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise DataError(f"{uri}: unsupported URI scheme {parsed.scheme!r}; give a local path or file:// URI.")
    path = Path(uri).expanduser()
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def s3_refusal(uri: str, key: str | None = None) -> str:
    """Why a job on local files cannot read the ``s3://`` ``uri`` given for config ``key``, and what to do."""
    named = f"{key}: " if key else ""
    return (f"{named}{uri}: S3 URIs are read by `lucent launch`, which downloads them and gives the job local "
            "paths; `lucent run` reads local files only. Run the job with `lucent launch`, or download the "
            "file into the processing root and give its path (or a file:// URI).")


def list_data_files(path: Path) -> list[Path]:
    """The data files of a dataset: ``path`` itself, or every visible file below the folder ``path``."""
    if not path.exists():
        raise DataError(
            f"Dataset not found: {path} does not exist. Check `dataset_uri` in the analysis config "
            "(or the dataset input) and that the data was copied there."
        )
    if path.is_file():
        return [path]
    files = sorted(_walk_files(path), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise DataError(
            f"Dataset folder {path} contains no data files (hidden files and markers starting with "
            "'.' or '_', such as _SUCCESS, are ignored). Put the dataset files there or point "
            "`dataset_uri` at a file."
        )
    return files


def _walk_files(folder: Path) -> list[Path]:
    """Every visible file below ``folder``, following symbolic links to files and folders.

    ``Path.rglob`` follows links to files but not to folders; this walk treats both alike. A folder
    reached again through a link below itself would repeat forever: that is reported, as is a dangling link.
    """
    files = []
    # (folder, real paths of the folders from the root down to it): a link back into that chain is a loop
    pending = [(folder, (folder.resolve(),))]
    while pending:
        current, chain = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise DataError(f"Cannot list the dataset folder {current}: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            entry_path = Path(entry.path)
            if entry.is_dir():  # follows links
                real = entry_path.resolve()
                if real in chain:
                    raise DataError(f"Dataset folder {folder}: the link {entry_path} points to {real}, a folder "
                                    "that contains it, so the dataset would never end. Remove the link.")
                pending.append((entry_path, (*chain, real)))
            elif entry.is_file():
                files.append(entry_path)
            elif entry.is_symlink() and not entry_path.exists():
                raise DataError(f"Dataset folder {folder}: the link {entry_path} points to "
                                f"{os.readlink(entry_path)}, which does not exist. Fix or remove the link.")
    return files


def first_outside(path: Path, root: Path) -> Path | None:
    """The first of ``path`` and the data files below it whose real location (links followed, ``..``
    resolved) is not inside ``root``; None when all are inside. A missing ``path`` is checked by name."""
    root = root.resolve()
    if not path.resolve().is_relative_to(root):
        return path
    if not path.is_dir():
        return None
    try:
        files = list_data_files(path)
    except DataError:  # an empty folder or a link loop: reading the dataset reports it
        return None
    return next((file for file in files if not file.resolve().is_relative_to(root)), None)


def no_data_rows(source: str, files: list[Path]) -> DataError:
    names = ", ".join(str(f) for f in files[:3]) + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")
    return DataError(f"The dataset {source} has no data rows (files read: {names}). Check the path, and "
                     "that the files are not empty or only a header row.")


def is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def open_stream(path: Path) -> pa.NativeFile:
    """A binary input stream over the file's (decompressed, for ``.gz``) bytes."""
    try:
        return pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
    except OSError as exc:
        raise read_error(path, exc) from exc


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of a file."""
    try:
        with open_stream(path) as stream:
            return stream.read()
    except OSError as exc:
        raise read_error(path, exc) from exc


def read_error(path: Path, exc: Exception) -> DataError:
    """The DataError for an I/O failure: a corrupt gzip stream is the usual cause for ``.gz`` files."""
    if is_gzip(path):
        return DataError(
            f"{path}: cannot decompress this .gz file ({exc}). It is corrupt or truncated: "
            "compress the file again (gzip) or remove it from the dataset."
        )
    return DataError(f"{path}: cannot read the file ({exc}).")
