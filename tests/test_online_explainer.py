"""The online explainer (``analyzer.explain.online``): attributions against brute-force Shapley values.

Every budget here covers all ``2**M - 2`` coalitions (M <= 10), so the values must equal the exact
Shapley values of ``v(S) = link(mean over baseline rows of f(record on S, baseline elsewhere))``,
computed by enumerating every subset. Sampled budgets are checked for efficiency and determinism.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analyzer.explain.online import STDERR_KEY, OnlineShapSettings, fit_online_explainer
from analyzer.explain.text_units import masked_texts, split_text


def brute_force(value, m: int) -> np.ndarray:
    """Exact Shapley values ``(m, k)`` of the set function ``value(mask) -> (k,)`` by enumeration."""
    cache = {s: np.asarray(value(np.array([j in s for j in range(m)])), dtype=float)
             for r in range(m + 1) for s in itertools.combinations(range(m), r)}
    phi = np.zeros((m, len(cache[()])))
    for j in range(m):
        for s, v_s in cache.items():
            if j in s:
                continue
            weight = math.factorial(len(s)) * math.factorial(m - len(s) - 1) / math.factorial(m)
            phi[j] += weight * (cache[tuple(sorted((*s, j)))] - v_s)
    return phi


def tabular_value(model, record, baseline, use_logit=False):
    def value(mask):
        rows = np.where(mask[None, :], record[None, :], baseline)
        mean = np.atleast_2d(np.asarray(model(rows), dtype=float).T).T.mean(axis=0)
        return np.log(mean / (1 - mean)) if use_logit else mean
    return value


def values_of(entry) -> np.ndarray:
    """``(players, k)`` attributions of one record's entry, features then units in order."""
    return np.array([a["attribution"] for feature in entry for a in feature["attributions"]])


def stderr_of(entry) -> np.ndarray:
    return np.array([a[STDERR_KEY] for feature in entry for a in feature["attributions"]], dtype=float)


def nonlinear(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(float)
    return np.sin(rows[:, 0]) + rows[:, 1] * rows[:, 2] - 0.5 * rows[:, 3] ** 2 + rows[:, 4:].sum(axis=1)


def test_single_output_equals_brute_force_with_one_and_several_baseline_rows():
    rng = np.random.default_rng(0)
    records = rng.normal(size=(3, 7))
    for baseline in (np.zeros((1, 7)), rng.normal(size=(3, 7))):
        explainer = fit_online_explainer(baseline, nonlinear, OnlineShapSettings())
        entries = explainer.explain(records)
        assert len(entries) == 3 and all(len(entry) == 7 for entry in entries)
        np.testing.assert_allclose(explainer.expected_value, [nonlinear(baseline).mean()], rtol=0, atol=1e-12)
        for record, entry in zip(records, entries, strict=True):
            exact = brute_force(tabular_value(nonlinear, record, baseline), 7)
            np.testing.assert_allclose(values_of(entry), exact, rtol=0, atol=1e-10)
            assert np.all(stderr_of(entry) == 0.0)  # exact budget: nothing sampled
            assert set(entry[0]) == {"attributions"}  # no feature_type for a tabular problem
            assert set(entry[0]["attributions"][0]) == {"attribution", STDERR_KEY}


def test_multi_output_and_use_logit_equal_brute_force():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(6, 3))

    def softmax(rows):
        logits = rows.astype(float) @ weights + 0.3 * (rows[:, :1] * rows[:, 1:2])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    baseline, record = rng.normal(size=(2, 6)), rng.normal(size=(1, 6))
    for use_logit in (False, True):
        explainer = fit_online_explainer(baseline, softmax, OnlineShapSettings(use_logit=use_logit, seed=4))
        entry = explainer.explain(record)[0]
        exact = brute_force(tabular_value(softmax, record[0], baseline, use_logit), 6)
        assert values_of(entry).shape == (6, 3)
        np.testing.assert_allclose(values_of(entry), exact, rtol=0, atol=1e-10)
        prediction = softmax(record)[0]
        target = np.log(prediction / (1 - prediction)) if use_logit else prediction
        np.testing.assert_allclose(values_of(entry).sum(axis=0), target - explainer.expected_value, atol=1e-12)


def test_categorical_features_are_replaced_whole():
    def model(rows):
        colour = np.array([{"red": 1.0, "blue": -2.0}.get(v, 0.0) for v in rows[:, 0]])
        return colour * rows[:, 1].astype(float) + rows[:, 2].astype(float)

    baseline = np.array([["blue", 1.0, 0.0]], dtype=object)
    record = np.array([["red", 3.0, 2.0]], dtype=object)
    explainer = fit_online_explainer(baseline, model, OnlineShapSettings(feature_types=["categorical", "numerical",
                                                                                          "numerical"]))
    exact = brute_force(tabular_value(model, record[0], baseline), 3)
    np.testing.assert_allclose(values_of(explainer.explain(record)[0]), exact, rtol=0, atol=1e-12)


