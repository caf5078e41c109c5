"""Randomised comparison of Lucent's bias reports with smclarify 0.5 (the oracle), to 1e-9.

Each seed builds a small random frame (facet, label, prediction, group and feature columns of
varied kinds, with missing values) and a configuration, runs both implementations for pre- and
post-training with all metrics, and requires the same entries, values, per-metric errors and,
when smclarify fails the whole report, a ``UserError`` carrying smclarify's message.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from analyzer.errors import UserError
from tests.test_bias_helpers import assert_same_report, lucent_report, smclarify_report

pytestmark = pytest.mark.oracle  # a missing smclarify fails the run (tests/conftest.py)

FACET_KINDS = ("str", "str_nan", "int_low", "int", "float", "float_nan", "bool", "bool_nan", "category")
LABEL_KINDS = ("str", "str_nan", "int01", "int012", "float", "bool", "str_int")


def _facet(rng: np.random.Generator, kind: str, n: int) -> tuple[pd.Series, list | None]:
    """A facet column and its configured values (None: one-vs-all)."""
    if kind in ("str", "str_nan", "category"):
        values = rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
        if kind == "str_nan":
            values[rng.random(n) < 0.2] = np.nan
        series = pd.Series(values, dtype="category" if kind == "category" else object)
        choice = rng.integers(4)
        config = [None, ["a"], ["b", "c"], ["z"]][choice]
        return series, config
    if kind == "int_low":  # categorical int: low uniqueness needs many rows, so pin two values
        series = pd.Series(rng.choice([1, 2], size=n))
        return series, [None, [1, 2], [2], ["1", "2"]][rng.integers(4)]
    if kind == "int":
        series = pd.Series(rng.integers(0, 10, size=n))
        return series, [[4], ["3"], [9], [20]][rng.integers(4)]
    if kind in ("float", "float_nan"):
        series = pd.Series(rng.normal(size=n).round(2))
        if kind == "float_nan":
            series[rng.random(n) < 0.2] = np.nan
        return series, [[0.0], [0.5], ["0.1"], [5.0], [float(series.max())]][rng.integers(5)]
    if kind == "bool":
        return pd.Series(rng.random(n) < 0.5), [None, [True], [False], ["True"]][rng.integers(4)]
    values = (rng.random(n) < 0.5).astype(object)  # bool_nan
    values[rng.random(n) < 0.2] = None
    return pd.Series(values), [None, [True]][rng.integers(2)]


def _outcome(rng: np.random.Generator, kind: str, n: int, flip: float = 0.0) -> pd.Series:
    if kind in ("str", "str_nan"):
        values = rng.choice(["p", "n", "m"], size=n, p=[0.45, 0.45, 0.1]).astype(object)
        if kind == "str_nan":
            values[rng.random(n) < 0.15] = np.nan
        return pd.Series(values)
    if kind == "int01":
        return pd.Series(rng.integers(0, 2, size=n))
    if kind == "int012":
        return pd.Series(rng.integers(0, 3, size=n))
    if kind == "float":
        return pd.Series(rng.random(n).round(2))
    if kind == "bool":
        return pd.Series(rng.random(n) < 0.5)
    return pd.Series(rng.choice(["0", "1", "2"], size=n))  # str_int


def _label_values(rng: np.random.Generator, kind: str) -> list:
    options = {
        "str": [["p"], ["p", "m"], ["x"]],
        "str_nan": [["p"], ["n", "m"]],
        "int01": [[1], [0], ["1"], [0, 1]],
        "int012": [[1], [1, 2], ["2", "1"]],
        "float": [[0.5], ["0.3"], [0.99]],
        "bool": [[True], [False], ["True"]],
        "str_int": [["1"], [1], ["1", "2"], [1, 2]],
    }[kind]
    return options[rng.integers(len(options))]


def _group(rng: np.random.Generator, n: int) -> pd.Series | None:
    kind = rng.integers(5)
    if kind == 0:
        return None
    if kind == 1:
        return pd.Series(rng.choice(["g1", "g2", "g3"], size=n))
    if kind == 2:
        return pd.Series(rng.integers(0, 12, size=n))  # many groups: pairwise summation order matters
    if kind == 3:
        values = rng.integers(0, 11, size=n).astype(float)  # > 8 groups and a NaN slot
        values[rng.random(n) < 0.2] = np.nan
        return pd.Series(values)
    values = rng.choice(["g1", "g2"], size=n).astype(object)
    values[rng.random(n) < 0.3] = np.nan
    return pd.Series(values)


def random_case(seed: int, max_rows: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, max_rows + 1))
    facet_kind = FACET_KINDS[seed % len(FACET_KINDS)]
    label_kind = LABEL_KINDS[(seed // len(FACET_KINDS)) % len(LABEL_KINDS)]
    facet, facet_values = _facet(rng, facet_kind, n)
    label = _outcome(rng, label_kind, n)
    # Predictions: mostly the label's kind (sometimes another kind, to exercise type mismatches).
    predicted_kind = label_kind if rng.random() < 0.85 else LABEL_KINDS[rng.integers(len(LABEL_KINDS))]
    predicted = label.copy() if rng.random() < 0.3 and predicted_kind == label_kind else _outcome(rng, predicted_kind, n)
    if predicted_kind == label_kind and rng.random() < 0.5:  # agree often with the label
        keep = rng.random(n) < 0.6
        predicted = predicted.where(~keep, label)
    frame = {"facet": facet, "y": label, "yhat": predicted, "x1": rng.normal(size=n).round(1),
             "x2": rng.integers(0, 3, size=n)}
    if rng.random() < 0.3:
        frame["x3"] = rng.random(n) < 0.5
    if rng.random() < 0.1:
        frame["s"] = rng.choice(["u", "v"], size=n)
    return {"df": pd.DataFrame(frame), "facet_values": facet_values, "label_values": _label_values(rng, label_kind),
            "group": _group(rng, n)}


def compare(case: dict, stage: str) -> str:
    """Run both and assert they agree; return how the case ended (for coverage checks)."""
    kwargs = dict(df=case["df"], facet="facet", facet_values=case["facet_values"], label="y",
                  label_values=case["label_values"], stage=stage, predicted="yhat", group=case["group"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = smclarify_report(**kwargs)
    except UnboundLocalError:  # smclarify crashes when a facet value cannot be converted
        with pytest.raises(UserError):
            lucent_report(**kwargs)
        return "crash"
    except Exception as error:  # noqa: BLE001 - any report-level failure of the oracle
        with pytest.raises(UserError) as raised:
            lucent_report(**kwargs)
        assert str(error) in str(raised.value)
        return "report error"
    assert_same_report(lucent_report(**kwargs), theirs)
    return "report"


@pytest.mark.parametrize("seed", range(300))
def test_random_reports_match_smclarify(seed):
    case = random_case(seed)
    outcomes = {compare(case, stage) for stage in ("pre_training", "post_training")}
    assert outcomes <= {"report", "report error", "crash"}


@pytest.mark.parametrize("seed", range(1000, 1030))
def test_random_larger_reports_match_smclarify(seed):
    """Up to 300 rows: five-neighbour Flip Tests, many groups, longer pairwise sums."""
    case = random_case(seed, max_rows=300)
    for stage in ("pre_training", "post_training"):
        compare(case, stage)


def test_random_cases_cover_reports_and_errors():
    """The seeds above exercise full reports and report-level errors."""
    outcomes = [compare(random_case(seed), "post_training") for seed in range(0, 300, 5)]
    assert outcomes.count("report") >= 30 and outcomes.count("report error") >= 5
