"""Time-series datasets (spec clarify-contract.md 2.6): JSON documents -> one ``TimeSeriesItem`` per item.

A time-series dataset is not a table of independent rows: each item (``item_id``) has its own
timestamps, its target series, any related series (aligned on the same timestamps) and static
covariates (one value per item). The analyses explain one forecast per item, so the data layer hands
them whole items, read with the config's JMESPath locators in one of the three documented layouts
(the SDK's ``TimeSeriesJSONDatasetFormat`` examples, docs/time-series.md):

* ``columns``: every locator gives one flat list over all rows (``{"ids": [1, 1, 2], "target": [...]}``);
  rows are grouped by item id.
* ``timestamp_records``: one record per (item, timestamp) (``[{"id": 1, "timestamp": 1, "target": 5}]``);
  the locators (``[*].target``) again give flat lists over all rows, grouped by item id.
* ``item_records``: one record per item, its series inside (``[*].timeseries[].target``). A locator may
  give one list per item (``[*].timeseries[*].target``); a flattening one is applied to each item on its
  own, so the values are never mixed up between items.

Integer locators (no ``dataset_format``) index the columns of a document that is a list of rows.

Rows of an item are kept in file order, which must be chronological (docs/time-series.md). Series
values are numbers or null (missing, kept as NaN and sent to the model as null); every problem names
the file, the item and the locator.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import numpy as np
import orjson

from analyzer.config.model import AnalysisConfig, Locator, TimeSeriesDataConfig
from analyzer.data.dataset import Dataset
from analyzer.data.files import list_data_files, read_bytes
from analyzer.errors import DataError, jmespath_error_text

log = logging.getLogger(__name__)

COLUMNS, ITEM_RECORDS, TIMESTAMP_RECORDS = "columns", "item_records", "timestamp_records"
KEY = "time_series_data_config"
_IDENTIFIER = re.compile(r'"((?:[^"\\]|\\.)*)"|([A-Za-z_][A-Za-z0-9_]*)')


@dataclass(frozen=True)
class TimeSeriesItem:
    """One item's history: ``target`` (T,), ``related`` (R, T) as float64 with NaN for missing values,
    ``timestamps`` (T, as the data gives them) and ``static`` (S values, as given)."""

    item_id: Any
    timestamps: list[Any]
    target: np.ndarray
    related: np.ndarray
    static: list[Any]

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass
class TimeSeriesDataset(Dataset):
    """A ``Dataset`` whose rows are items: ``n_rows`` counts items, ``feature_names`` are the series and
    covariate names (target, related..., static...), and ``items`` hold the series themselves."""

    items: list[TimeSeriesItem] = field(default_factory=list)
    target_name: str = "target_time_series"
    related_names: list[str] = field(default_factory=list)
    static_names: list[str] = field(default_factory=list)


def series_names(ts: TimeSeriesDataConfig, headers: list[str] | None) -> tuple[str, list[str], list[str]]:
    """(target, related, static) names: from ``headers`` (item_id, timestamp, target, related...,
    static...) when given, else from each locator (its last field name, or ``column_<i>``)."""
    related, static = list(ts.related_time_series or []), list(ts.static_covariates or [])
    expected = 3 + len(related) + len(static)
    if headers:
        if len(headers) != expected:
            raise DataError(f"headers has {len(headers)} names, but time_series_data_config locates {expected} "
                            "columns: give them in the order item_id, timestamp, target_time_series, every "
                            "related_time_series, every static_covariates")
        return headers[2], headers[3:3 + len(related)], headers[3 + len(related):]
    return _name(ts.target_time_series), [_name(r) for r in related], [_name(s) for s in static]


def _name(locator: Locator) -> str:
    if isinstance(locator, int):
        return f"column_{locator}"
    found = _IDENTIFIER.findall(locator)
    if not found:
        return locator
    quoted, bare = found[-1]
    return quoted or bare


def load_time_series(config: AnalysisConfig, dataset_path: Path) -> TimeSeriesDataset:
    """Every item of the dataset at ``dataset_path`` (a JSON file, or a folder of them), in order of first
    appearance. Raises ``DataError`` naming the file, item and locator of the first problem."""
    ts = config.time_series_data_config
    if ts is None:
        raise ValueError("load_time_series needs a config with time_series_data_config")
    started = time.perf_counter()
    target_name, related_names, static_names = series_names(ts, config.headers)
    items: dict[Any, TimeSeriesItem] = {}
    where: dict[Any, Path] = {}
    files = list_data_files(Path(dataset_path))
    for path in files:
        for item in _read_file(path, ts):
            key = _hashable(item.item_id)
            if key in items:
                raise DataError(f"{path}: item_id {item.item_id!r} also appears in {where[key]}: each item's rows "
                                "must be in one file")
            items[key], where[key] = item, path
    if not items:
        raise DataError(f"{dataset_path}: the dataset has no items (item_id {ts.item_id!r} found nothing)")
    _check_chronological_items(list(items.values()), [where[key] for key in items], ts)
    dataset = TimeSeriesDataset(
        source=str(dataset_path), n_rows=len(items),
        headers=["item_id", "timestamp", target_name, *related_names, *static_names],
        feature_names=[target_name, *related_names, *static_names], items=list(items.values()),
        target_name=target_name, related_names=related_names, static_names=static_names)
    log.info("Read %d time series (%d to %d timestamps) from %d file(s) in %.2f s", len(items),
             min(map(len, dataset.items)), max(map(len, dataset.items)), len(files), time.perf_counter() - started)
    return dataset


def _hashable(value: Any) -> Any:
    return orjson.dumps(value) if isinstance(value, list | dict) else value


def _read_file(path: Path, ts: TimeSeriesDataConfig) -> list[TimeSeriesItem]:
    try:
        document = orjson.loads(read_bytes(path))
    except orjson.JSONDecodeError as error:
        raise DataError(f"{path}: not a valid JSON document ({error}); time-series datasets are JSON "
                        "(dataset_type application/json)") from None
    if isinstance(ts.target_time_series, int):
        return _from_rows(path, ts, _index_columns(path, document, ts))
    if ts.dataset_format == ITEM_RECORDS:
        return _from_item_records(path, document, ts)
    return _from_rows(path, ts, _flat_columns(path, document, ts))


# -- locating values ------------------------------------------------------------------------------
def _locators(ts: TimeSeriesDataConfig) -> list[tuple[str, Locator]]:
    """(config key, locator) of every located column, in header order."""
    return [("item_id", ts.item_id), ("timestamp", ts.timestamp), ("target_time_series", ts.target_time_series),
            *((f"related_time_series[{i}]", loc) for i, loc in enumerate(ts.related_time_series or [])),
            *((f"static_covariates[{i}]", loc) for i, loc in enumerate(ts.static_covariates or []))]


def _search(path: Path, key: str, expression: str, document: Any) -> Any:
    try:
        return jmespath.search(expression, document)
    except jmespath.exceptions.JMESPathError as error:
        raise DataError(f"{KEY}.{key} {expression!r} is not a valid JMESPath expression: "
                        f"{jmespath_error_text(error)}") from None


def _flat_columns(path: Path, document: Any, ts: TimeSeriesDataConfig) -> dict[str, list[Any]]:
    """``columns`` / ``timestamp_records``: each locator gives one list with a value per row."""
    columns: dict[str, list[Any]] = {}
    for key, locator in _locators(ts):
        found = _search(path, key, str(locator), document)
        if not isinstance(found, list):
            raise DataError(f"{path}: {KEY}.{key} {locator!r} must give a list with one value per row "
                            f"({ts.dataset_format} format), got {_excerpt(found)}")
        if ts.dataset_format == TIMESTAMP_RECORDS and isinstance(document, list) and len(found) != len(document):
            # A projection ([*].x) skips records whose x is null or missing: locate record by record, so
            # that a missing value stays in its row (as null).
            found = [_single(path, key, str(locator), record) for record in document]
        columns[key] = found
    return columns


def _single(path: Path, key: str, expression: str, record: Any) -> Any:
    """The value ``expression`` locates in one record (null when it finds none)."""
    found = _search(path, key, expression, [record])
    if isinstance(found, list) and len(found) <= 1:
        return found[0] if found else None
    raise DataError(f"{path}: {KEY}.{key} {expression!r} gives {_excerpt(found)} for the record "
                    f"{_excerpt(record)}, expected one value per record")


def _index_columns(path: Path, document: Any, ts: TimeSeriesDataConfig) -> dict[str, list[Any]]:
    """Integer locators: columns of a document that is a list of rows."""
    if not isinstance(document, list) or not all(isinstance(row, list) for row in document):
        raise DataError(f"{path}: with integer locators in {KEY} the document must be a list of rows (lists); "
                        "give JMESPath strings and a dataset_format for other layouts")
    columns: dict[str, list[Any]] = {}
    for key, index in _locators(ts):
        for number, row in enumerate(document):
            if not 0 <= int(index) < len(row):
                raise DataError(f"{path}: row {number} has {len(row)} values, {KEY}.{key} is column {index}")
        columns[key] = [row[int(index)] for row in document]
    return columns


def _from_rows(path: Path, ts: TimeSeriesDataConfig, columns: dict[str, list[Any]]) -> list[TimeSeriesItem]:
    """Group row columns by item id (order of first appearance; rows in file order)."""
    lengths = {key: len(values) for key, values in columns.items()}
    n = lengths["item_id"]
    for key, length in lengths.items():
        if length != n:
            raise DataError(f"{path}: {KEY}.{key} gives {length} values but item_id gives {n}: every locator must "
                            "give one value per row (a JMESPath projection such as [*].x skips records where x "
                            "is missing or null: write null values as numbers, or drop those records)")
    rows: dict[Any, list[int]] = {}
    for row, item_id in enumerate(columns["item_id"]):
        if item_id is None:
            raise DataError(f"{path}: row {row} has no item_id ({KEY}.item_id {ts.item_id!r} gave null)")
        rows.setdefault(_hashable(item_id), []).append(row)
    items = []
    for indexes in rows.values():
        item_id = columns["item_id"][indexes[0]]
        picked = {key: [values[i] for i in indexes] for key, values in columns.items()}
        static = []
        for key in (k for k in columns if k.startswith("static_covariates")):
            values = picked[key]
            distinct = list(dict.fromkeys(_hashable(v) for v in values))
            if len(distinct) > 1:
                raise DataError(f"{path}: item {item_id!r}: {KEY}.{key} must have one value per item, found "
                                f"{values[0]!r} and {next(v for v in values if _hashable(v) != distinct[0])!r}")
            static.append(values[0])
        items.append(_item(path, ts, item_id, picked, static))
    return items


def _from_item_records(path: Path, document: Any, ts: TimeSeriesDataConfig) -> list[TimeSeriesItem]:
    """``item_records``: one record per item. Per-item values are located per item: a locator that gives
    one list per item is split by item; otherwise it is applied to each item record on its own."""
    ids = _search(path, "item_id", str(ts.item_id), document)
    if not isinstance(ids, list) or not ids:
        raise DataError(f"{path}: {KEY}.item_id {ts.item_id!r} must give a list with one id per item "
                        f"(item_records format), got {_excerpt(ids)}")
    n = len(ids)
    per_item: dict[str, list[Any]] = {"item_id": ids}
    for key, locator in _locators(ts)[1:]:
        found = _search(path, key, str(locator), document)
        static = key.startswith("static_covariates")
        if isinstance(found, list) and len(found) == n and (static or all(isinstance(v, list) for v in found)):
            per_item[key] = found
        elif isinstance(document, list) and len(document) == n:
            # A flattening locator such as [*].timeseries[].target: apply it to each item record alone.
            values = [_search(path, key, str(locator), [record]) for record in document]
            for i, value in enumerate(values):
                if not isinstance(value, list) or (static and len(value) != 1):
                    raise DataError(f"{path}: item {ids[i]!r}: {KEY}.{key} {locator!r} gives "
                                    f"{_excerpt(value)} for this item record, expected "
                                    f"{'one value' if static else 'a list of values'}")
            per_item[key] = [value[0] for value in values] if static else values
        else:
            raise DataError(f"{path}: {KEY}.{key} {locator!r} gives {_excerpt(found)}: cannot tell which values "
                            f"belong to which of the {n} items. Use a locator that gives one "
                            f"{'value' if static else 'list'} per item (such as "
                            f"[*].timeseries[*].target), or make the document a list of item records")
    items = []
    for i, item_id in enumerate(ids):
        if item_id is None:
            raise DataError(f"{path}: item record {i} has no item_id ({KEY}.item_id {ts.item_id!r} gave null)")
        series = {key: values[i] for key, values in per_item.items() if not key.startswith("static_covariates")}
        static = [values[i] for key, values in per_item.items() if key.startswith("static_covariates")]
        items.append(_item(path, ts, item_id, series, static))
    return items


def _item(path: Path, ts: TimeSeriesDataConfig, item_id: Any, series: dict[str, Any],
          static: list[Any]) -> TimeSeriesItem:
    timestamps = series["timestamp"]
    if not isinstance(timestamps, list) or not timestamps:
        raise DataError(f"{path}: item {item_id!r} has no timestamps ({KEY}.timestamp {ts.timestamp!r})")
    for key, values in series.items():
        if key != "item_id" and (not isinstance(values, list) or len(values) != len(timestamps)):
            count = len(values) if isinstance(values, list) else "no list of"
            raise DataError(f"{path}: item {item_id!r}: {KEY}.{key} has {count} values for {len(timestamps)} "
                            "timestamps; every series of an item must have one value per timestamp")
    seen: set[Any] = set()
    for stamp in timestamps:
        if stamp is None or isinstance(stamp, list | dict):
            raise DataError(f"{path}: item {item_id!r}: timestamp {stamp!r} is not a date, time or number")
        if stamp in seen:
            raise DataError(f"{path}: item {item_id!r}: timestamp {stamp!r} appears twice")
        seen.add(stamp)
    for j, value in enumerate(static):
        if isinstance(value, list | dict):
            raise DataError(f"{path}: item {item_id!r}: static_covariates[{j}] must be a number or a string, "
                            f"got {_excerpt(value)}")
    target = _numbers(path, item_id, "target_time_series", series["target_time_series"], timestamps)
    related_keys = [k for k in series if k.startswith("related_time_series")]
    related = np.array([_numbers(path, item_id, k, series[k], timestamps) for k in related_keys],
                       dtype=np.float64).reshape(len(related_keys), len(timestamps))
    return TimeSeriesItem(item_id, list(timestamps), target, related, list(static))


def _check_chronological_items(items: list[TimeSeriesItem], paths: list[Path], ts: TimeSeriesDataConfig) -> None:
    """``_check_chronological`` for every item, the timestamp strings of all items read with one format."""
    stamps = [t for item in items for t in item.timestamps]
    parsed = None
    if len(stamps) > len(items) and all(isinstance(t, str) for t in stamps):  # some item has 2 timestamps or more
        parsed = parse_timestamps(stamps, f"{KEY}.timestamp {ts.timestamp!r}")  # None: each item on its own
    for item, path in zip(items, paths, strict=True):
        _check_chronological(path, item.item_id, item.timestamps, parsed)


def _check_chronological(path: Path, item_id: Any, timestamps: list[Any],
                         parsed: dict[str, Any] | None = None) -> None:
    """Refuse an item whose timestamps go back in time (docs/time-series.md: rows are chronological).

    The explainer takes rows in file order, so an unsorted item would be explained in the wrong order
    without a word. Timestamps are compared when they are comparable: all numbers, or all strings that
    pandas parses; anything else (mixed types, free-form labels) is taken as given. ``parsed``: the
    column's strings as ``parse_timestamps`` read them (one format for the whole column); None: this
    item's own strings are parsed so.
    """
    if len(timestamps) < 2:
        return
    keys: list[Any]
    if all(isinstance(t, int | float) and not isinstance(t, bool) for t in timestamps):
        keys = list(timestamps)
    elif all(isinstance(t, str) for t in timestamps):
        if parsed is None:
            parsed = parse_timestamps(timestamps)
        if parsed is None or any(t not in parsed for t in timestamps):
            return
        keys = [parsed[t] for t in timestamps]
    else:
        return
    for i in range(1, len(keys)):
        try:
            later = keys[i] > keys[i - 1]
        except TypeError:  # e.g. a time zone on some timestamps only: not comparable, taken as given
            return
        if not later:
            raise DataError(f"{path}: item {item_id!r}: timestamp {timestamps[i]!r} comes after "
                            f"{timestamps[i - 1]!r} but is not later; an item's rows must be in "
                            "chronological order (docs/time-series.md)")


def parse_timestamps(strings: list[str], where: str = "") -> dict[str, Any] | None:
    """The timestamp strings of one column parsed with one format for all of them: ``{string: Timestamp}``,
    or None when they are not all dates (free-form labels, mixed time zones: taken as given).

    pandas infers a format from the values, month-first, then day-first; the first that parses every value
    is used ('12.01.2021' is 1 December only if no value says otherwise: '13.01.2021' makes the column
    day-first). When both parse every value and disagree (every day <= 12), month-first is kept and logged.
    When neither parses every value (values in several formats), each value is parsed on its own
    (``format="mixed"``). ``where`` names the column in the log."""
    import warnings

    import pandas as pd

    unique = list(dict.fromkeys(strings))
    if not unique:
        return {}
    series = pd.Series(unique, dtype=object)
    with warnings.catch_warnings():  # pandas warns when it cannot infer a format, and on mixed time zones
        warnings.simplefilter("ignore")
        readings = {}
        for name, form in _candidate_formats(unique[0]):
            try:
                reading = pd.to_datetime(series, format=form, errors="raise")
            except (ValueError, TypeError, OverflowError):
                continue
            if not reading.isna().any():
                readings[name] = reading
        if not readings:
            try:
                reading = pd.to_datetime(series, format="mixed", errors="coerce")
            except (ValueError, TypeError):
                return None  # e.g. mixed time zones: not comparable
            if reading.isna().any():
                return None
            log.info("Timestamps%s are in several formats: each is parsed on its own (e.g. %r)",
                     f" of {where}" if where else "", unique[0])
            readings["per value"] = reading
    name, reading = next(iter(readings.items()))
    if len(readings) == 2 and not readings["month-first"].equals(readings["day-first"]):
        example = next(u for u, m, d in zip(unique, readings["month-first"], readings["day-first"], strict=True)
                       if m != d)
        log.info("Timestamps%s read month-first: every value also reads day-first (%r is %s month-first, %s "
                 "day-first); write them as YYYY-MM-DD to remove the doubt", f" of {where}" if where else "",
                 example, f"{readings['month-first'][unique.index(example)]:%Y-%m-%d}",
                 f"{readings['day-first'][unique.index(example)]:%Y-%m-%d}")
    elif name == "day-first":
        log.info("Timestamps%s read day-first (e.g. %r is %s): month-first does not parse every value",
                 f" of {where}" if where else "", unique[-1], f"{reading.iloc[-1]:%Y-%m-%d}")
    return dict(zip(unique, reading.tolist(), strict=True))


def _candidate_formats(example: str) -> list[tuple[str, str]]:
    """The formats pandas infers from ``example`` reading it month-first, then day-first: ``[(name, format)]``.
    A day-first reading is only a candidate when its day comes before its month and the year is not first
    (pandas would read an ISO '2021-01-11' day-first as 1 November)."""
    from pandas.tseries.api import guess_datetime_format

    month_first, day_first = guess_datetime_format(example, dayfirst=False), guess_datetime_format(example, dayfirst=True)
    formats = [("month-first", month_first)] if month_first else []
    if day_first and day_first != month_first and "%d" in day_first and "%m" in day_first \
            and day_first.index("%d") < day_first.index("%m") and not day_first.startswith("%Y"):
        formats.append(("day-first", day_first))
    return formats


def _numbers(path: Path, item_id: Any, key: str, values: list[Any], timestamps: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if value is None:
            out[i] = np.nan
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[i] = value
        else:
            raise DataError(f"{path}: item {item_id!r}, timestamp {timestamps[i]!r}: {KEY}.{key} value "
                            f"{_excerpt(value)} is not a number")
    return out


def _excerpt(value: Any, limit: int = 80) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[:limit] + "..."
