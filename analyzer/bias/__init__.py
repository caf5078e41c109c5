"""Clarify's bias metrics: pre-training (data) and post-training (model) bias, exact and fast.

``bias_analysis`` builds the analysis.json sections, ``bias_report`` one facet's report in the
shape of smclarify's ``bias_report``; the metric functions of ``metrics`` work on contingency counts.
"""

from analyzer.bias.columns import DataType, classify, label_value_or_threshold
from analyzer.bias.flip_test import FT
from analyzer.bias.metrics import (
    AD,
    CDD,
    CDDL,
    CDDPL,
    CI,
    DAR,
    DCA,
    DCR,
    DI,
    DPL,
    DPPL,
    DRR,
    GE,
    JS,
    KL,
    KS,
    LP,
    RD,
    SD,
    TE,
    TVD,
    Confusion,
    GroupCounts,
    divide,
)
from analyzer.bias.report import POST_TRAINING, PRE_TRAINING, bias_analysis, bias_report, metric_names

__all__ = [
    "AD", "CDD", "CDDL", "CDDPL", "CI", "DAR", "DCA", "DCR", "DI", "DPL", "DPPL", "DRR",
    "FT", "GE", "JS", "KL", "KS", "LP", "POST_TRAINING", "PRE_TRAINING", "RD", "SD", "TE", "TVD",
    "Confusion", "DataType", "GroupCounts", "bias_analysis", "bias_report", "classify", "divide",
    "label_value_or_threshold", "metric_names",
]
