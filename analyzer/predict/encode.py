"""Request serialisation: feature rows -> model request bodies (spec 5.2).

A window of rows is serialised once into ``EncodedRecords``: every record's bytes laid end to end
plus their offsets. Any contiguous range of records then becomes a request body by slicing, so batch
sizes can follow the payload limit exactly (and shrink after model errors) without re-serialising.

Speed matters here: a SHAP or bias run can send tens of millions of rows. An all-numeric window is
formatted in one ``orjson`` call (shortest round-trip float formatting in C, so every float arrives
bit-exact) and cut into records with bytes.replace / numpy, never formatting values one by one in
Python. Other windows (strings, booleans, missing values, key-value templates) take a per-column
path that is still vectorised per distinct value where it can be.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from analyzer.config.model import Predictor
from analyzer.data.pictures import CoalitionPictures
from analyzer.errors import UserError
from analyzer.media import (
    CSV,
    FEATURE_NAMES,
    FEATURES,
    FEATURES_KVP,
    JPEG,
    JPG,
    JSON,
    JSON_LINES,
    NPY,
    PNG,
    RECORD,
    RECORDS,
    REQUEST_TYPES,
    media_type,
    placeholders,
)

Rows = pd.DataFrame | np.ndarray | CoalitionPictures
Style = Literal["csv", "json"]


class SplitBody:
    """A request body sent as consecutive pieces, never joined into one buffer.

    An npy body is a small header followed by the rows' own memory: sending the two pieces one after
    the other avoids copying tens of MB per request (``np.save`` into a buffer copied them three times).
    ``len()`` is the body's size in bytes and ``bytes()`` the joined body (for tests and errors).
    """

    def __init__(self, *pieces: bytes | memoryview):
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self.pieces)

    def __len__(self) -> int:
        return sum(memoryview(piece).nbytes for piece in self.pieces)

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)


Body = bytes | memoryview | SplitBody

_EXACT_INT_LIMIT = 2**53  # largest integer range float64 holds exactly


@dataclass(frozen=True)
class _Cells:
    """A record-template slot filled per row: all cells joined, key-value pairs, or one feature."""

    kind: Literal["cells", "kvp", "feature"]
    column: int = -1


_Part = bytes | _Cells


class EncodedRecords:
    """Serialised records of one window of rows, sliceable into request bodies."""

    content_type: str | None = None  # the bodies' media type when it is not the predictor's

    def __init__(self, data: bytes | memoryview, offsets: np.ndarray, separator: bytes, head: bytes = b"",
                 tail: bytes = b"", max_records: int | None = None):
        self.data = memoryview(data)  # every record followed by ``separator``
        self.offsets = offsets  # int64, n + 1 entries: record i is data[offsets[i]:offsets[i + 1]]
        self.separator = separator
        self.head = head  # request envelope around the records (content_template)
        self.tail = tail
        self.max_records = max_records  # 1 when the template carries a single ``$record``

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def envelope_bytes(self) -> int:
        """Bytes a request body adds to its records' own bytes (template envelope, minus a separator)."""
        return len(self.head) + len(self.tail) - len(self.separator)

    def size(self, start: int, stop: int) -> int:
        """Body size in bytes of the request carrying records ``start:stop``."""
        return self.envelope_bytes + int(self.offsets[stop] - self.offsets[start])

    def body(self, start: int, stop: int) -> Body:
        """The request body carrying records ``start:stop`` (a view of ``data`` when it can be)."""
        if stop <= start or (self.max_records is not None and stop - start > self.max_records):
            raise ValueError(f"cannot make one request body of records {start}:{stop}")
        records = self.data[self.offsets[start]:self.offsets[stop] - len(self.separator)]
        return b"".join((self.head, records, self.tail)) if self.head or self.tail else records

    def cut(self, start: int, max_records: int, max_bytes: int) -> int:
        """End of the largest batch from ``start`` within both limits (at least one record)."""
        if self.max_records is not None:
            max_records = min(max_records, self.max_records)
        stop = min(len(self), start + max(1, max_records))
        limit = self.offsets[start] + max_bytes - self.envelope_bytes
        fits = int(np.searchsorted(self.offsets, limit, side="right")) - 1
        return max(start + 1, min(stop, fits))


