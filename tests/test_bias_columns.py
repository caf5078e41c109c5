"""Clarify's column typing and value matching (bias-metrics.md sections 2, 9.4 and 9.5)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import columns
from analyzer.bias.columns import DataType
from analyzer.data.column import Column

CAT, CONT = DataType.CATEGORICAL, DataType.CONTINUOUS


def col(values, dtype=None, name="c") -> Column:
    return Column.from_series(pd.Series(values, dtype=dtype, name=name))


@pytest.mark.parametrize(("series", "values", "expected"), [
    (pd.Series([1, 2, 3], dtype="category"), None, CAT),
    (pd.Series([1, 2, 3]), [1, 2, 3], CAT),
    (pd.Series([1.0, 2.0, 3.0]), None, CONT),
    (pd.Series(["a", "b", "c"]), None, CAT),
    (pd.Series(["1", "2", "3"]), None, CONT),
    (pd.Series(["1"] * 40 + ["2"]), None, CAT),
    (pd.Series([1, 2, 3]), None, CONT),
    (pd.Series([1] * 40 + [2]), None, CAT),
    (pd.Series([True, False, True]), None, CAT),
    (pd.Series([0.2, 0.3, 0.4]), [], CONT),
    (pd.Series(["1", None, "2"]), None, CAT),  # a missing value never casts to int64
    (pd.Series(["1.5", "2"]), None, CAT),  # not an int
    (pd.Series([1.0, np.nan]), None, CONT),
    (pd.Series(pd.to_datetime(["2020-01-01", "2021-01-01"])), None, CAT),
])
def test_series_datatype_table(series, values, expected):
    assert columns.classify(Column.from_series(series), values) is expected


def test_classification_logs_clarify_line(caplog):
    with caplog.at_level(logging.INFO, logger="analyzer.bias.columns"):
        columns.classify(col([1, 1, 2, 2], name="age"), [1])
    assert "Column age with data uniqueness fraction 0.5 is classifed as a CONTINUOUS column" in caplog.text


@pytest.mark.parametrize(("series", "values", "expected"), [
    (pd.Series([1, 2, 3]), [1, 2], [1, 2]),
    (pd.Series([1, 2, 3]), ["1", "2"], [1, 2]),
    (pd.Series([1, 2, 3]), ["1.0", "2.0"], [1, 2]),
    (pd.Series(["1", "2", "3"]), ["1", "2"], ["1", "2"]),
    (pd.Series(["1", "2", "3"]), [1, 2], ["1", "2"]),
    (pd.Series(["1.0", "2.0", "3.0"]), [1.0, 2.0], ["1.0", "2.0"]),
    (pd.Series([1.0, 2.0, 3.0]), [1.0, 2.0], [1.0, 2.0]),
    (pd.Series([1.0, 2.0, 3.0]), ["1.0", "2.0"], [1.0, 2.0]),
    (pd.Series([1.0, 2.0, 3.0]), [1, 2], [1.0, 2.0]),
    (pd.Series([True, False]), [True], [True]),
    (pd.Series(["True", "False"]), [True], ["True"]),
    (pd.Series([True, False]), [1, 2, 0], [True, True, False]),
    (pd.Series([1, 1, 0]), [True, False], [1, 0]),
])
def test_convert_positive_label_values_table(series, values, expected):
    column = Column.from_series(series.astype("category"))
    converted = columns.convert_values(columns.first_value(column), values)
    assert converted == expected


def test_convert_failure_message():
    with pytest.raises(ValueError, match="^'label' has not positive elements. Double-check if 'label' and "
                                         "'positive_label_values'have correct data-types or values.$"):
        columns.convert_values(np.int64(1), [np.nan])


@pytest.mark.parametrize(("series", "values", "expected"), [
    (pd.Series([1, 2, 3], dtype="category"), [2], "2"),
    (pd.Series([1, 2, 3]), [1, 2], "1,2"),
    (pd.Series([1.0, 2.0, 3.0]), [2.0], "(2.0, 3.0]"),
    (pd.Series([1.0, 2.0, 3.0]), [0.0], "(0.0, 3.0]"),
    (pd.Series([1.0, 2.0, 3.0]), [5.0], "(3.0, 5.0]"),
    (pd.Series(["yes", "no", "yes"]), ["yes"], "yes"),
    (pd.Series(["1", "2", "3"]), [2], "(2, 3]"),
    (pd.Series([True, False, True]), [True], "True"),
    (pd.Series([0]), [1], "(0, 1]"),
])
def test_label_value_or_threshold_table(series, values, expected):
    assert columns.label_value_or_threshold(Column.from_series(series), values) == expected


def test_label_value_or_threshold_needs_values():
    with pytest.raises(ValueError, match="^Positive label values or thresholds are empty for Label column$"):
        columns.label_value_or_threshold(col([1, 2]), [])


@pytest.mark.parametrize(("values", "threshold", "positive"), [
    ([1.0, 2.0, 3.0, 4.0], [2.5], [False, False, True, True]),
    ([1.0, 2.0, 3.0, 4.0], [4.0], [False] * 4),  # threshold == max: no interval
    ([1.0, 2.0, 3.0, 4.0], [5.0], [False] * 4),  # (max, threshold] holds no value
    ([0.1, 0.9, 0.5, 0.2], [0.5], [False, True, False, False]),  # strictly greater
    ([-5.0, -3.0], [3], [False, False]),  # abs(max) quirk: no interval
    ([1.0, np.nan, 3.0], ["2"], [False, False, True]),
])
def test_continuous_positive_values(values, threshold, positive):
    label = col(values)
    typing = columns.type_label(label, threshold)
    assert typing.data_type is CONT
    assert label.row_mask(typing.positive).tolist() == positive


def test_threshold_strings_of_edge_cases():
    assert columns.label_value_or_threshold(col([1.0, 2.0, 3.0, 4.0]), [4.0]) == ""
    assert columns.label_value_or_threshold(col([-5.0, -3.0]), [3]) == ""
    assert columns.label_value_or_threshold(col([-5.0, -3.0]), [-3]) == "(-3.0, -3.0]"


def test_non_numeric_threshold_of_a_continuous_column():
    with pytest.raises(ValueError, match="^Facet/label value provided must be a single numeric threshold for "
                                         "continuous data$"):
        columns.type_label(col([0.1, 0.2, 0.3]), ["high"])


def test_categorical_matching_converts_values_once_nothing_matches():
    label = col(["1", "2", "2", "3"])
    assert columns.classify(label, [2, 3]) is CAT
    assert label.row_mask(columns.categorical_mask(label, [2, 3])).tolist() == [False, True, True, True]
    flags = col([True, False, True])
    # bool("False") is True: Clarify's conversion quirk.
    assert flags.row_mask(columns.categorical_mask(flags, ["False"])).tolist() == [True, False, True]
    # A value that matches keeps the others unconverted.
    assert label.row_mask(columns.categorical_mask(label, ["2", 3])).tolist() == [False, True, True, False]
    assert not columns.categorical_mask(col(["a", "b"]), ["z"]).any()  # no match is not an error


def test_facet_groups_one_vs_all_include_nan_in_order_of_appearance():
    facet = col(["a", "b", None, "a", "b", "a"])
    groups = columns.facet_groups(facet, CAT, None)
    assert [g.value_or_threshold for g in groups] == ["a", "b", "nan"]
    assert [g.row_mask(facet).tolist() for g in groups] == [
        [True, False, False, True, False, True], [False, True, False, False, True, False], [False] * 6]


def test_nan_group_of_a_bool_facet_with_missing_values_is_the_true_rows():
    """Clarify converts NaN with bool(): the "nan" group of an object bool column is d = True."""
    facet = col([True, None, False, True])
    groups = columns.facet_groups(facet, CAT, None)
    assert [g.value_or_threshold for g in groups] == ["True", "nan", "False"]
    assert groups[1].row_mask(facet).tolist() == [True, False, False, True]


def test_predicted_label_rules():
    label = columns.type_label(col([0.1, 0.9, 0.6, 0.2]), [0.5])
    predicted = col([0.7, 0.2, 0.8, 0.4])
    assert predicted.row_mask(columns.predicted_positive(predicted, label)).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="^No Label values are present in the predicted Label Column,Positive "
                                         "Predicted Index Series contains all False values$"):
        columns.predicted_positive(col([0.1, 0.2, 0.3, 0.4]), label)
    with pytest.raises(ValueError, match="^Predicted Label Column series datatype is not the same as Label "
                                         "Column series$"):
        columns.predicted_positive(col([True, False, True, False]), label)


def test_continuous_predictions_are_cast_to_the_label_dtype():
    """An int label truncates float predictions; the interval's max covers both columns."""
    label = columns.type_label(col(list(range(10))), [5])
    predicted = col([6.9, 5.5, 9.99, 12.5])  # -> 6, 5, 9, 12; max becomes 12
    assert predicted.row_mask(columns.predicted_positive(predicted, label)).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="Cannot convert non-finite values"):
        columns.predicted_positive(col([6.0, np.nan, 7.0, 8.0]), label)


