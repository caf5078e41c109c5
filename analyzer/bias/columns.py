"""How Clarify turns the facet, label and predicted-label columns into booleans.

Clarify (smclarify 0.5) first classifies each column as CATEGORICAL or CONTINUOUS from its dtype,
its uniqueness and the number of configured values, then decides per row:

* categorical: the row's value equals one of the configured values. When nothing matches, the
  values are converted to the type of the column's first element (int <-> str, "1.0" -> 1,
  'True' -> True) and matched again;
* continuous: the row's value lies in the interval (threshold, max], i.e. is strictly greater
  than the threshold (empty when the threshold is >= the maximum).

Every decision here depends on a row only through its value, so it is taken once per distinct
value of a ``Column`` (``uniques``) and returned as a per-unique boolean mask; ``Column.row_mask``
spreads it over the rows. Errors are ``ValueError`` with smclarify's message; the report decides
which of them fail the whole report.

A configured label or facet value that matches no row is not an error in Clarify (the metrics come out
as 0.0 or as per-metric errors), which reads as "no bias" when it is a typo: Lucent logs a WARNING
naming the value, the column and the values present (Lucent rule, docs/bias.md), in the run and in
``lucent validate``, which still exits 0: the job would start (``value_warnings`` collects them). The
numbers stay Clarify's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from analyzer.bias.metrics import divide
from analyzer.config.spec import short_repr
from analyzer.data.column import MISSING, Column

logger = logging.getLogger(__name__)

UNIQUENESS_THRESHOLD = 0.05  # distinct / non-missing values at or above which numbers are continuous

THRESHOLD_MISSING = "Threshold values must be provided for continuous features"
THRESHOLD_NOT_NUMERIC = "Facet/label value provided must be a single numeric threshold for continuous data"
PREDICTED_TYPE_MISMATCH = "Predicted Label Column series datatype is not the same as Label Column series"
PREDICTED_ALL_FALSE = (
    "No Label values are present in the predicted Label Column,"
    "Positive Predicted Index Series contains all False values"
)
NO_LABEL_VALUES = "Positive label values or thresholds are empty for Label column"

_LABEL, _FACET = "label", "facet"
_SHOWN_VALUES = 10  # distinct values named in an absent-value warning
_collected: ContextVar[list[str] | None] = ContextVar("lucent_value_warnings", default=None)


@contextmanager
def value_warnings() -> Iterator[list[str]]:
    """Collect the absent-value warnings logged inside the block (each once), for ``lucent validate``,
    which runs the bias stages without failing on them."""
    collected: list[str] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)


def _warn(message: str) -> None:
    logger.warning("%s", message)
    collected = _collected.get()
    if collected is not None and message not in collected:
        collected.append(message)


def _show(value: Any) -> str:
    return short_repr(value) if isinstance(value, str) else str(value)  # numbers: 5, not np.int64(5)


def _present(column: Column) -> str:
    """The column's distinct values for a warning: ``0, 1`` (sorted when they can be), at most ten."""
    uniques = list(column.uniques)
    with suppress(TypeError):  # values of mixed types keep their order
        uniques = sorted(uniques)
    shown = ", ".join(_show(value) for value in uniques[:_SHOWN_VALUES])
    return f"{shown}, ... ({len(uniques)} in all)" if len(uniques) > _SHOWN_VALUES else shown or "none"


def value_kind(column: Column) -> str:
    """What a column's values are, in a message's words: booleans, ints, floats or strings."""
    kind = column.dtype.kind
    return {"b": "booleans", "i": "ints", "u": "ints", "f": "floats"}.get(kind, "strings")


def predicted_label_problem(error: str, label: Column, predicted: Column, values: list[Any]) -> str | None:
    """Why Clarify's post-training typing failed (``PREDICTED_TYPE_MISMATCH`` / ``PREDICTED_ALL_FALSE``, whose
    own words name neither column nor cause), in a batch job's terms; None for another error."""
    if PREDICTED_TYPE_MISMATCH in error:
        label_type, predicted_type = (classify(c, values).name.lower() for c in (label, predicted))
        return (f"the label {label.name!r} is {label_type} ({value_kind(label)}: {_present(label)}) and the predicted "
                f"label {predicted.name!r} is {predicted_type} ({value_kind(predicted)}: {_present(predicted)}); "
                "Clarify types the two columns separately (an integer column with distinct values in 5 % or more "
                "of its rows is continuous) and they must get the same type: write the predicted labels as the "
                "labels are written")
    if PREDICTED_ALL_FALSE in error:
        return (f"none of the predicted labels of {predicted.name!r} ({_present(predicted)}) is one of "
                f"label_values_or_threshold {values}, and Clarify computes no post-training metric without a "
                "positive prediction")
    return None


