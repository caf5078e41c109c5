"""Global SHAP values (Clarify ``agg_method``) and their Monte-Carlo standard errors.

``mean_abs``: mean of |phi| over records; ``mean_sq``: mean of phi^2; ``median``: median of the signed
values (Clarify: "median of SHAP values for all instances").

Standard errors cover the coalition-sampling error only: the global value is a property of the explained
records, so record-to-record variation is not sampling noise. Every record shares one coalition design,
so their errors are correlated; the delta method is therefore applied to the *sum over records* of each
sampled pair's effect (``Explanation.global_terms``), which keeps the correlation. For ``median`` the
first-order error is that of the median record (mean of the two middle records' errors for even ``n``,
bounded here by the mean of their standard errors). The delta method is first order: for ``mean_abs``
it is not reliable for values whose local estimates straddle zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernel_shap import Explanation

__all__ = ["AGG_METHODS", "GlobalExplanation", "aggregate", "aggregate_values"]

AGG_METHODS = ("mean_abs", "median", "mean_sq")


@dataclass
class GlobalExplanation:
    """``values``/``stderr``: ``(M, k)`` global SHAP values per explained feature and output."""

    values: np.ndarray
    stderr: np.ndarray
    expected_value: np.ndarray
    agg_method: str


def aggregate_values(values: np.ndarray, agg_method: str = "mean_abs") -> np.ndarray:
    """Clarify's ``agg_method`` over axis 0 (records, or a token's occurrences)."""
    if agg_method not in AGG_METHODS:
        raise ValueError(f"Invalid agg_method {agg_method}. Please choose mean_abs, median, or mean_sq.")
    if len(values) == 0:
        raise ValueError("cannot aggregate SHAP values of zero records")
    if agg_method == "median":
        return np.median(values, axis=0)
    return np.abs(values).mean(axis=0) if agg_method == "mean_abs" else (values**2).mean(axis=0)


def aggregate(explanation: Explanation, agg_method: str = "mean_abs") -> GlobalExplanation:
    """Aggregate local values over records with Clarify's ``agg_method``."""
    phi = explanation.values
    values = aggregate_values(phi, agg_method)
    n = len(phi)
    design = explanation.design
    if agg_method == "median":
        order = np.argsort(phi, axis=0, kind="stable")
        middle = order[[(n - 1) // 2, n // 2]]
        stderr = np.take_along_axis(explanation.stderr, middle, axis=0).mean(axis=0)
    elif design.exact:
        stderr = np.zeros_like(values)
    else:
        stderr = np.sqrt(design.sampling_variance(explanation.global_terms[agg_method])) / n
    return GlobalExplanation(values, stderr, explanation.expected_value, agg_method)
