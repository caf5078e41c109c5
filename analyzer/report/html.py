"""Document -> one self-contained HTML page (also the input of the PDF renderer).

Self-contained means: inline CSS, charts as ``data:`` SVG images, no scripts, no external URL, so
the page opens offline and from an e-mail attachment. The same stylesheet carries the print rules
(A4, margins, page numbers, page breaks) that WeasyPrint applies for the PDF.
"""

from __future__ import annotations

import base64
import html

from analyzer.report.document import BOLD, BulletList, Document, Figure, Fragment, Heading, Paragraph, Table
from analyzer.report.pdf import svg_for_print

# Print: the contents list is one column as a plain block formatting context (``display: flow-root``), not a
# one-column multicol container (``columns: 1``), which lays out the same box in every pixel but which WeasyPrint
# lays out through its column balancing: 0.05-0.1 s of CPU on the first page of every PDF (tests/test_report_print.py).
CSS = """
:root { --ink: #222; --muted: #5f6368; --rule: #d9dce1; --band: #f4f6f8; --accent: #0072b2; --error: #b3261e; }
* { box-sizing: border-box; }
html { font-size: 15px; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main, header.cover, nav.toc { max-width: 980px; margin: 0 auto; padding: 0 28px; }
header.cover { padding-top: 36px; padding-bottom: 8px; border-bottom: 3px solid var(--accent); }
header.cover h1 { font-size: 2rem; margin: 0 0 4px; }
header.cover .subtitle { color: var(--muted); margin: 0 0 8px; overflow-wrap: anywhere; }
nav.toc { margin-top: 18px; }
nav.toc h2 { font-size: 1rem; margin: 0 0 4px; border: 0; padding: 0; }
nav.toc ol { margin: 0 0 8px; padding-left: 1.4em; columns: 2; }
nav.toc a { color: var(--accent); text-decoration: none; }
h2 { font-size: 1.45rem; margin: 2.2em 0 0.5em; padding-bottom: 4px; border-bottom: 1px solid var(--rule); }
h3 { font-size: 1.15rem; margin: 1.8em 0 0.4em; }
h4 { font-size: 1.02rem; margin: 1.5em 0 0.4em; }
p, ul { margin: 0.5em 0 0.8em; }
li { margin-bottom: 0.35em; }
p.note { color: var(--muted); font-size: 0.93rem; }
p.error { color: var(--error); border-left: 3px solid var(--error); padding-left: 10px; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; margin: 0.6em 0 1.2em;
        font-size: 0.87rem; }
th { text-align: left; background: var(--band); font-weight: 600; border-bottom: 2px solid var(--rule); }
th, td { padding: 5px 7px; vertical-align: top; overflow-wrap: break-word; }
td { border-bottom: 1px solid var(--rule); }
table.facts { width: auto; min-width: 60%; }
table.facts td:first-child { color: var(--muted); white-space: nowrap; padding-right: 24px; }
table.facts thead { display: none; }
table.metrics td:first-child, table.glossary td:first-child { font-weight: 700; }
table.metrics td.num { font-variant-numeric: tabular-nums; text-align: right; }
table.metrics th.num { text-align: right; }
th.mid, td.mid { text-align: center; }
table.metrics tr.error td { color: var(--error); }
table.metrics td:nth-child(2) { color: var(--muted); }
figure { margin: 0.8em 0 1.2em; }
figure img { display: block; width: 100%; max-width: 760px; height: auto; }
figure figcaption { color: var(--muted); font-size: 0.88rem; margin-top: 4px; max-width: 760px; }
figure.half { display: inline-block; width: 49%; vertical-align: top; margin-right: 0.5%; }
figure.half img { max-width: 380px; }
table.tokens { width: auto; min-width: 50%; }
table.tokens td:first-child, table.tokens th:first-child { text-align: right; width: 4em; }
table.tokens td:nth-child(3) { font-variant-numeric: tabular-nums; }
div.text-example { margin: 0.3em 0 1.2em; max-width: 760px; }
div.text-example div.text { font-size: 0.95rem; }

@page { size: A4; margin: 15mm 13mm 17mm 13mm;
        @bottom-left { content: string(doctitle); font: 8pt "DejaVu Sans", sans-serif; color: #5f6368; }
        @bottom-right { content: "Page " counter(page) " of " counter(pages); font: 8pt "DejaVu Sans", sans-serif;
                        color: #5f6368; } }
@media print {
  html { font-size: 9.5pt; }
  body { font-family: "DejaVu Sans", Arial, sans-serif; line-height: 1.4; }
  main, header.cover, nav.toc { max-width: none; padding: 0; }
  header.cover { padding-top: 0; }
  header.cover h1 { string-set: doctitle content(); font-size: 20pt; }
  nav.toc ol { columns: auto; display: flow-root; }
  h2 { font-size: 14pt; margin-top: 1.2em; }
  h3 { font-size: 11.5pt; }
  h4 { font-size: 10.5pt; }
  h2, h3, h4 { break-after: avoid; }
  .page-break { break-before: page; margin-top: 0; }
  table { font-size: 9pt; }
  th, td { padding: 3px 5px; }
  tr, figure, table.facts, div.text-example { break-inside: avoid; }
  figure img { max-width: 100%; }
  figure figcaption { font-size: 9pt; }
  p.note { font-size: 9pt; }
}
"""


