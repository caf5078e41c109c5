"""Flip Test (FT): Clarify's k-nearest-neighbour counterfactual check, bit-identical and fast.

Clarify fits ``sklearn.neighbors.KNeighborsClassifier`` (k = 5, or 1 when a has 9 rows or fewer;
Euclidean distance on the raw feature values, no scaling) on the rows of facet *a* with the
model's predictions as targets, predicts every row of *d*, and returns

    FT = (#{model says yes, neighbours say no} - #{model says no, neighbours say yes}) / n_d

(the opposite sign of the AWS documentation's wording; the implementation is what containers
output). Neighbour ties are broken by sklearn's internals, so sklearn does the search here too.

smclarify spends most of its time in Python loops over the rows; the search itself is the only
real cost. On top of removing the loops this module:

* queries each distinct row of d once when d has many duplicate rows, since with a tree index
  a query's neighbours do not depend on the other queries of the batch;
* sends the tree queries in Z-order, so that consecutive queries visit the same tree nodes;
* runs the tree queries on ``N_JOBS`` threads (each query is independent);
* takes the majority vote itself instead of ``scipy.stats.mode`` (binary labels and odd k:
  no vote ties);
* skips the search when every prediction in a is the same (every neighbour vote is then that
  prediction).

With the brute-force search (more than 15 features, or a tiny a), sklearn's result may depend on
how queries are batched, so all rows of d are queried in one batch, exactly as Clarify does.

Engines: ``fitted_classifier`` (on a) and ``flip_counts`` (on a chunk of d) are the two halves of
``FT``; the Spark engine (``analyzer/engines/spark_flip.py``) fits once, ships the classifier to its
tasks and sums their counts, which is exact when ``queries_are_independent``. ``DeferredFeatures``
stands for feature rows an engine keeps on its cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analyzer.bias.metrics import divide

if TYPE_CHECKING:  # scikit-learn takes a second to import: only a job that runs the Flip Test pays for it
    from sklearn.neighbors import KNeighborsClassifier

DEFAULT_NEIGHBORS = 5
MIN_NEIGHBORS = 1
SAMPLES_COUNT_THRESHOLD = 9  # a needs more rows than this for DEFAULT_NEIGHBORS
N_JOBS = 2
# Deduplicate the queries only when it removes at least this fraction of them.
MIN_DUPLICATE_FRACTION = 0.25


class FlipTestValue(float):
    """An FT value with Lucent's notes about how it was computed (``lucent``: e.g. a sampled value's
    sample size and interval), which the bias report writes beside Clarify's keys of the metric entry."""

    lucent: dict[str, Any] | None

    def __new__(cls, value: float, lucent: dict[str, Any] | None = None) -> FlipTestValue:
        made = super().__new__(cls, value)
        made.lucent = lucent
        return made


@dataclass(frozen=True)
class DeferredFeatures:
    """A facet's feature rows that stay where an engine holds them (a Spark cluster): ``FT`` hands the
    decided rows (sensitive, predicted: per row of the report's dataset) to ``run(facet, sensitive,
    predicted)``, the engine's Flip Test, after its own checks of the facet sides."""

    facet: str
    run: Callable[[str, np.ndarray, np.ndarray], float]


