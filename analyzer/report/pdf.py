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
import re
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


_font_configs: list = []  # the process's one FontConfiguration (render_pdf)


def _font_config(weasyprint: ModuleType):
    """One ``FontConfiguration`` for every PDF of this process, the warm-up's (``process.warm_up``) and the report's.

    Why: WeasyPrint makes a new one (a new Pango font map) for each document when given none, so the report
    found every font cold: loaded again, and every text shaped without Pango's and HarfBuzz's caches. Shared,
    the report's PDF takes 0.1-0.2 s less CPU (text demo job, 3.9 s -> 3.7 s), and its bytes are the same
    (tests/test_report_print.py). A configuration holds only the fonts found on the system plus a page's
    ``@font-face`` fonts; the report's pages declare none.
    """
    if not _font_configs:
        from weasyprint.text.fonts import FontConfiguration

        _font_configs.append(FontConfiguration())
    return _font_configs[0]


def render_pdf(html: str) -> bytes:
    """The PDF of an HTML report page."""
    weasyprint = require_pdf_engine()
    # The page embeds everything as data: URIs; allowing nothing else keeps PDF rendering offline
    # even if a future change slipped in a link to a resource.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"}) if hasattr(weasyprint, "URLFetcher") else None
    return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(font_config=_font_config(weasyprint))


# --- Charts for print ---------------------------------------------------------------------------------------

_TAG = re.compile(rb"<[^<>]*>")  # matplotlib escapes < and > in texts and attribute values: this finds tags only
_ATTRIBUTE = re.compile(rb"""\s([\w:.-]+)=("[^"]*"|'[^']*')""")
_STYLE_SHEET = re.compile(rb"<style[^>]*>(.*?)</style>", re.S)
_PROPERTY = re.compile(rb"([a-z-]+)\s*:")
# Properties matplotlib puts in style attributes that WeasyPrint's SVG renderer reads as well from presentation
# attributes; anything else keeps its style attribute.
_PRESENTATION = frozenset(name.encode() for name in (
    "fill", "fill-opacity", "fill-rule", "font-family", "font-size", "font-stretch", "font-style", "font-weight",
    "opacity", "stroke", "stroke-dasharray", "stroke-dashoffset", "stroke-linecap", "stroke-linejoin",
    "stroke-miterlimit", "stroke-opacity", "stroke-width", "text-anchor"))


def svg_for_print(svg: bytes) -> bytes:
    """A matplotlib SVG that WeasyPrint draws in less time, and the same: each ``style`` attribute becomes
    presentation attributes (``style="fill: #fff; stroke: none"`` -> ``fill="#fff" stroke="none"``).

    WeasyPrint parses every style attribute with its CSS parser, 10-20 % of the time it spends drawing a
    chart (0.1 s of CPU for the text demo's five charts, paired measurements). Its SVG renderer merges a
    style attribute into the element's attributes (a style beats a style sheet rule, a rule beats an
    attribute), so the drawing is the same whenever the SVG's own style sheet sets none of the properties
    moved (matplotlib's sets ``stroke-linejoin`` and ``stroke-linecap`` on every element: those stay styles).
    An element keeps its whole style attribute when it holds any other property, a property twice, or one
    that the element also has as an attribute. Tested: the pages come out pixel for pixel the same.
    """
    sheet = {name for rules in _STYLE_SHEET.findall(svg) for name in _PROPERTY.findall(rules)}
    movable = _PRESENTATION - sheet

    def tag(match: re.Match) -> bytes:
        text = match[0]
        attributes = {m[1]: m for m in _ATTRIBUTE.finditer(text)}
        style = attributes.get(b"style")
        if style is None or not style[2].startswith(b'"'):
            return text
        moved: dict[bytes, bytes] = {}
        for declaration in style[2][1:-1].split(b";"):
            if not declaration.strip():
                continue
            name, colon, value = declaration.partition(b":")
            name, value = name.strip(), value.strip()
            if not colon or name not in movable or name in moved or name in attributes or b'"' in value:
                return text
            moved[name] = value
        replacement = b"".join(b" " + name + b'="' + value + b'"' for name, value in moved.items())
        return text[:style.start()] + replacement + text[style.end():]

    return _TAG.sub(tag, svg)

