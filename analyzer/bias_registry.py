"""Clarify's bias metrics, each declared once (in the style of fairlearn's ``METRICS_SPEC``).

One record per metric holds every fact about it: the short name of analysis.json and of the
config's method lists, Clarify's description string, the stage, the values it can take, the ideal
value, which side a positive value points against, one plain sentence for report readers, what its
function takes, and the function itself (``analyzer.bias.metrics.<name>``, the Flip Test's
``analyzer.bias.flip_test.FT``: the same name-to-function rule as smclarify's registry). Config
validation, the bias report, the metric functions and the human-readable reports all read this
list; tests check it against the contract (bias-metrics.md) and against smclarify.

This module imports only the standard library and imports the metric functions on first use:
the report notebook carries a copy of it next to ``analyzer/report/views.py`` so that it runs
without Lucent, and ``analyzer.config`` reads it without loading numpy or scikit-learn.
"""

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

PRE_TRAINING = "pre_training"
POST_TRAINING = "post_training"

# What a metric's function takes (how the bias report calls it).
SIDES = "sides"  # (a, d): the confusion counts of both facet sides
LABEL_DISTRIBUTIONS = "label_distributions"  # (counts_a, counts_d): each side's label counts
GROUPS = "groups"  # per-group counts of the stage's outcome (labels pre-training, predictions post)
OVERALL = "overall"  # the confusion counts of the whole dataset
FEATURES = "features"  # the feature rows of both sides (the Flip Test)

INF = math.inf


@dataclass(frozen=True)
class BiasMetric:
    """Everything Lucent knows about one bias metric, independent of any value."""

    name: str  # short name: analysis.json "name" and the config's method lists
    description: str  # Clarify's exact analysis.json "description" (smclarify: first docstring line)
    stage: str  # PRE_TRAINING or POST_TRAINING
    inputs: str  # SIDES, LABEL_DISTRIBUTIONS, GROUPS, OVERALL or FEATURES
    low: float  # the smallest and largest values Clarify's implementation can return
    high: float  # (bias-metrics.md sections 3 and 4, "range (impl.)"), not the documentation's
    ideal: float  # the value of no bias
    # +1: positive values favour everyone else (point against the group); -1: negative values do;
    # 0: no direction (a distance). bias-metrics.md 4.3, with FT in its implementation sign.
    direction: int
    measures: str  # one plain sentence for report readers
    infinite: bool = False  # the value can be +/-Infinity (a division by zero Clarify keeps)
    # A ratio of two rates (DI): q and 1/q are equally far from the ideal 1, so distances from it are
    # measured on a log scale. Every other metric is a difference or a distance, measured linearly.
    ratio: bool = False

    @property
    def function(self) -> Callable[..., float]:
        """The implementation (imported on first use, so that this module stays standard-library only)."""
        module = "analyzer.bias.flip_test" if self.inputs == FEATURES else "analyzer.bias.metrics"
        return _implementation(module, self.name)

    def distance_from_ideal(self, value: float) -> float:
        """How far ``value`` is from no bias, the scale on which monitoring compares a window's value with
        its baseline (docs/monitoring-drift.md): ``|value - ideal|``, or ``|ln value|`` for a ratio (DI 0.5
        and DI 2 are equally far from parity; DI 0 and DI +inf are infinitely far). NaN stays NaN."""
        if self.ratio:
            if value < 0 or math.isnan(value):
                return math.nan
            return math.inf if value in (0, math.inf) else abs(math.log(value))
        return abs(value - self.ideal)


@functools.cache
def _implementation(module: str, name: str) -> Callable[..., float]:
    """Looked up once per metric: a bootstrap calls each function thousands of times."""
    return getattr(importlib.import_module(module), name)


_B = BiasMetric
_DIFFERENCE = {"low": -1, "high": 1, "ideal": 0}  # a difference of two shares
_UNBOUNDED = {"low": -INF, "high": INF, "ideal": 0, "infinite": True}  # a difference of two ratios

