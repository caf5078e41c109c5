"""segment_config: interval parsing, segments over a column, and the config checks (docs/segments.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.config import SegmentConfig
from analyzer.config.parser import parse_config
from analyzer.config.rules import check_rules
from analyzer.data.column import Column
from analyzer.errors import ConfigError, UserError
from analyzer.segments.intervals import (
    Interval,
    IntervalError,
    items_overlap,
    overlapping_lists,
    parse_interval,
)
from analyzer.segments.rows import DEFAULT, interval_mask, segmentation

INF = math.inf


# -- intervals: a table of cases --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("(2, 5]", Interval(2, 5, False, True)),
    ("[0, 10)", Interval(0, 10, True, False)),
    ("[1, 4]", Interval(1, 4, True, True)),
    ("(1,4)", Interval(1, 4, False, False)),
    ("  [ -3 ,  -1 ]  ", Interval(-3, -1, True, True)),
    ("(-inf, 0]", Interval(-INF, 0, False, True)),
    ("[0.5, Infinity)", Interval(0.5, INF, True, False)),
    ("(-INF, +inf)", Interval(-INF, INF, False, False)),
    ("(-∞, ∞)", Interval(-INF, INF, False, False)),
    ("[1e3, 2.5E3]", Interval(1000.0, 2500.0, True, True)),
    ("(.5, 1.]", Interval(0.5, 1.0, False, True)),
    ("[+2, 9007199254740993]", Interval(2, 9007199254740993, True, True)),
    ("[7, 7]", Interval(7, 7, True, True)),
])
def test_intervals_parse_exactly(text, expected):
    parsed = parse_interval(text)
    assert parsed == expected
    assert type(parsed.lower) is type(expected.lower) and type(parsed.upper) is type(expected.upper)
    assert parse_interval(str(parsed)) == parsed  # the printed form reads back


@pytest.mark.parametrize(("text", "fragment"), [
    ("(5, 2]", "lower end is above its upper end"),
    ("(3, 3]", "is empty"),
    ("[3, 3)", "is empty"),
    ("(a, 5]", "is not an interval"),
    ("(1; 5]", "is not an interval"),
    ("(1, 2, 3]", "is not an interval"),
    ("(nan, 5]", "is not an interval"),
    ("[1e999, 2e999]", "too large"),
    ("()", "is not an interval"),
])
def test_bad_intervals_say_why(text, fragment):
    with pytest.raises(IntervalError, match=None) as raised:
        parse_interval(text)
    assert fragment in str(raised.value)


# -- intervals: properties against exact arithmetic -------------------------------------------------

ENDS = st.one_of(st.integers(-50, 50), st.integers(-50, 50).map(lambda i: i / 4), st.sampled_from([-INF, INF]))


@st.composite
def intervals(draw):
    low, high = sorted([draw(ENDS), draw(ENDS)])
    low_closed, high_closed = draw(st.booleans()), draw(st.booleans())
    if low == high:
        low_closed = high_closed = True
    return Interval(low, high, low_closed, high_closed)


def exact_contains(interval: Interval, value) -> bool:
    def exact(x):
        return x if isinstance(x, float) and math.isinf(x) else Fraction(x)

    v, lo, hi = exact(value), exact(interval.lower), exact(interval.upper)
    return (v >= lo if interval.lower_closed else v > lo) and (v <= hi if interval.upper_closed else v < hi)


@settings(max_examples=300, deadline=None)
@given(intervals(), st.lists(st.integers(-60, 60), min_size=1, max_size=30))
def test_integer_columns_compare_exactly(interval, values):
    got = interval_mask(np.array(values, dtype=np.int64), interval)
    assert got.tolist() == [exact_contains(interval, v) for v in values]


@settings(max_examples=300, deadline=None)
@given(intervals(), st.lists(st.integers(-240, 240).map(lambda i: i / 4), min_size=1, max_size=30))
def test_float_columns_compare_exactly(interval, values):
    got = interval_mask(np.array(values, dtype=float), interval)
    assert got.tolist() == [exact_contains(interval, v) for v in values]


@settings(max_examples=300, deadline=None)
@given(intervals())
def test_printed_intervals_parse_back(interval):
    assert parse_interval(str(interval)) == interval


@settings(max_examples=300, deadline=None)
@given(intervals(), intervals())
def test_overlap_means_a_shared_point(a, b):
    # Candidates: every end, and every midpoint between two finite ends (quarters are exact in binary).
    ends = sorted({x for x in (a.lower, a.upper, b.lower, b.upper) if math.isfinite(x)} | {-1000.0, 1000.0})
    points = ends + [(x + y) / 2 for x, y in zip(ends, ends[1:], strict=False)] + [-INF, INF]
    shared = any(a.contains(p) and b.contains(p) for p in points)
    assert a.overlaps(b) == shared == b.overlaps(a)


def test_integers_beyond_float_precision_stay_exact():
    big = 2**53
    column = np.array([big, big + 1, big + 2], dtype=np.int64)
    assert interval_mask(column, parse_interval(f"[{big + 1}, {big + 1}]")).tolist() == [False, True, False]
    assert interval_mask(column, parse_interval(f"({big}, inf)")).tolist() == [False, True, True]
    floats = np.array([float(big), 1.5], dtype=float)  # 2**53 + 1 is no float: nothing equals it
    assert interval_mask(floats, parse_interval(f"[{big + 1}, inf)")).tolist() == [False, False]
    assert interval_mask(floats, parse_interval(f"[{big}, {big + 1}]")).tolist() == [True, False]
    decimals = np.array([0.1, 0.3, 0.30000000000000004], dtype=float)  # the CSV value 0.3 is float("0.3")
    assert interval_mask(decimals, parse_interval("(0.1, 0.3]")).tolist() == [False, True, False]


def test_items_overlap_across_kinds():
    assert items_overlap(3, parse_interval("[1, 5]"))
    assert items_overlap("3", 3)
    assert items_overlap("2.0", 2)
    assert not items_overlap(5, parse_interval("[1, 5)"))
    assert not items_overlap("a", "b")
    assert overlapping_lists([["[0, 10)"], ["[10, 20)"], [15]]) == [(1, 2, "[10, 20)", "15")]
    assert overlapping_lists([["(bad"], ["(bad"]]) == [(0, 1, "(bad", "(bad")]  # not an interval: a text value


# -- segments over a column -------------------------------------------------------------------------

def entry(segments, **extra) -> SegmentConfig:
    return SegmentConfig(name_or_index="x", segments=segments, **extra)


def rows_of(column: Column, config: SegmentConfig) -> dict[str, list[int]]:
    return {segment.name: segment.rows.tolist() for segment in segmentation(config, 0, column).segments}


def test_numeric_segments_and_default():
    column = Column.from_series(pd.Series([1.0, 2.5, 5.0, np.nan, 7.0, -3.0, 10.0], name="x"))
    got = rows_of(column, entry([["(2, 5]"], ["[7, 10)", -3]]))
    assert got == {"(2, 5]": [1, 2], "[7, 10),-3": [4, 5], DEFAULT: [0, 3, 6]}  # NaN goes to __default__


def test_display_aliases_name_segments_and_optionally_the_default():
    column = Column.from_series(pd.Series(["a", "b", "c", None], name="x"))
    assert rows_of(column, entry([["a"], ["b"]], display_aliases=["A", "B"])) == {"A": [0], "B": [1], DEFAULT: [2, 3]}
    assert rows_of(column, entry([["a"], ["b"]], display_aliases=["A", "B", "rest"])) == \
        {"A": [0], "B": [1], "rest": [2, 3]}


def test_values_match_across_json_types():
    texts = Column.from_series(pd.Series(["1", "2", "x"], name="x"))
    assert rows_of(texts, entry([[1], ["x"]])) == {"1": [0], "x": [2], DEFAULT: [1]}
    numbers = Column.from_series(pd.Series([1, 2, 3], name="x"))
    assert rows_of(numbers, entry([["2"], [3]])) == {"2": [1], "3": [2], DEFAULT: [0]}
    flags = Column.from_series(pd.Series([True, False, True], name="x"))
    assert rows_of(flags, entry([["true"]])) == {"true": [0, 2], DEFAULT: [1]}


def test_an_empty_segment_is_kept():
    column = Column.from_series(pd.Series([1, 2], name="x"))
    assert rows_of(column, entry([["[5, 6]"]])) == {"[5, 6]": [], DEFAULT: [0, 1]}


def test_items_the_column_cannot_take_are_all_reported():
    numbers = Column.from_series(pd.Series([1, 2, 3], name="x"))
    with pytest.raises(UserError) as raised:
        segmentation(entry([["low", "(1, 2]"], ["(2, 1]"]]), 3, numbers)
    message = str(raised.value)
    assert "segment_config[3].segments[0][0]: 'low' is not a number" in message
    assert "segment_config[3].segments[1][0]" in message and "lower end is above" in message
    texts = Column.from_series(pd.Series(["a", "b"], name="x"))
    with pytest.raises(UserError, match=r"segment_config\[0\].segments\[0\]\[0\]: the interval '\(1, 2\]' needs a "
                                        "numeric column"):
        segmentation(entry([["(1, 2]"]]), 0, texts)


def test_lists_selecting_the_same_value_are_refused():
    column = Column.from_series(pd.Series([1, 4, 9], name="x"))
    with pytest.raises(UserError, match=r"segment_config\[0\].segments: lists 0 and 1 both select the value 4"):
        segmentation(entry([["[0, 5]"], ["(3, 10]"]]), 0, column)


# -- lucent validate: the config checks -------------------------------------------------------------

BASE = {"dataset_type": "text/csv", "headers": ["age", "g", "y"], "label": "y", "label_values_or_threshold": [1],
        "facet": [{"name_or_index": "g"}], "methods": {"pre_training_bias": {"methods": "all"}}}


def problems(**changes) -> list[str]:
    try:
        parse_config({**BASE, **changes})
    except ConfigError as error:
        return error.problems
    return []


def test_config_checks_report_every_segment_problem_at_once():
    found = problems(segment_config=[
        {"name_or_index": "agee", "segments": [["(1, 2"]]},
        {"name_or_index": "age", "segments": [["(5, 1]", "[0, 10)"], ["[12, 20)", 9]],
         "display_aliases": ["a", "a"]},
        {"name_or_index": "age", "segments": [[1]], "display_aliases": ["x", "y", "z"]},
    ])
    joined = "\n".join(found)
    assert "segment_config[0].name_or_index: 'agee' is not in headers; did you mean 'age'?" in joined
    assert "segment_config[1].segments[0][0]: interval '(5, 1]' is empty" in joined
    assert "segment_config[1].segments: lists 0 and 1 overlap ('[0, 10)' and '9'" in joined
    assert "segment_config[1].display_aliases[1]: 'a' is already the alias of segment 0" in joined
    assert "segment_config[2].display_aliases: Number of `display_aliases`" in joined
    assert "segment_config[2].config_name: 'age' already names segment_config[1]" in joined
    assert "(1, 2" not in joined  # '(1, 2' does not look like an interval: a text value, checked with the data
    assert len(found) == 6, found


def test_rules_leave_a_valid_segment_config_alone():
    config = parse_config({**BASE, "segment_config": [
        {"config_name": "ages", "name_or_index": "age", "segments": [["[1, 4]", "(5, 6]"], ["(7, inf)"]],
         "display_aliases": ["young", "mid", "other"]},
        {"name_or_index": "g", "segments": [["a", "b"]]}]})
    assert [s.config_name for s in config.segment_config] == ["ages", None]
    assert check_rules(config.raw) == []
