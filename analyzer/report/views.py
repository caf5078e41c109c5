"""Tables and charts of a Clarify ``analysis.json``: pandas DataFrames and matplotlib Figures.

This module is where every number, reading and chart of the report is computed from the analysis
document. It imports only the standard library, pandas, matplotlib and ``analyzer.bias_registry``
(itself standard library only) because its source is copied verbatim into the report notebook, after
a copy of the registry: the notebook's code cells call these same functions on ``analysis.json``, so
a reader can re-run and extend it without installing Lucent, and the notebook cannot drift from the
HTML and PDF reports.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: no global state, no
GUI backend (rendering goes through Agg / the SVG backend), and a notebook shows a returned figure
exactly once.
"""

import heapq
import html
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analyzer.bias_registry import BIAS_METRICS, BiasMetric

PRE_TRAINING = "pre_training_bias_metrics"
POST_TRAINING = "post_training_bias_metrics"

# Okabe-Ito colours: distinguishable with the common forms of colour blindness, and in greyscale.
AGAINST_GROUP = "#d55e00"  # the value favours everyone else
FOR_GROUP = "#0072b2"  # the value favours the group
NO_DIRECTION = "#8c8c8c"  # a distance: says how different, not who is favoured
INK = "#222222"

CHART_FONT_SIZE = 9  # points; the PDF shows charts at about 1:1 scale, so this is the printed size


# Each metric's facts (name, description, range, ideal, direction, what it measures) come from the one
# registry; the report notebook's copy of this module has a copy of the registry above it.
METRICS: dict[str, BiasMetric] = {metric.name: metric for metric in BIAS_METRICS}
_RANGE_BOUNDS = {math.inf: "∞", -math.inf: "−∞", math.log(2): "ln 2 ≈ 0.69", math.sqrt(2): "√2 ≈ 1.41"}


def range_text(metric: BiasMetric) -> str:
    """The values ``metric`` can take, as the report prints them: ``"−1 to 1"``, ``"0 to ∞"``."""
    low, high = (_RANGE_BOUNDS.get(bound, format(bound, "g").replace("-", "−"))
                 for bound in (metric.low, metric.high))
    return f"{low} to {high}"


# ---------------------------------------------------------------------------------------------
# Formatting

def format_value(value) -> str:
    """A metric value as the report prints it: 4 decimals, ``Infinity`` kept, null as ``not computed``."""
    if value is None:
        return "not computed"
    if isinstance(value, str):  # Clarify writes +-inf as the strings "Infinity" / "-Infinity"
        return value
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) < 0.0001:
        return f"{value:.2e}"
    return f"{value:.4f}"


