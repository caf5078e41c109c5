"""Response parsing: model response bodies -> ``Predictions`` (spec 5.3).

* ``text/csv``: one line per record; ``label`` / ``probability`` are 0-based column indexes; without
  them the whole row is the output. Cells may hold stringified lists (Autopilot:
  ``"['cat', 'dog']","[0.1, 0.9]"``). A single line with one value per record (``0.6,0.3`` for two
  records) is accepted too.
* ``application/jsonlines``: one JSON document per line; locators are JMESPath per line.
* ``application/json``: the whole body is one document; locators are JMESPath over it and must give
  one element per record.
* ``application/x-npy`` (between Lucent and its own model server only; not a config value): an array
  with one row per record, read like CSV columns, so ``label`` / ``probability`` indexes mean the same.

Rectangular CSV is read by pyarrow's C parser and JSON by orjson, so parsing stays a small fraction
of a prediction run; anything unusual (ragged rows, list cells) falls back to exact Python parsing.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv

from analyzer.config.model import Locator, Predictor
from analyzer.errors import UserError
from analyzer.media import CSV, JSON_LINES, NPY, TABULAR_TYPES, media_type
from analyzer.predict.locator import JsonLocator
from analyzer.predict.predictions import Predictions, as_numbers

ACCEPT_TYPES = TABULAR_TYPES  # what a model may answer in (npy: only Lucent's own server, not a config value)
COLUMN_TYPES = (CSV, NPY)  # responses read as columns, located by 0-based index

_CSV_READ = pa_csv.ReadOptions(autogenerate_column_names=True, use_threads=False)
# Only empty cells are missing: "NA", "null" or "nan" may be real labels or scores.
_CSV_CONVERT = pa_csv.ConvertOptions(null_values=[""], quoted_strings_can_be_null=False)
_CSV_COLUMN_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
                     pa.types.is_null)


Extract = Callable[[Any, str], np.ndarray]  # (locator, or None for the whole output; config key) -> values
LABELS_HINT = "; if the model returns predicted labels, set predictor.label"  # ends LabelsNotScores' message


class LabelsNotScores(UserError):
    """The model answered text where its whole output is read as scores (no ``predictor.label`` or
    ``probability`` set): predicted labels, most likely. ``label`` is the first such value (a ``str``);
    explanations name it in their own words (``analyzer.explain.pdp.labels_not_scores``)."""

    def __init__(self, message: str, *, label: str):
        super().__init__(message)
        self.label = label


class ResponseParser:
    """Extracts ``Predictions`` from response bodies of one predictor (locators compiled once)."""

    def __init__(self, predictor: Predictor, accept_type: str | None = None):
        self.accept_type = media_type(accept_type or predictor.accept_type or predictor.content_type or CSV)
        if self.accept_type not in (*ACCEPT_TYPES, NPY):
            raise UserError(f"predictor.accept_type {self.accept_type!r} is not supported for tabular data; use "
                            f"one of {', '.join(ACCEPT_TYPES)}")
        self.label_headers = tuple(predictor.label_headers) if predictor.label_headers is not None else None
        compile_locator = _csv_index if self.accept_type in COLUMN_TYPES else partial(_json_locator,
                                                                             accept_type=self.accept_type)
        self._label = compile_locator(predictor.label, "predictor.label")
        self._probability = compile_locator(predictor.probability, "predictor.probability")

    def parse(self, body: bytes, n_records: int, first_row: int = 0) -> Predictions:
        """Predictions for the ``n_records`` records of one request; rows numbered from ``first_row``."""
        if self.accept_type == CSV:
            extract = self._csv(body, n_records, first_row)
        elif self.accept_type == NPY:
            extract = self._npy(body, n_records, first_row)
        elif self.accept_type == JSON_LINES:
            extract = self._json_lines(body, n_records, first_row)
        else:
            extract = self._json(body, n_records, first_row)
        return self._predictions(extract, n_records, first_row)

    def parse_array(self, array: np.ndarray, n_records: int, first_row: int = 0) -> Predictions:
        """Predictions from the array an ``application/x-npy`` answer holds, without the body: what an
        in-process model returns (``parse`` of that array's ``.npy`` body gives the same result)."""
        if self.accept_type != NPY:
            raise ValueError(f"parse_array reads application/x-npy answers, this parser reads {self.accept_type}")
        return self._predictions(self._array(array, n_records, first_row), n_records, first_row)

    def _predictions(self, extract: Extract, n_records: int, first_row: int) -> Predictions:
        label = probability = None
        if self._label is None and self._probability is None:  # the whole output is the score(s)
            output = extract(None, "output")
            try:
                probability = as_numbers(output, "score", first_row, hint=LABELS_HINT)
            except UserError as error:
                label = _first_non_number(output)
                if not isinstance(label, str | bytes):  # None (JSON null), ...: not a label
                    raise
                text = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
                raise LabelsNotScores(str(error), label=text) from None
        if self._label is not None:  # labels may be anything; scores must be numbers
            label = extract(self._label, "predictor.label")
        if self._probability is not None:
            probability = as_numbers(extract(self._probability, "predictor.probability"), "predictor.probability",
                                     first_row)
        return Predictions(n_records, label=label, probability=probability, label_headers=self.label_headers,
                           first_row=first_row)

    def _single_line(self, n_cells: int, n: int) -> bool:
        """Spec 5.3: one CSV line with one value per record ("0.6,0.3" answering two records)."""
        return n > 1 and n_cells == n and {self._label, self._probability} <= {None, 0}

    def _csv(self, body: bytes, n: int, first_row: int) -> Extract:
        columns = _read_csv_columns(body)
        if columns is None:
            return self._csv_rows(body, n, first_row)
        n_lines = len(columns[0]) if columns else 0
        if n_lines == 1 and self._single_line(len(columns), n):
            outputs = _values_field([_cell(column[0]) for column in columns], "output", first_row)
            return lambda index, key: outputs
        _check_count(n_lines, n, first_row, "line(s)")
        return self._columns(columns, n, first_row)

    def _npy(self, body: bytes, n: int, first_row: int) -> Extract:
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError) as error:
            raise UserError(f"the model's application/x-npy answer for rows from {first_row} is not an array: "
                            f"{error}") from error
        return self._array(array, n, first_row)

    def _array(self, array: np.ndarray, n: int, first_row: int) -> Extract:
        array = array.reshape(len(array), -1) if array.ndim != 2 else array
        _check_count(len(array), n, first_row, "row(s)")
        return self._columns([array[:, j] for j in range(array.shape[1])], n, first_row)

    def _columns(self, columns: list[np.ndarray], n: int, first_row: int) -> Extract:
        """Locate outputs in per-column arrays (CSV cells or an npy matrix) by 0-based index."""

        def extract(index: int | None, key: str) -> np.ndarray:
            if index is None:  # the whole row
                if len(columns) == 1:
                    return _column_field(columns[0], key, first_row)
                if all(c.dtype.kind in "iufb" for c in columns):
                    return np.column_stack(columns).astype(np.float64)
                matrix = np.empty((n, len(columns)), dtype=object)
                for j, c in enumerate(columns):
                    matrix[:, j] = c
                return matrix
            if index >= len(columns):
                raise UserError(f"{key} is column {index} but the model's output for row {first_row} has "
                                f"{len(columns)} column(s)")
            return _column_field(columns[index], key, first_row)

        return extract

    def _csv_rows(self, body: bytes, n: int, first_row: int) -> Extract:
        """Exact Python reading for what pyarrow refuses (ragged rows, dates, unusual cells)."""
        text = body.decode("utf-8", errors="replace")
        rows = [[_cell(cell) for cell in row] for row in csv.reader(io.StringIO(text)) if row]
        if len(rows) == 1 and self._single_line(len(rows[0]), n):
            outputs = _values_field(rows[0], "output", first_row)
            return lambda index, key: outputs
        _check_count(len(rows), n, first_row, "line(s)")

        def extract(index: int | None, key: str) -> np.ndarray:
            if index is None:
                return _values_field([row[0] if len(row) == 1 else row for row in rows], key, first_row)
            for i, row in enumerate(rows):
                if index >= len(row):
                    raise UserError(f"{key} is column {index} but the model's CSV output for row {first_row + i} "
                                    f"has {len(row)} column(s)")
            return _values_field([row[index] for row in rows], key, first_row)

        return extract

    def _json_lines(self, body: bytes, n: int, first_row: int) -> Extract:
        documents = _json_lines(body)
        _check_count(len(documents), n, first_row, "line(s)")

        def extract(locator: JsonLocator | None, key: str) -> np.ndarray:
            found = documents if locator is None else locator.search_each(documents)
            return _values_field(found, key, first_row)

        return extract

    def _json(self, body: bytes, n: int, first_row: int) -> Extract:
        try:
            document = _load_json(body)
        except orjson.JSONDecodeError as error:
            raise UserError(f"The model's application/json response for row {first_row} is not valid JSON "
                            f"({error}): {excerpt(body)}") from None

        def extract(locator: JsonLocator | None, key: str) -> np.ndarray:
            found = document if locator is None else locator.search(document)
            what = "the response" if locator is None else f"{key} {locator.expression!r}"
            if n == 1 and not (isinstance(found, list) and len(found) == 1):
                found = [found]  # a single record's output, which may itself be a list of scores
            elif not isinstance(found, list):
                raise UserError(f"{what} must give a list with one element per record from the model's JSON "
                                f"response (row {first_row}), got {excerpt(orjson.dumps(found))}")
            _check_count(len(found), n, first_row, f"element(s) from {what}")
            return _values_field(found, key, first_row)

        return extract


