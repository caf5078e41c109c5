"""Constraints and violations of a monitoring execution (analyzer/monitor/drift.py, spec model-monitor.md 5).

Oracles: the real NB-BIAS constraint_violations.json (spec 5.1, baseline values of spec 4), the DG's
NDCG example and ``sklearn.metrics.ndcg_score``, a hand-written table of the "worse" rule for every
registered metric, and for the bootstrap ``bias_analysis`` run on the resampled rows themselves.
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from analyzer.bias import bias_analysis
from analyzer.bias.report import stage_cells
from analyzer.bias_registry import BIAS_METRICS, BIAS_METRICS_BY_NAME
from analyzer.config import parse_config
from analyzer.errors import UserError
from analyzer.monitor import drift
from analyzer.monitor.drift import (
    add_bootstrap_intervals,
    attribution_violations,
    bias_violations,
    bootstrap_samples,
    check_constraints_match,
    is_worse,
    ndcg,
    resampled_cells,
    violations_document,
)
from analyzer.output import dumps
from analyzer.pipeline import load_job_dataset, run_analysis

INF = math.inf

# --------------------------------------------------------------------------------------------
# The real NB-BIAS run (spec 4: baseline, spec 5.1: the live values of the nine violations)
# --------------------------------------------------------------------------------------------

NB_BASELINE_POST = {
    "AD": -0.15156641604010024, "CDDPL": 0.28176563733194276, "DAR": -0.09508196721311479,
    "DCA": -0.5278688524590163, "DCR": 0.027874251497005953, "DI": 0.17798594847775176,
    "DPPL": 0.2199248120300752, "DRR": 0.12565868263473046, "FT": -0.03333333333333333,
    "GE": 0.0841186702174704, "RD": 0.1308103661044837, "SD": 0.10465328014037645, "TE": 2.916666666666667,
}
NB_BASELINE_PRE = {
    "CDDL": 0.27459074287718793, "CI": 0.36936936936936937, "DPL": 0.2326441102756892,
    "JS": 0.04508199943437752, "KL": 0.22434464102537785, "KS": 0.2326441102756892,
    "LP": 0.32900845595810163, "TVD": 0.2326441102756892,
}
NB_LIVE_VIOLATIONS = {  # spec 5.1, in the real file's order
    "CDDPL": 0.37745519271384836, "DAR": -0.3522727272727273, "DCA": -36.42045454545455,
    "DCR": -0.07676294702237407, "FT": -0.14, "GE": 0.9537540310981236, "RD": 0.170704663945835,
    "SD": 0.2792792792792793, "TE": "Infinity",
}
# The real file's descriptions, verbatim (spec 5.1 pprint, strings joined).
NB_DESCRIPTIONS = {
    "CDDPL": "Metric value 0.37745519271384836 doesn't meet the baseline constraint requirement 0.28176563733194276",
    "DAR": "Metric value -0.3522727272727273 doesn't meet the baseline constraint requirement -0.09508196721311479",
    "DCA": "Metric value -36.42045454545455 doesn't meet the baseline constraint requirement -0.5278688524590163",
    "DCR": "Metric value -0.07676294702237407 doesn't meet the baseline constraint requirement 0.027874251497005953",
    "FT": "Metric value -0.14 doesn't meet the baseline constraint requirement -0.03333333333333333",
    "GE": "Metric value 0.9537540310981236 doesn't meet the baseline constraint requirement 0.0841186702174704",
    "RD": "Metric value 0.170704663945835 doesn't meet the baseline constraint requirement 0.1308103661044837",
    "SD": "Metric value 0.2792792792792793 doesn't meet the baseline constraint requirement 0.10465328014037645",
    "TE": "Metric value Infinity doesn't meet the baseline constraint requirement 2.916666666666667",
}
# Live values of the metrics the real file does not flag. The notebook does not print them, so these are
# chosen closer to the ideal than the baseline where a naive rule would flag them: a sign flip (DPPL,
# DRR, AD), DI 5.0 (5 times parity is nearer than 1/0.178 = 5.6 times; |DI - 1| would flag it), and
# pre-training values equal to the baseline (a tie is no violation).
NB_LIVE_OTHERS_POST = {"AD": 0.15, "DI": 5.0, "DPPL": -0.2, "DRR": -0.1}


def _entries(values: dict[str, object]) -> list[dict]:
    return [{"name": name, "description": BIAS_METRICS_BY_NAME[name].description, "value": values[name]}
            for name in sorted(values)]


def _bias_document(post: dict[str, object], pre: dict[str, object], facet: str = "Sex", facet_value: str = "0",
                   label: str = "Target", label_value: str = "1") -> dict:
    def section(values):
        return {"label": label, "facets": {facet: [{"value_or_threshold": facet_value, "metrics": _entries(values)}]},
                "label_value_or_threshold": label_value}

    return {"version": "1.0", "post_training_bias_metrics": section(post), "pre_training_bias_metrics": section(pre)}


def nb_baseline() -> dict:
    return _bias_document(NB_BASELINE_POST, NB_BASELINE_PRE)


def nb_window() -> dict:
    return _bias_document({**NB_LIVE_VIOLATIONS, **NB_LIVE_OTHERS_POST}, dict(NB_BASELINE_PRE))


def test_real_nb_bias_file_reproduces_its_nine_violations_exactly():
    expected = [{"facet": "Sex", "facet_value": "0", "metric_name": name, "constraint_check_type": "bias_drift_check",
                 "description": NB_DESCRIPTIONS[name]} for name in NB_LIVE_VIOLATIONS]
    assert bias_violations(nb_window(), nb_baseline()) == expected
    # The same through a JSON round trip of both files (Infinity as the string analysis.json holds).
    window, baseline = json.loads(dumps(nb_window())), json.loads(dumps(nb_baseline()))
    assert bias_violations(window, baseline) == expected
    # In memory, before serialisation, +inf is a float: same description.
    in_memory = nb_window()
    te = next(m for m in in_memory["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"] if m["name"] == "TE")
    te["value"] = INF
    assert bias_violations(in_memory, nb_baseline()) == expected
    document = violations_document(expected)
    assert list(document) == ["version", "violations"] and document["version"] == "1.0"
    assert [list(v) for v in document["violations"]] == [
        ["facet", "facet_value", "metric_name", "constraint_check_type", "description"]] * 9


def test_real_baseline_against_itself_has_no_violation():
    assert bias_violations(nb_baseline(), nb_baseline()) == []


def test_dg_dppl_example():
    """DG: baseline DPPL 0.2; 0.1 is no violation, -0.3 is one (farther from 0)."""
    baseline = _bias_document({"DPPL": 0.2}, {})
    for live, flagged in ((0.1, False), (-0.3, True), (-0.2, False), (0.2, False), (0.2000001, True)):
        violations = bias_violations(_bias_document({"DPPL": live}, {}), baseline)
        assert [v["metric_name"] for v in violations] == (["DPPL"] if flagged else []), live


# --------------------------------------------------------------------------------------------
# The "worse" rule, metric by metric (docs/monitoring-drift.md)
# --------------------------------------------------------------------------------------------

# (baseline, live, worse?) per metric, written by hand from each metric's ideal value and range.
WORSE_TABLE: dict[str, list[tuple[float | None, float | None, bool]]] = {
    # Differences of two shares, ideal 0, range [-1, 1]: |live| > |baseline|.
    **{name: [(0.2, 0.1, False), (0.2, -0.3, True), (0.2, -0.2, False), (-0.2, 0.25, True), (0.0, 0.0, False),
              (0.0, 1e-9, True), (-1.0, 1.0, False)]
       for name in ("CI", "DPL", "CDDL", "DPPL", "RD", "SD", "DAR", "DRR", "AD", "CDDPL", "FT")},
    # KL: ideal 0, can be negative (truncated distributions): absolute value too.
    "KL": [(0.22, 0.3, True), (0.22, -0.3, True), (0.22, -0.1, False), (-0.05, 0.04, False)],
    # Distances >= 0, ideal 0: larger is worse.
    **{name: [(0.04, 0.05, True), (0.04, 0.03, False), (0.04, 0.04, False), (0.0, 0.001, True)]
       for name in ("JS", "LP", "TVD", "KS")},
    "GE": [(0.084, 0.95, True), (0.084, 0.01, False), (0.0, 0.0, False), (0.1, INF, True)],
    # Unbounded differences of ratios: |live| > |baseline|, infinity infinitely far.
    **{name: [(2.9, INF, True), (2.9, -INF, True), (-0.5, -36.4, True), (-0.5, 0.4, False), (INF, INF, False),
              (INF, -INF, False), (INF, 1e300, False), (-INF, 5.0, False)]
       for name in ("DCA", "DCR", "TE")},
    # DI: a ratio, ideal 1; q and 1/q are equally far (|ln DI|), 0 and +inf infinitely far.
    "DI": [(0.178, 0.1, True), (0.178, 0.3, False), (0.178, 5.0, False), (0.178, 6.0, True), (0.5, 2.0, False),
           (0.5, 2.01, True), (2.0, 0.49, True), (1.0, 1.0, False), (1.0, 1.01, True), (0.178, 0.0, True),
           (0.178, INF, True), (0.0, INF, False), (INF, 0.0, False), (0.0, 1e-300, False)],
}
MISSING_VALUE_ROWS = [(0.2, None, False), (None, 0.5, False), (0.2, math.nan, False), (math.nan, 0.5, False)]


def test_worse_table_covers_every_registered_metric():
    assert sorted(WORSE_TABLE) == sorted(metric.name for metric in BIAS_METRICS)


@pytest.mark.parametrize(("name", "baseline", "live", "worse"),
                         [(name, *row) for name, rows in WORSE_TABLE.items() for row in rows + MISSING_VALUE_ROWS])
def test_worse_rule(name, baseline, live, worse):
    metric = BIAS_METRICS_BY_NAME[name]
    assert is_worse(metric, live, baseline) is worse
    # And through whole documents, with values as analysis.json writes them.
    json_value = {INF: "Infinity", -INF: "-Infinity"}.get(live, live) if live is not None else None
    stage = metric.stage
    window = _bias_document(*(({name: json_value}, {}) if stage == "post_training" else ({}, {name: json_value})))
    base = _bias_document(*(({name: baseline}, {}) if stage == "post_training" else ({}, {name: baseline})))
    window, base = json.loads(dumps(window)), json.loads(dumps(base))
    assert [v["metric_name"] for v in bias_violations(window, base)] == ([name] if worse else [])


@pytest.mark.parametrize(("name", "baseline", "interval", "worse"), [
    ("DPPL", 0.2, [0.25, 0.4], True),  # the whole interval beyond the baseline
    ("DPPL", 0.2, [0.15, 0.4], False),  # part of it allowed
    ("DPPL", 0.2, [-0.5, -0.21], True),
    ("DPPL", 0.2, [-0.5, 0.5], False),  # holds the ideal
    ("DI", 0.178, [0.05, 0.15], True),
    ("DI", 0.178, [0.05, 0.2], False),
    ("DI", 0.5, [2.1, "Infinity"], True),
    ("DI", 0.5, [1.9, 3.0], False),
    ("TE", 2.9, ["-Infinity", -3.0], True),
    ("TE", 2.9, [3.0, "Infinity"], True),
    ("TE", 2.9, [2.0, "Infinity"], False),
    ("JS", 0.04, [0.041, 0.05], True),
])
def test_interval_rule(name, baseline, interval, worse):
    live_value = 0.0 if name != "DI" else 1.0  # the point value is ignored when there is an interval
    window = _bias_document({name: live_value}, {})
    window["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"][0]["lucent_ci"] = interval
    base = _bias_document({name: baseline}, {})
    flagged = [v["metric_name"] for v in bias_violations(window, base, use_intervals=True)]
    assert flagged == ([name] if worse else [])
    assert bias_violations(window, base) == []  # without intervals the (ideal) point value decides


def test_intervals_silence_a_small_window_and_fall_back_to_the_value_without_one():
    window = nb_window()
    metrics = window["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]
    for entry in metrics:
        if entry["name"] in ("DAR", "RD"):  # wide intervals reaching back inside the baseline's range
            entry["lucent_ci"] = [-0.5, 0.05] if entry["name"] == "DAR" else [0.01, 0.3]
    flagged = [v["metric_name"] for v in bias_violations(window, nb_baseline(), use_intervals=True)]
    assert flagged == [name for name in NB_LIVE_VIOLATIONS if name not in ("DAR", "RD")]  # FT: no interval


def test_a_broken_constraint_value_names_the_metric():
    base = _bias_document({"DPPL": "a lot"}, {})
    with pytest.raises(UserError, match=r"constraints file post_training_bias_metrics facet 'Sex' value '0' "
                                        r"metric DPPL: expected a number"):
        bias_violations(_bias_document({"DPPL": 0.1}, {}), base)


# --------------------------------------------------------------------------------------------
# Does the constraints file match?
# --------------------------------------------------------------------------------------------


def test_matching_constraints_pass():
    check_constraints_match(nb_window(), nb_baseline(), "ModelBias")


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["post_training_bias_metrics"]["facets"].update({"Age": b["post_training_bias_metrics"]["facets"].pop("Sex")}),
     r"no facet 'Sex' in post_training_bias_metrics \(it has 'Age'\)"),
    (lambda b: b["pre_training_bias_metrics"]["facets"]["Sex"][0].update(value_or_threshold="1"),
     r"no value of facet 'Sex' the window has in pre_training_bias_metrics: the window has '0', the constraints file '1'"),
    (lambda b: b["post_training_bias_metrics"].update(label="Income"),
     r"post_training_bias_metrics label is 'Income', the window's is 'Target'"),
    (lambda b: b["pre_training_bias_metrics"].update(label_value_or_threshold="0"),
     r"pre_training_bias_metrics label_value_or_threshold is '0', the window's is '1'"),
    (lambda b: b.pop("pre_training_bias_metrics"), r"no pre_training_bias_metrics section"),
])
def test_constraints_without_the_window_s_facet_or_label_are_refused(change, message):
    baseline = nb_baseline()
    change(baseline)
    with pytest.raises(UserError, match=message):
        check_constraints_match(nb_window(), baseline, "ModelBias")


def test_every_mismatch_is_listed_at_once_and_new_one_vs_all_values_are_only_logged(caplog):
    baseline = nb_baseline()
    baseline["post_training_bias_metrics"]["label"] = "Income"
    baseline["pre_training_bias_metrics"]["facets"] = {}
    with pytest.raises(UserError) as raised:
        check_constraints_match(nb_window(), baseline, "ModelBias")
    assert "label is 'Income'" in str(raised.value) and "no facet 'Sex' in pre_training" in str(raised.value)
    window = nb_window()
    extra = copy.deepcopy(window["post_training_bias_metrics"]["facets"]["Sex"][0])
    extra["value_or_threshold"] = "2"
    window["post_training_bias_metrics"]["facets"]["Sex"].append(extra)
    check_constraints_match(window, nb_baseline(), "ModelBias")
    assert "Facet 'Sex' values '2' are not in the constraints file" in caplog.text
    assert [v["facet_value"] for v in bias_violations(window, nb_baseline())] == ["0"] * 9


NB_FA_BASELINE = {"version": "1.0", "explanations": {"kernel_shap": {"label0": {
    "global_shap_values": {
        "Age": 0.05962069398767555, "Workclass": 0.009340874120660063, "fnlwgt": 0.0010900750377509304,
        "Education": 0.014739126275038199, "Education-Num": 0.09891391226656666,
        "Marital Status": 0.05452765230404344, "Occupation": 0.0025392834714334667,
        "Relationship": 0.018169508641909988, "Ethnic group": 0.005295263900463686, "Sex": 0.032080828962127876,
        "Capital Gain": 0.09913318680892579, "Capital Loss": 0.013518474176382519,
        "Hours per week": 0.03641124946588507, "Country": 0.004894213349476741},
    "expected_value": 0.250623226165771}}}}


def test_explainability_constraints_need_the_window_s_labels_and_features():
    check_constraints_match(NB_FA_BASELINE, NB_FA_BASELINE, "ModelExplainability")
    window = copy.deepcopy(NB_FA_BASELINE)
    window["explanations"]["kernel_shap"]["label1"] = window["explanations"]["kernel_shap"].pop("label0")
    with pytest.raises(UserError, match=r"no label 'label1' in explanations.kernel_shap \(it has 'label0'\)"):
        check_constraints_match(window, NB_FA_BASELINE, "ModelExplainability")
    window = copy.deepcopy(NB_FA_BASELINE)
    window["explanations"]["kernel_shap"]["label0"]["global_shap_values"]["Zip"] = 0.1
    with pytest.raises(UserError, match=r"features of the window not in it: 'Zip'"):
        check_constraints_match(window, NB_FA_BASELINE, "ModelExplainability")
    with pytest.raises(UserError, match=r"it has no explanations.kernel_shap section"):
        check_constraints_match(NB_FA_BASELINE, nb_baseline(), "ModelExplainability")
    with pytest.raises(ValueError, match="kind must be one of"):
        check_constraints_match(NB_FA_BASELINE, NB_FA_BASELINE, "ModelQuality")


# --------------------------------------------------------------------------------------------
# NDCG and feature-attribution drift
# --------------------------------------------------------------------------------------------


def test_ndcg_spec_example():
    """DG: SAT 0.70 / 0.10, GPA 0.50 / 0.20, Class rank 0.05 / 0.70 -> 0.69; sklearn 0.6876."""
    baseline = {"SAT": 0.70, "GPA": 0.50, "Class rank": 0.05}
    window = {"SAT": 0.10, "GPA": 0.20, "Class rank": 0.70}
    score = ndcg(baseline, window)
    assert round(score, 4) == 0.6876 and round(score, 2) == 0.69
    # The formula of the DG page by hand: DCG over the window's order, iDCG over the baseline's.
    dcg = 0.05 / math.log2(2) + 0.50 / math.log2(3) + 0.70 / math.log2(4)
    idcg = 0.70 / math.log2(2) + 0.50 / math.log2(3) + 0.05 / math.log2(4)
    assert score == pytest.approx(dcg / idcg, rel=1e-15)


def test_ndcg_equals_sklearn_with_and_without_ties():
    rng = np.random.default_rng(7)
    for case in range(400):
        n = int(rng.integers(2, 40))
        relevance = rng.random(n) if case % 3 else rng.integers(0, 3, n).astype(float)  # ties in the baseline
        scores = rng.integers(0, 4, n).astype(float) if case % 2 else rng.random(n)  # ties in the window
        names = [f"f{i}" for i in range(n)]
        ours = ndcg(dict(zip(names, relevance, strict=True)), dict(zip(names, scores, strict=True)))
        assert ours == pytest.approx(ndcg_score([relevance], [scores]), rel=1e-12, abs=1e-15), case
        # Key order does not matter (ties are averaged, not broken by position).
        order = rng.permutation(n)
        shuffled = ndcg({names[i]: relevance[i] for i in order}, {names[i]: scores[i] for i in order[::-1]})
        assert shuffled == pytest.approx(ours, rel=1e-12, abs=1e-15)


def test_ndcg_edge_cases():
    same_order = ndcg({"a": 0.3, "b": 0.2}, {"a": 0.9, "b": 0.1})
    assert same_order == pytest.approx(1.0, rel=1e-15) and same_order == ndcg_score([[0.3, 0.2]], [[0.9, 0.1]])
    assert ndcg({"a": 0.3}, {"a": 5.0}) == 1.0  # one feature cannot be misranked
    # All-zero baseline attributions: no ranking to compare with, 1.0 (sklearn says 0: a violation every hour
    # for a constant model; docs/monitoring-drift.md).
    assert ndcg({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 2.0}) == 1.0 != ndcg_score([[0.0, 0.0]], [[1.0, 2.0]])
    assert ndcg({"a": 0.3, "b": 0.2}, {"a": 0.5, "b": 0.5}) == pytest.approx(ndcg_score([[0.3, 0.2]], [[0.5, 0.5]]))
    with pytest.raises(ValueError, match="baseline only 'b', window only 'c'"):
        ndcg({"a": 0.3, "b": 0.2}, {"a": 0.3, "c": 0.2})
    with pytest.raises(ValueError, match="finite"):
        ndcg({"a": 0.3, "b": math.nan}, {"a": 0.3, "b": 0.2})


def _explanations(values_by_label: dict[str, dict[str, float]]) -> dict:
    return {"version": "1.0", "explanations": {"kernel_shap": {
        label: {"global_shap_values": values, "expected_value": 0.25} for label, values in values_by_label.items()}}}


def test_attribution_violations_spec_wording_and_threshold():
    baseline = _explanations({"label0": {"SAT": 0.70, "GPA": 0.50, "Class rank": 0.05},
                              "label1": {"SAT": 0.70, "GPA": 0.50, "Class rank": 0.05}})
    window = _explanations({"label0": {"SAT": 0.10, "GPA": 0.20, "Class rank": 0.70},
                            "label1": {"SAT": 0.60, "GPA": 0.50, "Class rank": 0.10}})
    score = ndcg({"SAT": 0.70, "GPA": 0.50, "Class rank": 0.05}, {"SAT": 0.10, "GPA": 0.20, "Class rank": 0.70})
    assert attribution_violations(window, baseline) == [{
        "label": "label0", "metric_name": "shap", "constraint_check_type": "feature_attribution_drift_check",
        "description": f"Feature attribution drift {score!r} exceeds threshold 0.9"}]
    assert attribution_violations(window, baseline, threshold=0.5) == []
    # The constraints file can move the threshold under the Lucent key.
    tuned = {**baseline, "lucent": {"feature_attribution_drift_threshold": 0.6}}
    assert attribution_violations(window, tuned) == []
    tuned["lucent"]["feature_attribution_drift_threshold"] = 1
    assert [v["description"] for v in attribution_violations(window, tuned)] == [
        f"Feature attribution drift {score!r} exceeds threshold 1"]
    for bad in (0, 1.5, "0.9", True, None):
        tuned["lucent"]["feature_attribution_drift_threshold"] = bad
        with pytest.raises(UserError, match=r"lucent.feature_attribution_drift_threshold must be a number in \(0, 1\]"):
            attribution_violations(window, tuned)
    # NB-FA: the real baseline against itself completes without violations.
    assert attribution_violations(NB_FA_BASELINE, NB_FA_BASELINE) == []


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------

CONFIG = {
    "dataset_type": "text/csv", "headers": ["sex", "group", "score", "y", "p"], "label": "y",
    "predicted_label": "p", "label_values_or_threshold": [1], "facet": [{"name_or_index": "sex", "value_or_threshold": [1]}],
    "group_variable": "group",
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Rows whose label and prediction depend on the facet and group, so every metric is non-trivial."""
    rng = np.random.default_rng(seed)
    sex = (rng.random(n) < 0.3).astype(int)
    group = rng.integers(0, 4, n)
    y = (rng.random(n) < 0.35 + 0.15 * sex + 0.05 * group).astype(int)
    p = np.where(rng.random(n) < 0.8, y, 1 - y)
    p = np.where((sex == 1) & (rng.random(n) < 0.1), 0, p)
    return pd.DataFrame({"sex": sex, "group": group, "score": rng.random(n).round(3), "y": y, "p": p})


