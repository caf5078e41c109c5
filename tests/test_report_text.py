"""Reports of text explanations (methods.shap.text_config): top tokens and records coloured by attribution.

The fixtures are written here by hand in Clarify's layout: an analysis.json with
``global_top_shap_text`` (spec 4.3) and an ``explanations_shap/out.jsonl`` (spec 4.5) of product reviews
in English, German and Japanese, one with HTML-like characters, one with a double space, and a
categorical feature beside the text. Attributions come from a small word lexicon, so the records the
report must choose are known in advance.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from analyzer.report import JobSummary, write_reports
from analyzer.report.views import (
    MAX_UNITS_SHOWN,
    TextHighlight,
    TextRecord,
    choose_text_records,
    format_value,
    top_tokens_chart,
    top_tokens_table,
)

LEXICON = {"love": 0.09, "great": 0.05, "perfect": 0.07, "boring": -0.06, "terrible": -0.1, "broken": -0.08,
           "refund": -0.05, "großartig": 0.06, "schrecklich": -0.07, "素晴らしい": 0.13, "最悪": -0.14}
CATEGORY = {"Books": 0.01, "Digital_Software": -0.02, "Toys": 0.004}

# (text, category, Japanese units or None). Row numbers below count from 0, in this order.
REVIEWS = [
    ("Great story, I love the characters.", "Books", None),
    ("The app is boring and the update left it broken.", "Digital_Software", None),
    ("Das Buch ist  wirklich großartig, aber der Versand war schrecklich schrecklich.", "Books", None),
    ("この本は素晴らしいです。", "Books", ["この", "本", "は", "素晴らしい", "です", "。"]),
    ("It works.", "Toys", None),
    ('I <3 this & the "<script>alert(1)</script>" joke: love love, perfect!', "Books", None),
    ("Terrible. Broken on arrival, I want a refund.", "Toys", None),
    ("最悪の製品でした。", "Toys", ["最悪", "の", "製品", "でし", "た", "。"]),
    ("Perfect gift, great price.", "Digital_Software", None),
    ("Boring.\nReally boring and terrible.", "Books", None),
    ("Okay I guess.", "Books", None),
]
TEXT_FEATURE = "review_body"


def _units(text: str, japanese: list[str] | None) -> list[tuple[str, int]]:
    if japanese is None:
        return [(m.group(), m.start()) for m in re.finditer(r"\w+|[^\w\s]+", text)]
    units, start = [], 0
    for unit in japanese:
        start = text.index(unit, start)
        units.append((unit, start))
        start += len(unit)
    return units


def _value(unit: str, position: int) -> float:
    # Unknown units get a small value whose sign alternates, so every record has both colours.
    return LEXICON.get(unit.lower(), (0.002 + 0.0005 * (position % 3)) * (-1) ** position)


def local_records(labels: int = 1, join: bool = False) -> list[dict]:
    """out.jsonl lines for REVIEWS: one attribution per label (label 1 is the opposite of label 0)."""
    lines = []
    for row, (text, category, japanese) in enumerate(REVIEWS):
        def attribution(value: float) -> list[float]:
            return [value, -value][:labels]

        units = [{"attribution": attribution(_value(unit, i)), "description": {"partial_text": unit, "start_idx": start}}
                 for i, (unit, start) in enumerate(_units(text, japanese))]
        line = {"explanations": [
            {"feature_name": TEXT_FEATURE, "data_type": "free_text", "attributions": units},
            {"feature_name": "product_category", "data_type": "categorical",
             "attributions": [{"attribution": attribution(CATEGORY[category])}]}]}
        if join:
            line["join_source_value"] = f"id-{row}"
        lines.append(line)
    return lines


def text_total(line: dict) -> float:
    return sum(u["attribution"][0] for u in line["explanations"][0]["attributions"])


def text_analysis() -> dict:
    """analysis.json of a text job: review_body (text) and product_category, one output."""
    tokens: dict[str, list[float]] = {}
    for line in local_records():
        for unit in line["explanations"][0]["attributions"]:
            tokens.setdefault(unit["description"]["partial_text"], []).append(abs(unit["attribution"][0]))
    top = sorted(((t, sum(v) / len(v)) for t, v in tokens.items()), key=lambda kv: -kv[1])[:25]
    return {"version": "1.0", "explanations": {"kernel_shap": {"label0": {
        "global_shap_values": {TEXT_FEATURE: 0.2841, "product_category": 0.0113},
        "expected_value": 0.4812,
        "global_top_shap_text": {TEXT_FEATURE: dict(top)},
    }}}}


def summary() -> JobSummary:
    return JobSummary(dataset_source="s3://example-bucket/reviews/train.jsonl", dataset_type="application/jsonlines",
                      n_rows=len(REVIEWS), label="label", label_values_or_threshold="1", facets=["product_category"],
                      methods=["shap"], lucent_version="0.1.0", started_at="2024-05-01T12:30:00Z")


def write_job(folder: Path, analysis: dict, lines: list[dict] | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.json").write_text(json.dumps(analysis, indent=4, ensure_ascii=False), encoding="utf-8")
    if lines is not None:
        (folder / "explanations_shap").mkdir()
        (folder / "explanations_shap" / "out.jsonl").write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return write_reports(analysis, summary(), folder, name="report", title="Review sentiment")


@pytest.fixture(scope="module")
def text_job(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    write_job(folder, text_analysis(), local_records())
    return folder


class _Page(HTMLParser):
    """Headings, token-table rows, and each text example's rebuilt texts and unit spans."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.token_rows: list[list[str]] = []
        self.texts: list[str] = []  # the content of each div.text, as displayed
        self.units: list[list[tuple[str, str, str]]] = []  # per div.text: (text, title, style)
        self._stack: list[str] = []
        self._heading: list[str] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._unit: list | None = None
        self._in_tokens = False
        self._text_depth: int | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._stack.append(tag)
        if re.fullmatch(r"h[1-4]", tag):
            self._heading = []
        if tag == "table" and attrs.get("class") == "tokens":
            self._in_tokens = True
        if self._in_tokens and tag == "tr":
            self._row = []
        if self._row is not None and tag == "td":
            self._cell = []
        if tag == "div" and attrs.get("class") == "text":
            self._text_depth = len(self._stack)
            self.texts.append("")
            self.units.append([])
        if self._text_depth is not None and tag == "span" and attrs.get("class") == "unit":
            self._unit = [[], attrs.get("title", ""), attrs.get("style", "")]

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-4]", tag) and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row:
            self.token_rows.append(self._row)
            self._row = None
        if tag == "table":
            self._in_tokens = False
        if tag == "span" and self._unit is not None:
            self.units[-1].append(("".join(self._unit[0]), self._unit[1], self._unit[2]))
            self._unit = None
        if tag == "div" and self._text_depth == len(self._stack):
            self._text_depth = None
        self._stack.pop()

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._unit is not None:
            self._unit[0].append(data)
        if self._text_depth is not None:
            self.texts[-1] += data


