"""Automatic SHAP baseline: cluster centres of the dataset (K-means, or K-prototypes with categories).

Clarify computes the baseline "using K-means (for numerical data) or K-prototypes (if there is categorical
data)" with ``num_clusters`` rows, or "an optimal number of clusters between 1 and 12". Our rule for the
automatic count (documented in docs/kernel-shap.md): on a seeded sample of at most 1,000 rows, cluster for
k = 2..12 and take the k with the highest mean silhouette; if even the best silhouette is <= 0.25
(Kaufman & Rousseeuw: "no substantial structure") the data has no clusters worth the extra model calls and a
single centre is used. The final clustering runs on at most 100,000 sampled rows.

Numeric columns are standardised for clustering (otherwise a large-unit column such as a salary decides every
cluster) and centres are reported in the original units (cluster means). Categorical centres are the
cluster's most frequent value. K-prototypes (Huang 1998) is implemented here in vectorised numpy: the
``kmodes`` package (last release 2022) runs per-row Python loops and would add a dependency for ~60 lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

__all__ = ["compute_baseline"]

MAX_CLUSTERS = 12
SELECTION_ROWS = 1_000
FIT_ROWS = 100_000
MIN_SILHOUETTE = 0.25
# Weight of one categorical mismatch relative to a squared standardised distance (Huang's gamma, which he
# suggests setting near half the numeric standard deviation; our numeric columns have unit variance).
GAMMA = 0.5


def compute_baseline(
    data,
    num_clusters: int | None = None,
    *,
    categorical: Sequence[int] | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Baseline rows ``(k, P)`` summarising ``data`` ``(n, P)``; object dtype when categories exist.

    ``categorical``: indices of categorical columns (default: columns holding non-numeric values).
    ``num_clusters``: number of rows; ``None`` chooses it in [1, 12] (module docstring).
    """
    table = pd.DataFrame(data.to_numpy() if hasattr(data, "to_numpy") else np.asarray(data, dtype=object))
    if table.ndim != 2 or table.shape[1] == 0:
        raise ValueError("baseline data must be a 2-D table with at least one column")
    if num_clusters is not None and not int(num_clusters) >= 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    cat = sorted(categorical) if categorical is not None else _categorical_columns(table)
    num = [j for j in range(table.shape[1]) if j not in set(cat)]

    numeric = table[num].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    keep = ~np.isnan(numeric).any(axis=1)
    if not keep.any():
        raise ValueError("every row has a missing numeric value; cannot compute a baseline")
    table, numeric = table[keep].reset_index(drop=True), numeric[keep]
    codes, levels = _encode(table, cat)
    mean, std = numeric.mean(axis=0), numeric.std(axis=0)
    scaled = (numeric - mean) / np.where(std > 0, std, 1.0)

    rng = np.random.default_rng(seed)
    distinct = len(np.unique(np.hstack([scaled, codes]), axis=0))
    # One BLAS/OpenMP thread: the fits are small, and on a busy machine (or beside the job's worker
    # processes) KMeans' thread pool oversubscribes the cores and runs 20x slower.
    with threadpool_limits(limits=1):
        if num_clusters is None:
            pick = _sample(len(scaled), SELECTION_ROWS, rng)
            k = _choose_k(scaled[pick], codes[pick], min(MAX_CLUSTERS, distinct), seed)
        else:
            k = min(int(num_clusters), distinct)
        pick = _sample(len(scaled), FIT_ROWS, rng)
        labels = _cluster(scaled[pick], codes[pick], k, seed)

    sizes = np.bincount(labels, minlength=k)
    # Largest cluster first (a stable, readable order for baseline.csv); empty clusters are dropped.
    order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    rows = np.empty((len(order), table.shape[1]), dtype=object if cat else float)
    for r, c in enumerate(order):
        members = pick[labels == c]
        rows[r, num] = numeric[members].mean(axis=0)
        for i, j in enumerate(cat):
            rows[r, j] = levels[i][np.bincount(codes[members, i]).argmax()]
    return rows


