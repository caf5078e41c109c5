"""Metric functions on contingency counts: oracle vectors of bias-metrics.md sections 9.1, 9.2 and 9.6."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import metrics
from analyzer.bias.metrics import Confusion
from tests.test_bias_helpers import approx, split_of, words

INF = float("inf")

# dfBinary (section 9.1) and its group variable of SET_A (section 9.6).
FACET = np.array(list("MFFMFMFFMMFF"))
LABEL = np.array([0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
PRED = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
GROUP = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0]


def compute(name: str, split) -> float:
    """One metric on a split, the way the report dispatches it."""
    if name in ("KL", "JS", "LP", "TVD", "KS"):
        return getattr(metrics, name)(split.a.label_counts, split.d.label_counts)
    if name == "CDDL":
        return metrics.CDDL(split.groups(0))
    if name == "CDDPL":
        return metrics.CDDPL(split.groups(1))
    if name == "GE":
        return metrics.GE(split.overall)
    return getattr(metrics, name)(split.a, split.d)


def binary_split(d_value: str, predicted=PRED, group=GROUP):
    return split_of(d_value == FACET, LABEL, predicted, group)


SET_A = {  # metric: (d = F, d = M)
    "CI": (-0.16666666666666666, 0.16666666666666666),
    "DPL": (-0.028571428571428525, 0.028571428571428525),
    "KL": (0.001676949906878701, 0.001688279683303727),
    "JS": (0.00042058755900406617, 0.00042058755900406617),
    "LP": (0.0404061017820884, 0.0404061017820884),
    "TVD": (0.028571428571428553, 0.028571428571428553),
    "KS": (0.02857142857142858, 0.02857142857142858),
    "CDDL": (-0.08333333333333333, 0.08333333333333333),
    "DPPL": (-0.17142857142857137, 0.17142857142857137),
    "DI": (1.4285714285714284, 0.7000000000000001),
    "DCA": (0.25, -0.25),
    "DCR": (0.33333333333333326, -0.33333333333333326),
    "RD": (-0.6666666666666666, 0.6666666666666666),
    "SD": (0.16666666666666669, -0.16666666666666669),
    "DAR": (-0.5, 0.5),
    "DRR": (0.3333333333333333, -0.3333333333333333),
    "AD": (-0.3714285714285714, 0.3714285714285714),
    "TE": (-0.5, 0.5),
    "CDDPL": (-0.125, 0.125),
    "GE": (0.24556213017751485, 0.24556213017751485),
}


@pytest.mark.parametrize("name", sorted(SET_A))
def test_set_a_matches_smclarify_exactly(name):
    for d_value, expected in zip("FM", SET_A[name], strict=True):
        assert compute(name, binary_split(d_value)) == approx(expected)


@pytest.mark.parametrize(("name", "d_f", "d_m"), [
    ("CI", -1 / 6, 1 / 6), ("DI", 10 / 7, 7 / 10), ("DCA", 1 / 4, -1 / 4), ("DCR", 1 / 3, -1 / 3),
    ("RD", -2 / 3, 2 / 3), ("SD", 1 / 6, -1 / 6), ("DRR", 1 / 3, -1 / 3), ("AD", -13 / 35, 13 / 35),
    ("DAR", -1 / 2, 1 / 2), ("TE", -1 / 2, 1 / 2),
])
def test_df_binary_upstream_vectors(name, d_f, d_m):
    assert compute(name, binary_split("F")) == approx(d_f)
    assert compute(name, binary_split("M")) == approx(d_m)


def test_df_binary_confusion_quadrants():
    split = binary_split("F")
    assert (split.overall.tp, split.overall.tn, split.overall.fp, split.overall.fn) == (2, 3, 4, 3)
    assert (split.d.tp, split.d.tn, split.d.fp, split.d.fn) == (2, 2, 2, 1)
    assert (split.a.tp, split.a.tn, split.a.fp, split.a.fn) == (0, 1, 2, 2)


def test_di_edge_cases_of_upstream_tests():
    no_positive_m = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1], dtype=bool)
    assert metrics.DI(*_sides(binary_split("F", no_positive_m))) == INF
    with pytest.raises(ValueError, match="^Facet set is empty$"):
        metrics.DI(*_sides(binary_split("none")))
    two_rows = split_of([True, True], [False, True], [False, True])
    with pytest.raises(ValueError, match="^Negated facet set is empty$"):
        metrics.DI(two_rows.a, two_rows.d)


def _sides(split):
    return split.a, split.d


def test_drr_when_every_m_row_is_predicted_positive():
    predicted = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    assert metrics.DRR(*_sides(binary_split("F", predicted))) == approx(0.5)
    assert metrics.DRR(*_sides(binary_split("M", predicted))) == approx(-0.5)


def test_ci_of_continuous_and_multicategory_facets():
    x = np.array([1.55255404, 1.87128923, 1.82640675, 0.48706083, 0.21833644, 0.45007763, 0.47457823,
                  1.5346789, 1.61042132, 1.87130261, 1.97768247, 1.05499183])
    no_label = np.zeros(len(x), dtype=bool)
    assert metrics.CI(*_sides(split_of(x > 1.0, no_label))) == approx(-1 / 3)
    assert metrics.CI(*_sides(split_of(x < 1.0, no_label))) == approx(1 / 3)
    facet = np.array(words("M O M M F O O F M M F F O F M F O F M M F F O O"))
    for value, expected in (("M", 1 / 3), ("F", 1 / 4), ("O", 5 / 12)):
        assert metrics.CI(*_sides(split_of(facet == value, np.zeros(24, dtype=bool)))) == approx(expected)


def test_dpl_one_vs_all():
    x, y = np.array(list("aabb")), np.array([1, 1, 0, 1], dtype=bool)
    assert metrics.DPL(*_sides(split_of(x == "a", y))) == approx(-0.5)
    assert metrics.DPL(*_sides(split_of(x == "b", y))) == approx(0.5)


@pytest.mark.parametrize(("facet", "kl", "js", "lp"), [
    ([1, 0, 0, 0, 0, 0], -0.366516, 0.06641431438228168, 0.6),
    ([1, 0, 0, 0, 1, 0], 0.0, 0.0, 0.0),
])
def test_kl_js_lp_upstream_vectors(facet, kl, js, lp):
    split = split_of(facet, [1, 1, 1, 0, 0, 0])
    assert compute("KL", split) == pytest.approx(kl, rel=1e-6)
    assert compute("JS", split) == approx(js)
    assert compute("LP", split) == approx(lp)


@pytest.mark.parametrize("name", ["KL", "JS", "LP", "TVD", "KS"])
def test_distribution_metrics_without_common_category(name):
    with pytest.raises(ValueError, match="^No instance of common facet found, dataset may be too small$"):
        compute(name, split_of([0] * 6, [1, 1, 1, 0, 0, 0]))


def test_distribution_metrics_truncate_missing_categories():
    """d all positive, a one third positive: the negative category is dropped, KL < 0."""
    split = split_of([0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 1, 1])
    expected = {"KL": -0.3662040962227032, "JS": 0.08720802396075798, "LP": 0.6666666666666667,
                "TVD": 0.33333333333333337, "KS": 0.6666666666666667}
    assert {name: compute(name, split) for name in expected} == {k: approx(v) for k, v in expected.items()}


def test_distribution_metrics_on_three_raw_classes():
    label = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    d = np.array([False] * 5 + [True] * 5)
    counts_a, counts_d = np.bincount(label[~d], minlength=3), np.bincount(label[d], minlength=3)
    expected = {"KL": 0.13862943611198905, "JS": 0.03397980735907945, "LP": 0.28284271247461906,
                "TVD": 0.2, "KS": 0.2}
    for name, value in expected.items():
        assert getattr(metrics, name)(counts_a, counts_d) == approx(value)


def test_dataset_pdf_vectors():
    x = np.array(list("abbcaabcbcbb"))
    label = np.array(list("001121012202"))
    positive = np.isin(label, ["1", "2"])
    split = split_of(np.isin(x, ["a", "c"]), positive)
    assert compute("KL", split) == pytest.approx(0.2938933, rel=1e-6)
    assert compute("JS", split) == pytest.approx(0.06465997, rel=1e-6)
    assert compute("LP", split) == pytest.approx(0.471404520, rel=1e-8)
    d = x != "b"
    raw_a = np.array([np.count_nonzero(label[~d] == c) for c in "012"])
    raw_d = np.array([np.count_nonzero(label[d] == c) for c in "012"])
    assert metrics.KS(raw_a, raw_d) == pytest.approx(1 / 3, rel=1e-7)
    assert compute("KS", split_of(d, positive)) == pytest.approx(1 / 3, rel=1e-7)
    assert compute("KS", split_of(np.array(list("aabbb")) == "b", [1, 0, 0, 1, 1])) == pytest.approx(1 / 6, rel=1e-7)


def test_aligned_nonzero_pdfs_upstream_vectors():
    # pdfs_aligned_nonzero([1,2,3], [1,1,4,5,5]) -> ([1/3], [2/5]); categories 1..5 as counts.
    pa, pd_ = metrics.aligned_nonzero_pdfs([1, 1, 1, 0, 0], [2, 0, 0, 1, 2])
    assert pa.tolist() == [1 / 3] and pd_.tolist() == [2 / 5]
    with pytest.raises(ValueError):  # ([1,2,3], [4,5,5]) has no common value
        metrics.aligned_nonzero_pdfs([1, 1, 1, 0, 0], [0, 0, 0, 1, 2])


def test_cddl_of_upstream_cdd_vector():
    x = np.array(words("M M M F F F F M M M M F M M F M F F M M F M M F"))
    label = np.array([int(c) for c in "011010111101110000100110"], dtype=bool)
    group = [int(c) for c in "102211211201201112010011"]
    assert compute("CDDL", split_of(x == "F", label, group=group)) == pytest.approx(0.3982142857, rel=1e-9)
    assert compute("CDDL", split_of(x == "M", label, group=group)) == pytest.approx(-0.3982142857, rel=1e-9)


FACET_B = [0, 0, 1, 1]  # set B: facet a a d d


@pytest.mark.parametrize(("name", "label", "predicted", "expected"), [
    ("DI", "FFFF", "FFTF", INF),
    ("DI", "FFFF", "FFFF", 0.0),
    ("DI", "FFFF", "TFFF", 0.0),
    ("DCA", "TFTF", "FFTF", INF),
    ("DCA", "TFTF", "FFFF", 0.0),
    ("DCR", "FTFT", "TTTT", 0.0),
    ("DCR", "FTFT", "TTFT", -INF),
    ("TE", "TFTF", "FTFF", INF),
    ("TE", "TFTF", "FFFF", 0.0),
    ("TE", "TFTF", "TFTF", 0.0),
    ("RD", "TFFF", "TFTF", 1.0),
    ("SD", "TTFT", "TFTF", 0.0),
    ("DAR", "TFTF", "TFFF", 1.0),
    ("DRR", "TFTF", "FFTT", -0.5),
])
def test_set_b_edge_cases(name, label, predicted, expected):
    split = split_of(FACET_B, [c == "T" for c in label], [c == "T" for c in predicted])
    assert compute(name, split) == expected


def test_both_infinite_ratios_give_int_zero_for_dca_and_dcr():
    """smclarify sets DCA/DCR to the int 0 there (JSON ``0``), TE to 0.0."""
    dca = compute("DCA", split_of(FACET_B, [1, 0, 1, 0], [0, 0, 0, 0]))
    dcr = compute("DCR", split_of(FACET_B, [0, 1, 0, 1], [1, 1, 1, 1]))
    te = compute("TE", split_of(FACET_B, [1, 0, 1, 0], [0, 0, 0, 0]))
    assert (type(dca), type(dcr), type(te)) == (int, int, float)


@pytest.mark.parametrize(("label", "group", "expected"), [
    ("TFTF", [0, 0, 1, 1], None),  # d empty -> 0.0 (checked below with an all-a facet)
    ("TFFF", [7, 7, 7, 7], 0.6666666666666666),
])
def test_cddl_edge_cases(label, group, expected):
    labels = [c == "T" for c in label]
    if expected is None:
        assert compute("CDDL", split_of([0, 0, 0, 0], labels, group=group)) == 0.0
    else:
        assert compute("CDDL", split_of(FACET_B, labels, group=group)) == approx(expected)


@pytest.mark.parametrize(("label", "message"), [
    ([0, 0, 0, 0], "No positive labels in set"), ([1, 1, 1, 1], "No negative labels in set")])
def test_cddl_errors(label, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        compute("CDDL", split_of(FACET_B, label, group=[0, 0, 1, 1]))
    with pytest.raises(ValueError, match="^Group variable is empty or not provided$"):
        metrics.CDDL(None)


def test_cdd_ignores_rows_without_group_but_counts_them_globally():
    """NaN groups weigh 0; the global positive/negative checks still see their rows."""
    split = split_of([0, 1, 0, 1, 1], [1, 0, 0, 1, 1], group=[np.nan, np.nan, 2.0, 2.0, np.nan])
    groups = split.groups(0)
    assert groups.sizes.tolist() == [2, 0]  # group 2.0, then np.unique's trailing NaN slot
    assert (groups.n_positive, groups.n_negative) == (3, 2)


def test_empty_side_messages():
    empty_d = split_of([0, 0], [1, 0], [1, 0])
    empty_a = split_of([1, 1], [1, 0], [1, 0])
    expected_d = {
        "CI": "CI: facet set is empty. Check that x[facet] has non-zero length.",
        "DPL": "Facet set is empty.", "DPPL": "Facet set is empty.", "DI": "Facet set is empty",
        "DCA": "DCO: Facet set is empty", "DCR": "DCO: Facet set is empty", "DAR": "DLR: Facet set is empty",
        "DRR": "DLR: Facet set is empty", "RD": "DLA: Facet set is empty", "SD": "DLA: Facet set is empty",
        "AD": "Facet set is empty", "TE": "Facet set is empty",
    }
    expected_a = {
        "CI": "CI: negated facet set is empty. Check that x[~facet] has non-zero length.",
        "DPL": "Negative facet set is empty.", "DPPL": "Negative facet set is empty.",
        "DI": "Negated facet set is empty", "DCA": "DCO: Negated Facet set is empty",
        "DCR": "DCO: Negated Facet set is empty", "DAR": "DLR: Negated Facet set is empty",
        "DRR": "DLR: Negated Facet set is empty", "RD": "DLA: Negated Facet set is empty",
        "SD": "DLA: Negated Facet set is empty", "AD": "Negated Facet set is empty",
        "TE": "Negated Facet set is empty",
    }
    for split, expected in ((empty_d, expected_d), (empty_a, expected_a)):
        for name, message in expected.items():
            with pytest.raises(ValueError) as raised:
                compute(name, split)
            assert str(raised.value) == message, name


@pytest.mark.parametrize(("label", "predicted", "expected"), [
    ("TFT", "TFT", 0.0), ("FF", "TT", 0.0), ("TT", "FT", 0.5), ("FF", "TF", 0.055555555555555525),
    ("FTTF", "TFTF", 0.25), ("TTTT", "FFFT", 1.5), ("T" * 10, "F" * 9 + "T", 4.5),
])
def test_ge_table(label, predicted, expected):
    split = split_of([0] * len(label), [c == "T" for c in label], [c == "T" for c in predicted])
    assert compute("GE", split) == approx(expected)


def test_ge_errors():
    with pytest.raises(ValueError, match="^All predicted labels are false negatives. There should be at least one "
                                         "prediction that is not false negative.$"):
        compute("GE", split_of([0, 0], [1, 1], [0, 0]))
    with pytest.raises(ValueError, match="^dataset must be non-empty$"):
        metrics.GE(Confusion(0, 0, 0, 0))


def test_ge_matches_per_row_formula_on_large_counts():
    rng = np.random.default_rng(3)
    label, predicted = rng.random(100_003) < 0.3, rng.random(100_003) < 0.01
    benefit = pd.Series(predicted.astype(int) - label.astype(int) + 1)
    per_row = ((benefit / benefit.mean()) ** 2 - 1).sum() / (len(benefit) * 2)
    assert compute("GE", split_of([0] * len(label), label, predicted)) == approx(per_row)


@pytest.mark.parametrize(("name", "a", "d", "expected"), [
    ("SD", Confusion(tp=65, fp=10, fn=5, tn=20), Confusion(tp=20, fp=5, fn=7, tn=18), 0.11594202898550732),
    ("RD", Confusion(tp=65, fp=10, fn=5, tn=20), Confusion(tp=20, fp=5, fn=7, tn=18), 0.1878306878306879),
    ("AD", Confusion(tp=60, fp=10, fn=20, tn=10), Confusion(tp=40, fp=10, fn=40, tn=10), 0.2),
    ("TE", Confusion(tp=43, fp=6, fn=8, tn=43), Confusion(tp=21, fp=2, fn=5, tn=22), 1.1666666666666667),
    ("DAR", Confusion(tp=35, fp=35, fn=0, tn=0), Confusion(tp=40, fp=60, fn=0, tn=0), 0.1),
    ("DRR", Confusion(tp=0, fp=0, fn=20, tn=80), Confusion(tp=0, fp=0, fn=10, tn=40), 0.0),
    ("DCA", Confusion(tp=60, fp=0, fn=10, tn=30), Confusion(tp=20, fp=10, fn=0, tn=20), 0.5),
    ("DCA", Confusion(tp=50, fp=10, fn=0, tn=40), Confusion(tp=30, fp=0, fn=10, tn=10), -0.5),
    ("DCR", Confusion(tp=40, fp=0, fn=10, tn=50), Confusion(tp=10, fp=10, fn=0, tn=30), 0.5),
    ("DI", Confusion(tp=60, fp=0, fn=0, tn=40), Confusion(tp=50, fp=0, fn=0, tn=50), 0.8333333333333334),
    ("DPPL", Confusion(tp=60, fp=0, fn=0, tn=40), Confusion(tp=50, fp=0, fn=0, tn=50), 0.1),
])
def test_aws_documentation_examples(name, a, d, expected):
    assert getattr(metrics, name)(a, d) == approx(expected)


def test_aws_documentation_distribution_examples():
    a, d = np.array([20, 80]), np.array([70, 30])  # a 80 % positive, d 30 %
    expected = {"KL": 0.5341108087103075, "JS": 0.13250545091704782, "LP": 0.7071067811865475,
                "TVD": 0.5, "KS": 0.5}
    for name, value in expected.items():
        assert getattr(metrics, name)(a, d) == approx(value)
    assert metrics.KS([40, 40, 20], [20, 10, 70]) == approx(0.5)


def test_divide_rule():
    assert metrics.divide(0, 0) == 0.0
    assert metrics.divide(3, 0) == INF and metrics.divide(-3, 0) == -INF
    assert metrics.divide(1, 4) == 0.25
    assert not math.isnan(metrics.divide(0.0, 0.0))