def _window(tmp_path, frame: pd.DataFrame, config_doc: dict | None = None):
    """The window analysis the lead's monitor computes: the real loader and run_analysis."""
    from analyzer.output import OutputStaging

    path = tmp_path / f"window-{len(frame)}.csv"
    frame.to_csv(path, header=False, index=False)
    config = parse_config(copy.deepcopy(config_doc or CONFIG))
    dataset = load_job_dataset(config, path)
    with OutputStaging(tmp_path / f"out-{len(frame)}") as staging:
        results = run_analysis(config, dataset, staging)
    return results, dataset, config


def _metrics(results: dict, key: str) -> dict[str, dict]:
    return {m["name"]: m for m in results[key]["facets"]["sex"][0]["metrics"]}


def test_intervals_are_added_beside_each_value_and_contain_the_point_estimate(tmp_path):
    results, dataset, config = _window(tmp_path, _frame(3000, 1))
    add_bootstrap_intervals(results, dataset, config, n_resamples=400)
    for key in ("post_training_bias_metrics", "pre_training_bias_metrics"):
        for name, entry in _metrics(results, key).items():
            if name == "FT":
                assert "lucent_ci" not in entry  # needs the rows: no interval, documented
                continue
            assert list(entry) == ["name", "description", "value", "lucent_ci"], entry
            low, high = entry["lucent_ci"]
            assert low <= entry["value"] <= high, entry
            assert low < high, entry
            metric = BIAS_METRICS_BY_NAME[name]
            assert metric.low <= low and high <= metric.high
    json.loads(dumps(results))  # still strict JSON


