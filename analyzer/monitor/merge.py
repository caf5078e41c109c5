"""Captured traffic + ground truth -> the window's ``Dataset`` (spec model-monitor.md 3; issue 13 item 3).

What a record is. A capture line is one invocation; its ``data`` can hold several records (lines of a
CSV body, lines of a JSON Lines body, the records of an ``application/json`` document). Every record
keeps its request's join key: ``eventMetadata.inferenceId`` when the caller sent one, else ``eventId``.
Lines whose ``inferenceTime`` is outside ``[start, end)`` are dropped before their payloads are read.

Ground truth (bias only). One label per join key, ``eventMetadata.eventId`` of the ground truth record,
read like the baseline's label: ``CSV`` data is the label's field as a CSV cell; ``JSON`` data is a JSON
value, a scalar label or a document the config's ``label`` locates (a JMESPath, e.g. ``label`` in
``{"label": 0}``; an integer ``label`` indexes a list). When a key has several ground truth records, the
last one read wins (folders are read oldest first, so a corrected label replaces the first one). A
multi-record request's records share its key: one label is copied to every record (counted in
``records_with_copied_ground_truth`` and logged as a WARNING); one label per line of ``data`` (CSV fields,
or JSON Lines documents), as many as the request's records, gives the j-th record the j-th label; another
number of labels leaves the request out (``records_with_mismatched_ground_truth``, a WARNING). A gzip-compressed
capture or ground truth file is a ``UserError`` naming it.

Features. ``headers`` minus the label's header and the predicted label's header name the captured values,
in order: a bias config lists the label among its headers, an explainability config lists the features
only; a captured record with another number of values is a ``UserError`` naming the file, line and both
counts. JSON inputs are located with ``FeaturesAttribute`` (else the config's ``features``; else the
record itself must be the list), and ``headers`` may also have one more name at the end, the label's
column, as for JSON datasets (``analyzer.data.json_format``). Without ``headers`` the values are named
``column_0``, ``column_1``, ... ``excluded_columns`` and ``ExcludeFeaturesAttribute`` (comma-separated
header names or 0-based indices) are left out of the model features, as ``load_dataset`` does.

Predicted label (bias only), from the captured response, by the rules ``lucent run`` applies to a model's
answer (``analyzer.predict``; spec clarify-contract 5.3): ``InferenceAttribute`` locates the predicted
label, ``ProbabilityAttribute`` the score (a 0-based column for CSV, JMESPath for JSON). The threshold is
``ProbabilityThresholdAttribute``, else the config's ``probability_threshold`` (0.5 by default). With
neither attribute the whole response is the score: a bare CSV value such as the churn walkthrough's
``0.0254`` is cut at the threshold (score > threshold -> 1, else 0), and a model that answers a 0/1 label
gives that same label back for any threshold in [0, 1).
An endpoint with ``ExplainerConfig`` answers (and so captures) an explanation document,
``{"version", "predictions": {"content_type", "data"}, "label_headers", "explanations"}``
(online-explainability.md 5): such a response is read as the model's answer it carries, ``predictions.data``
in ``predictions.content_type``, so the attributes apply to it as to an endpoint without explanations.

Typing. Role columns are typed exactly as ``load_dataset`` types them on the same rows written as a
dataset file: CSV values are the raw field strings, typed once from all their distinct values by the CSV
reader's rules (``analyzer.data.csv_format``); JSON values keep their JSON types, typed as a JSON Lines
dataset is. The predicted label is typed as the pipeline types a model's answers.

Bad input. A malformed capture line (not JSON, not the capture shape, an unreadable payload, a response
with another number of records than its request) is skipped, counted and listed ("file line n: reason",
at most 10) when malformed lines are at most 1 % of the lines read; above that the merge fails. The same
holds for ground truth lines (a JSON label the analysis config's ``label`` finds nothing in, or null, is
malformed too: no label, never a null one). A window without captured records, and a bias window where no record has
ground truth, are ``UserError``.

Speed. Capture files are read in chunks of ``chunk_bytes`` on a reader thread, one chunk ahead of the
merge: one ``pyarrow.json`` call parses a chunk's lines into columns (about 4x faster than ``orjson``
line by line, and 2x faster than polars' ``read_ndjson``, measured; it runs without the GIL, beside the
merge of the previous chunk). The time filter is an array operation; a chunk's CSV payloads are joined
into one document for ``pyarrow.csv`` (the reader ``load_dataset`` uses, so fields come out identical),
which converts only the columns the analysis needs; their values are dictionary-encoded chunk by chunk
(``ColumnAccumulator``), so memory holds codes, not strings. Payloads with quotes, carriage returns or
blank lines take an exact line by line path. The join is one ``pyarrow.compute.index_in`` over all the
window's keys after the last chunk (it builds its hash table of the ground truth's keys on every call,
so once, not per chunk; a Python dict built and probed per record took twice as long): until then each
chunk's records are held, their columns as codes (``_HeldColumn``), and the records it drops are cut out
before any typing. Because the join comes last, the ground truth is read on a thread of its own while
the capture is merged. A chunk that pyarrow refuses, or that has a line of the wrong shape, is read
again line by line with Python's ``json`` to find and name the bad lines. bench/monitor.py measures all this.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from analyzer.config.model import AnalysisConfig, Locator, Predictor
from analyzer.data.accumulate import ColumnAccumulator
from analyzer.data.column import Column
from analyzer.data.csv_format import infer_csv_values
from analyzer.data.dataset import Dataset
from analyzer.data.locate import locate_column
from analyzer.errors import DataError, UserError
from analyzer.media import CSV, JSON, JSON_LINES, media_type
from analyzer.monitor.attributes import PARSER_KEYS, EndpointAttributes
from analyzer.monitor.capture import (
    BASE64_ENCODING,
    CSV_ENCODING,
    ENCODINGS,
    INPUT,
    JSON_ENCODING,
    OUTPUT,
    parse_inference_time,
    payload_bytes,
    record_problem,
)
from analyzer.monitor.window import Window, utc_text
from analyzer.predict.decode import ResponseParser
from analyzer.predict.locator import JsonLocator
from analyzer.predict.predictions import Predictions, predicted_labels_for_bias
from analyzer.progress import progress

log = logging.getLogger(__name__)

CaptureFile = tuple[str, bytes]  # (name used in messages: the key or path; the file's bytes)

MAX_MALFORMED_FRACTION = 0.01  # more malformed lines than this fails the execution
MAX_EXAMPLES = 10  # malformed lines listed by file and line
CHUNK_BYTES = 16 << 20  # capture bytes parsed per pyarrow call: 32 MB buffers fault in fresh pages every chunk
#                         (measured on the million-record bench: 2.3x the page faults, +0.4 CPU-s, +0.1 GiB)
PREFETCH_CHUNKS = 1  # parsed chunks the reader thread may hold ahead (each about its size in columns;
#                     2 measured no faster on 2 cores, and 0.1 GiB more at peak)
CAPTURE_READER, TRUTH_READER = "lucent-capture-reader", "lucent-ground-truth-reader"  # the threads' names
PREDICTED_LABEL = "predicted_label"  # the predicted label's column when the config names none
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_BLOCK_BYTES = 4 << 20  # pyarrow.json block; grown for a line longer than it (payloads reach megabytes)
# A capture line holds one invocation: a request and a response of at most 6 MB each (the runtime API's
# cap), base64 at worst: about 17 MB. A longer line is a malformed line, not parsed (a 1 GB line took
# pyarrow's block size past int32 and 4 GB of memory in Python's json).
MAX_LINE_BYTES = 64 << 20
_CSV_BLOCK_BYTES = 8 << 20

_PART = pa.struct([("observedContentType", pa.string()), ("mode", pa.string()), ("data", pa.string()),
                   ("encoding", pa.string())])
_CAPTURE_SCHEMA = pa.schema([
    ("captureData", pa.struct([("endpointInput", _PART), ("endpointOutput", _PART)])),
    ("eventMetadata", pa.struct([("eventId", pa.string()), ("inferenceId", pa.string()),
                                 ("inferenceTime", pa.string())])),
])
_TRUTH_SCHEMA = pa.schema([
    ("groundTruthData", pa.struct([("data", pa.string()), ("encoding", pa.string())])),
    ("eventMetadata", pa.struct([("eventId", pa.string())])),
])
_TRUTH_ENCODINGS = (CSV_ENCODING, JSON_ENCODING)


@dataclass
class MergedWindow:
    """The window's records, ready for ``analyzer.pipeline.run_analysis``, and what the merge counted.

    ``counts`` goes under ``analysis.json["lucent"]["monitor"]``:

    * ``capture_files``, ``captured_lines`` (non-blank lines read), ``malformed_lines``,
      ``malformed_examples`` ("file line n: reason", at most 10), ``captured_records`` (well-formed
      capture lines, one per invocation), ``invocations_in_window``, ``records_in_window`` (data
      records those invocations hold, several per multi-record request), ``merged_records`` (rows of
      the dataset);
    * bias only: ``ground_truth_files``, ``ground_truth_lines``, ``malformed_ground_truth_lines``,
      ``malformed_ground_truth_examples``, ``ground_truth_records`` (distinct join keys),
      ``duplicate_ground_truth`` (records replaced by a later one for the same key),
      ``records_without_ground_truth``, ``ground_truth_without_records`` (keys no record of the window
      has: labels for other windows, or for requests that were not sampled), ``explanation_documents``
      (captured responses that were explanation documents, read through their ``predictions``);
    * ``window_start``, ``window_end``, ``join_key`` and ``seconds``.
    """

    dataset: Dataset
    counts: dict[str, Any]


# -- bad lines ------------------------------------------------------------------------------------

@dataclass
class _Malformed:
    """Malformed lines of one kind of file: counted, the first ``MAX_EXAMPLES`` kept as examples."""

    what: str  # "capture" or "ground truth"
    lines: int = 0  # non-blank lines read
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def absorb(self, other: _Malformed) -> None:
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


class _Origins:
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


def _chunks(files: Iterable[CaptureFile], chunk_bytes: int, counter: list[int],
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


def _parsed_chunks(files: Iterable[CaptureFile], chunk_bytes: int,
                   counter: list[int]) -> Iterator[tuple[_Lines, _Malformed]]:
    """Each chunk's well-formed capture lines, and what was malformed in it."""
    for chunk in _chunks(files, chunk_bytes, counter):
        malformed = _Malformed("capture")
        yield _capture_lines(chunk, malformed), malformed


