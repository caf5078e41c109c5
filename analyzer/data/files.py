"""Finding and opening dataset files: URIs to local paths, folders to file lists, transparent gzip.

A dataset is a file or a folder. A folder is read recursively, like Clarify reads an S3 prefix: every
file below it, in the order of their relative paths, so that a dataset split into ``part-00000``,
``part-00001``, ... keeps its row order. Hidden files and Spark/Hadoop markers (any path component
starting with ``.`` or ``_``: ``.part-0.crc``, ``_SUCCESS``, ``_committed_123``) are not data and are
skipped. Files whose name ends in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa

from analyzer.errors import DataError


def resolve_local_path(uri: str, *, base_dir: Path | None = None) -> Path:
    """The local path a dataset URI names: an absolute or relative path, or a ``file://`` URI.

    Relative paths are taken from ``base_dir`` (default: the current directory). ``s3://`` URIs are
    refused for now: a later ``lucent launch`` will stage S3 data to local paths before the analysis.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        raise DataError(
            f"{uri}: S3 URIs need `lucent launch` (not available yet). "
            "Download the data and give a local path or file:// URI instead."
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"{uri}: file:// URIs must name a local file (file:///path/to/data).")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise DataError(f"{uri}: unsupported URI scheme {parsed.scheme!r}; give a local path or file:// URI.")
    path = Path(uri).expanduser()
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def list_data_files(path: Path) -> list[Path]:
    """The data files of a dataset: ``path`` itself, or every visible file below the folder ``path``."""
    if not path.exists():
        raise DataError(
            f"Dataset not found: {path} does not exist. Check `dataset_uri` in the analysis config "
            "(or the dataset input) and that the data was copied there."
        )
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path))),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(
            f"Dataset folder {path} contains no data files (hidden files and markers starting with "
            "'.' or '_', such as _SUCCESS, are ignored). Put the dataset files there or point "
            "`dataset_uri` at a file."
        )
    return files


def no_data_rows(source: str, files: list[Path]) -> DataError:
    names = ", ".join(str(f) for f in files[:3]) + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")
    return DataError(f"The dataset {source} has no data rows (files read: {names}). Check the path, and "
                     "that the files are not empty or only a header row.")


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


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
