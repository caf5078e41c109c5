"""What a model said about n records, and the two readings of it (spec 5.3).

``Predictions`` keeps what ``predictor.label`` and ``predictor.probability`` located, one entry per
record, as numpy arrays: shape ``(n,)`` when each record gives one value, ``(n, k)`` when it gives a
list. Two readings are derived from them:

* ``scores`` for SHAP / PDP: the probability values, else the label values, as a float matrix.
* ``predicted_labels`` for post-training bias: the rules of spec 5.3 (scalar label; argmax over a
  label list; argmax over ``label_headers``; a single score cut at ``probability_threshold``).
  A NaN or infinite score (or numeric label) fails it with the rows named: NaN > 0.5 is False and
  argmax picks a NaN first, so such a record would otherwise quietly get a label and shift DI and the
  other post-training metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from analyzer.config.model import Scalar
from analyzer.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictions:
    """Model outputs for ``n_records`` records, in request order.

    ``label``: values located by ``predictor.label``; ``probability``: values located by
    ``predictor.probability``, or the whole model output per record when neither locator is set.
    ``first_row`` numbers the first record in error messages (its row in the caller's input).
    """

    n_records: int
    label: np.ndarray | None = None
    probability: np.ndarray | None = None
    label_headers: tuple[Scalar, ...] | None = None
    first_row: int = field(default=0, compare=False)

    def __len__(self) -> int:
        return self.n_records

    @cached_property
    def scores(self) -> np.ndarray:
        """Model scores as an ``(n, k)`` float64 matrix: the probability values, else the label values."""
        values, key = (self.probability, "probability") if self.probability is not None else (self.label, "label")
        if values is None:
            return np.empty((self.n_records, 0))
        scores = as_numbers(values, f"predictor.{key}", self.first_row)
        return scores.reshape(self.n_records, -1)

    def score_keys(self) -> list[str]:
        """Names of the score columns (``kernel_shap`` label keys, spec 4.3).

        ``label_headers`` when given; else, when the scores come from ``predictor.label`` (the SDK
        puts ``model_scores`` there), the first record's values, as Clarify does; else ``label0``...
        """
        width = self.scores.shape[1]
        if self.label_headers is not None:
            return [str(header) for header in self._headers_for(width)]
        if self.probability is None and self.label is not None and self.n_records:
            first = self.label[0].tolist() if self.label.ndim == 2 else self.label[:1].tolist()
            return [str(value) for value in first]
        return [f"label{i}" for i in range(width)]

    def predicted_labels(self, probability_threshold: float = 0.5) -> np.ndarray:
        """One predicted label per record for post-training bias (spec 5.3 rules, in order)."""
        label, probability = self.label, self.probability
        if label is not None and label.ndim == 1:
            check_finite_outputs(label, "predictor.label", self.first_row)
            labels = label  # 1. the model names its predicted label
        elif label is not None:
            if probability is None or probability.ndim != 2 or probability.shape[1] != label.shape[1]:
                raise UserError(
                    f"predictor.label gives a list of {label.shape[1]} labels per record; predictor.probability must "
                    "give a list of as many scores so that the label with the highest score can be chosen")
            scores = as_numbers(probability, "predictor.probability", self.first_row)
            check_finite_outputs(scores, "predictor.probability", self.first_row)
            best = np.argmax(scores, axis=1)
            labels = label[np.arange(self.n_records), best]  # 2. label list + score list
        elif probability is None:
            raise UserError("The model output has no predicted label: set predictor.label or predictor.probability")
        else:
            scores = self.scores
            check_finite_outputs(scores, "predictor.probability", self.first_row)
            if scores.shape[1] == 1:  # 4. one score per record, cut at the threshold
                return (scores[:, 0] > probability_threshold).astype(np.int64)
            if cuts_second_score(scores.shape[1], self.label_headers, probability_threshold):
                return (scores[:, 1] > probability_threshold).astype(np.int64)
            best = np.argmax(scores, axis=1)
            if self.label_headers is None:
                return best  # no names for the scores: their position is the label
            return np.array(self._headers_for(scores.shape[1]), dtype=object)[best]  # 3. argmax over label_headers
        self._check_in_label_headers(labels)
        return labels

    def _headers_for(self, width: int) -> tuple[Scalar, ...]:
        assert self.label_headers is not None
        if len(self.label_headers) != width:
            raise UserError(f"predictor.label_headers has {len(self.label_headers)} entries but the model returns "
                            f"{width} score(s) per record")
        return self.label_headers

    def _check_in_label_headers(self, labels: np.ndarray) -> None:
        if self.label_headers is None:
            return
        allowed = {_label_key(header) for header in self.label_headers}
        unknown = {_label_key(value) for value in pd.unique(labels)} - allowed
        if unknown:
            row, value = next((i, v) for i, v in enumerate(labels.tolist()) if _label_key(v) in unknown)
            raise UserError(f"The model predicted label {_quote(value)} (row {self.first_row + row}), which is not "
                            f"one of predictor.label_headers {list(self.label_headers)}")

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """Join consecutive parts (batches) into one."""
        if not parts:
            raise ValueError("no predictions to join")
        if len(parts) == 1:
            return parts[0]
        return cls(
            n_records=sum(part.n_records for part in parts),
            label=_concat([part.label for part in parts], parts, "predictor.label"),
            probability=_concat([part.probability for part in parts], parts, "predictor.probability"),
            label_headers=parts[0].label_headers,
            first_row=parts[0].first_row,
        )


def cuts_second_score(width: int, label_headers: Sequence[Scalar] | None, probability_threshold: float) -> bool:
    """Whether two scores per record (no names for them, no label) are read as ``[P(0), P(1)]`` and the
    second cut at ``probability_threshold``, rather than labelled by their argmax.

    A bare scikit-learn model answers ``predict_proba``'s two columns: a config's ``probability_threshold``
    (0.6, say) must apply to P(1), not be lost to an argmax (a 0.5 cut). At 0.5 both give the same labels
    for probabilities (a tie goes to 0 either way), so the argmax, which also suits two scores that are not
    probabilities, is kept there."""
    return width == 2 and label_headers is None and probability_threshold != 0.5


def predicted_labels_for_bias(predictions: Predictions, probability_threshold: float = 0.5,
                              name: str = "predicted_label") -> pd.Series:
    """Predicted labels for post-training bias, as a Series (the bias layer types it like the label)."""
    if predictions.label is None and predictions.probability is not None and predictions.scores.shape[1] == 1:
        log.info("We assume a prediction above %.3f indicates 1 and below or equal indicates 0.",
                 probability_threshold)
    elif predictions.label is None and predictions.probability is not None and cuts_second_score(
            predictions.scores.shape[1], predictions.label_headers, probability_threshold):
        log.info("We assume a prediction above %.3f indicates 1 and below or equal indicates 0 (the model answers "
                 "two scores per record: the second, P(1), is cut at probability_threshold; set "
                 "predictor.probability to choose another, or predictor.label_headers to label by the highest)",
                 probability_threshold)
    return pd.Series(predictions.predicted_labels(probability_threshold), name=name)


def as_numbers(values: np.ndarray, what: str, first_row: int = 0, hint: str = "") -> np.ndarray:
    """``values`` as float64, or a ``UserError`` quoting the first value that is not a number."""
    if values.dtype.kind in "iufb":
        return values.astype(np.float64, copy=False)
    try:
        numbers: np.ndarray | None = values.astype(np.float64)
    except (TypeError, ValueError):
        numbers = None
    if numbers is not None and not np.isnan(numbers).any():
        return numbers
    # Find the culprit; this also catches None (JSON null), which astype quietly turns into NaN.
    for index, value in np.ndenumerate(values):
        try:
            float(value)
        except (TypeError, ValueError):
            raise UserError(f"Model output {what} for row {first_row + index[0]} is not a number: "
                            f"{_quote(value)}{hint}") from None
    assert numbers is not None
    return numbers  # NaN written as such by the model


def check_finite_outputs(values: np.ndarray, what: str, first_row: int = 0) -> None:
    """A ``UserError`` naming the rows (numbered from ``first_row``) whose model output ``values`` -- one
    row per record, numbers or labels -- hold NaN or an infinity. Text labels pass as they are."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
    elif values.dtype.kind == "O":
        bad = np.vectorize(_non_finite_number, otypes=[bool])(values) if values.size else np.zeros(values.shape, bool)
    else:
        return  # integers, booleans and strings are always finite
    rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
    if not len(rows):
        return
    shown = ", ".join(f"{first_row + int(row)} ({_first_non_finite(values[row])})" for row in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    raise UserError(f"The model returned NaN or infinite {what} for {len(rows)} of {len(values)} record(s), at "
                    f"dataset rows {shown}{more}. Post-training bias needs a finite value for every record: "
                    "fix the model's output for these rows")


def _non_finite_number(value: Any) -> bool:
    return isinstance(value, float | np.floating) and not np.isfinite(value)


def _first_non_finite(row_values: Any) -> str:
    for value in np.atleast_1d(row_values).tolist():
        if isinstance(value, float) and not np.isfinite(value):
            return repr(value)
    return "?"


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _label_key(value: Any) -> str:
    """Comparable form of a label: 1, 1.0, np.int64(1) and "1" all match."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _concat(fields: list[np.ndarray | None], parts: Sequence[Predictions], what: str) -> np.ndarray | None:
    present = [f for f in fields if f is not None]
    if not present:
        return None
    reference = present[0]
    for value, part in zip(fields, parts, strict=True):
        if value is None or value.ndim != reference.ndim or value.shape[1:] != reference.shape[1:]:
            def shape(v: np.ndarray | None) -> str:
                return "nothing" if v is None else "one value" if v.ndim == 1 else f"lists of {v.shape[1]} values"
            raise UserError(f"Model output {what} changed shape between requests: {shape(reference)} per record "
                            f"for row {parts[0].first_row}, {shape(value)} for row {part.first_row}")
    return np.concatenate(present)
