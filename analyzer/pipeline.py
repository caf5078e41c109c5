"""The analysis itself, in the order data flows: config -> data -> bias -> results.

This module knows nothing about processing-job folders, exit codes or message files (that is
``container.job``); it takes a parsed config and a dataset path and returns ``analysis.json``'s
content, writing any extra files through an ``OutputStaging``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from analyzer.bias import bias_analysis
from analyzer.config import AnalysisConfig, unsupported_methods
from analyzer.data import Dataset, load_dataset
from analyzer.errors import UserError
from analyzer.output import OutputStaging

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


def needs_features(config: AnalysisConfig) -> bool:
    """Whether the model feature matrix must be loaded (only the Flip Test needs it for bias)."""
    post = config.methods.post_training_bias
    return bool(post and "FT" in post.methods)


def load_job_dataset(config: AnalysisConfig, dataset_path: Path) -> Dataset:
    started = time.perf_counter()
    dataset = load_dataset(config, dataset_path, need_features=needs_features(config))
    log.info("Dataset ready: %d rows, %d features, facets %s (%.2f s)", dataset.n_rows,
             len(dataset.feature_names), ", ".join(dataset.facets) or "none", time.perf_counter() - started)
    return dataset


def run_analysis(config: AnalysisConfig, dataset: Dataset, staging: OutputStaging) -> dict[str, Any]:
    """Run every configured method on ``dataset`` and return the ``analysis.json`` document."""
    del staging  # written to by explanations and reports in later versions
    results: dict[str, Any] = {"version": config.version}
    for stage, key, banner in STAGES:
        method = getattr(config.methods, f"{stage}_bias")
        if method is None:
            continue
        log.info("%s\n%s\n%s", "=" * len(banner), banner, "=" * len(banner))
        started = time.perf_counter()
        results[key] = bias_analysis(dataset, config, stage)
        log.info("Computed %d %s metrics for %d facet(s) in %.2f s", len(method.methods),
                 stage.replace("_", "-"), len(dataset.facets), time.perf_counter() - started)
    if config.methods.report is not None:
        log.info("Skipping methods.report (%s): reports are not supported yet in this Lucent version; "
                 "analysis.json has every result", config.methods.report.name)
    return results