def _consequence(role: str) -> str:
    if role == _LABEL:
        return "no row has a positive label, so the metrics compare groups without positive outcomes"
    return "the facet's sensitive group is empty, so its metrics are errors"


def _where(role: str, column: Column) -> str:
    key = "`label_values_or_threshold`" if role == _LABEL else f"facet {column.name!r} `value_or_threshold`"
    return f"{key}: no row of {column.name!r}"


def _warn_absent_values(column: Column, role: str, absent: list[Any], mask: np.ndarray) -> None:
    """One warning per configured categorical value that no row has."""
    for value in absent:
        consequence = "" if mask.any() else f"; {_consequence(role)}"
        _warn(f"{_where(role, column)} has value {_show(value)} (values: {_present(column)}){consequence}.")


def _warn_empty_interval(column: Column, role: str, threshold: Any, numbers: pd.Series, mask: np.ndarray) -> None:
    """A warning when no row is above a continuous column's threshold."""
    if mask.any():
        return
    shown = f"from {_show(numbers.min())} to {_show(numbers.max())}" if numbers.notna().any() else "none"
    _warn(f"{_where(role, column)} is greater than the threshold {_show(threshold)} (values {shown}); "
          f"{_consequence(role)}.")


class DataType(Enum):
    """How Clarify treats a column: matched against values, or compared with a threshold."""

    CATEGORICAL = 0
    CONTINUOUS = 1


def classify(column: Column, values: list[Any] | None = None) -> DataType:
    """Clarify's column typing (smclarify ``series_datatype``), in this order.

    1. dtype ``category``, or more than one configured value: CATEGORICAL;
    2. string/object dtype: CONTINUOUS if every value casts to int64 and the uniqueness
       (distinct / non-missing) is >= 0.05, else CATEGORICAL;
    3. float dtype: CONTINUOUS;
    4. integer dtype: CONTINUOUS if the uniqueness is >= 0.05, else CATEGORICAL;
    5. anything else (bool, datetime, ...): CATEGORICAL.

    So a small int column is usually continuous: y = [0, 1, 1, 2, 0] with value [1] means
    "y > 1". Logs the same line as Clarify (including its "classifed" typo).
    """
    uniqueness = divide(column.nunique, column.count)
    dtype = column.dtype
    data_type = DataType.CATEGORICAL
    if isinstance(dtype, pd.CategoricalDtype) or (isinstance(values, list) and len(values) > 1):
        pass
    elif dtype.name in ("str", "string", "object"):
        if _casts_to_int64(column) and uniqueness >= UNIQUENESS_THRESHOLD:
            data_type = DataType.CONTINUOUS
    elif pd.api.types.is_float_dtype(dtype) or (
            pd.api.types.is_integer_dtype(dtype) and uniqueness >= UNIQUENESS_THRESHOLD):
        data_type = DataType.CONTINUOUS
    logger.info(
        "Column %s with data uniqueness fraction %s is classifed as a %s column",
        column.name, uniqueness, data_type.name,
    )
    return data_type


def _casts_to_int64(column: Column) -> bool:
    """Whether ``series.astype("int64")`` of the whole column would succeed."""
    if column.has_missing():  # NaN / None / NA never cast to int64
        return False
    try:
        column.uniques.astype("int64")
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def numeric_thresholds(values: list[Any] | None) -> list[Any]:
    """The threshold list of a continuous column, with a non-numeric first value cast to float.

    Raises the Clarify error when it is not a number. Bools count as numbers, as in Clarify.
    """
    thresholds = list(values or [])
    if thresholds and not isinstance(thresholds[0], int | float):
        try:
            thresholds[0] = float(thresholds[0])
        except ValueError:
            raise ValueError(THRESHOLD_NOT_NUMERIC) from None
    return thresholds


def numeric_uniques(column: Column) -> pd.Series:
    """The distinct values of a continuous column as numbers (``pd.to_numeric``)."""
    return pd.to_numeric(column.uniques)


def threshold_intervals(max_value: Any, thresholds: list[Any]) -> pd.IntervalIndex:
    """Clarify's interval (threshold, max]: no interval at all when the threshold equals |max|.

    The data maximum is added as the upper break unless ``abs(max)`` already is a threshold
    (Clarify's test; with a negative maximum this keeps a one-point empty interval). A threshold
    above the maximum gives (max, threshold], which contains no data value.
    """
    if not thresholds:
        raise ValueError(THRESHOLD_MISSING)
    breaks = list(thresholds)
    if abs(max_value) not in thresholds:
        breaks.append(max_value)
    return pd.IntervalIndex.from_breaks(sorted(breaks))


def intervals_string(intervals: pd.IntervalIndex) -> str:
    """``"(2, 4]"``, ``"(5.0, 9.79]"``, or ``""`` without intervals (pandas interval strings)."""
    return ",".join(map(str, intervals))


