"""Payload texts -> data records (``DataRecords``): CSV through pyarrow's reader or Python's csv, JSON located
with the features' JMESPath; and the line counting and joining the responses use too."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from analyzer.media import JSON, JSON_LINES
from analyzer.monitor.arrow_masks import true_mask
from analyzer.monitor.jsonl_chunks import MalformedLines
from analyzer.monitor.payloads import KIND_LIST
from analyzer.predict.locator import JsonLocator

_CSV_BLOCK_BYTES = 8 << 20


def split_lines(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The non-blank lines of every text (``\\n`` or ``\\r\\n`` line ends), and the text each comes from."""
    if pc.any(pc.match_substring(texts, "\r")).as_py():
        texts = pc.replace_substring(texts, "\r\n", "\n")
    lists = pc.split_pattern(texts, "\n")
    lines = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    blank = pc.or_(pc.equal(pc.binary_length(lines), 0), pc.utf8_is_space(lines))
    if not pc.any(blank).as_py():
        return lines, parents
    nonblank = ~true_mask(blank)
    return lines.filter(pa.array(nonblank)), parents[nonblank]


@dataclass
class DataRecords:
    """The data records of a chunk's lines: the line each comes from, and its values."""

    parent: np.ndarray
    lines: pa.Array | None = None  # CSV without quotes: one text line per record
    rows: list[list[Any]] | None = None  # JSON values, or CSV fields read by Python's csv
    columns: dict[str, pa.Array] | None = None  # CSV read by pyarrow: the needed columns' fields

    def take(self, mask: np.ndarray) -> DataRecords:
        if mask.all():
            return self
        if self.columns is not None:
            keep = pa.array(mask)
            return DataRecords(self.parent[mask], columns={n: c.filter(keep) for n, c in self.columns.items()})
        if self.lines is not None:
            return DataRecords(self.parent[mask], lines=self.lines.filter(pa.array(mask)))
        assert self.rows is not None
        return DataRecords(self.parent[mask], rows=[r for r, m in zip(self.rows, mask, strict=True) if m])


def csv_records(texts: pa.Array, keep: np.ndarray) -> DataRecords:
    """The records of CSV texts split line by line: on line breaks when no text holds a quote or a
    carriage return, else with Python's csv module (quoted fields may hold commas and line breaks)."""
    if not holds_any(texts, b'"\r'):
        lines, parents = split_lines(texts)
        return DataRecords(parents, lines=lines)
    parents, rows = [], []
    for i, text in enumerate(texts.to_pylist()):
        if keep[i]:
            for row in csv.reader(io.StringIO(text)):
                if row and not (len(row) == 1 and not row[0].strip()):
                    parents.append(i)
                    rows.append(row)
    return DataRecords(np.array(parents, dtype=np.int64), rows=rows)


def joined_texts(texts: pa.Array) -> pa.Buffer:
    """The texts one after the other, a line break between two (one copy, in Arrow)."""
    if texts.type != pa.large_string() and texts.nbytes >= 2**31 - 2**24:  # 32-bit offsets would overflow
        texts = texts.cast(pa.large_string())
    lists = (pa.LargeListArray if texts.type == pa.large_string() else pa.ListArray).from_arrays(
        pa.array([0, len(texts)], pa.int64() if texts.type == pa.large_string() else pa.int32()), texts)
    return pc.binary_join(lists, pa.scalar("\n", texts.type))[0].as_buffer()


def holds_any(texts: pa.Array, characters: bytes) -> bool:
    """Whether a byte of ``characters`` occurs in the strings' data (a numpy scan of the data buffer,
    several times faster than a string kernel per value; bytes outside the array only make it cautious)."""
    data = texts.buffers()[2]
    if data is None:
        return False
    values = np.frombuffer(data, dtype=np.uint8)
    return any(bool((values == byte).any()) for byte in characters)


def record_counts(texts: pa.Array) -> np.ndarray:
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


def read_csv_records(texts: pa.Array, keep: np.ndarray, names: list[str], needed: list[str]) -> DataRecords | None:
    """The kept texts read as one CSV document by pyarrow (the reader ``load_dataset`` uses), with only
    the ``needed`` columns; None when that cannot be trusted to split the records of each text apart
    (a row of another width, blank lines): the caller then reads them line by line."""
    if not keep.all():
        texts = pc.if_else(pa.array(keep), texts, pa.scalar("", pa.string()))
    counts = record_counts(texts)
    document = joined_texts(texts)
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
    return DataRecords(parents, columns={name: table.column(name).combine_chunks() for name in needed})


def json_records(texts: pa.Array, kinds: np.ndarray, keep: np.ndarray, origin: Callable[[int], str],
                  malformed: MalformedLines, locator: JsonLocator | None, locator_name: str = "features") -> DataRecords:
    """Feature lists located in JSON Lines (one document per line) or JSON (one document per request)."""
    parents, rows = [], []
    documents: list[tuple[int, Any]] = []
    jsonl = np.flatnonzero(keep & (kinds == KIND_LIST.index(JSON_LINES)))
    if len(jsonl):
        lines, line_parents = split_lines(texts.take(pa.array(jsonl)))
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
    for i in np.flatnonzero(keep & (kinds == KIND_LIST.index(JSON))).tolist():
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
        if kinds[parent] == KIND_LIST.index(JSON) and isinstance(found, list) and found and all(
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
    records = DataRecords(np.array(parents, dtype=np.int64), rows=rows)
    return records.take(keep[records.parent]) if len(records.parent) else records


_BAD = object()
