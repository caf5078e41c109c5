"""Capture lines -> columns (``CaptureLines``): a chunk of capture files parsed by pyarrow against the capture
record's shape, or line by line where a line is malformed (spec model-monitor.md 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.monitor.arrow_masks import true_mask, valid_mask
from analyzer.monitor.capture import ENCODINGS, INPUT, OUTPUT, parse_inference_time, record_problem
from analyzer.monitor.jsonl_chunks import (
    CaptureFile,
    MalformedLines,
    Origins,
    file_chunks,
    python_lines,
    read_json_lines,
)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_PART = pa.struct([("observedContentType", pa.string()), ("mode", pa.string()), ("data", pa.string()),
                   ("encoding", pa.string())])
_CAPTURE_SCHEMA = pa.schema([
    ("captureData", pa.struct([("endpointInput", _PART), ("endpointOutput", _PART)])),
    ("eventMetadata", pa.struct([("eventId", pa.string()), ("inferenceId", pa.string()),
                                 ("inferenceTime", pa.string())])),
])


@dataclass
class CaptureLines:
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

    def take(self, rows: np.ndarray) -> CaptureLines:
        index = pa.array(rows, pa.int64())
        origin = self.origin
        return CaptureLines(*(getattr(self, name).take(index) for name in _LINE_COLUMNS),
                      origin=lambda i: origin(int(rows[i])))


_LINE_COLUMNS = ("in_data", "in_encoding", "in_type", "out_data", "out_encoding", "out_type", "event_id",
                 "inference_id", "time")


def _capture_lines(files: list[CaptureFile], malformed: MalformedLines) -> CaptureLines:
    table = read_json_lines(files, _CAPTURE_SCHEMA)
    if table is not None:
        lines = _arrow_capture_lines(table, Origins(files, n_rows=table.num_rows))
        if lines is not None:
            malformed.lines += len(lines)
            return lines
    return _python_capture_lines(files, malformed)


def _arrow_capture_lines(table: pa.Table, origins: Origins) -> CaptureLines | None:
    """The columns, or None when a line lacks a field or has a bad value (then Python names it)."""
    capture = table.column("captureData").combine_chunks()
    metadata = table.column("eventMetadata").combine_chunks()
    ok = valid_mask(capture) & valid_mask(metadata)
    parts = {}
    for key, mode in (("endpointInput", INPUT), ("endpointOutput", OUTPUT)):
        part = pc.struct_field(capture, key)
        fields = {name: pc.struct_field(part, name) for name in ("data", "encoding", "observedContentType", "mode")}
        present = valid_mask(part) & ok
        good = (true_mask(pc.equal(fields["mode"], mode)) & true_mask(pc.is_in(fields["encoding"], pa.array(ENCODINGS)))
                & valid_mask(fields["data"]) & valid_mask(fields["observedContentType"]))
        ok &= ~present | good
        parts[key] = fields  # struct_field applies the parents' nulls: an absent part reads as null fields
    event_id = pc.struct_field(metadata, "eventId")
    times = pc.struct_field(metadata, "inferenceTime")
    parsed = pc.strptime(times, format=_TIME_FORMAT, unit="s", error_is_null=True)
    ok &= valid_mask(event_id) & valid_mask(parsed)
    if not ok.all():
        return None
    return CaptureLines(parts["endpointInput"]["data"], parts["endpointInput"]["encoding"],
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


def _python_capture_lines(files: list[CaptureFile], malformed: MalformedLines) -> CaptureLines:
    records, origins = python_lines(files, malformed, _capture_problem)

    def column(key: str, name: str) -> pa.Array:
        return pa.array([r["captureData"].get(key, {}).get(name) for r in records], pa.string())

    return CaptureLines(
        column("endpointInput", "data"), column("endpointInput", "encoding"),
        column("endpointInput", "observedContentType"), column("endpointOutput", "data"),
        column("endpointOutput", "encoding"), column("endpointOutput", "observedContentType"),
        pa.array([r["eventMetadata"]["eventId"] for r in records], pa.string()),
        pa.array([r["eventMetadata"].get("inferenceId") for r in records], pa.string()),
        pa.array([parse_inference_time(r["eventMetadata"]["inferenceTime"]).replace(tzinfo=None) for r in records],
                 pa.timestamp("s")),
        Origins(explicit=origins),
    )


def parsed_chunks(files: Iterable[CaptureFile], chunk_bytes: int,
                   counter: list[int]) -> Iterator[tuple[CaptureLines, MalformedLines]]:
    """Each chunk's well-formed capture lines, and what was malformed in it."""
    for chunk in file_chunks(files, chunk_bytes, counter):
        malformed = MalformedLines("capture")
        yield _capture_lines(chunk, malformed), malformed
