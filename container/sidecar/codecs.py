"""Request decoding and response encoding for the four tabular content types Clarify sends.

The default ``input_fn`` turns a request body into a 2-D numpy array (one row per record) and the
default ``output_fn`` turns a prediction back into one line / element per record. Both sit on the
hot path of every model request (a Clarify job can send 10^8 values), so the numeric cases go
through pyarrow's C++ CSV reader and writer; Python-level loops only run for string data.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from analyzer.media import CSV, JPEG, JPG, JSON, JSON_LINES, NPY, PNG, REQUEST_TYPES, media_type

SUPPORTED_TYPES = REQUEST_TYPES  # what the default input_fn / output_fn read and write
IMAGE_TYPES = (JPEG, JPG, PNG)  # image requests the default input_fn also reads (one image per request)


class CodecError(Exception):
    """A body that cannot be decoded or a prediction that cannot be encoded.

    ``status`` is the HTTP status the server answers with: 400 undecodable body, 415 unsupported
    Content-Type, 406 unsupported Accept, 500 a prediction the requested type cannot represent.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode(body: bytes | bytearray, content_type: str) -> np.ndarray:
    """Decode a request body into a 2-D array, one row per record, in request order.

    The array is float64 when every value is numeric (missing values become NaN), else an object
    array holding floats for numeric columns and str for the others.
    """
    mime = media_type(content_type)
    if mime in IMAGE_TYPES:
        return decode_image(body, mime)
    if mime not in SUPPORTED_TYPES:
        raise CodecError(f"unsupported Content-Type {content_type!r}: the default input_fn accepts "
                         f"{', '.join((*SUPPORTED_TYPES, *IMAGE_TYPES))}", status=415)
    if mime == NPY:
        return _decode_npy(body)
    if not body.strip():
        raise CodecError(f"empty {mime} request body")
    if mime == CSV:
        return decode_csv(body)
    if mime == JSON_LINES:
        return _decode_jsonlines(body)
    return _decode_json(body)


def decode_image(body: bytes | bytearray, mime: str) -> np.ndarray:
    """A JPEG / PNG request body -> ``(1, height, width, 3)`` uint8 RGB, the shape an npy batch of images has."""
    from PIL import Image, UnidentifiedImageError

    from analyzer.data.images import open_picture, to_rgb
    from analyzer.errors import DataError

    try:
        with open_picture(io.BytesIO(bytes(body)), f"the {mime} body") as picture:
            return to_rgb(picture, f"the {mime} body")[None]
    except DataError as exc:  # a header claiming more pixels than Lucent decodes
        raise CodecError(str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CodecError(f"malformed {mime} body: {exc}") from None


def decode_csv(body: bytes | bytearray) -> np.ndarray:
    """Header-less CSV -> 2-D array. Quoted strings (RFC 4180) and quoted newlines are allowed."""
    small = _small_numeric_csv(body)
    return small if small is not None else _decode_csv_with_arrow(body)


def _decode_csv_with_arrow(body: bytes | bytearray) -> np.ndarray:
    """:func:`decode_csv` for any body, through pyarrow's reader (numeric first, else per column)."""
    n_columns = _first_record_width(body)
    names = [f"c{i}" for i in range(n_columns)]
    try:
        return _read_numeric_csv(body, names)
    except pa.ArrowInvalid:
        pass  # some value is not a number (or the first record was misjudged): take the general path
    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise CodecError(f"malformed text/csv body: {exc}") from None
    return _mixed_table_to_array(table)


# A body this small is read in Python when every cell is a plain decimal number or empty: pyarrow's reader
# costs ~0.2 ms (more in a busy server, where its thread pool's hand-offs wait for a core) before the first
# value, and one record is what an endpoint sends per invocation. The numbers are the same: both parsers
# round correctly, and the pattern only admits what both read alike (anything else takes pyarrow's path).
_SMALL_CSV_BYTES = 4096
_PLAIN_NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _small_numeric_csv(body: bytes | bytearray) -> np.ndarray | None:
    """A small body of plain numbers (empty cells: NaN; empty lines skipped, as pyarrow does) as float64
    rows of equal width, or None for pyarrow's reader to decide (quotes, spaces, words, ragged rows...)."""
    if len(body) > _SMALL_CSV_BYTES:
        return None
    data = bytes(body)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:
            return None
    if data.startswith(b"\n"):  # pyarrow's path takes the width from the first line, and refuses this body
        return None
    rows: list[list[float]] = []
    width = -1
    match = _PLAIN_NUMBER.fullmatch
    for line in data.split(b"\n"):
        if not line:
            continue
        cells = line.split(b",")
        if width < 0:
            width = len(cells)
        elif len(cells) != width:
            return None
        row = []
        for cell in cells:
            if not cell:
                row.append(math.nan)
            elif match(cell):
                row.append(float(cell))
            else:
                return None
        rows.append(row)
    if not rows:
        return None
    return np.array(rows, dtype=np.float64)


def _first_record_width(body: bytes | bytearray) -> int:
    # The csv module understands quoting; 64 KiB covers any realistic first record, and a wrong
    # guess only makes the strict numeric read fail, after which the general read reports it.
    head = body[:65536].decode("utf-8", errors="replace")
    try:
        first = next(csv.reader(io.StringIO(head)), [])
    except csv.Error:
        return head.split("\n", 1)[0].count(",") + 1
    return max(len(first), 1)


def _read_numeric_csv(body: bytes | bytearray, names: list[str]) -> np.ndarray:
    """Parse a body whose every cell is a number or empty; raises ``ArrowInvalid`` otherwise."""
    table = pacsv.read_csv(
        io.BytesIO(body),
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float64())),
    )
    if table.num_columns == 1:
        return table.column(0).to_numpy().reshape(-1, 1)
    # column_stack writes straight into one C-ordered block, which is what estimators want.
    return np.column_stack([column.to_numpy() for column in table.columns])


