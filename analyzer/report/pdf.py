"""HTML report -> PDF, with WeasyPrint.

Why WeasyPrint: it lays out the very HTML page the HTML report is, using its print stylesheet
(A4, page numbers, page breaks, table headers repeated), so the PDF cannot say anything the HTML
does not. It is a pure-Python package over Pango (Debian ``libpango-1.0-0``, ``libpangoft2-1.0-0``);
no browser, X server or network is involved. wkhtmltopdf, which Clarify used, is unmaintained and
no longer packaged by Debian; a headless Chromium would add hundreds of megabytes to the image.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType


class PdfEngineMissing(RuntimeError):
    """WeasyPrint or the system libraries it needs are not installed."""


def require_pdf_engine():
    """The ``weasyprint`` module; ``PdfEngineMissing`` if it or the libraries it loads are missing."""
    try:
        return import_with_direct_library_names("weasyprint")
    except (ImportError, OSError) as exc:  # OSError: Pango missing, raised while loading the library
        raise PdfEngineMissing(
            f"WeasyPrint is not usable ({exc}); install the Python package 'weasyprint' and the Debian "
            "packages libpango-1.0-0 and libpangoft2-1.0-0") from exc


def import_with_direct_library_names(name: str) -> ModuleType:
    """Import ``name``, first with the shared libraries it opens through cffi found by their exact names only.

    Why: WeasyPrint opens each of Pango, GLib, HarfBuzz and fontconfig by trying up to six spellings of its
    name (Linux, macOS and Windows ones), and cffi hands every spelling that does not load as it is to
    ``ctypes.util.find_library``, which on Linux runs ``ldconfig -p``, then gcc and ld, for each: 54
    processes and 0.3 s of CPU each time a report process starts on a machine with a compiler. Each list
    holds the library's Linux file name (``libpango-1.0.so.0``), which the dynamic loader finds itself (its
    cache, ``LD_LIBRARY_PATH``), so the lookups find nothing more. If a library is not found that way, the
    import is done again the usual way, lookups included: a system where only they find it still works.
    """
    if sys.platform != "linux" or name in sys.modules:
        return importlib.import_module(name)
    try:
        with _no_library_lookups():
            return importlib.import_module(name)
    except OSError:
        for module in [module for module in sys.modules if module == name or module.startswith(f"{name}.")]:
            del sys.modules[module]
        return importlib.import_module(name)


@contextlib.contextmanager
def _no_library_lookups() -> Iterator[None]:
    lookup = ctypes.util.find_library
    ctypes.util.find_library = lambda _name: None
    try:
        yield
    finally:
        ctypes.util.find_library = lookup


def render_pdf(html: str) -> bytes:
    """The PDF of an HTML report page."""
    weasyprint = require_pdf_engine()
    # The page embeds everything as data: URIs; allowing nothing else keeps PDF rendering offline
    # even if a future change slipped in a link to a resource.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"}) if hasattr(weasyprint, "URLFetcher") else None
    return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()