def as_number(value) -> float | None:
    """A metric value as a float (``"Infinity"`` -> inf); None when the metric was not computed."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("infinity", "inf", "+infinity"):
            return math.inf
        if text in ("-infinity", "-inf"):
            return -math.inf
        try:
            return float(text)
        except ValueError:
            return None
    return float(value)


def group_name(facet: str, value_or_threshold: str) -> str:
    """How a sensitive group is named in headings: ``Sex = 0``, ``Age in (40, 90]``, ``Race is 1 or 2``."""
    value = str(value_or_threshold)
    if re.fullmatch(r"[(\[].*,.*[)\]]", value):  # a pandas interval: the facet was thresholded
        return f"{facet} in {value}"
    if "," in value:
        *head, last = [v.strip() for v in value.split(",")]
        return f"{facet} is {', '.join(head)} or {last}"
    return f"{facet} = {value}"


def _ideal(value: float) -> str:
    return format(value, "g")


def _pp(value: float) -> str:
    """A difference of two shares, in percentage points."""
    return f"{abs(value) * 100:.1f} percentage points"


# ---------------------------------------------------------------------------------------------
# Plain-language readings, one per metric. Each gets a finite or infinite float and a Context.

@dataclass(frozen=True)
class Context:
    group: str  # e.g. "Sex = 0"
    positive: str  # e.g. "Target = 1"


def _negligible(value: float) -> bool:
    return abs(value) < 0.0005  # rounds to 0.0 percentage points


def _difference(value: float, higher_outside: str, higher_inside: str, same: str) -> str:
    """Readings of a-minus-d metrics: positive means the quantity is higher for everyone else."""
    if _negligible(value):
        return same
    return higher_outside if value > 0 else higher_inside


def _read_ci(v: float, c: Context) -> str:
    share = (1 - v) / 2  # CI = (n_a - n_d) / n, so n_d / n = (1 - CI) / 2
    if _negligible(v):
        return f"The group and everyone else each make up half of the rows ({share:.1%} vs {1 - share:.1%})."
    fewer = "fewer" if v > 0 else "more"
    return (f"The group ({c.group}) is {share:.1%} of the rows and everyone else {1 - share:.1%}: "
            f"the data has {fewer} examples of the group than of everyone else.")


def _read_dpl(v: float, c: Context, what: str = "labelled positive") -> str:
    base = f"The share of rows {what} ({c.positive}) is {_pp(v)} higher"
    return _difference(v, f"{base} for everyone else than for the group (against the group).",
                       f"{base} for the group than for everyone else (in favour of the group).",
                       f"The share of rows {what} ({c.positive}) is the same inside and outside the group.")


def _read_dppl(v: float, c: Context) -> str:
    return _read_dpl(v, c, "the model predicts positive")


def _read_kl(v: float, c: Context) -> str:
    if v < 0:
        return ("Negative: some label value occurs in only one of the two groups, and the metric then "
                "compares only the shared values. Read DPL and the label distribution instead.")
    return (f"The label distributions of the group and of everyone else differ by {v:.4f} nats "
            "(0 = identical; no upper limit; no direction).")


def _read_js(v: float, c: Context) -> str:
    return (f"The label distributions differ by {v:.4f} on a scale from 0 (identical) to about 0.69 "
            "(no overlap); no direction.")


def _read_lp(v: float, c: Context) -> str:
    return (f"The label distributions are {v:.4f} apart on a scale from 0 (identical) to about 1.41 "
            "(no overlap); no direction.")


def _read_tvd(v: float, c: Context) -> str:
    return (f"{v:.1%} of one group's label distribution would have to change to match the other's "
            "(0% = identical); no direction.")


def _read_ks(v: float, c: Context) -> str:
    return (f"The biggest difference between the group and everyone else in the share of any one label "
            f"value is {_pp(v)}; no direction.")


def _read_cdd(v: float, c: Context, what: str = "labels") -> str:
    return _difference(
        v,
        f"Within subgroups, the group's share of the negative {what} is on average {_pp(v)} larger "
        f"than its share of the positive {what} (against the group).",
        f"Within subgroups, the group's share of the positive {what} is on average {_pp(v)} larger "
        f"than its share of the negative {what} (in favour of the group).",
        f"Within subgroups, the group gets the same share of positive and negative {what}.")


def _read_cddpl(v: float, c: Context) -> str:
    return _read_cdd(v, c, "predictions")


def _read_di(v: float, c: Context) -> str:
    if math.isinf(v):
        return "Everyone else received no positive predictions while the group did."
    if v == 0:
        return "The group received no positive predictions (DI is also 0 when nobody did)."
    if abs(v - 1) < 0.0005:
        return "The group is predicted positive as often as everyone else."
    text = (f"The group is predicted positive {v:.2f} times as often as everyone else "
            f"({abs(1 - v):.0%} {'less' if v < 1 else 'more'} often).")
    if v < 0.8:
        text += " Below 0.8, the “four-fifths” level often used as a warning sign."
    return text


def _read_dca(v: float, c: Context) -> str:
    if math.isinf(v):
        who = "Everyone else" if v > 0 else "The group"
        return f"{who} has actual positives but received no positive predictions at all."
    return _difference(
        v,
        f"Relative to their actual positives, everyone else gets fewer positive predictions than the "
        f"group (ratio difference {abs(v):.2f}): the model is stricter with everyone else.",
        f"Relative to its actual positives, the group gets fewer positive predictions than everyone "
        f"else (ratio difference {abs(v):.2f}): the model is stricter with the group.",
        "Relative to their actual positives, the group and everyone else get positive predictions alike.")


def _read_dcr(v: float, c: Context) -> str:
    if math.isinf(v):
        who = "The group" if v > 0 else "Everyone else"
        return f"{who} has actual negatives but received no negative predictions at all."
    return _difference(
        v,
        f"Relative to its actual negatives, the group gets fewer negative predictions than everyone "
        f"else (ratio difference {abs(v):.2f}): the model rejects the group less readily.",
        f"Relative to its actual negatives, the group gets more negative predictions than everyone "
        f"else (ratio difference {abs(v):.2f}): the model rejects the group more readily.",
        "Relative to their actual negatives, the group and everyone else get negative predictions alike.")


def _read_rd(v: float, c: Context) -> str:
    return _difference(
        v,
        f"Of the actually positive rows, the model finds {_pp(v)} more outside the group than "
        "inside it (lower recall for the group).",
        f"Of the actually positive rows, the model finds {_pp(v)} more inside the group than "
        "outside it (higher recall for the group).",
        "The model finds actual positives equally often inside and outside the group.")


def _read_sd(v: float, c: Context) -> str:
    # SD is d minus a: positive means the group is better off.
    return _difference(
        v,
        f"Of the actually negative rows, the model is right {_pp(v)} more often for the group "
        "than for everyone else (higher specificity for the group).",
        f"Of the actually negative rows, the model is right {_pp(v)} less often for the group "
        "than for everyone else (more false positives in the group).",
        "The model recognises actual negatives equally well inside and outside the group.")


def _read_dar(v: float, c: Context) -> str:
    return _difference(
        v,
        f"When the model predicts positive, it is right {_pp(v)} more often for everyone else "
        "than for the group (lower precision for the group).",
        f"When the model predicts positive, it is right {_pp(v)} more often for the group "
        "than for everyone else (higher precision for the group).",
        "Positive predictions are equally often right inside and outside the group.")


def _read_drr(v: float, c: Context) -> str:
    # DRR is d minus a.
    return _difference(
        v,
        f"When the model predicts negative, it is right {_pp(v)} more often for the group "
        "than for everyone else.",
        f"When the model predicts negative, it is right {_pp(v)} less often for the group than "
        "for everyone else (more of the group's rejections are wrong).",
        "Negative predictions are equally often right inside and outside the group.")


def _read_ad(v: float, c: Context) -> str:
    return _difference(
        v,
        f"The model is right {_pp(v)} more often for everyone else than for the group.",
        f"The model is right {_pp(v)} more often for the group than for everyone else.",
        "The model is equally accurate inside and outside the group.")


def _read_te(v: float, c: Context) -> str:
    if math.isinf(v):
        who = "The group" if v > 0 else "Everyone else"
        return f"{who} has false negatives but no false positives, so its ratio is infinite."
    return _difference(
        v,
        f"The group has {abs(v):.2f} more false negatives per false positive than everyone else: "
        "its errors are more often wrong rejections.",
        f"Everyone else has {abs(v):.2f} more false negatives per false positive than the group: "
        "the group's errors are more often wrong acceptances.",
        "Errors are split between false negatives and false positives alike in both.")


def _read_ft(v: float, c: Context) -> str:
    # Clarify's implementation sign (bias-metrics.md 4.1): negative = rejected although similar
    # people outside the group are accepted. The AWS documentation words it the other way round.
    return _difference(
        -v,
        f"Net {abs(v):.1%} of the group are predicted negative although their most similar people "
        "outside the group are predicted positive (against the group).",
        f"Net {abs(v):.1%} of the group are predicted positive although their most similar people "
        "outside the group are predicted negative (in favour of the group).",
        "Group members get the same predictions as their most similar people outside the group.")


def _read_ge(v: float, c: Context) -> str:
    if _negligible(v):
        return "The model gives every row the same benefit (this metric covers all rows, not the group)."
    return (f"The benefit the model gives each row varies with an inequality of {v:.4f} (0 = equal); "
            "it covers all rows, so it is the same for every group.")


READINGS = {
    "CI": _read_ci, "DPL": _read_dpl, "KL": _read_kl, "JS": _read_js, "LP": _read_lp, "TVD": _read_tvd,
    "KS": _read_ks, "CDDL": _read_cdd, "DPPL": _read_dppl, "DI": _read_di, "DCA": _read_dca,
    "DCR": _read_dcr, "RD": _read_rd, "SD": _read_sd, "DAR": _read_dar, "DRR": _read_drr, "AD": _read_ad,
    "CDDPL": _read_cddpl, "TE": _read_te, "FT": _read_ft, "GE": _read_ge,
}


def _sampled_note(metric: dict) -> str:
    """Lucent's note on a value estimated from a sample (the Spark engine's Flip Test beyond a broadcast)."""
    notes = metric.get("lucent") or {}
    if not notes.get("sampled"):
        return ""
    low, high = notes.get("interval", [None, None])
    return (f" Sampled: estimated from {notes.get('sample_rows')} of the group's {notes.get('facet_d_rows')} rows, "
            f"{notes.get('confidence', 0.95):.0%} interval [{format_value(low)}, {format_value(high)}].")


def reading(metric: dict, context: Context) -> str:
    """What one metric entry of analysis.json means for the group, in one or two sentences."""
    if metric.get("value") is None:
        error = metric.get("error")
        return f"Not computed. Reason given: {error}" if error else "Not computed (no value in the analysis)."
    value = as_number(metric["value"])
    read = READINGS.get(metric.get("name", ""))
    if value is None or read is None:
        return ""
    if math.isinf(value) and not METRICS[metric["name"]].infinite:
        return "Infinite: a division by zero for this group."
    return read(value, context) + _sampled_note(metric)


# ---------------------------------------------------------------------------------------------
# Bias tables and charts

def facet_groups(analysis: dict, stage: str) -> list[tuple[str, int, str]]:
    """(facet, index, value_or_threshold) of every group compared in a bias section, in file order."""
    facets = (analysis.get(stage) or {}).get("facets") or {}
    return [(facet, i, str(entry.get("value_or_threshold")))
            for facet, entries in facets.items() for i, entry in enumerate(entries)]


def _group_entry(analysis: dict, stage: str, facet: str, index: int) -> tuple[dict, Context]:
    section = analysis[stage]
    entry = section["facets"][facet][index]
    label = section.get("label", "label")
    positive = section.get("label_value_or_threshold", "positive")
    context = Context(group=group_name(facet, entry.get("value_or_threshold")),
                      positive=group_name(str(label), str(positive)))
    return entry, context


def bias_table(analysis: dict, stage: str, facet: str, index: int = 0) -> pd.DataFrame:
    """Every metric of one group: name, value, ideal, range and what the value means.

    ``stage`` is ``"pre_training_bias_metrics"`` or ``"post_training_bias_metrics"``; ``index`` picks
    the group among ``analysis[stage]["facets"][facet]`` (one per value in one-vs-rest analyses).
    """
    entry, context = _group_entry(analysis, stage, facet, index)
    rows = []
    for metric in entry.get("metrics", []):
        info = METRICS.get(metric.get("name"))
        rows.append({
            "Metric": metric.get("name", "?"),
            "Full name": metric.get("description") or (info.description if info else ""),
            "Value": format_value(metric.get("value")),
            "Ideal": _ideal(info.ideal) if info else "",
            "Range": range_text(info) if info else "",
            "What this value means": reading(metric, context),
        })
    columns = ["Metric", "Full name", "Value", "Ideal", "Range", "What this value means"]
    return pd.DataFrame(rows, columns=columns).set_index("Metric")


@lru_cache(maxsize=1)
def _font_families() -> tuple[str, ...]:
    """DejaVu Sans, then a CJK font when one is installed (``fonts-wqy-microhei``): matplotlib falls back
    glyph by glyph along ``font.family``, so Chinese and Japanese tokens draw instead of empty boxes."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in ("WenQuanYi Micro Hei",) if name in installed))


