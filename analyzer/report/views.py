"""Tables and charts of a Clarify ``analysis.json``: pandas DataFrames and matplotlib Figures.

This module is where every number, reading and chart of the report is computed from the analysis
document. It imports only the standard library, pandas and matplotlib (never Lucent) because its
source is copied verbatim into the report notebook: the notebook's code cells call these same
functions on ``analysis.json``, so a reader can re-run and extend it without installing Lucent, and
the notebook cannot drift from the HTML and PDF reports.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: no global state, no
GUI backend (rendering goes through Agg / the SVG backend), and a notebook shows a returned figure
exactly once.
"""

import math
import re
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PRE_TRAINING = "pre_training_bias_metrics"
POST_TRAINING = "post_training_bias_metrics"

# Okabe-Ito colours: distinguishable with the common forms of colour blindness, and in greyscale.
AGAINST_GROUP = "#d55e00"  # the value favours everyone else
FOR_GROUP = "#0072b2"  # the value favours the group
NO_DIRECTION = "#8c8c8c"  # a distance: says how different, not who is favoured
INK = "#222222"

CHART_FONT_SIZE = 9  # points; the PDF shows charts at about 1:1 scale, so this is the printed size


@dataclass(frozen=True)
class MetricInfo:
    """What a reader needs to know about one bias metric, independent of its value."""

    name: str
    description: str  # Clarify's exact description string
    measures: str  # one plain sentence
    ideal: float
    range: str
    # +1: positive values favour everyone else (point against the group); -1: negative values do;
    # 0: no direction (a distance). Follows bias-metrics.md 4.3, with FT in its implementation sign.
    direction: int


_M = MetricInfo
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    _M("CDDL", "Conditional Demographic Disparity in Labels (CDDL)",
       "Within each subgroup of the group variable, how much larger the group's share of the negative "
       "labels is than its share of the positive labels, averaged over subgroups.", 0, "−1 to 1", +1),
    _M("CI", "Class Imbalance (CI)",
       "Whether the group has fewer rows than everyone else (positive) or more (negative).", 0, "−1 to 1", +1),
    _M("DPL", "Difference in Positive Proportions in Labels (DPL)",
       "Share of positive labels outside the group minus the share inside it.", 0, "−1 to 1", +1),
    _M("JS", "Jensen-Shannon Divergence (JS)",
       "How different the label distributions of the group and everyone else are (symmetric).",
       0, "0 to ln 2 ≈ 0.69", 0),
    _M("KL", "Kullback-Liebler Divergence (KL)",
       "How different the label distribution of the group is from everyone else's (in nats).",
       0, "0 to ∞", 0),
    _M("KS", "Kolmogorov-Smirnov Distance (KS)",
       "The largest gap between the two groups in the share of any one label value.", 0, "0 to 1", 0),
    _M("LP", "L-p Norm (LP)",
       "Euclidean distance between the label distributions of the group and everyone else.",
       0, "0 to √2 ≈ 1.41", 0),
    _M("TVD", "Total Variation Distance (TVD)",
       "Half the summed difference between the two label distributions.", 0, "0 to 1", 0),
    _M("AD", "Accuracy Difference (AD)",
       "Accuracy of the predictions outside the group minus inside it.", 0, "−1 to 1", +1),
    _M("CDDPL", "Conditional Demographic Disparity in Predicted Labels (CDDPL)",
       "CDDL computed on the model's predictions instead of the labels.", 0, "−1 to 1", +1),
    _M("DAR", "Difference in Acceptance Rates (DAR)",
       "Precision (how often a positive prediction is right) outside the group minus inside it.",
       0, "−1 to 1", +1),
    _M("DCA", "Difference in Conditional Acceptance (DCA)",
       "Ratio of actual to predicted positives outside the group minus inside it.", 0, "−∞ to ∞", -1),
    _M("DCR", "Difference in Conditional Rejection (DCR)",
       "Ratio of actual to predicted negatives inside the group minus outside it.", 0, "−∞ to ∞", -1),
    _M("DI", "Disparate Impact (DI)",
       "Rate of positive predictions inside the group divided by the rate outside it.", 1, "0 to ∞", +1),
    _M("DPPL", "Difference in Positive Proportions in Predicted Labels (DPPL)",
       "Share of positive predictions outside the group minus the share inside it.", 0, "−1 to 1", +1),
    _M("DRR", "Difference in Rejection Rates (DRR)",
       "How often a negative prediction is right inside the group minus outside it.", 0, "−1 to 1", -1),
    _M("FT", "Flip Test (FT)",
       "Compares each group member's prediction with the predictions for their most similar people "
       "outside the group (sign as in Clarify's implementation: negative = against the group).",
       0, "−1 to 1", -1),
    _M("GE", "Generalized Entropy (GE)",
       "Inequality, over all rows, of the benefit the model gives each person (1 + prediction − label). "
       "The same for every group.", 0, "0 and up", 0),
    _M("RD", "Recall Difference (RD)",
       "Of the actually positive rows, the share predicted positive outside the group minus inside it.",
       0, "−1 to 1", +1),
    _M("SD", "Specificity Difference (SD)",
       "Of the actually negative rows, the share predicted negative inside the group minus outside it.",
       0, "−1 to 1", -1),
    _M("TE", "Treatment Equality (TE)",
       "False negatives per false positive inside the group minus outside it.", 0, "−∞ to ∞", +1),
)}


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