# smclarify's registration order within each stage (it shows in the "Invalid metric_name" error);
# reports list the metrics alphabetically.
BIAS_METRICS: tuple[BiasMetric, ...] = (
    _B("CI", "Class Imbalance (CI)", PRE_TRAINING, SIDES, **_DIFFERENCE, direction=+1,
       measures="Whether the group has fewer rows than everyone else (positive) or more (negative)."),
    _B("DPL", "Difference in Positive Proportions in Labels (DPL)", PRE_TRAINING, SIDES, **_DIFFERENCE,
       direction=+1, measures="Share of positive labels outside the group minus the share inside it."),
    # KL keeps only the label values present on both sides without renormalising, so it can be negative.
    _B("KL", "Kullback-Liebler Divergence (KL)", PRE_TRAINING, LABEL_DISTRIBUTIONS, -INF, INF, 0, 0,  # sic
       "How different the label distribution of the group is from everyone else's (in nats)."),
    _B("JS", "Jensen-Shannon Divergence (JS)", PRE_TRAINING, LABEL_DISTRIBUTIONS, 0, math.log(2), 0, 0,
       "How different the label distributions of the group and everyone else are (symmetric)."),
    _B("LP", "L-p Norm (LP)", PRE_TRAINING, LABEL_DISTRIBUTIONS, 0, math.sqrt(2), 0, 0,
       "Euclidean distance between the label distributions of the group and everyone else."),
    _B("TVD", "Total Variation Distance (TVD)", PRE_TRAINING, LABEL_DISTRIBUTIONS, 0, 1, 0, 0,
       "Half the summed difference between the two label distributions."),
    _B("KS", "Kolmogorov-Smirnov Distance (KS)", PRE_TRAINING, LABEL_DISTRIBUTIONS, 0, 1, 0, 0,
       "The largest gap between the two groups in the share of any one label value."),
    _B("CDDL", "Conditional Demographic Disparity in Labels (CDDL)", PRE_TRAINING, GROUPS, **_DIFFERENCE,
       direction=+1, measures="Within each subgroup of the group variable, how much larger the group's share "
       "of the negative labels is than its share of the positive labels, averaged over subgroups."),
    _B("DPPL", "Difference in Positive Proportions in Predicted Labels (DPPL)", POST_TRAINING, SIDES,
       **_DIFFERENCE, direction=+1,
       measures="Share of positive predictions outside the group minus the share inside it."),
    _B("DI", "Disparate Impact (DI)", POST_TRAINING, SIDES, 0, INF, 1, +1,
       "Rate of positive predictions inside the group divided by the rate outside it.", infinite=True,
       ratio=True),
    _B("DCA", "Difference in Conditional Acceptance (DCA)", POST_TRAINING, SIDES, **_UNBOUNDED, direction=-1,
       measures="Ratio of actual to predicted positives outside the group minus inside it."),
    _B("DCR", "Difference in Conditional Rejection (DCR)", POST_TRAINING, SIDES, **_UNBOUNDED, direction=-1,
       measures="Ratio of actual to predicted negatives inside the group minus outside it."),
    _B("RD", "Recall Difference (RD)", POST_TRAINING, SIDES, **_DIFFERENCE, direction=+1,
       measures="Of the actually positive rows, the share predicted positive outside the group minus inside "
       "it."),
    _B("SD", "Specificity Difference (SD)", POST_TRAINING, SIDES, **_DIFFERENCE, direction=-1,
       measures="Of the actually negative rows, the share predicted negative inside the group minus outside "
       "it."),
    _B("DAR", "Difference in Acceptance Rates (DAR)", POST_TRAINING, SIDES, **_DIFFERENCE, direction=+1,
       measures="Precision (how often a positive prediction is right) outside the group minus inside it."),
    _B("DRR", "Difference in Rejection Rates (DRR)", POST_TRAINING, SIDES, **_DIFFERENCE, direction=-1,
       measures="How often a negative prediction is right inside the group minus outside it."),
    _B("AD", "Accuracy Difference (AD)", POST_TRAINING, SIDES, **_DIFFERENCE, direction=+1,
       measures="Accuracy of the predictions outside the group minus inside it."),
    _B("CDDPL", "Conditional Demographic Disparity in Predicted Labels (CDDPL)", POST_TRAINING, GROUPS,
       **_DIFFERENCE, direction=+1,
       measures="CDDL computed on the model's predictions instead of the labels."),
    _B("TE", "Treatment Equality (TE)", POST_TRAINING, SIDES, **_UNBOUNDED, direction=+1,
       measures="False negatives per false positive inside the group minus outside it."),
    _B("FT", "Flip Test (FT)", POST_TRAINING, FEATURES, **_DIFFERENCE, direction=-1,
       measures="Compares each group member's prediction with the predictions for their most similar people "
       "outside the group (sign as in Clarify's implementation: negative = against the group)."),
    # GE's largest value is (N - 1) / 2 for N rows (the documentation's 0.5 is wrong): unbounded in N.
    _B("GE", "Generalized Entropy (GE)", POST_TRAINING, OVERALL, 0, INF, 0, 0,
       "Inequality, over all rows, of the benefit the model gives each person (1 + prediction − label). "
       "The same for every group."),
)

BIAS_METRICS_BY_NAME: dict[str, BiasMetric] = {metric.name: metric for metric in BIAS_METRICS}


def registered_names(stage: str) -> tuple[str, ...]:
    """The metric names of ``stage`` in smclarify's registration order; ValueError for another stage."""
    if stage not in (PRE_TRAINING, POST_TRAINING):
        raise ValueError("stage_type should be a Enum value of StageType")
    return tuple(metric.name for metric in BIAS_METRICS if metric.stage == stage)