class NpyRecords(EncodedRecords):
    """``application/x-npy``: each request is one ``.npy`` array of the batch's rows."""

    def __init__(self, matrix: np.ndarray):
        row_bytes = matrix.shape[1] * matrix.dtype.itemsize
        super().__init__(b"", np.arange(matrix.shape[0] + 1, dtype=np.int64) * row_bytes, b"")
        self.matrix = np.ascontiguousarray(matrix)  # row-major: a request's rows are one block of memory

    @property
    def envelope_bytes(self) -> int:
        return 128  # np.save pads its header to a multiple of 64 bytes; 128 covers any 2-D shape

    def body(self, start: int, stop: int) -> Body:
        return SplitBody(*npy_pieces(self.matrix[start:stop]))  # their memory is the npy payload as it stands


def npy_pieces(array: np.ndarray) -> tuple[bytes, memoryview]:
    """A C-contiguous ``array`` as an ``.npy`` file in two pieces: its header, then its own memory (not copied)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False, "shape": array.shape})
    return header.getvalue(), memoryview(array).cast("B")


class RequestEncoder:
    """Serialises feature rows the way ``predictor`` says the model wants them.

    ``feature_names`` are the names of the columns in order: they fill ``$feature_names``,
    ``$features_kvp`` and ``"${name}"`` placeholders. Template errors raise ``UserError`` with the
    SDK's wording.
    """

    def __init__(self, predictor: Predictor, feature_names: Sequence[str]):
        self.content_type = media_type(predictor.content_type or CSV)
        self.feature_names = [str(name) for name in feature_names]
        if not self.feature_names:
            raise UserError("There are no feature columns to send to the model.")
        self.head = self.tail = b""
        self.max_records: int | None = None
        if self.content_type == CSV:
            self.style: Style = "csv"
            self.value_separator, self.key_separator, self.separator = b",", b":", b"\n"
            self.parts: list[_Part] = [_Cells("cells")]
        elif self.content_type == JSON_LINES:
            self.style = "json"
            self.value_separator, self.key_separator, self.separator = b",", b":", b"\n"
            template = _template_text(predictor.content_template, "content_template")
            if template is None:
                raise UserError("content_template field is required for content_type application/jsonlines")
            self.parts = self._record_parts(template, "content_template")
            if not any(isinstance(part, _Cells) for part in self.parts):
                raise UserError(f"Invalid content_template {template}. Please include a placeholder $features.")
        elif self.content_type == JSON:
            # Python json.dumps spacing, as in the SDK's documented bodies ({"A": 0, "B": 1}).
            self.style = "json"
            self.value_separator, self.key_separator, self.separator = b", ", b": ", b", "
            self._json_envelope(predictor)
        elif self.content_type in (NPY, JPEG, JPG, PNG):  # images: analyzer.predict.image_requests
            self.style, self.parts = "json", []
        else:
            raise UserError(f"predictor.content_type {predictor.content_type!r} is not supported for tabular "
                            f"data; use one of {', '.join(REQUEST_TYPES)}")

    def _json_envelope(self, predictor: Predictor) -> None:
        content = _template_text(predictor.content_template, "content_template")
        record = _template_text(predictor.record_template, "record_template")
        if content is None or record is None:
            raise UserError("content_template and record_template are required for content_type application/json")
        slots = [slot for slot in placeholders(content) if slot.name in (RECORDS, RECORD)]
        if not slots:
            raise UserError(f"Invalid content_template {content}. Please include either placeholder $records or "
                            "$record.")
        if len(slots) > 1:
            raise UserError(f"Invalid content_template {content}. Please include only one $records or $record.")
        slot = slots[0]
        head, tail = self._constants(content[:slot.start]), self._constants(content[slot.end:])
        if slot.name == RECORDS:
            self.head, self.tail = head + b"[", b"]" + tail
        else:
            self.head, self.tail, self.max_records = head, tail, 1
        self.parts = self._record_parts(record, "record_template")
        if not any(isinstance(part, _Cells) for part in self.parts):
            raise UserError(f"Invalid record_template {record}. Please include a placeholder $features, "
                            "$features_kvp or \"${feature_name}\".")

    def _constants(self, text: str) -> bytes:
        """Envelope text with ``$feature_names`` filled in (the only placeholder allowed there)."""
        parts = self._record_parts(text, "content_template")
        if any(isinstance(part, _Cells) for part in parts):
            raise UserError(f"content_template {text!r}: feature placeholders belong in record_template")
        return b"".join(parts)  # type: ignore[arg-type]  # all bytes, checked above

    def _record_parts(self, template: str, key: str) -> list[_Part]:
        """Split a record template into literal bytes and per-row slots (adjacent literals merged)."""
        parts: list[_Part] = []
        position = 0

        def literal(text: bytes) -> None:
            if parts and isinstance(parts[-1], bytes):
                parts[-1] += text
            elif text:
                parts.append(text)

        for slot in placeholders(template):
            literal(template[position:slot.start].encode())
            position = slot.end
            name, feature = slot.name, slot.feature
            if feature is not None:
                if feature not in self.feature_names:
                    raise UserError(f"{key} placeholder ${{{feature}}} does not name a feature; features are "
                                    f"{', '.join(self.feature_names)}")
                parts.append(_Cells("feature", self.feature_names.index(feature)))
            elif name == FEATURES:
                literal(b"[")
                parts.append(_Cells("cells"))
                literal(b"]")
            elif name == FEATURES_KVP:
                literal(b"{")
                parts.append(_Cells("kvp"))
                literal(b"}")
            elif name == FEATURE_NAMES:
                literal(b"[" + self.value_separator.join(orjson.dumps(n) for n in self.feature_names) + b"]")
            elif name in (RECORDS, RECORD):
                raise UserError(f"{key} {template!r}: ${name} is only allowed in content_template of "
                                "content_type application/json")
            elif name in self.feature_names:  # time series: $start_time, $target_time_series, ... are
                parts.append(_Cells("feature", self.feature_names.index(name)))  # record fields (JSON values)
            else:
                raise UserError(f"{key} {template!r}: ${name} is only for time-series explanations")
        literal(template[position:].encode())
        return parts

    def encode(self, rows: Rows) -> EncodedRecords:
        """Serialise ``rows`` (one per record, columns in ``feature_names`` order)."""
        if isinstance(rows, CoalitionPictures):  # only for a server that draws them (ModelEndpoint.composes_pictures)
            from analyzer.predict.image_requests import CoalitionRecords

            return CoalitionRecords(rows)
        if not isinstance(rows, pd.DataFrame):
            rows = np.asarray(rows)
            if rows.ndim == 4 and rows.dtype == np.uint8:  # a batch of images (n, height, width, channels)
                from analyzer.predict.image_requests import ImageRecords

                return ImageRecords(rows, self.content_type)
            if self.content_type in (JPEG, JPG, PNG):
                raise UserError(f"predictor.content_type {self.content_type} carries images: the rows must be "
                                "an application/x-image dataset's images")
            if self.content_type == NPY and rows.ndim == 2 and rows.dtype.kind == "f":
                # Float rows (SHAP's synthetic rows) go as they are: no frame, no copy when row-major.
                self._check_width(rows.shape[1])
                return NpyRecords(rows.astype(np.float64, copy=False))
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        self._check_width(frame.shape[1])
        matrix = _numeric_matrix(frame)
        if self.content_type == NPY:
            # Booleans go as 1.0 / 0.0: the array a JSON or CSV decoder makes of true / false (the job
            # picks npy for a model folder's default handlers when every feature is numeric or boolean).
            if matrix is None and not _all_numeric(frame, booleans=True):
                raise UserError("content_type application/x-npy needs numeric features only")
            return NpyRecords(matrix if matrix is not None else frame.to_numpy(dtype=np.float64))
        cells = [part for part in self.parts if isinstance(part, _Cells)]
        if matrix is not None and len(cells) == 1 and cells[0].kind == "cells":
            slot = self.parts.index(cells[0])
            prefix, suffix = b"".join(self.parts[:slot]), b"".join(self.parts[slot + 1:])  # type: ignore[arg-type]
            data, offsets = _numeric_records(matrix, prefix, suffix, self.value_separator, self.separator)
        else:
            data, offsets = self._general_records(frame)
        return EncodedRecords(data, offsets, self.separator, self.head, self.tail, self.max_records)

    def _check_width(self, width: int) -> None:
        if width != len(self.feature_names):
            raise ValueError(f"rows have {width} columns, expected {len(self.feature_names)} features")

    def _general_records(self, frame: pd.DataFrame) -> tuple[bytes | memoryview, np.ndarray]:
        n = len(frame)
        tokens: dict[int, list[bytes]] = {}

        def column(j: int) -> list[bytes]:
            if j not in tokens:
                tokens[j] = _column_tokens(frame.iloc[:, j], self.style)
            return tokens[j]

        pieces: list[Any] = []
        for part in self.parts:
            if isinstance(part, bytes):
                pieces.append(repeat(part, n))
            elif part.kind == "feature":
                pieces.append(column(part.column))
            elif part.kind == "cells":
                columns = [column(j) for j in range(frame.shape[1])]
                pieces.append([self.value_separator.join(row) for row in zip(*columns, strict=True)])
            else:
                keys = [orjson.dumps(name) + self.key_separator for name in self.feature_names]
                columns = [[key + token for token in column(j)] for j, key in enumerate(keys)]
                pieces.append([self.value_separator.join(row) for row in zip(*columns, strict=True)])
        records = [b"".join(row) for row in zip(*pieces, strict=False)] if n else []  # repeat() is endless
        lengths = np.fromiter(map(len, records), dtype=np.int64, count=n) + len(self.separator)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return self.separator.join(records) + self.separator if n else b"", offsets


def serialize_records(rows: Rows, feature_names: Sequence[str], predictor: Predictor) -> bytes:
    """The request body carrying all ``rows`` (one row when the template uses ``$record``)."""
    records = RequestEncoder(predictor, feature_names).encode(rows)
    return bytes(records.body(0, len(records)))


def _template_text(template: str | dict[str, str] | None, key: str) -> str | None:
    if template is None or isinstance(template, str):
        return template
    raise UserError(f"predictor.{key} must be a string for tabular data")


def _all_numeric(frame: pd.DataFrame, *, booleans: bool = False) -> bool:
    kinds = "biuf" if booleans else "iuf"
    return all(isinstance(d, np.dtype) and d.kind in kinds for d in frame.dtypes)


def _numeric_matrix(frame: pd.DataFrame) -> np.ndarray | None:
    """The rows as one C-contiguous int64/float64 matrix, if that serialises every value exactly."""
    if frame.shape[1] == 0 or not _all_numeric(frame) or len(frame) == 0:
        return None
    integer = [j for j, dtype in enumerate(frame.dtypes) if dtype.kind in "iu"]
    all_integer = len(integer) == frame.shape[1]
    # All-integer rows stay int64 (uint64 may not fit); mixed with floats they go through float64.
    limit = 2**63 if all_integer else _EXACT_INT_LIMIT
    for j in integer:
        column = frame.iloc[:, j]
        if max(abs(int(column.max())), abs(int(column.min()))) >= limit:
            return None
    if all_integer:
        return np.ascontiguousarray(frame.to_numpy(dtype=np.int64))
    matrix = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))
    return matrix if np.isfinite(matrix).all() else None  # orjson would write NaN and inf as null


def _numeric_records(matrix: np.ndarray, prefix: bytes, suffix: bytes, value_separator: bytes,
                     separator: bytes) -> tuple[bytes | memoryview, np.ndarray]:
    """Records ``prefix + cells + suffix`` of a finite numeric matrix, without per-value Python work."""
    n, k = matrix.shape
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n == 0:
        return b"", offsets
    if not prefix and not suffix and value_separator == b"," and len(separator) == 1:
        # CSV: format all values as one flat list and turn every k-th comma into the line break, in
        # place: half the work of the general route below (no bytes.replace, no extra copy).
        flat = np.frombuffer(orjson.dumps(matrix.ravel(), option=orjson.OPT_SERIALIZE_NUMPY), dtype=np.uint8)
        text = flat.copy()  # writable: b"[1.5,2,3,4]"
        ends = _find_byte(flat, ord(","))[k - 1::k]
        text[ends] = text[-1] = ord(separator)
        offsets[1:-1], offsets[-1] = ends, len(text) - 1  # in the coordinates of text[1:]
        return memoryview(text)[1:], offsets
    text = orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY)  # b"[[1.5,2],[3,4]]"
    if value_separator != b",":
        text = text.replace(b",", value_separator)  # numbers contain no commas
    row_break = b"]" + value_separator + b"["
    # Numbers contain no "]": the first n of them close the rows (the last one closes the matrix).
    closes = _find_byte(text, ord("]"))[:n]
    starts = np.concatenate(([2], closes[:-1] + len(row_break)))
    np.cumsum(closes - starts + (len(prefix) + len(suffix) + len(separator)), out=offsets[1:])
    joined = text.replace(row_break, suffix + separator + prefix)
    data = b"".join((prefix, memoryview(joined)[2:-2], suffix, separator))  # one copy, no slice
    return data, offsets


def _find_byte(data: bytes | np.ndarray, byte: int, chunk: int = 1 << 20) -> np.ndarray:
    """Positions of ``byte`` in ``data``, scanned in cache-sized chunks (no data-sized temporaries)."""
    view = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    found = [np.flatnonzero(view[i:i + chunk] == byte) + i for i in range(0, len(view), chunk)]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _column_tokens(values: pd.Series, style: Style) -> list[bytes]:
    """One serialised cell per row (CSV: strings quoted; JSON: JSON values)."""
    if len(values) == 0:
        return []
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = _column_tokens(pd.Series(values.cat.categories.to_numpy(dtype=object)), style)
        lookup = np.array([*categories, _missing(style)], dtype=object)
        return lookup[values.cat.codes.to_numpy()].tolist()  # code -1 (missing) picks the last entry
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iuf":
        array = np.ascontiguousarray(values.to_numpy(dtype=np.float32 if dtype == np.float16 else None))
        tokens = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
        if dtype.kind == "f":
            for i in np.flatnonzero(~np.isfinite(array)):
                tokens[i] = _scalar_token(float(array[i]), style)
        return tokens
    objects = values.to_numpy(dtype=object, na_value=None)
    if pd.api.types.infer_dtype(objects, skipna=True) == "string":
        codes, uniques = pd.factorize(objects, use_na_sentinel=True)
        lookup = np.array([*(_scalar_token(v, style) for v in uniques), _missing(style)], dtype=object)
        return lookup[codes].tolist()
    return [_scalar_token(value, style) for value in objects]


def _missing(style: Style) -> bytes:
    return b"" if style == "csv" else b"null"


def _scalar_token(value: Any, style: Style) -> bytes:
    if value is None or value is pd.NA or value is pd.NaT:
        return _missing(style)
    if isinstance(value, bool | np.bool_):
        return (b"True" if value else b"False") if style == "csv" else (b"true" if value else b"false")
    if isinstance(value, int | np.integer):
        return str(int(value)).encode()
    if isinstance(value, float | np.floating):
        value = float(value)
        if value != value:
            return _missing(style)
        if value in (float("inf"), float("-inf")):
            # Python's json module spelling: what a Python model server's json.loads accepts.
            return (b"inf" if value > 0 else b"-inf") if style == "csv" else (
                b"Infinity" if value > 0 else b"-Infinity")
        return repr(value).encode()
    if style == "json":
        return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    return b'"' + str(value).replace('"', '""').encode() + b'"'
