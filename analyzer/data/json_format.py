"""JSON Lines and JSON datasets: JMESPath expressions turn records into a table.

* ``application/jsonlines``: every non-blank line of every file is one record. ``features`` is applied
  to each line and must give a flat list (one value per feature); ``label`` and ``predicted_label``
  are applied to each line and give one value (null or no match = missing value).
* ``application/json``: every file is one document. ``features`` is applied to the document and must
  give a list of lists (row i = record i); ``label`` / ``predicted_label`` must give a list with one
  value per record.

The table's headers are the feature names, then the label name, then the predicted label name (spec
2.1). With ``headers`` in the config: either exactly those, or only the feature names (then the label
and predicted label columns are named ``label`` and ``predicted_label``), or the feature names and the
label name with both ``label`` and ``predicted_label`` given (what the SageMaker SDK writes: the predicted
label column is then named ``predicted_label``). Without: ``column_0``,
``column_1``, ... for the features, and ``label`` / ``predicted_label``. Facets and the group variable
are header names or indices in that table.

Values keep their JSON types, and each column gets the dtype pandas infers from them
(``pd.DataFrame(records)``): int64, float64 (ints with a null or a float), bool, or object.

These formats are read whole, not streamed (only CSV and Parquet are): JSON datasets for Clarify are
request-sized, and a JSON document cannot be parsed in pieces anyway.

JSON Lines speed: lines are taken ``_CHUNK_LINES`` at a time, each step one pass over the chunk (parse with
the json module's scanner, look the features and role values up, check types and lengths), and a plain key
or chain of keys (``features``, ``label``, ``a.b``) is looked up directly rather than through jmespath's
interpreter (``records_search``). A chunk with anything wrong in it is read again line by line, the
reference code, which raises the error of its first bad line. Measured with bench/jsonlines.py: about as
fast as a plain ``json.loads`` loop over the file, where the line by line reader took 2 to 3 times as long.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import numpy as np
import pandas as pd

from analyzer.config.model import AnalysisConfig
from analyzer.data.column import Column
from analyzer.data.files import no_data_rows, read_bytes
from analyzer.data.table import TableData
from analyzer.errors import DataError, jmespath_error_text
from analyzer.progress import Progress

_HEADERS_MISMATCH = "Headers in config do not match with the number of columns in the dataset."
NO_FEATURES = "Data must contain features."  # Clarify's message that starts every error about `features`
_ROLE_NAMES = {"label": "label", "predicted_label": "predicted label"}
# Clarify's message that starts an error about a role's JMESPath (the label or predicted label)
ROLE_PREFIX = {"label": "Headers must contain label.", "predicted_label": "Headers must contain predicted label."}
_SHOWN_RECORDS = 5  # records named in a warning about missing values
# JSON Lines lines parsed and checked together (``JsonTable._add_lines``). Small: the parsed records of a chunk
# live until it is done, and records that outlive two young-generation garbage collections make Python run
# full collections (over every row read so far); 250 lines read 200,000 lines in 2/3 of the time 10,000 did.
_CHUNK_LINES = 250
_SCAN = json.JSONDecoder().scan_once  # what json.loads runs on a text without surrounding whitespace

logger = logging.getLogger(__name__)


class JsonTable:
    """A JSON Lines or JSON dataset (one or many files), parsed whole into a table with ``headers``."""

    def __init__(self, files: Sequence[Path], source: str, config: AnalysisConfig, *, json_lines: bool):
        self.files = list(files)
        self.source = source
        self._json_lines = json_lines
        if not config.features:
            raise DataError(
                f"Feature names not found. `features` (a JMESPath expression selecting each record's "
                f"feature values) is required for {config.dataset_type} datasets."
            )
        self._features = compile_jmespath("features", config.features)
        self._roles = {role: compile_jmespath(role, locator) for role in _ROLE_NAMES
                       if (locator := getattr(config, role)) is not None}
        self._search_features = records_search(self._features)
        self._search_roles = {role: records_search(expression) for role, expression in self._roles.items()}
        self._rows: list[Sequence[Any]] = []  # lists or tuples: pandas reads both alike
        self._role_values: dict[str, list[Any]] = {role: [] for role in self._roles}
        self._origins = _Origins()  # "file line n" or "file record i" of each row, for error messages
        for path in self.files:
            if json_lines:
                self._read_lines(path)
            else:
                self._read_document(path)
        if not self._rows:
            raise no_data_rows(source, self.files)
        self._check_roles_found()
        feature_names, self.role_columns = column_names(len(self._rows[0]), list(self._roles), config.headers,
                                                        self.source, self._origins[0])
        self.headers = feature_names + list(self.role_columns.values())
        self._frame = pd.DataFrame(self._rows, columns=feature_names)
        self._check_flat(feature_names)
        for role, name in self.role_columns.items():
            self._frame[name] = pd.Series(self._role_values[role])
        del self._rows, self._role_values

    @property
    def n_files(self) -> int:
        return len(self.files)

    def read(self, columns: Sequence[str], values: Sequence[str] = (), progress: Progress | None = None) -> TableData:
        """Read ``columns`` as ``Column`` objects and ``values`` as Series (the files were read when the
        table was opened: no progress to count here)."""
        return TableData(
            len(self._frame),
            columns={name: Column.from_series(self._frame[name], name=name) for name in columns},
            values={name: self._frame[name].rename(name) for name in values},
        )

    def _read_lines(self, path: Path) -> None:
        """Add the records of a JSON Lines file, one chunk of lines at a time."""
        lines = _text(path).split("\n")
        for start in range(0, len(lines), _CHUNK_LINES):
            chunk = lines[start:start + _CHUNK_LINES]
            if not self._add_lines(path, chunk, start + 1):
                self._add_lines_one_by_one(path, chunk, start + 1)

    def _add_lines(self, path: Path, chunk: list[str], first_line: int) -> bool:
        """Add the records of ``chunk`` (lines of ``path`` from ``first_line`` on) as whole lists: each step a
        pass over the chunk. False, with nothing added, when a line is not a valid record: then
        ``_add_lines_one_by_one`` reads the chunk again and raises the error of the first bad line."""
        lines = [line for line in chunk if line.strip()]
        if not lines:
            return True
        if len(lines) == len(chunk):
            numbers: Sequence[int] = range(first_line, first_line + len(chunk))
        else:
            numbers = [n for n, line in enumerate(chunk, start=first_line) if line.strip()]
        try:
            try:
                records, ends = zip(*[_SCAN(line, 0) for line in lines], strict=True)
            except StopIteration:  # a line that does not start with a JSON value (spaces first, or not JSON)
                ends = ()
            if ends != tuple(map(len, lines)):  # or one that does not end with it ("\r" of CRLF files, ...)
                records = [json.loads(line) for line in lines]
        except (ValueError, RecursionError):  # not JSON (JSONDecodeError), or beyond Python's parser limits
            return False
        try:
            rows = self._search_features(records)
            role_values = {role: search(records) for role, search in self._search_roles.items()}
        except Exception:  # a JMESPath function failing on a record: raised (after any earlier line's error) below
            return False
        if set(map(type, rows)) != {list}:
            return False
        n_features = len(self._rows[0]) if self._rows else len(rows[0])
        if set(map(len, rows)) != {n_features}:
            return False
        for values in role_values.values():
            if any(issubclass(kind, list | dict) for kind in set(map(type, values))):
                return False
        self._rows.extend(map(tuple, rows))  # a tuple of numbers and strings is left out of garbage collections
        for role, values in role_values.items():
            self._role_values[role].extend(values)
        self._origins.add(f"{path} line ", numbers)
        return True

    def _add_lines_one_by_one(self, path: Path, chunk: list[str], first_line: int) -> None:
        """Add the records of ``chunk`` one line at a time, raising the error of its first bad line."""
        for line_number, line in enumerate(chunk, start=first_line):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = parse_json(line, where)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno}). Each line of a "
                                "JSON Lines file must hold one JSON record.") from None
            self._add_row(self._features.search(record), f"{path} line ", line_number)
            for role, expression in self._roles.items():
                value = expression.search(record)
                if isinstance(value, list | dict):
                    raise DataError(f"{ROLE_PREFIX[role]} The `{role}` JMESPath {expression.expression!r} "
                                    f"gives a {type(value).__name__} on {where}; it must select one value.")
                self._role_values[role].append(value)

    def _read_document(self, path: Path) -> None:
        text = _text(path)
        if not text.strip():
            return
        try:
            document = parse_json(text, str(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}). "
                            "An application/json dataset file must be one JSON document.") from None
        rows = self._features.search(document)
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise DataError(
                f"{NO_FEATURES} The `features` JMESPath {self._features.expression!r} gives "
                f"{describe_value(rows)} on {path}; for application/json it must select a list of records, "
                "each a list of feature values."
            )
        n_features = len(self._rows[0]) if self._rows else len(rows[0]) if rows else 0
        if set(map(len, rows)) <= {n_features}:  # the common case at once
            self._rows.extend(rows)
            self._origins.add(f"{path} record ", range(len(rows)))
        else:
            for i, row in enumerate(rows):
                self._add_row(row, f"{path} record ", i)
        for role, expression in self._roles.items():
            values = expression.search(document)
            if isinstance(values, list) and len(values) != len(rows):
                raise DataError(
                    f"The `{role}` JMESPath {expression.expression!r} gives a list of {len(values)} values on "
                    f"{path} but `features` gives {len(rows)} records there; it must select a list with one "
                    f"{_ROLE_NAMES[role]} per record ({abs(len(values) - len(rows))} value(s) "
                    f"{'short' if len(values) < len(rows) else 'too many'}).")
            if not isinstance(values, list):
                raise DataError(
                    f"{ROLE_PREFIX[role]} The `{role}` JMESPath {expression.expression!r} gives "
                    f"{describe_value(values)} on {path}; it must select a list with one value per record "
                    f"({len(rows)} records)."
                )
            self._role_values[role].extend(values)

    def _add_row(self, row: Any, prefix: str, number: int) -> None:
        """Add one record's feature values (its origin: ``prefix`` and ``number``, "<file> line 3")."""
        where = f"{prefix}{number}"
        if not isinstance(row, list):
            raise DataError(
                f"{NO_FEATURES} The `features` JMESPath {self._features.expression!r} gives {describe_value(row)} "
                f"on {where}; it must select a list of feature values."
            )
        if self._rows and len(row) != len(self._rows[0]):
            raise DataError(
                f"{NO_FEATURES} {where} has {len(row)} feature values but {self._origins[0]} has "
                f"{len(self._rows[0])}. Every record needs the same features."
            )
        self._rows.append(row)
        self._origins.add(prefix, (number,))

    def _check_roles_found(self) -> None:
        for role, values in self._role_values.items():
            if values and all(value is None for value in values):
                raise DataError(
                    f"{ROLE_PREFIX[role]} The `{role}` JMESPath {self._roles[role].expression!r} matches "
                    f"nothing in any record (first record: {self._origins[0]})."
                )
            missing = [i for i, value in enumerate(values) if value is None]
            if missing:  # a missing value, as an empty CSV cell is; it also changes the column's dtype (int -> float)
                shown = ", ".join(self._origins[i] for i in missing[:_SHOWN_RECORDS])
                logger.warning(
                    "%d record(s) of %s have no %s: the `%s` JMESPath %r matches nothing (or null) on %s%s. Their %s "
                    "is a missing value, which also makes the column's values floats or mixed (a typing error in "
                    "the bias stages may follow); give every record its %s.",
                    len(missing), self.source, _ROLE_NAMES[role], role, self._roles[role].expression, shown,
                    ", ..." if len(missing) > _SHOWN_RECORDS else "", _ROLE_NAMES[role], _ROLE_NAMES[role])

    def _check_flat(self, feature_names: list[str]) -> None:
        for name in feature_names:
            column = self._frame[name]
            if column.dtype != object:
                continue
            nested = np.flatnonzero(column.map(lambda v: isinstance(v, list | dict)).to_numpy(dtype=bool))
            if len(nested):
                raise DataError(
                    f"{NO_FEATURES} Feature {name!r} is a {type(column.iloc[nested[0]]).__name__} on "
                    f"{self._origins[nested[0]]}; `features` must select a flat list of values."
                )