def test_intervals_are_deterministic_with_the_seed(tmp_path):
    results, dataset, config = _window(tmp_path, _frame(1500, 2))
    first, second, other = (copy.deepcopy(results) for _ in range(3))
    add_bootstrap_intervals(first, dataset, config, n_resamples=200, seed=5)
    add_bootstrap_intervals(second, dataset, config, n_resamples=200, seed=5)
    add_bootstrap_intervals(other, dataset, config, n_resamples=200, seed=6)
    assert first == second
    assert first != other


def test_intervals_shrink_with_the_window_size(tmp_path):
    small, *small_inputs = _window(tmp_path, _frame(1000, 3))
    large, *large_inputs = _window(tmp_path, _frame(16000, 3))
    add_bootstrap_intervals(small, *small_inputs, n_resamples=400)
    add_bootstrap_intervals(large, *large_inputs, n_resamples=400)
    for name in ("CI", "DPL", "DPPL", "DI", "AD", "RD", "GE", "KL", "CDDL"):
        key = f"{BIAS_METRICS_BY_NAME[name].stage}_bias_metrics"
        small_width = np.diff(_metrics(small, key)[name]["lucent_ci"])[0]
        large_width = np.diff(_metrics(large, key)[name]["lucent_ci"])[0]
        # sqrt(16) = 4 times narrower in theory; at least twice in any case.
        assert large_width < small_width / 2, (name, small_width, large_width)


