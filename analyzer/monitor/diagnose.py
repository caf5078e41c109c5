"""Why a window's post-training bias failed on its label columns, in the monitor's terms.

Clarify's post-training bias fails the whole analysis with two messages that name neither the window nor
the cause (``analyzer.bias.columns``): "Predicted Label Column series datatype is not the same as Label
Column series" and "No Label values are present in the predicted Label Column, Positive Predicted Index
Series contains all False values". In a monitoring window three causes are common, and each is told:

* the ground truth labels have another type than the predicted labels ("1.0" uploaded for a model
  answering 1): the message names both types and their values;
* the model predicted no positive label in the window (its labels compared with
  ``label_values_or_threshold`` as values): Clarify computes no post-training metric then, so the
  execution fails with that said, rather than reporting drift Clarify does not compute;
* a small window: Clarify types an integer column whose distinct values are at least 5 % of its rows as
  continuous (``analyzer.bias.columns.classify``), so with few records a 0/1 label becomes a threshold
  ("1" reads as "greater than 1"), and the label and the predicted labels can be typed differently. The
  message gives the window's record count and the count the rule needs (20 per distinct value, plus 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analyzer.bias.columns import (
    PREDICTED_ALL_FALSE,
    PREDICTED_TYPE_MISMATCH,
    UNIQUENESS_THRESHOLD,
    DataType,
    classify,
    value_kind,
)
from analyzer.data.column import Column
from analyzer.data.dataset import Dataset

_SHOWN = 5  # distinct values a message lists


def _values(column: Column) -> str:
    uniques = column.uniques.tolist()
    shown = ", ".join(repr(value.item() if isinstance(value, np.generic) else value) for value in uniques[:_SHOWN])
    return shown + (f", ... ({len(uniques)} in all)" if len(uniques) > _SHOWN else "")


def _same(value: Any, positive: Any) -> bool:
    """Whether a predicted label is a configured positive value (compared as numbers when both are)."""
    try:
        return math.isclose(float(value), float(positive), rel_tol=0, abs_tol=0)
    except (TypeError, ValueError):
        return str(value) == str(positive)


def _typing(column: Column, values: list[Any]) -> str:
    return "continuous" if classify(column, values) is DataType.CONTINUOUS else "categorical"


def _share(column: Column) -> str:
    return f"{column.nunique} distinct value(s) in {column.count} rows, {column.nunique / max(column.count, 1):.1%}"


def label_failure_message(error: str, dataset: Dataset, positives: list[Any] | None) -> str | None:
    """The failure message for Clarify's label-typing errors on a monitoring window (see the module
    docstring), or None when ``error`` is not one of them or the window has no label columns.
    ``positives``: the config's ``label_values_or_threshold``."""
    if PREDICTED_TYPE_MISMATCH not in error and PREDICTED_ALL_FALSE not in error:
        return None
    label, predicted = dataset.label, dataset.predicted_label
    if label is None or predicted is None:
        return None
    values = list(positives or [])
    n = dataset.n_rows
    parts = []
    label_kind, predicted_kind = value_kind(label), value_kind(predicted)
    if label_kind != predicted_kind:
        parts.append(f"the ground truth labels are {label_kind} ({_values(label)}), the predicted labels "
                     f"{predicted_kind} ({_values(predicted)}): Clarify types the label and the predicted label "
                     "separately, and they must get the same type. Upload the ground truth labels as the model's "
                     "predicted labels are written (1, not 1.0 or \"1.0\")")
    else:
        if values and not any(_same(value, positive) for value in predicted.uniques.tolist() for positive in values):
            parts.append(f"the model predicted no positive label in the window: its {n} predicted label(s) are "
                         f"{_values(predicted)}, none of label_values_or_threshold {values}. Clarify computes no "
                         "post-training bias metric without a positive prediction (it fails the whole analysis), "
                         "so the execution fails rather than reporting drift: check the model (or the threshold "
                         "applied to its scores, ProbabilityThresholdAttribute) on this window's traffic")
        label_typing, predicted_typing = _typing(label, values), _typing(predicted, values)
        if "continuous" in (label_typing, predicted_typing) and label_kind != "floats":
            needed = 20 * max(label.nunique, predicted.nunique) + 1
            small = label.nunique / max(label.count, 1) >= UNIQUENESS_THRESHOLD or \
                predicted.nunique / max(predicted.count, 1) >= UNIQUENESS_THRESHOLD
            if small:
                parts.append(
                    f"the window holds only {n} labelled record(s): Clarify types an integer column whose distinct "
                    f"values are at least 5 % of its rows as continuous, so label_values_or_threshold {values} "
                    f"becomes a threshold (greater than {values[0] if values else '?'})"
                    + (", and the label and the predicted labels can be typed differently" if label_typing ==
                       predicted_typing else ", and the two columns are typed differently")
                    + f". Here the label {label.name!r} ({_share(label)}) is "
                    f"{label_typing} and the predicted labels ({_share(predicted)}) are {predicted_typing}. "
                    f"At least {needed} labelled records make them categorical: widen the window (StartTimeOffset, "
                    "or --data-analysis-start-time) or run it once more ground truth has arrived")
    if not parts:
        return None
    return f"Post-training bias failed on the window's {n} labelled record(s): " + "; ".join(parts) + \
        f" (Clarify's error: {error})"
