"""JSON Lines files (capture and ground truth) read in chunks, for the window merge (``analyzer.monitor.merge``).

pyarrow parses a chunk's lines; where it refuses one, Python's ``json`` reads them line by line, so that
each malformed line is counted and named (``MalformedLines``) by its file and line (``Origins``)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from analyzer.errors import UserError
from analyzer.progress import progress

log = logging.getLogger("analyzer.monitor.merge")  # the merge's messages keep the logger name they always had

CaptureFile = tuple[str, bytes]  # (name used in messages: the key or path; the file's bytes)

MAX_MALFORMED_FRACTION = 0.01  # more malformed lines than this fails the execution
MAX_EXAMPLES = 10  # malformed lines listed by file and line
_BLOCK_BYTES = 4 << 20  # pyarrow.json block; grown for a line longer than it (payloads reach megabytes)
# A capture line holds one invocation: a request and a response of at most 6 MB each (the runtime API's
# cap), base64 at worst: about 17 MB. A longer line is a malformed line, not parsed (a 1 GB line took
# pyarrow's block size past int32 and 4 GB of memory in Python's json).
MAX_LINE_BYTES = 64 << 20


# -- bad lines ------------------------------------------------------------------------------------

@dataclass
class MalformedLines:
    """Malformed lines of one kind of file: counted, the first ``MAX_EXAMPLES`` kept as examples."""

    what: str  # "capture" or "ground truth"
    lines: int = 0  # non-blank lines read
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def absorb(self, other: MalformedLines) -> None:
        """Add the lines and malformed lines ``other`` counted (a chunk read on the reader thread)."""
        self.lines += other.lines
        self.count += other.count
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])

    def check(self) -> None:
        """Fail when more than 1 % of the lines are malformed (the examples name them)."""
        if self.count and self.count > MAX_MALFORMED_FRACTION * self.lines:
            raise UserError(
                f"{self.count} of the {self.lines} {self.what} lines read are malformed (more than "
                f"{MAX_MALFORMED_FRACTION:.0%}): {'; '.join(self.examples)}"
                + (f"; ... ({self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""))
        if self.count:
            log.warning("Skipped %d malformed %s line(s) of %d: %s", self.count, self.what, self.lines,
                        "; ".join(self.examples))


class Origins:
    """``file line n`` of the i-th non-blank line of a chunk, worked out only when a message needs it.

    Without blank lines (the writer leaves none, and then the newline counts add up to the rows pyarrow
    read) a row's file and line come from the files' newline counts; otherwise from splitting the files."""

    def __init__(self, files: list[CaptureFile] | None = None, explicit: list[str] | None = None, n_rows: int = 0):
        self._files = files
        self._names = explicit
        self._n_rows = n_rows
        self._ends: np.ndarray | None = None

    def __call__(self, row: int) -> str:
        if self._names is None and self._ends is None:
            assert self._files is not None
            counts = [data.count(b"\n") + (not data.endswith(b"\n")) for _, data in self._files if data]
            if sum(counts) == self._n_rows:
                self._ends = np.cumsum(counts)
                self._files = [item for item in self._files if item[1]]
            else:
                self._names = [f"{name} line {number}" for name, data in self._files
                               for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
        if self._names is not None:
            return self._names[row]
        assert self._ends is not None and self._files is not None
        file = int(np.searchsorted(self._ends, row, side="right"))
        first = int(self._ends[file - 1]) if file else 0
        return f"{self._files[file][0]} line {row - first + 1}"


# -- reading JSON Lines files in chunks -------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"


def file_chunks(files: Iterable[CaptureFile], chunk_bytes: int, counter: list[int],
            what: str = "capture") -> Iterator[list[CaptureFile]]:
    chunk: list[CaptureFile] = []
    size = 0
    # Thousands of small files from S3 take a while (tens of seconds for a day of hourly traffic): show it.
    with progress(f"Reading {what} files", None, "files") as shown:
        for name, data in files:
            counter[0] += 1
            shown.update()
            if bytes(data[:2]) == GZIP_MAGIC:  # every line would be "not UTF-8 text": say what the file is
                writers = ", as SageMaker's data capture and `lucent endpoint` write them" if what == "capture" else ""
                raise UserError(f"{name} is gzip-compressed: {what} files are plain JSON Lines (UTF-8 text, one "
                                f"{what} record per line){writers}; decompress it (gunzip) in place")
            chunk.append((name, bytes(data)))
            size += len(data)
            if size >= chunk_bytes:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk


def read_json_lines(files: list[CaptureFile], schema: pa.Schema) -> pa.Table | None:
    """The chunk's lines as a table of ``schema``'s fields, or None when pyarrow refuses a line."""
    body = b"".join(data if data.endswith(b"\n") else data + b"\n" for _, data in files if data)
    if len(body) > MAX_LINE_BYTES and _longest_line(body) > MAX_LINE_BYTES:
        return None  # read line by line (``python_lines``), where a line too long is a malformed one
    block = _BLOCK_BYTES
    while True:
        try:
            return pajson.read_json(io.BytesIO(body), read_options=pajson.ReadOptions(block_size=block),
                                    parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                      unexpected_field_behavior="ignore"))
        except pa.ArrowInvalid as error:
            if "straddl" in str(error) and block < min(len(body), MAX_LINE_BYTES):
                block = min(block * 8, MAX_LINE_BYTES)  # a line longer than a block
                continue
            return None  # read line by line (``python_lines``), where a line too long is a malformed one


def _longest_line(body: bytes) -> int:
    """The longest line's length in bytes, its line end included (``body`` ends with one)."""
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == ord("\n"))
    return int(np.diff(ends, prepend=-1).max()) if len(ends) else len(body)


def python_lines(files: list[CaptureFile], malformed: MalformedLines,
                  check: Callable[[Any], str | None]) -> tuple[list[dict], list[str]]:
    """Every non-blank line parsed with Python's json and checked; malformed ones recorded."""
    records, origins = [], []
    for name, data in files:
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            malformed.lines += 1
            where = f"{name} line {number}"
            if len(raw) > MAX_LINE_BYTES:
                malformed.add(where, f"a line of {len(raw):,} bytes, over the {MAX_LINE_BYTES:,} that one "
                                     "invocation's capture can take")
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                malformed.add(where, "not UTF-8 text")
                continue
            except json.JSONDecodeError as error:
                malformed.add(where, f"not JSON ({error.msg})")
                continue
            except (RecursionError, ValueError) as error:
                malformed.add(where, f"not JSON ({type(error).__name__})")
                continue
            problem = check(record)
            if problem:
                malformed.add(where, problem)
                continue
            records.append(record)
            origins.append(where)
    return records, origins