def _new_figure(width: float, height: float) -> Figure:
    import matplotlib

    # Texts take their font from rcParams when created; every chart starts here, so this is where it is set.
    matplotlib.rcParams["font.family"] = list(_font_families())
    # Every text of a chart is drawn as written: feature names, category values, label headers and tokens
    # come from the data, and matplotlib would read a "$" in them as the start of mathtext (a name that
    # does not parse, e.g. "US$_$", failed the whole report; one that does was drawn as a formula). No
    # chart uses mathtext, and numbers are formatted without it. Texts read these when created (tick
    # labels possibly while drawing), so they stay set, like the font.
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["axes.formatter.use_mathtext"] = False
    fig = Figure(figsize=(width, height))
    fig.set_layout_engine("constrained", h_pad=0.06, w_pad=0.06)
    return fig


def _style_axes(ax, grid_axis: str = "x") -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=CHART_FONT_SIZE, colors=INK)
    ax.grid(axis=grid_axis, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def _bar_colour(name: str, value: float) -> str:
    info = METRICS.get(name)
    if info is None or info.direction == 0 or value == 0:
        return NO_DIRECTION
    reference = value - info.ideal
    return AGAINST_GROUP if reference * info.direction > 0 else FOR_GROUP


def bias_chart(analysis: dict, stage: str, facet: str, index: int = 0) -> Figure | None:
    """Horizontal bars of one group's metrics around zero, coloured by whom the value favours.

    DI, whose ideal is 1 rather than 0, gets its own small panel with the 0.8 "four-fifths" line.
    Infinite and missing values cannot be drawn; they are listed under the chart. Values far beyond
    the others (unbounded metrics such as TE) are cut at the edge and labelled with their value.
    Returns None when no metric has a drawable value.
    """
    entry, _ = _group_entry(analysis, stage, facet, index)
    bars: list[tuple[str, float]] = []
    di: float | None = None
    for metric in entry.get("metrics", []):
        name, value = metric.get("name", "?"), as_number(metric.get("value"))
        if value is None or not math.isfinite(value):
            continue
        if name == "DI":
            di = value
        else:
            bars.append((name, value))
    skipped = skipped_metrics(analysis, stage, facet, index)
    if not bars and di is None:
        return None
    # The list of what is not drawn goes under the chart, in lines that fit its width.
    not_drawn = textwrap.wrap("Not drawn (no finite value): " + ", ".join(skipped), 120) if skipped else []

    # Scale to the values that fit [-1.5, 1.5] (all shares and differences of shares), so a TE of 24
    # does not squash the rest into invisible slivers; anything beyond is cut at the edge.
    in_scale = [abs(v) for _, v in bars if abs(v) <= 1.5]
    limit = max([*in_scale, 0.05]) * 1.35
    # Only show the negative side when a value needs it: all-positive charts (distances) use the width.
    left = -limit if any(v < 0 for _, v in bars) else -limit * 0.04
    n = len(bars)
    height = 0.95 + 0.27 * n + (0.75 if di is not None else 0) + 0.14 * len(not_drawn) + (0.06 if skipped else 0)
    fig = _new_figure(7.2, height)
    if bars and di is not None:
        ax, ax_di = fig.subplots(2, 1, height_ratios=[max(n, 1), 1.6])
    elif bars:
        ax, ax_di = fig.subplots(), None
    else:
        ax, ax_di = None, fig.subplots()

    if ax is not None:
        names = [name for name, _ in bars]
        shown = [max(left, min(limit, v)) for _, v in bars]
        positions = list(range(n))[::-1]  # first metric on top
        ax.barh(positions, shown, height=0.62, color=[_bar_colour(nm, v) for nm, v in bars])
        ax.axvline(0, color=INK, linewidth=1)
        ax.set_yticks(positions, names)
        ax.set_xlim(left, limit)
        ax.set_ylim(-0.6, n - 0.4)
        for y, (_, value), drawn in zip(positions, bars, shown, strict=True):
            clipped = drawn != value
            text = format_value(value) + (" ▶" if clipped and value > 0 else "")
            text = ("◀ " + text) if clipped and value < 0 else text
            if clipped:  # label inside the bar, at the edge
                ax.text(drawn - math.copysign(limit * 0.02, value), y, text, va="center",
                        ha="right" if value > 0 else "left", color="white", fontsize=CHART_FONT_SIZE - 1,
                        fontweight="bold")
            else:
                pad = limit * 0.015
                ax.text(value + (pad if value >= 0 else -pad), y, text, va="center",
                        ha="left" if value >= 0 else "right", color=INK, fontsize=CHART_FONT_SIZE - 1)
        _style_axes(ax)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel("value (0 = no difference)", fontsize=CHART_FONT_SIZE, color=INK)

    if ax_di is not None:
        right = max(1.25, min(di, 5.0) * 1.15)
        drawn = min(di, right)
        colour = NO_DIRECTION if abs(di - 1) < 0.0005 else (AGAINST_GROUP if di < 1 else FOR_GROUP)
        ax_di.barh([0], [drawn], height=0.5, color=colour)
        ax_di.axvline(1, color=INK, linewidth=1)
        ax_di.axvline(0.8, color=INK, linewidth=0.8, linestyle=(0, (3, 2)))
        ax_di.text(1, 0.42, " ideal 1", fontsize=CHART_FONT_SIZE - 1, va="bottom", color=INK)
        ax_di.text(0.8, 0.42, "0.8 ", fontsize=CHART_FONT_SIZE - 1, va="bottom", ha="right", color=INK)
        ax_di.text(drawn + right * 0.01, 0, format_value(di) + (" ▶" if drawn < di else ""),
                   va="center", fontsize=CHART_FONT_SIZE - 1, color=INK)
        ax_di.set_yticks([0], ["DI"])
        ax_di.set_xlim(0, right)
        ax_di.set_ylim(-0.5, 0.85)
        _style_axes(ax_di)
        ax_di.tick_params(axis="y", length=0)
        ax_di.set_xlabel("DI: ratio of positive-prediction rates (1 = parity)", fontsize=CHART_FONT_SIZE,
                         color=INK)

    # No title: the heading above the chart (report and notebook alike) names the group.
    handles = [Patch(color=AGAINST_GROUP, label="favours everyone else"),
               Patch(color=FOR_GROUP, label="favours the group"),
               Patch(color=NO_DIRECTION, label="no direction (a distance)")]
    fig.legend(handles=handles, loc="outside upper left", ncols=3, frameon=False, fontsize=CHART_FONT_SIZE)
    if not_drawn:
        fig.supxlabel("\n".join(not_drawn), fontsize=CHART_FONT_SIZE - 1,
                      color="#555555", x=0.01, ha="left")
    return fig


def skipped_metrics(analysis: dict, stage: str, facet: str, index: int = 0) -> list[str]:
    """Metrics of one group that a chart cannot draw (infinite or not computed), e.g. ``TE (Infinity)``."""
    entry, _ = _group_entry(analysis, stage, facet, index)
    out = []
    for metric in entry.get("metrics", []):
        value = as_number(metric.get("value"))
        if value is None or not math.isfinite(value):
            out.append(f"{metric.get('name', '?')} ({format_value(metric.get('value'))})")
    return out


# ---------------------------------------------------------------------------------------------
# Data distributions (counts come from the job, not from analysis.json)

def distribution_chart(counts: dict, title: str) -> Figure:
    """Bars of how many rows have each value, one bar per entry of ``counts``: the job's ``value_counts``
    has summed the values beyond the chart's bars into one "other" entry, so shares are of every row.
    (This module imports nothing of Lucent's but the bias registry: the notebook runs a copy of it.)"""
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    total = sum(c for _, c in items) or 1
    fig = _new_figure(3.55, 0.9 + 0.26 * len(items))
    ax = fig.subplots()
    positions = list(range(len(items)))[::-1]
    values = [c for _, c in items]
    ax.barh(positions, values, height=0.62, color=FOR_GROUP)
    ax.set_yticks(positions, [_shorten(str(k)) for k, _ in items])
    ax.set_xlim(0, max(values + [1]) * 1.45)
    for y, count in zip(positions, values, strict=True):
        ax.text(count, y, f" {count:,} ({count / total:.0%})", va="center", fontsize=CHART_FONT_SIZE - 1,
                color=INK)
    _style_axes(ax)
    ax.tick_params(axis="y", length=0)
    # The bars carry their counts; an axis of large round numbers would only add clutter.
    ax.xaxis.set_visible(False)
    ax.spines["bottom"].set_visible(False)
    ax.grid(False)
    fig.suptitle(_shorten(title, 44), fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.02, ha="left")
    return fig


def _shorten(text: str, width: int = 22) -> str:
    """``text`` in at most ``width`` characters, the ellipsis in the middle: names that share a long
    start (feature_with_a_long_prefix_1, ..._2) stay told apart by their ends."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


# ---------------------------------------------------------------------------------------------
# SHAP

def shap_labels(analysis: dict) -> list[str]:
    return list(((analysis.get("explanations") or {}).get("kernel_shap") or {}).keys())


def shap_table(analysis: dict, label: str) -> pd.DataFrame:
    """Global SHAP values of one model output, largest first, with standard errors when available."""
    entry = analysis["explanations"]["kernel_shap"][label]
    values = entry.get("global_shap_values") or {}
    stderr = entry.get("lucent_global_shap_stderr") or {}
    frame = pd.DataFrame({"Feature": list(values), "SHAP value": [as_number(v) for v in values.values()]})
    if stderr:
        frame["Standard error"] = [as_number(stderr.get(f)) for f in values]
    order = frame["SHAP value"].abs().sort_values(ascending=False, kind="stable").index
    return frame.loc[order].reset_index(drop=True)


# Per methods.shap.agg_method: how a feature's global SHAP value is made from its local values (the report's
# text) and the chart's axis label.
AGG_METHOD_TEXT = {
    "mean_abs": ("A feature's global value is the **mean absolute** SHAP value over the explained rows: how far "
                 "the feature moves the output on average, whatever the direction. A longer bar means more "
                 "influence.",
                 "global SHAP value: mean |SHAP value| over the rows"),
    "median": ("A feature's global value is the **median** SHAP value over the explained rows, with its sign: "
               "positive when the feature raises the output for most rows, negative when it lowers it. A longer "
               "bar means a larger typical effect in that direction; a value near 0 can still hide a feature that "
               "moves some rows strongly one way and others the other way.",
               "global SHAP value: median SHAP value over the rows (signed)"),
    "mean_sq": ("A feature's global value is the **mean of the squared** SHAP values over the explained rows (in "
                "squared output units, so rows the feature moves strongly weigh more than in an average). A longer "
                "bar means more influence.",
                "global SHAP value: mean of squared SHAP values over the rows"),
}


# agg_method not known (a summary without it): words true of every method.
UNKNOWN_AGG_TEXT = ("A feature's global value aggregates its SHAP values over the explained rows, as "
                    "methods.shap.agg_method says (by default the mean absolute value). A longer bar means more "
                    "influence.",
                    "global SHAP value (methods.shap.agg_method over the rows)")


def agg_method_text(agg_method: str | None) -> tuple[str, str]:
    """The report's sentence and the chart's axis label for ``agg_method`` (None or unknown: wording that
    holds for every method)."""
    return AGG_METHOD_TEXT.get(agg_method or "", UNKNOWN_AGG_TEXT)


def shap_chart(analysis: dict, label: str, top: int = 15, agg_method: str | None = None) -> Figure:
    """The ``top`` features by global SHAP value for one model output, with standard-error whiskers.
    ``agg_method``: ``methods.shap.agg_method``, which names the axis (None: ``mean_abs``)."""
    table = shap_table(analysis, label).head(top)
    n = len(table)
    fig = _new_figure(7.2, 1.0 + 0.27 * max(n, 1))
    ax = fig.subplots()
    positions = list(range(n))[::-1]
    values = table["SHAP value"].astype(float).fillna(0).tolist()
    errors = table["Standard error"].astype(float).fillna(0).tolist() if "Standard error" in table else None
    ax.barh(positions, values, height=0.62, color=FOR_GROUP,
            xerr=errors, error_kw={"ecolor": INK, "elinewidth": 1, "capsize": 2.5})
    ax.set_yticks(positions, [_shorten(str(f), 28) for f in table["Feature"]])
    span = max([abs(v) + (e if errors else 0) for v, e in zip(values, errors or [0] * n, strict=True)] + [1e-12])
    low = min([0.0, *values])
    ax.set_xlim(low * 1.3 if low < 0 else 0, span * 1.3)
    for y, value, err in zip(positions, values, errors or [0] * n, strict=True):
        ax.text(max(value, 0) + err + span * 0.015, y, format_value(value), va="center",
                fontsize=CHART_FONT_SIZE - 1, color=INK)
    ax.axvline(0, color=INK, linewidth=1)
    _style_axes(ax)
    ax.tick_params(axis="y", length=0)
    xlabel = agg_method_text(agg_method)[1]
    if errors:
        # On a line of its own: beside the rest it ran past the figure with names such as "Education-Num".
        xlabel += "\nwhiskers: ± 1 standard error"
    ax.set_xlabel(xlabel, fontsize=CHART_FONT_SIZE, color=INK)
    total = len(analysis["explanations"]["kernel_shap"][label].get("global_shap_values") or {})
    shown = f"top {n} of {total} features" if total > n else f"all {total} features"
    fig.suptitle(f"Feature importance for output '{_shorten(str(label), 28)}' ({shown})",
                 fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.01, ha="left")
    return fig


# ---------------------------------------------------------------------------------------------
# Text explanations (methods.shap.text_config): global top tokens and single records

LOCAL_SHAP_FILE = "explanations_shap/out.jsonl"  # per-record explanations, relative to analysis.json
RAISES = (0, 158, 115)  # Okabe-Ito bluish green: the unit pushes the output up
LOWERS = (214, 39, 40)  # red (not the bias charts' orange): the unit pushes the output down
MAX_UNITS_SHOWN = 400  # units of one text drawn per record; the rest are counted, not drawn
TEXT_EXAMPLES = 3  # records shown per direction (raising / lowering the output)
TOP_TOKENS_CHARTED = 20  # tokens in a top-tokens chart (its table lists all of global_top_shap_text)


def text_features(analysis: dict, label: str) -> list[str]:
    """The text features of one model output that have top tokens (``global_top_shap_text``)."""
    entry = analysis["explanations"]["kernel_shap"][label]
    return [str(f) for f in (entry.get("global_top_shap_text") or {})]


def has_text_explanations(analysis: dict) -> bool:
    return any(text_features(analysis, label) for label in shap_labels(analysis))


def _top_tokens(analysis: dict, label: str, feature: str) -> list[tuple[str, float]]:
    tokens = analysis["explanations"]["kernel_shap"][label]["global_top_shap_text"][feature] or {}
    items = [(str(token), as_number(value)) for token, value in tokens.items()]
    items = [(token, value) for token, value in items if value is not None]
    return sorted(items, key=lambda item: -item[1])  # stable: ties keep the file's order


def top_tokens_table(analysis: dict, label: str, feature: str) -> pd.DataFrame:
    """The tokens of one text feature with the largest global SHAP values for one output, largest first."""
    items = _top_tokens(analysis, label, feature)
    frame = pd.DataFrame({"Rank": range(1, len(items) + 1), "Token": [token for token, _ in items],
                          "Global SHAP value": [format_value(value) for _, value in items]})
    return frame.set_index("Rank")


def top_tokens_chart(analysis: dict, label: str, feature: str, top: int = TOP_TOKENS_CHARTED) -> Figure:
    """Bars of the ``top`` tokens of one text feature by global SHAP value, for one model output."""
    items = _top_tokens(analysis, label, feature)
    shown = items[:top]
    n = len(shown)
    fig = _new_figure(7.2, 1.0 + 0.27 * max(n, 1))
    ax = fig.subplots()
    positions = list(range(n))[::-1]
    values = [value for _, value in shown]
    ax.barh(positions, values, height=0.62, color=FOR_GROUP)
    ax.set_yticks(positions, [_shorten(token, 28) for token, _ in shown])
    span = max([abs(v) for v in values] + [1e-12])
    low = min([0.0, *values])
    ax.set_xlim(low * 1.3 if low < 0 else 0, span * 1.3)
    for y, value in zip(positions, values, strict=True):
        pad = span * 0.015
        ax.text(value + (pad if value >= 0 else -pad), y, format_value(value), va="center",
                ha="left" if value >= 0 else "right", fontsize=CHART_FONT_SIZE - 1, color=INK)
    ax.axvline(0, color=INK, linewidth=1)
    _style_axes(ax)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("global SHAP value of the token", fontsize=CHART_FONT_SIZE, color=INK)
    count = f"top {n} of {len(items)} tokens" if len(items) > n else f"all {len(items)} tokens"
    fig.suptitle(f"Top tokens of '{_shorten(feature, 24)}' for output '{_shorten(label, 16)}' ({count})",
                 fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.01, ha="left")
    return fig


@dataclass(frozen=True)
class TextRecord:
    """One line of out.jsonl: ``row`` counts from 0 in dataset order; ``total`` sums its text units."""

    row: int
    total: float
    record: dict


@dataclass(frozen=True)
class TextRecordChoice:
    """The records of out.jsonl whose text moves one output the most, in each direction."""

    records_read: int
    raises: list  # TextRecord, largest total first
    lowers: list  # TextRecord, most negative total first


def _text_total(record: dict, label_index: int) -> float | None:
    """The sum of one record's text-unit SHAP values for one output; None when it has no text unit."""
    total, units = 0.0, 0
    for feature in record.get("explanations") or []:
        if feature.get("data_type") != "free_text":
            continue
        for unit in feature.get("attributions") or []:
            total += float(unit["attribution"][label_index])
            units += 1
    return total if units else None


def choose_text_records(path: str = LOCAL_SHAP_FILE, label_index: int = 0,
                        per_side: int = TEXT_EXAMPLES) -> TextRecordChoice:
    """The ``per_side`` records whose text raises output ``label_index`` the most and those that lower it most.

    "How much the text moves the output" is the sum of the SHAP values of the record's text units.
    Records with a total above 0 compete for ``raises``, below 0 for ``lowers``; ties go to the
    earlier record. The file is read line by line and only the chosen records are kept, so its size
    does not matter; the answer is cached until the file changes.
    """
    stat = os.stat(path)
    return _choose_text_records(str(path), stat.st_mtime_ns, stat.st_size, label_index, per_side)


@lru_cache(maxsize=4)
def _choose_text_records(path: str, mtime_ns: int, size: int, label_index: int, per_side: int) -> TextRecordChoice:
    up: list = []  # min-heaps of (|total|, -row, record): the root is the weakest record kept
    down: list = []
    row = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            total = _text_total(record, label_index)
            if total:
                heap = up if total > 0 else down
                item = (abs(total), -row, record)
                if len(heap) < per_side:
                    heapq.heappush(heap, item)
                elif item[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, item)
            row += 1

    def ordered(heap: list, sign: int) -> list:
        return [TextRecord(-minus_row, sign * magnitude, record)
                for magnitude, minus_row, record in sorted(heap, key=lambda item: (-item[0], -item[1]))]

    return TextRecordChoice(records_read=row, raises=ordered(up, 1), lowers=ordered(down, -1))


def format_signed(value: float) -> str:
    """``format_value`` with a ``+`` on positive values."""
    text = format_value(value)
    return text if text.startswith("-") or text == "0" else "+" + text


def _rgba(value: float, scale: float) -> str:
    """The background of a unit: green up, red down, stronger the closer |value| is to ``scale``."""
    red, green, blue = RAISES if value > 0 else LOWERS
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba({red},{green},{blue},{0.75 * strength:.3f})"


def _rebuilt_units(units: list) -> list[tuple[str, str, list]]:
    """(gap, text, attribution) per unit, in the file's order.

    out.jsonl keeps each unit's text and offset but not the characters between units (always
    whitespace: units never contain it at their ends). The gap before a unit is rebuilt as that many
    spaces, so the spacing of the original survives, except that line breaks become spaces. Without
    offsets, units are separated by one space.
    """
    out = []
    end = None
    for unit in units:
        description = unit.get("description") or {}
        text = str(description.get("partial_text", ""))
        start = description.get("start_idx")
        known = isinstance(start, int) and not isinstance(start, bool)
        if not out:
            gap = 0
        elif known and end is not None:
            gap = max(start - end, 0)
        else:
            gap = 1
        out.append((" " * gap, text, list(unit.get("attribution") or [])))
        end = start + len(text) if known else None
    return out


class TextHighlight:
    """One record's texts with every unit coloured by its SHAP value for one model output.

    A notebook shows it as HTML (``_repr_html_``); the HTML and PDF reports embed the same markup.
    Green raises the output, red lowers it; the colour's strength is the unit's |value| relative to the
    largest |value| among the record's text units, so colours compare units within one record, not
    across records. Each unit's values (every output) are in its ``title`` tooltip. All text is
    HTML-escaped.
    """

    def __init__(self, chosen: TextRecord, labels: list, label_index: int = 0,
                 max_units: int = MAX_UNITS_SHOWN) -> None:
        self.row, self.total, self.record = chosen.row, chosen.total, chosen.record
        self.label_index, self.max_units = label_index, max_units
        features = self.record.get("explanations") or []
        width = max([len(u.get("attribution") or []) for f in features for u in f.get("attributions") or []] + [1])
        self.labels = [str(x) for x in labels] if len(labels) == width else [f"label{i}" for i in range(width)]
        self.texts = [(str(f.get("feature_name")), _rebuilt_units(f.get("attributions") or []))
                      for f in features if f.get("data_type") == "free_text"]
        self.others = [(str(f.get("feature_name")), float(f["attributions"][0]["attribution"][label_index]))
                       for f in features if f.get("data_type") != "free_text" and f.get("attributions")]
        values = [abs(float(a[label_index])) for _, units in self.texts for _, _, a in units]
        self.scale = max(values + [0.0])

    @property
    def label(self) -> str:
        return self.labels[self.label_index]

    def largest(self, count: int = 6) -> list[tuple[str, float]]:
        """The units with the largest |value| for the chosen output, largest first."""
        units = [(text, float(a[self.label_index])) for _, units in self.texts for _, text, a in units]
        return sorted(units, key=lambda unit: -abs(unit[1]))[:count]

    def _tooltip(self, attribution: list) -> str:
        values = [format_signed(float(v)) for v in attribution]
        if len(values) == 1:
            return values[0]
        return " · ".join(f"{name}: {value}" for name, value in zip(self.labels, values, strict=False))

    def _html_text(self, units: list, colours: dict | None = None) -> str:
        parts = []
        for gap, text, attribution in units[:self.max_units]:
            value = float(attribution[self.label_index])
            if colours is not None:  # print: the colour's class, no tooltip; a unit without colour is plain text
                name = colours.setdefault(_rgba(value, self.scale), f"shap{len(colours)}") if value else None
                parts.append(f'{gap}<span class="{name}">{html.escape(text)}</span>' if name
                             else gap + html.escape(text))
                continue
            style = f' style="background-color:{_rgba(value, self.scale)}"' if value else ""
            parts.append(f'{gap}<span class="unit"{style} title="{html.escape(self._tooltip(attribution))}">'
                         f"{html.escape(text)}</span>")
        if len(units) > self.max_units:
            parts.append(f' <span class="more" style="color:#5f6368">… ({len(units) - self.max_units:,} more '
                         "units not shown)</span>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self._markup()

    def print_html(self, colours: dict) -> str:
        """The markup of ``_repr_html_`` for print (the PDF): the same texts and colours, without the tooltips
        (a printed page has none), and each unit's colour a class of the page's style sheet instead of a style
        of its own. ``colours`` maps each colour to its class name and is filled here; the page declares
        ``.name{background-color:colour}`` for each. Why: WeasyPrint parses every ``style`` and ``title``
        attribute on its own, and cascades each style apart: about a third of the PDF time of the coloured
        texts (0.4-0.5 s of CPU for the text demo's six records of 80 units)."""
        return self._markup(colours)

    def _markup(self, colours: dict | None = None) -> str:
        muted = "color:#5f6368;font-size:0.88em"
        swatch = "padding:0 5px;border-radius:3px;color:#222"
        label = html.escape(self.label)
        legend = (f'<div class="legend" style="{muted};margin:0 0 4px">'
                  f'<span style="{swatch};background-color:{_rgba(1, 1)}">raises</span> '
                  f'<span style="{swatch};background-color:{_rgba(-1, 1)}">lowers</span> '
                  f"output '{label}'; full colour = the largest |SHAP value| of this record's text "
                  f"({format_value(self.scale)}).</div>")
        blocks = [legend]
        for feature, units in self.texts:
            blocks.append(f'<div class="feature" style="{muted};font-weight:600">{html.escape(feature)}</div>'
                          '<div class="text" style="white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.9;'
                          'border:1px solid #d9dce1;border-radius:4px;padding:4px 9px;margin:2px 0 6px">'
                          f"{self._html_text(units, colours)}</div>")
        largest = " · ".join(f"“{html.escape(text)}” {format_signed(value)}" for text, value in self.largest())
        blocks.append(f'<div class="largest" style="{muted}">Largest units: {largest}</div>')
        if self.others:
            others = " · ".join(f"{html.escape(name)} {format_signed(value)}" for name, value in self.others)
            blocks.append(f'<div class="others" style="{muted}">Other features: {others}</div>')
        return f'<div class="text-example">{"".join(blocks)}</div>'

    def __repr__(self) -> str:
        lines = [f"Row {self.row + 1}: text total {format_signed(self.total)} for output '{self.label}'"]
        for feature, units in self.texts:
            lines.append(f"{feature}: " + "".join(gap + text for gap, text, _ in units))
        lines.append("largest units: " + ", ".join(f"{text!r} {format_signed(v)}" for text, v in self.largest()))
        if self.others:
            lines.append("other features: " + ", ".join(f"{name} {format_signed(v)}" for name, v in self.others))
        return "\n".join(lines)


def text_example(analysis: dict, path: str, side: str, rank: int = 0, label_index: int = 0) -> TextHighlight:
    """The record ranked ``rank`` (0 = strongest) among those whose text ``side`` ("raises" or
    "lowers") output ``label_index`` the most (see ``choose_text_records``), coloured by attribution."""
    choice = choose_text_records(path, label_index)
    chosen = (choice.raises if side == "raises" else choice.lowers)[rank]
    return TextHighlight(chosen, shap_labels(analysis), label_index)


# ---------------------------------------------------------------------------------------------
# Partial dependence

def pdp_entries(analysis: dict) -> list[dict]:
    return list((analysis.get("explanations") or {}).get("pdp") or [])


PDP_NAME_CHARACTERS = 30  # a feature name in a partial dependence chart: longer ones are shortened


def pdp_chart(analysis: dict, feature: str) -> Figure:
    """Mean model output as one feature varies: lines for numerical features, bars for categorical.

    The light grey bars behind show how many rows fall in each bucket or category, so sparse parts
    of the curve (which rest on few rows) are visible.
    """
    entry = next(e for e in pdp_entries(analysis) if str(e.get("feature_name")) == str(feature))
    xs = list(entry.get("feature_values") or [])
    predictions = entry.get("model_predictions") or []
    headers = entry.get("label_headers") or [f"label{i}" for i in range(len(predictions))]
    distribution = entry.get("data_distribution") or []
    fig = _new_figure(3.55, 2.6)
    ax = fig.subplots()
    share = ax.twinx()  # the distribution, on its own axis behind the curves
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    colours = [FOR_GROUP, AGAINST_GROUP, "#009e73", "#cc79a7", "#e69f00", "#56b4e9"]
    if entry.get("data_type") == "numerical":
        step = (xs[1] - xs[0]) if len(xs) > 1 else 1.0
        if distribution:
            share.bar(xs, distribution, width=step * 0.9, color="#e3e3e3")
        for i, (header, ys) in enumerate(zip(headers, predictions, strict=False)):
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, color=colours[i % len(colours)],
                    label=_shorten(str(header), 20))
    else:
        positions = list(range(len(xs)))
        width = 0.8 / max(len(predictions), 1)
        for i, (header, ys) in enumerate(zip(headers, predictions, strict=False)):
            offset = (i - (len(predictions) - 1) / 2) * width
            ax.bar([p + offset for p in positions], ys, width=width * 0.9, color=colours[i % len(colours)],
                   label=_shorten(str(header), 20))
        # Categories have no "nearby" values, so their share of rows goes under each name instead.
        shares = [f"\n{d:.0%}" for d in distribution] if len(distribution) == len(xs) else [""] * len(xs)
        ax.set_xticks(positions, [_shorten(str(x), 12) + s for x, s in zip(xs, shares, strict=True)],
                      rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    _style_axes(ax, grid_axis="y")
    share.set_ylim(0, max(distribution + [0.01]) * 3)  # keep the distribution in the lower third
    share.set_yticks([])
    for side in ("top", "right", "left"):
        share.spines[side].set_visible(False)
    ax.set_ylabel("mean model output", fontsize=CHART_FONT_SIZE, color=INK)
    note = "grey: share of rows" if entry.get("data_type") == "numerical" else "with its share of rows"
    # The chart is half a page wide: a long name keeps its start and end (the report gives it in full
    # in the chart's caption, the notebook in the code that draws it), and the note goes under a name
    # that would not leave it room.
    name = _shorten(str(feature), PDP_NAME_CHARACTERS)
    gap = "  " if len(name) + len(note) <= 36 else "\n"
    ax.set_xlabel(f"{name}{gap}({note})", fontsize=CHART_FONT_SIZE, color=INK)
    if len(predictions) > 1:
        ax.legend(fontsize=CHART_FONT_SIZE - 1, frameon=False)
    fig.suptitle(name, fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.03, ha="left")
    return fig


# ---------------------------------------------------------------------------------------------
# Segments (Lucent's own section, analysis["lucent"]["segments"]: docs/segments.md)

SEGMENT_COLUMNS = ["Analysis", "Group or output", "Metric or feature", "Value"]


def segment_entries(analysis: dict) -> list[dict]:
    """The ``segment_config`` entries of the analysis, each with its ``segments``."""
    return list((analysis.get("lucent") or {}).get("segments") or [])


def segment_table(analysis: dict, config: int, segment: int, top_features: int = 5) -> pd.DataFrame:
    """One segment's results as one table: every bias metric of every facet group (pre-training, then
    post-training), then the ``top_features`` features by global SHAP value of each model output.

    ``config`` and ``segment`` index ``analysis["lucent"]["segments"]`` and that entry's ``segments``. A metric
    or a stage that could not be computed shows its reason in the Value column.
    """
    entry = segment_entries(analysis)[config]["segments"][segment]
    rows = []
    for stage, title in ((PRE_TRAINING, "Pre-training bias"), (POST_TRAINING, "Post-training bias")):
        section = entry.get(stage)
        if section is None:
            continue
        if section.get("error"):
            rows.append([title, "", "not computed", section["error"]])
            continue
        for facet, groups in (section.get("facets") or {}).items():
            for group in groups:
                name = group_name(facet, group.get("value_or_threshold"))
                for metric in group.get("metrics", []):
                    error = metric.get("error")
                    value = f"not computed: {error}" if error else format_value(metric.get("value"))
                    rows.append([title, name, metric.get("name", "?"), value])
    explanations = entry.get("explanations") or {}
    if explanations.get("error"):
        rows.append(["SHAP (global)", "", "not computed", explanations["error"]])
    for label, values in (explanations.get("kernel_shap") or {}).items():
        ranked = sorted((values.get("global_shap_values") or {}).items(),
                        key=lambda item: -abs(as_number(item[1]) or 0.0))
        for feature, value in ranked[:top_features]:
            rows.append(["SHAP (global)", str(label), str(feature), format_value(value)])
    return pd.DataFrame(rows, columns=SEGMENT_COLUMNS)


# -- images (explanations.lucent_image_shap, docs/images.md) ----------------------------------------

OUTPUT_FOLDER = "."  # the job's output folder (its pictures) seen from analysis.json, where the notebook is


def image_entries(analysis: dict) -> list:
    """The explained images of an image job, in dataset order (empty for other jobs)."""
    return ((analysis.get("explanations") or {}).get("lucent_image_shap") or {}).get("images") or []


def _segment_extremes(values: list) -> tuple[str, str]:
    if not values:
        return "", ""
    order = sorted(range(len(values)), key=lambda j: values[j])
    return (f"{order[-1]} ({format_value(values[order[-1]])})", f"{order[0]} ({format_value(values[order[0]])})")


def image_table(analysis: dict) -> pd.DataFrame:
    """One row per image (per detected object for object detection): its segments, the predicted label
    (or object) and score, the score with every segment filled (the reference), and the segments that
    raise and lower that score the most."""
    rows = []
    for entry in image_entries(analysis):
        if "objects" in entry:
            if not entry["objects"]:
                rows.append([entry["image"], entry["n_segments"], "no object detected", "", "", "", ""])
            for number, obj in enumerate(entry["objects"], start=1):
                rows.append([entry["image"], entry["n_segments"], f"box {number}: {obj['label']}",
                             format_value(obj["prediction"]), format_value(obj["reference"]),
                             *_segment_extremes(obj["shap_values"])])
            continue
        label = entry["predicted_label"]
        rows.append([entry["image"], entry["n_segments"], label, format_value(entry["prediction"][label]),
                     format_value(entry["reference"][label]), *_segment_extremes(entry["shap_values"][label])])
    return pd.DataFrame(rows, columns=["Image", "Segments", "Predicted label or object", "Score",
                                       "Score, all filled", "Raises most", "Lowers most"])


@dataclass
class ImagePictures:
    """An explained image's two pictures side by side: its segments, and the SHAP heatmap of its predicted
    label (blue = raises it, red = lowers it). A notebook shows it as HTML; the reports embed the same markup."""

    name: str
    pictures: list  # (title, JPEG bytes or None when the file is missing)

    def _repr_html_(self) -> str:
        import base64

        cells = []
        for title, data in self.pictures:
            if data is None:
                cells.append(f'<figure class="image-missing"><figcaption>{html.escape(title)}: file not found'
                             '</figcaption></figure>')
                continue
            uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
            cells.append(f'<figure style="display:inline-block;margin:0 1em 0 0;vertical-align:top">'
                         f'<img src="{uri}" alt="{html.escape(title)} of {html.escape(self.name)}" '
                         f'style="max-width:16em;height:auto"><figcaption>{html.escape(title)}</figcaption></figure>')
        return f'<div class="image-pictures">{"".join(cells)}</div>'

    def __repr__(self) -> str:
        return f"ImagePictures({self.name!r})"


def image_pictures(analysis: dict, output_folder: str, name: str) -> ImagePictures:
    """The segmented image and the heatmap of image ``name``, read from the job's output folder."""
    entry = next(e for e in image_entries(analysis) if e["image"] == name)
    if "objects" in entry:  # object detection: the boxes, then each object's heatmap
        files = [("Detected objects", entry["objects_image"])] + [
            (f"SHAP for box {number} ({obj['label']})", obj["heatmap"])
            for number, obj in enumerate(entry["objects"], start=1)]
    else:
        files = [("Segments", entry["segmented_image"]), (f"SHAP for '{entry['predicted_label']}'", entry["heatmap"])]
    pictures = []
    for title, file in files:
        path = os.path.join(output_folder, file)
        try:
            with open(path, "rb") as handle:
                pictures.append((title, handle.read()))
        except OSError:
            pictures.append((title, None))
    return ImagePictures(name, pictures)
