"""HTML report -> PDF, with WeasyPrint.

Why WeasyPrint: it lays out the very HTML page the HTML report is, using its print stylesheet
(A4, page numbers, page breaks, table headers repeated), so the PDF cannot say anything the HTML
does not. It is a pure-Python package over Pango (Debian ``libpango-1.0-0``, ``libpangoft2-1.0-0``);
no browser, X server or network is involved. wkhtmltopdf, which Clarify used, is unmaintained and
no longer packaged by Debian; a headless Chromium would add hundreds of megabytes to the image.
"""

from __future__ import annotations


class PdfEngineMissing(RuntimeError):
    """WeasyPrint or the system libraries it needs are not installed."""


def require_pdf_engine():
    """The ``weasyprint`` module; ``PdfEngineMissing`` if it or the libraries it loads are missing."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: Pango missing, raised while loading the library
        raise PdfEngineMissing(
            f"WeasyPrint is not usable ({exc}); install the Python package 'weasyprint' and the Debian "
            "packages libpango-1.0-0 and libpangoft2-1.0-0") from exc
    return weasyprint


def render_pdf(html: str) -> bytes:
    """The PDF of an HTML report page."""
    weasyprint = require_pdf_engine()
    # The page embeds everything as data: URIs; allowing nothing else keeps PDF rendering offline
    # even if a future change slipped in a link to a resource.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"}) if hasattr(weasyprint, "URLFetcher") else None
    return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()