# A configured value that no row has: a warning naming it (Lucent rule), Clarify's numbers unchanged --------


def credit(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"approved": rng.integers(0, 2, n), "gender": rng.integers(0, 2, n),
                         "score": rng.random(n).round(4)})


def present(series: pd.Series) -> str:
    return ", ".join(str(v) for v in sorted(series.unique()))


def test_label_value_that_no_row_has_is_a_warning_naming_it_the_column_and_the_values(caplog):
    df = credit()
    label = col(df["approved"], name="approved")
    with caplog.at_level(logging.WARNING, logger="analyzer.bias.columns"), columns.value_warnings() as found:
        typing = columns.type_label(label, [5])
    assert typing.data_type is CAT and not label.row_mask(typing.positive).any()
    expected = f"`label_values_or_threshold`: no row of 'approved' has value 5 (values: {present(df['approved'])})"
    assert expected in caplog.text
    assert len(found) == 1 and found[0].startswith(expected) and "no row has a positive label" in found[0]


def test_facet_value_that_no_row_has_is_a_warning_worded_for_the_facet(caplog):
    df = credit()
    facet = col(df["gender"], name="gender")
    with caplog.at_level(logging.WARNING, logger="analyzer.bias.columns"), columns.value_warnings() as found:
        groups = columns.facet_groups(facet, CAT, [7])
    assert not groups[0].row_mask(facet).any()
    assert found == [f"facet 'gender' `value_or_threshold`: no row of 'gender' has value 7 (values: "
                     f"{present(df['gender'])}); the facet's sensitive group is empty, so its metrics are errors."]
    assert found[0] in caplog.text


