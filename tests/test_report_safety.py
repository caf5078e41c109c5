"""Hostile user data in reports, secrets in a job's log and message, and reports that cannot be written.

User data reaches the report as feature names, facet and label values, model output names, tokens and
text units. A real job (a model on 127.0.0.1 behind an ``endpoint_url`` with a password in it) is run
on data made of markdown links, remote images, raw HTML and bare URLs; its notebook's markdown cells are
rendered with markdown-it (raw HTML on, as Jupyter allows it) and its HTML page is parsed with html5lib:
no link, image, script or event handler from the data may survive, while the text itself still shows.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler
from io import StringIO
from pathlib import Path

import html5lib
import nbformat
import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from analyzer.report import JobSummary, write_reports
from analyzer.report.notebook import markdown_escape
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, http_server

PASSWORD = "Pa55w0rdX"
FEATURE_LINK = "[click](javascript:alert(1))"
FEATURE_IMAGE = "![x](http://evil.example/p.png)"
FACET = "<img src=x onerror=alert(1)>"
LABEL = "**[b](http://evil.example/b)**"
FACET_VALUES = ['<a href="http://evil.example">a</a>', "www.evil.example", "see http://evil.example/auto"]
LABEL_VALUES = ["<script>alert(1)</script>", "javascript:alert(2)"]
OUTPUT = "<b onmouseover=alert(1)>out</b>"
HEADERS = [FEATURE_LINK, FEATURE_IMAGE, FACET, LABEL]
# What the report's text shows (feature names appear in the charts and the notebook's tables); the
# label's own "**" reads as the document's bold markup, which is harmless.
SHOWN_AS_TEXT = [FACET, *FACET_VALUES, LABEL_VALUES[0], OUTPUT, LABEL.strip("*")]


class _Model(BaseHTTPRequestHandler):
    """A linear model over the two numeric features plus one facet value; 400 when told to fail."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        if self.server.fail:
            self.send_response(400)  # a refusal: halved down to one record, no back-off
            self.end_headers()
            self.wfile.write(b"model exploded")
            return
        rows = pd.read_csv(StringIO(body), header=None)
        scores = rows[0] - 0.5 * rows[1] + (rows[2].astype(str) == FACET_VALUES[0])
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write("\n".join(f"{s:.6f}" for s in scores).encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def model():
    with http_server(_Model, fail=False) as server:
        yield server


def _endpoint_url(server) -> str:
    return f"http://lucent:{PASSWORD}@127.0.0.1:{server.server_port}"


def hostile_job(root: Path, server, report: bool = True) -> JobRoot:
    job = JobRoot(root)
    rng = np.random.default_rng(4)
    n = 60
    data = pd.DataFrame({FEATURE_LINK: np.round(rng.normal(size=n), 3), FEATURE_IMAGE: np.round(rng.normal(size=n), 3),
                         FACET: rng.choice(FACET_VALUES, n), LABEL: rng.choice(LABEL_VALUES, n)})
    job.write_data(data.to_csv(index=False, header=False))
    methods = {"pre_training_bias": {"methods": "all"},
               "shap": {"baseline": [[0.0, 0.0, FACET_VALUES[1]]], "num_samples": 20, "seed": 1}}
    if report:
        methods["report"] = {"name": "report", "title": "Hostile [t](javascript:alert(3))"}
    job.write_config({
        "dataset_type": "text/csv", "headers": HEADERS, "label": LABEL, "label_values_or_threshold": [LABEL_VALUES[0]],
        "facet": [{"name_or_index": FACET}], "methods": methods,
        "predictor": {"endpoint_url": _endpoint_url(server), "content_type": "text/csv", "label_headers": [OUTPUT]},
    })
    return job


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, model) -> tuple[JobRoot, str]:
    """The hostile job, run once; returns it with everything it logged."""
    job = hostile_job(tmp_path_factory.mktemp("hostile") / "job", model)
    log = StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger().addHandler(handler)
    try:
        code = job.run()
    finally:
        logging.getLogger().removeHandler(handler)
    assert code == 0, job.message
    return job, log.getvalue()


