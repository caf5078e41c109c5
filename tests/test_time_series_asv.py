"""Asymmetric Shapley values (analyzer/explain/asymmetric_shapley.py) against brute-force enumeration.

The oracle knows nothing of plans or coalition weights: it lists every order of the players the
direction allows (static covariates first, then the timestamps in time order; series of one timestamp
in any order), masks the item itself and averages the marginal changes of a forecaster's output.
"""

from __future__ import annotations

import math
from itertools import permutations, product

import numpy as np
import pandas as pd
import pytest

from analyzer.data.time_series import TimeSeriesItem
from analyzer.errors import UserError
from analyzer.explain.asymmetric_shapley import (
    RECORD_FIELDS,
    AsymmetricShapleyExplainer,
    TimeSeriesBaseline,
    build_plan,
)


def nonlinear_forecast(target, related, static) -> list[float]:
    """A 2-step forecaster with interactions: between series at one timestamp, across timestamps and
    with the static covariates (so that the order of joining matters everywhere)."""
    target, related = np.asarray(target, float), np.asarray(related, float).reshape(-1, len(target))
    level = target[-1] + 0.5 * target[0] * target[-2]
    cross = float(np.sum(related[0] * target)) if len(related) else 0.0
    pair = float(np.sum(related[0] * related[1] * target)) if len(related) > 1 else 0.0
    boost = math.tanh(static[0]) if static else 0.0
    return [level + 0.3 * cross + pair + boost * target[-1], 2 * level - pair + (static[1] if len(static) > 1 else 0)]


def linear_forecast(target, related, static) -> list[float]:
    target, related = np.asarray(target, float), np.asarray(related, float).reshape(-1, len(target))
    weights = np.arange(1, len(target) + 1)
    base = float(weights @ target) + float(related.sum() * 0.7) + 3.0 * sum(static)
    return [base, -0.5 * base + float(target[-1])]


def frame_forecast(function):
    def forecast(records: pd.DataFrame) -> np.ndarray:
        assert list(records.columns) == list(RECORD_FIELDS)
        return np.array([function(r.target_time_series, r.related_time_series, r.static_covariates)
                         for r in records.itertuples()])
    return forecast


def oracle(item: TimeSeriesItem, function, baseline: TimeSeriesBaseline, granularity: str, direction: str):
    """{(feature, timestamp): scores} by enumerating every allowed order of the players."""
    if direction == "bidirectional":
        one = oracle(item, function, baseline, granularity, "chronological")
        other = oracle(item, function, baseline, granularity, "anti_chronological")
        return {key: (one[key] + other[key]) / 2 for key in one}
    n_steps, n_related = len(item), item.related.shape[0]
    base_target, base_related, base_static = baseline.for_item(item)
    series = ["target", *(f"r{i}" for i in range(n_related))]
    players = []  # (name, time index or None, cells)
    if granularity == "timewise":
        players += [("+".join(series), t, [(s, t) for s in range(len(series))]) for t in range(n_steps)]
    else:
        players += [(series[s], t, [(s, t)]) for s in range(len(series)) for t in range(n_steps)]
    players += [(f"c{j}", None, [("static", j)]) for j in range(len(item.static))]

    def allowed_orders():
        """Every order in which the static covariates come first (in any order among themselves) and the
        timestamps follow in the direction's order (the series of one timestamp in any order)."""
        statics = [p for p, player in enumerate(players) if player[1] is None]
        steps = range(n_steps) if direction == "chronological" else range(n_steps - 1, -1, -1)
        groups = [statics] + [[p for p, player in enumerate(players) if player[1] == t] for t in steps]
        for parts in product(*(permutations(group) for group in groups)):
            yield tuple(p for part in parts for p in part)

    memo: dict[frozenset, np.ndarray] = {}

    def value(members) -> np.ndarray:
        key = frozenset(members)
        if key not in memo:
            memo[key] = forecast_of(key)
        return memo[key]

    def forecast_of(members) -> np.ndarray:
        target, related, static = base_target.copy(), base_related.copy(), list(base_static)
        for p in members:
            for where, index in players[p][2]:
                if where == "static":
                    static[index] = item.static[index]
                elif where == 0:
                    target[index] = item.target[index]
                else:
                    related[where - 1, index] = item.related[where - 1, index]
        return np.array(function(target, related, static))

    totals = {p: 0.0 for p in range(len(players))}
    count = 0
    for order in allowed_orders():
        count += 1
        before = value(())
        for position, p in enumerate(order):
            after = value(order[:position + 1])
            totals[p] = totals[p] + (after - before)
            before = after
    return {(name if t is None or granularity == "fine_grained" else name, t): totals[p] / count
            for p, (name, t, _) in enumerate(players)}


