"""One ``segment_config`` entry + its column -> the rows of each segment (``__default__`` last).

A column is a ``Column`` (distinct values + codes), so whether a row is in a list is decided once per
distinct value and spread over the rows by ``Column.row_mask``, like every facet decision in
``analyzer.bias``. Rows whose value no list holds (missing values included) form ``__default__``.

Numeric columns take numbers and intervals, compared exactly: an integer column is never widened to
float (2**53 + 1 stays itself), and a float column meets an integer endpoint beyond 2**53 by Python's
exact int/float comparison. Other columns take values compared as text (``3`` selects ``"3"``), so
the config's JSON type never has to match the reader's.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analyzer.config.model import SegmentConfig
from analyzer.data.column import Column
from analyzer.errors import UserError
from analyzer.segments.intervals import Interval, IntervalError, Number, as_number, parse_item

DEFAULT = "__default__"
_EXACT_FLOAT_INT = 2**53  # integers up to this size are exactly floats


@dataclass(frozen=True)
class Segment:
    """One segment: its name (display alias, else the configured items joined by ``,``; ``__default__``),
    the configured items (None for the default segment) and its row positions, ascending."""

    name: str
    values: list[Any] | None
    rows: np.ndarray


@dataclass(frozen=True)
class Segmentation:
    """The segments of one ``segment_config`` entry, in config order with ``__default__`` last."""

    index: int  # position in segment_config
    config_name: str  # config_name, else the column's name
    column: str
    segments: list[Segment]


def is_numeric(column: Column) -> bool:
    """Whether the column holds numbers (so its lists may hold intervals); bools are not numbers here."""
    dtype = column.dtype
    return (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            and not isinstance(dtype, pd.CategoricalDtype))


def _compare(values: np.ndarray, op: Any, bound: Number) -> np.ndarray:
    """``op(values, bound)`` element-wise, exactly, for integer or float ``values``."""
    if isinstance(bound, float) and math.isinf(bound):
        return op(values.astype(float, copy=False), bound) if values.dtype.kind == "f" else \
            np.full(len(values), op(0, bound), dtype=bool)
    if values.dtype.kind in "iu":
        if isinstance(bound, float) and not bound.is_integer():  # v > 2.5 <=> v > 2; v < 2.5 <=> v < 3
            bound = math.floor(bound) if op in (operator.gt, operator.ge) else math.ceil(bound)
            op = operator.gt if op in (operator.gt, operator.ge) else operator.lt
        bound = int(bound)
        info = np.iinfo(values.dtype)
        if bound > info.max or bound < info.min:  # every value lies on one side
            return np.full(len(values), op(0 if bound > 0 else 1, 1 if bound > 0 else 0), dtype=bool)
        return op(values, values.dtype.type(bound))
    if isinstance(bound, int) and abs(bound) > _EXACT_FLOAT_INT:  # no float64 holds it: Python compares exactly
        return np.fromiter((op(v, bound) for v in values.tolist()), dtype=bool, count=len(values))
    with np.errstate(invalid="ignore"):
        return op(values, float(bound))


def interval_mask(values: np.ndarray, interval: Interval) -> np.ndarray:
    """Which numbers of ``values`` (int or float array) lie in ``interval`` (NaN never does)."""
    low = _compare(values, operator.ge if interval.lower_closed else operator.gt, interval.lower)
    high = _compare(values, operator.le if interval.upper_closed else operator.lt, interval.upper)
    return low & high


def _unique_numbers(column: Column) -> np.ndarray:
    values = pd.to_numeric(column.uniques)
    kind = values.dtype.kind
    return values.to_numpy(dtype=values.dtype.numpy_dtype if hasattr(values.dtype, "numpy_dtype") else None) \
        if kind in "iuf" else values.to_numpy(dtype=float)


def item_mask(column: Column, item: Any, where: str) -> np.ndarray:
    """Per distinct value of ``column``: whether the configured ``item`` selects it. ``where`` names the
    item in errors (``segment_config[0].segments[1][2]``)."""
    try:
        parsed = parse_item(item)
    except IntervalError as error:
        raise UserError(f"{where}: {error}") from None
    if is_numeric(column):
        numbers = _unique_numbers(column)
        if isinstance(parsed, Interval):
            return interval_mask(numbers, parsed)
        number = as_number(parsed)
        if number is None:
            raise UserError(f"{where}: {item!r} is not a number, but column {column.name!r} holds numbers; give a "
                            "number or an interval such as \"(2, 5]\"")
        return interval_mask(numbers, Interval(number, number, True, True))
    if isinstance(parsed, Interval):
        example = column.uniques.iloc[0] if len(column.uniques) else None
        raise UserError(f"{where}: the interval {item!r} needs a numeric column, but column {column.name!r} holds "
                        f"{column.dtype} values (for example {_plain(example)!r}); give the values themselves")
    texts = column.uniques.astype(str).to_numpy()
    if pd.api.types.is_bool_dtype(column.dtype):
        return np.char.lower(texts.astype(str)) == str(item).lower()
    return texts == str(item)


def segment_names(entry: SegmentConfig) -> list[str]:
    """The names of the N + 1 segments of an entry, ``__default__`` (or its alias) last."""
    lists = entry.segments
    aliases = list(entry.display_aliases or [])
    names = [aliases[j] if j < len(aliases) else ",".join(map(str, items)) for j, items in enumerate(lists)]
    names.append(aliases[len(lists)] if len(aliases) > len(lists) else DEFAULT)
    return names


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (messages show ``4``, not ``np.int64(4)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _list_masks(entry: SegmentConfig, index: int, column: Column) -> tuple[list[np.ndarray], list[str]]:
    """Per list, which distinct values of ``column`` it selects; and every problem found on the way (an
    item the column cannot take, a value two lists both select), each naming its key."""
    key = f"segment_config[{index}]"
    masks, problems = [], []
    for j, items in enumerate(entry.segments):
        mask = np.zeros(column.nunique, dtype=bool)
        for k, item in enumerate(items):
            try:
                mask |= item_mask(column, item, f"{key}.segments[{j}][{k}]")
            except UserError as error:
                problems.append(str(error))
        masks.append(mask)
    for j in range(len(masks)):
        for i in range(j):
            both = np.flatnonzero(masks[i] & masks[j])
            if len(both):
                problems.append(f"{key}.segments: lists {i} and {j} both select the value "
                                f"{_plain(column.uniques.iloc[int(both[0])])!r} of column {column.name!r}; a row belongs to "
                                "one segment, so the lists must not overlap")
    return masks, problems


def segmentation_problems(entry: SegmentConfig, index: int, column: Column) -> list[str]:
    """Every reason ``segmentation`` would refuse ``entry`` over ``column`` (empty: none)."""
    return _list_masks(entry, index, column)[1]


def segmentation(entry: SegmentConfig, index: int, column: Column) -> Segmentation:
    """The segments of ``entry`` over ``column``. Raises ``UserError`` naming the key for an item the column
    cannot take and for a value that two lists both select (segments must not overlap)."""
    masks, problems = _list_masks(entry, index, column)
    if problems:
        raise UserError("; ".join(problems))
    taken = np.logical_or.reduce(masks) if masks else np.zeros(column.nunique, dtype=bool)
    names = segment_names(entry)
    segments = [Segment(names[j], list(items), np.flatnonzero(column.row_mask(masks[j])))
                for j, items in enumerate(entry.segments)]
    segments.append(Segment(names[-1], None, np.flatnonzero(~column.row_mask(taken))))
    return Segmentation(index, entry.config_name or column.name, column.name, segments)
