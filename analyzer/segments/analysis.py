"""Bias metrics and global SHAP per segment: ``analysis.json``'s ``lucent.segments`` (docs/segments.md).

A segment is a set of rows. Its bias metrics are ``bias_analysis`` run on the dataset restricted to
those rows: each role ``Column`` keeps only the segment's codes and distinct values (in the order they
first appear there), so the segment is typed, grouped and counted exactly as a dataset holding only
its rows would be, by the same code. Its global SHAP values are the job's ``agg_method`` over the local
values the job already computed for its records (``aggregate_values``); no model is called again.

Per-segment problems are reported in the segment's entry, never raised: an empty segment gets an
``error`` instead of metrics, and what fails a whole bias report (no positive prediction in the
segment, a column Clarify cannot type there) becomes that stage's ``error``. Metrics that cannot be
computed (a facet value absent from the segment) carry their own ``error``, as in Clarify.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.bias import bias_analysis
from analyzer.bias_registry import POST_TRAINING, PRE_TRAINING
from analyzer.config import AnalysisConfig
from analyzer.config.model import Facet, Locator, SegmentConfig
from analyzer.data import Column, Dataset, load_dataset
from analyzer.data.column import MISSING
from analyzer.data.locate import suggest
from analyzer.errors import UserError
from analyzer.explain.aggregate import aggregate_values
from analyzer.explain.kernel_shap import Explanation
from analyzer.segments.rows import Segment, Segmentation, segmentation, segmentation_problems

log = logging.getLogger(__name__)

STAGES = ((POST_TRAINING, "post_training_bias_metrics"), (PRE_TRAINING, "pre_training_bias_metrics"))
EMPTY_SEGMENT = "the segment has no rows: no metric can be computed"
NO_LOCAL_SHAP = ("SHAP per segment is computed from tabular explanations; this job's explanations (text) "
                 "have no per-segment values")


# -- columns -----------------------------------------------------------------------------------------

def _column_name(entry: SegmentConfig, index: int, dataset: Dataset) -> str:
    """The header an entry's ``name_or_index`` designates; ``UserError`` naming the key otherwise."""
    key = f"segment_config[{index}].name_or_index"
    locator: Locator = entry.name_or_index
    if isinstance(locator, int) and not isinstance(locator, bool):
        if 0 <= locator < len(dataset.headers):
            return dataset.headers[locator]
        raise UserError(f"{key}: column index {locator} is out of range: the dataset has {len(dataset.headers)} "
                        "columns")
    if locator in dataset.headers:
        return str(locator)
    raise UserError(f"{key}: {locator!r} is not a column of the dataset (columns: {', '.join(dataset.headers)})."
                    f"{suggest(str(locator), dataset.headers)}")


def _loaded_column(config: AnalysisConfig, dataset: Dataset, name: str) -> Column | None:
    """The column ``name`` of the main dataset if the job already holds it: a role column read from the main
    dataset, else a loaded feature (role columns first: a feature frame may be a stand-in of codes)."""
    roles = [dataset.label, dataset.joinsource]
    if config.predicted_label_dataset_uri is None:
        roles.append(dataset.predicted_label)
    if config.facet_dataset_uri is None:
        roles += [*dataset.facets.values(), dataset.group]
    for column in roles:
        if column is not None and column.name == name:
            return column
    if dataset.features is not None and name in dataset.features.columns and name in dataset.feature_names:
        return Column.from_series(dataset.features[name], name)
    return None


def segment_columns(config: AnalysisConfig, dataset: Dataset, base_dir: Path | None) -> dict[str, Column]:
    """Every column ``segment_config`` names, by header. Columns the job did not load are read from the
    dataset (``dataset.source``) in one more pass over the main dataset, reading only those columns."""
    names = [_column_name(entry, index, dataset) for index, entry in enumerate(config.segment_config or [])]
    columns = {}
    for name in dict.fromkeys(names):
        column = _loaded_column(config, dataset, name)
        if column is not None:
            columns[name] = column
    missing = [name for name in dict.fromkeys(names) if name not in columns]
    if missing:
        columns.update(_read_columns(config, dataset, missing, base_dir))
    return columns