def test_one_absent_value_among_present_ones_and_a_threshold_above_every_value(caplog):
    df = credit()
    facet = col(df["gender"].map({0: "F", 1: "M"}), name="sex")
    with columns.value_warnings() as found:
        groups = columns.facet_groups(facet, CAT, ["M", "X"])
        score = col(df["score"], name="score")
        typing = columns.type_label(score, [1.5])
    assert groups[0].row_mask(facet).tolist() == (df["gender"] == 1).tolist()  # 'M' still matches
    assert found[0] == "facet 'sex' `value_or_threshold`: no row of 'sex' has value 'X' (values: 'F', 'M')."
    assert typing.data_type is CONT and not score.row_mask(typing.positive).any()
    assert found[1] == (f"`label_values_or_threshold`: no row of 'score' is greater than the threshold 1.5 (values "
                        f"from {df['score'].min()} to {df['score'].max()}); no row has a positive label, so the "
                        "metrics compare groups without positive outcomes.")


def test_no_warning_when_every_value_has_rows_and_none_collected_outside_the_block(caplog):
    df = credit()
    with caplog.at_level(logging.WARNING, logger="analyzer.bias.columns"), columns.value_warnings() as found:
        columns.type_label(col(df["approved"], name="approved"), [1])
        columns.facet_groups(col(df["gender"], name="gender"), CAT, [0])
        columns.facet_groups(col(df["score"], name="score"), CONT, [0.5])
    assert found == [] and "no row of" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="analyzer.bias.columns"):
        columns.type_label(col(df["approved"], name="approved"), [5])  # logged, collected nowhere
    assert "no row of 'approved' has value 5" in caplog.text and found == []


def test_absent_values_keep_clarify_numbers_and_are_collected_once_per_run():
    from analyzer.bias import bias_analysis
    from analyzer.config.model import AnalysisConfig, BiasMethod, Facet, Methods
    from analyzer.data.dataset import Dataset

    df = credit(300, seed=1)
    dataset = Dataset(source="memory", n_rows=len(df), headers=list(df.columns), feature_names=["score"],
                      label=Column.from_series(df["approved"]), predicted_label=Column.from_series(df["approved"]),
                      facets={"gender": Column.from_series(df["gender"])}, features=df[["score"]])
    config = AnalysisConfig(dataset_type="text/csv", label="approved", label_values_or_threshold=[5],
                            facet=[Facet("gender", [7])], methods=Methods(pre_training_bias=BiasMethod(["CI", "DPL"])))
    with columns.value_warnings() as found:
        first = bias_analysis(dataset, config, "pre_training")
        second = bias_analysis(dataset, config, "pre_training")
    assert first == second and len(found) == 2
    assert found[0].startswith("`label_values_or_threshold`") and found[1].startswith("facet 'gender'")
    metrics = {m["name"]: m for m in first["facets"]["gender"][0]["metrics"]}
    assert metrics["CI"]["value"] is None and metrics["CI"]["error"]  # d is empty: Clarify's per-metric errors
    config = AnalysisConfig(dataset_type="text/csv", label="approved", label_values_or_threshold=[5],
                            facet=[Facet("gender", [1])], methods=Methods(pre_training_bias=BiasMethod(["CI", "DPL"])))
    metrics = {m["name"]: m["value"] for m in bias_analysis(dataset, config, "pre_training")["facets"]["gender"][0]["metrics"]}
    d = df["gender"] == 1
    assert metrics["CI"] == pytest.approx(((~d).sum() - d.sum()) / len(df))
    assert metrics["DPL"] == 0.0  # no positive label anywhere: q_a = q_d = 0


def test_rows_written_like_a_configured_value_but_of_another_type_are_named(caplog):
    """JSON Lines labels `1` and `"1"`: only the numbers match `[1]` (as in Clarify), and a warning says how
    many rows hold the text (the CSV case warns about its conversion already)."""
    from analyzer.bias.columns import categorical_mask
    from analyzer.data.column import Column

    column = Column.from_series(pd.Series([1, "1", 0, "1", 1, 0], dtype=object, name="approved"))
    with caplog.at_level("WARNING"):
        mask = categorical_mask(column, [1], role="label")
    assert mask.tolist() == [True, False, False]
    assert "2 row(s) of 'approved' hold '1' (str), written like a configured value but of another type" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        categorical_mask(Column.from_series(pd.Series([1, 0, 1], name="approved")), [1], role="label")
    assert "another type" not in caplog.text
