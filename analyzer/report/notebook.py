"""Document -> Jupyter notebook (nbformat 4) with stored outputs.

Text blocks become markdown cells. Every table and chart that came from ``views`` becomes a code
cell holding the recorded call (e.g. ``bias_chart(analysis, PRE_TRAINING, 'Sex', 0)``) and, as its
stored output, what that call returns. The notebook therefore reads without running, and re-running
it recomputes everything from ``analysis.json`` in the same folder: a hidden first code cell holds
the source of ``views`` so no Lucent installation is needed, only pandas and matplotlib.
"""

from __future__ import annotations

import inspect
import re

import nbformat
import pandas as pd
from nbformat import v4

from analyzer import bias_registry
from analyzer.report import views
from analyzer.report.document import BOLD, BulletList, Document, Figure, Fragment, Heading, Paragraph, Table

SETUP = """\
%matplotlib inline
%config InlineBackend.figure_formats = ["svg"]
import json
from pathlib import Path

import pandas as pd

pd.set_option("display.max_colwidth", None)  # show the readings in full
analysis = json.loads(Path("analysis.json").read_text(encoding="utf-8"))"""

INTRO = (
    "This notebook is the code form of the report. Its outputs are stored, so it reads without running. "
    "To recompute or extend it, keep it next to `analysis.json` and run all cells: the hidden cell below "
    "defines the functions that draw every table and chart (it needs pandas and matplotlib only), and "
    "the cell after it loads `analysis.json` into the variable `analysis`."
)

# The options under which stored table outputs are rendered: the ones SETUP sets in the kernel.
DISPLAY_OPTIONS = ("display.max_colwidth", None)


# Every ASCII punctuation character may be backslash-escaped in CommonMark (and in marked, which
# Jupyter uses); "<", ">" and "&" become entities instead, which every renderer reads literally.
_MARKDOWN_PUNCTUATION = re.compile(r"([!\"#$%'()*+,\-./:;=?@\[\\\]^_`{|}~])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_escape(text: str) -> str:
    """``text`` as literal markdown: no link, image, autolink, raw HTML, emphasis, heading, list or
    table syntax in it survives. Line breaks become spaces (a new line could start a block)."""
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", re.sub(r"\s*[\r\n]\s*", " ", text))
    return re.sub(r"[&<>]", lambda m: _ENTITIES[m[0]], text)  # after: the entities' ";" stays as it is


def _markdown_text(text: str) -> str:
    """A document text (plain text with ``**bold**`` markup) as markdown: the bold markup is kept,
    everything else is escaped. Every text that reaches a markdown cell goes through here; user data
    (feature names, facet and label values, text units) is in those texts."""
    parts, start = [], 0
    for match in BOLD.finditer(text):
        parts += [markdown_escape(text[start:match.start()]), f"**{markdown_escape(match[1])}**"]
        start = match.end()
    parts.append(markdown_escape(text[start:]))
    return "".join(parts)


def _markdown(block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_markdown_text(block.text)}"
    if isinstance(block, Paragraph):
        text = _markdown_text(block.text)
        return {"note": f"*{text}*", "error": f"⚠️ {text}"}.get(block.kind, text)
    if isinstance(block, BulletList):
        return "\n".join(f"- {_markdown_text(item)}" for item in block.items)
    if isinstance(block, Table):
        def row(cells: list[str]) -> str:
            return "| " + " | ".join(_markdown_text(c) for c in cells) + " |"
        lines = [row(block.columns), "|" + "---|" * len(block.columns)]
        return "\n".join([*lines, *(row(r) for r in block.rows)])
    raise TypeError(f"no markdown form for {type(block).__name__}")


def _code_cell(source: str, count: int, data: dict) -> nbformat.NotebookNode:
    cell = v4.new_code_cell(source, execution_count=count)
    cell.outputs = [v4.new_output("execute_result", data=data, execution_count=count)]
    return cell


def _result_data(block: Table | Figure | Fragment) -> dict:
    """What IPython shows for the value the block's code returns."""
    if isinstance(block, Fragment):
        return {"text/html": block.html, "text/plain": repr(block.view)}
    if isinstance(block, Figure):
        # The SVG the HTML report shows (one drawing per chart: a PNG was a second matplotlib render, a
        # fifth of a chart-heavy report's time); Jupyter, VS Code and GitHub display SVG outputs.
        return {"image/svg+xml": block.svg.decode("utf-8"), "text/plain": repr(block.figure)}
    with pd.option_context(*DISPLAY_OPTIONS):
        return {"text/html": block.frame._repr_html_(), "text/plain": repr(block.frame)}


def helper_source() -> str:
    """The source of ``views`` standing alone: after a copy of the metric registry it imports, whose
    import line is dropped (both import only the standard library, pandas and matplotlib)."""
    registry_import = re.compile(rf"^from {re.escape(bias_registry.__name__)} import .*\n", re.MULTILINE)
    own, found = registry_import.subn("", inspect.getsource(views))
    if found != 1:
        raise AssertionError(f"views must import {bias_registry.__name__} in one line, found {found}")
    return inspect.getsource(bias_registry).rstrip() + "\n\n\n" + own.rstrip() + "\n"


def render_notebook(doc: Document) -> nbformat.NotebookNode:
    """The document as a notebook whose code cells reload ``analysis.json`` from their own folder."""
    helpers = ("# Helper functions (Lucent's analyzer/bias_registry.py and analyzer/report/views.py), "
               "copied so this notebook runs without Lucent.\n" + helper_source())
    cells = [v4.new_markdown_cell(f"# {_markdown_text(doc.title)}\n\n{_markdown_text(doc.subtitle)}\n\n{INTRO}")]
    hidden = v4.new_code_cell(helpers, execution_count=1)
    hidden.metadata.update({"jupyter": {"source_hidden": True}, "tags": ["hide-input"]})
    cells += [hidden, v4.new_code_cell(SETUP, execution_count=2)]
    count = 2
    pending: list[str] = []  # consecutive text blocks share one markdown cell

    def flush() -> None:
        if pending:
            cells.append(v4.new_markdown_cell("\n\n".join(pending)))
            pending.clear()

    for block in doc.blocks:
        if isinstance(block, Table | Figure | Fragment) and block.code:
            flush()
            count += 1
            cells.append(_code_cell(block.code, count, _result_data(block)))
            if isinstance(block, Figure) and block.caption:
                pending.append(f"*{_markdown_text(block.caption)}*")
        else:
            pending.append(_markdown(block))
    flush()
    for number, cell in enumerate(cells):  # nbformat draws random ids: the same job would give other bytes
        cell.id = f"cell-{number}"
    notebook = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "title": doc.title,
    })
    nbformat.validate(notebook)
    return notebook


def notebook_bytes(doc: Document) -> bytes:
    return nbformat.writes(render_notebook(doc)).encode("utf-8")