def column_names(n_features: int, roles: Sequence[str], headers: Sequence[str] | None, source: str,
                 first_origin: str) -> tuple[list[str], dict[str, str]]:
    """Feature names, and the column name of each role present (label, predicted_label), for records
    with ``n_features`` feature values (``first_origin``: where the first record is, for the error)."""
    roles = list(roles)
    if headers is None:
        names = [f"column_{i}" for i in range(n_features)] + roles
    elif len(headers) == n_features:
        names = [str(h) for h in headers] + roles
    elif len(headers) == n_features + len(roles):
        names = [str(h) for h in headers]
    elif len(roles) == 2 and len(headers) == n_features + 1:  # features + label (the SDK's headers)
        names = [str(h) for h in headers] + ["predicted_label"]
    else:
        counts = [str(n_features + i) for i in range(len(roles) + 1)]
        expected = f"{', '.join(counts[:-1])} or {counts[-1]}" if roles else counts[0]
        raise DataError(
            f"{_HEADERS_MISMATCH} `headers` has {len(headers)} names but the records of {source} "
            f"have {n_features} feature values (first record: {first_origin}); "
            f"expected {expected} names: the feature names, then the label name, then the predicted "
            "label name (the names not given are `label` and `predicted_label`)."
        )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"Column names {duplicated} are used twice in the table of {source} "
                        f"(headers: {names}); give `headers` distinct names.")
    return names[:n_features], dict(zip(roles, names[n_features:], strict=True))