def parse_response(body: bytes, accept_type: str, predictor: Predictor, n_records: int,
                   first_row: int = 0) -> Predictions:
    """One-shot ``ResponseParser(predictor, accept_type).parse(body, n_records, first_row)``."""
    return ResponseParser(predictor, accept_type).parse(body, n_records, first_row)


def _csv_index(locator: Locator | None, key: str) -> int | None:
    if locator is None:
        return None
    if isinstance(locator, int) and not isinstance(locator, bool) and locator >= 0:
        return locator
    if isinstance(locator, str) and locator.isdigit():
        return int(locator)
    raise UserError(f"{key} must be a 0-based column index for text/csv model output, got {locator!r}")


def _json_locator(locator: Locator | None, key: str, *, accept_type: str) -> JsonLocator | None:
    if locator is None:
        return None
    if isinstance(locator, int) and not isinstance(locator, bool):
        # An index into each record's output list.
        return JsonLocator(f"[{locator}]" if accept_type == JSON_LINES else f"[*][{locator}]", key)
    return JsonLocator(locator, key)


def _check_count(got: int, expected: int, first_row: int, unit: str) -> None:
    if got != expected:
        raise UserError(
            f"The model must return exactly one prediction per record, in order: sent {expected} record(s) "
            f"(rows {first_row} to {first_row + expected - 1}), got {got} {unit}")


