"""Clarify's bias metrics as functions of contingency counts.

Every bias metric of SageMaker Clarify (smclarify 0.5) depends on the rows only through a few counts:
the confusion matrix of each facet side (*a* = everything except the sensitive group, *d* = the
sensitive group), the label distribution of each side, and, for CDDL/CDDPL, the same counts per
group of the group variable. Each metric below is a small function of those counts that returns
exactly the number smclarify returns, including its quirks:

* ``divide`` rule: 0/0 is 0 and x/0 is +/-inf, never NaN (``divide``);
* a difference of two ratios that are both +inf is 0 (DCA, DCR, TE);
* the KL family keeps only the categories present in *both* sides, without renormalising, so KL
  can be negative (``aligned_nonzero_pdfs``);
* a metric that cannot be computed raises ``ValueError`` with smclarify's message; the report turns
  it into a per-metric error.

The Flip Test needs the feature rows themselves and lives in ``flip_test.py``. Names, descriptions,
ranges and the stage of each metric are declared once, in ``analyzer.bias_registry``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

INFINITY = float("inf")


class Confusion(NamedTuple):
    """Confusion-matrix counts of one facet side (or of the whole dataset).

    In a pre-training report there are no predictions; they count as all negative, so only
    ``positives`` / ``negatives`` / ``n`` are meaningful.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_cells(cls, cells: np.ndarray) -> Confusion:
        """From a 2x2 array of counts indexed ``[label, prediction]`` (0 = negative, 1 = positive)."""
        return cls(int(cells[1, 1]), int(cells[0, 1]), int(cells[1, 0]), int(cells[0, 0]))

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def positives(self) -> int:
        """Rows with a positive observed label."""
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.fp + self.tn

    @property
    def predicted_positives(self) -> int:
        return self.tp + self.fp

    @property
    def predicted_negatives(self) -> int:
        return self.fn + self.tn

    @property
    def label_counts(self) -> np.ndarray:
        """Counts of the boolean label values in sorted order (False, True), for the KL family."""
        return np.array([self.negatives, self.positives], dtype=np.int64)


class GroupCounts(NamedTuple):
    """Per-group counts of one outcome (observed or predicted label) for CDDL / CDDPL.

    Arrays are indexed by group in ``np.unique`` order of the group variable (sorted values; a
    float group variable with missing values has one trailing empty slot, as ``np.unique``
    returns one NaN). Rows whose group is missing belong to no group, but they are counted in
    ``n_positive`` / ``n_negative``, which cover the whole dataset.
    """

    sizes: np.ndarray  # rows in the group (both sides, both outcomes)
    positive: np.ndarray  # rows in the group with a positive outcome
    positive_d: np.ndarray  # ... that are also in the sensitive group d
    negative: np.ndarray
    negative_d: np.ndarray
    n_positive: int
    n_negative: int


def divide(a: float, b: float) -> float:
    """``a / b`` with Clarify's rule for a zero denominator: 0/0 = 0.0, x/0 = +/-inf."""
    if b == 0 and a == 0:
        return 0.0
    if b == 0:
        return -INFINITY if a < 0 else INFINITY
    return a / b


def _difference(minuend: float, subtrahend: float, both_infinite: float = 0.0) -> float:
    """``minuend - subtrahend``, except that two +inf ratios compare as equal (no NaN)."""
    if minuend == subtrahend == INFINITY:
        return both_infinite
    return minuend - subtrahend


def _require_sides(a: Confusion, d: Confusion, empty_d: str, empty_a: str) -> None:
    """Both sides must be non-empty (d is checked first, as in most smclarify metrics)."""
    if d.n == 0:
        raise ValueError(empty_d)
    if a.n == 0:
        raise ValueError(empty_a)


# --------------------------------------------------------------------------------------------
# Pre-training metrics
# --------------------------------------------------------------------------------------------


def CI(a: Confusion, d: Confusion) -> float:
    """Class Imbalance: (n_a - n_d) / (n_a + n_d), in [-1, 1]; > 0 when a has more rows."""
    if a.n == 0:
        raise ValueError("CI: negated facet set is empty. Check that x[~facet] has non-zero length.")
    if d.n == 0:
        raise ValueError("CI: facet set is empty. Check that x[facet] has non-zero length.")
    return float(a.n - d.n) / (a.n + d.n)


def _positive_proportion_difference(n_a: int, positive_a: int, n_d: int, positive_d: int) -> float:
    """q_a - q_d with q = positives / size (smclarify ``common.DPL``, shared by DPL and DPPL)."""
    if n_a == 0:
        raise ValueError("Negative facet set is empty.")
    if n_d == 0:
        raise ValueError("Facet set is empty.")
    return positive_a / n_a - positive_d / n_d


