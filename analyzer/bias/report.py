"""Bias reports in Clarify's JSON shape (smclarify ``bias_report``) and the analysis.json section.

A report decides once which rows are sensitive / positive (``columns``), counts every facet group
in one pass (``counts``) and evaluates the requested metrics on the counts (``metrics``). Failures
the user can fix and that Clarify raises for the whole report (column typing, thresholds, no
positive prediction) become ``UserError``; a metric that cannot be computed becomes a per-metric
``error`` entry, as in Clarify.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from analyzer.bias import columns, metrics
from analyzer.bias.counts import (
    MAX_TABLE_CELLS,
    ContingencyTable,
    GroupSlots,
    Split,
    one_vs_all_slot,
    one_vs_all_slots,
)
from analyzer.bias.flip_test import DeferredFeatures
from analyzer.bias.metrics import Confusion
from analyzer.bias_registry import (
    BIAS_METRICS_BY_NAME,
    FEATURES,
    GROUPS,
    LABEL_DISTRIBUTIONS,
    OVERALL,
    POST_TRAINING,
    PRE_TRAINING,
    SIDES,
    BiasMetric,
    registered_names,
)
from analyzer.config.model import AnalysisConfig
from analyzer.data.column import Column
from analyzer.data.dataset import Dataset
from analyzer.errors import UserError
from analyzer.progress import progress

logger = logging.getLogger(__name__)

PROGRESS_GROUPS = 50  # facets with at least this many groups show progress (a bar, or a line every few seconds)
FT_NO_FEATURES = "FT needs the dataset's feature columns, which were not loaded for this analysis"


def metric_names(stage: str, methods: list[str]) -> list[str]:
    """The metrics a report computes, in output (alphabetical) order.

    ``methods`` is ``["all"]`` or a list of registered names; an unknown name raises Clarify's
    ``ValueError``.
    """
    registered = list(registered_names(stage))
    if list(methods) == ["all"]:
        return sorted(registered)
    if not set(methods) <= set(registered):
        raise ValueError(f"Invalid metric_name: metrics should be one of the registered metrics{registered}")
    return sorted(set(methods))


class LabelTypingError(UserError):
    """Clarify's post-training typing failure: its own words (``clarify``, which name neither column nor
    cause) and why, in a batch job's terms. The monitor tells the why in a window's terms instead."""

    def __init__(self, clarify: str, why: str):
        super().__init__(f"{clarify} ({why})")
        self.clarify = clarify


@contextmanager
def _fails_report(role: str, column: Column) -> Iterator[None]:
    """Turn a column problem that fails a Clarify report into a ``UserError`` naming the column."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{role} column '{column.name}': {error}") from error


class _Outcomes:
    """Per-row positive labels and predictions of a report, decided once for all facets."""

    def __init__(self, label: Column, label_values: list[Any], stage: str, predicted_label: Column | None):
        if not label_values:
            raise UserError(columns.NO_LABEL_VALUES)
        if stage == POST_TRAINING and predicted_label is None:
            raise UserError("predicted_label_column has to be provided for Post training metrics")
        with _fails_report("Label", label):
            typing = columns.type_label(label, list(label_values))
        self.value_or_threshold = typing.value_or_threshold
        self.label = label.row_mask(typing.positive)
        self.predicted = None
        if stage == POST_TRAINING:
            with _fails_report("Predicted label", predicted_label):
                try:
                    positive = columns.predicted_positive(predicted_label, typing)
                except ValueError as error:
                    why = columns.predicted_label_problem(str(error), label, predicted_label, list(label_values))
                    if why is None:
                        raise
                    raise LabelTypingError(f"Predicted label column '{predicted_label.name}': {error}", why) from None
                self.predicted = predicted_label.row_mask(positive)


class _Groups:
    """The group variable's slots, or why CDDL / CDDPL cannot use it."""

    def __init__(self, group: Column | None):
        self.slots: GroupSlots | None = None
        self.error: Exception | None = None
        if group is None or len(group) == 0:
            return
        try:
            self.slots = GroupSlots.from_column(group)
        except TypeError as error:  # values np.unique cannot order: Clarify's CDD fails the same way
            self.error = error

    def counts(self, split: Split, outcome_axis: int) -> metrics.GroupCounts | None:
        if self.error is not None:
            raise self.error
        return split.groups(outcome_axis) if self.slots is not None else None


