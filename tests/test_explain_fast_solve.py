"""The fast paths of Kernel SHAP (bit-pattern synthetic rows, standard errors and global terms as matrix
products per stratum, variance along the pairs axis) against the straightforward computation they replace."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from analyzer.explain import kernel_shap
from analyzer.explain.design import make_design
from analyzer.explain.kernel_shap import KernelShap, ShapSolver, fit_kernel_shap
from analyzer.explain.online import OnlineShapSettings, fit_online_explainer


def _model(weights: np.ndarray):
    def score(rows: np.ndarray) -> np.ndarray:
        r = np.nan_to_num(np.asarray(rows, dtype=float))
        return 1 / (1 + np.exp(-(r @ weights + np.sin(r[:, :1] * r[:, -1:]))))
    return score


def _plain_rows(fit, x: np.ndarray) -> np.ndarray:
    """One row at a time: where(mask, record, baseline row), then the records."""
    rows = [np.where(mask, record, base) for record in x for mask in fit.masks for base in fit.baseline]
    return np.vstack(rows + list(x))


def _plain_solve(solver: ShapSolver, y: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Values from the KKT system solved per record and output, standard errors and global terms from a
    loop over pairs and strata (the estimator of docs/kernel-shap.md, written out)."""
    design = solver.design
    n, _, k = y.shape
    m = design.n_features
    z = design.masks.astype(float)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = z.T @ (z * design.weights[:, None])
    kkt[:m, m] = kkt[m, :m] = 1.0
    phi = np.zeros((n, m, k))
    for i in range(n):
        for o in range(k):
            rhs = np.append(z.T @ (design.weights * y[i, :, o]), delta[i, o])
            phi[i, :, o] = np.linalg.solve(kkt, rhs)[:m]
    var = np.zeros((n, m, k))
    pairs = sum(s.units for s in design.sampled)
    terms = {"mean_abs": np.zeros((pairs, m, k)), "mean_sq": np.zeros((pairs, m, k))}
    u0 = 0
    for stratum in design.sampled:
        effects = np.zeros((stratum.units, n, m, k))
        for u in range(stratum.units):
            rows = [stratum.start + 2 * u, stratum.start + 2 * u + 1]
            for i in range(n):
                for o in range(k):
                    resid = y[i, rows, o] - z[rows] @ phi[i, :, o]
                    effects[u, i, :, o] = solver.pair_effects[u0 + u].T @ resid
            terms["mean_abs"][u0 + u] = (effects[u] * np.sign(phi)).sum(axis=0)
            terms["mean_sq"][u0 + u] = (effects[u] * 2 * phi).sum(axis=0)
        units, population = stratum.units, stratum.population
        factor = (1 - units / population) * units / (units - 1) if units > 1 else np.nan
        var += factor * ((effects - effects.mean(axis=0)) ** 2).sum(axis=0)
        u0 += units
    return phi, np.sqrt(var), terms


@pytest.mark.parametrize(("m", "b", "num_samples", "k"), [(14, 1, None, 2), (9, 3, 120, 1), (12, 2, 300, 3),
                                                       (6, 1, None, 1), (40, 1, 2000, 2)])
def test_solve_equals_the_straightforward_computation(m, b, num_samples, k):
    rng = np.random.default_rng(m * 100 + b)
    weights = rng.normal(size=(m, k))
    explainer = KernelShap(_model(weights), rng.normal(size=(b, m)), num_samples=num_samples, seed=5)
    x = rng.normal(size=(3, m))
    explanation = explainer.explain(x)
    fit = explainer.fitted
    v, fx = fit.values(np.asarray(_model(weights)(_plain_rows(fit, x))), np.arange(len(x)))
    v0 = np.broadcast_to(fit.expected_value, fx.shape)
    phi, stderr, terms = _plain_solve(fit.solver, v - v0[:, None, :], fx - v0)
    # m = 40: maps too large to keep, their squares are built per solve (kernel_shap.SQUARED_MAPS_KEPT)
    assert (fit.solver._kept_squared_maps is None) == (m == 40)
    np.testing.assert_allclose(explanation.values, phi, rtol=0, atol=1e-12)
    np.testing.assert_allclose(explanation.stderr, stderr, rtol=0, atol=1e-12)
    assert fit.design.exact == (m == 6) and (stderr == 0).all() == (m == 6)
    for key, value in terms.items():
        np.testing.assert_allclose(explanation.global_terms[key], value, rtol=1e-12, atol=1e-12)


def test_sampling_variance_along_any_axis_equals_the_loop_over_strata():
    design = make_design(10, 200, seed=1)
    pairs = sum(s.units for s in design.sampled)
    effects = np.random.default_rng(0).normal(size=(pairs, 10, 2))
    expected = np.zeros((10, 2))
    start = 0
    for s in design.sampled:
        block = effects[start:start + s.units]
        factor = (1 - s.units / s.population) * s.units / (s.units - 1)
        expected += factor * ((block - block.mean(axis=0)) ** 2).sum(axis=0)
        start += s.units
    np.testing.assert_allclose(design.sampling_variance(effects), expected, rtol=1e-13)
    moved = np.ascontiguousarray(np.moveaxis(effects, 0, -1))
    np.testing.assert_allclose(design.sampling_variance(moved, axis=-1), expected, rtol=1e-13)
    scratch = moved.copy()
    np.testing.assert_allclose(design.sampling_variance(scratch, axis=2, overwrite_input=True), expected, rtol=1e-13)
    np.testing.assert_array_equal(moved, np.ascontiguousarray(np.moveaxis(effects, 0, -1)))  # input kept


