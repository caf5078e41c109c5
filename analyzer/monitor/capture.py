"""The data-capture record and its object layout (spec model-monitor.md 2.2 and 2.3), as pure functions.

One line per invocation, byte for byte the shape SageMaker writes::

    {"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"...",
    "encoding":"CSV"},"endpointOutput":{...,"mode":"OUTPUT",...}},"eventMetadata":{"eventId":"<uuid>",
    "inferenceId":"<caller's id, when sent>","inferenceTime":"2023-01-19T05:31:46Z"},"eventVersion":"0"}

A payload whose media type is listed in ``CaptureContentTypeHeader`` (``CsvContentTypes`` /
``JsonContentTypes``) is stored as text with encoding ``CSV`` / ``JSON``; anything else -- and a listed
type whose body is not UTF-8, which cannot be text in a JSON string -- is stored base64 with encoding
``BASE64``, so every body round-trips byte for byte. Listed and observed types are compared as bare
media types (``analyzer.media.media_type``): ``text/csv`` covers ``text/csv; charset=utf-8``, which is
how SageMaker's own capture of a ``text/csv`` listing shows such responses as ``CSV``.

Objects live at ``{endpoint}/{variant}/yyyy/mm/dd/hh/MM-SS-mmm-{uuid}.jsonl`` under the destination,
the hour being the inference time's (UTC). Endpoint and variant names are user input and become key
parts, so they must match SageMaker's own name pattern: no ``/``, no ``..``, nothing to climb out of the
destination with.

Standard library only, so that any layer (the endpoint, a future monitoring job) can import it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from analyzer.errors import DataError, UserError
from analyzer.media import media_type

EVENT_VERSION = "0"
INPUT = "INPUT"
OUTPUT = "OUTPUT"
CSV_ENCODING = "CSV"
JSON_ENCODING = "JSON"
BASE64_ENCODING = "BASE64"
ENCODINGS = (CSV_ENCODING, JSON_ENCODING, BASE64_ENCODING)
# RFC 9110 8.3: a body without Content-Type may be treated as application/octet-stream.
UNDECLARED_CONTENT_TYPE = "application/octet-stream"
# SageMaker's EndpointName / VariantName pattern (CreateEndpoint, ProductionVariant).
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_FILE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")


def capture_record(*, event_id: str, inference_time: datetime, inference_id: str | None,
                   input_body: bytes | None, input_content_type: str | None,
                   output_body: bytes | None, output_content_type: str | None,
                   csv_types: Sequence[str], json_types: Sequence[str],
                   custom_attributes: str | None = None) -> dict:
    """One capture line as a dict in SageMaker's key order (serialise with :func:`capture_line`).

    ``input_body`` / ``output_body`` None leaves out ``endpointInput`` / ``endpointOutput`` (the
    ``CaptureOptions`` did not ask for it). ``inference_time`` without a time zone is taken as UTC.
    ``custom_attributes`` (the caller's ``X-Amzn-SageMaker-Custom-Attributes``) becomes
    ``eventMetadata.customAttributes``, a list of one string, as the capture schema has it."""
    csv_set = _media_types(tuple(csv_types))
    json_set = _media_types(tuple(json_types))
    capture: dict[str, Any] = {}
    if input_body is not None:
        capture["endpointInput"] = _payload(INPUT, input_body, input_content_type, csv_set, json_set)
    if output_body is not None:
        capture["endpointOutput"] = _payload(OUTPUT, output_body, output_content_type, csv_set, json_set)
    metadata: dict[str, Any] = {"eventId": event_id}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time_text(inference_time)
    if custom_attributes is not None:
        metadata["customAttributes"] = [custom_attributes]
    return {"captureData": capture, "eventMetadata": metadata, "eventVersion": EVENT_VERSION}


@functools.lru_cache(maxsize=64)
def _media_types(types: tuple[str, ...]) -> frozenset[str]:
    return frozenset(media_type(t) for t in types)


def _payload(mode: str, body: bytes | str, content_type: str | None, csv_set: frozenset[str],
             json_set: frozenset[str]) -> dict[str, str]:
    observed = UNDECLARED_CONTENT_TYPE if content_type is None else content_type
    kind = media_type(observed)
    encoding = CSV_ENCODING if kind in csv_set else JSON_ENCODING if kind in json_set else BASE64_ENCODING
    if isinstance(body, str):
        raw = None
        text = body
    else:
        raw = bytes(body)
        text = None
        if encoding != BASE64_ENCODING:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # not text after all: keep the bytes rather than lose them
                encoding = BASE64_ENCODING
    if encoding == BASE64_ENCODING:
        data = base64.b64encode(raw if raw is not None else text.encode("utf-8")).decode("ascii")
    else:
        data = text
    return {"observedContentType": observed, "mode": mode, "data": data, "encoding": encoding}


def inference_time_text(when: datetime) -> str:
    """ISO-8601 UTC to the second with ``Z``: ``2023-01-19T05:31:46Z`` (naive times are UTC)."""
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # made once: json.dumps
# with non-default arguments builds a new encoder per call, half the cost of a capture line


def capture_line(record: dict) -> str:
    """The record as one JSON Lines line (compact separators, non-ASCII kept, newline at the end)."""
    return _LINE_ENCODER.encode(record) + "\n"


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid SageMaker endpoint / variant name, else a ``UserError`` naming ``what``."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise UserError(f"{what} {value!r}: must be 1-63 letters, digits and hyphens, starting and ending "
                        "with a letter or digit (SageMaker's name pattern)")
    return value


def capture_key(endpoint: str, variant: str, when: datetime, file_id: str) -> str:
    """``{endpoint}/{variant}/yyyy/mm/dd/hh/MM-SS-mmm-{file_id}.jsonl`` (UTC; naive times are UTC), the
    key of a capture file below the destination. Raises ``UserError`` for a name that could leave it."""
    check_name(endpoint, "endpoint name")
    check_name(variant, "variant name")
    if not isinstance(file_id, str) or not _FILE_ID.fullmatch(file_id):
        raise ValueError(f"capture file id {file_id!r}: expected a UUID")
    when = _utc(when)
    return (f"{endpoint}/{variant}/{when:%Y/%m/%d/%H}/"
            f"{when:%M-%S}-{when.microsecond // 1000:03d}-{file_id}.jsonl")


def inference_hour(when: datetime) -> datetime:
    """The UTC hour ``when`` falls in (the capture file's ``yyyy/mm/dd/hh`` folder); naive times are UTC."""
    return _utc(when).replace(minute=0, second=0, microsecond=0)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# -- reading captures back ------------------------------------------------------------------------

def read_capture_lines(text: str, source: str = "capture data") -> list[dict]:
    """The records of a capture file's text, one per non-blank line, checked for the spec-2.3 shape;
    a line that is not one raises ``DataError`` naming ``source`` and the line number."""
    records = []
    # Split on "\n" only: str.splitlines would also split inside a string holding U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{source}, line {number}: not JSON ({error.msg})") from None
        problem = record_problem(record)
        if problem:
            raise DataError(f"{source}, line {number}: {problem}")
        records.append(record)
    return records


def record_problem(record: Any) -> str | None:
    """Why a parsed capture line is not a capture record of the spec-2.3 shape, or None when it is.

    Public because two readers apply it: ``read_capture_lines`` here, and the window merge's line by line
    path (``analyzer.monitor.capture_lines``), which must reject exactly the lines this rejects."""
    if not isinstance(record, dict):
        return "not a JSON object"
    capture = record.get("captureData")
    if not isinstance(capture, dict):
        return "no captureData object"
    for key, mode in (("endpointInput", INPUT), ("endpointOutput", OUTPUT)):
        if key not in capture:
            continue
        part = capture[key]
        if not isinstance(part, dict):
            return f"captureData.{key}: not an object"
        if part.get("mode") != mode:
            return f"captureData.{key}.mode: expected {mode!r}, got {part.get('mode')!r}"
        if part.get("encoding") not in ENCODINGS:
            return f"captureData.{key}.encoding: expected one of {', '.join(ENCODINGS)}, got {part.get('encoding')!r}"
        for field in ("data", "observedContentType"):
            if not isinstance(part.get(field), str):
                return f"captureData.{key}.{field}: expected a string"
    metadata = record.get("eventMetadata")
    if not isinstance(metadata, dict):
        return "no eventMetadata object"
    for field in ("eventId", "inferenceTime"):
        if not isinstance(metadata.get(field), str):
            return f"eventMetadata.{field}: expected a string"
    if "inferenceId" in metadata and not isinstance(metadata["inferenceId"], str):
        return "eventMetadata.inferenceId: expected a string"
    return None


def payload_bytes(part: dict) -> bytes:
    """The body a captured ``endpointInput`` / ``endpointOutput`` holds, as the endpoint saw it."""
    if part["encoding"] == BASE64_ENCODING:
        try:
            return base64.b64decode(part["data"], validate=True)
        except binascii.Error as error:
            raise DataError(f"captured {part.get('mode', 'payload')}: data is not base64 ({error})") from None
    return part["data"].encode("utf-8")


def parse_inference_time(text: str) -> datetime:
    """``2023-01-19T05:31:46Z`` -> an aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
