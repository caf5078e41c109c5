"""Flip Test: upstream vectors (bias-metrics.md 9.1, 9.6) and bit-identity with smclarify's FT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import flip_test
from analyzer.bias.flip_test import FT

_FT_ROWS = """0000111 1000101 1010101 0000011 1001101 0010111 1000111 1100111 0010111 1011110 1000110 1010111
1000011 0000111 0010101 0010111 0101001 1000011 0010011 1000110 1010011 0100011 1010101 0001110"""
_FT_SMALL_ROWS = """0000111 1000101 1010101 1001101 1000111 1100111 1011110 1000110 1010111 1000011 1000011
0010011 1000110 1010011 1010101 0001110"""


def _frame(rows: str) -> pd.DataFrame:
    return pd.DataFrame([[int(c) for c in row] for row in rows.split()])


def _bools(digits: str) -> np.ndarray:
    return np.array([c in "1T" for c in digits.replace(" ", "")])


def test_dataset_ft():
    df = _frame(_FT_ROWS)
    predicted = _bools("1 1 1 0 1 1 1 1 1 1 1 1 0 1 1 1 0 0 1 1 0 0 1 1")
    assert FT(df, df[0].to_numpy() == 1, predicted) == pytest.approx(-0.23076923076923078, rel=1e-12)
    df[3] = "a"
    with pytest.raises(ValueError, match="^FlipTest does not support non-numeric columns$"):
        FT(df, df[0].to_numpy() == 1, predicted)


def test_dataset_ft_small_samples():
    df = _frame(_FT_SMALL_ROWS)
    predicted = _bools("1 1 1 0 1 1 1 1 1 1 1 1 0 1 1 1")
    assert FT(df, df[0].to_numpy() == 1, predicted) == pytest.approx(-0.15384615384615385, rel=1e-12)


@pytest.mark.parametrize(("predicted", "expected"), [("TTTF", -1.0), ("FFFT", 1.0), ("TTTT", 0.0)])
def test_sign_is_clarify_implementation_sign(predicted, expected):
    df = pd.DataFrame({"f": [0.0, 1.0, 2.0, 0.1]})
    assert FT(df, np.array([False, False, False, True]), _bools(predicted)) == expected


def test_sign_with_five_neighbours():
    df = pd.DataFrame({"f": [float(i) for i in range(10)] + [0.2, 8.8]})
    sensitive = np.array([False] * 10 + [True, True])
    assert FT(df, sensitive, _bools("TTTFFFFTTT FF")) == -1.0


def test_errors():
    df = pd.DataFrame({"f": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="^Facet set is empty$"):
        FT(df, np.zeros(3, dtype=bool), _bools("TFT"))
    with pytest.raises(ValueError, match="^Negated Facet set is empty$"):
        FT(df, np.ones(3, dtype=bool), _bools("TFT"))
    with pytest.raises(ValueError, match=r"^Found array with 0 feature\(s\) \(shape=\(2, 0\)\) while a minimum "
                                         r"of 1 is required by KNeighborsClassifier.$"):
        FT(df[[]], np.array([False, False, True]), _bools("TFT"))


def test_distinct_rows():
    rows = np.array([[1.0, 2.0], [1.0, 2.0], [np.nan, 2.0], [1.0, 3.0], [np.nan, 2.0], [1.0, 2.0], [1.0, 3.0],
                     [-0.0, 3.0]])
    representatives, inverse = flip_test._distinct_rows(rows)
    assert len(representatives) == 4
    np.testing.assert_array_equal(rows[representatives][inverse], rows)  # NaN rows kept apart, then equal
    assert flip_test._distinct_rows(np.arange(8.0).reshape(4, 2)) == (None, None)
    df, sensitive, _ = _random_case(3, 1500, "discrete")  # the data of a bit-identity test below
    representatives, _ = flip_test._distinct_rows(df.to_numpy()[sensitive])
    assert representatives is not None and len(representatives) <= 18


def test_locality_order_is_a_permutation_along_a_z_curve():
    rows = np.array([[3.0, 3.0], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.1, 0.1]])
    order = flip_test._locality_order(rows)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
    assert order.tolist() == [1, 4, 3, 2, 0]  # lower-left cells first, upper-right last
    assert flip_test._locality_order(np.array([[1.0, np.nan], [2.0, 0.0]])) is None


# ------------------------------------------------------------------------------------------------
# Bit-identity with smclarify on random data, through every search route.
# ------------------------------------------------------------------------------------------------


def smclarify_ft(df: pd.DataFrame, sensitive: np.ndarray, predicted: np.ndarray) -> float:
    """smclarify's FT (tests calling it are marked ``oracle``: a missing smclarify fails the run)."""
    from smclarify.bias.metrics import FT as smclarify_FT

    return smclarify_FT(df, pd.Series(sensitive), pd.Series(predicted))


def _random_case(seed: int, n: int, kind: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "continuous":  # KD tree, hardly any duplicate row
        df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 50, n)})
    elif kind == "discrete":  # KD tree with many duplicates and distance ties: deduplicated queries
        df = pd.DataFrame({"a": rng.integers(0, 3, n), "b": rng.integers(0, 3, n), "c": rng.integers(0, 2, n)})
    elif kind == "mixed":  # bool + numbers: Clarify's object array
        df = pd.DataFrame({"a": rng.integers(0, 3, n).astype(float), "b": rng.random(n) < 0.5,
                           "c": rng.integers(0, 3, n)})
    elif kind == "wide":  # 16 features: brute force, Cython reductions on float64
        df = pd.DataFrame(rng.integers(0, 2, (n, 16)).astype(float))
    elif kind == "wide_mixed":  # brute force on an object array (pairwise_distances_chunked route)
        df = pd.DataFrame(rng.integers(0, 2, (n, 16)).astype(float)).assign(flag=rng.random(n) < 0.5)
    else:  # wide_int: brute force on int64
        df = pd.DataFrame(rng.integers(0, 3, (n, 17)))
    sensitive = rng.random(n) < rng.uniform(0.2, 0.6)
    predicted = rng.random(n) < rng.uniform(0.2, 0.8)
    return df, sensitive, predicted


@pytest.mark.parametrize("kind", ["continuous", "discrete", "mixed", "wide", "wide_mixed", "wide_int"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.oracle
def test_matches_smclarify(kind, seed):
    n = [7, 40, 300, 1500][seed]
    df, sensitive, predicted = _random_case(seed, n, kind)
    assert FT(df, sensitive, predicted) == smclarify_ft(df, sensitive, predicted)


@pytest.mark.oracle
def test_single_class_in_a_skips_the_search_but_not_input_checks():
    df, sensitive, predicted = _random_case(1, 500, "discrete")
    predicted = predicted | ~sensitive  # every row of a predicted positive
    assert FT(df, sensitive, predicted) == smclarify_ft(df, sensitive, predicted)
    df = df.astype(float)
    df.iloc[np.flatnonzero(sensitive)[0], 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        FT(df, sensitive, predicted)