def _mixed_table_to_array(table: pa.Table) -> np.ndarray:
    """All-string table -> float64 array if every column parses as numbers, else object array."""
    columns: list[np.ndarray] = []
    all_numeric = True
    for column in table.columns:
        blanks_as_null = pc.if_else(pc.equal(column, ""), None, column)
        try:
            columns.append(blanks_as_null.cast(pa.float64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns.append(np.asarray(column.to_pylist(), dtype=object))
            all_numeric = False
    if all_numeric:
        return np.column_stack(columns)
    result = np.empty((table.num_rows, len(columns)), dtype=object)
    for index, values in enumerate(columns):
        result[:, index] = values
    return result


def _decode_npy(body: bytes | bytearray) -> np.ndarray:
    try:
        array = _npy_in_place(body) if isinstance(body, bytearray) else None
        if array is None:
            # allow_pickle=False: a request body must never be able to run code in the server.
            array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # np.load raises ValueError/OSError/EOFError/UnpicklingError variants
        raise CodecError(f"malformed application/x-npy body: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise CodecError("application/x-npy body must hold one array (.npz archives are not supported)")
    return array.reshape(1, -1) if array.ndim <= 1 else array


_NPY_HEAD_BYTES = 16_384  # magic + header; np.load refuses headers over 10,000 bytes


def _npy_in_place(body: bytearray) -> np.ndarray | None:
    """The array of an npy body as a view of the body's own memory, or None to let np.load read it.

    The server receives a body into a bytearray, so the view is writable, like np.load's copy, and
    the rows are not copied a second time (tens of MB per SHAP request). Only plain arrays with
    every value present qualify; np.load reads (or refuses, with its own message) anything else.
    """
    try:
        shape, fortran_order, dtype, offset = npy_header(body)
    except ValueError:  # not an npy body (or a version np.load may still read): np.load says why
        return None
    count = math.prod(shape)
    if dtype.hasobject or count == 0 or len(body) - offset < count * dtype.itemsize:
        return None
    values = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran_order else "C")


def npy_header(body: bytes | bytearray | memoryview, start: int = 0) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of the ``.npy`` array at ``body[start:]``, read
    by numpy's own header parser (versions 1.0 and 2.0, headers up to numpy's 10,000-byte limit);
    ValueError says what is wrong."""
    head = io.BytesIO(bytes(memoryview(body)[start:start + _NPY_HEAD_BYTES]))
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"npy format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read_header(head)
    except ValueError:
        raise
    except Exception as exc:  # a mangled header also raises tokenize's and ast's errors, and TypeError
        raise ValueError(f"unreadable npy header: {type(exc).__name__}: {exc}") from None
    if any(size < 0 for size in shape):  # numpy's parser lets them through; frombuffer would misread them
        raise ValueError(f"negative dimension in shape {shape}")
    return shape, fortran_order, dtype, start + head.tell()


def _decode_jsonlines(body: bytes | bytearray) -> np.ndarray:
    fast = _numeric_rows_fast(body.translate(None, b" \t\r").strip(b"\n"), _JSONLINES_LAYOUTS)
    if fast is not None:
        return fast
    records = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise CodecError(f"malformed application/jsonlines body, line {number}: {exc}") from None
    return records_to_array(records, source="application/jsonlines line")


def _decode_json(body: bytes | bytearray) -> np.ndarray:
    fast = _numeric_rows_fast(body.translate(None, b" \t\r\n"), _JSON_LAYOUTS)  # JSON ignores whitespace
    if fast is not None:
        return fast
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise CodecError(f"malformed application/json body: {exc}") from None
    if isinstance(document, dict):
        # Without "instances" the object is one record: {"features": [...]} or {"A": 1, "B": 2}.
        records = document.get("instances", [document])
    elif isinstance(document, list) and document and all(_is_scalar(v) for v in document):
        records = [document]  # a flat array is one record ($record with $features)
    else:
        records = document
    if not isinstance(records, list):
        raise CodecError("application/json body must be an array of records or {\"instances\": [...]}")
    return records_to_array(records, source="application/json record")


# (prefix, separator, suffix) of bodies whose records are bare arrays of numbers, whitespace removed.
_JSONLINES_LAYOUTS = ((b"[", b"]\n[", b"]"),
                      (b'{"features":[', b']}\n{"features":[', b"]}"))
_JSON_LAYOUTS = ((b"[[", b"],[", b"]]"),
                 (b'{"instances":[[', b"],[", b"]]}"),
                 (b'[{"features":[', b']},{"features":[', b"]}]"),
                 (b'{"instances":[{"features":[', b']},{"features":[', b"]}]}"))


def _numeric_rows_fast(compact: bytes | bytearray,
                       layouts: tuple[tuple[bytes, bytes, bytes], ...]) -> np.ndarray | None:
    """Read records of plain numbers written as JSON arrays through the CSV reader, or return None.

    ``[1,2]\\n[3,4]`` minus its brackets is CSV, and pyarrow reads that ~20x faster than json.loads
    builds Python lists. Only the layouts listed qualify, checked exactly (no quote, brace or
    bracket may remain between the records); anything else returns None and takes the general
    path, which gives the same numbers, slower.
    """
    for prefix, separator, suffix in layouts:
        if len(compact) < len(prefix) + len(suffix) or not (compact.startswith(prefix) and compact.endswith(suffix)):
            continue
        inner = compact[len(prefix):len(compact) - len(suffix)].replace(separator, b"\n")
        # A mark left means nested values, strings, other keys or blank lines: not plain records.
        if not inner or any(mark in inner for mark in (b"[", b"]", b"{", b"}", b'"')):
            return None
        width = inner.split(b"\n", 1)[0].count(b",") + 1
        try:
            return _read_numeric_csv(inner, [f"c{i}" for i in range(width)])
        except pa.ArrowInvalid:
            return None  # true/false, ragged rows, ...: the general path gives the precise error
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def records_to_array(records: list[Any], source: str = "record") -> np.ndarray:
    """JSON records -> 2-D array. A record is an array of values, ``{"features": [...]}``, or an
    object of named values (keys taken in the first record's order, as Clarify's ``$features_kvp``
    writes them)."""
    keys: list[str] | None = None
    rows: list[list[Any]] = []
    for index, record in enumerate(records):
        if isinstance(record, dict) and "features" in record:
            record = record["features"]
        if isinstance(record, dict):
            if keys is None:
                keys = list(record)
            if set(record) != set(keys):
                raise CodecError(f"{source} {index + 1} has keys {sorted(record)}, expected {keys}")
            record = [record[key] for key in keys]
        if not isinstance(record, list):
            raise CodecError(f"{source} {index + 1} must be an array of feature values, "
                             f"an object with a \"features\" array, or an object of named values")
        rows.append(record)
    if not rows:
        raise CodecError(f"no records in the request ({source}s expected)")
    width = len(rows[0])
    for index, row in enumerate(rows):
        if len(row) != width:
            raise CodecError(f"{source} {index + 1} has {len(row)} values, expected {width} like the first")
    try:
        return np.array(rows, dtype=np.float64)  # numbers, numeric strings and null (-> NaN)
    except (ValueError, TypeError):
        pass
    result = np.empty((len(rows), width), dtype=object)
    for index, row in enumerate(rows):
        result[index, :] = row
    return result


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def as_prediction_array(prediction: Any) -> np.ndarray:
    """Whatever a predict function returned -> ndarray with one leading entry per record."""
    if hasattr(prediction, "to_numpy"):  # pandas DataFrame / Series, pyarrow arrays
        prediction = prediction.to_numpy()
    elif hasattr(prediction, "toarray"):  # scipy sparse
        prediction = prediction.toarray()
    if isinstance(prediction, np.ndarray):
        return prediction.reshape(1) if prediction.ndim == 0 else prediction
    try:
        array = np.asarray(prediction)
    except ValueError:  # ragged nested lists: keep one Python object per record
        array = np.empty(len(prediction), dtype=object)
        array[:] = list(prediction)
    return array.reshape(1) if array.ndim == 0 else array


def encode(prediction: Any, accept: str) -> bytes:
    """Encode a prediction as ``accept`` (one CSV line / JSON line / JSON element per record)."""
    mime = media_type(accept)
    array = as_prediction_array(prediction)
    if mime == CSV:
        return _encode_csv(array)
    if mime == JSON_LINES:
        return _encode_jsonlines(array)
    if mime == JSON:
        return _encode_json(array)
    if mime == NPY:
        buffer = io.BytesIO()
        try:
            np.save(buffer, array, allow_pickle=False)
        except ValueError:
            raise CodecError("the prediction holds Python objects, which application/x-npy cannot carry; "
                             "ask for application/json instead", status=500) from None
        return buffer.getvalue()
    raise CodecError(f"unsupported Accept {accept!r}: the default output_fn produces "
                     f"{', '.join(SUPPORTED_TYPES)}", status=406)


def _numeric_csv_text(array: np.ndarray) -> str | None:
    """Shortest round-trip text of a 1-D/2-D int or float array as CSV lines, or None if the
    array is not plain numbers. pyarrow's writer is ~10x faster than np.savetxt or ``repr``."""
    if array.dtype.kind not in "iuf" or array.ndim > 2:
        return None
    if array.dtype == np.float16:  # the only numeric dtype pyarrow's CSV writer lacks
        array = array.astype(np.float32)
    matrix = array.reshape(-1, 1) if array.ndim == 1 else array
    if matrix.shape[0] == 0:
        return ""
    table = pa.table({f"c{i}": np.ascontiguousarray(matrix[:, i]) for i in range(matrix.shape[1])})
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, write_options=pacsv.WriteOptions(include_header=False))
    return buffer.getvalue().decode("ascii")


