"""The report as data: a flat list of blocks that each renderer (HTML, PDF via HTML, notebook) walks.

Content is decided once, in ``content.py``; renderers only decide how a block looks. Text uses one
inline markup, ``**bold**``, which every renderer understands; everything else is plain text and is
escaped by the renderer.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure as MplFigure


@dataclass
class Heading:
    text: str
    level: int  # 1 = document title, 2 = section (listed in the contents), 3-4 = subsections
    anchor: str = ""
    page_break: bool = False  # start a new page in the PDF


@dataclass
class Paragraph:
    text: str
    kind: str = "text"  # "text", "note" (secondary), "error" (something did not compute)


@dataclass
class BulletList:
    items: list[str]


@dataclass
class Table:
    """A table. With ``code`` it is reproducible in the notebook: the code evaluates to ``frame``."""

    columns: list[str]
    rows: list[list[str]]
    kind: str = "plain"  # "plain", "facts" (key/value), "metrics" (the bias tables)
    widths: list[float] | None = None  # relative column widths, so wide tables fit an A4 page
    row_kinds: list[str] | None = None  # per row: "" or "error"
    code: str | None = None
    frame: pd.DataFrame | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, code: str, **kwargs) -> Table:
        """The table that ``code`` (a call into ``views``) produced, keeping the frame for the notebook."""
        flat = frame.reset_index() if frame.index.name else frame
        rows = [[_cell(v) for v in row] for row in flat.itertuples(index=False)]
        return cls(columns=[str(c) for c in flat.columns], rows=rows, code=code, frame=frame, **kwargs)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


@dataclass
class Figure:
    """A matplotlib chart with its caption, the alt text, and the notebook code that draws it."""

    figure: MplFigure
    caption: str
    alt: str
    code: str
    width: str = "full"  # "full" or "half" (two side by side)

    @cached_property
    def svg(self) -> bytes:
        # Text as SVG text (svg.fonttype none), not as glyph paths: the SVG is less than half the size and
        # WeasyPrint lays the PDF out in half the time (0.15 s against 0.29 s of CPU for a SHAP report).
        return self._save("svg", metadata={"Date": None})

    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg).decode("ascii")

    def _save(self, fmt: str, **kwargs) -> bytes:
        import matplotlib

        buffer = io.BytesIO()
        # A fixed hash salt keeps SVG ids identical from run to run (reproducible reports).
        with matplotlib.rc_context({"svg.hashsalt": "lucent", "svg.fonttype": "none"}):
            self.figure.savefig(buffer, format=fmt, facecolor="white", **kwargs)
        # The layout is now solved; freezing it spares the next format a second (slow) layout pass.
        self.figure.set_layout_engine("none")
        return buffer.getvalue()


@dataclass
class Fragment:
    """Markup made by a ``views`` object (its ``_repr_html_``), e.g. a text coloured by attribution.

    ``views`` escapes every text it puts in the markup; the HTML renderer includes it as it is and the
    notebook stores it as the output of ``code``, so all formats show the same thing.
    """

    view: Any  # has _repr_html_() and a plain-text __repr__()
    code: str

    @cached_property
    def html(self) -> str:
        return self.view._repr_html_()


Block = Heading | Paragraph | BulletList | Table | Figure | Fragment


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def close(self) -> None:
        """Let go of the matplotlib figures (they hold most of the memory of a document); their SVG stays. Not
        ``Figure.clear()``: it rebuilds each axes it empties, 11 ms of CPU a chart (a report waited for them before
        its process answered), and a figure the document no longer holds is freed as well."""
        for block in self.blocks:
            if isinstance(block, Figure):
                block.figure = None  # type: ignore[assignment]


def slug(text: str) -> str:
    """An HTML id from a heading: lower case, ASCII letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


BOLD = re.compile(r"\*\*(.+?)\*\*")
