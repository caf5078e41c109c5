"""Kernel SHAP explanations (Clarify ``methods.shap``) for any scoring callable.

Public API::

    explainer = KernelShap(model, baseline, num_samples=None, seed=None, use_logit=False,
                           features_to_explain=None, max_rows_per_call=100_000)
    local = explainer.explain(records)          # Explanation: values/stderr (n, M, k), expected_value (k,)
    glob = aggregate(local, "mean_abs")         # GlobalExplanation: values/stderr (M, k)
    baseline = compute_baseline(data, num_clusters=None, seed=0)   # when the config gives no baseline

See docs/kernel-shap.md for the method, its exactness and the standard errors.
"""

from .aggregate import AGG_METHODS, GlobalExplanation, aggregate
from .baseline import compute_baseline
from .design import CoalitionDesign, default_num_samples, make_design
from .kernel_shap import Explanation, KernelShap, ModelOutputError

__all__ = [
    "AGG_METHODS",
    "CoalitionDesign",
    "Explanation",
    "GlobalExplanation",
    "KernelShap",
    "ModelOutputError",
    "aggregate",
    "compute_baseline",
    "default_num_samples",
    "make_design",
]