class _Origins:
    """Where each row of the table comes from, "<file> line <n>" or "<file> record <i>", kept as runs of
    rows (one prefix and the numbers of its rows): no string per row."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # first row of each run
        self._runs: list[tuple[str, Sequence[int]]] = []
        self._n_rows = 0

    def add(self, prefix: str, numbers: Sequence[int]) -> None:
        if numbers:
            self._starts.append(self._n_rows)
            self._runs.append((prefix, numbers))
            self._n_rows += len(numbers)

    def __len__(self) -> int:
        return self._n_rows

    def __getitem__(self, row: int) -> str:
        if not 0 <= row < self._n_rows:
            raise IndexError(row)
        run = bisect.bisect_right(self._starts, row) - 1
        prefix, numbers = self._runs[run]
        return f"{prefix}{numbers[row - self._starts[run]]}"


def key_path(expression: jmespath.parser.ParsedResult) -> tuple[str, ...] | None:
    """The keys of ``expression`` when it is a plain key (``label``, ``"a.b"``) or a chain of them
    (``a.b.c``): what ``records_search`` looks up directly; None for any other expression."""
    node = expression.parsed
    nodes = node.get("children") if node.get("type") == "subexpression" else [node]
    if not nodes or not all(isinstance(n, dict) and n.get("type") == "field" and not n.get("children")
                            and isinstance(n.get("value"), str) for n in nodes):
        return None
    return tuple(n["value"] for n in nodes)


def records_search(expression: jmespath.parser.ParsedResult) -> Callable[[Sequence[Any]], list[Any]]:
    """A function giving ``[expression.search(record) for record in records]`` for a list of JSON values.

    A plain key or a chain of keys (``key_path``) is looked up directly, one list at a time, as JMESPath
    does it: ``value.get(key)`` on an object, None (no match) on anything else, and on through the chain
    (None has no keys). Any other expression goes through jmespath itself."""
    keys = key_path(expression)
    if keys is None:
        return lambda records: [expression.search(record) for record in records]

    def search(records: Sequence[Any]) -> list[Any]:
        values: Sequence[Any] = records
        for key in keys:
            try:
                values = [value.get(key) for value in values]
            except AttributeError:  # a value that is not an object (a JSON object is a dict, none else has .get)
                values = [value.get(key) if type(value) is dict else None for value in values]
        return values

    return search


def compile_jmespath(key: str, expression: Any) -> jmespath.parser.ParsedResult:
    """The compiled JMESPath ``expression`` of the config key ``key``; a ``DataError`` if it is not one."""
    if not isinstance(expression, str):
        raise DataError(f"`{key}` must be a JMESPath expression (a string) for JSON datasets, got {expression!r}.")
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise DataError(f"`{key}` {expression!r} is not a valid JMESPath expression "
                        f"({jmespath_error_text(exc)}).") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads``, with the limits of Python's parser (nesting depth, digits in an integer) reported
    as a ``DataError`` naming ``where``; syntax errors are left to the caller, which knows the format."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise DataError(f"{where}: arrays or objects nested too deeply to read. Flatten the records.") from None
    except ValueError as exc:  # int_max_str_digits: "Exceeds the limit (4300 digits) for integer string ..."
        raise DataError(f"{where}: a number has too many digits to read ({exc}). Store it as a string.") from None


def _text(path: Path) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path} line {line} is not valid UTF-8 text. Save the file as UTF-8.") from None


def describe_value(value: Any) -> str:
    """What a JMESPath search gave, for an error message: its type and (the start of) its JSON text."""
    if value is None:
        return "nothing (no match)"
    text = json.dumps(value, default=str)
    return f"a {type(value).__name__} ({text[:80] + '...' if len(text) > 80 else text})"