def _encode_csv(array: np.ndarray) -> bytes:
    text = _numeric_csv_text(array)
    if text is not None:
        return text.encode("ascii")
    if array.ndim > 2:
        raise CodecError(f"cannot write a {array.ndim}-D prediction as text/csv; ask for application/json "
                         "or application/x-npy", status=500)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # A cell that is itself a list is written as its text, the "stringified list" Clarify parses.
    writer.writerows(array.tolist() if array.ndim == 2 else ([value] for value in array.tolist()))
    return buffer.getvalue().encode("utf-8")


def _all_finite(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu" or bool(np.isfinite(array).all())


def _encode_json(array: np.ndarray) -> bytes:
    text = _numeric_csv_text(array)
    if text is not None and _all_finite(array):
        lines = text.rstrip("\n")
        if not lines:
            return b"[]"
        if array.ndim == 1:
            return f"[{lines.replace(chr(10), ',')}]".encode("ascii")
        return f"[[{lines.replace(chr(10), '],[')}]]".encode("ascii")
    # NaN/Infinity are written as Python's json does (NaN, Infinity), which Python readers accept.
    return json.dumps(array.tolist(), default=_json_default).encode("utf-8")


def _encode_jsonlines(array: np.ndarray) -> bytes:
    text = _numeric_csv_text(array)
    if text is not None and _all_finite(array):
        if array.ndim == 1 or not text:
            return text.encode("ascii")
        return f"[{text.rstrip(chr(10)).replace(chr(10), ']' + chr(10) + '[')}]\n".encode("ascii")
    return "".join(json.dumps(row, default=_json_default) + "\n" for row in array.tolist()).encode("utf-8")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays nested in object predictions
        return value.tolist()
    raise TypeError(f"prediction value of type {type(value).__name__} is not JSON serialisable")