def test_a_stratum_with_one_drawn_pair_gives_nan():
    design = make_design(8, 10, seed=3)
    assert any(s.units == 1 for s in design.sampled)
    variance = design.sampling_variance(np.ones((sum(s.units for s in design.sampled), 8, 1)))
    assert np.isnan(variance).all()


def test_synthetic_rows_are_bit_for_bit_where_mask_record_else_baseline():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 7))
    base[0, 1], base[1, 2], base[2, 3] = -0.0, np.nan, np.inf
    x = rng.normal(size=(2, 7))
    x[0, 0], x[0, 4], x[1, 5], x[1, 6] = np.nan, -0.0, -np.inf, 5e-324
    for features in (None, [0, 2, 5]):  # partial: the other columns keep the record's value
        fit = fit_kernel_shap(base, np.zeros(3), num_samples=40, seed=1, features_to_explain=features)
        rows = fit.synthetic_rows(x)
        expected = _plain_rows(fit, x)
        assert rows.dtype == np.float64 and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows.view(np.int64), expected.view(np.int64))
        assert fit.synthetic_rows(x) is not rows  # a new array each call: callers may keep it


def test_designs_too_large_for_bit_masks_build_the_same_rows(monkeypatch):
    rng = np.random.default_rng(3)
    base, x = rng.normal(size=(2, 6)), rng.normal(size=(3, 6))
    x[1, 2] = np.nan
    fit = fit_kernel_shap(base, np.zeros(2), num_samples=30, seed=1)
    monkeypatch.setattr(kernel_shap, "TEMPLATE_LIMIT", fit.masks.size * len(base) - 1)
    rows = fit.synthetic_rows(x)
    assert "_record_bits" not in fit.__dict__  # the masked copy, no bit masks kept
    np.testing.assert_array_equal(rows.view(np.int64), _plain_rows(fit, x).view(np.int64))


def test_object_records_keep_their_values():
    base = np.array([["a", 1.0], ["b", 2.0]], dtype=object)
    fit = fit_kernel_shap(base, np.zeros(2), seed=0)
    x = np.array([["c", 3.0]], dtype=object)
    rows = fit.synthetic_rows(x)
    assert rows.dtype == object
    np.testing.assert_array_equal(rows, _plain_rows(fit, x))


def test_a_pickled_fit_leaves_its_caches_behind_and_explains_the_same():
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(14, 2))
    fit = fit_kernel_shap(rng.normal(size=(1, 14)), _model(weights)(rng.normal(size=(1, 14))), seed=2)
    x = rng.normal(size=(2, 14))
    before = fit.explain(x, _model(weights))
    assert "_record_bits" in fit.__dict__ and "_baseline_bits" in fit.__dict__
    copy = pickle.loads(pickle.dumps(fit))
    assert not {"_record_bits", "_baseline_bits"} & copy.__dict__.keys()
    after = copy.explain(x, _model(weights))
    np.testing.assert_array_equal(after.values, before.values)
    np.testing.assert_array_equal(after.stderr, before.stderr)


def test_concurrent_explanations_equal_sequential_ones():
    """Each thread has its own scratch arrays: explaining from several threads at once (the endpoint)
    gives exactly the values and standard errors of one-by-one calls, whatever the record sizes."""
    rng = np.random.default_rng(6)
    weights = rng.normal(size=(14, 2))
    explainer = fit_online_explainer(rng.normal(size=(1, 14)), _model(weights), OnlineShapSettings(seed=3))
    batches = [rng.normal(size=(1 + i % 3, 14)) for i in range(24)]
    expected = [explainer.explain(batch) for batch in batches]
    mismatches: list[int] = []
    done: list[int] = []
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        start.wait(timeout=30)
        for _ in range(20):
            for i in range(worker, len(batches), 8):
                if explainer.explain(batches[i]) != expected[i]:
                    mismatches.append(i)
        done.append(worker)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(done) == list(range(8))
    assert mismatches == []


def test_online_entries_match_the_explanation():
    rng = np.random.default_rng(8)
    weights = rng.normal(size=(8, 2))
    base = rng.normal(size=(2, 8))
    explainer = fit_online_explainer(base, _model(weights), OnlineShapSettings(num_samples=10, seed=3))
    x = rng.normal(size=(2, 8))
    entries = explainer.explain(x)
    explanation = explainer.tabular.explain(x, _model(weights), global_terms=False)
    assert np.isnan(explanation.stderr).any()  # one drawn pair in some stratum: null in JSON
    for i, entry in enumerate(entries):
        for j, feature in enumerate(entry):
            (item,) = feature["attributions"]
            assert item["attribution"] == explanation.values[i, j].tolist()
            assert item["lucent_stderr"] == [None if np.isnan(e) else e for e in explanation.stderr[i, j].tolist()]


def test_standard_errors_are_never_nan_where_every_pair_has_the_same_effect():
    """Coalition values that are additive plus one constant for every proper coalition: each pair of a
    stratum then has the same effect, so the sums of squares about the strata's means are differences of
    equal numbers, which rounding must not take below zero (a NaN standard error)."""
    design = make_design(10, 200, seed=0)
    solver = ShapSolver(design)
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(20, 10)) * 1e3
    y = (design.masks.astype(float) @ beta.T + rng.normal(size=20) * 1e3).T[:, :, None]  # (n, C, 1)
    delta = beta.sum(axis=1, keepdims=True)
    explanation = solver.solve(y, delta, np.zeros(1), delta, np.zeros(1), np.arange(10))
    assert np.isfinite(explanation.stderr).all()
    assert explanation.stderr.max() < 1e-3  # the values are ~1e3: what is left is rounding