def _classify_facet(facet: Column, facet_values: list[Any] | None) -> columns.DataType:
    with _fails_report("Facet", facet):
        data_type = columns.classify(facet, facet_values)
        if data_type is columns.DataType.CONTINUOUS:
            columns.numeric_thresholds(facet_values)
    return data_type


def _splits(facet: Column, facet_groups: list[columns.FacetGroup], outcomes: _Outcomes,
            groups: _Groups) -> Iterator[Split]:
    """Counts of each facet group: from one table of all facet values when there are several
    groups (one-vs-all), else from a table of the group's rows against the rest."""
    one_pass = len(facet_groups) > 1 and (
        ContingencyTable.cells_count(facet.nunique + 1, groups.slots) <= MAX_TABLE_CELLS)
    if one_pass:
        slots, n_slots = one_vs_all_slots(facet)
        table = ContingencyTable(slots, n_slots, outcomes.label, outcomes.predicted, groups.slots)
        for facet_group in facet_groups:
            yield table.split(one_vs_all_slot(facet_group))
        return
    for facet_group in facet_groups:
        table = ContingencyTable(facet_group.row_mask(facet), 2, outcomes.label, outcomes.predicted, groups.slots)
        yield table.split(1)


FlipTestInputs = tuple[pd.DataFrame, np.ndarray, np.ndarray]  # features, sensitive rows, predictions


def _metric_value(metric: BiasMetric, split: Split, groups: _Groups,
                  flip_test_inputs: Callable[[], FlipTestInputs]) -> float:
    """``metric``'s function called with the counts (or, for the Flip Test, the rows) it takes."""
    if metric.inputs == SIDES:
        return metric.function(split.a, split.d)
    if metric.inputs == LABEL_DISTRIBUTIONS:
        return metric.function(split.a.label_counts, split.d.label_counts)
    if metric.inputs == GROUPS:  # the stage's outcome: observed labels before training, predictions after
        return metric.function(groups.counts(split, outcome_axis=0 if metric.stage == PRE_TRAINING else 1))
    if metric.inputs == OVERALL:
        return metric.function(split.overall)
    if metric.inputs == FEATURES:
        return metric.function(*flip_test_inputs())
    raise AssertionError(f"metric {metric.name} takes unknown inputs {metric.inputs!r}")


def _json_value(value: float) -> float | int | str:
    """Clarify's JSON value: +/-inf as "Infinity" / "-Infinity", numbers as plain Python numbers."""
    if value in (metrics.INFINITY, -metrics.INFINITY):
        return str(value).replace("inf", "Infinity")
    return value if type(value) is int else float(value)