def test_sampled_budget_keeps_efficiency_gives_standard_errors_and_is_seeded():
    rng = np.random.default_rng(2)
    beta = rng.normal(size=14)

    def model(rows):
        return 1 / (1 + np.exp(-(rows @ beta + rows[:, 0] * rows[:, 1])))

    baseline, records = rng.normal(size=(1, 14)), rng.normal(size=(2, 14))
    explainer = fit_online_explainer(baseline, model, OnlineShapSettings(seed=7))
    assert explainer.synthetic_rows_per_record == 2 * 14 + 2048 + 1  # spec section 4 default, plus the record
    entries = explainer.explain(records)
    for record, entry in zip(records, entries, strict=True):
        values = values_of(entry)
        np.testing.assert_allclose(values.sum(axis=0), model(record[None])[0] - explainer.expected_value,
                                   rtol=0, atol=1e-12)
        stderr = stderr_of(entry)
        assert np.all(np.isfinite(stderr)) and np.all(stderr > 0)
    again = fit_online_explainer(baseline, model, OnlineShapSettings(seed=7)).explain(records)
    assert again == entries
    other = fit_online_explainer(baseline, model, OnlineShapSettings(seed=8)).explain(records)
    assert other != entries


def test_budget_covering_every_coalition_is_exact_and_number_of_samples_is_capped():
    explainer = fit_online_explainer(np.zeros((1, 10)), nonlinear, OnlineShapSettings())
    assert explainer.synthetic_rows_per_record == 2**10 - 2 + 1  # default min(2M + 2048, 2^M - 2)
    small = fit_online_explainer(np.zeros((1, 4)), nonlinear, OnlineShapSettings(num_samples=1000))
    assert small.synthetic_rows_per_record == 2**4 - 2 + 1
    record = np.arange(1.0, 5.0)[None]
    exact = brute_force(tabular_value(nonlinear, record[0], np.zeros((1, 4))), 4)
    np.testing.assert_allclose(values_of(small.explain(record)[0]), exact, rtol=0, atol=1e-12)


def test_one_score_call_per_request_and_the_baseline_scored_once():
    calls = []

    def model(rows):
        calls.append(len(rows))
        return rows.sum(axis=1)

    explainer = fit_online_explainer(np.zeros((2, 5)), model, OnlineShapSettings())
    assert calls == [2]
    explainer.explain(np.ones((3, 5)))
    assert calls == [2, 3 * (30 * 2 + 1)]


def test_a_request_of_many_records_is_scored_in_bounded_groups():
    """A 6 MB request can hold ~100,000 short records: their synthetic rows are built and scored a group
    at a time (at most GROUP_ROWS rows), never all at once, with the same values."""
    from analyzer.explain.kernel_shap import GROUP_ROWS

    beta = np.arange(1.0, 7.0)
    calls = []

    def linear(rows):
        calls.append(len(rows))
        return np.asarray(rows, dtype=float) @ beta

    baseline = np.full((1, 6), 0.5)
    records = np.random.default_rng(3).normal(size=(4_000, 6))
    explainer = fit_online_explainer(baseline, linear, OnlineShapSettings())
    entries = explainer.explain(records)
    assert len(calls) > 2 and max(calls[1:]) <= GROUP_ROWS and sum(calls[1:]) == 4_000 * 63
    values = np.array([[a["attributions"][0]["attribution"][0] for a in entry] for entry in entries])
    np.testing.assert_allclose(values, beta * (records - baseline), atol=1e-9)  # exact for a linear model


# ---- text ------------------------------------------------------------------------------------------

WORDS = {"good": 1.0, "product": 0.4, "bad": -1.2, "this": 0.1}


def word_model(rows: np.ndarray) -> np.ndarray:
    """Probability from the words present, with one interaction ("good" and "product" together)."""
    out = []
    for row in rows:
        words = row[0].lower().split()
        logit = sum(WORDS.get(w, 0.0) for w in words) + (0.7 if "good" in words and "product" in words else 0.0)
        if len(row) > 1:
            logit += 0.5 * float(row[1])
        out.append(1 / (1 + np.exp(-logit)))
    return np.array(out)