def _categorical_columns(table: pd.DataFrame) -> list[int]:
    """Columns with at least one non-missing value that is not a number."""
    out = []
    for j in range(table.shape[1]):
        col = table[j].dropna()
        if len(col) and pd.to_numeric(col, errors="coerce").isna().any():
            out.append(j)
    return out


def _encode(table: pd.DataFrame, cat: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Integer codes per categorical column (missing values form their own category)."""
    codes = np.zeros((len(table), len(cat)), dtype=np.intp)
    levels = []
    for i, j in enumerate(cat):
        code, uniques = pd.factorize(table[j], use_na_sentinel=False, sort=True)
        codes[:, i] = code
        levels.append(np.asarray(uniques, dtype=object))
    return codes, levels


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size=size, replace=False))


def _choose_k(scaled: np.ndarray, codes: np.ndarray, k_max: int, seed: int | None) -> int:
    if k_max < 2 or len(scaled) < 3:
        return 1
    dist = np.sqrt(_costs(scaled, codes, scaled, codes))
    np.fill_diagonal(dist, 0.0)  # the expanded-square formula leaves rounding noise on the diagonal
    best_k, best = 1, MIN_SILHOUETTE
    for k in range(2, min(k_max, len(scaled) - 1) + 1):
        labels = _cluster(scaled, codes, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        score = _silhouette(dist, labels)
        if score > best:
            best_k, best = k, score
    return best_k


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    # scikit-learn is imported on first use: it takes a second, and the SHAP worker processes, which
    # import this package but never compute a baseline, should not pay it.
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(dist, labels, metric="precomputed"))


def _cluster(scaled: np.ndarray, codes: np.ndarray, k: int, seed: int | None) -> np.ndarray:
    if k == 1:
        return np.zeros(len(scaled), dtype=np.intp)
    if codes.shape[1] == 0:
        from sklearn.cluster import KMeans  # here, not at the top: SHAP worker processes import this module

        return KMeans(n_clusters=k, n_init=3, random_state=seed).fit(scaled).labels_
    return _kprototypes(scaled, codes, k, np.random.default_rng(seed))


def _costs(xn: np.ndarray, xc: np.ndarray, cn: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """(rows, centres) squared euclidean (numeric) + GAMMA x mismatches (categorical)."""
    cost = (xn**2).sum(1)[:, None] - 2 * xn @ cn.T + (cn**2).sum(1)[None, :]
    for i in range(xc.shape[1]):
        cost += GAMMA * (xc[:, i, None] != cc[None, :, i])
    return np.maximum(cost, 0.0)


def _kprototypes(xn: np.ndarray, xc: np.ndarray, k: int, rng: np.random.Generator,
                 n_init: int = 3, max_iter: int = 100) -> np.ndarray:
    """Huang's k-prototypes with k-means++ seeding; best of ``n_init`` runs by total cost."""
    best_labels, best_cost = None, np.inf
    for _ in range(n_init):
        # k-means++ seeding on the mixed cost.
        centres = [int(rng.integers(len(xn)))]
        for _ in range(k - 1):
            d = _costs(xn, xc, xn[centres], xc[centres]).min(axis=1)
            centres.append(int(rng.choice(len(xn), p=d / d.sum())) if d.sum() > 0 else int(rng.integers(len(xn))))
        cn, cc = xn[centres].copy(), xc[centres].copy()
        labels = np.full(len(xn), -1)
        for _ in range(max_iter):
            cost = _costs(xn, xc, cn, cc)
            new = cost.argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = labels == c
                if not members.any():
                    # Empty cluster: restart it at the row worst served by its centre.
                    far = int(cost[np.arange(len(xn)), labels].argmax())
                    labels[far] = c
                    members = labels == c
                cn[c] = xn[members].mean(axis=0)
                cc[c] = [np.bincount(xc[members, i]).argmax() for i in range(xc.shape[1])]
        total = _costs(xn, xc, cn, cc)[np.arange(len(xn)), labels].sum()
        if total < best_cost:
            best_labels, best_cost = labels.copy(), total
    return best_labels
