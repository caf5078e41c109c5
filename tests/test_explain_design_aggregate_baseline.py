"""Coalition design, global aggregation and the automatic baseline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from analyzer.explain import KernelShap, aggregate, compute_baseline, make_design

# -- design --------------------------------------------------------------------------------------------


def _keys(masks):
    return {row.tobytes() for row in np.packbits(masks, axis=1)}


@pytest.mark.parametrize("m", [1, 2, 5, 9])
def test_exact_design_enumerates_every_proper_coalition(m):
    d = make_design(m)
    assert d.exact and len(d.masks) == 2**m - 2 == len(_keys(d.masks)) if m > 1 else len(d.masks) == 0
    sizes = d.masks.sum(1)
    assert np.all((sizes > 0) & (sizes < m))
    if m > 1:
        # Weight of a coalition of size s is proportional to the Shapley kernel (M-1)/(C(M,s) s (M-s)).
        from math import comb

        kernel = np.array([(m - 1) / (comb(m, s) * s * (m - s)) for s in sizes])
        np.testing.assert_allclose(d.weights, kernel / kernel.sum())


def test_sampled_design_is_paired_distinct_and_within_budget():
    d = make_design(20, 2088, seed=0)
    assert not d.exact and len(d.masks) == 2088 == len(_keys(d.masks))
    np.testing.assert_array_equal(d.masks[0::2], ~d.masks[1::2])
    sizes = d.masks.sum(1)
    # Smallest and largest sizes are complete: 20 + 20 + 190 + 190 coalitions of sizes 1, 19, 2, 18.
    for s, count in ((1, 20), (19, 20), (2, 190), (18, 190)):
        assert (sizes == s).sum() == count
    assert {st.size for st in d.sampled} == set(range(3, 11))
    assert all(st.units >= 2 for st in d.sampled)
    np.testing.assert_allclose(d.weights.sum(), 1.0)


def test_sampled_design_deterministic_from_seed():
    a, b, c = make_design(16, 500, seed=4), make_design(16, 500, seed=4), make_design(16, 500, seed=5)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks)


def test_small_budget_and_odd_budget():
    d = make_design(30, 61, seed=1)
    assert len(d.masks) <= 61 and len(_keys(d.masks)) == len(d.masks)


# -- aggregation ---------------------------------------------------------------------------------------


def test_aggregate_methods_and_expected_value():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=6)
    x, base = rng.normal(size=(21, 6)), rng.normal(size=(2, 6))
    out = KernelShap(lambda a: a @ beta, base).explain(x)
    phi = out.values
    np.testing.assert_allclose(aggregate(out).values, np.abs(phi).mean(0))
    np.testing.assert_allclose(aggregate(out, "mean_sq").values, (phi**2).mean(0))
    np.testing.assert_allclose(aggregate(out, "median").values, np.median(phi, 0))  # signed
    for agg in ("mean_abs", "median", "mean_sq"):
        g = aggregate(out, agg)
        assert g.values.shape == (6, 1) and np.all(g.stderr == 0)
        np.testing.assert_allclose(g.expected_value, [(base @ beta).mean()])
    with pytest.raises(ValueError, match="Invalid agg_method"):
        aggregate(out, "max")


# -- baseline ------------------------------------------------------------------------------------------


def _blobs(rng, n=300):
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 0.0], [0.0, 10.0, 10.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(scale=0.5, size=(n, 3))


def test_auto_baseline_finds_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    data = _blobs(rng)
    base = compute_baseline(data, seed=3)
    assert base.shape == (3, 3) and base.dtype == float
    assert {tuple(np.round(r / 10)) for r in base} == {(0, 0, 0), (1, 1, 0), (0, 1, 1)}
    np.testing.assert_array_equal(base, compute_baseline(data, seed=3))


def test_auto_baseline_without_structure_is_one_row_mean():
    data = np.random.default_rng(1).normal(size=(500, 4)) * [1, 100, 1000, 0.1]
    base = compute_baseline(data, seed=0)
    np.testing.assert_allclose(base, data.mean(0, keepdims=True))


def test_num_clusters_matches_kmeans_in_original_units():
    rng = np.random.default_rng(2)
    data = _blobs(rng) * [1, 1000, 1]
    base = compute_baseline(data, num_clusters=3, seed=0)
    km = KMeans(n_clusters=3, n_init=3, random_state=0).fit((data - data.mean(0)) / data.std(0))
    expected = np.array([data[km.labels_ == c].mean(0) for c in range(3)])
    assert sorted(map(tuple, np.round(base, 6))) == sorted(map(tuple, np.round(expected, 6)))


def test_kprototypes_with_categorical_columns():
    rng = np.random.default_rng(3)
    n = 300
    group = rng.integers(0, 2, n)
    colour = np.where(group == 0, "red", "blue").astype(object)
    colour[rng.random(n) < 0.1] = "green"
    data = np.column_stack([group * 20 + rng.normal(size=n), colour, rng.normal(size=n)]).astype(object)
    base = compute_baseline(data, num_clusters=2, seed=0)
    assert base.dtype == object and base.shape == (2, 3)
    by_colour = {row[1]: row for row in base}
    assert set(by_colour) == {"red", "blue"}
    assert abs(by_colour["red"][0]) < 1 and abs(by_colour["blue"][0] - 20) < 1
    auto = compute_baseline(data, seed=0)
    assert len(auto) == 2
    np.testing.assert_array_equal(auto, compute_baseline(data, seed=0))


def test_baseline_input_errors():
    with pytest.raises(ValueError, match="num_clusters must be >= 1"):
        compute_baseline(np.zeros((5, 2)), num_clusters=0)
