"""Ground truth files -> each join key's labels (``Truth``): CSV or JSON labels, one per record or one per
line for a request of several records; the last record read for a key wins."""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.config.model import Locator
from analyzer.errors import UserError
from analyzer.monitor.arrow_masks import true_mask, valid_mask
from analyzer.monitor.background import ReaderStopped
from analyzer.monitor.capture import CSV_ENCODING, JSON_ENCODING
from analyzer.monitor.jsonl_chunks import (
    CaptureFile,
    MalformedLines,
    Origins,
    file_chunks,
    python_lines,
    read_json_lines,
)
from analyzer.predict.locator import JsonLocator

_TRUTH_SCHEMA = pa.schema([
    ("groundTruthData", pa.struct([("data", pa.string()), ("encoding", pa.string())])),
    ("eventMetadata", pa.struct([("eventId", pa.string())])),
])
_TRUTH_ENCODINGS = (CSV_ENCODING, JSON_ENCODING)


class Truth:
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


def _truth_lines(files: list[CaptureFile], malformed: MalformedLines) -> tuple[pa.Array, pa.Array, pa.Array, Callable]:
    """(eventId, data, encoding) of the chunk's well-formed ground truth lines, and their origins."""
    table = read_json_lines(files, _TRUTH_SCHEMA)
    if table is not None:
        truth = table.column("groundTruthData").combine_chunks()
        keys = pc.struct_field(table.column("eventMetadata").combine_chunks(), "eventId")
        data, encoding = pc.struct_field(truth, "data"), pc.struct_field(truth, "encoding")
        if (valid_mask(keys) & valid_mask(data) & true_mask(pc.is_in(encoding, pa.array(_TRUTH_ENCODINGS)))).all():
            malformed.lines += len(keys)
            return keys, data, encoding, Origins(files, n_rows=len(keys))
    records, origins = python_lines(files, malformed, _truth_problem)
    return (pa.array([r["eventMetadata"]["eventId"] for r in records], pa.string()),
            pa.array([r["groundTruthData"]["data"] for r in records], pa.string()),
            pa.array([r["groundTruthData"]["encoding"] for r in records], pa.string()),
            Origins(explicit=origins))


def read_ground_truth(files: Iterable[CaptureFile], label: Locator | None, malformed: MalformedLines,
                       counts: dict[str, Any], chunk_bytes: int, stop: threading.Event | None = None) -> Truth:
    keys, encodings = [], set()
    counter = [0]
    csv_parts: list[pa.Array] = []
    json_parts: list[Any] = []
    label_counts: list[np.ndarray] = []
    first_origin = ""
    for chunk in file_chunks(files, chunk_bytes, counter, "ground truth"):
        if stop is not None and stop.is_set():
            raise ReaderStopped
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
    truth = Truth(pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
                   pa.concat_arrays(csv_parts) if csv_parts else None, json_parts if json_parts else None,
                   np.concatenate(label_counts) if label_counts else None)
    counts["ground_truth_records"] = truth.n_keys
    counts["duplicate_ground_truth"] = truth.n_records - truth.n_keys
    return truth


def _csv_labels(data: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
                malformed: MalformedLines) -> tuple[pa.Array, np.ndarray]:
    """Each CSV ``data`` as its labels (a trailing line break dropped): one field, or one field per line (a
    label per record of a multi-record request). Returns the labels, record after record, and how many
    each kept record has."""
    text = pc.utf8_rtrim(data, characters="\r\n")
    odd = np.flatnonzero(true_mask(pc.match_substring_regex(text, r'[,"\r\n]')))
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


def _json_labels(data: pa.Array, keep: np.ndarray, origin: Callable[[int], str], malformed: MalformedLines,
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