def interval_mask(values: pd.Series, intervals: pd.IntervalIndex) -> np.ndarray:
    """Which values lie in one of the right-closed intervals (NaN never does)."""
    numbers = values.to_numpy()
    mask = np.zeros(len(numbers), dtype=bool)
    for interval in intervals:
        mask |= (interval.left < numbers) & (numbers <= interval.right)
    return mask


def _as_category(column: Column) -> pd.Series:
    """The distinct values as a categorical Series with the categories of the whole column.

    Clarify compares ``series.astype("category") == value``; the categories (the sorted distinct
    values) are the same for the distinct values as for the whole column.
    """
    return column.uniques.astype("category")


def first_value(column: Column) -> Any:
    """``series[0]`` of the column as Clarify types it (category scalar, NaN when missing)."""
    if len(column) == 0:
        raise KeyError(0)
    code = int(column.codes[0])
    return np.nan if code == MISSING else _as_category(column).iloc[code]


def convert_values(example: Any, values: list[Any]) -> list[Any]:
    """Cast configured values to the type of a column element (smclarify ``convert_positive_label_values``).

    Values already of that type are kept. ``int("1.0")`` fails, so such values go through float.
    Any other failed cast raises Clarify's generic message. Note ``bool("False")`` is True.
    """
    target = type(example)
    if isinstance(values[0], target):
        return values
    try:
        converted = [target(value) for value in values]
    except ValueError as error:
        if "invalid literal for int() with base 10" not in str(error):
            raise ValueError(
                "'label' has not positive elements. Double-check if 'label' and 'positive_label_values'"
                "have correct data-types or values."
            ) from None
        converted = [float(value) for value in values]
    logger.warning(
        "Data type of the elements in `positive_label_values` and in `label` must match. "
        "Converted positive_label_values from %s to %s", _plain(values), _plain(converted),
    )
    return converted


def _plain(values: list[Any]) -> list[Any]:
    """``values`` with numpy scalars as Python's (``7``, not ``np.int64(7)``), for a message."""
    return [value.item() if isinstance(value, np.generic) else value for value in values]


def _match(categories: pd.Series, values: list[Any]) -> np.ndarray:
    mask = np.zeros(len(categories), dtype=bool)
    for value in values:
        mask |= (categories == value).to_numpy(dtype=bool)
    return mask


def categorical_mask(column: Column, values: list[Any], role: str | None = None) -> np.ndarray:
    """Per-unique mask of the values equal to one of ``values`` (Clarify ``_categorical_data_idx``).

    If nothing matches, ``values`` are converted to the type of the column's first element and
    matched again; if that matches nothing either, the mask is all False (not an error). With a
    ``role`` (``"label"`` or ``"facet"``), each value that matches no row is logged as a warning.
    """
    categories = _as_category(column)
    mask = _match(categories, values)
    if not mask.any():
        values = convert_values(first_value(column), values)
        mask = _match(categories, values)
    if role is not None:
        _warn_absent_values(column, role, [v for v in values if not _match(categories, [v]).any()], mask)
        _warn_lookalike_values(column, role, values, mask)
    return mask


def _warn_lookalike_values(column: Column, role: str, values: list[Any], mask: np.ndarray) -> None:
    """A warning for rows whose value is written like a configured one but is of another type (JSON's ``"1"``
    beside ``1``): Clarify matches by value and type, so those rows do not match, and nothing else says so."""
    written = {str(value) for value in values}
    lookalikes = [i for i, value in enumerate(column.uniques)
                  if not mask[i] and str(value) in written and not any(type(value) is type(v) for v in values)]
    if not lookalikes:
        return
    rows = int(np.isin(column.codes, lookalikes).sum())
    shown = ", ".join(f"{_show(column.uniques.iloc[i])} ({type(column.uniques.iloc[i]).__name__})" for i in lookalikes)
    key = "`label_values_or_threshold`" if role == _LABEL else f"facet {column.name!r} `value_or_threshold`"
    _warn(f"{key} {_plain(values)}: {rows} row(s) of {column.name!r} hold {shown}, written like a configured value "
          "but of another type; they do not match it (values are matched with their type, as in Clarify)")


def values_string(values: list[Any]) -> str:
    """Configured categorical values as Clarify prints them: ``"1,2"``, ``"True"``, ``"yes"``."""
    return ",".join(map(str, values))


# --------------------------------------------------------------------------------------------
# Facet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FacetGroup:
    """One sensitive group d of a facet: its output label and which distinct values it holds.

    A one-vs-all group is a single distinct value (``value_index``); other groups carry a mask
    over the distinct values (``sensitive``). Keeping the single value as an index keeps a
    one-vs-all report over many values linear in their number.
    """

    value_or_threshold: str
    sensitive: np.ndarray | None = None  # per unique of the facet column
    value_index: int | None = None  # position in the facet's uniques

    def row_mask(self, facet: Column) -> np.ndarray:
        """Per-row bools, True for the rows of d."""
        if self.value_index is not None:
            return facet.codes == self.value_index
        return facet.row_mask(self.sensitive)