def _read_csv_columns(body: bytes) -> list[np.ndarray] | None:
    """The CSV body as numpy columns, or None when pyarrow cannot read it as a plain table."""
    if not body.strip():
        return []
    data = body if body.endswith(b"\n") else body + b"\n"
    try:
        table = pa_csv.read_csv(io.BytesIO(data), read_options=_CSV_READ, convert_options=_CSV_CONVERT)
    except pa.ArrowInvalid:
        return None  # ragged rows or cells the type inference rejected
    if not all(any(test(column.type) for test in _CSV_COLUMN_TYPES) for column in table.columns):
        return None  # dates and times: keep the text as the model wrote it
    return [column.to_numpy(zero_copy_only=False) for column in table.columns]


def _column_field(column: np.ndarray, key: str, first_row: int) -> np.ndarray:
    """A CSV column as values; text columns of stringified lists become ``(n, k)`` arrays."""
    first = column[0] if len(column) else None
    if isinstance(first, str) and first.lstrip().startswith("["):
        return _values_field([_cell(v) for v in column.tolist()], key, first_row)
    return column


def _cell(value: Any) -> Any:
    """A CSV cell as a Python value: numbers, stringified lists (Autopilot style), or text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            try:
                return ast.literal_eval(text)  # "['cat', 'dog']": a Python list literal
            except (ValueError, SyntaxError):
                return value
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return value


def _values_field(values: list[Any], key: str, first_row: int) -> np.ndarray:
    """Per-record values as an array: ``(n,)`` for one value per record, ``(n, k)`` for lists."""
    is_list = [isinstance(v, list | tuple) for v in values]
    if not any(is_list):
        array = np.asarray(values)
        if array.dtype.kind not in "iufb":
            array = np.empty(len(values), dtype=object)
            array[:] = values
            _reject_objects(values, key, first_row)
        return array
    if not all(is_list):
        row = is_list.index(not is_list[0])
        raise UserError(f"Model output {key} is a list for some records and a single value for others (rows "
                        f"{first_row} and {first_row + row})")
    width = len(values[0])
    for row, value in enumerate(values):
        if len(value) != width:
            raise UserError(f"Model output {key} has {width} value(s) for row {first_row} but {len(value)} for "
                            f"row {first_row + row}")
    array = np.asarray(values) if width else np.empty((len(values), 0))
    if array.ndim != 2 or array.dtype.kind not in "iufb":
        array = np.empty((len(values), width), dtype=object)
        for row, value in enumerate(values):
            array[row, :] = list(value)
        _reject_objects(values, key, first_row)
    return array


def _first_non_number(values: np.ndarray) -> Any:
    """The first value (in ``as_numbers``' order, so the one its error quotes) that is not a number."""
    for value in values.flat:
        try:
            float(value)
        except (TypeError, ValueError):
            return value
    return None


def _reject_objects(values: list[Any], key: str, first_row: int) -> None:
    """JSON objects are neither scores nor labels: name the locator to fix."""
    for row, value in enumerate(values):
        if isinstance(value, dict) or (isinstance(value, list | tuple) and any(isinstance(v, dict) for v in value)):
            what, hint = (("The model output", "; set predictor.probability or predictor.label to the JMESPath of "
                           "the score(s) or label") if key == "output" else (f"Model output {key}", ""))
            raise UserError(f"{what} for row {first_row + row} is a JSON object, not a value: "
                            f"{excerpt(orjson.dumps(value))}{hint}")


def _json_lines(body: bytes) -> list[Any]:
    text = body.strip()
    if not text:
        return []
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n")
    n_lines = text.count(b"\n") + 1
    try:  # one C call for the whole body; per-line parsing below only to report a bad line
        documents = orjson.loads(b"[" + text.replace(b"\n", b",") + b"]")
        if len(documents) == n_lines:
            return documents
    except orjson.JSONDecodeError:
        pass
    documents = []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            documents.append(_load_json(line))
        except orjson.JSONDecodeError as error:
            raise UserError(f"Line {number} of the model's application/jsonlines response is not valid JSON "
                            f"({error}): {excerpt(line)}") from None
    return documents


def _load_json(data: bytes) -> Any:
    """One JSON document. Python's ``json`` writes NaN and infinite numbers as ``NaN`` / ``Infinity``,
    which orjson rejects: they are read as the floats they stand for, so that the score checks name the
    records concerned instead of calling the whole answer invalid."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except ValueError:
            pass
        raise


def excerpt(data: bytes, limit: int = 200) -> str:
    """The start of a body for error messages, quoted."""
    text = data[:limit].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(data) > limit else ""))