def page(folder: Path) -> tuple[str, _Page]:
    source = (folder / "report.html").read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(source)
    parsed.close()
    return source, parsed


def expected_choice(lines: list[dict]) -> tuple[list[int], list[int]]:
    """Brute force: rows whose text total is largest (above 0) and most negative, 3 each, ties to earlier rows."""
    totals = [(text_total(line), row) for row, line in enumerate(lines)]
    raises = [row for total, row in sorted((t for t in totals if t[0] > 0), key=lambda t: (-t[0], t[1]))][:3]
    lowers = [row for total, row in sorted((t for t in totals if t[0] < 0), key=lambda t: (t[0], t[1]))][:3]
    return raises, lowers


# ---------------------------------------------------------------------------------------------
# Which records


def test_fixture_makes_the_expected_records_stand_out() -> None:
    # Guards the fixture itself: the escaping, German and Japanese records must be among those shown.
    raises, lowers = expected_choice(local_records())
    assert raises == [5, 0, 3]
    assert lowers == [6, 9, 7]
    assert 2 not in raises + lowers  # the German record is shown on its own below


def test_chosen_records_are_the_strongest_in_each_direction(text_job: Path) -> None:
    lines = local_records()
    choice = choose_text_records(str(text_job / "explanations_shap" / "out.jsonl"))
    raises, lowers = expected_choice(lines)
    assert [r.row for r in choice.raises] == raises
    assert [r.row for r in choice.lowers] == lowers
    assert choice.records_read == len(REVIEWS)
    assert [r.total for r in choice.raises] == pytest.approx([text_total(lines[i]) for i in raises])
    assert all(r.total < 0 for r in choice.lowers)
    _, parsed = page(text_job)
    shown = [h for h in parsed.headings if h.startswith("Row ")]
    assert [int(re.match(r"Row (\d+)", h).group(1)) - 1 for h in shown] == raises + lowers
    assert shown[0] == f"Row 6: text total +{format_value(text_total(lines[5]))}"
    assert shown[3].startswith("Row 7: text total -0.")


