"""The page the PDF is laid out from (``html.render_html(doc, for_print=True)``) shows what the HTML page shows.

It differs only in markup WeasyPrint lays out and draws faster: the texts coloured by SHAP value take their colours
from classes and carry no tooltips (tests/test_report_text.py checks every unit and colour), and the charts' SVG
has presentation attributes instead of style attributes (``pdf.svg_for_print``). Here: the PDF pages printed from
it are the pixels of those printed from the HTML page itself, for a report with every kind of chart and one with
coloured texts, and ``svg_for_print`` moves only what means the same either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from analyzer.report import pdf
from analyzer.report.content import build_document
from analyzer.report.document import Document, Figure
from analyzer.report.html import CSS, render_html
from analyzer.report.pdf import render_pdf, require_pdf_engine, svg_for_print
from tests.test_report import ALL_METHODS, full_analysis, job_summary
from tests.test_report_text import local_records, summary, text_analysis

PDFTOPPM = shutil.which("pdftoppm")


def test_style_attributes_become_presentation_attributes() -> None:
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg"><defs><style type="text/css">'
           b'*{stroke-linejoin: round; stroke-linecap: butt}</style></defs>\n'
           b'<path d="M 0 0 \nL 1 1 \n" style="fill: none; stroke: #e6e6e6; stroke-width: 0.8"/>\n'
           b'<path d="M 0 0" style="stroke: #222222; stroke-linecap: square"/>\n'
           b'<text style="font-size: 9px; font-family: \'DejaVu Sans\'; text-anchor: middle" x="1">'
           b'a style="fill: red" b</text>\n'
           b'<path fill="#000" style="fill: #fff"/>\n'
           b'<image style="image-rendering:crisp-edges;image-rendering:pixelated"/>\n'
           b'<path style="fill: #fff; fill: #000"/>\n'
           b'<path style=\'fill: url("#h1")\'/>\n</svg>')
    printed = svg_for_print(svg).split(b"\n")
    assert printed[0] == svg.split(b"\n")[0]  # the style sheet is left as it is
    assert printed[1:4] == [b'<path d="M 0 0 ', b"L 1 1 ", b'" fill="none" stroke="#e6e6e6" stroke-width="0.8"/>']
    # The style sheet sets stroke-linecap on every element: only a style attribute beats it, so it stays one.
    assert printed[4] == b'<path d="M 0 0" style="stroke: #222222; stroke-linecap: square"/>'
    # A text's own characters are never touched, only its tag.
    assert printed[5] == (b'<text font-size="9px" font-family="\'DejaVu Sans\'" text-anchor="middle" x="1">'
                          b'a style="fill: red" b</text>')
    # Kept whole: a property the element has as an attribute too, one WeasyPrint reads only from styles, a
    # property given twice, a style quoted with apostrophes.
    assert printed[6:10] == svg.split(b"\n")[6:10]


def _pixels(pdf: bytes, folder: Path) -> list[bytes]:
    folder.mkdir()
    (folder / "report.pdf").write_bytes(pdf)
    subprocess.run([PDFTOPPM, "-r", "50", str(folder / "report.pdf"), str(folder / "page")], check=True, timeout=120)
    return [page.read_bytes() for page in sorted(folder.glob("page-*.ppm"))]


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (Debian poppler-utils) is not installed")
@pytest.mark.parametrize("kind", ["charts", "text"])
def test_the_print_page_prints_the_pixels_of_the_html_page(kind: str, tmp_path: Path) -> None:
    if kind == "charts":  # one chart of each kind: distribution, bias, SHAP with whiskers, PDP lines and bars
        doc = build_document(full_analysis(), job_summary(ALL_METHODS), "Analysis Report")
        kinds: dict[str, Figure] = {}
        for block in doc.blocks:
            if isinstance(block, Figure):
                kinds.setdefault(block.code.split("(")[0] + block.alt.split(" chart")[0], block)
        assert len(kinds) >= 6, sorted(kinds)
        doc = Document(doc.title, doc.subtitle, [*kinds.values()])
    else:  # top tokens and six records coloured unit by unit
        local = tmp_path / "out.jsonl"
        local.write_text("".join(json.dumps(line) + "\n" for line in local_records()), encoding="utf-8")
        doc = build_document(text_analysis(), summary(), "Review sentiment", local_explanations=local)
    try:
        screen, printed = render_html(doc), render_html(doc, for_print=True)
    finally:
        doc.close()
    assert printed != screen
    expected = _pixels(render_pdf(screen), tmp_path / "screen")
    assert len(expected) >= 2
    assert _pixels(render_pdf(printed), tmp_path / "print") == expected


def _text_report(folder: Path) -> Document:
    local = folder / "out.jsonl"
    local.write_text("".join(json.dumps(line) + "\n" for line in local_records()), encoding="utf-8")
    return build_document(text_analysis(), summary(), "Review sentiment", local_explanations=local)


def _printed_pixels(pdf_bytes: bytes, folder: Path, dpi: int) -> list[bytes]:
    folder.mkdir()
    (folder / "report.pdf").write_bytes(pdf_bytes)
    subprocess.run([PDFTOPPM, "-r", str(dpi), str(folder / "report.pdf"), str(folder / "page")], check=True,
                   timeout=120)
    return [page.read_bytes() for page in sorted(folder.glob("page-*.ppm"))]


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (Debian poppler-utils) is not installed")
def test_the_printed_contents_list_is_a_plain_block_with_the_pixels_of_one_column(tmp_path: Path) -> None:
    # In print the contents list is one column: a block formatting context (flow-root), which WeasyPrint lays out
    # once, rather than a one-column multicol container (columns: 1), which it lays out through column balancing.
    print_rules = CSS[CSS.index("@media print"):]
    assert "nav.toc ol { columns: auto; display: flow-root; }" in print_rules
    assert "columns: 1" not in CSS
    doc = build_document(full_analysis(), job_summary(ALL_METHODS), "Analysis Report")
    try:
        printed = render_html(doc, for_print=True)
    finally:
        doc.close()
    assert printed.count('<li><a href="#') == 8  # every section of a report of every analysis, on the first page
    multicol = printed.replace("nav.toc ol { columns: auto; display: flow-root; }", "nav.toc ol { columns: 1; }")
    assert multicol != printed
    new, old = render_pdf(printed), render_pdf(multicol)
    for dpi in (60, 150):
        expected = _printed_pixels(old, tmp_path / f"multicol-{dpi}", dpi)
        assert len(expected) >= 2
        assert _printed_pixels(new, tmp_path / f"flow-root-{dpi}", dpi) == expected


def test_the_pdfs_of_a_process_share_one_font_configuration_and_are_the_bytes_of_a_fresh_one(tmp_path: Path) -> None:
    weasyprint = require_pdf_engine()
    doc = _text_report(tmp_path)
    try:
        printed = render_html(doc, for_print=True)
    finally:
        doc.close()
    # What WeasyPrint writes when it makes a FontConfiguration of its own for the page (as render_pdf did).
    fresh = weasyprint.HTML(string=printed, url_fetcher=weasyprint.URLFetcher(allowed_protocols={"data"})).write_pdf()
    render_pdf("<p>Another page first: <b>bold</b>, <i>italic</i>, 日本語</p>")  # the shared one has served others
    shared = pdf._font_config(weasyprint)
    assert isinstance(shared, weasyprint.text.fonts.FontConfiguration)
    assert pdf._font_config(weasyprint) is shared and pdf._font_configs == [shared]
    assert render_pdf(printed) == fresh
    assert render_pdf(printed) == fresh
