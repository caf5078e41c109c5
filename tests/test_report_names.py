"""Names from the data in the report's charts: drawn as written, and shortened to fit the figure.

A ``$`` in a feature name, a category value, a label header or a token made matplotlib read mathtext:
a name that does not parse (``US$_$``) failed every report format, one that does (``$a$``) was drawn as
a formula. A 300-character feature name ran past the edges of its partial dependence chart.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from analyzer.report import JobSummary, write_reports
from analyzer.report.content import build_document
from analyzer.report.document import Figure
from analyzer.report.views import PDP_NAME_CHARACTERS, _shorten
from tests.test_report import ALL_METHODS, full_analysis, job_summary

DOLLAR_NAMES = ["$a$", "US$_$", "spend_$_2023_$_q1", "a$^$b", "$\\nosuchcommand$"]
SHARES = [0.1, 0.2, 0.3, 0.15, 0.25]


def _pdp(name: str, kind: str, values: list, headers: list[str]) -> dict:
    return {"feature_name": name, "data_type": kind, "feature_values": values, "data_distribution": SHARES,
            "model_predictions": [[0.1 * (i + 1) + 0.01 * j for j in range(len(values))] for i in range(len(headers))],
            "label_headers": headers}


def dollar_analysis() -> dict:
    """Every chart of a SHAP + text + PDP report, every name in it one of DOLLAR_NAMES."""
    features = {name: round(0.1 / (i + 1), 4) for i, name in enumerate(DOLLAR_NAMES)}
    shap = {label: {"global_shap_values": dict(features), "expected_value": 0.5} for label in DOLLAR_NAMES[:2]}
    shap["$a$"]["global_top_shap_text"] = {"a$^$b": {name: round(0.05 / (i + 1), 4) for i, name in enumerate(DOLLAR_NAMES)}}
    numbers = [1.0, 2.0, 3.0, 4.0, 5.0]
    pdp = [_pdp(name, "numerical", numbers, DOLLAR_NAMES) for name in DOLLAR_NAMES[:3]]
    pdp += [_pdp(name, "categorical", DOLLAR_NAMES, DOLLAR_NAMES[:2]) for name in DOLLAR_NAMES[3:]]
    return {"version": "1.0", "explanations": {"kernel_shap": shap, "pdp": pdp}}


def dollar_summary() -> JobSummary:
    counts = {name: 10 * (i + 1) for i, name in enumerate(DOLLAR_NAMES)}
    return JobSummary(dataset_source="s3://bucket/$a$.csv", dataset_type="text/csv", n_rows=150, label="a$^$b",
                      label_values_or_threshold="1", facets=["US$_$"], methods=["shap", "pdp"], lucent_version="0.1.0",
                      started_at="2024-05-01T12:30:00Z", label_distribution=counts,
                      facet_distributions={"US$_$": counts})


def _svg_texts(svg: str) -> list[str]:
    """The strings an SVG chart draws (matplotlib writes each line of a text as one <text>, svg.fonttype none)."""
    return [html.unescape(text) for text in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]


def test_dollar_signs_in_names_are_drawn_as_written_in_every_format(tmp_path: Path) -> None:
    analysis = dollar_analysis()
    (tmp_path / "analysis.json").write_text(json.dumps(analysis), encoding="utf-8")
    written = write_reports(analysis, dollar_summary(), tmp_path)  # raised ReportError (mathtext) before
    assert sorted(path.name for path in written) == ["report.html", "report.ipynb", "report.pdf"]

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    svgs = [base64.b64decode(data).decode("utf-8")
            for data in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]
    assert len(svgs) == 2 + 2 + 1 + 5  # distributions, SHAP per label, top tokens, PDP per feature
    drawn = [text for svg in svgs for text in _svg_texts(svg)]
    expected = [
        *DOLLAR_NAMES,  # SHAP and top-token bars, PDP titles and legends, distribution bars
        *(_shorten(name, 12) for name in DOLLAR_NAMES),  # PDP categories
        *(f"{name}  (grey: share of rows)" for name in DOLLAR_NAMES[:3]),
        "a$^$b  (with its share of rows)", "(with its share of rows)",  # the note under a longer name
        "Feature importance for output '$a$' (all 5 features)", "Feature importance for output 'US$_$' (all 5 features)",
        "Top tokens of 'a$^$b' for output '$a$' (all 5 tokens)", "Label: a$^$b", "Facet: US$_$",
    ]
    for text in expected:
        assert text in drawn, f"{text!r} is not drawn as written"
    # A text drawn as mathtext would be split into glyphs, or keep a backslash before its dollars.
    assert not [text for text in drawn if "\\$" in text]
    assert drawn.count("$a$") >= 5 and drawn.count("US$_$") >= 5

    notebook = nbformat.reads((tmp_path / "report.ipynb").read_text(encoding="utf-8"), as_version=4)
    stored = [output["data"]["image/svg+xml"] for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if "image/svg+xml" in output.get("data", {})]
    assert stored == svgs

    pdf = tmp_path / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF-")
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                              text=True, timeout=60).stdout
        for name in ("Feature importance for output 'US$_$'", "Top tokens of 'a$^$b'", "$\\nosuchcommand$",
                     "spend_$_2023_$_q1"):
            assert name in text


LONG = ("customer_lifetime_value_" * 12 + "in_euro")[:300]  # 295 characters
LONG_LABEL = "probability_of_" + "churn_within_the_next_quarter_" * 9  # 285 characters


def long_analysis() -> dict:
    """The full report's analysis with every name from the data 250 to 300 characters long, and a group
    whose every metric but one was not computed (a long list of what the bias chart cannot draw)."""
    analysis = full_analysis()
    values = {f"{LONG}_{i}": round(0.1 / (i + 1), 5) for i in range(18)}
    analysis["explanations"]["kernel_shap"] = {LONG_LABEL: {
        "global_shap_values": values, "lucent_global_shap_stderr": {f: v * 0.2 for f, v in values.items()},
        "expected_value": 0.4, "global_top_shap_text": {LONG: {f"{LONG}_token_{i}": 0.01 * (30 - i) for i in range(30)}},
    }}
    categories = [f"{LONG}_category_{i}" for i in range(5)]
    analysis["explanations"]["pdp"] = [
        _pdp(LONG + "_n", "numerical", [1.0, 2.0, 3.0, 4.0, 5.0], [LONG_LABEL + "_a", LONG_LABEL + "_b"]),
        _pdp(LONG + "_c", "categorical", categories, [LONG_LABEL + "_a", LONG_LABEL + "_b"]),
    ]
    return analysis


def long_summary() -> JobSummary:
    summary = job_summary(ALL_METHODS)
    summary.label = LONG_LABEL
    summary.facet_distributions = {LONG: {f"{LONG}_{i}": 100 * (i + 1) for i in range(12)}}
    return summary


@pytest.mark.parametrize("names", ["ordinary", "300 characters"])
def test_every_chart_fits_its_figure(names: str) -> None:
    """Everything a chart draws (titles, axis labels, tick labels, legends, notes) lies inside the figure.

    With ordinary names, the SHAP chart's whisker note and the bias chart's list of metrics not drawn ran
    past the right edge; with long ones, the partial dependence chart's title and axis label."""
    analysis, summary = (full_analysis(), job_summary(ALL_METHODS)) if names == "ordinary" else (long_analysis(), long_summary())
    doc = build_document(analysis, summary)
    figures = [block for block in doc.blocks if isinstance(block, Figure)]
    assert len(figures) == (17 if names == "ordinary" else 16)
    for block in figures:
        canvas = FigureCanvasAgg(block.figure)
        canvas.draw()
        drawn = block.figure.get_tightbbox(canvas.get_renderer())  # inches
        size = block.figure.get_size_inches()
        assert drawn.x0 >= 0 and drawn.y0 >= 0, block.code
        assert drawn.x1 <= size[0] + 0.005 and drawn.y1 <= size[1] + 0.005, f"{block.code} draws past its edge"
    doc.close()