def facet_groups(facet: Column, data_type: DataType, values: list[Any] | None) -> list[FacetGroup]:
    """The sensitive groups Clarify reports for a facet, in report order.

    * CONTINUOUS: one group, values in (threshold, max];
    * CATEGORICAL with values: one group, the rows equal to any of them;
    * CATEGORICAL without values (one-vs-all): one group per distinct value in order of first
      appearance, including a "nan" group where the column has missing values (its d is the rows
      equal to NaN after Clarify's value conversion: usually none).
    """
    if data_type is DataType.CONTINUOUS:
        numbers = numeric_uniques(facet)
        intervals = threshold_intervals(numbers.max(), numeric_thresholds(values))
        logger.info("Facet %s threshold intervals: %s", facet.name, intervals_string(intervals))
        sensitive = interval_mask(numbers, intervals)
        _warn_empty_interval(facet, _FACET, numeric_thresholds(values)[0], numbers, sensitive)
        return [FacetGroup(intervals_string(intervals), sensitive)]
    if values:
        return [FacetGroup(values_string(values), categorical_mask(facet, values, _FACET))]
    groups = [FacetGroup(str(value), value_index=index) for index, value in enumerate(_as_category(facet))]
    missing_at = facet.missing_position()
    if missing_at is not None:
        groups.insert(missing_at, FacetGroup(str(np.nan), categorical_mask(facet, [np.nan])))
    return groups


# --------------------------------------------------------------------------------------------
# Label and predicted label
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelTyping:
    """How the label column was read: its type, positive values and output string."""

    data_type: DataType
    positive: np.ndarray  # per unique of the label column
    value_or_threshold: str
    values: list[Any]  # the configured values (first one cast to float for a continuous label)
    numbers: pd.Series | None = None  # numeric distinct values of a continuous label


def type_label(label: Column, values: list[Any]) -> LabelTyping:
    """Classify the label and find its positive values (Clarify ``_positive_label_index``).

    An all-False result is not an error for the observed label.
    """
    if not values:
        raise ValueError(NO_LABEL_VALUES)
    data_type = classify(label, values)
    if data_type is DataType.CATEGORICAL:
        return LabelTyping(data_type, categorical_mask(label, values, _LABEL), values_string(values), list(values))
    thresholds = numeric_thresholds(values)
    numbers = numeric_uniques(label)
    intervals = threshold_intervals(numbers.max(), thresholds)
    positive = interval_mask(numbers, intervals)
    _warn_empty_interval(label, _LABEL, thresholds[0], numbers, positive)
    return LabelTyping(data_type, positive, intervals_string(intervals), thresholds, numbers)


def label_value_or_threshold(label: Column, values: list[Any]) -> str:
    """The ``label_value_or_threshold`` string of analysis.json: ``"1"``, ``"1,2"``, ``"(0.5, 1.0]"``."""
    return type_label(label, values).value_or_threshold


def predicted_positive(predicted: Column, label: LabelTyping) -> np.ndarray:
    """Per-unique positive mask of the predicted label, typed with the label's values.

    The predicted label must get the label's DataType. A continuous prediction is first cast
    to the label's dtype (floats to an int label truncate) and compared with the interval
    (threshold, max of labels and predictions]. Raises when no prediction is positive, since
    Clarify then fails the whole report.
    """
    data_type = classify(predicted, label.values)
    thresholds = numeric_thresholds(label.values) if data_type is DataType.CONTINUOUS else None
    if data_type is not label.data_type:
        raise ValueError(PREDICTED_TYPE_MISMATCH)
    if data_type is DataType.CONTINUOUS:
        numbers = _cast_like(numeric_uniques(predicted), predicted.has_missing(), label.numbers.dtype)
        max_value = pd.concat([label.numbers, numbers]).max()
        positive = interval_mask(numbers, threshold_intervals(max_value, thresholds))
    else:
        positive = categorical_mask(predicted, label.values)
    if not positive.any():
        raise ValueError(PREDICTED_ALL_FALSE)
    return positive


def _cast_like(numbers: pd.Series, has_missing: bool, dtype: np.dtype) -> pd.Series:
    """``numbers.astype(dtype)``, failing like the cast of the whole column would (NaN to int)."""
    if not has_missing:
        return numbers.astype(dtype)
    with_missing = pd.concat([numbers, pd.Series([np.nan])], ignore_index=True).astype(dtype)
    return with_missing.iloc[:-1]