def test_choice_ties_go_to_the_earlier_record_and_zero_totals_are_not_shown(tmp_path: Path) -> None:
    def line(values: list[float]) -> dict:
        units = [{"attribution": [v], "description": {"partial_text": f"w{i}", "start_idx": 3 * i}}
                 for i, v in enumerate(values)]
        return {"explanations": [{"feature_name": "t", "data_type": "free_text", "attributions": units}]}

    path = tmp_path / "out.jsonl"
    values = [[0.1], [0.2, -0.1], [0.1], [0.0], [], [0.3], [0.1], [-0.2], [-0.05]]
    path.write_text("\n".join(json.dumps(line(v)) for v in values) + "\n\n", encoding="utf-8")
    choice = choose_text_records(str(path))
    assert [r.row for r in choice.raises] == [5, 0, 1]  # 0.3, then the ties at 0.1 in file order
    assert [r.row for r in choice.lowers] == [7, 8]
    assert choice.records_read == 9  # the blank line at the end is not a record


def test_choice_streams_a_large_file(tmp_path: Path) -> None:
    # 4,000 records of 120 units (about 10 MB): the choice must not hold the file in memory.
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for row in range(4000):
            value = ((row * 7919) % 4001 - 2000) / 1e5
            units = [{"attribution": [value / 120], "description": {"partial_text": "word", "start_idx": 5 * i}}
                     for i in range(120)]
            handle.write(json.dumps({"explanations": [
                {"feature_name": "t", "data_type": "free_text", "attributions": units}]}) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        choice = choose_text_records(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 8_000_000 and peak < size / 10
    totals = [((row * 7919) % 4001 - 2000) / 1e5 for row in range(4000)]
    assert [r.row for r in choice.raises] == sorted(range(4000), key=lambda r: -totals[r])[:3]
    assert [r.row for r in choice.lowers] == sorted(range(4000), key=lambda r: totals[r])[:3]


# ---------------------------------------------------------------------------------------------
# Top tokens


def test_top_tokens_table_and_chart_in_descending_order(text_job: Path) -> None:
    analysis = text_analysis()
    expected = list(analysis["explanations"]["kernel_shap"]["label0"]["global_top_shap_text"][TEXT_FEATURE].items())
    _, parsed = page(text_job)
    assert "Top tokens of review_body" in parsed.headings
    assert [row[1] for row in parsed.token_rows] == [token for token, _ in expected]
    assert [row[2] for row in parsed.token_rows] == [format_value(v) for _, v in expected]
    assert [row[0] for row in parsed.token_rows] == [str(i) for i in range(1, len(expected) + 1)]
    assert parsed.token_rows[0][1] == "最悪" and "素晴らしい" in [row[1] for row in parsed.token_rows]
    # Unsorted input is sorted by value, largest first; ties keep the file's order.
    shuffled = copy.deepcopy(analysis)
    shuffled["explanations"]["kernel_shap"]["label0"]["global_top_shap_text"][TEXT_FEATURE] = {
        "schön": 0.01, "schrecklich": 0.07, "<b>": 0.03, "gut": 0.01, "最悪": 0.075}
    frame = top_tokens_table(shuffled, "label0", TEXT_FEATURE)
    assert frame["Token"].tolist() == ["最悪", "schrecklich", "<b>", "schön", "gut"]
    assert frame.index.tolist() == [1, 2, 3, 4, 5]


def test_signed_top_tokens_keep_the_order_of_their_values() -> None:
    """With agg_method median the values keep their sign; the job keeps the max_top_tokens largest values
    (docs/text-explanations.md), and the report shows them in that order: negatives after every positive,
    the strongest lowering unit last, not ranked by magnitude."""
    analysis = text_analysis()
    analysis["explanations"]["kernel_shap"]["label0"]["global_top_shap_text"][TEXT_FEATURE] = {
        "awful": -0.34, "love": 0.31, "okay": 0.0, "bad": -0.23, "great": 0.25}
    order = ["love", "great", "okay", "bad", "awful"]
    assert top_tokens_table(analysis, "label0", TEXT_FEATURE)["Token"].tolist() == order
    chart = top_tokens_chart(analysis, "label0", TEXT_FEATURE)
    ticks = sorted(chart.axes[0].get_yticklabels(), key=lambda tick: -tick.get_position()[1])  # top first
    assert [tick.get_text() for tick in ticks] == order


def test_text_sections_are_placed_and_named(text_job: Path) -> None:
    _, parsed = page(text_job)
    headings = parsed.headings
    shap = headings.index("What drives the model's output (SHAP)")
    tokens = headings.index("Top tokens of review_body")
    examples = headings.index("How the words of single records move the output (text)")
    assert shap < tokens < examples < headings.index("Texts that raise the output most") < headings.index(
        "Texts that lower the output most")


# ---------------------------------------------------------------------------------------------
# Records coloured by attribution


def test_text_is_escaped_and_keeps_its_spacing(text_job: Path) -> None:
    source, parsed = page(text_job)
    # Units of 'I <3 this & the "<script>alert(1)</script>" joke' arrive escaped, one span each.
    assert "<script" not in source.lower()
    assert '>&lt;</span><span class="unit"' in source and '>&amp;</span>' in source
    assert '>&quot;&lt;</span>' in source and '>)&lt;/</span>' in source
    shown = {text for text in parsed.texts}
    raises, lowers = expected_choice(local_records())
    for row in raises + lowers:
        text = REVIEWS[row][0]
        # The gaps are rebuilt from the offsets: same widths, line breaks as spaces, no gap inside Japanese.
        assert re.sub(r"\s", " ", text) in shown, text
    assert "最悪の製品でした。" in shown
    assert "Boring.  Really boring and terrible." not in shown and "Boring. Really boring and terrible." in shown


def test_double_spaces_and_german_text_survive(tmp_path: Path) -> None:
    # The German record alone (its text total is negative, so it is the only one shown).
    lines = [local_records()[2]]
    write_job(tmp_path, text_analysis(), lines)
    _, parsed = page(tmp_path)
    assert parsed.texts == ["Das Buch ist  wirklich großartig, aber der Versand war schrecklich schrecklich."]
    units = parsed.units[0]
    assert [u[0] for u in units][:6] == ["Das", "Buch", "ist", "wirklich", "großartig", ","]
    assert "No record's text raises output 'label0'." in (tmp_path / "report.html").read_text(encoding="utf-8")


def _rgba(style: str) -> tuple[tuple[int, int, int], float] | None:
    match = re.search(r"rgba\((\d+),(\d+),(\d+),([\d.]+)\)", style)
    if not match:
        return None
    return tuple(int(match.group(i)) for i in (1, 2, 3)), float(match.group(4))


def test_colours_follow_the_sign_and_the_largest_unit_of_the_record(text_job: Path) -> None:
    _, parsed = page(text_job)
    green, red = (0, 158, 115), (214, 39, 40)
    raises, lowers = expected_choice(local_records())
    lines = local_records()
    for units, row in zip(parsed.units, raises + lowers, strict=True):
        values = [u["attribution"][0] for u in lines[row]["explanations"][0]["attributions"]]
        largest = max(abs(v) for v in values)
        assert [u[0] for u in units] == [u["description"]["partial_text"]
                                         for u in lines[row]["explanations"][0]["attributions"]]
        for (text, title, style), value in zip(units, values, strict=True):
            assert title == ("+" if value > 0 else "") + format_value(value)  # the value in the tooltip
            colour, alpha = _rgba(style)
            assert colour == (green if value > 0 else red), (text, value)
            assert alpha == pytest.approx(0.75 * abs(value) / largest, abs=1e-3)
        assert max(_rgba(style)[1] for _, _, style in units) == pytest.approx(0.75)
    # The escaping record: "love" raises strongly, "<script>" barely moves it.
    first = dict((text, _rgba(style)) for text, _, style in parsed.units[0])
    assert first["love"] == (green, 0.75)
    assert first['"<'][0] in (green, red) and first['"<'][1] < 0.1


class _ColouredText(HTMLParser):
    """Each div.text of a page as (character, background colour) pairs, the colour None where the character has
    none: the colour comes from the span's own style or from its class's rule in the page's style sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[list[tuple[str, str | None]]] = []
        self.rules: dict[str, str] = {}
        self._style: list[str] | None = None
        self._depth = 0  # elements open inside the current div.text (0: not inside one)
        self._colours: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "style":
            self._style = []
        if self._depth:
            self._depth += 1
            own = re.search(r"background-color:\s*([^;]+)", attrs.get("style") or "")
            classes = [self.rules[c] for c in (attrs.get("class") or "").split() if c in self.rules]
            self._colours.append(own.group(1).strip() if own else classes[-1] if classes else self._colours[-1])
        elif tag == "div" and attrs.get("class") == "text":
            self._depth = 1
            self._colours = [None]
            self.texts.append([])

    def handle_endtag(self, tag):
        if tag == "style" and self._style is not None:
            self.rules = dict(re.findall(r"\.([\w-]+)\s*\{\s*background-color:\s*([^;}]+?)\s*\}", "".join(self._style)))
            self._style = None
        if self._depth:
            self._depth -= 1
            self._colours.pop()

    def handle_data(self, data):
        if self._style is not None:
            self._style.append(data)
        if self._depth:
            self.texts[-1].extend((char, self._colours[-1]) for char in data)


def coloured_texts(markup: str) -> list[list[tuple[str, str | None]]]:
    parser = _ColouredText()
    parser.feed(markup)
    parser.close()
    return parser.texts


def test_the_pdf_page_shows_every_unit_with_its_colour(text_job: Path) -> None:
    """The PDF is laid out from the page ``render_html(for_print=True)`` makes (colours by class, no tooltips):
    every character of every record must be there, in order, with the colour its unit's value gives it, no
    unit lost, merged with a neighbour of another colour, or coloured where the HTML page does not colour."""
    from analyzer.report.content import build_document
    from analyzer.report.html import render_html

    doc = build_document(text_analysis(), summary(), "Review sentiment",
                         local_explanations=text_job / "explanations_shap" / "out.jsonl")
    try:
        screen, printed = render_html(doc), render_html(doc, for_print=True)
    finally:
        doc.close()
    assert screen == (text_job / "report.html").read_text(encoding="utf-8")  # the HTML report is unchanged
    expected = coloured_texts(screen)
    shown = coloured_texts(printed)
    assert len(shown) == len(expected) == 6
    assert shown == expected
    # And against the records themselves: the characters of each unit carry the colour of its value.
    lines = local_records()
    raises, lowers = expected_choice(lines)
    for text, row in zip(shown, raises + lowers, strict=True):
        units = lines[row]["explanations"][0]["attributions"]
        largest = max(abs(u["attribution"][0]) for u in units)
        assert "".join(char for char, _ in text) == re.sub(r"\s", " ", REVIEWS[row][0])
        position = 0
        for unit in units:
            word, value = unit["description"]["partial_text"], unit["attribution"][0]
            position = "".join(char for char, _ in text).index(word, position)
            colours = {colour for _, colour in text[position:position + len(word)]}
            assert len(colours) == 1, word
            colour, alpha = _rgba(colours.pop())
            assert colour == ((0, 158, 115) if value > 0 else (214, 39, 40))
            assert alpha == pytest.approx(0.75 * abs(value) / largest, abs=1e-3)
            position += len(word)
        gaps = [colour for char, colour in text if char == " "]
        assert gaps == [None] * len(gaps)  # the spaces between units are never coloured
    assert 'title="' not in printed.split('<div class="text-example">', 1)[1]  # no tooltips on paper


def test_each_example_has_a_legend_its_largest_units_and_the_other_features(text_job: Path) -> None:
    source, _ = page(text_job)
    examples = re.findall(r'<div class="text-example">.*?</div></div>(?=\n|$)', source, re.S)
    assert len(examples) == 6
    first = examples[0]
    assert "raises</span>" in first and "lowers</span>" in first and "output 'label0'" in first
    assert "Largest units: “love” +0.0900 · “love” +0.0900 · “perfect” +0.0700" in first
    assert "Other features: product_category +0.0100" in first
    assert "Other features: product_category -0.0200" not in first


def test_join_source_values_name_the_records(tmp_path: Path) -> None:
    write_job(tmp_path, text_analysis(), local_records(join=True))
    _, parsed = page(tmp_path)
    assert [h for h in parsed.headings if h.startswith("Row ")][0].startswith("Row 6 (id-5): text total +")


def test_two_outputs_show_every_value_in_the_tooltip_and_colour_by_the_first() -> None:
    line = local_records(labels=2)[0]
    view = TextHighlight(TextRecord(0, text_total(line), line), ["negative", "positive"])
    markup = view._repr_html_()
    assert 'title="negative: +0.0900 · positive: -0.0900">love</span>' in markup
    assert "output 'negative'" in markup
    assert re.search(r'rgba\(0,158,115,0\.750\)" title="negative: \+0\.0900', markup)
    assert repr(view).splitlines()[:2] == ["Row 1: text total +0.1350 for output 'negative'",
                                           "review_body: Great story, I love the characters."]


def test_long_texts_are_cut_with_a_count() -> None:
    units = [{"attribution": [0.01 * (-1) ** i], "description": {"partial_text": f"w{i}", "start_idx": 6 * i}}
             for i in range(MAX_UNITS_SHOWN + 25)]
    line = {"explanations": [{"feature_name": "t", "data_type": "free_text", "attributions": units}]}
    markup = TextHighlight(TextRecord(0, 0.0, line), ["label0"])._repr_html_()
    assert markup.count('class="unit"') == MAX_UNITS_SHOWN and "… (25 more units not shown)" in markup


def test_without_out_jsonl_the_section_says_why(tmp_path: Path) -> None:
    paths = write_job(tmp_path, text_analysis(), None)
    assert sorted(p.name for p in paths) == ["report.html", "report.ipynb", "report.pdf"]
    source, parsed = page(tmp_path)
    assert "How the words of single records move the output (text)" in parsed.headings
    assert "were not saved (methods.shap.save_local_shap_values is false)" in source
    assert "Top tokens of review_body" in parsed.headings and not parsed.texts


def test_a_damaged_out_jsonl_costs_only_the_examples(tmp_path: Path) -> None:
    write_job(tmp_path, text_analysis(), local_records()[:2])
    with (tmp_path / "explanations_shap" / "out.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    write_reports(text_analysis(), summary(), tmp_path, name="report")
    source, parsed = page(tmp_path)
    assert "explanations_shap/out.jsonl could not be read: Expecting property name" in source
    assert "Top tokens of review_body" in parsed.headings


def test_html_parses_strictly_and_stays_self_contained(text_job: Path) -> None:
    html5lib = pytest.importorskip("html5lib")
    source = (text_job / "report.html").read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True).parse(source)
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*https?://", source, re.I)


# ---------------------------------------------------------------------------------------------
# Notebook and PDF


def test_notebook_executes_and_recomputes_the_examples(text_job: Path, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    folder = tmp_path / "copy"  # out.jsonl must be found by its path relative to the notebook
    shutil.copytree(text_job, folder)
    notebook = nbformat.read(folder / "report.ipynb", as_version=4)
    nbformat.validate(notebook)
    stored = copy.deepcopy(notebook)
    examples = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("text_example(")]
    assert [c.source for c in examples[:2]] == ["text_example(analysis, LOCAL_SHAP_FILE, 'raises', 0)",
                                                "text_example(analysis, LOCAL_SHAP_FILE, 'raises', 1)"]
    assert len(examples) == 6
    assert any(c.source.startswith("top_tokens_chart(") for c in notebook.cells if c.cell_type == "code")
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    for before, after in zip(stored.cells, notebook.cells, strict=True):
        if after.cell_type != "code":
            continue
        assert not [o for o in after.outputs if o.output_type == "error"], after.source
        if after.source.startswith(("text_example(", "top_tokens_table(")):
            assert after.outputs[0].data["text/html"] == before.outputs[0].data["text/html"]
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    # Document text reaches markdown escaped (user data is in it): ":" is written "\\:", "+" "\\+".
    assert "#### Row 6\\: text total \\+" in markdown and "### Texts that lower the output most" in markdown


PDFTOPPM = shutil.which("pdftoppm")


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (Debian poppler-utils) is not installed")
def test_pdf_renders_every_page(text_job: Path, tmp_path: Path) -> None:
    assert (text_job / "report.pdf").read_bytes().startswith(b"%PDF-")
    subprocess.run([PDFTOPPM, "-r", "30", "-gray", str(text_job / "report.pdf"), str(tmp_path / "page")],
                   check=True, timeout=60)
    pages = sorted(tmp_path.glob("page-*.pgm"))
    assert 4 <= len(pages) <= 8
    text = subprocess.run(["pdftotext", str(text_job / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout if shutil.which("pdftotext") else ""
    if text:
        assert "Texts that raise the output most" in text and "最悪の製品でした" in text.replace("\n", "")