def _rows_of(cells: np.ndarray, groups: list) -> pd.DataFrame:
    """A frame holding exactly ``cells[side, group slot, label, prediction]`` rows (slot 0: no group)."""
    sides, slots, labels, predictions = np.nonzero(cells)
    counts = cells[sides, slots, labels, predictions]
    return pd.DataFrame({
        "sex": np.repeat(sides, counts), "group": np.repeat(np.asarray(groups)[slots - 1], counts),
        "score": 0.5, "y": np.repeat(labels, counts), "p": np.repeat(predictions, counts)})


def test_bootstrap_values_are_bias_analysis_on_the_resampled_rows(tmp_path):
    """Brute force, same draws: each redraw of the cells turned back into rows and analysed by bias_analysis
    gives exactly the value the bootstrap computed from the counts."""
    from analyzer.data import Column, Dataset

    results, dataset, config = _window(tmp_path, _frame(800, 4))
    for stage, key in (("post_training", "post_training_bias_metrics"), ("pre_training", "pre_training_bias_metrics")):
        counted = stage_cells(dataset, config, stage)
        cells = counted.facet_groups[0].cells
        assert cells.sum() == 800
        names = [n for n in _metrics(results, key) if n != "FT"]
        samples = bootstrap_samples(cells, names, counted, 25, np.random.default_rng(11))
        redraws = list(resampled_cells(cells, 25, np.random.default_rng(11)))
        for index, redraw in enumerate(redraws):
            rows = _rows_of(redraw, [0, 1, 2, 3])
            resampled = Dataset("resample", len(rows), list(rows.columns), ["sex", "group", "score"],
                                label=Column.from_series(rows["y"]), predicted_label=Column.from_series(rows["p"]),
                                facets={"sex": Column.from_series(rows["sex"])}, group=Column.from_series(rows["group"]))
            brute = {m["name"]: m["value"] for m in bias_analysis(resampled, config, stage)["facets"]["sex"][0]["metrics"]}
            for name in names:
                expected = brute[name]
                expected = {"Infinity": INF, "-Infinity": -INF, None: math.nan}.get(expected, expected)
                assert samples[name][index] == pytest.approx(expected, rel=1e-12, abs=1e-15, nan_ok=True), (name, index)