def _read_columns(config: AnalysisConfig, dataset: Dataset, names: list[str], base_dir: Path | None) -> dict[str, Column]:
    """The main dataset's ``names`` columns, read as facets of a config without side datasets (so that they
    are located in the main dataset by the loader's own rules)."""
    started = time.perf_counter()
    side_labels = config.predicted_label_dataset_uri is not None
    reader = replace(config, facet=[Facet(name) for name in names], facet_dataset_uri=None, facet_headers=None,
                     group_variable=None, predicted_label_dataset_uri=None, predicted_label_headers=None,
                     predicted_label=None if side_labels else config.predicted_label, segment_config=None)
    try:
        extra = load_dataset(reader, Path(dataset.source), base_dir=base_dir)
    except UserError as error:
        raise UserError(f"segment_config: cannot read the segment column(s) {names} from {dataset.source}: "
                        f"{error}") from None
    if extra.n_rows != dataset.n_rows:
        raise UserError(f"segment_config: {dataset.source} now has {extra.n_rows} rows, not the {dataset.n_rows} "
                        "read before; was it changed during the job?")
    log.info("Read segment column(s) %s in %.2f s", ", ".join(names), time.perf_counter() - started)
    return {name: extra.facets[name] for name in names}


class SegmentProblems(UserError):
    """Everything wrong with ``segment_config`` against the data, one line per problem (``problems``)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def segmentations(config: AnalysisConfig, dataset: Dataset, base_dir: Path | None) -> list[Segmentation]:
    """The segments of every ``segment_config`` entry over ``dataset``. Raises ``SegmentProblems`` listing
    every problem (unknown column, an item the column cannot take, overlapping lists)."""
    if getattr(dataset, "weights", None) is not None:  # analyzer.engines.GroupedRows: rows grouped by Spark
        raise UserError("segment_config: segments are computed on the local engine only for now (the Spark "
                        "engine groups the rows by their role columns, and a segment column is not one of "
                        "them); run this job without --engine spark / LUCENT_ENGINE=spark")
    entries = config.segment_config or []
    problems = []
    for index, entry in enumerate(entries):
        try:
            _column_name(entry, index, dataset)
        except UserError as error:
            problems.append(str(error))
    if problems:
        raise SegmentProblems(problems)
    columns = segment_columns(config, dataset, base_dir)
    named = [(index, entry, columns[_column_name(entry, index, dataset)]) for index, entry in enumerate(entries)]
    problems = [p for index, entry, column in named for p in segmentation_problems(entry, index, column)]
    if problems:
        raise SegmentProblems(problems)
    return [segmentation(entry, index, column) for index, entry, column in named]


def check_segment_inputs(config: AnalysisConfig, dataset: Dataset, base_dir: Path | None) -> list[str]:
    """What ``lucent validate`` reports about ``segment_config`` once the data is read: every problem."""
    if not config.segment_config:
        return []
    try:
        segmentations(config, dataset, base_dir)
    except SegmentProblems as error:
        return error.problems
    except UserError as error:
        return [str(error)]
    return []


# -- restriction -------------------------------------------------------------------------------------

def restrict_column(column: Column, rows: np.ndarray) -> Column:
    """``column`` on ``rows`` only, as if only those rows had been read: its distinct values are the ones
    present there, in the order they first appear there (the dtype stays the whole column's)."""
    codes = column.codes[rows]
    present = codes[codes != MISSING]
    found, first = np.unique(present, return_index=True)
    order = found[np.argsort(first, kind="stable")]
    remap = np.full(column.nunique + 1, MISSING, dtype=codes.dtype)  # the last slot answers code -1
    remap[order] = np.arange(len(order), dtype=codes.dtype)
    return Column(column.name, column.uniques.take(order).reset_index(drop=True), remap[codes])


def restrict_dataset(dataset: Dataset, rows: np.ndarray, *, features: bool) -> Dataset:
    """The dataset of ``rows`` only (role columns restricted; the feature rows only when ``features``)."""
    def cut(column: Column | None) -> Column | None:
        return restrict_column(column, rows) if column is not None else None

    frame = None
    if features and dataset.features is not None:
        frame = dataset.features.iloc[rows].reset_index(drop=True)
    return Dataset(source=dataset.source, n_rows=len(rows), headers=dataset.headers,
                   feature_names=dataset.feature_names, label=cut(dataset.label),
                   predicted_label=cut(dataset.predicted_label),
                   facets={name: restrict_column(column, rows) for name, column in dataset.facets.items()},
                   group=cut(dataset.group), joinsource=cut(dataset.joinsource), features=frame)


def segment_bias(config: AnalysisConfig, dataset: Dataset, stage: str) -> dict[str, Any]:
    """``bias_analysis`` of one segment's dataset; what fails the whole report becomes ``{"error": ...}``."""
    try:
        return bias_analysis(dataset, config, stage)
    except UserError as error:
        return {"error": str(error)}


def segment_shap(values: np.ndarray, rows: np.ndarray, agg_method: str, names: list[str], label_keys: list[str],
                 expected_value: np.ndarray) -> dict[str, Any]:
    """``kernel_shap`` of one segment: ``agg_method`` over its records' local values (``(n, M, k)``)."""
    glob = aggregate_values(values[rows], agg_method)
    return {key: {"global_shap_values": dict(zip(names, glob[:, c].tolist(), strict=True)),
                  "expected_value": float(expected_value[c])}
            for c, key in enumerate(label_keys)}


# -- the section -------------------------------------------------------------------------------------

class SegmentAnalysis:
    """The per-segment results of one job.

    ``prepare`` decides the segments before any analysis runs (bad segment values fail the job early);
    the explanation job hands its local SHAP values to ``keep_local_shap``; ``section`` computes the bias
    metrics per segment and returns ``lucent.segments``.
    """

    def __init__(self, config: AnalysisConfig, groups: list[Segmentation]):
        self.config = config
        self.groups = groups
        self.local_shap: tuple[np.ndarray, list[str], list[str], np.ndarray] | None = None

    @classmethod
    def prepare(cls, config: AnalysisConfig, dataset: Dataset, base_dir: Path | None) -> SegmentAnalysis:
        started = time.perf_counter()
        groups = segmentations(config, dataset, base_dir)
        for group in groups:
            log.info("Segments of %s (column %s): %s (%.2f s)", group.config_name, group.column,
                     ", ".join(f"{s.name}: {len(s.rows)} rows" for s in group.segments), time.perf_counter() - started)
        return cls(config, groups)

    def keep_local_shap(self, local: Explanation, names: list[str], label_keys: list[str]) -> None:
        """Keep the job's local SHAP values (all records, in dataset order) for the per-segment aggregates."""
        self.local_shap = (local.values, list(names), list(label_keys), local.expected_value)

    def section(self, dataset: Dataset) -> list[dict[str, Any]]:
        """``lucent.segments``: one entry per ``segment_config`` entry, one per segment inside it."""
        started = time.perf_counter()
        out = []
        for group in self.groups:
            entry = self.config.segment_config[group.index]  # type: ignore[index]
            out.append({"config_name": group.config_name, "name_or_index": entry.name_or_index,
                        "column": group.column,
                        "segments": [self._segment(dataset, segment) for segment in group.segments]})
        log.info("Analyses of %d segment(s) done in %.2f s", sum(len(g.segments) for g in self.groups),
                 time.perf_counter() - started)
        return out

    def _segment(self, dataset: Dataset, segment: Segment) -> dict[str, Any]:
        result: dict[str, Any] = {"name": segment.name, "values": segment.values, "n_rows": int(len(segment.rows))}
        if len(segment.rows) == 0:
            result["error"] = EMPTY_SEGMENT
            return result
        methods = self.config.methods
        stages = [(stage, key) for stage, key in STAGES if getattr(methods, f"{stage}_bias") is not None]
        if stages:
            flip_test = any("FT" in getattr(methods, f"{stage}_bias").methods for stage, _ in stages)
            rows = restrict_dataset(dataset, segment.rows, features=flip_test)
            for stage, key in stages:
                result[key] = segment_bias(self.config, rows, stage)
        if methods.shap is not None:
            if self.local_shap is None:
                result["explanations"] = {"error": NO_LOCAL_SHAP}
            else:
                values, names, label_keys, expected = self.local_shap
                result["explanations"] = {"kernel_shap": segment_shap(values, segment.rows, methods.shap.agg_method,
                                                                      names, label_keys, expected)}
        return result
