"""Kernel SHAP against brute-force Shapley values (enumeration of all 2^M coalitions)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier

from analyzer.explain import (
    Explanation,
    KernelShap,
    ModelOutputError,
    aggregate,
    default_num_samples,
    make_design,
)


def brute_force(model, records, baseline, features=None, link=lambda p: p):
    """Exact Shapley values (n, M, k) of v(S) = link(mean_b model(x_S, b_rest)) by the Shapley formula.

    Independent of the estimator: evaluates every subset of the explained features and sums the weighted
    marginal contributions; non-explained columns keep the record's value.
    """
    records = np.asarray(records)
    baseline = np.asarray(baseline)
    n, p = records.shape
    feats = np.arange(p) if features is None else np.asarray(features)
    m = len(feats)
    subsets = (np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1  # bit j of s: feature j present
    masks = np.ones((2**m, p), dtype=bool)
    masks[:, feats] = subsets.astype(bool)
    rows = np.where(masks[None, :, None, :], records[:, None, None, :], baseline[None, None, :, :])
    scores = np.asarray(model(rows.reshape(-1, p)), dtype=float).reshape(n, 2**m, len(baseline), -1)
    v = link(scores.mean(axis=2))  # (n, 2^m, k)
    sizes = subsets.sum(axis=1)
    fact = np.array([float(np.prod(np.arange(1, i + 1))) for i in range(m + 1)])
    weight = fact[sizes] * fact[m - sizes - 1].clip(min=1) / fact[m]
    phi = np.zeros((n, m, v.shape[2]))
    for j in range(m):
        without = np.flatnonzero(subsets[:, j] == 0)
        phi[:, j] = np.einsum("s,nsk->nk", weight[without], v[:, without | (1 << j)] - v[:, without])
    return phi


def logit(p):
    return np.log(p) - np.log1p(-p)


def nonlinear(a):
    """Smooth model with interactions up to order 3 (Kernel SHAP is not exact on it when sampling)."""
    a = np.asarray(a, dtype=float)
    return (np.tanh(a[:, 0] * a[:, 1]) + a[:, 2] ** 2 - a[:, 3] * a[:, 4] * a[:, 5]
            + np.sin(a[:, 6] + a[:, 7] * a[:, 8]) + a[:, 9] * a[:, 1] * a[:, 2]
            + np.exp(0.3 * a[:, 3] * a[:, 8] * a[:, 9]) + 0.5 * a[:, 10:].sum(axis=1))


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="module")
def tree_model():
    gen = np.random.default_rng(1)
    x = gen.normal(size=(400, 10))
    y = x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + (x[:, 3] > 0) * x[:, 4] + 0.1 * x[:, 5:].sum(axis=1)
    return GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)


@pytest.fixture(scope="module")
def classifier():
    gen = np.random.default_rng(2)
    x = gen.normal(size=(300, 10))
    y = np.digitize(x[:, 0] + x[:, 1] * x[:, 2] + 0.5 * x[:, 3], [-0.7, 0.7])
    return RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(x, y)


# -- exact mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", range(2, 11))
def test_exact_linear_one_baseline_row(m, rng):
    beta = rng.normal(size=m)
    model = lambda a: a @ beta  # noqa: E731
    x, base = rng.normal(size=(5, m)), rng.normal(size=(1, m))
    out = KernelShap(model, base).explain(x)
    assert out.design.exact
    np.testing.assert_allclose(out.values, brute_force(model, x, base), atol=1e-8)
    np.testing.assert_allclose(out.values[:, :, 0], beta * (x - base), atol=1e-8)  # closed form
    assert np.all(out.stderr == 0)


@pytest.mark.parametrize("m", range(2, 11))
def test_exact_tree_ensemble_several_baseline_rows(m, rng, tree_model):
    def model(a):
        full = np.zeros((len(a), 10))
        full[:, :m] = a
        return tree_model.predict(full)

    x, base = rng.normal(size=(4, m)), rng.normal(size=(3, m))
    out = KernelShap(model, base).explain(x)
    np.testing.assert_allclose(out.values, brute_force(model, x, base), atol=1e-8)
    np.testing.assert_allclose(out.expected_value, model(base).mean(keepdims=True), atol=1e-12)


@pytest.mark.parametrize("m", range(2, 11))
def test_exact_multi_output_classifier(m, rng, classifier):
    def model(a):
        full = np.zeros((len(a), 10))
        full[:, :m] = a
        return classifier.predict_proba(full)

    x, base = rng.normal(size=(3, m)), rng.normal(size=(2, m))
    out = KernelShap(model, base).explain(x)
    assert out.values.shape == (3, m, 3)
    np.testing.assert_allclose(out.values, brute_force(model, x, base), atol=1e-8)
    np.testing.assert_allclose(out.values.sum(axis=1) + out.expected_value, model(x), atol=1e-10)


def test_default_budget_is_exact_up_to_eleven_features():
    assert make_design(11).exact and not make_design(12).exact
    assert default_num_samples(10) == 1022 and default_num_samples(20) == 2088


# -- sampled mode --------------------------------------------------------------------------------------


def test_sampled_efficiency_per_record(rng):
    x, base = rng.normal(size=(30, 16)), rng.normal(size=(2, 16))
    out = KernelShap(nonlinear, base, num_samples=300, seed=3).explain(x)
    assert not out.design.exact
    target = nonlinear(x) - nonlinear(base).mean()
    np.testing.assert_allclose(out.values[:, :, 0].sum(axis=1), target, atol=1e-8)
    np.testing.assert_allclose(out.prediction[:, 0] - out.reference[:, 0], target, atol=1e-12)


def test_error_shrinks_with_budget(rng):
    x, base = rng.normal(size=(20, 12)), rng.normal(size=(1, 12))
    exact = brute_force(nonlinear, x, base)
    errors = []
    for budget in (60, 250, 1000, 4094):
        errs = [np.abs(KernelShap(nonlinear, base, num_samples=budget, seed=s).explain(x).values - exact).mean()
                for s in range(4)]
        errors.append(np.mean(errs))
    assert errors[0] > 1.5 * errors[1] > 1.5 * 1.5 * errors[2]
    assert errors[3] < 1e-10  # 4094 = 2^12 - 2: exact


def test_same_seed_same_values_and_seed_matters(rng):
    x, base = rng.normal(size=(8, 14)), rng.normal(size=(2, 14))
    a = KernelShap(nonlinear, base, num_samples=200, seed=11).explain(x)
    b = KernelShap(nonlinear, base, num_samples=200, seed=11).explain(x)
    c = KernelShap(nonlinear, base, num_samples=200, seed=12).explain(x)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert np.abs(a.values - c.values).max() > 1e-6


def test_results_independent_of_batching(rng):
    x, base = rng.normal(size=(9, 14)), rng.normal(size=(3, 14))
    whole = KernelShap(nonlinear, base, num_samples=300, seed=5).explain(x)
    explainer = KernelShap(nonlinear, base, num_samples=300, seed=5, max_rows_per_call=250)
    parts = Explanation.concat([explainer.explain(x[:4]), explainer.explain(x[4:5]), explainer.explain(x[5:])])
    np.testing.assert_allclose(parts.values, whole.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(parts.stderr, whole.stderr, rtol=0, atol=1e-12)
    for agg in ("mean_abs", "mean_sq", "median"):
        np.testing.assert_allclose(aggregate(parts, agg).stderr, aggregate(whole, agg).stderr, atol=1e-12)


def test_model_called_with_large_chunks(rng):
    calls = []

    def model(a):
        calls.append(len(a))
        return nonlinear(a)

    x, base = rng.normal(size=(50, 12)), rng.normal(size=(1, 12))
    KernelShap(model, base, num_samples=500, seed=0, max_rows_per_call=10_000).explain(x)
    assert max(calls) <= 10_000
    assert sum(c >= 5_000 for c in calls) >= 2  # synthetic rows go in big blocks, not per record


# -- standard errors -----------------------------------------------------------------------------------


def test_stderr_covers_true_error(rng):
    x, base = rng.normal(size=(25, 10)), rng.normal(size=(2, 10))
    exact = brute_force(nonlinear, x, base)
    truth = {"mean_abs": np.abs(exact).mean(0), "mean_sq": (exact**2).mean(0), "median": np.median(exact, 0)}
    local, glob = [], []
    for seed in range(20):
        for budget in (80, 300):
            out = KernelShap(nonlinear, base, num_samples=budget, seed=seed).explain(x)
            assert np.all(out.stderr > 0)
            local.append(np.abs(out.values - exact) < 1.96 * out.stderr)
            for agg, true in truth.items():
                g = aggregate(out, agg)
                glob.append(np.abs(g.values - true) < 1.96 * g.stderr)
    assert 0.92 <= np.mean(local) <= 0.98
    assert 0.90 <= np.mean(glob) <= 0.99


# -- inputs: categories, logit, subsets ----------------------------------------------------------------


def test_categorical_object_columns(rng):
    colors = np.array(["red", "green", "blue"], dtype=object)
    effect = {"red": 1.0, "green": -2.0, "blue": 0.5}
    seen_dtypes = set()

    def model(a):
        seen_dtypes.add(a.dtype)
        col = np.array([effect[c] for c in a[:, 1]])
        return a[:, 0].astype(float) * col + a[:, 2].astype(float) ** 2 + (a[:, 3] == "yes") * a[:, 0].astype(float)

    def table(n):
        return np.column_stack([rng.normal(size=n), rng.choice(colors, n), rng.normal(size=n),
                                rng.choice(np.array(["yes", "no"], dtype=object), n)]).astype(object)

    x, base = table(6), table(2)
    out = KernelShap(model, base).explain(x)
    assert seen_dtypes == {np.dtype(object)}
    np.testing.assert_allclose(out.values, brute_force(model, x, base), atol=1e-8)


def test_use_logit(rng, classifier):
    def model(a):
        return classifier.predict_proba(a)[:, 1] * 0.98 + 0.01

    x, base = rng.normal(size=(4, 10)), rng.normal(size=(3, 10))
    out = KernelShap(model, base, use_logit=True).explain(x)
    np.testing.assert_allclose(out.values, brute_force(model, x, base, link=logit), atol=1e-8)
    np.testing.assert_allclose(out.expected_value, logit(model(base).mean(keepdims=True)), atol=1e-12)
    np.testing.assert_allclose(out.values[:, :, 0].sum(1), logit(model(x)) - out.expected_value, atol=1e-8)


def test_use_logit_clips_zero_one_and_rejects_non_probabilities(rng):
    x, base = rng.normal(size=(3, 4)), rng.normal(size=(1, 4))
    out = KernelShap(lambda a: (a[:, 0] > 0).astype(float), base, use_logit=True).explain(x)
    assert np.all(np.isfinite(out.values))
    with pytest.raises(ValueError, match="use_logit requires model scores in \\[0, 1\\]"):
        KernelShap(lambda a: a[:, 0] * 5, base, use_logit=True).explain(x)


def test_features_to_explain(rng):
    x, base = rng.normal(size=(5, 12)), rng.normal(size=(2, 12))
    feats = [10, 0, 3, 7, 8, 9]
    out = KernelShap(nonlinear, base, features_to_explain=feats).explain(x)
    assert out.values.shape == (5, 6, 1) and out.design.exact
    np.testing.assert_array_equal(out.features, sorted(feats))
    np.testing.assert_allclose(out.values, brute_force(nonlinear, x, base, features=sorted(feats)), atol=1e-8)
    # Non-explained columns stay at the record's value: the attribution starts from the record with only
    # the explained columns taken from the baseline, not from the baseline's mean score.
    rest = np.setdiff1d(np.arange(12), feats)
    start = np.array([nonlinear(np.where(np.isin(np.arange(12), rest), xi, base)).mean() for xi in x])
    np.testing.assert_allclose(out.reference[:, 0], start, atol=1e-12)
    np.testing.assert_allclose(out.values.sum(1)[:, 0], nonlinear(x) - start, atol=1e-10)
    np.testing.assert_allclose(out.expected_value, nonlinear(base).mean(keepdims=True), atol=1e-12)


# -- errors --------------------------------------------------------------------------------------------


def test_nan_scores_raise_clear_error(rng):
    x, base = rng.normal(size=(6, 5)), rng.normal(size=(2, 5))
    x[4, 2] = 99.0

    def model(a):
        out = a.sum(axis=1)
        out[a[:, 2] == 99.0] = np.nan
        return out

    with pytest.raises(ModelOutputError, match=r"for 30 synthetic rows \(30 of 60 for record 4\)") as err:
        KernelShap(model, base).explain(x)
    assert err.value.records == [4]
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("budget", [0, -3])
def test_num_samples_must_be_positive(budget, rng):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        KernelShap(nonlinear, rng.normal(size=(1, 12)), num_samples=budget)


def test_baseline_with_wrong_number_of_columns(rng):
    explainer = KernelShap(nonlinear, rng.normal(size=(2, 11)))
    with pytest.raises(ValueError, match="baseline has 11 columns but records have 12"):
        explainer.explain(rng.normal(size=(3, 12)))


@pytest.mark.parametrize("features", [[], [0, 0], [12]])
def test_bad_features_to_explain(features, rng):
    with pytest.raises(ValueError, match="features_to_explain"):
        KernelShap(nonlinear, rng.normal(size=(1, 12)), features_to_explain=features)


def test_no_records(rng):
    out = KernelShap(nonlinear, rng.normal(size=(1, 12)), seed=0).explain(np.zeros((0, 12)))
    assert out.values.shape == (0, 12, 1) and out.expected_value.shape == (1,)


def test_model_with_wrong_output_shape(rng):
    with pytest.raises(ValueError, match="model returned an array of shape"):
        KernelShap(lambda a: a[:3, 0], rng.normal(size=(1, 4))).explain(rng.normal(size=(2, 4)))


@pytest.mark.parametrize("m, budget, seed", [(60, 100, 1), (40, 50, 2), (61, 101, 0), (80, 5, 0)])
def test_budgets_below_the_feature_count_still_explain(m, budget, seed):
    """Fewer coalitions than features (the text lab's num_samples=5): some pairs then have leverage 1."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=m)

    def model(rows):
        x = np.asarray(rows, dtype=float)
        return x @ beta + 0.5 * x[:, 0] * x[:, 1]

    x = rng.normal(size=(3, m))
    result = KernelShap(model, np.zeros((1, m)), num_samples=budget, seed=seed).explain(x)
    np.testing.assert_allclose(result.values.sum(axis=1)[:, 0], model(x) - model(np.zeros((1, m))), atol=1e-9)
    assert np.isfinite(result.values).all()