def test_long_pdp_names_are_shortened_and_the_caption_has_them_whole() -> None:
    doc = build_document(long_analysis(), long_summary())
    pdp = [block for block in doc.blocks if isinstance(block, Figure) and block.code.startswith("pdp_chart")]
    assert len(pdp) == 2
    for block, name in zip(pdp, (LONG + "_n", LONG + "_c"), strict=True):
        short = _shorten(name, PDP_NAME_CHARACTERS)
        assert len(short) == PDP_NAME_CHARACTERS and short.startswith("customer_lif") and "…" in short
        assert block.figure._suptitle.get_text() == short
        xlabel = block.figure.axes[0].get_xlabel()
        assert xlabel.split("\n")[0] == short and "share of rows" in xlabel.split("\n")[1]
        legend = [text.get_text() for text in block.figure.axes[0].get_legend().get_texts()]
        assert legend == [_shorten(LONG_LABEL + "_a", 20), _shorten(LONG_LABEL + "_b", 20)]
        assert block.caption == f"Feature: {name}" and name in block.alt
    # A name that fits is drawn whole and needs no caption.
    short_doc = build_document(full_analysis(), job_summary(ALL_METHODS))
    age = next(b for b in short_doc.blocks if isinstance(b, Figure) and b.code == "pdp_chart(analysis, 'Age')")
    assert age.caption == "" and age.figure._suptitle.get_text() == "Age"
    assert age.figure.axes[0].get_xlabel() == "Age  (grey: share of rows)"
    doc.close()
    short_doc.close()