_T = TypeVar("_T")


class _Prefetched:
    """The items of an iterator, produced on a background thread one item ahead of the consumer.

    ``close`` (also at the end of iteration, or when the consumer stops early) lets the thread end; an
    exception raised by the iterator is raised in the consumer. The iterator's own code therefore runs
    on that thread: the capture files a caller passes must not depend on thread-local state."""

    def __init__(self, items: Iterator[_T]):
        self._items = items
        self._handoff: queue.Queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=CAPTURE_READER, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(("error", error))

    def __iter__(self) -> Iterator[_T]:
        try:
            while True:
                kind, item = self._handoff.get()
                if kind == "item":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()


class _Stopped(Exception):
    """Raised in a background job asked to stop (its result is no longer wanted)."""


class _Background:
    """``work(stop)`` run on a thread while the caller goes on. ``result`` waits for it and raises what it
    raised; ``close`` sets ``stop``, which ``work`` checks between chunks, so that a failed merge does not
    leave a thread reading files behind it."""

    def __init__(self, work: Callable[[threading.Event], Any], name: str):
        self._stop = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[threading.Event], Any]) -> None:
        try:
            self._result = work(self._stop)
        except _Stopped:
            pass
        except BaseException as error:  # handed to the caller of ``result``
            self._error = error

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def close(self) -> None:
        self._stop.set()


def _read_json_lines(files: list[CaptureFile], schema: pa.Schema) -> pa.Table | None:
    """The chunk's lines as a table of ``schema``'s fields, or None when pyarrow refuses a line."""
    body = b"".join(data if data.endswith(b"\n") else data + b"\n" for _, data in files if data)
    if len(body) > MAX_LINE_BYTES and _longest_line(body) > MAX_LINE_BYTES:
        return None  # read line by line (``_python_lines``), where a line too long is a malformed one
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
            return None  # read line by line (``_python_lines``), where a line too long is a malformed one


def _longest_line(body: bytes) -> int:
    """The longest line's length in bytes, its line end included (``body`` ends with one)."""
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == ord("\n"))
    return int(np.diff(ends, prepend=-1).max()) if len(ends) else len(body)