def FT(features: pd.DataFrame | DeferredFeatures, sensitive: np.ndarray, predicted: np.ndarray) -> float:
    """Flip Test of the sensitive rows against their nearest neighbours in the other rows.

    Parameters
    ----------
    features : the feature matrix Clarify gives the test (model features without the facet,
        label and predicted-label columns), one row per dataset row; or ``DeferredFeatures``.
    sensitive : per-row bool, True for the rows of d.
    predicted : per-row bool, True where the model predicts the positive label.
    """
    sensitive = np.asarray(sensitive, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    n_d = int(np.count_nonzero(sensitive))
    if n_d == 0:
        raise ValueError("Facet set is empty")
    if n_d == len(sensitive):
        raise ValueError("Negated Facet set is empty")
    if isinstance(features, DeferredFeatures):
        return features.run(features.facet, sensitive, predicted)
    check_numeric(features)
    matrix, from_object = feature_matrix(features)
    x_a, y_a = matrix[~sensitive], predicted[~sensitive]
    x_d, model_d = matrix[sensitive], predicted[sensitive]
    knn = fitted_classifier(x_a, y_a)
    only_model_yes, only_neighbours_yes = flip_counts(knn, y_a, x_d, model_d, from_object)
    return divide(only_model_yes - only_neighbours_yes, n_d)


def check_numeric(features: pd.DataFrame) -> None:
    """Clarify's refusal of non-numeric feature columns (any dtype but numbers and bools)."""
    if len(features.columns) != len(features.select_dtypes([np.number, bool]).columns):
        raise ValueError("FlipTest does not support non-numeric columns")


def n_neighbors_for(n_a: int) -> int:
    """Clarify's k: 5, or 1 when facet a has ``SAMPLES_COUNT_THRESHOLD`` rows or fewer."""
    return DEFAULT_NEIGHBORS if n_a > SAMPLES_COUNT_THRESHOLD else MIN_NEIGHBORS


def fitted_classifier(x_a: np.ndarray, y_a: np.ndarray) -> KNeighborsClassifier:
    """Clarify's classifier fitted on facet a (its input checks give Clarify's errors, e.g. zero features).

    Picklable: an engine fits it once and ships it to the tasks that query their chunks of d.
    """
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=n_neighbors_for(len(y_a)), weights="uniform", algorithm="auto",
                               leaf_size=30, p=2, metric="minkowski", n_jobs=None)
    knn.fit(x_a, y_a)  # always fitted: its input checks give Clarify's errors (e.g. zero features)
    return knn


def queries_are_independent(knn: KNeighborsClassifier) -> bool:
    """Whether a row's neighbours do not depend on the other rows queried with it (a tree search, or
    one class in a). Otherwise (brute force) all rows of d must be queried in one batch, in data order."""
    return len(knn.classes_) == 1 or knn._fit_method in ("kd_tree", "ball_tree")


def flip_counts(knn: KNeighborsClassifier, y_a: np.ndarray, x_d: np.ndarray, model_d: np.ndarray,
                from_object: bool) -> tuple[int, int]:
    """FT's two counts over rows ``x_d`` of facet d: (model yes and neighbours no, model no and
    neighbours yes). The core an engine runs on each chunk of d; the sums over chunks are the counts of
    all of d when ``queries_are_independent(knn)``."""
    neighbours_d = _neighbour_votes(knn, x_d, np.asarray(y_a, dtype=bool), from_object)
    model_d = np.asarray(model_d, dtype=bool)
    return int(np.count_nonzero(model_d & ~neighbours_d)), int(np.count_nonzero(~model_d & neighbours_d))


