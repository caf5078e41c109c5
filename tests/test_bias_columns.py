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
