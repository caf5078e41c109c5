"""Full bias reports: oracle vectors of bias-metrics.md sections 9.5 and 9.6, errors, analysis.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import bias_analysis, metric_names
from analyzer.config.model import AnalysisConfig, BiasMethod, Facet, Methods
from analyzer.data.column import Column
from analyzer.data.dataset import Dataset
from analyzer.errors import UserError
from tests.test_bias_helpers import approx, lucent_report, metric_values, words

PRE, POST = "pre_training", "post_training"

# R1 (section 9.6)
R1 = pd.DataFrame({
    "facet": words("B C C A A C A C C B A A A B B B C C B C A A B A"),
    "f1": [0.16, -0.19, -2.52, -0.54, -0.05, 0.11, -1.53, -0.48, -0.98, -0.81, 1.06, -0.81, -0.03, 0.88,
           -0.58, -0.11, 0.11, 0.06, -1.23, 0.08, 1.36, -1.55, 0.86, 0.12],
    "f2": [8.71, 3.61, 5.98, 0.59, 3.88, 3.23, 1.5, 8.16, 3.79, 9.79, 5.9, 6.05, 6.38, 6.76, 1.51, 4.4, 2.4,
           4.02, 0.97, 9.68, 2.15, 6.72, 3.0, 8.74],
    "label": words("no no no no yes yes no yes yes yes no yes no no no yes no no yes yes yes no yes yes"),
    "pred": words("no yes no yes no yes yes no yes no no yes yes no yes no no yes yes no yes no no yes"),
})
R1_GROUP = pd.Series(words("g1 g2 g2 g1 g3 g3 g2 g3 g2 g3 g3 g2 g1 g1 g2 g1 g3 g3 g1 g2 g1 g1 g2 g3"))

R1_PRE = {
    "B": dict(CDDL=-0.15555555555555553, CI=0.4166666666666667, DPL=-0.10084033613445376, JS=0.005102123470675363,
              KL=0.02050198396924728, KS=0.10084033613445381, LP=0.14260977099560623, TVD=0.10084033613445378),
    "C": dict(CDDL=0.08888888888888886, CI=0.3333333333333333, DPL=0.0, JS=0.0, KL=0.0, KS=0.0, LP=0.0, TVD=0.0),
    "A": dict(CDDL=0.06666666666666665, CI=0.25, DPL=0.0888888888888889, JS=0.003957803698007068,
              KL=0.015873249622546146, KS=0.0888888888888889, LP=0.12570787221094182, TVD=0.0888888888888889),
}
R1_POST = {
    "B": dict(AD=0.10084033613445381, CDDPL=0.27777777777777773, DAR=0.0, DCA=-1.2, DCR=-0.6857142857142858,
              DI=0.48571428571428565, DPPL=0.3025210084033614, DRR=-0.17142857142857137, FT=-0.42857142857142855,
              GE=0.25, RD=0.375, SD=0.2222222222222222, TE=2.4),
    "C": dict(AD=0.0, CDDPL=0.0, DAR=0.0, DCA=0.0, DCR=0.0, DI=1.0, DPPL=0.0, DRR=0.0, FT=0.375, GE=0.25, RD=0.0,
              SD=0.0, TE=0.0),
    "A": dict(AD=-0.0888888888888889, CDDPL=-0.27777777777777773, DAR=0.0, DCA=0.6666666666666666,
              DCR=0.888888888888889, DI=1.6666666666666665, DPPL=-0.2666666666666666, DRR=0.2222222222222222,
              FT=0.2222222222222222, GE=0.25, RD=-0.375, SD=-0.17142857142857137, TE=-1.3333333333333335),
}


def r1_report(stage, facet="facet", values=None, df=R1):
    return lucent_report(df, facet, values, "label", ["yes"], stage, predicted="pred", group=R1_GROUP)


def assert_values(entry, expected):
    assert metric_values(entry) == {name: approx(value) for name, value in expected.items()}


@pytest.mark.parametrize(("stage", "expected"), [(PRE, R1_PRE), (POST, R1_POST)])
def test_r1_one_vs_all(stage, expected):
    report = r1_report(stage)
    assert [entry["value_or_threshold"] for entry in report] == ["B", "C", "A"]  # order of appearance
    for entry in report:
        assert_values(entry, expected[entry["value_or_threshold"]])
        assert [m["name"] for m in entry["metrics"]] == sorted(expected["B"])


def test_r1_two_values_and_continuous_facet():
    (entry,) = r1_report(POST, values=["B", "C"])
    assert entry["value_or_threshold"] == "B,C"
    assert_values(entry, dict(AD=0.0888888888888889, CDDPL=0.2777777777777778, DAR=0.0, DCA=-0.6666666666666666,
                              DCR=-0.888888888888889, DI=0.6000000000000001, DPPL=0.2666666666666666,
                              DRR=-0.2222222222222222, FT=-0.13333333333333333, GE=0.25, RD=0.375,
                              SD=0.17142857142857137, TE=1.3333333333333335))
    continuous = R1.drop(columns=["facet"])
    (pre,) = r1_report(PRE, "f2", [5.0], continuous)
    (post,) = r1_report(POST, "f2", [5.0], continuous)
    assert pre["value_or_threshold"] == post["value_or_threshold"] == "(5.0, 9.79]"
    assert_values(pre, dict(CDDL=0.09444444444444446, CI=0.08333333333333333, DPL=0.0839160839160839,
                            JS=0.003525272039522947, KL=0.014123273517486976, KS=0.0839160839160839,
                            LP=0.11867526397536456, TVD=0.08391608391608388))
    assert_values(post, dict(AD=-0.2517482517482517, CDDPL=0.41111111111111104, DAR=-0.2222222222222222,
                             DCA=-0.888888888888889, DCR=-0.75, DI=0.3939393939393939, DPPL=0.4195804195804196,
                             DRR=0.375, FT=-0.36363636363636365, GE=0.25, RD=0.17142857142857137,
                             SD=0.6666666666666667, TE=2.4))


def test_r3_infinity_strings_and_ft_without_features():
    df = pd.DataFrame({"g": list("aaaddd"), "y": list("pnppnn"), "yh": list("nnnpnp")})
    (entry,) = lucent_report(df, "g", ["d"], "y", ["p"], POST, ["DI", "DCA", "DCR", "TE", "DPPL", "FT"], "yh")
    assert entry["metrics"] == [
        {"name": "DCA", "description": "Difference in Conditional Acceptance (DCA)", "value": "Infinity"},
        {"name": "DCR", "description": "Difference in Conditional Rejection (DCR)", "value": 1.6666666666666667},
        {"name": "DI", "description": "Disparate Impact (DI)", "value": "Infinity"},
        {"name": "DPPL", "description": "Difference in Positive Proportions in Predicted Labels (DPPL)",
         "value": -0.6666666666666666},
        {"name": "FT", "description": "Flip Test (FT)", "value": None,
         "error": "Found array with 0 feature(s) (shape=(3, 0)) while a minimum of 1 is required by "
                  "KNeighborsClassifier."},
        {"name": "TE", "description": "Treatment Equality (TE)", "value": "-Infinity"},
    ]
    json.dumps(entry, allow_nan=False)  # strictly valid JSON


@pytest.mark.parametrize(("label", "label_values", "dpl_a", "dpl_b"), [
    (pd.Series([0, 1, 1, 2, 0]), [1], 0.3333333333333333, -0.3333333333333333),  # continuous: y > 1
    (pd.Series([0, 1, 1, 2, 0], dtype="category"), [1], -0.16666666666666669, 0.16666666666666669),
    (pd.Series([0, 1, 1, 2, 0]), [1, 2], 0.16666666666666663, -0.16666666666666663),
])
def test_r4_label_typing_quirk(label, label_values, dpl_a, dpl_b):
    df = pd.DataFrame({"g": list("aabbb"), "y": label})
    report = lucent_report(df, "g", None, "y", label_values, PRE, ["DPL", "CI"])
    assert [metric_values(entry) for entry in report] == [
        {"CI": approx(0.2), "DPL": approx(dpl_a)}, {"CI": approx(-0.2), "DPL": approx(dpl_b)}]


def test_r5_threshold_edge_cases():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": list("pnpn")})
    (at_max,) = lucent_report(df, "x", [4.0], "y", ["p"], PRE, ["CI", "DPL", "KL"])
    assert at_max["value_or_threshold"] == ""
    assert metric_values(at_max) == {
        "CI": "CI: facet set is empty. Check that x[facet] has non-zero length.", "DPL": "Facet set is empty.",
        "KL": "No instance of common facet found, dataset may be too small"}
    (inside,) = lucent_report(df, "x", [2.5], "y", ["p"], PRE, ["CI", "DPL", "KL"])
    assert inside["value_or_threshold"] == "(2.5, 4.0]"
    assert metric_values(inside) == {"CI": 0.0, "DPL": 0.0, "KL": 0.0}


def test_r6_nan_facet_and_label():
    df = pd.DataFrame({"g": ["a", "b", None, "a", "b", "a"], "y": ["p", "n", "p", None, "n", "p"]})
    report = lucent_report(df, "g", None, "y", ["p"], PRE, ["CI", "DPL"])
    assert [entry["value_or_threshold"] for entry in report] == ["a", "b", "nan"]
    assert metric_values(report[0]) == {"CI": 0.0, "DPL": approx(-0.3333333333333333)}
    assert metric_values(report[1]) == {"CI": approx(0.3333333333333333), "DPL": approx(0.75)}
    assert metric_values(report[2]) == {"CI": "CI: facet set is empty. Check that x[facet] has non-zero length.",
                                        "DPL": "Facet set is empty."}


@pytest.mark.parametrize(("y", "dpl"), [([0.1, 0.9, 0.6, 0.2], 0.0), ([0.5, 0.9, 0.5, 0.2], 0.5)])
def test_r7_strict_threshold(y, dpl):
    df = pd.DataFrame({"g": list("aabb"), "y": y})
    (entry,) = lucent_report(df, "g", ["b"], "y", [0.5], PRE, ["DPL"])
    assert metric_values(entry) == {"DPL": dpl}


def test_r7_bool_facet_and_label():
    df = pd.DataFrame({"g": [True, False, True, False, True], "y": [True, True, False, False, True]})
    (entry,) = lucent_report(df, "g", [True], "y", [True], PRE, ["CI", "DPL"])
    assert entry["value_or_threshold"] == "True"
    assert metric_values(entry) == {"CI": approx(-0.2), "DPL": approx(-0.16666666666666663)}


DF_CAT = pd.DataFrame({"x": list("abbb"), "y": [1, 1, 0, 0], "z": [1, 1, 1, 0], "yhat": [1, 0, 0, 1],
                       "yhat_cat": ["1", "0", "0", "1"]})


def test_category_data_report():
    report = lucent_report(DF_CAT, "x", None, "y", [0], PRE, group=DF_CAT["z"])
    assert_values(report[0], dict(CDDL=-0.375, CI=0.5, DPL=-0.6666666666666667, JS=0.08720802396075798,
                                  KL=-0.3662040962227032, KS=0.6666666666666667, LP=0.6666666666666667,
                                  TVD=0.33333333333333337))
    assert_values(report[1], dict(CDDL=0.625, CI=-0.5, DPL=0.6666666666666667, JS=0.08720802396075798,
                                  KL=1.0986122886681098, KS=0.6666666666666667, LP=0.6666666666666667,
                                  TVD=0.33333333333333337))
    for predicted in ("yhat", "yhat_cat"):
        post = lucent_report(DF_CAT.drop(columns=["yhat" if predicted == "yhat_cat" else "yhat_cat"]), "x", None,
                             "y", [0], POST, ["AD", "DI", "DPPL", "RD"], predicted, DF_CAT["z"])
        assert [metric_values(entry) for entry in post] == [
            {"AD": approx(-0.6666666666666667), "DI": approx(3.0), "DPPL": approx(-0.6666666666666667), "RD": -1.0},
            {"AD": approx(0.6666666666666667), "DI": approx(0.3333333333333333), "DPPL": approx(0.6666666666666667),
             "RD": 1.0}]


_CONT_ROWS = """0 0 0 0 T 1 1 1|3 0 0 0 T 0 1 1|3 0 1 0 T 0 1 1|0 0 0 0 F 1 1 0|4 0 0 1 T 0 1 1|0 0 1 0 T 1 1 1
3 0 0 0 T 1 1 1|3 1 0 0 T 1 1 1|0 0 1 0 T 1 1 1|3 0 1 1 T 1 0 1|4 0 0 0 T 1 0 1|3 0 1 0 T 1 1 1
3 0 0 0 F 1 1 0|0 0 0 0 T 1 1 1|0 0 1 0 T 0 1 1|0 0 1 0 T 1 1 1|0 1 0 1 F 0 1 0|3 0 0 0 F 1 1 0
0 0 1 0 F 1 1 1|3 0 0 0 T 1 0 1|3 0 1 0 F 1 1 0|0 1 0 0 F 1 1 0|3 0 1 0 T 0 1 1|0 0 0 1 T 1 0 1"""
DF_CONT = pd.DataFrame(
    [[c == "T" if c in "TF" else int(c) for c in row.split()] for row in _CONT_ROWS.replace("\n", "|").split("|")],
    columns=list("xyzabcd") + ["yhat"])


def test_continuous_data_report():
    (pre,) = lucent_report(DF_CONT, "x", [2], "y", [0], PRE, group=DF_CONT["z"])
    assert pre["value_or_threshold"] == "(2, 4]"
    assert_values(pre, dict(CDDL=0.3851010101010101, CI=-0.08333333333333333, DPL=0.1048951048951049,
                            JS=0.01252420207928287, KL=0.057704603668062765, KS=0.1048951048951049,
                            LP=0.14834407996920576, TVD=0.1048951048951049))
    (post,) = lucent_report(DF_CONT, "x", [2], "y", [0], POST, predicted="yhat", group=DF_CONT["z"])
    assert_values(post, dict(AD=-0.2167832167832168, CDDPL=0.07592592592592595, DAR=-0.1, DCA=0.15, DCR=1.0,
                             DI=1.0576923076923077, DPPL=-0.04195804195804198, DRR=0.6666666666666667,
                             FT=-0.23076923076923078, GE=0.07593688362919139, RD=-1.0, SD=0.1388888888888889,
                             TE=-0.25))
    # Regression variant: same report with threshold 5 on real-valued labels and predictions.
    regression = DF_CONT.assign(
        y=[0.0, 0.5, 2, 3, 2.2, 0.1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 8, 0, 0],
        yhat=[11, 6, 6.6, 0.3, 6, 6, 6, 6, 6, 6, 6, 6, 0, 6.2, 6.6, 6.6, 0.1, 2, 8, 9, 0.1, 2.2, 10, 9])
    (binary,) = lucent_report(DF_CONT.assign(y=DF_CONT["y"].astype(float), yhat=DF_CONT["yhat"].astype(float)),
                              "x", [2], "y", [0.5], POST, predicted="yhat", group=DF_CONT["z"])
    (real,) = lucent_report(regression, "x", [2], "y", [5], POST, predicted="yhat", group=DF_CONT["z"])
    assert metric_values(real) == metric_values(binary)


def test_string_and_integer_typing():
    df = pd.DataFrame({"Label": list("1234"), "Facet": list("1234"), "Feature": list("1234"),
                       "PredictedLabel": list("1234")})
    assert lucent_report(df, "Facet", [2], "Label", [2], POST, ["DPPL"], "PredictedLabel") == [
        {"value_or_threshold": "(2, 4]", "metrics": [
            {"name": "DPPL", "description": "Difference in Positive Proportions in Predicted Labels (DPPL)",
             "value": -1.0}]}]
    df = pd.DataFrame({"Label": [1, 1, 3, 4], "Facet": [1, 2, 3, 4], "Pred": [2, 2, 3, 4]})
    (entry,) = lucent_report(df, "Facet", [1, 2], "Label", [1, 2], POST, ["DPPL"], "Pred")
    assert entry["value_or_threshold"] == "1,2" and metric_values(entry) == {"DPPL": -1.0}


LABEL_VALUES_DF = pd.DataFrame({"x": list("abbcc"), "y": list("pqrpq"), "z": [1, 1, 1, 0, 0], "yhat": list("ppqpp")})


def test_label_values_reports():
    pre = lucent_report(LABEL_VALUES_DF, "x", None, "y", ["p", "q"], PRE, ["DPL", "CDDL"],
                        group=LABEL_VALUES_DF["z"])
    assert [metric_values(e) for e in pre] == [
        {"CDDL": approx(-0.3), "DPL": approx(-0.25)}, {"CDDL": approx(0.3), "DPL": approx(0.5)},
        {"CDDL": approx(-0.4), "DPL": approx(-0.33333333333333337)}]
    post = lucent_report(LABEL_VALUES_DF, "x", None, "y", ["p", "q"], POST, ["AD", "DI", "DPPL", "RD", "DAR", "DRR"],
                         "yhat", LABEL_VALUES_DF["z"])
    assert [metric_values(e) for e in post] == [
        {"AD": approx(-0.25), "DAR": approx(-0.25), "DI": 1.0, "DPPL": 0.0, "DRR": 0, "RD": 0.0},
        {"AD": approx(0.5), "DAR": approx(0.5), "DI": 1.0, "DPPL": 0, "DRR": 0, "RD": 0},
        {"AD": approx(-0.33333333333333337), "DAR": approx(-0.33333333333333337), "DI": 1.0, "DPPL": 0, "DRR": 0,
         "RD": 0}]


@pytest.mark.parametrize(("dtype", "values"), [("int", [1, 2]), ("str", ["1", "2"]), ("int", ["1", "2"])])
def test_label_values_as_categories(dtype, values):
    df = LABEL_VALUES_DF.assign(y=pd.Series([1, 2, 0, 1, 2]).astype(dtype).astype("category"),
                                yhat=pd.Series([1, 1, 0, 1, 1]).astype(dtype).astype("category"))
    pre = lucent_report(df, "x", None, "y", values, PRE, ["DPL", "CDDL"], group=df["z"])
    post = lucent_report(df, "x", None, "y", values, POST, ["DPPL", "CDDPL"], "yhat", df["z"])
    expected = [(-0.3, -0.25), (0.3, 0.5), (-0.4, -0.33333333333333337)]
    assert [metric_values(e) for e in pre] == [{"CDDL": approx(c), "DPL": approx(d)} for c, d in expected]
    assert [metric_values(e) for e in post] == [{"CDDPL": approx(c), "DPPL": approx(d)} for c, d in expected]


def test_partial_report_without_group():
    df = pd.DataFrame({"x": [1, 2, 3, 2, 0], "y": [1, 1, 0, 0, 0], "z": [1, 1, 0, 1, 1], "yhat": [1, 0, 0, 1, 1]})
    (pre,) = lucent_report(df, "x", [2], "y", [0], PRE, ["CDDL", "CI", "DPL", "KL"])
    assert pre["metrics"][0] == {"name": "CDDL", "description": "Conditional Demographic Disparity in Labels (CDDL)",
                                 "value": None, "error": "Group variable is empty or not provided"}
    assert metric_values(pre) == {"CDDL": "Group variable is empty or not provided", "CI": approx(0.6),
                                  "DPL": approx(0.5), "KL": approx(-0.34657359027997264)}
    (post,) = lucent_report(df, "x", [2], "y", [0], POST, ["AD", "CDDPL", "DCA", "DI", "DPPL", "FT", "GE", "SD"],
                            "yhat")
    assert metric_values(post) == {
        "AD": approx(-0.75), "CDDPL": "Group variable is empty or not provided", "DCA": approx(0.6666666666666666),
        "DI": 0.0, "DPPL": approx(0.75), "FT": -1.0, "GE": approx(0.19444444444444456), "SD": 1.0}


def test_metric_order_and_descriptions_for_all():
    assert metric_names(PRE, ["all"]) == ["CDDL", "CI", "DPL", "JS", "KL", "KS", "LP", "TVD"]
    assert metric_names(POST, ["all"]) == ["AD", "CDDPL", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD",
                                           "SD", "TE"]
    (entry,) = r1_report(PRE, values=["A"])
    assert [m["description"] for m in entry["metrics"]] == [
        "Conditional Demographic Disparity in Labels (CDDL)", "Class Imbalance (CI)",
        "Difference in Positive Proportions in Labels (DPL)", "Jensen-Shannon Divergence (JS)",
        "Kullback-Liebler Divergence (KL)", "Kolmogorov-Smirnov Distance (KS)", "L-p Norm (LP)",
        "Total Variation Distance (TVD)"]


def test_invalid_metric_name_and_stage():
    with pytest.raises(ValueError, match=r"^Invalid metric_name: metrics should be one of the registered "
                                         r"metrics\['CI', 'DPL', 'KL', 'JS', 'LP', 'TVD', 'KS', 'CDDL'\]$"):
        metric_names(PRE, ["DI"])
    with pytest.raises(ValueError, match="^stage_type should be a Enum value of StageType$"):
        metric_names("training", ["all"])


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(label_values=[]), "Positive label values or thresholds are empty for Label column"),
    (dict(predicted=None), "predicted_label_column has to be provided for Post training metrics"),
    (dict(label="y_cat", label_values=[1], predicted="f"),
     "Predicted Label Column series datatype is not the same as Label Column series"),
    (dict(facet="f", facet_values=None), "Threshold values must be provided for continuous features"),
    (dict(facet="f", facet_values=["x"]),
     "Facet/label value provided must be a single numeric threshold for continuous data"),
    (dict(label="f", label_values=["x"], predicted="f"),
     "Facet/label value provided must be a single numeric threshold for continuous data"),
    (dict(predicted="p_none"), "No Label values are present in the predicted Label Column,Positive Predicted "
                               "Index Series contains all False values"),
])
def test_report_level_errors(kwargs, message):
    df = pd.DataFrame({"g": list("abab"), "y": list("pnpn"), "p": list("pnnp"),
                       "y_cat": pd.Series([1, 0, 1, 0], dtype="category"),
                       "p_none": list("nnnn"), "f": [0.5, 1.5, 2.5, 3.5]})
    arguments = dict(df=df, facet="g", facet_values=None, label="y", label_values=["p"], stage=POST, predicted="p")
    arguments.update(kwargs)
    with pytest.raises(UserError) as raised:
        lucent_report(**arguments)
    assert message in str(raised.value)


def test_column_name_in_report_level_errors():
    df = pd.DataFrame({"age": [0.5, 1.5, 2.5], "y": list("pnp")})
    with pytest.raises(UserError, match="^Facet column 'age': Threshold values must be provided"):
        lucent_report(df, "age", None, "y", ["p"], PRE)


def test_one_vs_all_over_many_values_uses_one_table_and_matches_single_value_reports():
    rng = np.random.default_rng(5)
    n = 2000
    df = pd.DataFrame({"g": rng.choice([f"v{i}" for i in range(10)], n), "y": rng.random(n) < 0.4,
                       "p": rng.random(n) < 0.5, "x": rng.normal(size=n)})
    group = pd.Series(rng.integers(0, 4, n))
    names = [m for m in metric_names(POST, ["all"]) if m != "FT"]
    one_vs_all = lucent_report(df, "g", None, "y", [True], POST, names, "p", group)
    for entry in one_vs_all:
        (single,) = lucent_report(df, "g", [entry["value_or_threshold"]], "y", [True], POST, names, "p", group)
        assert single == entry


def _dataset(df: pd.DataFrame, facets: list[str], features: list[str] | None) -> Dataset:
    return Dataset(source="memory", n_rows=len(df), headers=list(df.columns), feature_names=features or [],
                   label=Column.from_series(df["label"]), predicted_label=Column.from_series(df["pred"]),
                   facets={name: Column.from_series(df[name]) for name in facets},
                   features=df[features].copy() if features else None)


def test_bias_analysis_section():
    dataset = _dataset(R1, ["facet", "f2"], ["f1", "f2"])
    dataset.group = Column.from_series(R1_GROUP.rename("grp"))
    config = AnalysisConfig(
        dataset_type="text/csv", label="label", label_values_or_threshold=["yes"],
        facet=[Facet("facet"), Facet("f2", [5.0])],
        methods=Methods(pre_training_bias=BiasMethod(["all"]), post_training_bias=BiasMethod(["FT", "DI"])))
    pre = bias_analysis(dataset, config, PRE)
    assert list(pre) == ["label", "facets", "label_value_or_threshold"]
    assert pre["label"] == "label" and pre["label_value_or_threshold"] == "yes"
    assert list(pre["facets"]) == ["facet", "f2"]
    assert pre["facets"]["facet"] == r1_report(PRE)
    post = bias_analysis(dataset, config, POST)
    # FT features: the dataset's features minus the facet column.
    assert post["facets"]["facet"] == lucent_report(R1, "facet", None, "label", ["yes"], POST, ["FT", "DI"], "pred",
                                                    R1_GROUP)
    assert post["facets"]["f2"] == lucent_report(R1.drop(columns=["facet"]), "f2", [5.0], "label", ["yes"], POST,
                                                 ["FT", "DI"], "pred", R1_GROUP)


def test_bias_analysis_without_features_or_predictions():
    dataset = _dataset(R1, ["facet"], None)
    config = AnalysisConfig(dataset_type="text/csv", label="label", label_values_or_threshold=["yes"],
                            facet=[Facet("facet", ["A"])],
                            methods=Methods(post_training_bias=BiasMethod(["FT", "CDDPL"])))
    (entry,) = bias_analysis(dataset, config, POST)["facets"]["facet"]
    assert entry["metrics"][0]["error"] == "Group variable is empty or not provided"
    assert entry["metrics"][1]["error"].startswith("FT needs the dataset's feature columns")
    dataset.predicted_label = None
    with pytest.raises(UserError, match="predicted labels"):
        bias_analysis(dataset, config, POST)


def test_one_vs_all_without_the_one_pass_table_gives_the_same_report(monkeypatch):
    """Too many facet values x groups for one table: each group is counted on its own."""
    expected = r1_report(POST)
    monkeypatch.setattr("analyzer.bias.report.MAX_TABLE_CELLS", 1)
    assert r1_report(POST) == expected


def test_one_vs_all_over_many_distinct_values_stays_linear():
    rng = np.random.default_rng(2)
    n = 200_000
    df = pd.DataFrame({"id": np.char.add("id", rng.integers(0, 50_000, n).astype(str)), "y": rng.random(n) < 0.5})
    report = lucent_report(df, "id", None, "y", [True], PRE, ["CI", "DPL"])
    assert len(report) == df["id"].nunique()
    first = df["id"].iloc[0]
    assert report[0]["value_or_threshold"] == first
    assert metric_values(report[0])["CI"] == approx(1 - 2 * (df["id"] == first).mean())


def test_a_facet_of_many_groups_shows_progress(monkeypatch, caplog) -> None:
    """One-vs-rest over thousands of facet values can take minutes (the Flip Test most): a line every
    LUCENT_PROGRESS_SECONDS in a log, as the other long steps show; a facet of a few groups shows none."""
    import logging

    from analyzer.bias.report import PROGRESS_GROUPS

    monkeypatch.setenv("LUCENT_PROGRESS_SECONDS", "1e-9")  # every group's line, whatever the clock says
    rng = np.random.default_rng(0)
    n = 100 * PROGRESS_GROUPS  # 1 % distinct values: categorical (Clarify's 5 % rule)
    df = pd.DataFrame({"city": rng.integers(0, PROGRESS_GROUPS, n), "label": rng.integers(0, 2, n)})
    with caplog.at_level(logging.INFO):
        report = lucent_report(df, "city", None, "label", [1], "pre_training", ["CI"])
    assert len(report) == PROGRESS_GROUPS
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Bias metrics for facet city: ")]
    assert lines[-1].startswith(f"Bias metrics for facet city: {PROGRESS_GROUPS:,} of {PROGRESS_GROUPS:,} groups (100%)")
    caplog.clear()
    few = df.assign(city=df["city"] % 3)
    with caplog.at_level(logging.INFO):
        lucent_report(few, "city", None, "label", [1], "pre_training", ["CI"])
    assert not [r for r in caplog.records if r.getMessage().startswith("Bias metrics for facet city: ")]


@pytest.mark.parametrize(("predicted", "said"), [
    ([i / 100 for i in range(100)], "the label 'y' is categorical (ints: 0, 1) and the predicted label 'p' is "
                                    "continuous (floats: 0.0, 0.01, 0.02, "),
    ([0] * 100, "none of the predicted labels of 'p' (0) is one of label_values_or_threshold [1], and Clarify "
                "computes no post-training metric without a positive prediction"),
])
def test_clarify_post_training_typing_failures_say_why(predicted, said):
    """Clarify's two post-training typing failures name neither column nor cause: the batch job adds both
    (Clarify's words first, kept as the error's ``clarify`` for the monitor, which words them for a window)."""
    from analyzer.bias.report import LabelTypingError

    df = pd.DataFrame({"g": list("ab") * 50, "y": [1, 0] * 50, "p": predicted})  # 2 % distinct: categorical
    with pytest.raises(LabelTypingError) as raised:
        lucent_report(df, "g", None, "y", [1], POST, ["DPPL"], predicted="p")
    message, clarify = str(raised.value), raised.value.clarify
    assert clarify.startswith("Predicted label column 'p': ") and message.startswith(f"{clarify} (")
    assert said in message
