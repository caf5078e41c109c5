"""The job facts a report needs beyond analysis.json (kept free of heavy imports: the job imports it early)."""

from __future__ import annotations

from dataclasses import dataclass

# Bars in a report's distribution chart: the most frequent values, then one "other (N values)" bar.
DISTRIBUTION_BARS = 12


def other_values(n_values: int) -> str:
    """The distribution chart's name for the values beyond its bars."""
    return f"other ({n_values} values)"


@dataclass
class JobSummary:
    """Facts about the job that ``analysis.json`` does not hold; filled by the job from the dataset."""

    dataset_source: str
    dataset_type: str
    n_rows: int
    label: str | None
    label_values_or_threshold: str | None
    facets: list[str]
    methods: list[str]  # e.g. ["pre_training_bias", "post_training_bias", "shap"]
    lucent_version: str
    started_at: str  # ISO 8601, UTC
    # value -> rows, at most DISTRIBUTION_BARS entries, the last one the rest of the values (other_values)
    label_distribution: dict[str, int] | None = None
    facet_distributions: dict[str, dict[str, int]] | None = None  # facet -> the same
    # methods.shap.agg_method: how global SHAP values were made from the local ones (the report words its
    # SHAP text and chart axis by it; analysis.json does not say). None: not known, Clarify's default mean_abs.
    shap_agg_method: str | None = None
