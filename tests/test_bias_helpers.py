"""Shared helpers of the bias tests: run Lucent and smclarify (the test oracle) on the same frame.

smclarify is imported lazily and only here and in the tests: analyzer code never imports it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import bias_report
from analyzer.bias.counts import ContingencyTable, GroupSlots, Split
from analyzer.data.column import Column


def lucent_report(df: pd.DataFrame, facet: str, facet_values: list | None, label: str, label_values: list,
                  stage: str, methods: list[str] | None = None, predicted: str | None = None,
                  group: pd.Series | None = None) -> list[dict]:
    """Lucent's report with smclarify's conventions: FT features = df minus facet/label/prediction."""
    features = df.drop(columns=[c for c in (facet, label, predicted) if c is not None and c in df.columns])
    return bias_report(
        Column.from_series(df[facet]), copy.deepcopy(facet_values), Column.from_series(df[label]),
        copy.deepcopy(label_values), stage, methods or ["all"],
        Column.from_series(df[predicted]) if predicted is not None else None,
        Column.from_series(group) if group is not None else None, features)


def smclarify_report(df: pd.DataFrame, facet: str, facet_values: list | None, label: str, label_values: list,
                     stage: str, methods: list[str] | None = None, predicted: str | None = None,
                     group: pd.Series | None = None) -> list[dict]:
    """smclarify 0.5's ``bias_report`` on the same inputs (it mutates value lists: pass copies)."""
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType
    from smclarify.bias.report import bias_report as smclarify_bias_report

    return smclarify_bias_report(
        df, FacetColumn(facet, copy.deepcopy(facet_values)),
        LabelColumn(label, df[label], copy.deepcopy(label_values)), StageType(stage),
        LabelColumn(predicted, df[predicted]) if predicted is not None else None,
        metrics=methods or ["all"], group_variable=group)


def values_close(ours: Any, theirs: Any, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    if isinstance(theirs, str) or theirs is None or isinstance(ours, str) or ours is None:
        return ours == theirs
    if math.isnan(theirs):
        return math.isnan(ours)
    return math.isclose(ours, theirs, rel_tol=rel, abs_tol=abs_)


def assert_same_report(ours: list[dict], theirs: list[dict], rel: float = 1e-9) -> None:
    """Same entries, names, descriptions, errors, and values within ``rel``."""
    assert [e["value_or_threshold"] for e in ours] == [e["value_or_threshold"] for e in theirs]
    for our_entry, their_entry in zip(ours, theirs, strict=True):
        assert list(our_entry) == ["value_or_threshold", "metrics"]
        assert [m["name"] for m in our_entry["metrics"]] == [m["name"] for m in their_entry["metrics"]]
        for our_metric, their_metric in zip(our_entry["metrics"], their_entry["metrics"], strict=True):
            where = f"{our_entry['value_or_threshold']} {our_metric['name']}: {our_metric} != {their_metric}"
            assert list(our_metric) == list(their_metric), where
            assert our_metric["description"] == their_metric["description"], where
            assert our_metric.get("error") == their_metric.get("error"), where
            assert values_close(our_metric["value"], their_metric["value"], rel), where


def metric_values(report_entry: dict) -> dict[str, Any]:
    """``{name: value or error}`` of one report entry."""
    return {m["name"]: m.get("error", m["value"]) for m in report_entry["metrics"]}


def split_of(sensitive, label, predicted=None, group=None) -> Split:
    """Counts of one sensitive group from per-row sequences (group: any Series-able values)."""
    sensitive = np.asarray(sensitive, dtype=bool)
    slots = GroupSlots.from_column(Column.from_series(pd.Series(group))) if group is not None else None
    table = ContingencyTable(sensitive.astype(np.int64), 2, np.asarray(label, dtype=bool),
                             None if predicted is None else np.asarray(predicted, dtype=bool), slots)
    return table.split(np.array([False, True]))


def words(text: str) -> list[str]:
    """Whitespace-separated vector literals, as the spec writes them."""
    return text.split()


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)