def as_dict(explanation, item: TimeSeriesItem, names: dict[str, str]) -> dict:
    stamps = {stamp: i for i, stamp in enumerate(item.timestamps)}
    out = {}
    for entry in explanation.explanations:
        name = "+".join(names.get(part, part) for part in entry["feature_name"].split("+"))
        index = None if entry["timestamp"] is None else stamps[entry["timestamp"]]
        out[name, index] = np.array(entry["scores"])
    return out


def make_item(n_steps: int, n_related: int, static: list, seed: int = 0) -> TimeSeriesItem:
    rng = np.random.default_rng(seed)
    return TimeSeriesItem("a", [f"2024-01-0{t + 1}" for t in range(n_steps)], rng.normal(2, 1, n_steps),
                          rng.normal(0, 1, (n_related, n_steps)), static)


NAMES = {"y": "target", "x0": "r0", "x1": "r1", "s0": "c0", "s1": "c1"}


def explain(item, function, **options):
    explainer = AsymmetricShapleyExplainer(**options)
    series = ["y", *(f"x{i}" for i in range(item.related.shape[0]))]
    statics = [f"s{j}" for j in range(len(item.static))]
    return explainer, explainer.explain([item], frame_forecast(function), series, statics)[0]


@pytest.mark.parametrize("direction", ["chronological", "anti_chronological", "bidirectional"])
@pytest.mark.parametrize("baseline", [TimeSeriesBaseline(static_covariates={"a": [0, 0]}),
                                      TimeSeriesBaseline("mean", "mean", {"a": [0.25, -1.0]})])
def test_timewise_equals_enumeration(direction, baseline):
    item = make_item(5, 2, [0.8, 2.0], seed=1)
    _, result = explain(item, nonlinear_forecast, direction=direction, granularity="timewise", baseline=baseline)
    expected = oracle(item, nonlinear_forecast, baseline, "timewise", direction)
    got = as_dict(result, item, NAMES)
    assert set(got) == set(expected)
    for key, scores in expected.items():
        np.testing.assert_allclose(got[key], scores, rtol=1e-10, atol=1e-10, err_msg=str(key))
    full = nonlinear_forecast(item.target, item.related, item.static)
    empty = nonlinear_forecast(*baseline.for_item(item))
    np.testing.assert_allclose(result.offset, empty, rtol=1e-12)
    np.testing.assert_allclose(sum(got.values()), np.subtract(full, empty), rtol=1e-10, atol=1e-10)


def test_directions_differ_on_an_order_dependent_model():
    item = make_item(4, 1, [], seed=2)
    _, chrono = explain(item, nonlinear_forecast, direction="chronological")
    _, anti = explain(item, nonlinear_forecast, direction="anti_chronological")
    assert not np.allclose([e["scores"] for e in chrono.explanations], [e["scores"] for e in anti.explanations])


@pytest.mark.parametrize("n_related, static", [(1, [0.5]), (2, [])])
def test_fine_grained_equals_enumeration_when_samples_cover_every_coalition(n_related, static):
    item = make_item(3, n_related, static, seed=3)
    baseline = TimeSeriesBaseline("mean", "zero", {"a": [-0.3]} if static else None)
    # 2**k coalitions per timestamp <= num_samples * k: solved exactly
    _, result = explain(item, nonlinear_forecast, granularity="fine_grained", num_samples=4, baseline=baseline)
    expected = oracle(item, nonlinear_forecast, baseline, "fine_grained", "chronological")
    got = as_dict(result, item, NAMES)
    assert set(got) == set(expected)
    for key, scores in expected.items():
        np.testing.assert_allclose(got[key], scores, rtol=1e-10, atol=1e-10, err_msg=str(key))