def _python_lines(files: list[CaptureFile], malformed: _Malformed,
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


def _valid(array: pa.Array) -> np.ndarray:
    return array.is_valid().to_numpy(zero_copy_only=False)


def _true(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


# -- capture lines --------------------------------------------------------------------------------

@dataclass
class _Lines:
    """Well-formed capture lines of a chunk as columns (input / output fields null when not captured)."""

    in_data: pa.Array
    in_encoding: pa.Array
    in_type: pa.Array
    out_data: pa.Array
    out_encoding: pa.Array
    out_type: pa.Array
    event_id: pa.Array
    inference_id: pa.Array
    time: pa.Array  # timestamp[s], UTC
    origin: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.time)

    def take(self, rows: np.ndarray) -> _Lines:
        index = pa.array(rows, pa.int64())
        origin = self.origin
        return _Lines(*(getattr(self, name).take(index) for name in _LINE_COLUMNS),
                      origin=lambda i: origin(int(rows[i])))


_LINE_COLUMNS = ("in_data", "in_encoding", "in_type", "out_data", "out_encoding", "out_type", "event_id",
                 "inference_id", "time")


def _capture_lines(files: list[CaptureFile], malformed: _Malformed) -> _Lines:
    table = _read_json_lines(files, _CAPTURE_SCHEMA)
    if table is not None:
        lines = _arrow_capture_lines(table, _Origins(files, n_rows=table.num_rows))
        if lines is not None:
            malformed.lines += len(lines)
            return lines
    return _python_capture_lines(files, malformed)


def _arrow_capture_lines(table: pa.Table, origins: _Origins) -> _Lines | None:
    """The columns, or None when a line lacks a field or has a bad value (then Python names it)."""
    capture = table.column("captureData").combine_chunks()
    metadata = table.column("eventMetadata").combine_chunks()
    ok = _valid(capture) & _valid(metadata)
    parts = {}
    for key, mode in (("endpointInput", INPUT), ("endpointOutput", OUTPUT)):
        part = pc.struct_field(capture, key)
        fields = {name: pc.struct_field(part, name) for name in ("data", "encoding", "observedContentType", "mode")}
        present = _valid(part) & ok
        good = (_true(pc.equal(fields["mode"], mode)) & _true(pc.is_in(fields["encoding"], pa.array(ENCODINGS)))
                & _valid(fields["data"]) & _valid(fields["observedContentType"]))
        ok &= ~present | good
        parts[key] = fields  # struct_field applies the parents' nulls: an absent part reads as null fields
    event_id = pc.struct_field(metadata, "eventId")
    times = pc.struct_field(metadata, "inferenceTime")
    parsed = pc.strptime(times, format=_TIME_FORMAT, unit="s", error_is_null=True)
    ok &= _valid(event_id) & _valid(parsed)
    if not ok.all():
        return None
    return _Lines(parts["endpointInput"]["data"], parts["endpointInput"]["encoding"],
                  parts["endpointInput"]["observedContentType"], parts["endpointOutput"]["data"],
                  parts["endpointOutput"]["encoding"], parts["endpointOutput"]["observedContentType"],
                  event_id, pc.struct_field(metadata, "inferenceId"), parsed, origins)


def _capture_problem(record: Any) -> str | None:
    problem = record_problem(record)
    if problem is None:
        try:
            parse_inference_time(record["eventMetadata"]["inferenceTime"])
        except ValueError:
            return (f"eventMetadata.inferenceTime {record['eventMetadata']['inferenceTime'][:40]!r} is not "
                    "yyyy-mm-ddThh:mm:ssZ")
    return problem


def _python_capture_lines(files: list[CaptureFile], malformed: _Malformed) -> _Lines:
    records, origins = _python_lines(files, malformed, _capture_problem)

    def column(key: str, name: str) -> pa.Array:
        return pa.array([r["captureData"].get(key, {}).get(name) for r in records], pa.string())

    return _Lines(
        column("endpointInput", "data"), column("endpointInput", "encoding"),
        column("endpointInput", "observedContentType"), column("endpointOutput", "data"),
        column("endpointOutput", "encoding"), column("endpointOutput", "observedContentType"),
        pa.array([r["eventMetadata"]["eventId"] for r in records], pa.string()),
        pa.array([r["eventMetadata"].get("inferenceId") for r in records], pa.string()),
        pa.array([parse_inference_time(r["eventMetadata"]["inferenceTime"]).replace(tzinfo=None) for r in records],
                 pa.timestamp("s")),
        _Origins(explicit=origins),
    )


# -- ground truth ---------------------------------------------------------------------------------

class _Truth:
    """The ground truth records read, and the row holding each join key's label: the last record read
    for a key wins (a label corrected later replaces the first one)."""

    def __init__(self, keys: pa.Array, csv_labels: pa.Array | None, json_labels: list[Any] | None,
                 label_counts: np.ndarray | None = None):
        self.csv_labels = csv_labels  # CSV data: the labels' raw fields, record after record
        self.json_labels = json_labels  # JSON data: the label values, record after record
        self.n_records = len(keys)
        # Labels per ground truth record: 1, or one per data record of a multi-record request (one per line).
        self.label_counts = (np.ones(len(keys), dtype=np.int64) if label_counts is None
                             else np.asarray(label_counts, dtype=np.int64))
        self.label_starts = np.cumsum(self.label_counts) - self.label_counts  # each record's first label
        encoded = pc.dictionary_encode(keys)
        self._keys = encoded.dictionary  # the distinct keys
        self._rows = np.full(len(self._keys), -1, dtype=np.int64)  # each one's last record
        np.maximum.at(self._rows, encoded.indices.to_numpy(), np.arange(len(keys), dtype=np.int64))

    @property
    def n_keys(self) -> int:
        return len(self._keys)

    def positions(self, keys: pa.Array) -> np.ndarray:
        """The row of each key's label, -1 for a key without ground truth.

        Called once, for all the window's records: ``pyarrow.compute.index_in`` builds its hash table of
        the keys on every call, so the merge joins at the end rather than chunk by chunk (half the time of
        a Python dict built and probed, measured on a million records)."""
        found = pc.index_in(keys, value_set=self._keys).to_numpy(zero_copy_only=False)
        rows = np.full(len(keys), -1, dtype=np.int64)
        hit = ~np.isnan(found) if found.dtype.kind == "f" else np.ones(len(found), dtype=bool)
        rows[hit] = self._rows[found[hit].astype(np.int64)]
        return rows


def _truth_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    data = record.get("groundTruthData")
    if not isinstance(data, dict):
        return "no groundTruthData object"
    if not isinstance(data.get("data"), str):
        return "groundTruthData.data: expected a string"
    if data.get("encoding") not in _TRUTH_ENCODINGS:
        return f"groundTruthData.encoding: expected CSV or JSON, got {data.get('encoding')!r}"
    metadata = record.get("eventMetadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("eventId"), str):
        return "eventMetadata.eventId: expected a string"
    return None


def _truth_lines(files: list[CaptureFile], malformed: _Malformed) -> tuple[pa.Array, pa.Array, pa.Array, Callable]:
    """(eventId, data, encoding) of the chunk's well-formed ground truth lines, and their origins."""
    table = _read_json_lines(files, _TRUTH_SCHEMA)
    if table is not None:
        truth = table.column("groundTruthData").combine_chunks()
        keys = pc.struct_field(table.column("eventMetadata").combine_chunks(), "eventId")
        data, encoding = pc.struct_field(truth, "data"), pc.struct_field(truth, "encoding")
        if (_valid(keys) & _valid(data) & _true(pc.is_in(encoding, pa.array(_TRUTH_ENCODINGS)))).all():
            malformed.lines += len(keys)
            return keys, data, encoding, _Origins(files, n_rows=len(keys))
    records, origins = _python_lines(files, malformed, _truth_problem)
    return (pa.array([r["eventMetadata"]["eventId"] for r in records], pa.string()),
            pa.array([r["groundTruthData"]["data"] for r in records], pa.string()),
            pa.array([r["groundTruthData"]["encoding"] for r in records], pa.string()),
            _Origins(explicit=origins))


def _read_ground_truth(files: Iterable[CaptureFile], label: Locator | None, malformed: _Malformed,
                       counts: dict[str, Any], chunk_bytes: int, stop: threading.Event | None = None) -> _Truth:
    keys, encodings = [], set()
    counter = [0]
    csv_parts: list[pa.Array] = []
    json_parts: list[Any] = []
    label_counts: list[np.ndarray] = []
    first_origin = ""
    for chunk in _chunks(files, chunk_bytes, counter, "ground truth"):
        if stop is not None and stop.is_set():
            raise _Stopped
        chunk_keys, data, encoding, origin = _truth_lines(chunk, malformed)
        if not len(chunk_keys):
            continue
        first_origin = first_origin or chunk[0][0]
        kinds = set(pc.unique(encoding).to_pylist())
        encodings |= kinds
        if len(encodings) > 1:
            raise UserError(f"The ground truth mixes CSV and JSON data ({first_origin} and {chunk[0][0]}); "
                            "give every label in the format of the baseline's label")
        keep = np.ones(len(chunk_keys), dtype=bool)
        if kinds == {CSV_ENCODING}:
            values, per_record = _csv_labels(data, keep, origin, malformed)
            csv_parts.append(values)
        else:
            json_values, per_record = _json_labels(data, keep, origin, malformed, label)
            json_parts.extend(json_values)
        label_counts.append(per_record)
        keys.append(chunk_keys.filter(pa.array(keep)))
    counts["ground_truth_files"] = counter[0]
    truth = _Truth(pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
                   pa.concat_arrays(csv_parts) if csv_parts else None, json_parts if json_parts else None,
                   np.concatenate(label_counts) if label_counts else None)
    counts["ground_truth_records"] = truth.n_keys
    counts["duplicate_ground_truth"] = truth.n_records - truth.n_keys
    return truth


def _csv_labels(data: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
                malformed: _Malformed) -> tuple[pa.Array, np.ndarray]:
    """Each CSV ``data`` as its labels (a trailing line break dropped): one field, or one field per line (a
    label per record of a multi-record request). Returns the labels, record after record, and how many
    each kept record has."""
    text = pc.utf8_rtrim(data, characters="\r\n")
    odd = np.flatnonzero(_true(pc.match_substring_regex(text, r'[,"\r\n]')))
    if not len(odd):
        return text, np.ones(len(text), dtype=np.int64)
    values: list[Any] = [[value] for value in text.to_pylist()]
    for i in odd.tolist():
        rows = [row for row in csv.reader(io.StringIO(values[i][0])) if row]
        if rows and all(len(row) == 1 for row in rows):
            values[i] = [row[0] for row in rows]
        else:
            keep[i] = False
            malformed.add(origin(i), f"groundTruthData.data holds {sum(len(r) for r in rows)} CSV fields"
                                     + (" on a line" if len(rows) == 1 else f" on {len(rows)} lines")
                                     + "; it must hold only the label (one per line for a request of several "
                                       "records)")
    kept = [labels for labels, k in zip(values, keep, strict=True) if k]
    return (pa.array([label for labels in kept for label in labels], pa.string()),
            np.array([len(labels) for labels in kept], dtype=np.int64))


def _json_labels(data: pa.Array, keep: np.ndarray, origin: Callable[[int], str], malformed: _Malformed,
                 label: Locator | None) -> tuple[list[Any], np.ndarray]:
    """Each JSON ``data`` as its labels: the value itself, or what ``label`` locates in it; JSON Lines data
    (several documents, one per line) gives one label per line, for a request of several records. Returns
    the labels, record after record, and how many each kept record has."""
    locator = JsonLocator(label, "label") if isinstance(label, str) else None
    values: list[Any] = []
    counts: list[int] = []
    for i, text in enumerate(data.to_pylist()):
        try:
            documents = [orjson.loads(text)]
        except orjson.JSONDecodeError as error:
            lines = [line for line in text.split("\n") if line.strip()]
            documents = []
            if len(lines) > 1:  # JSON Lines: a label per line
                with contextlib.suppress(orjson.JSONDecodeError):
                    documents = [orjson.loads(line) for line in lines]
            if not documents:
                keep[i] = False
                malformed.add(origin(i), f"groundTruthData.data is not JSON ({error})")
                continue
        found, problem = [], ""
        for document in documents:
            problem, value = _json_label(document, text, label, locator)
            if problem:
                break
            found.append(value)
        if problem:
            keep[i] = False
            malformed.add(origin(i), problem)
            continue
        values.extend(found)
        counts.append(len(found))
    return values, np.array(counts, dtype=np.int64)


def _json_label(document: Any, text: str, label: Locator | None, locator: JsonLocator | None) -> tuple[str, Any]:
    """("", the label) of one JSON ground truth document, or (why it has none, None)."""
    value = document
    if isinstance(document, dict) and locator is not None:
        value = locator.search(document)
    elif isinstance(document, list) and isinstance(label, int) and not isinstance(label, bool):
        value = document[label] if -len(document) <= label < len(document) else None
    if isinstance(value, dict | list):
        return (f"groundTruthData.data {text[:60]!r}: the label "
                f"{'' if label is None else repr(label) + ' '}does not locate one value in it"), None
    if value is None:  # the config's label key is not in it (or the label is null): no label, not a null one
        found = f"has no {label!r} (the analysis config's label)" if label is not None and document is not None \
            else "is null"
        return f"groundTruthData.data {text[:60]!r} {found}", None
    return "", value


# -- the table's layout -----------------------------------------------------------------------------

@dataclass
class _Layout:
    """Names of the captured values and of the table's columns, fixed by the first record seen."""

    headers: list[str]  # the dataset's columns
    captured: list[str]  # names of the captured values, in order
    label: str | None  # the label's column (bias)
    predicted: str | None  # the predicted label's column (bias)
    feature_names: list[str]
    roles: dict[str, str]  # "facet:<i>" / "group" -> column name

    @staticmethod
    def build(config: AnalysisConfig, attributes: EndpointAttributes, bias: bool, json_input: bool,
              n_values: int, where: str) -> _Layout:
        headers = list(config.headers) if config.headers is not None else None
        source = "`headers` in the analysis config"
        predicted = None
        if bias:
            predicted = config.predicted_label if isinstance(config.predicted_label, str) else PREDICTED_LABEL
        if headers is None:
            captured = [f"column_{i}" for i in range(n_values)]
            label = (config.label if isinstance(config.label, str) and not json_input else "label") if bias else None
            headers = captured + [name for name in (label, predicted) if name is not None]
        else:
            others = [h for h in headers if h != predicted]
            label = config.label
            label_name = None
            if isinstance(label, str) and label in others:
                label_name = label
            elif not json_input and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(others):
                label_name = others[label]
            elif json_input and len(others) == n_values + 1:  # JSON datasets: features, then the label's name
                label_name = others[-1]
            captured = [h for h in others if h != label_name]
            if len(captured) != n_values:
                raise UserError(
                    f"{where} has {n_values} feature value(s), but {source} names {len(captured)} feature(s) "
                    f"({len(headers)} headers"
                    + (f" minus the label {label_name!r}" if label_name else "")
                    + (f" minus the predicted label {predicted!r}" if predicted in headers else "")
                    + "). The captured requests must send the features the headers list, in order.")
            fallback = config.label if isinstance(config.label, str) and not json_input else "label"
            label = (label_name if label_name is not None else fallback) if bias else label_name
            if bias and label not in headers:
                headers = [*headers, label]
            if bias and predicted not in headers:
                headers = [*headers, predicted]
        roles: dict[str, str] = {}
        for i, facet in enumerate(config.facet if bias else []):  # SHAP needs no role columns
            roles[f"facet:{i}"] = locate_column(facet.name_or_index, headers, role="facet", source="the window")
        if bias and config.group_variable is not None:
            roles["group"] = locate_column(config.group_variable, headers, role="group_variable", source="the window")
        for name in roles.values():
            if name not in captured and name != label:
                raise UserError(f"{name!r} is a facet or group variable but not a captured feature "
                                f"or the label of the window (captured: {captured})")
        excluded = {locate_column(c, headers, role="excluded_columns", source="the window")
                    for c in config.excluded_columns or []}
        for item in (attributes.exclude_features_attribute or "").split(","):
            item = item.strip()
            if item:
                excluded.add(locate_column(int(item) if item.isdigit() else item, captured,
                                           role="excluded_columns", source="the captured features "
                                           "(ExcludeFeaturesAttribute)"))
        feature_names = [name for name in captured if name not in excluded]
        return _Layout(headers, captured, label, predicted, feature_names, roles)


# -- payloads -------------------------------------------------------------------------------------

def _decoded(data: pa.Array, encoding: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
             malformed: _Malformed, what: str) -> pa.Array:
    """``data`` with base64 payloads decoded to text (``payload_bytes``, for the few lines that need it)."""
    coded = np.flatnonzero(_true(pc.equal(encoding, BASE64_ENCODING)) & keep)
    if not len(coded):
        return data
    texts = []
    for i in coded.tolist():
        text = ""
        try:
            text = payload_bytes({"encoding": BASE64_ENCODING, "data": data[i].as_py(), "mode": what}).decode("utf-8")
        except DataError as error:
            keep[i] = False
            malformed.add(origin(i), str(error))
        except UnicodeDecodeError:
            keep[i] = False
            malformed.add(origin(i), f"captured {what}: the decoded payload is not UTF-8 text")
        texts.append(text)
    mask = np.zeros(len(data), dtype=bool)
    mask[coded] = True
    return pc.replace_with_mask(data, pa.array(mask), pa.array(texts, pa.string()))


def _kinds(encoding: pa.Array, content_type: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
           malformed: _Malformed, what: str) -> np.ndarray:
    """Per line, the payload's format (index into ``_KIND_LIST``), -1 for lines not kept."""
    pairs = pc.binary_join_element_wise(pc.fill_null(encoding, ""), pc.fill_null(content_type, ""), "|")
    encoded = pairs.dictionary_encode()
    lookup = []
    for pair in encoded.dictionary.to_pylist():
        coding, observed = pair.split("|", 1)
        kind = media_type(observed)
        if coding == CSV_ENCODING:
            kind = CSV
        elif coding == JSON_ENCODING and kind not in (JSON, JSON_LINES):
            kind = JSON_LINES
        lookup.append(_KIND_LIST.index(kind) if kind in _KIND_LIST else -2)
    kinds = np.array(lookup + [-1], dtype=np.int64)[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
    for i in np.flatnonzero((kinds == -2) & keep).tolist():
        keep[i] = False
        malformed.add(origin(i), f"captured {what} of type {content_type[i].as_py()!r}: neither CSV nor JSON")
    kinds[~keep] = -1
    return kinds


_KIND_LIST = (CSV, JSON_LINES, JSON)


def _split_lines(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The non-blank lines of every text (``\\n`` or ``\\r\\n`` line ends), and the text each comes from."""
    if pc.any(pc.match_substring(texts, "\r")).as_py():
        texts = pc.replace_substring(texts, "\r\n", "\n")
    lists = pc.split_pattern(texts, "\n")
    lines = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    blank = pc.or_(pc.equal(pc.binary_length(lines), 0), pc.utf8_is_space(lines))
    if not pc.any(blank).as_py():
        return lines, parents
    nonblank = ~_true(blank)
    return lines.filter(pa.array(nonblank)), parents[nonblank]


@dataclass
class _Records:
    """The data records of a chunk's lines: the line each comes from, and its values."""

    parent: np.ndarray
    lines: pa.Array | None = None  # CSV without quotes: one text line per record
    rows: list[list[Any]] | None = None  # JSON values, or CSV fields read by Python's csv
    columns: dict[str, pa.Array] | None = None  # CSV read by pyarrow: the needed columns' fields

    def take(self, mask: np.ndarray) -> _Records:
        if mask.all():
            return self
        if self.columns is not None:
            keep = pa.array(mask)
            return _Records(self.parent[mask], columns={n: c.filter(keep) for n, c in self.columns.items()})
        if self.lines is not None:
            return _Records(self.parent[mask], lines=self.lines.filter(pa.array(mask)))
        assert self.rows is not None
        return _Records(self.parent[mask], rows=[r for r, m in zip(self.rows, mask, strict=True) if m])


def _csv_records(texts: pa.Array, keep: np.ndarray) -> _Records:
    """The records of CSV texts split line by line: on line breaks when no text holds a quote or a
    carriage return, else with Python's csv module (quoted fields may hold commas and line breaks)."""
    if not _holds_any(texts, b'"\r'):
        lines, parents = _split_lines(texts)
        return _Records(parents, lines=lines)
    parents, rows = [], []
    for i, text in enumerate(texts.to_pylist()):
        if keep[i]:
            for row in csv.reader(io.StringIO(text)):
                if row and not (len(row) == 1 and not row[0].strip()):
                    parents.append(i)
                    rows.append(row)
    return _Records(np.array(parents, dtype=np.int64), rows=rows)


def _joined(texts: pa.Array) -> pa.Buffer:
    """The texts one after the other, a line break between two (one copy, in Arrow)."""
    if texts.type != pa.large_string() and texts.nbytes >= 2**31 - 2**24:  # 32-bit offsets would overflow
        texts = texts.cast(pa.large_string())
    lists = (pa.LargeListArray if texts.type == pa.large_string() else pa.ListArray).from_arrays(
        pa.array([0, len(texts)], pa.int64() if texts.type == pa.large_string() else pa.int32()), texts)
    return pc.binary_join(lists, pa.scalar("\n", texts.type))[0].as_buffer()


def _holds_any(texts: pa.Array, characters: bytes) -> bool:
    """Whether a byte of ``characters`` occurs in the strings' data (a numpy scan of the data buffer,
    several times faster than a string kernel per value; bytes outside the array only make it cautious)."""
    data = texts.buffers()[2]
    if data is None:
        return False
    values = np.frombuffer(data, dtype=np.uint8)
    return any(bool((values == byte).any()) for byte in characters)


def _record_counts(texts: pa.Array) -> np.ndarray:
    """Lines per text: its line breaks, plus one for an unterminated last line (blank lines counted).

    Counted on the data buffer with numpy, not per value: the positions of the line breaks (one every
    record, so few), then a binary search of each text's start among them. ``np.add.reduceat`` over a
    boolean of every byte took 14x as long (measured on a chunk; 0.8 CPU-s on the million-record bench)."""
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    if texts.type != pa.string():
        texts = texts.cast(pa.string())
    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset:texts.offset + n + 1].astype(np.int64)
    data = texts.buffers()[2]
    if n == 0 or data is None or offsets[-1] == offsets[0]:
        return np.zeros(n, dtype=np.int64)
    values = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
    ends = offsets - offsets[0]
    counts = np.diff(np.searchsorted(np.flatnonzero(values == 10), ends))
    filled = np.flatnonzero(ends[1:] > ends[:-1])
    counts[filled] += values[ends[1:][filled] - 1] != 10
    return counts


def _has_blank_line(texts: pa.Array) -> bool:
    """Whether a text has an empty or whitespace-only line (an empty text is one; the empty "line" after
    a final line break is not)."""
    space = r"[ \t\f\v\r]"
    pattern = rf"^{space}*(?:\n|$)|\n{space}*\n|\n{space}+$"
    return bool(pc.any(pc.match_substring_regex(texts, pattern)).as_py())


def _read_csv_records(texts: pa.Array, keep: np.ndarray, names: list[str], needed: list[str]) -> _Records | None:
    """The kept texts read as one CSV document by pyarrow (the reader ``load_dataset`` uses), with only
    the ``needed`` columns; None when that cannot be trusted to split the records of each text apart
    (a row of another width, blank lines): the caller then reads them line by line."""
    if not keep.all():
        texts = pc.if_else(pa.array(keep), texts, pa.scalar("", pa.string()))
    counts = _record_counts(texts)
    document = _joined(texts)
    include = needed or names[:1]
    try:
        table = pacsv.read_csv(pa.BufferReader(document), read_options=pacsv.ReadOptions(
            column_names=names, block_size=_CSV_BLOCK_BYTES), convert_options=pacsv.ConvertOptions(
            include_columns=include, column_types={name: pa.string() for name in include}))
    except pa.ArrowInvalid:
        return None
    if table.num_rows != int(counts.sum()):
        return None
    parents = np.repeat(np.arange(len(texts)), counts)
    return _Records(parents, columns={name: table.column(name).combine_chunks() for name in needed})


def _json_records(texts: pa.Array, kinds: np.ndarray, keep: np.ndarray, origin: Callable[[int], str],
                  malformed: _Malformed, locator: JsonLocator | None, locator_name: str = "features") -> _Records:
    """Feature lists located in JSON Lines (one document per line) or JSON (one document per request)."""
    parents, rows = [], []
    documents: list[tuple[int, Any]] = []
    jsonl = np.flatnonzero(keep & (kinds == _KIND_LIST.index(JSON_LINES)))
    if len(jsonl):
        lines, line_parents = _split_lines(texts.take(pa.array(jsonl)))
        line_parents = jsonl[line_parents]
        try:
            parsed = orjson.loads(b"[" + b",".join(s.encode() for s in lines.to_pylist()) + b"]")
        except orjson.JSONDecodeError:
            parsed = []
            for line, parent in zip(lines.to_pylist(), line_parents.tolist(), strict=True):
                try:
                    parsed.append(orjson.loads(line))
                except orjson.JSONDecodeError as error:
                    parsed.append(_BAD)
                    if keep[parent]:
                        keep[parent] = False
                        malformed.add(origin(parent), f"captured input: a JSON Lines record is not JSON ({error})")
        documents.extend(zip(line_parents.tolist(), parsed, strict=True))
    for i in np.flatnonzero(keep & (kinds == _KIND_LIST.index(JSON))).tolist():
        try:
            documents.append((i, orjson.loads(texts[i].as_py())))
        except orjson.JSONDecodeError as error:
            keep[i] = False
            malformed.add(origin(i), f"captured input is not JSON ({error})")
    documents.sort(key=lambda item: item[0])  # stable: records keep their order within a request
    what = f"{locator_name} {locator.expression!r}" if locator is not None else "the record"
    for parent, document in documents:
        if not keep[parent] or document is _BAD:
            continue
        found = locator.search(document) if locator is not None else document
        if kinds[parent] == _KIND_LIST.index(JSON) and isinstance(found, list) and found and all(
                isinstance(row, list) for row in found):
            records = found  # an application/json request of several records
        else:
            records = [found]
        if not all(isinstance(row, list) and not any(isinstance(v, list | dict) for v in row) for row in records):
            keep[parent] = False
            malformed.add(origin(parent), f"captured input: {what} does not give a flat list of feature values")
            continue
        parents.extend([parent] * len(records))
        rows.extend(records)
    records = _Records(np.array(parents, dtype=np.int64), rows=rows)
    return records.take(keep[records.parent]) if len(records.parent) else records


_BAD = object()


class _HeldColumn:
    """A captured column's chunks held dictionary-encoded (one small integer per row) until the window's
    join says which rows stay. ``accumulator`` then gives the ``ColumnAccumulator`` that adding only those
    rows, chunk by chunk, would have built: typing sees only the values of the rows kept."""

    def __init__(self, name: str):
        self.name = name
        self._chunks: list[pa.Array | tuple[np.ndarray, pa.Array]] = []

    def add(self, values: pa.Array) -> None:
        if values.null_count:  # not from the CSV readers (their string fields are never null): kept as is
            self._chunks.append(values)
            return
        encoded = pc.dictionary_encode(values)
        indices = encoded.indices.to_numpy()
        self._chunks.append((indices.astype(np.min_scalar_type(max(len(encoded.dictionary) - 1, 0))),
                             encoded.dictionary))

    def accumulator(self, keep: np.ndarray) -> ColumnAccumulator:
        """The rows where ``keep`` (one flag per row added, in order) is true, as a ``ColumnAccumulator``."""
        accumulator = ColumnAccumulator(self.name, pa.string())
        start = 0
        for chunk in self._chunks:
            n = len(chunk) if isinstance(chunk, pa.Array) else len(chunk[0])
            mask = keep[start:start + n]
            start += n
            if not mask.any():
                continue  # as a chunk whose records all lacked ground truth: never added
            if isinstance(chunk, pa.Array):
                accumulator.add(chunk.filter(pa.array(mask)))
            else:
                accumulator.add(_compacted(chunk[0][mask], chunk[1]))
        self._chunks = []
        return accumulator


def _compacted(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """What ``dictionary_encode`` gives for the values ``indices`` point to in ``dictionary``: only the
    entries used, in order of first use (the order ``ColumnAccumulator`` numbers the column's values by)."""
    n = len(indices)
    first = np.full(len(dictionary), n, dtype=np.int64)
    np.minimum.at(first, indices, np.arange(n, dtype=np.int64))
    used = np.flatnonzero(first < n)
    used = used[np.argsort(first[used])]
    renumber = np.zeros(len(dictionary), dtype=np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(renumber[indices], pa.int32()), dictionary.take(pa.array(used)))


# -- the window -----------------------------------------------------------------------------------

class _WindowBuilder:
    """Adds chunks of capture lines to the window's columns; ``finish`` makes the ``Dataset``."""

    def __init__(self, config: AnalysisConfig, attributes: EndpointAttributes, window: Window, bias: bool,
                 need_features: bool, malformed: _Malformed, counts: dict[str, Any]):
        self.config, self.attributes, self.window = config, attributes, window
        self.truth: _Truth | None = None  # bias: given to ``finish``
        self.bias = bias
        self.need_features = need_features
        self.malformed, self.counts = malformed, counts
        self.start = pa.scalar(_naive_utc(window.start), pa.timestamp("s"))
        self.end = pa.scalar(_naive_utc(window.end), pa.timestamp("s"))
        self.layout: _Layout | None = None
        self.input_kind: tuple[int, str] | None = None
        self.output_kind: tuple[int, str] | None = None
        self.accumulators: dict[str, ColumnAccumulator | _HeldColumn] = {}
        self.json_rows: list[list[Any]] = []
        self.label_rows: list[np.ndarray] = []
        self.output_lines: list[pa.Array] = []
        self.output_predictions: list[Predictions] = []
        self.matched: np.ndarray | None = None  # bias: which ground truth records a record of the window took
        # Bias: the join waits for the last chunk (see ``_Truth.positions``); until then every record of a
        # well-formed line is held, with the number of its line among those lines, and each line's key.
        self.line_keys: list[pa.Array] = []
        self.record_lines: list[np.ndarray] = []
        self.n_lines = 0
        self.features_locator = None
        expression = attributes.features_attribute or config.features
        self.features_name = (attributes.field_name("FeaturesAttribute") if attributes.features_attribute
                              else "features")
        if expression:
            self.features_locator = JsonLocator(expression, self.features_name)
        self.parser: ResponseParser | None = None
        self.n_rows = 0
        self.ground_truth_where: str | None = None  # the folders listed for ground truth, for messages

    # one chunk ---------------------------------------------------------------------------------
    def add(self, lines: _Lines) -> None:
        in_window = _true(pc.and_(pc.greater_equal(lines.time, self.start), pc.less(lines.time, self.end)))
        rows = np.flatnonzero(in_window)
        self.counts["invocations_in_window"] += len(rows)
        if not len(rows):
            return
        if len(rows) < len(lines):
            lines = lines.take(rows)
        keep = np.ones(len(lines), dtype=bool)
        self._require(lines.in_data, keep, lines.origin, "endpointInput", "Input")
        if self.bias:
            self._require(lines.out_data, keep, lines.origin, "endpointOutput", "Output")
        texts = _decoded(lines.in_data, lines.in_encoding, keep, lines.origin, self.malformed, INPUT)
        kinds = _kinds(lines.in_encoding, lines.in_type, keep, lines.origin, self.malformed, "input")
        self.input_kind = _one_kind(self.input_kind, kinds, keep, lines.origin, "requests", self.malformed)
        if self.input_kind is None:
            return
        kind = _KIND_LIST[self.input_kind[0]]
        if kind == CSV:
            records = self._fast_csv(lines, texts, keep)
            if records is None:
                records = _csv_records(texts, keep)
        else:
            records = _json_records(texts, kinds, keep, lines.origin, self.malformed, self.features_locator,
                                    self.features_name)
        per_line = np.bincount(records.parent, minlength=len(lines))
        outputs = self._outputs(lines, keep, per_line) if self.bias else None
        records = records.take(keep[records.parent]) if len(records.parent) else records
        per_line = np.bincount(records.parent, minlength=len(lines))
        self.counts["records_in_window"] += int(per_line.sum())
        if not len(records.parent):
            return
        self._check_widths(records, lines.origin, json_input=kind != CSV)
        if self.bias:  # held for the join in ``_join``
            kept = np.flatnonzero(keep)
            number = np.full(len(lines), -1, dtype=np.int64)
            number[kept] = np.arange(self.n_lines, self.n_lines + len(kept))
            self.n_lines += len(kept)
            self.line_keys.append(pc.coalesce(lines.inference_id, lines.event_id).take(pa.array(kept)))
            self.record_lines.append(number[records.parent])
            self._add_outputs(outputs, keep)
        self._add_records(records)

    def _fast_csv(self, lines: _Lines, texts: pa.Array, keep: np.ndarray) -> _Records | None:
        """The records through pyarrow's CSV reader, when no payload holds a quote or a carriage return."""
        if _holds_any(texts, b'"\r'):
            return None
        first = np.flatnonzero(keep & _true(pc.greater(pc.binary_length(texts), 0)))
        if not len(first):
            return None
        if self.layout is None:
            head = texts[int(first[0])].as_py().lstrip("\n").split("\n", 1)[0]
            self._set_layout(head.count(",") + 1, lines.origin(int(first[0])), json_input=False)
        assert self.layout is not None
        return _read_csv_records(texts, keep, self.layout.captured, self._accumulated())

    def _set_layout(self, n_values: int, where: str, json_input: bool) -> None:
        self.layout = _Layout.build(self.config, self.attributes, self.bias, json_input, n_values, where)
        for name in self._accumulated():
            self.accumulators[name] = _HeldColumn(name) if self.bias else ColumnAccumulator(name, pa.string())

    def _require(self, data: pa.Array, keep: np.ndarray, origin: Callable[[int], str], key: str, mode: str) -> None:
        for i in np.flatnonzero(~_valid(data) & keep).tolist():
            keep[i] = False
            self.malformed.add(origin(i), f"no captureData.{key} (the endpoint's CaptureOptions must include "
                                          f"{mode} for this monitor)")

    def _outputs(self, lines: _Lines, keep: np.ndarray, per_line: np.ndarray) -> tuple[int, Any]:
        """The responses, one per record, checked against their requests' record counts."""
        texts = _decoded(lines.out_data, lines.out_encoding, keep, lines.origin, self.malformed, OUTPUT)
        kinds = _kinds(lines.out_encoding, lines.out_type, keep, lines.origin, self.malformed, "output")
        texts = self._model_answers(texts, kinds, keep, lines.origin)
        self.output_kind = _one_kind(self.output_kind, kinds, keep, lines.origin, "responses", self.malformed)
        if self.output_kind is None:
            return (-1, None)
        kind = _KIND_LIST[self.output_kind[0]]
        if self.parser is None:
            predictor = self.config.predictor
            try:
                self.parser = ResponseParser(Predictor(
                    label=self.attributes.inference_attribute, probability=self.attributes.probability_attribute,
                    label_headers=predictor.label_headers if predictor is not None else None,
                    content_type=kind, accept_type=kind))
            except UserError as error:
                hint = _attribute_hint(kind, self.attributes.probability_attribute, self.attributes.inference_attribute)
                if self.counts.get("explanation_documents"):
                    hint += (". The captured responses are explanation documents (an endpoint with ExplainerConfig): "
                             f"the attributes read the model's answer they carry (predictions.data, {kind}), as for "
                             "an endpoint without explanations")
                raise UserError(self._named(str(error)) + hint) from None
        if kind == JSON:  # one document per response: parsed per request
            parsed: dict[int, Predictions] = {}
            for i in np.flatnonzero(keep).tolist():
                try:
                    parsed[i] = self.parser.parse(texts[i].as_py().encode("utf-8"), int(per_line[i]))
                except UserError as error:
                    keep[i] = False
                    self.malformed.add(lines.origin(i), f"captured output: {self._named(str(error))}")
            return (self.output_kind[0], parsed)
        texts = pc.if_else(pa.array(keep), texts, pa.scalar("", pa.string()))
        if _has_blank_line(texts.filter(pa.array(keep))):
            counts = np.bincount(_split_lines(texts)[1], minlength=len(lines))
        else:
            counts = _record_counts(texts)
        for i in np.flatnonzero(keep & (counts != per_line)).tolist():
            keep[i] = False
            self.malformed.add(lines.origin(i), f"captured output holds {counts[i]} record(s) for the request's "
                                                f"{per_line[i]}")
        # One line per record once the trailing line break is gone: the responses joined by line breaks
        # are one body for the parser.
        return (self.output_kind[0], pc.utf8_rtrim(texts, characters="\r\n"))

    def _named(self, text: str) -> str:
        """A response parser's message with the attributes' names (``ProbabilityAttribute``), not the
        config keys the parser calls them by: the parser's locators come from the job definition."""
        return self.attributes.named(text, PARSER_KEYS)

    def _model_answers(self, texts: pa.Array, kinds: np.ndarray, keep: np.ndarray,
                       origin: Callable[[int], str]) -> pa.Array:
        """``texts`` with every explanation document (the answer of an endpoint with ``ExplainerConfig``,
        online-explainability.md 5) replaced by the model's answer it carries, ``predictions.data``, and
        ``kinds`` (in place) by that answer's format, ``predictions.content_type``: the attributes then read
        the model's answer exactly as they read the response of an endpoint without explanations."""
        json_kind = _KIND_LIST.index(JSON)
        candidates = np.flatnonzero(keep & (kinds == json_kind))
        if not len(candidates):
            return texts
        maybe = _true(pc.match_substring(texts.take(pa.array(candidates)), '"predictions"'))
        candidates = candidates[maybe]
        if not len(candidates):
            return texts
        answers: list[str] = []
        replaced: list[int] = []
        for i in candidates.tolist():
            try:
                document = orjson.loads(texts[i].as_py())
            except orjson.JSONDecodeError:
                continue  # the parser names it
            answer = explanation_answer(document)
            if answer is None:
                continue
            content_type, data = answer
            kind = media_type(content_type)
            if kind not in _KIND_LIST:
                keep[i] = False
                kinds[i] = -1
                self.malformed.add(origin(i), f"captured output: an explanation document whose model answer "
                                              f"(predictions.content_type {content_type!r}) is neither CSV nor JSON")
                continue
            kinds[i] = _KIND_LIST.index(kind)
            answers.append(data)
            replaced.append(i)
        self.counts["explanation_documents"] += len(replaced)
        if not replaced:
            return texts
        mask = np.zeros(len(texts), dtype=bool)
        mask[replaced] = True
        return pc.replace_with_mask(texts, pa.array(mask), pa.array(answers, pa.string()))

    def _add_outputs(self, outputs: tuple[int, Any] | None, keep: np.ndarray) -> None:
        assert outputs is not None
        kind, value = outputs
        if _KIND_LIST[kind] == JSON:
            self.output_predictions.extend(value[i] for i in np.flatnonzero(keep).tolist())
        else:
            self.output_lines.append(value.filter(pa.array(keep)))

    def _join(self, truth: _Truth) -> None:
        """Every held record takes its request's ground truth; records without one are dropped.

        A ground truth record holds one label, or one per record of its request (``_csv_labels``): the
        request's j-th record takes the j-th. One label for a request of several records is copied to each
        of them (counted and logged); another number of labels than the request's records leaves the request
        out (counted and logged, as records without ground truth are)."""
        self.truth = truth
        self.matched = np.zeros(truth.n_records, dtype=bool)
        keys = pa.concat_arrays(self.line_keys) if self.line_keys else pa.array([], pa.string())
        position = self.truth.positions(keys)
        joined = position >= 0
        self.matched[position[joined]] = True
        lines = np.concatenate(self.record_lines) if self.record_lines else np.empty(0, dtype=np.int64)
        per_line = np.bincount(lines, minlength=len(keys))  # records of each request
        labels = np.zeros(len(keys), dtype=np.int64)  # labels of each request's ground truth
        labels[joined] = truth.label_counts[position[joined]]
        mismatched = joined & (labels > 1) & (labels != per_line)
        copied = joined & (labels == 1) & (per_line > 1)
        self._report_label_counts(keys, per_line, labels, mismatched, copied)
        joined &= ~mismatched
        chosen = joined[lines]
        self.counts["records_without_ground_truth"] = int(len(chosen) - np.count_nonzero(chosen))
        # The j-th record of a request with a label per record takes the j-th label; otherwise the one label.
        order = np.argsort(lines, kind="stable")
        index = np.empty(len(lines), dtype=np.int64)
        index[order] = np.arange(len(lines)) - np.searchsorted(lines[order], lines[order])
        record_labels = labels[lines[chosen]]
        own = (record_labels > 1) & (record_labels == per_line[lines[chosen]])
        rows = truth.label_starts[position[lines[chosen]]] + np.where(own, index[chosen], 0)
        self.label_rows = [rows]
        self.n_rows = int(np.count_nonzero(chosen))
        if self.output_predictions:
            self.output_predictions = [p for p, j in zip(self.output_predictions, joined.tolist(), strict=True) if j]
        if self.output_lines:
            self.output_lines = [pa.concat_arrays(self.output_lines).filter(pa.array(joined))]
        if self.json_rows:
            self.json_rows = [row for row, c in zip(self.json_rows, chosen.tolist(), strict=True) if c]
        for name, held in self.accumulators.items():
            assert isinstance(held, _HeldColumn)
            self.accumulators[name] = held.accumulator(chosen)
        self.line_keys, self.record_lines = [], []

    def _report_label_counts(self, keys: pa.Array, per_line: np.ndarray, labels: np.ndarray, mismatched: np.ndarray,
                             copied: np.ndarray) -> None:
        """Count and log the multi-record requests whose one label is copied to each of their records, and
        those whose ground truth has another number of labels than they have records (left out)."""
        n_copied = int(per_line[copied].sum())
        n_mismatched = int(per_line[mismatched].sum())
        self.counts["records_with_copied_ground_truth"] = n_copied
        self.counts["records_with_mismatched_ground_truth"] = n_mismatched
        if n_copied:
            log.warning("%d record(s) of %d multi-record request(s) got a copy of their request's one ground truth "
                        "label (labels are joined per request, on its inference id); to give each record its own, "
                        "put one label per line in groundTruthData.data, as many as the request's records",
                        n_copied, int(np.count_nonzero(copied)))
        if n_mismatched:
            examples = [f"{keys[int(i)].as_py()!r} ({labels[i]} labels, {per_line[i]} records)"
                        for i in np.flatnonzero(mismatched)[:MAX_EXAMPLES]]
            log.warning("%d record(s) of %d request(s) are left out: their ground truth holds another number of "
                        "labels (one per line) than the request has records: %s", n_mismatched,
                        int(np.count_nonzero(mismatched)), "; ".join(examples))

    def _check_widths(self, records: _Records, origin: Callable[[int], str], json_input: bool) -> None:
        if records.columns is not None:
            return  # the CSV reader saw every row with the layout's width
        if records.lines is not None:
            widths = pc.add(pc.count_substring(records.lines, ","), 1).to_numpy(zero_copy_only=False)
        else:
            assert records.rows is not None
            widths = np.fromiter((len(row) for row in records.rows), dtype=np.int64, count=len(records.rows))
        first_parent = int(records.parent[0])
        if self.layout is None:
            self._set_layout(int(widths[0]), _record_origin(origin, records, 0), json_input)
        expected = len(self.layout.captured)
        wrong = np.flatnonzero(widths != expected)
        if len(wrong):
            i = int(wrong[0])
            raise UserError(
                f"{_record_origin(origin, records, i)} has {widths[i]} feature value(s), but the window's "
                f"records have {expected} ({', '.join(self.layout.captured[:8])}"
                f"{', ...' if expected > 8 else ''}; `headers` minus the label)"
                + (f", as {_record_origin(origin, records, 0)} has" if first_parent != int(records.parent[i]) else "")
                + ". Every captured request must send the same features.")

    def _accumulated(self) -> list[str]:
        """The captured columns the dataset needs: role columns, and the features when asked for."""
        assert self.layout is not None
        names = [n for n in self.layout.roles.values() if n in self.layout.captured]
        if self.need_features:
            names += self.layout.feature_names
        return list(dict.fromkeys(names))

    def _add_records(self, records: _Records) -> None:
        assert self.layout is not None
        n = len(records.parent)
        self.n_rows += n
        if not n:
            return
        width = len(self.layout.captured)
        if _KIND_LIST[self.input_kind[0]] != CSV:
            assert records.rows is not None
            self.json_rows.extend(records.rows)
            return
        if records.columns is not None:
            for name, accumulator in self.accumulators.items():
                accumulator.add(records.columns[name])
        elif records.lines is not None:
            # Split only as far as the last column needed (the role columns are often the first ones).
            last = max((self.layout.captured.index(name) for name in self.accumulators), default=-1)
            if last < 0:
                return
            fields = pc.split_pattern(records.lines, ",", max_splits=last + 1 if last + 1 < width else None)
            for name, accumulator in self.accumulators.items():
                accumulator.add(pc.list_element(fields, self.layout.captured.index(name)))
        else:
            assert records.rows is not None
            for name, accumulator in self.accumulators.items():
                j = self.layout.captured.index(name)
                accumulator.add(pa.array([row[j] for row in records.rows], pa.string()))

    # the dataset ---------------------------------------------------------------------------------
    def finish(self, source: str, truth: _Truth | None = None) -> Dataset:
        """The ``Dataset``; ``truth`` (bias) is the ground truth the held records are joined with."""
        if self.bias:
            assert truth is not None
            self._join(truth)
        if self.n_rows == 0:
            raise UserError(self._empty_message())
        layout = self.layout
        assert layout is not None and self.input_kind is not None
        json_input = _KIND_LIST[self.input_kind[0]] != CSV
        frame = pd.DataFrame(self.json_rows, columns=layout.captured) if json_input else None
        self.json_rows = []
        columns: dict[str, Column] = {}
        for name in dict.fromkeys(layout.roles.values()):
            if name == layout.label:
                continue
            columns[name] = (Column.from_series(frame[name], name=name) if frame is not None
                             else self.accumulators.pop(name).finish(infer_csv_values))
        label = predicted = None
        if self.bias:
            label = self._label_column(layout.label)
            predicted = self._predicted_column(layout.predicted)
            columns.setdefault(layout.label, label)
        dataset = Dataset(
            source=source, n_rows=self.n_rows, headers=layout.headers, feature_names=layout.feature_names,
            label=label, predicted_label=predicted,
            facets={layout.roles[key]: columns[layout.roles[key]] for key in layout.roles if key != "group"},
            group=columns[layout.roles["group"]] if "group" in layout.roles else None,
        )
        if self.need_features:
            values = {}
            for name in layout.feature_names:
                if frame is not None:
                    values[name] = frame[name]
                elif name in columns:
                    values[name] = columns[name].to_series()
                else:
                    values[name] = self.accumulators.pop(name).finish_values(infer_csv_values)
            dataset.features = pd.DataFrame(values, index=pd.RangeIndex(self.n_rows), copy=False)
        return dataset

    def _empty_message(self) -> str:
        counts = self.counts
        where = (f"{counts['capture_files']} capture file(s), {counts['captured_lines']} line(s) read, "
                 f"{counts['invocations_in_window']} invocation(s) in the window")
        if self.bias and counts["records_in_window"]:
            searched = (f" in {self.ground_truth_where}" if self.ground_truth_where and not counts["ground_truth_files"]
                        else "")
            return (f"None of the {counts['records_in_window']} captured record(s) in the window {self.window} "
                    f"has ground truth ({counts['ground_truth_records']} ground truth record(s) from "
                    f"{counts['ground_truth_files']} file(s){searched}; records are joined on "
                    "eventMetadata.inferenceId, else eventId, against the ground truth's eventMetadata.eventId)")
        return f"No captured records in the window {self.window} ({where})"

    def _label_column(self, name: str | None) -> Column:
        assert self.truth is not None and name is not None
        rows = np.concatenate(self.label_rows) if self.label_rows else np.empty(0, dtype=np.int64)
        if self.truth.csv_labels is not None:
            accumulator = ColumnAccumulator(name, pa.string())
            accumulator.add(self.truth.csv_labels.take(pa.array(rows)))
            return accumulator.finish(infer_csv_values)
        assert self.truth.json_labels is not None
        values = self.truth.json_labels
        return Column.from_series(pd.Series([values[i] for i in rows.tolist()]), name=name)

    def _predicted_column(self, name: str | None) -> Column:
        assert self.parser is not None and name is not None
        if self.output_predictions:
            predictions = Predictions.concat(self.output_predictions)
        else:
            body = _joined(pa.concat_arrays(self.output_lines)).to_pybytes()
            try:
                predictions = self.parser.parse(body, self.n_rows)
            except UserError as error:
                raise UserError(f"captured output: {self._named(str(error))}") from None
        threshold = (self.attributes.probability_threshold_attribute
                     if self.attributes.probability_threshold_attribute is not None
                     else self.config.probability_threshold)
        labels = predicted_labels_for_bias(predictions, threshold, name=name)
        return Column.from_series(labels, name=name)


def explanation_answer(document: Any) -> tuple[str, str] | None:
    """``(predictions.content_type, predictions.data)`` when ``document`` is an explanation document
    (``{"version": ..., "predictions": {"content_type": ..., "data": ...}, "explanations": ...}``, what an
    endpoint with ``ExplainerConfig`` answers: online-explainability.md 5), else None."""
    if not isinstance(document, dict) or "version" not in document:
        return None
    predictions = document.get("predictions")
    if not isinstance(predictions, dict):
        return None
    content_type, data = predictions.get("content_type"), predictions.get("data")
    if isinstance(content_type, str) and isinstance(data, str):
        return content_type, data
    return None


def _attribute_hint(kind: str, *attributes: str | None) -> str:
    """A hint for an attribute the window's responses cannot use: a column index for JSON responses."""
    if kind in (JSON, JSON_LINES) and any(a is not None and a.strip().isdigit() for a in attributes):
        return (f". The window's captured responses are {kind}: there the attribute is a JMESPath expression "
                "(such as score or probabilities[1]); a column index applies to text/csv responses")
    return ""


def _one_kind(seen: tuple[int, str] | None, kinds: np.ndarray, keep: np.ndarray, origin: Callable[[int], str],
              what: str, malformed: _Malformed) -> tuple[int, str] | None:
    """The window's one payload format for ``what``: the most common among the first lines that have one.

    A window's traffic is one model's, in one format; a line in another (a caller who sent another
    Content-Type) is a malformed line: skipped, counted and named, so that one stray request cannot stop
    the execution (more than 1 % of them still do, as other malformed lines)."""
    present = np.flatnonzero(kinds >= 0)
    if not len(present):
        return seen
    if seen is None:
        chosen = int(np.argmax(np.bincount(kinds[present], minlength=len(_KIND_LIST))))
        seen = (chosen, origin(int(present[kinds[present] == chosen][0])))
    for i in np.flatnonzero((kinds >= 0) & (kinds != seen[0])).tolist():
        malformed.add(origin(i), f"captured {what} in {_KIND_LIST[int(kinds[i])]}; the window's {what} are "
                                 f"{_KIND_LIST[seen[0]]} (as {seen[1]}), and a monitor reads one format")
        keep[i] = False
        kinds[i] = -1
    return seen


def _record_origin(origin: Callable[[int], str], records: _Records, i: int) -> str:
    parent = int(records.parent[i])
    first = int(np.searchsorted(records.parent, parent))
    count = int(np.searchsorted(records.parent, parent, side="right")) - first
    return origin(parent) + (f" (record {i - first + 1} of {count})" if count > 1 else "")


# -- the entry point ------------------------------------------------------------------------------

def merge_window(config: AnalysisConfig, capture_files: Iterable[CaptureFile], window: Window,
                 attributes: EndpointAttributes, ground_truth_files: Iterable[CaptureFile] | None, *,
                 need_features: bool | None = None, chunk_bytes: int = CHUNK_BYTES,
                 ground_truth_where: str | None = None) -> MergedWindow:
    """The window's records as a ``Dataset`` for ``run_analysis`` (see the module docstring for the rules).

    ``capture_files``: the capture objects of the window's hour folders (``hour_prefixes``), any order,
    read lazily ``chunk_bytes`` at a time on a reader thread (which parses one chunk ahead while this
    one is merged). ``ground_truth_files``: the ground truth objects (``ground_truth_prefixes``), oldest
    first, read on another thread meanwhile; None for an explainability execution (features only: no
    label, no predicted label). Both are iterated on threads: iterating them must not depend on
    thread-local state. ``ground_truth_where``: the folders the ground truth files were listed in, named
    when a bias window has no ground truth at all. Ground truth problems are reported before the capture's, as if read first. ``need_features``: build ``Dataset.features`` (default: for
    explainability, and for bias when the Flip Test is asked for).
    """
    started = time.perf_counter()
    if need_features is None:
        post = config.methods.post_training_bias
        need_features = ground_truth_files is None or bool(post and "FT" in post.methods)
    # Capture chunks are read and parsed on a thread one chunk ahead (pyarrow parses without the GIL).
    counter = [0]
    parsed = _Prefetched(_parsed_chunks(capture_files, chunk_bytes, counter))
    jobs: list[_Background] = []
    try:
        return _merge(config, window, attributes, ground_truth_files, need_features, chunk_bytes, parsed, counter,
                      started, jobs, ground_truth_where)
    finally:
        parsed.close()
        for job in jobs:
            job.close()


def _merge(config: AnalysisConfig, window: Window, attributes: EndpointAttributes,
           ground_truth_files: Iterable[CaptureFile] | None, need_features: bool, chunk_bytes: int,
           parsed: _Prefetched, counter: list[int], started: float, jobs: list[_Background],
           ground_truth_where: str | None = None) -> MergedWindow:
    bias = ground_truth_files is not None
    counts: dict[str, Any] = {"window_start": utc_text(window.start), "window_end": utc_text(window.end),
                              "capture_files": 0, "captured_lines": 0, "malformed_lines": 0,
                              "malformed_examples": [], "captured_records": 0, "invocations_in_window": 0,
                              "records_in_window": 0, "merged_records": 0}
    truth_job = None
    if ground_truth_files is not None:
        counts.update(ground_truth_lines=0, malformed_ground_truth_lines=0, malformed_ground_truth_examples=[],
                      records_without_ground_truth=0, records_with_copied_ground_truth=0,
                      records_with_mismatched_ground_truth=0, ground_truth_files=0, ground_truth_records=0,
                      duplicate_ground_truth=0, explanation_documents=0)
        # The join waits for the last capture chunk, so the ground truth is read meanwhile, on its own thread.
        label = config.label
        truth_job = _Background(lambda stop: _ground_truth(ground_truth_files, label, chunk_bytes, stop),
                                TRUTH_READER)
        jobs.append(truth_job)
    malformed = _Malformed("capture")
    builder = _WindowBuilder(config, attributes, window, bias, need_features, malformed, counts)
    builder.ground_truth_where = ground_truth_where
    try:
        for lines, chunk_malformed in parsed:
            malformed.absorb(chunk_malformed)
            counts["captured_records"] += len(lines)
            builder.add(lines)
    except Exception:
        if truth_job is not None:  # a problem of the ground truth is reported first, as when it was read first
            _truth_result(truth_job, counts)
        raise
    truth = _truth_result(truth_job, counts) if truth_job is not None else None
    counts.update(capture_files=counter[0], captured_lines=malformed.lines, malformed_lines=malformed.count,
                  malformed_examples=list(malformed.examples))
    malformed.check()
    dataset = builder.finish(source=f"captured data {window}", truth=truth)
    counts["merged_records"] = dataset.n_rows
    if builder.matched is not None:
        counts["ground_truth_without_records"] = counts["ground_truth_records"] - int(np.count_nonzero(builder.matched))
        counts["join_key"] = "eventMetadata.inferenceId, else eventId"
    counts["seconds"] = round(time.perf_counter() - started, 3)
    log.info("Merged window %s: %d record(s) from %d invocation(s) in %d capture file(s)%s in %.2f s", window,
             dataset.n_rows, counts["invocations_in_window"], counts["capture_files"],
             f"; {counts['records_without_ground_truth']} without ground truth, "
             f"{counts['ground_truth_without_records']} ground truth label(s) without a record" if bias else "",
             counts["seconds"])
    return MergedWindow(dataset, counts)


def _ground_truth(files: Iterable[CaptureFile], label: Locator | None, chunk_bytes: int,
                  stop: threading.Event) -> tuple[_Truth, _Malformed, dict[str, Any]]:
    """The ground truth read on its thread: the labels, the malformed lines, and the counts."""
    malformed = _Malformed("ground truth")
    counts: dict[str, Any] = {}
    truth = _read_ground_truth(files, label, malformed, counts, chunk_bytes, stop)
    return truth, malformed, counts


def _truth_result(job: _Background, counts: dict[str, Any]) -> _Truth:
    """The ground truth, once read, its counts added to ``counts``; too many malformed lines fail here."""
    truth, malformed, truth_counts = job.result()
    counts.update(ground_truth_lines=malformed.lines, malformed_ground_truth_lines=malformed.count,
                  malformed_ground_truth_examples=list(malformed.examples), **truth_counts)
    malformed.check()
    log.info("Ground truth: %d label(s) from %d file(s)", counts["ground_truth_records"], counts["ground_truth_files"])
    return truth


def _naive_utc(when: datetime) -> datetime:
    return (when if when.tzinfo is None else when.astimezone(UTC)).replace(tzinfo=None)


__all__ = ["CHUNK_BYTES", "MAX_EXAMPLES", "MAX_LINE_BYTES", "MAX_MALFORMED_FRACTION", "CaptureFile", "MergedWindow", "merge_window"]
