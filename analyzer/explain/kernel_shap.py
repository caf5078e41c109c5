"""Kernel SHAP for any scoring function: batched synthetic rows, one shared solve, standard errors.

The model is a plain callable ``model(rows) -> scores`` (``rows``: 2-D array of records; scores: ``(rows,)``
or ``(rows, k)``). It is called with large blocks (every synthetic row of a group of records at once, cut into
calls of at most ``max_rows_per_call`` rows) so that the time goes into the model, not into Python.

Estimator (see docs/kernel-shap.md): for record ``x``, coalition ``z`` and baseline rows ``b``,
``v(z) = link(mean_b model(where(z, x, b)))``; the Shapley values ``phi`` solve the weighted least squares
``min sum_z w_z (v(z) - v(0) - z.phi)^2`` subject to ``sum(phi) = v(1) - v(0)`` (efficiency, exact). The
constraint is imposed through the KKT system, whose inverse is computed once per design and applied to
all records and output columns with one matrix product.

What is learned from the baseline (the design, its solver, the synthetic-row masks and the expected
value) is one plain object, :class:`KernelShapFit`, made by :func:`fit_kernel_shap` from the baseline rows
and their scores: no model, no dataset, no files. The batch job (``shards``) and the online endpoint
(``online``) explain with the same fitted object; :class:`KernelShap` adds a model and batching.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .design import CoalitionDesign, make_design

__all__ = ["GLOBAL_TERMS", "Explanation", "KernelShap", "KernelShapFit", "ModelCallError", "ModelOutputError",
           "ScoringModel", "ShapSolver", "as_matrix", "baseline_expected_value", "check_finite", "coalition_values",
           "fit_kernel_shap", "link"]

Model = Callable[[np.ndarray], np.ndarray]

# Synthetic rows per group of records evaluated at once: small enough that several groups pipeline
# (one is solved while the next is with the model), large enough for requests of tens of thousands of rows.
GROUP_ROWS = 100_000
# Scores are clipped to [eps, 1 - eps] before the logit so that 0/1 probabilities give finite log-odds
# (|logit| <= 27.6); tighter than float rounding noise, looser than any real calibrated probability.
LOGIT_EPS = 1e-12
# The aggregates whose standard errors need per-pair terms summed over records (Explanation.global_terms).
GLOBAL_TERMS = ("mean_abs", "mean_sq")
# Largest effect maps (elements, 2 pairs x M) whose squares a solver keeps between solves (512 kB:
# tabular designs up to about 30 features at the default budget).
SQUARED_MAPS_KEPT = 2**16
# Largest bit masks (elements, coalitions x baseline rows x columns) a fit keeps for building synthetic rows
# (16 MB); larger designs build them with a masked copy instead.
TEMPLATE_LIMIT = 2**21


class ModelOutputError(ValueError):
    """The model returned NaN/infinite scores; ``records`` are the affected record indices (0-based)."""

    def __init__(self, message: str, records: Sequence[int]):
        super().__init__(message)
        self.records = list(records)


class ModelCallError(Exception):
    """The model refused one row of a call: ``row`` indexes the rows of the call, ``record`` (set by the
    explainer that built the rows) the record the row was made from, ``synthetic`` whether it was a
    synthetic row (some features from the baseline) rather than the record itself."""

    def __init__(self, reason: str, row: int, record: int | None = None, synthetic: bool = False):
        super().__init__(reason)
        self.reason, self.row, self.record, self.synthetic = reason, row, record, synthetic

    def for_record(self, record: int, synthetic: bool) -> ModelCallError:
        return ModelCallError(self.reason, self.row, record, synthetic)


@dataclass
class Explanation:
    """Local SHAP values of ``n`` records for ``k`` model outputs over the explained features.

    Attributes:
        values: ``(n, M, k)`` SHAP values; ``values[i].sum(0) == prediction[i] - reference[i]`` exactly.
        stderr: ``(n, M, k)`` standard error of each value from coalition sampling (0 in exact mode).
        expected_value: ``(k,)`` ``link(mean model score over the baseline)`` (Clarify's ``expected_value``).
        reference: ``(n, k)`` per-record starting point of the attribution: equals ``expected_value`` when
            all features are explained; with ``features_to_explain`` it is the score with only the explained
            features taken from the baseline.
        prediction: ``(n, k)`` ``link(model(x))``.
        features: indices (into the record's columns) of the ``M`` explained features, ascending.
        design: the coalition design shared by all records (needed to combine standard errors).
        global_terms: per sampled pair, summed over records, the first-order effect of that pair on the
            ``mean_abs`` and ``mean_sq`` aggregates; used by :func:`aggregate` for their standard errors.
    """

    values: np.ndarray
    stderr: np.ndarray
    expected_value: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    features: np.ndarray
    design: CoalitionDesign
    global_terms: dict[str, np.ndarray]

    @classmethod
    def concat(cls, parts: Iterable[Explanation]) -> Explanation:
        """Join explanations of consecutive record batches made with the same explainer settings.

        One pass over ``parts`` (a generator is welcome): ``global_terms`` are as large as the design
        (``pairs x M x k``) for every batch, so they are summed as the batches arrive instead of being
        held for all of them.
        """
        batches = iter(parts)
        first = next(batches, None)
        if first is None:
            raise ValueError("nothing to concatenate")
        values, stderr, reference, prediction = [first.values], [first.stderr], [first.reference], [first.prediction]
        terms = {key: np.array(value, dtype=float) for key, value in first.global_terms.items()}
        for part in batches:
            values.append(part.values)
            stderr.append(part.stderr)
            reference.append(part.reference)
            prediction.append(part.prediction)
            for key, total in terms.items():
                total += part.global_terms[key]
        return cls(
            values=np.concatenate(values),
            stderr=np.concatenate(stderr),
            expected_value=first.expected_value,
            reference=np.concatenate(reference),
            prediction=np.concatenate(prediction),
            features=first.features,
            design=first.design,
            global_terms=terms,
        )


class ShapSolver:
    """The constrained WLS solution for one coalition design, shared by every record explained with it.

    The KKT inverse and the per-pair effects (for standard errors) are computed once; ``solve`` then
    turns the coalition values of any number of records into SHAP values with a few matrix products.
    """

    def __init__(self, design: CoalitionDesign):
        self.design = design
        self.hessian, self.constraint = _kkt_inverse(design)
        effects = _pair_effects(design, self.hessian)
        rows = np.concatenate([np.arange(s.start, s.stop) for s in design.sampled] or [np.zeros(0, dtype=np.intp)])
        # The masks as floats and weighted, once: an online request then costs only the products below.
        z = design.masks.astype(float)
        self._wz = z * design.weights[:, None]
        # The sampled pairs' rows (usually one run: a slice, not a gather), and the effect maps with one
        # row per pair member (first, second, first, ...), as the residuals come: the standard errors are
        # then matrix products per stratum (see ``_pair_statistics``).
        contiguous = rows.size > 0 and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size))
        self._pair_rows: slice | np.ndarray = slice(int(rows[0]), int(rows[0]) + rows.size) if contiguous else rows
        self._pair_masks = z[rows]
        self._effects = np.ascontiguousarray(effects.reshape(-1, design.n_features))  # (2 pairs, M)
        # Kept when small (a tabular design: an online request then does not rebuild them); built per
        # solve when large (text designs with hundreds of players, of which TextKernelShap caches dozens).
        self._kept_squared_maps = self._squared_maps() if self._effects.size <= SQUARED_MAPS_KEPT else None

    def _squared_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The maps of the squared residuals ``(2 pairs, M)`` and of the residuals' cross products
        ``(pairs, M)``, each pair's carrying its stratum's variance factor (NaN where a single pair was
        drawn, which makes those variances NaN, as ``sampling_variance`` does)."""
        design = self.design
        factor = np.repeat(design.stratum_factors, [s.units for s in design.sampled])[:, None]
        first, second = self._effects[0::2], self._effects[1::2]
        return np.repeat(factor, 2, axis=0) * self._effects**2, factor * 2 * first * second

    @property
    def pair_effects(self) -> np.ndarray:
        """``(pairs, 2, M)``: every sampled pair's map from its two residuals to its effect on phi-hat."""
        return self._effects.reshape(-1, 2, self.design.n_features)

    def terms_shape(self, k: int) -> tuple[int, int, int]:
        """Shape of each of ``Explanation.global_terms``: (sampled pairs, M, k)."""
        return sum(s.units for s in self.design.sampled), self.design.n_features, k

    def zero_terms(self, k: int) -> dict[str, np.ndarray]:
        return {key: np.zeros(self.terms_shape(k)) for key in GLOBAL_TERMS}

    def solve(self, y: np.ndarray, delta: np.ndarray, reference: np.ndarray, prediction: np.ndarray,
              expected: np.ndarray, features: np.ndarray, *, global_terms: bool = True) -> Explanation:
        """SHAP values of ``n`` records from their coalition values.

        ``y``: ``(n, C, k)`` value of each design coalition minus the record's reference (empty coalition);
        ``delta``: ``(n, k)`` prediction minus reference, which the values must add up to.
        ``global_terms``: also sum the per-pair terms of the global aggregates (a job needs them, a
        request explaining a few records does not: they are then left at zero, read-only).
        """
        design = self.design
        # matmul, not einsum: these contractions go through BLAS (einsum without optimize loops in C, ~30x
        # slower at M = 20, and that time is spent with the model server idle).
        b = np.matmul(self._wz.T, y)
        phi = np.matmul(self.hessian, b) + self.constraint[None, :, None] * delta[:, None, :]
        # Remove the last rounding residue so that efficiency holds to machine precision.
        phi += ((delta - phi.sum(axis=1)) / phi.shape[1])[:, None, :]

        n, m, k = phi.shape
        if not design.sampled:
            stderr = np.zeros_like(phi)
            terms = self.zero_terms(k)
        else:
            weights = (np.sign(phi), 2 * phi) if global_terms else ()
            var, sums = self._pair_statistics(y, phi, weights)
            if global_terms:
                terms = dict(zip(GLOBAL_TERMS, sums, strict=True))
            else:
                terms = {key: np.broadcast_to(0.0, self.terms_shape(k)) for key in GLOBAL_TERMS}
            stderr = np.ascontiguousarray(np.sqrt(var).transpose(0, 2, 1))
        return Explanation(
            values=phi,
            stderr=stderr,
            expected_value=expected,
            reference=np.array(reference, dtype=float),
            prediction=prediction,
            features=features,
            design=design,
            global_terms=terms,
        )

    def _pair_statistics(self, y: np.ndarray, phi: np.ndarray,
                         weights: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The sampling variance of every value, ``(n, k, M)``, and for each of ``weights`` (``(n, M, k)``)
        the per-pair sums ``sum_n d[n, k, j, u] * w[n, j, k]`` of the global aggregates, ``(pairs, M, k)``.

        To first order a sampled pair ``u`` moves the estimate by its effect maps applied to its two
        residuals: ``d[u] = E_first[u] r_first[u] + E_second[u] r_second[u]`` (``_pair_effects``). The
        stratified variance (``CoalitionDesign.sampling_variance``) needs, per stratum, ``sum_u d`` and
        ``sum_u d^2``; both are matrix products of the residuals (and their squares and cross products)
        with the effect maps, so no ``(n, k, M, pairs)`` array of ``d`` is ever built (that array, made
        and squared element by element, was 15-20 % of a worker's time beside the model). Each product
        is batched over the records, one record at a time, so a record's values do not depend on the
        records explained with it (the endpoint's shared calls rely on that).
        """
        n, m, k = phi.shape
        resid = y[:, self._pair_rows] - np.matmul(self._pair_masks, phi)  # (n, 2 pairs, k), members interleaved
        by_output = np.ascontiguousarray(resid.transpose(0, 2, 1))  # (n, k, 2 pairs)
        # sum_s f_s sum_u d^2, all strata in two products (f_s is folded into the maps) ...
        squared, cross = self._kept_squared_maps or self._squared_maps()
        var = np.matmul(by_output * by_output, squared)  # (n, k, M)
        var += np.matmul(by_output[:, :, 0::2] * by_output[:, :, 1::2], cross)
        # ... minus sum_s f_s (sum_u d)^2 / m_s: the sums about each stratum's mean.
        first = 0
        for stratum, factor in zip(self.design.sampled, self.design.stratum_factors, strict=True):
            stop = first + stratum.units
            total = np.matmul(by_output[:, :, 2 * first:2 * stop], self._effects[2 * first:2 * stop])
            total *= total
            var -= (factor / stratum.units) * total
            first = stop
        np.maximum(var, 0.0, out=var)  # rounding could leave -1e-17 where a stratum's every d is equal
        sums = []
        for w in weights:
            # per output: (2 pairs, n) @ (n, M), then each member's row weighted by its effect map
            g = np.matmul(resid.transpose(2, 1, 0), w.transpose(2, 0, 1))  # (k, 2 pairs, M)
            g *= self._effects
            sums.append(np.ascontiguousarray(g.reshape(k, -1, 2, m).sum(axis=2).transpose(1, 2, 0)))
        return var, sums


class ScoringModel:
    """The model as Kernel SHAP sees it: calls cut to ``max_rows_per_call`` rows, checked, linked.

    Shared by the tabular explainer here and the text explainer (``text_shap``).
    """

    def __init__(self, model: Model | None, *, use_logit: bool = False, max_rows_per_call: int = 100_000):
        if max_rows_per_call < 1:
            raise ValueError(f"max_rows_per_call must be >= 1, got {max_rows_per_call}")
        self.model = model
        self.use_logit = use_logit
        self.max_rows_per_call = int(max_rows_per_call)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """``(rows, k)`` scores, calling the model with at most ``max_rows_per_call`` rows at a time."""
        if self.model is None:
            raise RuntimeError("this explainer only assembles results: it has no model to score rows with")
        chunks = []
        for i in range(0, len(rows), self.max_rows_per_call):
            part = rows[i : i + self.max_rows_per_call]
            try:
                out = np.asarray(self.model(part), dtype=float)
            except Exception as error:
                # A model client that knows which row was refused says so (analyzer.predict.ModelError).
                row = getattr(error, "row", None)
                if row is None:
                    raise
                raise ModelCallError(getattr(error, "reason", None) or str(error), i + row) from None
            if out.ndim == 1:
                out = out[:, None]
            if out.ndim != 2 or out.shape[0] != len(part):
                raise ValueError(
                    f"model returned an array of shape {out.shape} for {len(part)} rows; "
                    "expected (rows,) or (rows, outputs)"
                )
            chunks.append(out)
        return np.concatenate(chunks) if chunks else np.zeros((0, 1))

    def link(self, scores: np.ndarray) -> np.ndarray:
        """Identity, or log-odds with ``use_logit`` (scores must then be probabilities)."""
        return link(scores, self.use_logit)

    def expected_value(self, baseline: np.ndarray) -> np.ndarray:
        """``(k,)`` link of the mean score over the baseline rows (Clarify's ``expected_value``)."""
        return baseline_expected_value(self.predict(baseline), self.use_logit)

    def evaluate(self, rows: np.ndarray, records: np.ndarray, n_coalitions: int,
                 n_baseline: int) -> tuple[np.ndarray, np.ndarray]:
        """Linked values of some records' coalitions ``(n, coalitions, k)`` and of the records ``(n, k)``.

        ``rows`` holds the synthetic rows ordered (record, coalition, baseline row), then the ``n``
        records themselves: one model call for both. ``records`` are the records' indices in the batch
        being explained, used to name them in errors (``ModelOutputError``, ``ModelCallError``).
        """
        n = len(records)
        synthetic = n * n_coalitions * n_baseline
        try:
            scores = self.predict(rows)
        except ModelCallError as error:
            if error.row < synthetic:
                record = records[error.row // (n_coalitions * n_baseline)]
                raise error.for_record(int(record), synthetic=True) from None
            raise error.for_record(int(records[error.row - synthetic]), synthetic=False) from None
        return coalition_values(scores, records, n_coalitions, n_baseline, self.use_logit)


def link(scores: np.ndarray, use_logit: bool) -> np.ndarray:
    """Identity, or log-odds with ``use_logit`` (scores must then be probabilities)."""
    if not use_logit:
        return scores
    if np.any((scores < 0) | (scores > 1)):
        raise ValueError("use_logit requires model scores in [0, 1] (probabilities)")
    p = np.clip(scores, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def baseline_expected_value(baseline_scores: np.ndarray, use_logit: bool) -> np.ndarray:
    """``(k,)`` link of the mean score over the baseline rows (Clarify's ``expected_value``).

    ``baseline_scores``: ``(b,)`` or ``(b, k)``, the model's scores of the ``b`` baseline rows.
    """
    scores = np.asarray(baseline_scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"baseline scores must be (rows,) or (rows, outputs) with at least one row, got {scores.shape}")
    check_finite(scores[:, None, :], np.arange(len(scores)), "baseline rows", unit="baseline row")
    return link(scores.mean(axis=0), use_logit)


def coalition_values(scores: np.ndarray, records: np.ndarray, n_coalitions: int, n_baseline: int,
                     use_logit: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(v, fx)`` from the scores of rows ordered (record, coalition, baseline row), then the records.

    ``v``: ``(n, coalitions, k)`` linked mean over the baseline rows; ``fx``: ``(n, k)`` linked record
    scores. NaN/inf scores raise ``ModelOutputError`` naming ``records`` (the records' indices).
    """
    n = len(records)
    synthetic = n * n_coalitions * n_baseline
    # The output count from the scores' own shape: a design without coalitions (one explained feature)
    # has no synthetic rows, from which -1 could not be inferred.
    coalitions = scores[:synthetic].reshape(n, n_coalitions, n_baseline, scores.shape[-1])
    check_finite(coalitions, records, "synthetic rows")
    fx = scores[synthetic:]
    check_finite(fx[:, None, None, :], records, "records")
    # One baseline row: its "mean" is the row itself (the same bits, without a reduction pass).
    means = coalitions[:, :, 0, :] if n_baseline == 1 else coalitions.mean(axis=2)
    return link(means, use_logit), link(fx, use_logit)


@dataclass(frozen=True)
class KernelShapFit:
    """What Kernel SHAP learns from the baseline, once, and shares with every record it explains.

    Made by :func:`fit_kernel_shap`. Holds no model: explaining is ``synthetic_rows`` (one array),
    the caller's scores of those rows, then ``solve``; :meth:`explain` does the three with a scoring callable.
    Plain data (picklable): the batch job sends it to its worker processes.

    Attributes:
        baseline: ``(b, P)`` baseline rows.
        features: indices of the ``M`` explained columns, ascending.
        design, solver: the coalition design over the ``M`` features and its constrained WLS solution.
        masks: ``(C, P)`` per synthetic coalition, True where the row takes the record's value (columns not
            explained are always the record's); with ``partial`` the last row is the empty coalition.
        expected_value: ``(k,)`` link of the mean score of the baseline rows.
        use_logit: whether values are in log-odds.
    """

    baseline: np.ndarray
    features: np.ndarray
    design: CoalitionDesign
    solver: ShapSolver
    masks: np.ndarray
    expected_value: np.ndarray
    use_logit: bool

    @property
    def partial(self) -> bool:
        """Some columns are held at the record's value: the empty coalition then depends on the record."""
        return len(self.features) < self.baseline.shape[1]

    @property
    def rows_per_record(self) -> int:
        """Model rows one record costs: its synthetic rows and the record itself."""
        return len(self.masks) * len(self.baseline) + 1

    def check_records(self, records: np.ndarray) -> np.ndarray:
        """``records`` as a matrix with the baseline's columns (ValueError otherwise)."""
        x = as_matrix(records, "records")
        if x.shape[1] != self.baseline.shape[1]:
            raise ValueError(
                f"baseline has {self.baseline.shape[1]} columns but records have {x.shape[1]}; "
                "baseline rows must hold exactly the model's feature columns"
            )
        return x

    def synthetic_rows(self, x: np.ndarray) -> np.ndarray:
        """The rows to score for records ``x`` ``(n, P)``: ordered (record, coalition, baseline row), then
        the ``n`` records themselves, so that one model call serves both. A new array on every call."""
        n, n_cols = x.shape
        base = self.baseline
        synthetic = n * len(self.masks) * len(base)
        if x.dtype != np.float64 or base.dtype != np.float64 or self.masks.size * len(base) > TEMPLATE_LIMIT:
            if x.dtype != base.dtype:
                x, base = x.astype(object), base.astype(object)
            rows = np.empty((synthetic + n, n_cols), dtype=x.dtype)
            view = rows[:synthetic].reshape(n, len(self.masks), len(base), n_cols)
            view[...] = x[:, None, None, :]
            np.copyto(view, base[None, None, :, :], where=~self.masks[None, :, None, :])
            rows[synthetic:] = x
            return rows
        # where(mask, record, baseline) on the values' bit patterns: (record & mask) | (baseline & ~mask),
        # both masks kept from call to call when they are small (as a few records' rows). Exact for every
        # value (NaN, -0.0), and two passes over the rows instead of a broadcast fill and a masked copy
        # (~3x faster at P = 14).
        rows = np.empty((synthetic + n, n_cols))
        bits = rows.view(np.int64)
        view = bits[:synthetic].reshape(n, len(self.masks), len(base), n_cols)
        record_bits = np.ascontiguousarray(x).view(np.int64)
        np.bitwise_and(record_bits[:, None, None, :], self._record_bits[None, :, None, :], out=view)
        np.bitwise_or(view, self._baseline_bits, out=view)
        rows[synthetic:] = x
        return rows

    @cached_property
    def _record_bits(self) -> np.ndarray:
        """``(C, P)`` int64: all ones where a synthetic row takes the record's value, else zero."""
        return np.where(self.masks, np.int64(-1), np.int64(0))

    @cached_property
    def _baseline_bits(self) -> np.ndarray:
        """``(C, b, P)`` int64: the baseline's bit patterns where a synthetic row takes them, else zero."""
        base_bits = np.ascontiguousarray(self.baseline).view(np.int64)
        return np.where(self.masks[:, None, :], np.int64(0), base_bits[None, :, :])

    def __getstate__(self) -> dict:
        # Worker processes get the fit, not the caches derived from it (they rebuild them on first use).
        return {key: value for key, value in self.__dict__.items() if key not in ("_record_bits", "_baseline_bits")}

    def values(self, scores: np.ndarray, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(v, fx)`` from the ``(rows, k)`` scores of ``synthetic_rows`` (``records``: their indices, for errors)."""
        return coalition_values(scores, records, len(self.masks), len(self.baseline), self.use_logit)

    def solve(self, v: np.ndarray, fx: np.ndarray, *, global_terms: bool = True) -> Explanation:
        """SHAP values from coalition values ``v`` ``(n, C, k)`` and record values ``fx`` ``(n, k)``."""
        expected = self.expected_value
        if v.shape[-1] != len(expected):
            raise ValueError(f"the model returned {v.shape[-1]} output(s) per row, but {len(expected)} for the "
                             "baseline rows")
        if self.partial:
            v0, v = v[:, -1, :], v[:, :-1, :]
        else:
            v0 = np.broadcast_to(expected, fx.shape)
        return self.solver.solve(v - v0[:, None, :], fx - v0, v0, fx, expected, self.features,
                                 global_terms=global_terms)

    def empty(self) -> Explanation:
        """The explanation of no record."""
        k = len(self.expected_value)
        values = np.zeros((0, len(self.features), k))
        return Explanation(values, values, self.expected_value, np.zeros((0, k)), np.zeros((0, k)),
                           self.features, self.design, self.solver.zero_terms(k))

    def explain(self, records: np.ndarray, score: Model, *, global_terms: bool = True) -> Explanation:
        """SHAP values of ``records`` with one call ``score(rows)`` (no batching: meant for a few records)."""
        x = self.check_records(records)
        if len(x) == 0:
            return self.empty()
        scores = np.asarray(score(self.synthetic_rows(x)), dtype=float)
        if scores.ndim == 1:
            scores = scores[:, None]
        expected_rows = len(x) * self.rows_per_record
        if scores.ndim != 2 or scores.shape[0] != expected_rows:
            raise ValueError(f"model returned an array of shape {scores.shape} for {expected_rows} rows; "
                             "expected (rows,) or (rows, outputs)")
        return self.solve(*self.values(scores, np.arange(len(x))), global_terms=global_terms)


def fit_kernel_shap(baseline: np.ndarray, baseline_scores: np.ndarray, *, num_samples: int | None = None,
                    seed: int | None = None, use_logit: bool = False,
                    features_to_explain: Sequence[int] | None = None) -> KernelShapFit:
    """Fit Kernel SHAP to a baseline: the coalition design, its solver and the expected value.

    ``baseline``: ``(b, P)`` rows (features only); ``baseline_scores``: the model's scores of those rows,
    ``(b,)`` or ``(b, k)``. ``num_samples``, ``seed``, ``use_logit``, ``features_to_explain``: as for
    :class:`KernelShap`. No model is called here.
    """
    base = as_matrix(baseline, "baseline")
    if len(base) == 0:
        raise ValueError("baseline has no rows")
    n_cols = base.shape[1]
    features = _feature_indices(features_to_explain, n_cols)
    design = make_design(len(features), num_samples, seed)
    scores = np.asarray(baseline_scores, dtype=float)
    if scores.shape[:1] != (len(base),):
        raise ValueError(f"{len(base)} baseline row(s) but scores of shape {scores.shape}")
    expected = baseline_expected_value(scores, use_logit)

    masks = np.ones((len(design.masks), n_cols), dtype=bool)
    masks[:, features] = design.masks
    if len(features) < n_cols:
        # The empty coalition depends on the record when some columns stay fixed: evaluate it too.
        empty = np.ones((1, n_cols), dtype=bool)
        empty[0, features] = False
        masks = np.vstack([masks, empty])
    return KernelShapFit(baseline=base, features=features, design=design, solver=ShapSolver(design), masks=masks,
                         expected_value=expected, use_logit=use_logit)


class KernelShap:
    """Kernel SHAP explainer for a scoring callable and a baseline (background) dataset.

    A :class:`KernelShapFit` (fitted on construction: the model scores the baseline once) plus the model,
    called with large blocks of records' synthetic rows.

    Args:
        model: ``model(rows: ndarray (r, P)) -> ndarray (r,) or (r, k)``.
        baseline: ``(b, P)`` baseline rows (features only); object dtype when any column is non-numeric.
        num_samples: coalition budget per record; default ``min(2M + 2048, 2**M - 2)``. When all
            ``2**M - 2`` coalitions fit, the values are exact Shapley values.
        seed: seed of the coalition sampling (``None``: not reproducible).
        use_logit: attribute log-odds ``logit(mean_b score)`` instead of scores (scores must be in [0, 1]).
        features_to_explain: column indices to attribute (default all). The other columns keep the
            record's value in every synthetic row, so they are held fixed rather than attributed.
        max_rows_per_call: largest number of rows passed to ``model`` in one call.
        parallel_calls: calls to ``model`` run at once, each with its own group of records (threads:
            ``model`` must be thread-safe when > 1). The groups are the same whatever this is, so the
            values are too, even for a model whose last bits depend on the rows scored beside a row.
    """

    def __init__(
        self,
        model: Model,
        baseline: np.ndarray,
        *,
        num_samples: int | None = None,
        seed: int | None = None,
        use_logit: bool = False,
        features_to_explain: Sequence[int] | None = None,
        max_rows_per_call: int = 100_000,
        parallel_calls: int = 1,
    ):
        self.scorer = ScoringModel(model, use_logit=use_logit, max_rows_per_call=max_rows_per_call)
        self.parallel_calls = max(1, parallel_calls)
        base = as_matrix(baseline, "baseline")
        if len(base) == 0:
            raise ValueError("baseline has no rows")
        self.fitted = fit_kernel_shap(base, self.scorer.predict(base), num_samples=num_samples, seed=seed,
                                      use_logit=use_logit, features_to_explain=features_to_explain)

    @classmethod
    def from_fit(cls, fitted: KernelShapFit, model: Model | None, *, max_rows_per_call: int = 100_000,
                 parallel_calls: int = 1) -> KernelShap:
        """An explainer over an existing fit (``model`` None: it can only assemble, never score)."""
        explainer = cls.__new__(cls)
        explainer.scorer = ScoringModel(model, use_logit=fitted.use_logit, max_rows_per_call=max_rows_per_call)
        explainer.fitted = fitted
        explainer.parallel_calls = max(1, parallel_calls)
        return explainer

    @property
    def baseline(self) -> np.ndarray:
        return self.fitted.baseline

    @property
    def features(self) -> np.ndarray:
        return self.fitted.features

    @property
    def design(self) -> CoalitionDesign:
        return self.fitted.design

    @property
    def solver(self) -> ShapSolver:
        return self.fitted.solver

    @property
    def expected_value(self) -> np.ndarray:
        """``(k,)`` link of the mean model score over the baseline."""
        return self.fitted.expected_value

    def explain(self, records: np.ndarray) -> Explanation:
        """SHAP values (and standard errors) of ``records`` ``(n, P)``, ``P`` = baseline columns."""
        x = self.fitted.check_records(records)
        if len(x) == 0:
            return self.fitted.empty()
        return Explanation.concat(self._explain_groups(x))

    def _explain_groups(self, x: np.ndarray) -> Iterator[Explanation]:
        """The records' explanations, group by group of about ``GROUP_ROWS`` synthetic rows."""
        group = max(1, min(self.scorer.max_rows_per_call, GROUP_ROWS) // self.fitted.rows_per_record)
        if len(x) <= group:  # one group: nothing to overlap, no thread to start
            yield self.fitted.solve(*self._evaluate(x, 0))
            return
        # The next groups' rows are built and scored on other threads while this one is solved, so the
        # model is not left idle during the solve (numpy, the model's native code and the HTTP waits
        # release the GIL); ``parallel_calls`` groups are with the model at once.
        with ThreadPoolExecutor(max_workers=self.parallel_calls, thread_name_prefix="shap-evaluate") as pool:
            pending: deque[Future] = deque()
            for i in range(0, len(x), group):
                pending.append(pool.submit(self._evaluate, x[i : i + group], i))
                if len(pending) > self.parallel_calls:
                    yield self.fitted.solve(*pending.popleft().result())
            while pending:
                yield self.fitted.solve(*pending.popleft().result())

    def _evaluate(self, x: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """``(v, fx)``: coalition values ``(n, C, k)`` and record values ``(n, k)`` of one group."""
        return self.scorer.evaluate(self.fitted.synthetic_rows(x), offset + np.arange(len(x)),
                                    len(self.fitted.masks), len(self.fitted.baseline))


def _kkt_inverse(design: CoalitionDesign) -> tuple[np.ndarray, np.ndarray]:
    """``(H, g)`` with ``phi = H @ (Z^T W y) + g * delta``: the constrained WLS solution operator.

    Inverting the (M+1)-square KKT matrix ``[[Z^T W Z, 1], [1^T, 0]]`` once serves every record; ``H`` is
    also the sensitivity of ``phi`` to the normal-equation right-hand side, used for standard errors. A
    design too small to identify all values (budget below ~M coalitions) falls back to the minimum-norm
    solution (pseudo-inverse).
    """
    m = design.n_features
    z = design.masks.astype(float)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = z.T @ (z * design.weights[:, None])
    kkt[:m, m] = kkt[m, :m] = 1.0
    inv = np.linalg.inv(kkt) if np.linalg.cond(kkt) < 1e10 else np.linalg.pinv(kkt)
    return inv[:m, :m], inv[:m, m]


def _pair_effects(design: CoalitionDesign, hessian: np.ndarray) -> np.ndarray:
    """``(pairs, 2, M)``: for each sampled pair (strata in order), the map from its two residuals to its
    effect on phi-hat.

    To first order a pair moves the estimate by ``H (w z_a r_a + w z_b r_b)``. Residuals of the fitted
    values are smaller than the true errors (each pair pulls the fit towards itself), which made the
    plug-in variance undercover at small budgets; as in the HC3 / jackknife variance of regression, each
    pair's residuals are first inflated by ``(I - P_uu)^-1``, ``P_uu`` being the pair's 2x2 block of the
    weighted hat matrix. That is the exact leave-one-pair-out change of the fit.
    """
    z = design.masks.astype(float)
    effect = (z * design.weights[:, None]) @ hessian.T
    out = []
    for s in design.sampled:
        zs = z[s.start : s.stop].reshape(s.units, 2, -1)
        es = effect[s.start : s.stop].reshape(s.units, 2, -1)
        hat = np.einsum("upm,uqm->upq", es, zs)  # w_p z_p H z_q, H being symmetric
        deflate = _inverse_2x2(np.eye(2)[None] - hat)
        out.append(np.einsum("upa,upj->uaj", deflate, es))
    return np.concatenate(out) if out else np.zeros((0, 2, design.n_features))


def _inverse_2x2(blocks: np.ndarray) -> np.ndarray:
    """Inverse of each 2x2 block; pseudo-inverse where a block is singular.

    ``I - P_uu`` is singular when the pair alone determines some values (leverage 1), which happens with
    budgets below ~M coalitions: its leave-one-out change is then undefined and the pseudo-inverse keeps
    the part that is defined instead of failing.
    """
    det = blocks[:, 0, 0] * blocks[:, 1, 1] - blocks[:, 0, 1] * blocks[:, 1, 0]
    singular = np.abs(det) < 1e-12
    out = np.empty_like(blocks)
    out[~singular] = np.linalg.inv(blocks[~singular])
    if singular.any():
        out[singular] = np.linalg.pinv(blocks[singular])
    return out


def check_finite(scores: np.ndarray, records: np.ndarray, what: str, unit: str = "record") -> None:
    """Raise ModelOutputError naming how many rows and which records got NaN/inf scores.

    ``scores`` is (records, coalitions, baseline rows, outputs) or a broadcastable 3-D view; ``records``
    holds the index of each of its records, for the message.
    """
    bad = ~np.isfinite(scores)
    if not bad.any():
        return
    bad_rows = bad.reshape(bad.shape[0], -1, bad.shape[-1]).any(axis=-1)
    per_record = bad_rows.sum(axis=1)
    hit = np.flatnonzero(per_record)
    named = [int(records[i]) for i in hit]
    more = f" and {len(hit) - 1} more {unit}(s)" if len(hit) > 1 else ""
    raise ModelOutputError(
        f"model returned NaN or infinite scores for {int(per_record.sum())} {what} "
        f"({int(per_record[hit[0]])} of {bad_rows.shape[1]} for {unit} {named[0]}{more})",
        named,
    )


def as_matrix(data, name: str) -> np.ndarray:
    """2-D float array, or object array when the input is not numeric (categories replace as a whole).

    Object input stays object even when it looks numeric: a string category "1" must reach the model
    as the string it was given. Rows come out row-major (C order): a DataFrame's values are usually
    column-major, synthetic rows built from them would be too, and the model client would then copy every
    call into rows (~70 MB per call of 400,000 rows of 20 features).
    """
    arr = data.to_numpy() if hasattr(data, "to_numpy") else np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, columns), got {arr.ndim} dimension(s)")
    return np.ascontiguousarray(arr, dtype=float if arr.dtype.kind in "biuf" else object)


def _feature_indices(features: Sequence[int] | None, n_cols: int) -> np.ndarray:
    if features is None:
        return np.arange(n_cols)
    idx = np.asarray(list(features), dtype=int)
    if idx.size == 0:
        raise ValueError("features_to_explain is empty")
    if idx.min() < 0 or idx.max() >= n_cols or len(set(idx.tolist())) != idx.size:
        raise ValueError(f"features_to_explain must be distinct column indices in [0, {n_cols}), got {idx.tolist()}")
    return np.sort(idx)