def feature_matrix(features: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """The array Clarify feeds to sklearn (``np.array(df)``), and whether it was an object array.

    A frame mixing bools and numbers becomes an object array, which sklearn converts to float64;
    converting straight to float64 gives the same values without a million Python objects.
    """
    if features.iloc[:0].to_numpy().dtype == object:
        return features.to_numpy(dtype=np.float64), True
    return features.to_numpy(), False


def _neighbour_votes(knn: KNeighborsClassifier, x_d: np.ndarray, y_a: np.ndarray,
                     from_object: bool) -> np.ndarray:
    """What the fitted classifier predicts for every row of ``x_d``, as Clarify gets it.

    Clarify passes the query rows as a list, so ``predict`` takes the ``kneighbors`` route, and
    rows of an object array stay an object array there, which keeps the brute-force search off
    sklearn's Cython pairwise-distance reductions. ``from_object`` reproduces that choice.
    """
    from sklearn import config_context
    from sklearn.utils import check_array

    if len(knn.classes_) == 1:
        # Every neighbour has the same target; only the input checks of the search remain.
        check_array(x_d, accept_sparse="csr", estimator=knn, input_name="X")
        return np.full(len(x_d), bool(knn.classes_[0]))
    if knn._fit_method in ("kd_tree", "ball_tree"):
        return _tree_votes(knn, x_d, y_a)
    # Brute force: distance chunks and thread merges depend on the batch, and a parallel search
    # splits the distance computations, so query all rows at once, in order, with n_jobs=None.
    settings = config_context(enable_cython_pairwise_dist=False) if from_object else contextlib.nullcontext()
    with settings:
        return _majority(knn, y_a, knn.kneighbors(x_d, return_distance=False))


def _tree_votes(knn: KNeighborsClassifier, x_d: np.ndarray, y_a: np.ndarray) -> np.ndarray:
    """Tree search: distinct rows only, in an order that keeps nearby queries together, in parallel.

    A tree query's neighbours do not depend on the other queries, so neither does the result.
    """
    representatives, inverse = _distinct_rows(x_d)
    queries = x_d if representatives is None else x_d[representatives]
    order = _locality_order(queries)
    if order is not None:
        queries = queries[order]
    knn.set_params(n_jobs=N_JOBS)
    votes = _majority(knn, y_a, knn.kneighbors(queries, return_distance=False))
    if order is not None:
        votes[order] = votes.copy()
    return votes if inverse is None else votes[inverse]


def _majority(knn: KNeighborsClassifier, y_a: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Majority of the k binary votes, as ``KNeighborsClassifier.predict`` decides (k odd: no ties)."""
    return np.count_nonzero(y_a[neighbours], axis=1) * 2 > knn.n_neighbors


def _locality_order(rows: np.ndarray) -> np.ndarray | None:
    """An order of the rows along a Z-order (Morton) curve, or None if there is nothing to gain.

    Consecutive tree queries for nearby points walk the same nodes, which stay in cache: this
    makes the search about 3x faster than in data order. All features share one scale, as in the
    Euclidean distance.
    """
    values = rows.astype(np.float64, copy=False)
    if len(values) < 2 or not np.isfinite(values).all():
        return None  # non-finite values: sklearn raises on them anyway
    n_features = values.shape[1]
    bits = min(16, 63 // n_features)
    low = values.min(axis=0)
    span = float((values.max(axis=0) - low).max())
    if span == 0:
        return None
    cells = ((values - low) * ((2**bits - 1) / span)).astype(np.uint64)
    key = np.zeros(len(values), dtype=np.uint64)
    one = np.uint64(1)
    for bit in reversed(range(bits)):
        for feature in range(n_features):
            key = (key << one) | ((cells[:, feature] >> np.uint64(bit)) & one)
    return np.argsort(key, kind="stable")


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One representative per distinct row and each row's representative, if worth it.

    Rows are told apart by exact value equality, one column at a time (``pd.factorize``, NaN
    being its own value), and the work stops as soon as too few duplicates are left for
    deduplication to pay off. Returns ``(None, None)`` then.
    """
    n_rows = len(rows)
    max_distinct = int(n_rows * (1 - MIN_DUPLICATE_FRACTION))
    if n_rows == 0 or rows.ndim != 2 or rows.shape[1] == 0:
        return None, None
    key = np.zeros(n_rows, dtype=np.int64)
    n_keys = 1
    for column in rows.T:
        codes, uniques = pd.factorize(column, use_na_sentinel=False)
        key = key * len(uniques) + codes  # < n_rows * n_rows: no int64 overflow below 3e9 rows
        key, keys = pd.factorize(key)
        n_keys = len(keys)
        if n_keys > max_distinct:
            return None, None
    representatives = np.empty(n_keys, dtype=np.int64)
    representatives[key] = np.arange(n_rows)  # any row of a key will do: they are equal
    return representatives, key
