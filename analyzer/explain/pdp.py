"""Partial dependence (Clarify ``methods.pdp``, contract 2.2 and 4.4).

For feature ``j`` and grid value ``v``, ``model_predictions[label][k]`` is the mean model score over the
records with column ``j`` set to ``v`` (the other columns kept as recorded). Numeric features: ``v`` are the
centres of ``grid_resolution`` equal-width buckets over the feature's range and ``data_distribution`` the
fraction of records in each bucket; categorical features (non-numeric columns): every distinct value, most
frequent first, with its share of records. The mean is over a seeded sample of at most ``MAX_RECORDS``
records: the curve is an average, and ``grid x records`` model rows per feature must stay bounded.

The model is asked through the job's engine (``Engine.map_predictions``): one frame of ``grid x
records`` rows per feature, scored in this process (local) or one Spark task per feature; the means are
taken here, so both engines write the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analyzer.config.model import PdpMethod
from analyzer.data import Dataset
from analyzer.errors import UserError
from analyzer.predict import ModelEndpoint, Predictions
from analyzer.progress import progress

if TYPE_CHECKING:
    from analyzer.engines import Engine

log = logging.getLogger(__name__)

MAX_RECORDS = 2_000


FREE_TEXT_ERROR = ("Detected data type is not supported for PDP. PDP can only be computed for numerical or "
                   "categorical columns")  # Clarify's entry for a text feature (contract 4.4)


def partial_dependence(pdp: PdpMethod, dataset: Dataset, endpoint: ModelEndpoint,
                       global_shap: dict[str, dict[str, float]] | None, *, seed: int = 0,
                       text_features: frozenset[str] = frozenset(), engine: Engine | None = None,
                       label_keys: list[str] | None = None) -> list[dict[str, Any]]:
    """``explanations.pdp``: one entry per feature, in the order chosen (config order, else SHAP rank).

    ``text_features`` (the text features of a ``text_config`` job) get Clarify's error entry instead.
    ``engine`` asks the model for the grids' rows (None: a client in this process). ``label_keys``: the
    outputs' names (``kernel_shap``'s keys when SHAP ran); else those of the first feature's predictions,
    for every feature (predicted values as keys, spec 4.3, would otherwise differ from feature to feature).
    """
    from .job import feature_index  # job imports this module

    features = dataset.features
    assert features is not None
    if pdp.features is not None:
        columns = list(dict.fromkeys(feature_index(loc, dataset, "methods.pdp.features") for loc in pdp.features))
    elif global_shap:
        columns = top_features(global_shap, dataset.feature_names, pdp.top_k_features)
    else:
        raise UserError("methods.pdp: `features` is required when methods.shap is not requested")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = features if len(features) <= MAX_RECORDS else features.iloc[
        np.sort(rng.choice(len(features), MAX_RECORDS, replace=False))]
    entries = []
    grids = {j: feature_grid(features.iloc[:, j], pdp.grid_resolution) for j in columns
             if dataset.feature_names[j] not in text_features}

    def frames() -> Iterator[pd.DataFrame]:
        for j, (grid, _, data_type) in grids.items():
            # Every grid value's copy of the sample in one request batch: (grid value, record) rows.
            rows = pd.concat([sample] * len(grid), ignore_index=True)
            rows.isetitem(j, np.repeat(np.asarray(grid, dtype=float if data_type == "numerical" else object),
                                       len(sample)))
            yield rows

    answered = iter(engine.map_predictions(endpoint, frames()) if engine is not None
                    else predict_frames(endpoint, frames()))
    with _closed(answered), progress("PDP", total=len(columns), unit="features") as bar:
        for j in columns:
            if j not in grids:
                entries.append({"feature_name": dataset.feature_names[j], "data_type": "free_text",
                                "error": FREE_TEXT_ERROR})
                bar.update()
                continue
            grid, distribution, data_type = grids[j]
            predictions = next(answered)
            scores = predictions.scores.reshape(len(grid), len(sample), -1)
            if label_keys is None or len(label_keys) != scores.shape[2]:
                label_keys = predictions.score_keys()
            if not np.isfinite(scores).all():
                raise UserError(f"methods.pdp: the model returned NaN or infinite scores for feature "
                                f"{dataset.feature_names[j]!r}")
            entries.append({
                "feature_name": dataset.feature_names[j],
                "data_type": data_type,
                "feature_values": [_plain(v) for v in grid],
                "data_distribution": distribution,
                "model_predictions": scores.mean(axis=1).T.tolist(),
                "label_headers": label_keys,
            })
            bar.update()
    log.info("Partial dependence of %d feature(s) on %d records in %.2f s", len(entries), len(sample),
             time.perf_counter() - started)
    return entries


@contextmanager
def _closed(answers: Iterator[Predictions]) -> Iterator[None]:
    """Close the engine's generator when PDP stops early (a model error): its client, its Spark job."""
    try:
        yield
    finally:
        close = getattr(answers, "close", None)
        if close is not None:
            close()


def predict_frames(endpoint: ModelEndpoint, frames: Iterable[pd.DataFrame],
                   concurrency: int | None = None) -> Iterator[Predictions]:
    """Each frame's predictions from one client in this process (``LocalEngine.map_predictions``, and
    each Spark task's frames), with at most ``concurrency`` requests in flight (None:
    ``predictor.max_concurrency``, else the client's default)."""
    cap = concurrency or getattr(endpoint.predictor, "max_concurrency", None)
    with endpoint.client(**({} if cap is None else {"concurrency": int(cap)})) as client:
        for frame in frames:
            yield client.predict(frame)


def top_features(global_shap: dict[str, dict[str, float]], names: list[str], k: int) -> list[int]:
    """The ``k`` features with the largest global SHAP magnitude summed over labels (ties: column order)."""
    weight: dict[str, float] = {}
    for values in global_shap.values():
        for name, value in values.items():
            weight[name] = weight.get(name, 0.0) + abs(value)
    ranked = sorted(weight, key=lambda name: (-weight[name], names.index(name)))
    return [names.index(name) for name in ranked[:k]]


def feature_grid(column: pd.Series, resolution: int) -> tuple[list[Any], list[float], str]:
    """Grid values, share of records per grid cell, and the contract's ``data_type``."""
    present = column.dropna()
    if len(present) == 0:
        raise UserError(f"methods.pdp: feature {column.name!r} has no values")
    if column.dtype.kind in "biuf":
        values = present.to_numpy(dtype=float)
        low, high = float(values.min()), float(values.max())
        # Values near the float limit (1e308) overflow a span or a sum of two edges: those take the
        # interpolation and the halves, which give the same numbers wherever the usual ones are finite.
        with np.errstate(over="ignore", invalid="ignore"):
            edges = np.linspace(low, high, resolution + 1)
        if not np.isfinite(edges).all():
            t = np.linspace(0.0, 1.0, resolution + 1)
            edges = low * (1 - t) + high * t
            edges[-1] = high
        with np.errstate(over="ignore"):
            centres = (edges[:-1] + edges[1:]) / 2
        if not np.isfinite(centres).all():
            centres = edges[:-1] / 2 + edges[1:] / 2
        counts = np.histogram(values, bins=edges)[0] if high > low else np.eye(resolution, dtype=int)[0] * len(values)
        return centres.tolist(), (counts / len(column)).tolist(), "numerical"
    counts = present.value_counts(sort=True)
    return counts.index.tolist(), (counts.to_numpy() / len(column)).tolist(), "categorical"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
