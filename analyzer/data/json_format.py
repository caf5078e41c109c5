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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
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
_NO_FEATURES = "Data must contain features."
_ROLE_NAMES = {"label": "label", "predicted_label": "predicted label"}
_ROLE_PREFIX = {"label": "Headers must contain label.", "predicted_label": "Headers must contain predicted label."}
_SHOWN_RECORDS = 5  # records named in a warning about missing values

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
        self._features = _compile("features", config.features)
        self._roles = {role: _compile(role, locator) for role in _ROLE_NAMES
                       if (locator := getattr(config, role)) is not None}
        self._rows: list[list[Any]] = []
        self._role_values: dict[str, list[Any]] = {role: [] for role in self._roles}
        self._origins: list[str] = []  # "file line n" or "file record i", for error messages
        for path in self.files:
            if json_lines:
                self._read_lines(path)
            else:
                self._read_document(path)
        if not self._rows:
            raise no_data_rows(source, self.files)
        self._check_roles_found()
        feature_names, self.role_columns = self._names(config.headers)
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
        for line_number, line in enumerate(_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = _loads(line, where)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno}). Each line of a "
                                "JSON Lines file must hold one JSON record.") from None
            self._add_row(self._features.search(record), where)
            for role, expression in self._roles.items():
                value = expression.search(record)
                if isinstance(value, list | dict):
                    raise DataError(f"{_ROLE_PREFIX[role]} The `{role}` JMESPath {expression.expression!r} "
                                    f"gives a {type(value).__name__} on {where}; it must select one value.")
                self._role_values[role].append(value)

    def _read_document(self, path: Path) -> None:
        text = _text(path)
        if not text.strip():
            return
        try:
            document = _loads(text, str(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}). "
                            "An application/json dataset file must be one JSON document.") from None
        rows = self._features.search(document)
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise DataError(
                f"{_NO_FEATURES} The `features` JMESPath {self._features.expression!r} gives "
                f"{_describe(rows)} on {path}; for application/json it must select a list of records, "
                "each a list of feature values."
            )
        for i, row in enumerate(rows):
            self._add_row(row, f"{path} record {i}")
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
                    f"{_ROLE_PREFIX[role]} The `{role}` JMESPath {expression.expression!r} gives "
                    f"{_describe(values)} on {path}; it must select a list with one value per record "
                    f"({len(rows)} records)."
                )
            self._role_values[role].extend(values)

    def _add_row(self, row: Any, where: str) -> None:
        if not isinstance(row, list):
            raise DataError(
                f"{_NO_FEATURES} The `features` JMESPath {self._features.expression!r} gives {_describe(row)} "
                f"on {where}; it must select a list of feature values."
            )
        if self._rows and len(row) != len(self._rows[0]):
            raise DataError(
                f"{_NO_FEATURES} {where} has {len(row)} feature values but {self._origins[0]} has "
                f"{len(self._rows[0])}. Every record needs the same features."
            )
        self._rows.append(row)
        self._origins.append(where)

    def _check_roles_found(self) -> None:
        for role, values in self._role_values.items():
            if values and all(value is None for value in values):
                raise DataError(
                    f"{_ROLE_PREFIX[role]} The `{role}` JMESPath {self._roles[role].expression!r} matches "
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
                    f"{_NO_FEATURES} Feature {name!r} is a {type(column.iloc[nested[0]]).__name__} on "
                    f"{self._origins[nested[0]]}; `features` must select a flat list of values."
                )

    def _names(self, headers: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
        """Feature names, and the column name of each role present (label, predicted_label)."""
        n_features = len(self._rows[0]) if self._rows else 0
        roles = list(self._roles)
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
                f"{_HEADERS_MISMATCH} `headers` has {len(headers)} names but the records of {self.source} "
                f"have {n_features} feature values (first record: {self._origins[0] if self._origins else '-'}); "
                f"expected {expected} names: the feature names, then the label name, then the predicted "
                "label name (the names not given are `label` and `predicted_label`)."
            )
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DataError(f"Column names {duplicated} are used twice in the table of {self.source} "
                            f"(headers: {names}); give `headers` distinct names.")
        return names[:n_features], dict(zip(roles, names[n_features:], strict=True))


def _compile(key: str, expression: Any) -> jmespath.parser.ParsedResult:
    if not isinstance(expression, str):
        raise DataError(f"`{key}` must be a JMESPath expression (a string) for JSON datasets, got {expression!r}.")
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise DataError(f"`{key}` {expression!r} is not a valid JMESPath expression "
                        f"({jmespath_error_text(exc)}).") from None


def _loads(text: str, where: str) -> Any:
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


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (no match)"
    text = json.dumps(value, default=str)
    return f"a {type(value).__name__} ({text[:80] + '...' if len(text) > 80 else text})"
