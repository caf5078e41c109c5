"""Reports (analyzer/report): HTML, PDF and notebook built from an analysis.json document.

The analysis documents are built here by hand, in Clarify's layout, to cover what the renderers must
cope with: pre- and post-training bias for several facets (one with a configured value, one
one-vs-rest, one thresholded), per-metric errors, "Infinity" strings, Kernel SHAP with two labels
and standard errors, and PDP entries that are numerical, categorical and failed.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from analyzer.report import JobSummary, ReportError, write_reports
from analyzer.report.views import METRICS, format_value

PRE = ["CDDL", "CI", "DPL", "JS", "KL", "KS", "LP", "TVD"]
POST = ["AD", "CDDPL", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD", "SD", "TE"]
GROUP_ERROR = "Group variable is empty or not provided"


def _metrics(names: list[str], values: dict[str, object]) -> list[dict]:
    out = []
    for name in names:
        metric = {"name": name, "description": METRICS[name].description, "value": values.get(name)}
        if name.startswith("CDD"):
            metric["value"], metric["error"] = None, GROUP_ERROR
        out.append(metric)
    return out


def _pre(seed: float) -> dict[str, object]:
    dpl = 0.20015891077100018 * seed
    return {"CI": 0.3513692725946555 * seed, "DPL": dpl, "JS": 0.030756144659773006 * abs(seed),
            "KL": 0.14306865156306434 * abs(seed), "KS": abs(dpl), "LP": math.sqrt(2) * abs(dpl), "TVD": abs(dpl)}


def _post(seed: float) -> dict[str, object]:
    return {"AD": -0.1141572442143538 * seed, "DAR": -0.007405223292617502 * seed,
            "DCA": -0.22750276729134145 * seed, "DCR": 0.13282504190308553 * seed,
            "DI": 0.32939129409419415 if seed > 0 else 1.4, "DPPL": 0.0922004707530946 * seed,
            "DRR": 0.13653296409568605 * seed, "FT": -0.004600286240032713 * seed, "GE": 0.0841186702174704,
            "RD": 0.03556460647616988 * seed, "SD": 0.10465328014037645 * seed, "TE": 24.11428571428572 * seed}


def bias_analysis() -> dict:
    """Pre + post bias: Sex (configured value), Race (one-vs-rest, 3 values), Age (threshold)."""
    race = [("White", 1.0), ("Black", -0.6), ("Asian", 0.3)]

    def stage(names: list[str], values) -> dict:
        facets = {
            "Sex": [{"value_or_threshold": "Female", "metrics": _metrics(names, values(1.0))}],
            "Race": [{"value_or_threshold": v, "metrics": _metrics(names, values(s))} for v, s in race],
            "Age": [{"value_or_threshold": "(40, 90]", "metrics": _metrics(names, values(-0.5))}],
        }
        return {"label": "Target", "facets": facets, "label_value_or_threshold": "1"}

    analysis = {"version": "1.0", "post_training_bias_metrics": stage(POST, _post),
                "pre_training_bias_metrics": stage(PRE, _pre)}
    # The cases renderers must print as such: infinities and a whole group of errors.
    black = analysis["post_training_bias_metrics"]["facets"]["Race"][1]["metrics"]
    _set(black, "TE", "Infinity")
    _set(black, "DCA", "-Infinity")
    _set(black, "DI", "Infinity")
    asian = analysis["pre_training_bias_metrics"]["facets"]["Race"][2]["metrics"]
    for metric in asian:
        if metric["name"] != "CI":
            metric["value"], metric["error"] = None, "No instance of common facet found, dataset may be too small"
    return analysis


def small_analysis() -> dict:
    """Pre + post bias for the Sex facet only: a short report, for the cheaper tests."""
    analysis = bias_analysis()
    for stage in ("pre_training_bias_metrics", "post_training_bias_metrics"):
        analysis[stage]["facets"] = {"Sex": analysis[stage]["facets"]["Sex"]}
    return analysis


def _set(metrics: list[dict], name: str, value: object) -> None:
    next(m for m in metrics if m["name"] == name)["value"] = value


FEATURES = ["Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status", "Occupation",
            "Relationship", "Ethnic group", "Sex", "Capital Gain", "Capital Loss", "Hours per week", "Country",
            "Savings", "Region", "Tenure", "Channel"]


def full_analysis() -> dict:
    """Bias plus Kernel SHAP (2 labels, with standard errors on one) and PDP (3 kinds of entries)."""
    analysis = bias_analysis()
    shap = {}
    for i, label in enumerate(["label0", "label1"]):
        values = {f: round(0.05 / (1 + ((k * 7 + i * 3) % len(FEATURES))), 6) for k, f in enumerate(FEATURES)}
        shap[label] = {"global_shap_values": values, "expected_value": 0.0006380207487381995 + i * 0.5}
        if i == 0:
            shap[label]["lucent_global_shap_stderr"] = {f: v * 0.15 for f, v in values.items()}
    pdp = [
        {"feature_name": "Age", "data_type": "numerical",
         "feature_values": [20.87, 24.6, 28.33, 32.07, 35.8, 39.53, 43.27, 47.0],
         "data_distribution": [0.05, 0.165, 0.15, 0.095, 0.2, 0.12, 0.1, 0.12],
         "model_predictions": [[0.70, 0.68, 0.70, 0.73, 0.76, 0.79, 0.80, 0.81],
                               [0.30, 0.32, 0.30, 0.27, 0.24, 0.21, 0.20, 0.19]],
         "label_headers": ["label0", "label1"]},
        {"feature_name": "Animal", "data_type": "categorical", "feature_values": ["Cat", "Dog", "Horse", "Bird"],
         "data_distribution": [0.1, 0.11, 0.245, 0.06],
         "model_predictions": [[0.8154899527132511, 0.787026209384203, 0.7409455917775631, 0.7098744075372815]],
         "label_headers": ["label0"]},
        {"feature_name": "text_column", "data_type": "free_text",
         "error": "Detected data type is not supported for PDP. PDP can only be computed for numerical or "
                  "categorical columns"},
    ]
    analysis["explanations"] = {"kernel_shap": shap, "pdp": pdp}
    return analysis


def job_summary(methods: list[str]) -> JobSummary:
    return JobSummary(
        dataset_source="s3://example-bucket/adult/train.csv", dataset_type="text/csv", n_rows=32561,
        label="Target", label_values_or_threshold="1", facets=["Sex", "Race", "Age"], methods=methods,
        lucent_version="0.1.0", started_at="2024-05-01T12:30:00Z",
        label_distribution={"0": 24720, "1": 7841},
        facet_distributions={"Sex": {"Male": 21790, "Female": 10771},
                             "Race": {"White": 27816, "Black": 3124, "Asian": 1039, "Other": 582}},
    )


BIAS_METHODS = ["pre_training_bias", "post_training_bias"]
ALL_METHODS = [*BIAS_METHODS, "shap", "pdp"]


def _write(folder: Path, analysis: dict, methods: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.json").write_text(json.dumps(analysis, indent=4), encoding="utf-8")
    return write_reports(analysis, job_summary(methods), folder, name="report", title="Analysis Report")


@pytest.fixture(scope="module")
def full_job(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("full")
    _write(folder, full_analysis(), ALL_METHODS)
    return folder


@pytest.fixture(scope="module")
def bias_job(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bias")
    _write(folder, small_analysis(), BIAS_METHODS)
    return folder


# ---------------------------------------------------------------------------------------------
# Files


def test_writes_the_three_files_and_no_temporary_ones(full_job: Path) -> None:
    names = sorted(p.name for p in full_job.iterdir())
    assert names == ["analysis.json", "report.html", "report.ipynb", "report.pdf"]


def test_a_failing_format_does_not_cost_the_others(tmp_path: Path, monkeypatch) -> None:
    import analyzer.report.pdf as pdf
    from analyzer.report.pdf import PdfEngineMissing

    def no_engine(html: str) -> bytes:
        raise PdfEngineMissing("WeasyPrint is not usable (test)")

    monkeypatch.setattr(pdf, "render_pdf", no_engine)
    with pytest.raises(ReportError, match="pdf: PdfEngineMissing") as caught:
        _write(tmp_path, small_analysis(), BIAS_METHODS)
    assert sorted(p.name for p in caught.value.written) == ["report.html", "report.ipynb"]
    assert set(caught.value.failed) == {"pdf"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.json", "report.html", "report.ipynb"]


def test_a_format_that_cannot_be_written_does_not_cost_the_others(tmp_path: Path) -> None:
    """A write that fails (a full disk; here a folder where report.ipynb goes) is that format's failure,
    named with its OSError, not the whole report's: the formats written are kept and listed."""
    (tmp_path / "report.ipynb").mkdir()
    with pytest.raises(ReportError, match="ipynb: IsADirectoryError") as caught:
        _write(tmp_path, small_analysis(), BIAS_METHODS)
    assert sorted(p.name for p in caught.value.written) == ["report.html", "report.pdf"]
    assert set(caught.value.failed) == {"ipynb"} and isinstance(caught.value.failed["ipynb"], OSError)
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "report.pdf").stat().st_size > 0