def _metric_entry(metric: BiasMetric, compute: Callable[[], float]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": metric.name, "description": metric.description}
    try:
        value = compute()
        entry["value"] = _json_value(value)
        if getattr(value, "lucent", None):  # Lucent's notes (a sampled Flip Test), beside Clarify's keys
            entry["lucent"] = value.lucent
    except Exception as error:  # Clarify reports any failure of one metric in place
        logger.info("%s metric failed: %s", metric.name, error)
        entry["value"] = None
        entry["error"] = str(error)
    return entry


def _facet_report(facet: Column, facet_values: list[Any] | None, data_type: columns.DataType,
                  outcomes: _Outcomes, names: list[str], groups: _Groups,
                  features: pd.DataFrame | None) -> list[dict[str, Any]]:
    started = time.perf_counter()
    with _fails_report("Facet", facet):
        facet_groups = columns.facet_groups(facet, data_type, facet_values)
    logger.info("Bias metrics %s for facet %s (%s, %d group(s): %s)", ",".join(names), facet.name,
                data_type.name, len(facet_groups), ", ".join(g.value_or_threshold for g in facet_groups[:20]))
    report = []
    # A facet of thousands of values (one-vs-rest groups) can take minutes, the Flip Test most: show it.
    shown = progress(f"Bias metrics for facet {facet.name}", len(facet_groups), "groups") \
        if len(facet_groups) >= PROGRESS_GROUPS else nullcontext()
    with shown as bar:
        for facet_group, split in zip(facet_groups, _splits(facet, facet_groups, outcomes, groups), strict=True):

            def flip_test_inputs(facet_group: columns.FacetGroup = facet_group) -> FlipTestInputs:
                if features is None:
                    raise ValueError(FT_NO_FEATURES)
                return features, facet_group.row_mask(facet), outcomes.predicted

            entries = [_metric_entry(metric, partial(_metric_value, metric, split, groups, flip_test_inputs))
                       for metric in (BIAS_METRICS_BY_NAME[name] for name in names)]
            report.append({"value_or_threshold": facet_group.value_or_threshold, "metrics": entries})
            if bar is not None:
                bar.update()
    logger.info("Bias metrics for facet %s computed in %.3f s", facet.name, time.perf_counter() - started)
    return report


def bias_report(
    facet: Column,
    facet_values: list[Any] | None,
    label: Column,
    label_values: list[Any],
    stage: str,
    methods: list[str],
    predicted_label: Column | None = None,
    group: Column | None = None,
    features: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Clarify's bias report of one facet (smclarify ``bias_report``), as JSON-ready dicts.

    Parameters
    ----------
    facet : the facet column.
    facet_values : the sensitive values, or a single threshold for a continuous facet; None or
        [] for one-vs-all (one entry per distinct value, "nan" included, in order of appearance).
    label, label_values : the observed label and its positive values or threshold.
    stage : ``"pre_training"`` or ``"post_training"``.
    methods : metric names, or ``["all"]``.
    predicted_label : required for post-training; typed with ``label_values``.
    group : the group variable of CDDL / CDDPL (None: those metrics report an error).
    features : the Flip Test's feature matrix (model features without the facet column).

    Returns
    -------
    ``[{"value_or_threshold": str, "metrics": [{"name", "description", "value"[, "error"]}]}]``
    with the metrics in alphabetical order, +/-inf as "Infinity" / "-Infinity", and a failed
    metric as ``value: None`` plus its ``error`` message.

    Raises
    ------
    UserError
        for what fails a whole Clarify report: no label values, a column Clarify cannot type or
        threshold, a predicted label typed differently from the label, no positive prediction.
    ValueError
        for an unknown stage or metric name.
    """
    names = metric_names(stage, methods)
    data_type = _classify_facet(facet, facet_values)
    outcomes = _Outcomes(label, label_values, stage, predicted_label)
    return _facet_report(facet, facet_values, data_type, outcomes, names, _Groups(group), features)


def _facet_column(dataset: Dataset, config: AnalysisConfig, position: int) -> Column:
    """The dataset column of the ``position``-th configured facet (by name, else config order)."""
    locator = config.facet[position].name_or_index
    if isinstance(locator, str) and locator in dataset.facets:
        return dataset.facets[locator]
    facet_columns = list(dataset.facets.values())
    if position < len(facet_columns):
        return facet_columns[position]
    raise UserError(f"Facet column {locator} is not present in the dataset")


def bias_analysis(dataset: Dataset, config: AnalysisConfig, stage: str) -> dict[str, Any]:
    """The ``pre_training_bias_metrics`` / ``post_training_bias_metrics`` section of analysis.json.

    Returns ``{"label": <label header>, "facets": {<facet name>: <bias_report>}, "label_value_or_threshold": str}``
    for every configured facet. The Flip Test uses the dataset's features without the facet column.
    """
    method = config.methods.pre_training_bias if stage == PRE_TRAINING else config.methods.post_training_bias
    if method is None:
        raise ValueError(f"{stage} bias is not configured")
    names = metric_names(stage, method.methods)
    if dataset.label is None:
        raise UserError("Bias metrics need the label column: set 'label' in the analysis config")
    if stage == POST_TRAINING and dataset.predicted_label is None:
        raise UserError("Post-training bias metrics need predicted labels: set 'predicted_label' in the "
                        "analysis config")
    started = time.perf_counter()
    label_values = list(config.label_values_or_threshold or [])
    outcomes = _Outcomes(dataset.label, label_values, stage, dataset.predicted_label)
    groups = _Groups(dataset.group)
    logger.info("%s bias over %d rows: label %s positive %s, group variable %s", stage, dataset.n_rows,
                dataset.label.name, outcomes.value_or_threshold,
                dataset.group.name if dataset.group is not None else None)
    facets: dict[str, list[dict[str, Any]]] = {}
    for position, facet_config in enumerate(config.facet):
        facet = _facet_column(dataset, config, position)
        features = None
        if dataset.features is not None and "FT" in names:
            features = dataset.features.drop(columns=[facet.name], errors="ignore")
        elif "FT" in names and getattr(dataset, "flip_test", None) is not None:  # the engine's (Spark) FT
            features = DeferredFeatures(facet.name, dataset.flip_test)
        values = list(facet_config.value_or_threshold) if facet_config.value_or_threshold else None
        data_type = _classify_facet(facet, values)
        facets[facet.name] = _facet_report(facet, values, data_type, outcomes, names, groups, features)
    logger.info("%s bias computed in %.3f s", stage, time.perf_counter() - started)
    return {"label": dataset.label.name, "facets": facets,
            "label_value_or_threshold": outcomes.value_or_threshold}


# --------------------------------------------------------------------------------------------
# Counts for resampling (the monitor's bootstrap intervals, analyzer/monitor/drift.py)
# --------------------------------------------------------------------------------------------


def _no_flip_test_inputs() -> FlipTestInputs:
    raise ValueError("FT needs the feature rows; it cannot be recomputed from counts")


@dataclass(frozen=True)
class FacetGroupCells:
    """One facet group's rows as counts: ``cells[side, group slot, label, prediction]``.

    Side 0 is a (every other row, rows with a missing facet value included), side 1 is d. Every
    count-based metric of the group is a function of these cells (``metric_from_cells``), so a
    bootstrap can redraw the cells (a multinomial over them is a row bootstrap) instead of the rows.
    """

    facet: str
    value_or_threshold: str
    cells: np.ndarray


@dataclass(frozen=True)
class StageCells:
    """What ``bias_analysis`` counts for one stage, facet group by facet group, in report order."""

    groups: _Groups  # the group variable (CDDL / CDDPL), shared by every facet group
    facet_groups: list[FacetGroupCells]


def stage_cells(dataset: Dataset, config: AnalysisConfig, stage: str) -> StageCells:
    """The counts behind ``bias_analysis(dataset, config, stage)``: the same rows, facet groups and
    positive labels / predictions, decided by the same code, before any metric is computed."""
    if dataset.label is None:
        raise UserError("Bias metrics need the label column: set 'label' in the analysis config")
    outcomes = _Outcomes(dataset.label, list(config.label_values_or_threshold or []), stage,
                         dataset.predicted_label)
    groups = _Groups(dataset.group)
    cells: list[FacetGroupCells] = []
    for position, facet_config in enumerate(config.facet):
        facet = _facet_column(dataset, config, position)
        values = list(facet_config.value_or_threshold) if facet_config.value_or_threshold else None
        data_type = _classify_facet(facet, values)
        with _fails_report("Facet", facet):
            facet_groups = columns.facet_groups(facet, data_type, values)
        for facet_group, split in zip(facet_groups, _splits(facet, facet_groups, outcomes, groups), strict=True):
            sides = np.stack([split.cells_all - split.cells_d, split.cells_d])
            cells.append(FacetGroupCells(facet.name, facet_group.value_or_threshold, sides))
    return StageCells(groups, cells)


def split_from_cells(cells: np.ndarray) -> Split:
    """The ``Split`` of ``cells[side, group slot, label, prediction]`` (side 0 = a, 1 = d)."""
    cells_d = cells[1]
    cells_all = cells[0] + cells_d
    return Split(Confusion.from_cells(cells[0].sum(axis=0)), Confusion.from_cells(cells_d.sum(axis=0)),
                 cells_d, cells_all)


def metric_from_split(name: str, split: Split, groups: _Groups) -> float:
    """Metric ``name`` of one facet group's counts, by the function ``bias_analysis`` calls. Raises what the
    metric raises (ValueError when it cannot be computed); the Flip Test, which needs rows, always raises."""
    return _metric_value(BIAS_METRICS_BY_NAME[name], split, groups, _no_flip_test_inputs)
