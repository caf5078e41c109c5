"""Human-readable reports of an analysis: ``<name>.html``, ``<name>.pdf`` and ``<name>.ipynb``.

Clarify writes these three files when ``methods.report`` is configured; risk and compliance teams
read them rather than ``analysis.json``. They are built from ``analysis.json`` alone plus a small
``JobSummary``, through one document model (``content.build_document``) rendered three ways:

* HTML: one self-contained page (inline CSS, SVG charts as data URIs, no external URL);
* PDF: the same HTML laid out for A4 by WeasyPrint;
* notebook: markdown + code cells with stored outputs; the code reloads ``analysis.json``.

Usage (the job passes its staging folder)::

    paths = write_reports(analysis, summary, staging_dir, name="report", title="Analysis Report")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from analyzer.output import write_bytes_atomic
from analyzer.report.summary import JobSummary

__all__ = ["JobSummary", "ReportError", "check_report_engines", "write_reports"]


class ReportError(Exception):
    """Some report files could not be written; ``written`` lists those that were.

    Raised after every other format has been tried, so that the message names every format that
    failed. A job exits 2 with it, ``analysis.json`` being already published and the formats that
    were written published beside it (docs/reports.md); this module never touches ``analysis.json``.
    """

    def __init__(self, message: str, written: list[Path], failed: dict[str, BaseException]):
        super().__init__(message)
        self.written = written
        self.failed = failed


def check_report_engines() -> None:
    """Raise ``ReportError`` now if a report format cannot be rendered on this machine (the PDF
    engine is missing), so that a job fails before it computes for hours rather than after."""
    from analyzer.report.pdf import PdfEngineMissing, require_pdf_engine

    try:
        require_pdf_engine()
    except PdfEngineMissing as exc:
        raise ReportError(f"the report cannot be written: pdf: {exc}", [], {"pdf": exc}) from exc


def write_reports(analysis: dict, summary: JobSummary, output_dir: Path, name: str = "report",
                  title: str = "Analysis Report", local_explanations: Path | None = None) -> list[Path]:
    """Write ``<name>.html``, ``<name>.pdf`` and ``<name>.ipynb`` into ``output_dir``.

    Each file is written under a temporary name and renamed into place, so a reader never sees half
    a file. A text job's report also reads ``local_explanations`` (default: ``explanations_shap/out.jsonl``
    in ``output_dir``), when present, to show a few records with their words coloured by SHAP value.
    Returns the paths
    written. If a format fails (typically the PDF, when WeasyPrint or the Pango libraries are
    missing), the others are still written, then ``ReportError`` is raised naming the failed formats
    and why. A job renders it in a process of its own (``analyzer.report.process``).
    """
    # Imported here, not at module level: they pull in matplotlib, pandas, nbformat and WeasyPrint,
    # which a job that writes no report (or `lucent validate`) should not pay for.
    from analyzer.report.content import build_document
    from analyzer.report.html import render_html
    from analyzer.report.notebook import notebook_bytes
    from analyzer.report.pdf import render_pdf

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        doc = build_document(analysis, summary, title,
                             local_explanations=local_explanations or output_dir / "explanations_shap" / "out.jsonl")
    except Exception as exc:  # a malformed analysis document: no format can be written
        raise ReportError(f"the report could not be written: could not read the analysis ({exc!r})", [],
                          {"all": exc}) from exc
    written: list[Path] = []
    failed: dict[str, BaseException] = {}
    try:
        producers: list[tuple[str, Callable[[], bytes]]] = [
            ("html", lambda: render_html(doc).encode("utf-8")),
            ("ipynb", lambda: notebook_bytes(doc)),
            # PDF last: its engine is the most likely to be missing. It is laid out from the page for print,
            # which shows what the HTML page shows (html.render_html).
            ("pdf", lambda: render_pdf(render_html(doc, for_print=True))),
        ]
        for extension, produce in producers:
            try:
                data = produce()
            except Exception as exc:  # one format's failure must not cost the others
                failed[extension] = exc
                continue
            target = output_dir / f"{name}.{extension}"
            try:
                write_bytes_atomic(target, data)
            except OSError as exc:  # a full disk: the formats that fit are still published
                failed[extension] = exc
                continue
            written.append(target)
    finally:
        doc.close()
    if failed:
        reasons = "; ".join(f"{ext}: {type(exc).__name__}: {exc}" for ext, exc in failed.items())
        raise ReportError(f"the report could not be written ({reasons})", written, failed) from next(iter(failed.values()))
    return written