def test_fine_grained_sampled_orders_add_up_and_are_exact_for_an_additive_model():
    item = make_item(4, 2, [1.5], seed=4)
    baseline = TimeSeriesBaseline(static_covariates={"a": [0.0]})
    explainer, result = explain(item, linear_forecast, granularity="fine_grained", num_samples=1, baseline=baseline)
    plan = explainer.plan(item, ["y", "x0", "x1"], ["s0"])
    assert len(plan.masks) < 2 + 4 * (2**3 - 1)  # sampled, not every coalition of each timestamp
    expected = oracle(item, linear_forecast, baseline, "fine_grained", "chronological")
    got = as_dict(result, item, NAMES)
    for key, scores in expected.items():
        np.testing.assert_allclose(got[key], scores, rtol=1e-10, atol=1e-9, err_msg=str(key))
    # an interacting model: sampled values still add up to the change in forecast
    _, sampled = explain(item, nonlinear_forecast, granularity="fine_grained", num_samples=1, baseline=baseline)
    total = np.sum([e["scores"] for e in sampled.explanations], axis=0)
    full = nonlinear_forecast(item.target, item.related, item.static)
    np.testing.assert_allclose(total, np.subtract(full, sampled.offset), rtol=1e-10, atol=1e-10)


def test_output_entries_name_series_and_timestamps():
    item = make_item(2, 1, [3.0], seed=5)
    _, timewise = explain(item, linear_forecast, baseline=TimeSeriesBaseline(static_covariates={"a": [0]}))
    assert [(e["feature_name"], e["timestamp"]) for e in timewise.explanations] == [
        ("y+x0", "2024-01-01"), ("y+x0", "2024-01-02"), ("s0", None)]
    _, fine = explain(item, linear_forecast, granularity="fine_grained", num_samples=2,
                      baseline=TimeSeriesBaseline(static_covariates={"a": [0]}))
    assert [(e["feature_name"], e["timestamp"]) for e in fine.explanations] == [
        ("y", "2024-01-01"), ("y", "2024-01-02"), ("x0", "2024-01-01"), ("x0", "2024-01-02"), ("s0", None)]
    assert all(len(e["scores"]) == 2 for e in fine.explanations)


def test_chronological_timewise_asks_one_forecast_per_prefix():
    plan = build_plan(48, ["y", "a", "b"], [], direction="chronological", granularity="timewise")
    assert plan.masks.shape == (49, 3 * 48)
    both = build_plan(48, ["y"], [], direction="bidirectional", granularity="timewise")
    assert len(both.masks) == 2 * 48  # prefixes and suffixes share the empty and the full coalition


def test_mean_baseline_ignores_missing_values_and_zero_when_all_missing():
    item = TimeSeriesItem("a", [1, 2, 3], np.array([1.0, np.nan, 5.0]), np.array([[np.nan, np.nan, np.nan]]), [])
    target, related, _ = TimeSeriesBaseline("mean", "mean").for_item(item)
    np.testing.assert_array_equal(target, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(related, [[0.0, 0.0, 0.0]])


def test_bad_parameters_and_missing_static_baselines_are_named():
    item = make_item(2, 0, [1.0])
    with pytest.raises(UserError, match="no entry for item 'a'"):
        explain(item, linear_forecast)
    with pytest.raises(UserError, match="2 values for 1 static covariates"):
        explain(item, linear_forecast, baseline=TimeSeriesBaseline(static_covariates={"a": [1, 2]}))
    with pytest.raises(UserError, match="anti_chronological and fine_grained granularity are not supported"):
        build_plan(3, ["y"], [], direction="anti_chronological", granularity="fine_grained", num_samples=3)
    with pytest.raises(UserError, match="direction must be one of"):
        build_plan(3, ["y"], [], direction="forward", granularity="timewise")
