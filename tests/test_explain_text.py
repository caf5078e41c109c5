"""Text Kernel SHAP: exact against brute-force Shapley values over text units, offsets, languages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analyzer.explain.text_shap import SOLVERS_KEPT, TextKernelShap, player_counts
from analyzer.explain.text_units import (
    TextUnit,
    language_code,
    masked_texts,
    rough_unit_count,
    split_text,
    split_texts,
)

WEIGHTS = {"love": 1.0, "great": 0.8, "bad": -1.2, "not": -0.3, "dress": 0.1, "fits": 0.4}


def word_model(rows: np.ndarray) -> np.ndarray:
    """Two outputs from a bag of words with an interaction ("not" flips "great") and a category effect."""
    out = np.zeros((len(rows), 2))
    for i, row in enumerate(rows):
        words = str(row[0]).lower().replace("!", " ").replace(".", " ").split()
        score = sum(WEIGHTS.get(w, 0.0) for w in words)
        if "not" in words and "great" in words:
            score -= 2.0
        if len(row) > 1:
            score += {"A": 0.5, "B": -0.25}.get(row[1], 0.0)
        p = 1 / (1 + math.exp(-score))
        out[i] = p, 1 - p
    return out


def brute_force(model, record, units, text_col, baseline):
    """Shapley values by enumeration over all coalitions of (columns except text) + units."""
    n_cols = len(record)
    players = [("col", j) for j in range(n_cols) if j != text_col]
    players[text_col:text_col] = [("unit", u) for u in range(len(units))]  # text units at the column's place
    m = len(players)

    def value(coalition):
        keep_units = np.array([[("unit", u) in coalition for u in range(len(units))]])
        rows = []
        for b in baseline:
            row = [record[j] if ("col", j) in coalition else b[j] for j in range(n_cols)]
            row[text_col] = masked_texts(record[text_col], units, keep_units, b[text_col])[0]
            rows.append(row)
        return model(np.array(rows, dtype=object)).mean(axis=0)

    values = {frozenset(c): value(set(c)) for r in range(m + 1) for c in itertools.combinations(players, r)}
    phi = np.zeros((m, len(values[frozenset()])))
    for i, p in enumerate(players):
        others = [q for q in players if q != p]
        for r in range(m):
            w = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
            for c in itertools.combinations(others, r):
                phi[i] += w * (values[frozenset(c) | {p}] - values[frozenset(c)])
    return phi, values[frozenset()]


@pytest.mark.parametrize("granularity", ["token", "sentence"])
@pytest.mark.parametrize("with_category", [False, True])
def test_exact_mode_equals_brute_force(granularity, with_category):
    texts = ["I love this dress! It is not great. Bad fit.", "Great dress. It fits! Not bad at all.",
             "Love it."]
    if granularity == "token":
        texts = ["I love this great dress", "not great but fits", "bad"]
    records = np.array([[t, c] for t, c in zip(texts, ["A", "B", "A"], strict=True)], dtype=object)
    baseline = np.array([["<PAD>", "B"], ["", "A"]], dtype=object)
    if not with_category:
        records, baseline = records[:, :1], baseline[:, :1]
    units = [[split_text(t, "en", granularity)] for t in texts]
    explainer = TextKernelShap(word_model, baseline, [0], seed=0)
    result = explainer.explain(records, units)
    assert list(np.diff(result.offsets)) == list(player_counts(units, records.shape[1]))
    for i in range(len(records)):
        expected, empty = brute_force(word_model, records[i], units[i][0], 0, baseline)
        values, stderr = result.record(i)
        np.testing.assert_allclose(values, expected, atol=1e-10)
        np.testing.assert_allclose(result.reference[i], empty, atol=1e-12)
        assert np.all(stderr == 0)
        np.testing.assert_allclose(values.sum(axis=0), result.prediction[i] - result.reference[i], atol=1e-12)
    np.testing.assert_allclose(result.expected_value, word_model(baseline).mean(axis=0))


def test_a_model_that_reads_one_word_gives_it_all_the_attribution():
    def one_word(rows):
        return np.array([1.0 if "excellent" in str(r[0]).split() else 0.0 for r in rows])

    text = "the food was excellent and the service was slow but friendly overall"
    units = [[split_text(text, "english", "token")]]
    result = TextKernelShap(one_word, np.array([["<PAD>"]], dtype=object), [0], seed=1).explain(
        np.array([[text]], dtype=object), units)
    values, _ = result.record(0)
    hit = [u.text for u in units[0][0]].index("excellent")
    assert values[hit, 0] == pytest.approx(1.0, abs=1e-12)
    assert np.abs(np.delete(values[:, 0], hit)).max() < 1e-12


def test_sampled_mode_is_efficient_and_shard_independent():
    rng = np.random.default_rng(0)
    vocab = list(WEIGHTS) + ["the", "a", "it", "was", "very"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(14, 18))) for _ in range(6)]
    records = np.array([[t] for t in texts], dtype=object)
    units = [[split_text(t, "en", "token")] for t in texts]
    explainer = TextKernelShap(word_model, np.array([["<PAD>"]], dtype=object), [0], num_samples=300, seed=3)
    whole = explainer.explain(records, units)
    assert any(not explainer.solver(int(m)).design.exact for m in player_counts(units, 1))
    for i in range(len(records)):
        values, stderr = whole.record(i)
        np.testing.assert_allclose(values.sum(axis=0), whole.prediction[i] - whole.reference[i], atol=1e-10)
        assert np.all(stderr > 0)
    split = [TextKernelShap(word_model, np.array([["<PAD>"]], dtype=object), [0], num_samples=300, seed=3)
             .explain(records[a:b], units[a:b]) for a, b in ((0, 2), (2, 6))]
    joined = type(whole).concat(split)
    np.testing.assert_array_equal(joined.values, whole.values)
    np.testing.assert_array_equal(joined.offsets, whole.offsets)


def test_designs_are_reused_and_only_the_most_recent_are_kept():
    explainer = TextKernelShap(word_model, np.array([["<PAD>"]], dtype=object), [0], num_samples=64, seed=3)
    first = explainer.solver(5)
    assert explainer.solver(5) is first  # one design per number of players while it is in use
    for m in range(6, 6 + 2 * SOLVERS_KEPT):
        explainer.solver(m)
    assert len(explainer._solvers) == SOLVERS_KEPT  # a job over documents of every length stays bounded
    rebuilt = explainer.solver(5)
    assert rebuilt is not first
    np.testing.assert_array_equal(rebuilt.design.masks, first.design.masks)  # the same seed, the same design


@pytest.mark.parametrize("language, text, tokens, sentences", [
    ("english", "I love it. Great fit!", ["I", "love", "it", ".", "Great", "fit", "!"], 2),
    ("de", "Das Kleid ist schön. Ich liebe es!", ["Das", "Kleid", "ist", "schön", ".", "Ich", "liebe", "es", "!"], 2),
    ("Japanese", "私は猫が好きです。とても可愛い。", ["私", "は", "猫", "が", "好き", "です", "。", "とても", "可愛い", "。"], 2),
    ("zh", "我爱这条裙子。很好看！", list("我爱这条裙子。很好看！"), 2),
    ("arabic", "أحب هذا الفستان. إنه جميل!", ["أحب", "هذا", "الفستان", ".", "إنه", "جميل", "!"], 2),
])
def test_languages_tokens_sentences_and_offsets(language, text, tokens, sentences):
    for granularity in ("token", "sentence", "paragraph"):
        units = split_text(text, language, granularity)
        assert all(text[u.start:u.end] == u.text for u in units)
    assert [u.text for u in split_text(text, language, "token")] == tokens
    assert len(split_text(text, language, "sentence")) == sentences


def test_paragraphs_split_on_blank_lines_with_offsets():
    text = "  First line\nstill first.\n\n \t\nSecond one.  \n\n\nThird"
    units = split_text(text, "en", "paragraph")
    assert [u.text for u in units] == ["First line\nstill first.", "Second one.", "Third"]
    assert all(text[u.start:u.end] == u.text for u in units)


def test_every_language_of_the_contract_tokenizes():
    from analyzer.config.schema import LANGUAGES

    codes = [code for _, code in LANGUAGES]
    assert len(codes) == 63
    for name, code in LANGUAGES:
        assert language_code(name.upper()) == code
        units = split_texts(["Hello world. 123 ok!"], code, "token")[0]
        assert [u.text for u in units][:1] in (["Hello"], ["H"])


def test_masked_texts_keep_spacing():
    text = " a  bb\tccc "
    units = split_text(text, "en", "token")
    keep = np.array([[True, False, True], [False, True, False], [True, True, True]])
    assert masked_texts(text, units, keep, "<PAD>") == [" a  <PAD>\tccc ", " <PAD>  bb\t<PAD> ", text]
    assert masked_texts(text, units, keep, "") == [" a  ccc ", " bb\t", text]
    assert masked_texts(text, [TextUnit("a", 1)], np.array([[False]]), "[MASK]") == [" [MASK]  bb\tccc "]


def test_use_logit_attributes_log_odds_exactly():
    texts = ["I love this great dress", "not great but fits"]
    records = np.array([[t, "A"] for t in texts], dtype=object)
    baseline = np.array([["<PAD>", "B"]], dtype=object)
    units = [[split_text(t, "en", "token")] for t in texts]
    result = TextKernelShap(word_model, baseline, [0], seed=0, use_logit=True).explain(records, units)

    def log_odds(rows):
        p = word_model(rows)
        return np.log(p) - np.log1p(-p)

    for i in range(len(records)):
        expected, _ = brute_force(log_odds, records[i], units[i][0], 0, baseline)  # one baseline row: link commutes
        np.testing.assert_allclose(result.record(i)[0], expected, atol=1e-9)
    np.testing.assert_allclose(result.expected_value, log_odds(baseline)[0])


def test_nan_scores_name_the_records_they_came_from():
    from analyzer.explain import ModelOutputError

    def nan_on_bad(rows):
        scores = word_model(rows)
        scores[[("bad" in str(r[0]).split()) for r in rows]] = np.nan
        return scores

    texts = ["bad fit overall here today ok", "I love it", "so bad", "great"]  # 6, 3, 2 and 1 tokens
    units = [[split_text(t, "en", "token")] for t in texts]
    # Records are explained by ascending number of units: "so bad" (record 2) fails first.
    with pytest.raises(ModelOutputError, match=r"\(1 of 3 for record 2\)") as error:
        TextKernelShap(nan_on_bad, np.array([["<PAD>"]], dtype=object), [0], seed=0).explain(
            np.array([[t] for t in texts], dtype=object), units)
    assert error.value.records == [2]


def test_rough_unit_counts_are_close_to_spacys_without_spacy():
    """``rough_unit_count`` (a job's early guess of its work, before spaCy is loaded): paragraphs exactly,
    tokens and sentences of the demo's reviews within a token or so of spaCy's split; not text: 0."""
    from container.demo import make_review_dataset

    texts = make_review_dataset(200, seed=3, length=60)["review_body"].tolist()
    texts += ["First paragraph. Two sentences!\n\n  Second one?\n \nThird", "Don't stop-believing, e.g. now..."]
    for granularity, slack in (("paragraph", 0), ("sentence", 1), ("token", 4)):
        exact = np.array([len(units) for units in split_texts(texts, "en", granularity)])
        rough = np.array([rough_unit_count(text, granularity) for text in texts])
        assert np.abs(exact - rough).max() <= slack, (granularity, exact[:5], rough[:5])
        assert abs(exact.sum() - rough.sum()) <= 0.02 * exact.sum(), granularity
    assert [rough_unit_count(value, "token") for value in (None, 3.5, "", "  ")] == [0, 0, 0, 0]


def test_rough_unit_counts_of_hostile_texts_are_linear_and_right():
    """Texts read before anything checks them (``expected_shap_workers``): a megabyte of one punctuation
    mark, of sentence ends, of whitespace after a newline. A backtracking pattern ("[.!?]+\\s+\\S") took
    0.8 s for 8,000 "!" and grows with the square of the run: these would not finish."""
    n = 1_000_000
    assert [rough_unit_count("!" * n, g) for g in ("token", "sentence", "paragraph")] == [1, 1, 1]
    assert [rough_unit_count("x. " * n, g) for g in ("token", "sentence", "paragraph")] == [2 * n, n, 1]
    assert [rough_unit_count("\n" + " \t" * n, g) for g in ("token", "sentence", "paragraph")] == [0, 0, 0]
    assert rough_unit_count("?" * n + " " + "." * n + " end", "sentence") == 3