def test_cell_redraws_are_a_row_bootstrap_in_distribution(tmp_path):
    """Brute force, statistically: resampling rows (indices with replacement, then bias_analysis) and
    redrawing cells give bootstrap distributions with the same centre and spread."""
    from analyzer.data import Column, Dataset

    frame = _frame(1200, 5)
    results, dataset, config = _window(tmp_path, frame)
    stage = "post_training"
    names = ["DPPL", "DI", "AD", "RD", "DAR", "GE", "CDDPL"]
    counted = stage_cells(dataset, config, stage)
    redrawn = bootstrap_samples(counted.facet_groups[0].cells, names, counted, 600, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    brute = {name: [] for name in names}
    for _ in range(600):
        rows = frame.iloc[rng.integers(0, len(frame), len(frame))].reset_index(drop=True)
        resampled = Dataset("rows", len(rows), list(rows.columns), ["sex", "group", "score"],
                            label=Column.from_series(rows["y"]), predicted_label=Column.from_series(rows["p"]),
                            facets={"sex": Column.from_series(rows["sex"])}, group=Column.from_series(rows["group"]))
        values = {m["name"]: m["value"] for m in bias_analysis(resampled, config, stage)["facets"]["sex"][0]["metrics"]}
        for name in names:
            brute[name].append(values[name])
    for name in names:
        ours, theirs = redrawn[name], np.asarray(brute[name], dtype=float)
        # 600 draws each: the spread estimates agree within ~6 % (1/sqrt(2 * 600) = 2.9 % each), the centres
        # within a fraction of a standard deviation. Half the rows would widen the spread by 41 %.
        assert 0.88 < ours.std() / theirs.std() < 1.12, name
        assert abs(ours.mean() - theirs.mean()) < 0.15 * theirs.std(), name


def test_no_interval_for_null_metrics_and_failing_redraws(tmp_path):
    """A metric that failed on the window (null: CDDL / CDDPL without a group variable) gets no interval;
    neither does one that fails in more than 1 - level of the redraws: with a single sensitive row, d is
    empty in (1 - 1/n)^n = 37 % of them and every metric of the two sides fails there. GE, which does not
    look at the facet, keeps its interval."""
    frame = _frame(400, 6)
    frame["sex"] = 0
    frame.loc[frame.index[7], "sex"] = 1
    doc = {key: value for key, value in CONFIG.items() if key != "group_variable"}
    results, dataset, config = _window(tmp_path, frame, doc)
    add_bootstrap_intervals(results, dataset, config, n_resamples=300)
    entries = {**_metrics(results, "post_training_bias_metrics"), **_metrics(results, "pre_training_bias_metrics")}
    assert {name for name, entry in entries.items() if entry["value"] is None} == {"CDDL", "CDDPL"}
    assert {name for name, entry in entries.items() if "lucent_ci" in entry} == {"GE"}


def test_threshold_facets_match_across_windows_with_another_maximum(tmp_path):
    """A threshold facet group is printed "(threshold, data maximum]": the window's maximum differs from the
    baseline's, and the group is still matched (by its threshold) and checked. Real pipeline both times."""
    doc = copy.deepcopy(CONFIG)
    doc["facet"] = [{"name_or_index": "score", "value_or_threshold": [0.5]}]
    (tmp_path / "baseline").mkdir()
    (tmp_path / "window").mkdir()
    baseline, *_ = _window(tmp_path / "baseline", _frame(3000, 8), doc)
    drifted = _frame(3000, 9)
    drifted["score"] = (drifted["score"] * 0.9).round(3)
    drifted.loc[drifted["score"] > 0.5, "p"] = 0  # the group above the threshold never gets a positive prediction
    window, *_ = _window(tmp_path / "window", drifted, doc)
    base_value = baseline["post_training_bias_metrics"]["facets"]["score"][0]["value_or_threshold"]
    live_value = window["post_training_bias_metrics"]["facets"]["score"][0]["value_or_threshold"]
    assert base_value.startswith("(0.5, ") and live_value.startswith("(0.5, ") and base_value != live_value
    check_constraints_match(window, baseline, "ModelBias")
    violations = bias_violations(window, baseline)
    assert {"DPPL", "DI"} <= {v["metric_name"] for v in violations}
    assert {v["facet_value"] for v in violations} == {live_value}
    di = next(v for v in violations if v["metric_name"] == "DI")
    assert di["description"].startswith("Metric value 0.0 doesn't meet the baseline constraint requirement ")
    # A threshold the baseline never used is no match.
    other = copy.deepcopy(baseline)
    for key in ("post_training_bias_metrics", "pre_training_bias_metrics"):
        other[key]["facets"]["score"][0]["value_or_threshold"] = base_value.replace("(0.5,", "(0.6,")
    with pytest.raises(UserError, match=r"no value of facet 'score'"):
        check_constraints_match(window, other, "ModelBias")


def test_interval_sampling_handles_infinite_redraws():
    samples = np.array([1.0, 2.0, INF, INF, 3.0, math.nan] * 50)
    assert drift.percentile_interval(samples, 0.8) == (1.0, INF)
    assert drift.percentile_interval(np.array([math.nan] * 10 + [1.0] * 10), 0.95) is None


@pytest.mark.parametrize(("first", "second", "same"), [
    ("(100, 243]", "(100, 232]", True),
    ("(100, 243]", "(100.0, 232.0]", True),
    ("(30, 60],(60, 243]", "(30.0, 60.0],(60.0, 99.5]", True),
    ("(100, 243]", "(90, 243]", False),
    ("(30, 60],(60, 243]", "(30, 243]", False),
    ("0", "0", True),
    ("0", "0.0", False),  # categorical values are strings, as Clarify prints them
    ("1,2", "1,2", True),
    ("(a, b]", "(a, c]", False),
])
def test_group_keys(first, second, same):
    assert (drift.group_key(first) == drift.group_key(second)) is same


def test_the_rules_document_lists_every_metric_with_its_registry_facts():
    """docs/monitoring-drift.md's table: one row per registered metric, with the registry's stage and ideal."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "monitoring-drift.md").read_text(encoding="utf-8")
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()]
    rows = [row[:3] + row[4:5] for row in cells if len(row) == 6 and row[1] in ("pre", "post")]
    assert sorted(name for name, *_ in rows) == sorted(metric.name for metric in BIAS_METRICS)
    for name, stage, ideal, distance in rows:
        metric = BIAS_METRICS_BY_NAME[name]
        assert metric.stage == f"{stage}_training" and metric.ideal == int(ideal), name
        assert ("ln" in distance) is metric.ratio, name


def test_the_bootstrap_switch(monkeypatch):
    monkeypatch.delenv("LUCENT_BOOTSTRAP", raising=False)
    assert drift.bootstrap_violations_enabled() is False
    for text, enabled in (("1", True), (" 1 ", True), ("0", False), ("", False)):
        monkeypatch.setenv("LUCENT_BOOTSTRAP", text)
        assert drift.bootstrap_violations_enabled() is enabled
    monkeypatch.setenv("LUCENT_BOOTSTRAP", "yes")
    with pytest.raises(UserError, match=r"LUCENT_BOOTSTRAP='yes': must be 1"):
        drift.bootstrap_violations_enabled()
