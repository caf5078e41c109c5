"""``Dataset``: what the data layer hands to the analyses.

Role columns (label, predicted label, facets, group variable, joinsource) are ``Column`` objects,
compact enough to keep for any row count. The model's feature matrix is only materialised when an
analysis needs it (the Flip Test, and later predictions and SHAP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analyzer.data.column import Column


@dataclass
class Dataset:
    source: str  # what was read, for log lines and errors (path or URI)
    n_rows: int
    headers: list[str]  # names of the tabular view's columns, in dataset order
    feature_names: list[str]  # columns sent to the model: headers minus label, predicted label,
    #                           excluded columns and joinsource (facet-dataset columns are never features)
    label: Column | None = None
    predicted_label: Column | None = None
    facets: dict[str, Column] = field(default_factory=dict)  # key: facet header name, config order
    group: Column | None = None
    joinsource: Column | None = None
    features: pd.DataFrame | None = None  # feature_names columns, RangeIndex 0..n_rows-1, when loaded
