"""Writing results so that a failed job never leaves a half-written file in the output folder.

Everything a job produces is first written into a staging folder inside the output folder (same
filesystem, so the final ``os.replace`` is an atomic rename), and only moved into place when the job
has succeeded. A job that fails removes its staging folder; the output folder then holds nothing
from that run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

ANALYSIS_FILE = "analysis.json"
PUBLISHED_FILE_MODE = 0o644


def to_json_safe(value: Any) -> Any:
    """Clarify's JSON rules: +/-inf become the strings "Infinity"/"-Infinity", NaN becomes null."""
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if math.isnan(value):
            return None
        return value
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return to_json_safe(value.item())
    return value


def dumps(document: Any, indent: int | None = 4) -> str:
    return json.dumps(to_json_safe(document), indent=indent, allow_nan=False, ensure_ascii=False)


class OutputStaging:
    """Collects a job's output files and publishes them together.

    >>> with OutputStaging(out_dir) as staging:          # doctest: +SKIP
    ...     staging.write_json("analysis.json", results)
    ...     staging.commit()                              # files appear in out_dir
    Leaving the block without ``commit()`` (e.g. on an exception) discards everything.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir = Path(tempfile.mkdtemp(prefix=".lucent-staging-", dir=self.output_dir))
        self._committed = False

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` while staging (parent folders are created)."""
        target = self.staging_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_text(self, relative: str, text: str) -> Path:
        target = self.path(relative)
        target.write_text(text, encoding="utf-8")
        return self.output_dir / relative

    def write_json(self, relative: str, document: Any) -> Path:
        return self.write_text(relative, dumps(document) + "\n")

    def commit(self) -> list[Path]:
        """Move every staged file to its final place (one atomic rename per file)."""
        published = []
        for staged in sorted(p for p in self.staging_dir.rglob("*") if p.is_file()):
            final = self.output_dir / staged.relative_to(self.staging_dir)
            final.parent.mkdir(parents=True, exist_ok=True)
            # Temporary files are created 0600; results are read by others (the uploader, a host user
            # reading a container's output volume), so publish them like ordinary files.
            os.chmod(staged, PUBLISHED_FILE_MODE)
            os.replace(staged, final)
            published.append(final)
        self._committed = True
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        return published

    def discard(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def __enter__(self) -> OutputStaging:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._committed:
            self.discard()


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing so that it is either complete or untouched: the handle writes to a
    temporary file in the same folder, renamed over ``path`` when the block ends without an exception.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. The one atomic-write helper: use it (or
    :class:`OutputStaging` for a job's whole output set) instead of another mkstemp + rename.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
        os.chmod(tmp, PUBLISHED_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write one text file atomically."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write one binary file atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