def reading(metric: dict, context: Context) -> str:
    """What one metric entry of analysis.json means for the group, in one or two sentences."""
    if metric.get("value") is None:
        error = metric.get("error")
        return f"Not computed. Reason given: {error}" if error else "Not computed (no value in the analysis)."
    value = as_number(metric["value"])
    read = READINGS.get(metric.get("name", ""))
    if value is None or read is None:
        return ""
    if math.isinf(value) and metric["name"] not in ("DI", "DCA", "DCR", "TE"):
        return "Infinite: a division by zero for this group."
    return read(value, context)


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
            "Range": info.range if info else "",
            "What this value means": reading(metric, context),
        })
    columns = ["Metric", "Full name", "Value", "Ideal", "Range", "What this value means"]
    return pd.DataFrame(rows, columns=columns).set_index("Metric")


def _new_figure(width: float, height: float) -> Figure:
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

    # Scale to the values that fit [-1.5, 1.5] (all shares and differences of shares), so a TE of 24
    # does not squash the rest into invisible slivers; anything beyond is cut at the edge.
    in_scale = [abs(v) for _, v in bars if abs(v) <= 1.5]
    limit = max([*in_scale, 0.05]) * 1.35
    # Only show the negative side when a value needs it: all-positive charts (distances) use the width.
    left = -limit if any(v < 0 for _, v in bars) else -limit * 0.04
    n = len(bars)
    height = 0.95 + 0.27 * n + (0.75 if di is not None else 0) + (0.2 if skipped else 0)
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
    if skipped:
        fig.supxlabel("Not drawn (no finite value): " + ", ".join(skipped), fontsize=CHART_FONT_SIZE - 1,
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

def distribution_chart(counts: dict, title: str, top: int = 12) -> Figure:
    """Bars of how many rows have each value; beyond ``top`` values the rest are summed as "other"."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(items) > top:
        rest = items[top - 1:]
        items = [*items[:top - 1], (f"other ({len(rest)} values)", sum(c for _, c in rest))]
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
    fig.suptitle(title, fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.02, ha="left")
    return fig


def _shorten(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


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


def shap_chart(analysis: dict, label: str, top: int = 15) -> Figure:
    """The ``top`` features by global SHAP value for one model output, with standard-error whiskers."""
    table = shap_table(analysis, label).head(top)
    n = len(table)
    fig = _new_figure(7.2, 1.0 + 0.27 * max(n, 1))
    ax = fig.subplots()
    positions = list(range(n))[::-1]
    values = table["SHAP value"].fillna(0).tolist()
    errors = table["Standard error"].fillna(0).tolist() if "Standard error" in table else None
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
    xlabel = "global SHAP value (how much the feature moves the model output)"
    if errors:
        xlabel += "; whiskers: ± 1 standard error"
    ax.set_xlabel(xlabel, fontsize=CHART_FONT_SIZE, color=INK)
    total = len(analysis["explanations"]["kernel_shap"][label].get("global_shap_values") or {})
    shown = f"top {n} of {total} features" if total > n else f"all {total} features"
    fig.suptitle(f"Feature importance for output '{label}' ({shown})", fontsize=CHART_FONT_SIZE + 1, color=INK,
                 x=0.01, ha="left")
    return fig


# ---------------------------------------------------------------------------------------------
# Partial dependence

def pdp_entries(analysis: dict) -> list[dict]:
    return list((analysis.get("explanations") or {}).get("pdp") or [])


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
                    label=str(header))
    else:
        positions = list(range(len(xs)))
        width = 0.8 / max(len(predictions), 1)
        for i, (header, ys) in enumerate(zip(headers, predictions, strict=False)):
            offset = (i - (len(predictions) - 1) / 2) * width
            ax.bar([p + offset for p in positions], ys, width=width * 0.9, color=colours[i % len(colours)],
                   label=str(header))
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
    ax.set_xlabel(f"{feature}  ({note})", fontsize=CHART_FONT_SIZE, color=INK)
    if len(predictions) > 1:
        ax.legend(fontsize=CHART_FONT_SIZE - 1, frameon=False)
    fig.suptitle(str(feature), fontsize=CHART_FONT_SIZE + 1, color=INK, x=0.03, ha="left")
    return fig