def inline(text: str) -> str:
    """Escape text and turn ``**bold**`` into ``<strong>``."""
    return BOLD.sub(r"<strong>\1</strong>", html.escape(text, quote=False))


def _table(block: Table) -> str:
    parts = [f'<table class="{block.kind}">']
    if block.widths:
        total = sum(block.widths)
        parts.append("<colgroup>" + "".join(f'<col style="width:{w / total:.1%}">' for w in block.widths)
                     + "</colgroup>")
    # Numbers align on the right so their decimals line up; ideals are centred under their header.
    align = {i: {"Value": " class=num", "Ideal": " class=mid"}.get(c, "") for i, c in enumerate(block.columns)}
    cells = "".join(f'<th{align[i]} scope="col">{inline(c)}</th>' for i, c in enumerate(block.columns))
    parts.append(f"<thead><tr>{cells}</tr></thead><tbody>")
    for r, row in enumerate(block.rows):
        kind = block.row_kinds[r] if block.row_kinds else ""
        cells = "".join(f"<td{align[i]}>{inline(v)}</td>" for i, v in enumerate(row))
        parts.append(f'<tr class="{kind}">{cells}</tr>' if kind else f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _figure(block: Figure, for_print: bool = False) -> str:
    caption = f"<figcaption>{inline(block.caption)}</figcaption>" if block.caption else ""
    css = ' class="half"' if block.width == "half" else ""
    source = ("data:image/svg+xml;base64," + base64.b64encode(svg_for_print(block.svg)).decode("ascii")
              if for_print else block.data_uri())
    return f'<figure{css}><img src="{source}" alt="{html.escape(block.alt)}">{caption}</figure>'


def _block(block, colours: dict | None = None) -> str:
    if isinstance(block, Heading):
        css = ' class="page-break"' if block.page_break else ""
        return f'<h{block.level} id="{block.anchor}"{css}>{inline(block.text)}</h{block.level}>'
    if isinstance(block, Paragraph):
        css = f' class="{block.kind}"' if block.kind != "text" else ""
        return f"<p{css}>{inline(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block, colours is not None)
    if isinstance(block, Fragment):  # markup from views, which escapes the text it holds
        if colours is not None and hasattr(block.view, "print_html"):
            return block.view.print_html(colours)
        return block.html
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(doc: Document, *, for_print: bool = False) -> str:
    """The document as one HTML page. ``for_print``: the page the PDF is laid out from, which shows the same
    things with markup WeasyPrint lays out faster: the texts coloured by SHAP value carry no tooltips and
    take their colours from classes (``views.TextHighlight.print_html``), and the charts' SVG has no style
    attributes (``pdf.svg_for_print``)."""
    sections = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    toc = "".join(f'<li><a href="#{h.anchor}">{inline(h.text)}</a></li>' for h in sections)
    colours: dict | None = {} if for_print else None
    body = "\n".join(_block(b, colours) for b in doc.blocks)
    # Class names and colours come from views (``shapN``, ``rgba(...)``), never from the data.
    css = CSS + "".join(f".{name}{{background-color:{colour}}}\n" for colour, name in (colours or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="Lucent">
<title>{html.escape(doc.title)}</title>
<style>{css}</style>
</head>
<body>
<header class="cover"><h1>{html.escape(doc.title)}</h1><p class="subtitle">{html.escape(doc.subtitle)}</p></header>
<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>
<main>
{body}
</main>
</body>
</html>
"""