def test_malformed_analysis_raises_report_error_and_writes_nothing(tmp_path: Path) -> None:
    broken = {"version": "1.0", "pre_training_bias_metrics": {"label": "y", "facets": {"f": [{"metrics": 3}]}}}
    with pytest.raises(ReportError):
        write_reports(broken, job_summary(["pre_training_bias"]), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# HTML


class _Page(HTMLParser):
    """Collects text, headings and every URL-bearing attribute of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.urls: list[str] = []
        self.headings: list[str] = []
        self._heading: list[str] | None = None
        self.img = 0

    def handle_starttag(self, tag, attrs):
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action")]
        self.img += tag == "img"
        if re.fullmatch(r"h[1-4]", tag):
            self._heading = []

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-4]", tag) and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def _page(folder: Path) -> tuple[str, _Page]:
    source = (folder / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(source)
    page.close()
    return source, page


def test_html_parses_strictly_with_html5lib(full_job: Path) -> None:
    html5lib = pytest.importorskip("html5lib")
    parser = html5lib.HTMLParser(strict=True)
    parser.parse((full_job / "report.html").read_text(encoding="utf-8"))  # raises on any parse error


def test_html_shows_every_metric_value_as_formatted(full_job: Path) -> None:
    _, page = _page(full_job)
    text = " ".join(page.text)
    analysis = full_analysis()
    expected = set()
    for stage in ("pre_training_bias_metrics", "post_training_bias_metrics"):
        for entries in analysis[stage]["facets"].values():
            for entry in entries:
                for metric in entry["metrics"]:
                    expected.add(format_value(metric["value"]))
                    if "error" in metric:
                        expected.add(metric["error"])
    missing = [v for v in expected if v not in text]
    assert not missing
    # Spot checks of the printed form itself.
    for shown in ("0.2002", "24.1143", "Infinity", "-Infinity", "not computed", "0.0841"):
        assert shown in text


def test_html_references_no_external_url(full_job: Path) -> None:
    source, page = _page(full_job)
    assert page.img >= 10
    assert all(u.startswith(("data:", "#")) for u in page.urls), [u[:40] for u in page.urls if u[:5] != "data:"]
    assert not re.search(r"url\(\s*['\"]?(?!data:)", source)
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*https?://", source, re.I)
    assert "<script" not in source.lower() and "<link" not in source.lower()


def test_html_sections_follow_the_analyses(full_job: Path, bias_job: Path) -> None:
    _, full = _page(full_job)
    _, bias = _page(bias_job)
    shap, pdp = "What drives the model's output (SHAP)", "How the output changes with one feature (partial dependence)"
    for page in (full, bias):
        assert "Bias in the data (pre-training metrics)" in page.headings
        assert "Bias in the model's predictions (post-training metrics)" in page.headings
        assert "Sex = Female compared with everyone else" in page.headings
    assert "Age in (40, 90] compared with everyone else" in full.headings
    assert "Facet Race" in full.headings  # a one-vs-rest facet gets a heading, then one per value
    assert "Race = Black compared with everyone else" in full.headings
    assert shap in full.headings and pdp in full.headings
    assert {"Model output 'label0'", "Model output 'label1'"} <= set(full.headings)
    assert shap not in bias.headings and pdp not in bias.headings
    text = " ".join(full.text)
    assert "Detected data type is not supported for PDP" in text  # PDP error shown as text
    assert "0.0006" in text and "0.5006" in text  # expected values of both labels
    assert "SHAP" not in " ".join(bias.text) and "partial dependence" not in " ".join(bias.text)


def test_post_training_only_report_has_no_pre_training_section(tmp_path: Path) -> None:
    from analyzer.report.content import build_document
    from analyzer.report.html import render_html

    analysis = small_analysis()
    del analysis["pre_training_bias_metrics"]
    doc = build_document(analysis, job_summary(["post_training_bias"]))
    page = _Page()
    page.feed(render_html(doc))
    doc.close()
    assert "Bias in the data (pre-training metrics)" not in page.headings
    assert "Bias in the model's predictions (post-training metrics)" in page.headings


def test_explanations_only_report_has_no_bias_sections() -> None:
    from analyzer.report.content import build_document
    from analyzer.report.html import render_html

    analysis = {"version": "1.0", "explanations": full_analysis()["explanations"]}
    summary = JobSummary(dataset_source="data.csv", dataset_type="text/csv", n_rows=10, label=None,
                         label_values_or_threshold=None, facets=[], methods=["shap", "pdp"],
                         lucent_version="0.1.0", started_at="not a date")
    doc = build_document(analysis, summary)
    page = _Page()
    page.feed(render_html(doc))
    doc.close()
    assert [h for h in page.headings if h.startswith(("Bias", "About the metrics", "The data"))] == []
    assert "What drives the model's output (SHAP)" in page.headings
    assert "not a date" in " ".join(page.text)  # an unparsable time is shown as given


def test_value_formatting() -> None:
    assert [format_value(v) for v in (0.20015891077100018, -0.0046, 0, 24.11428571428572, 1234.5, 6e-07)] == [
        "0.2002", "-0.0046", "0", "24.1143", "1,234.5", "6.00e-07"]
    assert [format_value(v) for v in ("Infinity", "-Infinity", None)] == ["Infinity", "-Infinity", "not computed"]


def test_readings_follow_the_sign_conventions() -> None:
    from analyzer.report.views import Context, reading

    ctx = Context(group="Sex = Female", positive="Target = 1")

    def read(name: str, value: object) -> str:
        return reading({"name": name, "value": value}, ctx)

    assert "20.0 percentage points higher for everyone else" in read("DPL", 0.2)
    assert "higher for the group" in read("DPL", -0.2)
    assert "0.33 times as often" in read("DI", 0.33) and "four-fifths" in read("DI", 0.33)
    assert "against the group" in read("FT", -0.1)  # implementation sign: negative = against d
    assert "in favour of the group" in read("FT", 0.1)
    assert "more often for the group" in read("SD", 0.1)  # SD is d minus a
    assert "The group has false negatives but no false positives" in read("TE", "Infinity")
    assert "32.4% of the rows" in read("CI", 0.3513692725946555)
    assert read("CDDL", None).startswith("Not computed")


# ---------------------------------------------------------------------------------------------
# Notebook


def test_notebook_is_valid_and_has_stored_outputs(full_job: Path) -> None:
    notebook = nbformat.read(full_job / "report.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert 'Path("analysis.json")' in code[1].source
    shown = [c for c in code[2:] if c.outputs]
    assert len(shown) == len(code) - 2 > 20
    charts = [c.outputs[0].data for c in shown if "image/svg+xml" in c.outputs[0].data]
    assert charts and all(chart["image/svg+xml"].lstrip().startswith("<?xml") for chart in charts)
    assert any("text/html" in c.outputs[0].data for c in shown)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "## How to read this report" in markdown and "partial dependence" in markdown


def test_the_same_analysis_gives_the_same_notebook_bytes(full_job: Path, tmp_path: Path) -> None:
    """nbformat gives each new cell a random id: two runs of one job wrote different notebooks."""
    _write(tmp_path / "again", full_analysis(), ALL_METHODS)
    assert (tmp_path / "again" / "report.ipynb").read_bytes() == (full_job / "report.ipynb").read_bytes()


def test_notebook_executes_top_to_bottom(full_job: Path, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    # A copy of the folder: the notebook must find analysis.json by its relative path only.
    folder = tmp_path / "copy"
    shutil.copytree(full_job, folder)
    notebook = nbformat.read(folder / "report.ipynb", as_version=4)
    stored = copy.deepcopy(notebook)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    for before, after in zip(stored.cells, notebook.cells, strict=True):
        if after.cell_type != "code":
            continue
        assert not [o for o in after.outputs if o.output_type == "error"]
        # Re-running produces the same kind of output as the stored one (a table stays a table).
        kinds = {k for o in before.outputs for k in o.get("data", {})}
        assert kinds <= {k for o in after.outputs for k in o.get("data", {})}, after.source
    # The tables are the same data, computed again from analysis.json by the same functions.
    tables = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.source.startswith("bias_table(")]
    assert len(tables) == 10
    for i in tables:
        assert notebook.cells[i].outputs[0].data["text/html"] == stored.cells[i].outputs[0].data["text/html"]


# ---------------------------------------------------------------------------------------------
# PDF

PDFTOPPM = shutil.which("pdftoppm")
needs_poppler = pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (Debian poppler-utils) is not installed")


def _pages(pdf: Path, out: Path) -> list[Path]:
    out.mkdir()
    subprocess.run([PDFTOPPM, "-r", "30", "-gray", str(pdf), str(out / "page")], check=True, timeout=60)
    return sorted(out.glob("page-*.pgm"))


def _variance(pgm: Path) -> float:
    data = pgm.read_bytes()
    # Binary PGM: "P5\n<w> <h>\n<max>\n" then one byte per pixel.
    header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    pixels = data[header.end():]
    mean = sum(pixels) / len(pixels)
    return sum((p - mean) ** 2 for p in pixels[::7]) / len(pixels[::7])


@needs_poppler
@pytest.mark.parametrize(("job", "expected_pages"), [("full_job", 22), ("bias_job", 7)])
def test_pdf_pages_render_and_are_not_blank(job: str, expected_pages: int, request, tmp_path: Path) -> None:
    folder = request.getfixturevalue(job)
    assert (folder / "report.pdf").read_bytes().startswith(b"%PDF-")
    pages = _pages(folder / "report.pdf", tmp_path / "pages")
    assert len(pages) == expected_pages
    for page in pages:
        assert _variance(page) > 50, f"{page.name} looks blank"


def test_distributions_of_many_values_keep_every_row():
    """A facet of 62 values: the report's chart showed 11 values and an "other" bar of only the next 39
    (value_counts kept the 50 most frequent), its shares of part of the rows. Now the job folds the
    values beyond the chart's bars into one entry holding all their rows."""
    import numpy as np
    import pandas as pd

    from analyzer.data.column import Column
    from analyzer.pipeline import value_counts
    from analyzer.report.summary import DISTRIBUTION_BARS, other_values

    ages = pd.Series(np.repeat(np.arange(18, 80), np.arange(1, 63)))  # age 18 once, ..., 79 62 times: no ties
    counts = value_counts(Column.from_series(ages, "age"))
    assert len(counts) == DISTRIBUTION_BARS and sum(counts.values()) == len(ages) == 1953
    expected = ages.value_counts()
    top = expected.iloc[:DISTRIBUTION_BARS - 1]
    assert [counts[str(v)] for v in top.index] == top.tolist()
    assert counts[other_values(62 - DISTRIBUTION_BARS + 1)] == expected.iloc[DISTRIBUTION_BARS - 1:].sum()


def test_long_names_are_shortened_in_the_middle():
    """13 features named feature_with_a_rather_long_... all read the same with the ellipsis at the end."""
    from analyzer.report.views import _shorten

    names = [f"feature_with_a_rather_long_name_{i}" for i in range(13)]
    shown = [_shorten(name, 28) for name in names]
    assert len(set(shown)) == 13 and all(len(text) == 28 and "…" in text for text in shown)
    assert _shorten("short", 28) == "short"




def test_a_facet_of_many_values_draws_only_the_first_groups(monkeypatch) -> None:
    """A chart and a table per one-vs-rest group: 10,000 values took over an hour. Past
    GROUPS_DRAWN_PER_FACET the rest are named in a note, their numbers left to analysis.json."""
    import analyzer.report.content as content
    from analyzer.report.html import render_html

    monkeypatch.setattr(content, "GROUPS_DRAWN_PER_FACET", 2)
    analysis = small_analysis()
    for stage in ("pre_training_bias_metrics", "post_training_bias_metrics"):
        one = analysis[stage]["facets"]["Sex"][0]
        analysis[stage]["facets"]["Sex"] = [{**one, "value_or_threshold": f"v{i}"} for i in range(5)]
    doc = content.build_document(analysis, job_summary(["pre_training_bias", "post_training_bias"]))
    page = _Page()
    page.feed(render_html(doc))
    doc.close()
    drawn = [h for h in page.headings if h.endswith("compared with everyone else")]
    assert len(drawn) == 2 * 2 and all("v0" in h or "v1" in h for h in drawn)
    text = " ".join(page.text)
    assert text.count("The other 3 values of Sex are not drawn here") == 2
    assert "under pre_training_bias_metrics.facets.Sex" in text


def test_closing_a_document_lets_its_figures_go() -> None:
    """``Document.close`` drops the matplotlib figures (most of a document's memory) rather than clearing each
    one, which rebuilt its axes; nothing else holds them, so they are freed, and the charts' SVG is kept."""
    import gc
    import weakref

    from analyzer.report.content import build_document
    from analyzer.report.document import Figure
    from analyzer.report.html import render_html

    doc = build_document(full_analysis(), job_summary(ALL_METHODS))
    page = render_html(doc)
    figures = [block for block in doc.blocks if isinstance(block, Figure)]
    alive = [weakref.ref(block.figure) for block in figures]
    doc.close()
    gc.collect()
    assert len(alive) == 17 and not [ref for ref in alive if ref() is not None]
    assert render_html(doc) == page  # the page is made from the SVG, drawn once