def test_text_units_equal_brute_force_with_descriptions():
    text = "This is a good product"
    settings = OnlineShapSettings(text_language="en", text_granularity="token", feature_types=["text"])
    for use_logit in (False, True):
        explainer = fit_online_explainer(np.array([["<MASK>"]], dtype=object), word_model,
                                         OnlineShapSettings(**{**settings.__dict__, "use_logit": use_logit}))
        entry = explainer.explain(np.array([[text]], dtype=object))[0]
        assert len(entry) == 1 and entry[0]["feature_type"] == "text"
        descriptions = [a["description"] for a in entry[0]["attributions"]]
        # The spec's example (5.1): the same units and offsets.
        assert descriptions == [{"partial_text": "This", "start_idx": 0}, {"partial_text": "is", "start_idx": 5},
                                {"partial_text": "a", "start_idx": 8}, {"partial_text": "good", "start_idx": 10},
                                {"partial_text": "product", "start_idx": 15}]
        units = split_text(text, "en", "token")

        def value(mask, units=units, use_logit=use_logit):
            p = word_model(np.array([[masked_texts(text, units, mask[None], "<MASK>")[0]]], dtype=object))[0]
            return [np.log(p / (1 - p)) if use_logit else p]

        np.testing.assert_allclose(values_of(entry), brute_force(value, 5), rtol=0, atol=1e-10)
        assert np.all(stderr_of(entry) == 0.0)


def test_text_with_a_numeric_feature_and_inferred_types():
    text = "good product. this is bad."
    explainer = fit_online_explainer(np.array([["<UNK>", 0.0]], dtype=object), word_model,
                                     OnlineShapSettings(text_language="en", text_granularity="sentence"))
    assert explainer.feature_types == ("text", "numerical")
    record = np.array([[text, 2.0]], dtype=object)
    entry = explainer.explain(record)[0]
    assert [f["feature_type"] for f in entry] == ["text", "numerical"]
    assert [a["description"] for a in entry[0]["attributions"]] == [
        {"partial_text": "good product.", "start_idx": 0}, {"partial_text": "this is bad.", "start_idx": 14}]
    assert "description" not in entry[1]["attributions"][0]
    units = split_text(text, "en", "sentence")

    def value(mask):
        row = [masked_texts(text, units, mask[None, :2], "<UNK>")[0], 2.0 if mask[2] else 0.0]
        return [word_model(np.array([row], dtype=object))[0]]

    np.testing.assert_allclose(values_of(entry), brute_force(value, 3), rtol=0, atol=1e-12)


def test_blank_text_gets_empty_attributions_and_others_are_explained():
    explainer = fit_online_explainer(np.array([["<MASK>"]], dtype=object), word_model,
                                     OnlineShapSettings(text_language="en", text_granularity="token"))
    entries = explainer.explain(np.array([["   "], ["good"]], dtype=object))
    assert entries[0] == [{"feature_type": "text", "attributions": []}]
    assert entries[1][0]["attributions"][0]["description"] == {"partial_text": "good", "start_idx": 0}


@pytest.mark.parametrize(("baseline", "settings", "message"), [
    (np.array([["<MASK>"]], dtype=object), OnlineShapSettings(feature_types=["text"]), "TextConfig is missing"),
    (np.zeros((1, 2)), OnlineShapSettings(feature_types=["numerical"]), "FeatureTypes has 1 entries"),
    (np.zeros((1, 1)), OnlineShapSettings(feature_types=["number"]), "unknown type"),
    (np.zeros((1, 1)), OnlineShapSettings(text_language="en", text_granularity="token"), "no baseline column"),
    (np.array([["x"]], dtype=object), OnlineShapSettings(text_language="en", text_granularity="word"), "Granularity"),
    (np.zeros((0, 3)), OnlineShapSettings(), "at least one row"),
])
def test_bad_settings_are_refused_at_fit_time(baseline, settings, message):
    with pytest.raises(ValueError, match=message):
        fit_online_explainer(baseline, lambda rows: np.zeros(len(rows)), settings)


def test_non_string_text_and_wrong_width_are_refused():
    explainer = fit_online_explainer(np.array([["<MASK>"]], dtype=object), word_model,
                                     OnlineShapSettings(text_language="en", text_granularity="token"))
    with pytest.raises(ValueError, match="record 0: text feature 0 holds float"):
        explainer.explain(np.array([[1.5]], dtype=object))
    tabular = fit_online_explainer(np.zeros((1, 3)), lambda rows: rows.sum(axis=1), OnlineShapSettings())
    with pytest.raises(ValueError, match="baseline has 3 columns but records have 2"):
        tabular.explain(np.zeros((1, 2)))