def DPL(a: Confusion, d: Confusion) -> float:
    """Difference in Positive Proportions in Labels: q_a - q_d on observed labels, in [-1, 1]."""
    return _positive_proportion_difference(a.n, a.positives, d.n, d.positives)


def aligned_nonzero_pdfs(counts_a: np.ndarray, counts_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical distributions of two sides over the categories present in both.

    ``counts_*[i]`` counts category i (categories in sorted order). Each probability is
    count / side size; categories with a zero count on either side are then dropped from both
    vectors, and the rest is *not* renormalised (smclarify ``pdfs_aligned_nonzero``).
    Raises the KL-family ValueError when no category is left.
    """
    counts_a = np.asarray(counts_a, dtype=np.int64)
    counts_d = np.asarray(counts_d, dtype=np.int64)
    keep = (counts_a > 0) & (counts_d > 0)
    if not keep.any():
        raise ValueError("No instance of common facet found, dataset may be too small")
    return counts_a[keep] / counts_a.sum(), counts_d[keep] / counts_d.sum()


def KL(counts_a: np.ndarray, counts_d: np.ndarray) -> float:
    """Kullback-Leibler divergence KL(Pa || Pd) in nats, over the categories present in both sides.

    Can be negative when a category is missing on one side (truncation without renormalising).
    """
    pa, pd_ = aligned_nonzero_pdfs(counts_a, counts_d)
    return float(np.sum(pa * np.log(pa / pd_)))


def JS(counts_a: np.ndarray, counts_d: np.ndarray) -> float:
    """Jensen-Shannon divergence with P = (Pa + Pd) / 2, on the truncated vectors of ``KL``."""
    pa, pd_ = aligned_nonzero_pdfs(counts_a, counts_d)
    p = 1 / 2 * (pa + pd_)
    return float(0.5 * (np.sum(pa * np.log(pa / p)) + np.sum(pd_ * np.log(pd_ / p))))


def LP(counts_a: np.ndarray, counts_d: np.ndarray) -> float:
    """L2 norm of Pa - Pd (Clarify fixes p = 2), on the truncated vectors of ``KL``."""
    pa, pd_ = aligned_nonzero_pdfs(counts_a, counts_d)
    return float(np.linalg.norm(pa - pd_, 2))


def TVD(counts_a: np.ndarray, counts_d: np.ndarray) -> float:
    """Total Variation Distance: half the L1 norm of Pa - Pd, on the truncated vectors of ``KL``."""
    pa, pd_ = aligned_nonzero_pdfs(counts_a, counts_d)
    return 0.5 * float(np.linalg.norm(pa - pd_, 1))


def KS(counts_a: np.ndarray, counts_d: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance as Clarify defines it: max |Pa - Pd| over categories (not CDFs)."""
    pa, pd_ = aligned_nonzero_pdfs(counts_a, counts_d)
    return float(np.linalg.norm(pa - pd_, np.inf))


def CDD(groups: GroupCounts | None) -> float:
    """Conditional Demographic Disparity: group-size-weighted mean of DD_i over the groups.

    DD_i = (share of group i's negatives that are in d) - (share of its positives in d); a
    share with a zero denominator is 0. Positive values mean d receives a larger share of the
    rejections than of the acceptances.
    """
    if groups is None or len(groups.sizes) == 0:
        raise ValueError("Group variable is empty or not provided")
    if groups.n_positive == 0:
        raise ValueError("No positive labels in set")
    if groups.n_negative == 0:
        raise ValueError("No negative labels in set")
    with np.errstate(divide="ignore", invalid="ignore"):
        accepted = np.where(groups.positive > 0, groups.positive_d / groups.positive, 0.0)
        rejected = np.where(groups.negative > 0, groups.negative_d / groups.negative, 0.0)
    sizes = groups.sizes.astype(np.float64)
    return float(divide(np.sum(sizes * (rejected - accepted)), np.sum(sizes)))


def CDDL(groups: GroupCounts | None) -> float:
    """Conditional Demographic Disparity in Labels: ``CDD`` on the observed labels."""
    return CDD(groups)


# --------------------------------------------------------------------------------------------
# Post-training metrics
# --------------------------------------------------------------------------------------------


def DPPL(a: Confusion, d: Confusion) -> float:
    """Difference in Positive Proportions in Predicted Labels: q'_a - q'_d, in [-1, 1]."""
    return _positive_proportion_difference(a.n, a.predicted_positives, d.n, d.predicted_positives)


def DI(a: Confusion, d: Confusion) -> float:
    """Disparate Impact: q'_d / q'_a; 1 is parity, +inf when only d gets positive predictions."""
    if a.n == 0:
        raise ValueError("Negated facet set is empty")
    if d.n == 0:
        raise ValueError("Facet set is empty")
    return divide(d.predicted_positives / d.n, a.predicted_positives / a.n)


def DCA(a: Confusion, d: Confusion) -> float:
    """Difference in Conditional Acceptance: c_a - c_d, c = observed / predicted positives."""
    _require_sides(a, d, "DCO: Facet set is empty", "DCO: Negated Facet set is empty")
    # smclarify returns the int 0 here (it serialises as 0, not 0.0).
    return _difference(divide(a.positives, a.predicted_positives),
                       divide(d.positives, d.predicted_positives), both_infinite=0)


def DCR(a: Confusion, d: Confusion) -> float:
    """Difference in Conditional Rejection: r_d - r_a, r = observed / predicted negatives."""
    _require_sides(a, d, "DCO: Facet set is empty", "DCO: Negated Facet set is empty")
    return _difference(divide(d.negatives, d.predicted_negatives),
                       divide(a.negatives, a.predicted_negatives), both_infinite=0)


def RD(a: Confusion, d: Confusion) -> float:
    """Recall Difference: TPR_a - TPR_d (a group without actual positives has TPR 0)."""
    _require_sides(a, d, "DLA: Facet set is empty", "DLA: Negated Facet set is empty")
    return _difference(divide(a.tp, a.tp + a.fn), divide(d.tp, d.tp + d.fn))


def SD(a: Confusion, d: Confusion) -> float:
    """Specificity Difference: TNR_d - TNR_a (note: d minus a)."""
    _require_sides(a, d, "DLA: Facet set is empty", "DLA: Negated Facet set is empty")
    return _difference(divide(d.tn, d.tn + d.fp), divide(a.tn, a.tn + a.fp))


def DAR(a: Confusion, d: Confusion) -> float:
    """Difference in Acceptance Rates: precision_a - precision_d."""
    _require_sides(a, d, "DLR: Facet set is empty", "DLR: Negated Facet set is empty")
    return _difference(divide(a.tp, a.predicted_positives), divide(d.tp, d.predicted_positives))


def DRR(a: Confusion, d: Confusion) -> float:
    """Difference in Rejection Rates: NPV_d - NPV_a (note: d minus a)."""
    _require_sides(a, d, "DLR: Facet set is empty", "DLR: Negated Facet set is empty")
    return _difference(divide(d.tn, d.predicted_negatives), divide(a.tn, a.predicted_negatives))


def AD(a: Confusion, d: Confusion) -> float:
    """Accuracy Difference: accuracy_a - accuracy_d."""
    _require_sides(a, d, "Facet set is empty", "Negated Facet set is empty")
    return _difference(divide(a.tp + a.tn, a.n), divide(d.tp + d.tn, d.n))


def TE(a: Confusion, d: Confusion) -> float:
    """Treatment Equality: FN_d/FP_d - FN_a/FP_a (a ratio is +inf when FP = 0 < FN)."""
    _require_sides(a, d, "Facet set is empty", "Negated Facet set is empty")
    return _difference(divide(d.fn, d.fp), divide(a.fn, a.fp))


def CDDPL(groups: GroupCounts | None) -> float:
    """Conditional Demographic Disparity in Predicted Labels: ``CDD`` on the predictions."""
    return CDD(groups)


def GE(overall: Confusion, alpha: float = 2) -> float:
    """Generalized Entropy index of the benefits b = prediction - label + 1, over all rows.

    Clarify uses alpha = 2, i.e. half the squared coefficient of variation of b. It does not
    depend on the facet. b is 0 for a false negative, 1 for a correct prediction and 2 for a false
    positive, so the index is a function of the overall confusion counts.
    """
    if alpha in (0, 1):
        raise NotImplementedError("Not implemented for alpha 0 or 1.")
    n = overall.n
    if n == 0:
        raise ValueError("dataset must be non-empty")
    benefit_counts = (overall.fn, overall.tp + overall.tn, overall.fp)  # b = 0, 1, 2
    mean = (benefit_counts[1] + 2 * benefit_counts[2]) / n
    if mean == 0:
        raise ValueError(
            "All predicted labels are false negatives. There should be at least one prediction "
            "that is not false negative."
        )
    terms = (np.arange(3) / mean) ** alpha - 1  # per-row terms, computed as smclarify does
    # fsum keeps the count-weighted sum as exact as smclarify's pairwise sum over rows.
    return math.fsum(count * float(term) for count, term in zip(benefit_counts, terms, strict=True)) / (
        n * alpha * (alpha - 1)
    )
