"""The analysis itself, in the order data flows: config -> data -> bias -> results.

This module knows nothing about processing-job folders, exit codes or message files (that is
``container.job``); it takes a parsed config and a dataset path and returns ``analysis.json``'s
content, writing any extra files through an ``OutputStaging``.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analyzer import __version__, media
from analyzer.bias import bias_analysis
from analyzer.bias.counts import count_cells, weighted_rows
from analyzer.config import AnalysisConfig, unsupported_methods
from analyzer.data import Column, Dataset, load_dataset
from analyzer.data.time_series import TimeSeriesDataset
from analyzer.engines import GroupedRows, counted_rows, job_engine, row_weights
from analyzer.errors import UserError
from analyzer.explain.asymmetric_job import check_time_series_inputs, time_series_explanations
from analyzer.explain.checkpoint_store import CheckpointStore
from analyzer.explain.job import SHAP_DIR, check_explain_inputs, explain_dataset
from analyzer.output import ANALYSIS_FILE, OutputStaging
from analyzer.predict import ModelEndpoint, predicted_labels_for_bias
from analyzer.progress import progress
from analyzer.report.summary import DISTRIBUTION_BARS, JobSummary, other_values
from analyzer.segments.analysis import SegmentAnalysis, check_segment_inputs

if TYPE_CHECKING:
    from analyzer.report.process import ReportProcess

log = logging.getLogger(__name__)

STAGES = (  # Clarify computes (and lists) post-training before pre-training
    ("post_training", "post_training_bias_metrics", "Calculating post-training bias metrics"),
    ("pre_training", "pre_training_bias_metrics", "Calculating pre-training bias metrics"),
)


def check_supported(config: AnalysisConfig) -> None:
    """Refuse, up front and all at once, the parts of a config this version cannot run."""
    reasons = unsupported_methods(config)
    if reasons:
        raise UserError("; ".join(reasons))


def needs_model(config: AnalysisConfig) -> bool:
    """Whether the job must call a model: explanations, or post-training bias without predicted labels."""
    if config.methods.shap is not None or config.methods.pdp is not None:
        return True
    if config.methods.asymmetric_shapley_value is not None:  # time series: forecasts
        return True
    return (config.methods.post_training_bias is not None and config.predicted_label is None
            and config.predicted_label_dataset_uri is None)


def writes_report(config: AnalysisConfig) -> bool:
    """Whether the job writes the report: ``methods.report`` is there (the SDK always adds it), except for
    time-series explanations, which Clarify writes no report for (contract: "Not supported for time
    series"; the key is accepted and ignored, as the SDK sends it)."""
    return config.methods.report is not None and config.methods.asymmetric_shapley_value is None


def needs_features(config: AnalysisConfig) -> bool:
    """Whether the model feature matrix must be loaded (model calls, explanations, and the Flip Test)."""
    post = config.methods.post_training_bias
    return needs_model(config) or bool(post and "FT" in post.methods)


def engine_predicts(config: AnalysisConfig) -> bool:
    """Whether the job's engine makes the post-training predictions next to its counts (Spark: a stage
    calling the model before the GROUP BY), which it does when they are why the model is needed: no
    explanations, no Flip Test (they read the feature matrix on this machine)."""
    post = config.methods.post_training_bias
    methods = config.methods
    only_predictions = (needs_model(config) and methods.shap is None and methods.pdp is None
                        and methods.asymmetric_shapley_value is None and not (post and "FT" in post.methods))
    return only_predictions and callable(getattr(job_engine(config), "predict_groups", None))


def engine_flip_test(config: AnalysisConfig) -> bool:
    """Whether the job's engine computes the Flip Test where the rows are (Spark: CSV and Parquet,
    docs/spark.md "Flip Test"); else the feature matrix is read on this machine for it."""
    return job_engine(config).name != "local" and config.dataset_type in (media.CSV, media.PARQUET)


def engine_reads_rows(config: AnalysisConfig) -> bool:
    """Whether only the job's engine reads the dataset's rows, this machine getting counts and values:
    then the dataset may be a URI only the engine can read (Spark: ``s3a://``, ``hdfs://``)."""
    if not needs_features(config) or engine_predicts(config):
        return True
    return not needs_model(config) and engine_flip_test(config)


def warn_unmatched_label_headers(config: AnalysisConfig) -> None:
    """A WARNING when the model's predicted labels are to be named by ``predictor.label_headers`` (its
    scores, one per label: spec 5.3 rule 3) and no header is a positive label value: every prediction would
    be negative, and post-training bias then fails with Clarify's "No Label values are present in the
    predicted Label Column", which does not say why. (A model answering one score is cut at the threshold
    instead, so this is a warning, in the run and in ``lucent validate``.)"""
    predictor, positives = config.predictor, config.label_values_or_threshold
    if (config.methods.post_training_bias is None or predictor is None or not predictor.label_headers
            or predictor.label is not None or not positives):
        return
    if {str(header) for header in predictor.label_headers} & {str(value) for value in positives}:
        return
    log.warning("predictor.label_headers %s holds none of label_values_or_threshold %s: a model answering one "
                "score per label gets label_headers[argmax] as its predicted label, which would never be positive "
                "(post-training bias would fail). List the positive value among label_headers as the label "
                "column has it (%s), or name the labels as the data does", list(predictor.label_headers),
                list(positives), ", ".join(repr(value) for value in positives))


def predicted_label_column(config: AnalysisConfig, dataset: Dataset, endpoint: ModelEndpoint) -> Column:
    """The model's predicted labels for every row, by Clarify's rules (spec section 5.3)."""
    warn_unmatched_label_headers(config)
    if isinstance(dataset, GroupedRows):  # rows grouped by the engine: it predicts them there and regroups
        return job_engine(config).predict_groups(config, dataset, endpoint)  # type: ignore[attr-defined]
    log.info("Getting predictions from the endpoint")
    started = time.perf_counter()
    with endpoint.client() as client, progress("Predictions", total=dataset.n_rows, unit="rows") as bar:
        predictions = client.predict(dataset.features, progress=bar)
    labels = predicted_labels_for_bias(predictions, config.probability_threshold)
    log.info("Got %d predictions in %.2f s", len(labels), time.perf_counter() - started)
    return Column.from_series(labels, "predicted_label")


def load_job_dataset(config: AnalysisConfig, dataset_path: Path | str, base_dir: Path | None = None) -> Dataset:
    """Read the dataset, with the feature matrix only when an analysis will use it.

    ``base_dir``: the config file's folder, which relative paths in the config are taken from.
    ``dataset_path``: a local path, or (Spark engine) a URI such as ``s3a://`` that Spark reads.
    """
    started = time.perf_counter()
    if config.dataset_type == media.IMAGE:  # a folder of image files: analyzer/data/images.py
        from analyzer.data.images import image_dataset

        return image_dataset(dataset_path)
    load = functools.partial(load_dataset, config, dataset_path, base_dir=base_dir)
    if needs_features(config) and not needs_model(config):  # only the Flip Test wants the features
        engine = job_engine(config)
        dataset = engine.count_table(config, dataset_path, base_dir=base_dir) if engine_flip_test(config) else load()
        blocked = flip_test_blockers(dataset)
        if blocked is not None:
            log.info("Not loading the feature matrix: the Flip Test does not support non-numeric columns and "
                     "%s are features", ", ".join(blocked.columns))
            dataset.features = blocked
        elif isinstance(dataset, GroupedRows):  # the engine's Flip Test: the feature rows stay in the cluster
            dataset.flip_test = functools.partial(engine.flip_test, config, dataset_path, dataset)
        else:
            dataset = load(need_features=True)
    elif needs_features(config) and not engine_predicts(config):
        if job_engine(config).name == "spark":  # the user asked for Spark: say where the rows are read
            on_spark = [what for what, method in (("SHAP shards", config.methods.shap),
                                                  ("PDP predictions", config.methods.pdp)) if method is not None]
            log.info("Spark engine: the dataset is read on this machine (explanations and the Flip Test with "
                     "model predictions need the feature rows here); %s", " and ".join(on_spark) + " run as Spark "
                     "tasks" if on_spark else "nothing else in this job uses Spark: no Spark session starts")
        dataset = load(need_features=True)
    else:  # role columns only: counted by the job's engine (Spark: one GROUP BY, the rows stay in the cluster;
        # predictions the model must make are made there too, see predicted_label_column)
        dataset = job_engine(config).count_table(config, dataset_path, base_dir=base_dir)
    log.info("Dataset ready: %d rows, %d features, facets %s (%.2f s)", dataset.n_rows,
             len(dataset.feature_names), ", ".join(dataset.facets) or "none", time.perf_counter() - started)
    return dataset


def flip_test_blockers(dataset: Dataset) -> pd.DataFrame | None:
    """When role columns already show the Flip Test must fail for every facet, a cheap stand-in feature
    frame that makes it fail the same way; else None.

    FT refuses non-numeric feature columns (Clarify: "FlipTest does not support non-numeric columns").
    Facets and the group variable are often string features, and their dtypes are known before the
    feature matrix is read; skipping that read keeps a 10M-row bias job within its memory budget.
    """
    roles = {column.name: column for column in (*dataset.facets.values(), dataset.group) if column is not None}
    text = {name: column for name, column in roles.items()
            if name in dataset.feature_names and column.dtype.kind not in "biuf"}
    if not dataset.facets or not all(set(text) - {facet} for facet in dataset.facets):
        return None
    return pd.DataFrame({name: pd.Categorical.from_codes(column.codes, categories=pd.Index(range(column.nunique)))
                         for name, column in text.items()})


def check_inputs(config: AnalysisConfig, dataset: Dataset, base_dir: Path) -> list[str]:
    """What ``lucent validate`` reports about the data: the bias stages' problems, then the explanations'
    (SHAP and PDP inputs, and their memory estimates)."""
    if isinstance(dataset, TimeSeriesDataset):  # asymmetric Shapley values only (docs/time-series.md)
        return check_time_series_inputs(config, dataset, base_dir)
    return (check_bias_inputs(config, dataset) + check_explain_inputs(config, dataset, base_dir)
            + check_segment_inputs(config, dataset, base_dir))


def check_bias_inputs(config: AnalysisConfig, dataset: Dataset) -> list[str]:
    """Problems that would fail the bias stages (column typing, thresholds, predicted labels), found by
    running them on the loaded columns without the Flip Test, the one costly metric. Post-training
    bias that needs a model is not run here."""
    problems = []
    if dataset.predicted_label is None:  # the model will give them
        warn_unmatched_label_headers(config)
    for stage, _, _ in STAGES:
        method = getattr(config.methods, f"{stage}_bias")
        if method is None or (stage == "post_training" and dataset.predicted_label is None):
            continue
        cheap = replace(method, methods=[m for m in method.methods if m != "FT"] or ["DPPL"])
        quick = replace(config, methods=replace(config.methods, **{f"{stage}_bias": cheap}))
        try:
            bias_analysis(dataset, quick, stage)  # a label / facet value no row has: a logged WARNING, as in the run
        except UserError as error:
            problems.append(f"methods.{stage}_bias: {error}")
    return problems


def run_analysis(config: AnalysisConfig, dataset: Dataset, staging: OutputStaging,
                 endpoint: ModelEndpoint | None = None, base_dir: Path | None = None,
                 model_identity: str = "", output_uri: str | None = None,
                 checkpoint_store: CheckpointStore | None = None) -> dict[str, Any]:
    """Run every configured method on ``dataset`` and return the ``analysis.json`` document.
    ``checkpoint_store``: where SHAP checkpoints are also kept for a rerun (``explain_dataset``).

    ``base_dir``: the config file's folder, which relative paths in the config (baselines) come from
    (None: the current directory; the analyzer never derives it from the output folder).

    ``endpoint`` answers for the rows when the analyses need predictions (see ``needs_model``);
    ``model_identity``: text that changes whenever its model does (SHAP checkpoints are kept per model,
    see ``explain_dataset``). ``output_uri``: where the output folder is published (an S3 URI), for the
    paths ``analysis.json`` names (time series: ``explanation_results_path``); None: the local path.
    """
    if config.methods.post_training_bias is not None and dataset.predicted_label is None:
        if endpoint is None:
            raise UserError("methods.post_training_bias: the dataset has no predicted labels and no model was given")
        dataset.predicted_label = predicted_label_column(config, dataset, endpoint)
    # Segments are decided before any analysis: a bad segment value fails the job before hours of SHAP.
    segments = SegmentAnalysis.prepare(config, dataset, base_dir) if config.segment_config else None
    results: dict[str, Any] = {"version": config.version}
    for stage, key, banner in STAGES:
        method = getattr(config.methods, f"{stage}_bias")
        if method is None:
            continue
        log.info("%s\n%s\n%s", "=" * len(banner), banner, "=" * len(banner))
        started = time.perf_counter()
        with counted_rows(dataset):  # rows the engine grouped count with their weights
            results[key] = bias_analysis(dataset, config, stage)
        log.info("Computed %d %s metrics for %d facet(s) in %.2f s", len(method.methods),
                 stage.replace("_", "-"), len(dataset.facets), time.perf_counter() - started)
    if isinstance(dataset, TimeSeriesDataset):  # asymmetric Shapley values only (docs/time-series.md)
        results["explanations"] = time_series_explanations(config, dataset, endpoint, staging, base_dir,
                                                           output_uri=output_uri)
        return results
    explanations = explain_dataset(config, dataset, endpoint, staging, staging.output_dir / ".lucent-work",
                                   base_dir=base_dir, model_identity=model_identity,
                                   on_local=segments.keep_local_shap if segments is not None else None,
                                   checkpoint_store=checkpoint_store)
    if explanations:
        results["explanations"] = explanations
    if segments is not None:  # Lucent's own section (docs/segments.md); Clarify's keys stay as they are
        results.setdefault("lucent", {})["segments"] = segments.section(dataset)
    return results


def write_outputs(config: AnalysisConfig, dataset: Dataset, results: dict[str, Any], staging: OutputStaging,
                  started_at: str) -> None:
    """Stage ``analysis.json``, then the report in this process (``lucent monitor``'s one staging folder).
    A report that cannot be written raises ``analyzer.report.ReportError``. ``lucent run`` publishes
    ``analysis.json`` first and renders its report in another process (``render_job_reports``)."""
    staging.write_json(ANALYSIS_FILE, results)
    report = config.methods.report
    if report is None:
        return
    from analyzer.report import write_reports

    started = time.perf_counter()
    written = write_reports(results, job_summary(config, dataset, results, started_at), staging.staging_dir,
                            name=report.name, title=report.title)
    log.info("Report written (%s) in %.2f s", ", ".join(p.name for p in written), time.perf_counter() - started)


def render_job_reports(reports: ReportProcess, config: AnalysisConfig, dataset: Dataset, results: dict[str, Any],
                       staging_dir: Path, published_dir: Path, started_at: str) -> None:
    """Have the report process render the configured report into ``staging_dir``, from the results
    already published in ``published_dir`` (a text job's ``explanations_shap/out.jsonl``)."""
    report = config.methods.report
    assert report is not None
    reports.render(results, job_summary(config, dataset, results, started_at), staging_dir, name=report.name,
                   title=report.title, local_explanations=published_dir / SHAP_DIR / "out.jsonl")


def job_summary(config: AnalysisConfig, dataset: Dataset, results: dict[str, Any], started_at: str) -> JobSummary:
    """The facts about the job a report shows beside ``analysis.json``."""
    label_threshold = next((results[key]["label_value_or_threshold"] for _, key, _ in STAGES if key in results), None)
    methods = [name for name in ("pre_training_bias", "post_training_bias", "shap", "pdp")
               if getattr(config.methods, name) is not None]
    return JobSummary(
        dataset_source=dataset.source,
        dataset_type=config.dataset_type,
        n_rows=dataset.n_rows,
        label=dataset.label.name if dataset.label is not None else None,
        label_values_or_threshold=label_threshold,
        facets=list(dataset.facets),
        methods=methods,
        lucent_version=__version__,
        started_at=started_at,
        label_distribution=value_counts(dataset.label, row_weights(dataset)) if dataset.label is not None else None,
        facet_distributions={name: value_counts(column, row_weights(dataset))
                             for name, column in dataset.facets.items()} or None,
        shap_agg_method=config.methods.shap.agg_method if config.methods.shap is not None else None,
    )


def value_counts(column: Column, weights: np.ndarray | None = None, limit: int = DISTRIBUTION_BARS) -> dict[str, int]:
    """Rows per value, most frequent first, missing values counted as "nan"; beyond ``limit`` entries the
    rest are one entry (``other_values``) holding all their rows, so that shares are of every row."""
    with weighted_rows(weights):  # rows grouped by the engine count with their weights
        counts = count_cells(column.codes + 1, column.nunique + 1)  # slot 0 = missing
    labels = ["nan", *(str(v) for v in column.uniques)]
    ranked = sorted(((int(c), lab) for c, lab in zip(counts, labels, strict=True) if c), reverse=True)
    if len(ranked) > limit:
        rest = ranked[limit - 1:]
        ranked = [*ranked[:limit - 1], (sum(c for c, _ in rest), other_values(len(rest)))]
    return {lab: c for c, lab in ranked}