# ---------------------------------------------------------------------------------------------
# Secrets in the log and the message


def test_the_log_and_message_carry_no_url_password(finished_job) -> None:
    job, log = finished_job
    assert job.message == SUCCESS_MESSAGE
    assert "Using the model endpoint at http://***@127.0.0.1:" in log
    assert PASSWORD not in log
    for path in job.output_dir.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_failing_model_s_message_carries_no_url_password(tmp_path, model, capsys) -> None:
    job = hostile_job(tmp_path / "job", model, report=False)
    model.fail = True
    try:
        code = job.run()
    finally:
        model.fail = False
    assert code == 1
    assert job.message.startswith("ClientError: ")
    assert "http://***@127.0.0.1" in job.message
    assert PASSWORD not in job.message
    assert PASSWORD not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The notebook's markdown and the HTML page


def _render_markdown(source: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(source)


def _fragment(markup: str):
    return html5lib.parse(markup, namespaceHTMLElements=False)


def _assert_inert(root, *, allow_anchor_links: bool = False) -> None:
    """No script, link to elsewhere, image other than an embedded one, or event handler in ``root``."""
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        assert tag not in ("script", "iframe", "object", "embed", "svg", "form", "base", "link"), tag
        assert not any(name.lower().startswith("on") for name in element.attrib), element.attrib
        if tag == "a":
            assert allow_anchor_links and element.get("href", "").startswith("#"), element.attrib
        if tag == "img":
            assert element.get("src", "").startswith("data:image/"), element.get("src", "")[:80]


def _text(root) -> str:
    return " ".join(" ".join(root.itertext()).split())


def test_notebook_markdown_renders_no_link_image_or_html_from_the_data(finished_job) -> None:
    job, _ = finished_job
    notebook = nbformat.read(job.output_dir / "report.ipynb", as_version=4)
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    rendered = "\n".join(_render_markdown(source) for source in sources)
    tokens = [t for source in sources for block in MarkdownIt("commonmark", {"html": True}).enable("table").parse(source)
              for t in [block, *(block.children or [])]]
    assert not {t.type for t in tokens} & {"link_open", "image", "html_inline", "html_block"}
    _assert_inert(_fragment(rendered))
    # Jupyter's renderer (marked, GFM) also links bare URLs: none may be left unescaped.
    for source in sources:
        assert not re.search(r"(?i)(?:https?|javascript):(?!\\)|://|www\.(?!\\)", source.replace("\\:", "")), source
    text = _text(_fragment(rendered))
    for hostile in SHOWN_AS_TEXT:
        assert " ".join(hostile.split()) in text, hostile


def test_notebook_stored_html_outputs_are_inert(finished_job) -> None:
    job, _ = finished_job
    notebook = nbformat.read(job.output_dir / "report.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
               if "text/html" in o.get("data", {})]
    assert outputs
    for output in outputs:
        _assert_inert(_fragment(output["data"]["text/html"]))


def test_html_page_shows_the_data_as_text_only(finished_job) -> None:
    job, _ = finished_job
    page = (job.output_dir / "report.html").read_text(encoding="utf-8")
    root = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(page)
    _assert_inert(root, allow_anchor_links=True)
    text = _text(root)
    for hostile in SHOWN_AS_TEXT:
        assert " ".join(hostile.split()) in text, hostile


@pytest.mark.parametrize("text", [
    "[x](javascript:alert(1))", "![i](http://evil/x.png)", "<img src=x onerror=alert(1)>", "<http://evil>",
    "http://evil.example www.evil.example a@b.example", "line\n# heading\n[r]: http://evil", "a | b", "&lt;b&gt;",
    "1. item", "- item", "> quote", "`code`", "~~gone~~", "\\[x](y)", "*em* _em_ __b__",
])
def test_markdown_escape_keeps_text_literal(text: str) -> None:
    html = _render_markdown(markdown_escape(text))
    root = _fragment(html)
    _assert_inert(root)
    assert [e.tag for e in root.iter() if isinstance(e.tag, str)] == ["html", "head", "body", "p"]
    assert _text(root) == " ".join(text.split())


def test_top_tokens_and_text_units_are_inert_in_the_notebook(tmp_path: Path) -> None:
    # Tokens and text units only come from a text job; this writes its analysis.json and out.jsonl by hand.
    tokens = {"[t](javascript:alert(1))": 0.3, "![i](http://evil.example/i.png)": -0.2, "<img src=x onerror=y>": 0.1}
    analysis = {"version": "1.0", "explanations": {"kernel_shap": {"label0": {
        "global_shap_values": {"review": 0.4}, "expected_value": 0.5,
        "global_top_shap_text": {"review": tokens}}}}}
    units = list(tokens)
    shap_dir = tmp_path / "explanations_shap"
    shap_dir.mkdir()
    record = {"explanations": {"review": [{"attributions": [{"attribution": [v], "description": {
        "partial_text": u, "start_idx": 30 * i}} for i, (u, v) in enumerate(zip(units, tokens.values(), strict=True))]}]}}
    (shap_dir / "out.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    summary = JobSummary(dataset_source="data.csv", dataset_type="text/csv", n_rows=1, label=None,
                         label_values_or_threshold=None, facets=[], methods=["shap"], lucent_version="test",
                         started_at="2024-05-01T12:30:00Z")
    write_reports(analysis, summary, tmp_path)
    notebook = nbformat.read(tmp_path / "report.ipynb", as_version=4)
    rendered = "\n".join(_render_markdown(c.source) for c in notebook.cells if c.cell_type == "markdown")
    _assert_inert(_fragment(rendered))
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text/html" in output.get("data", {}):
                _assert_inert(_fragment(output["data"]["text/html"]))
    page = html5lib.parse((tmp_path / "report.html").read_text(encoding="utf-8"), namespaceHTMLElements=False)
    _assert_inert(page, allow_anchor_links=True)
    assert "[t](javascript:alert(1))" in _text(page)


# ---------------------------------------------------------------------------------------------
# A report that cannot be written fails the job


def test_missing_pdf_engine_is_a_validate_problem(tmp_path, model, monkeypatch) -> None:
    # sys.modules[name] = None is how Python itself marks a module as not importable. (`lucent run` checks
    # the engine in the report's own process: tests/test_report_process.py breaks it there.)
    monkeypatch.setitem(sys.modules, "weasyprint", None)
    job = hostile_job(tmp_path / "job", model)
    assert job.run(command="validate") == 1
    assert job.output_files() == []


def test_one_format_failing_still_writes_the_others_and_names_it(tmp_path, monkeypatch) -> None:
    # A renderer that breaks on the data cannot be produced with real parts on demand: stub that one call.
    # (A job runs write_reports in a child process: tests/test_report_process.py breaks that one for real
    # and checks the job's exit code, message and what it publishes.)
    import analyzer.report.notebook
    from analyzer.report import ReportError

    def broken_notebook(doc) -> bytes:
        raise ValueError("notebook renderer failed on the data")

    monkeypatch.setattr(analyzer.report.notebook, "notebook_bytes", broken_notebook)
    analysis = {"version": "1.0", "explanations": {"kernel_shap": {"label0": {
        "global_shap_values": {"[x](javascript:alert(1))": 0.4}, "expected_value": 0.5}}}}
    summary = JobSummary(dataset_source="data.csv", dataset_type="text/csv", n_rows=1, label=None,
                         label_values_or_threshold=None, facets=[], methods=["shap"], lucent_version="test",
                         started_at="2024-05-01T12:30:00Z")
    with pytest.raises(ReportError) as caught:
        write_reports(analysis, summary, tmp_path)
    assert str(caught.value) == ("the report could not be written (ipynb: ValueError: notebook renderer failed on "
                                 "the data)")
    assert sorted(p.name for p in caught.value.written) == ["report.html", "report.pdf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.pdf"]
