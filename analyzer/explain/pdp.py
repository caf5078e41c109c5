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
from analyzer.predict.decode import LabelsNotScores
from analyzer.progress import progress

if TYPE_CHECKING:
    from analyzer.engines import Engine

log = logging.getLogger(__name__)

MAX_RECORDS = 2_000
MULTI_LANGUAGE = "xx"  # spaCy's multi-language tokenizer: free-text detection when no text_config names a language


def labels_not_scores(method: str, error: Exception | None = None,
                      predictions: Predictions | None = None) -> UserError | None:
    """The error to raise when the model answered with labels (strings) where explanations need scores,
    told from a scoring failure (``error``: the parser's ``LabelsNotScores``, whichever way the answer
    came: HTTP or in process, asked as npy or not) or from answers whose scores are not numbers
    (``predictions``: labels located by ``predictor.label``); None when it is not that. The message names
    the keys that choose the model's output."""
    example = ""
    if error is not None:
        if not isinstance(error, LabelsNotScores):
            return None
        example = f" such as {error.label!r}"
    elif predictions is not None:
        label = predictions.label
        if predictions.probability is not None or label is None or label.dtype.kind not in "OUS":
            return None
        values = [v for v in label.ravel().tolist() if not _is_number(v)]
        if not values:
            return None
        example = f" such as {values[0]!r}"
    else:
        return None
    return UserError(f"{method}: the model returns labels{example}, not scores: explanations need a number per "
                     "output (a probability or score). Point predictor.probability (or predictor.label) at the "
                     "scores in the model's answer, or serve a model that returns them (e.g. a classifier's "
                     "predict_proba)")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


FREE_TEXT_ERROR = ("Detected data type is not supported for PDP. PDP can only be computed for numerical or "
                   "categorical columns")  # Clarify's entry for a text feature (contract 4.4)


def free_text_columns(dataset: Dataset, columns: Iterable[int], text_features: frozenset[str] = frozenset(),
                      language: str | None = None) -> set[int]:
    """The ``columns`` PDP gives Clarify's free-text entry: the text features of a ``text_config`` job
    (``text_features``), and any string feature that looks like free text by the rule text jobs use to find
    them (docs/text-explanations.md), whatever methods.shap says: a grid of one point per distinct text
    would score every record once per text. ``language``: the shap ``text_config`` language (None: spaCy's
    multi-language tokenizer)."""
    from .text_job import looks_like_free_text  # text_job's imports are heavy; PDP of numbers needs none

    features = dataset.features
    assert features is not None
    names = dataset.feature_names
    return {j for j in columns
            if names[j] in text_features
            or (features.iloc[:, j].dtype.kind not in "biuf"
                and looks_like_free_text(features.iloc[:, j], language or MULTI_LANGUAGE))}


def grid_points(column: pd.Series, resolution: int) -> int:
    """The grid values ``feature_grid`` makes for ``column``: ``resolution`` for numbers, else one per
    distinct value."""
    return resolution if column.dtype.kind in "biuf" else max(1, int(column.nunique(dropna=True)))


def pdp_columns(pdp: PdpMethod, dataset: Dataset, global_shap: dict[str, dict[str, float]] | None) -> list[int]:
    """The features PDP is computed for, in order: config order, else SHAP rank."""
    from .job import feature_index  # job imports this module

    if pdp.features is not None:
        return list(dict.fromkeys(feature_index(loc, dataset, "methods.pdp.features") for loc in pdp.features))
    if global_shap:
        return top_features(global_shap, dataset.feature_names, pdp.top_k_features)
    raise UserError("methods.pdp: `features` is required when methods.shap is not requested")


def partial_dependence(pdp: PdpMethod, dataset: Dataset, endpoint: ModelEndpoint,
                       global_shap: dict[str, dict[str, float]] | None, *, seed: int = 0,
                       text_features: frozenset[str] = frozenset(), engine: Engine | None = None,
                       label_keys: list[str] | None = None, text_language: str | None = None) -> list[dict[str, Any]]:
    """``explanations.pdp``: one entry per feature, in the order chosen (config order, else SHAP rank).

    Free-text features (``free_text_columns``: the text features of a ``text_config`` job, named in
    ``text_features``, and string features that look like free text) get Clarify's error entry instead.
    ``text_language``: the shap ``text_config`` language, if any.
    ``engine`` asks the model for the grids' rows (None: a client in this process). ``label_keys``: the
    outputs' names (``kernel_shap``'s keys when SHAP ran); else those of the first feature's predictions,
    for every feature (predicted values as keys, spec 4.3, would otherwise differ from feature to feature).
    """
    from .limits import check_pdp_memory  # limits imports this module

    features = dataset.features
    assert features is not None
    columns = pdp_columns(pdp, dataset, global_shap)
    free_text = free_text_columns(dataset, columns, text_features, text_language)
    # The features are known now (SHAP's top features): their grids, categories counted, must fit.
    check_pdp_memory(pdp, dataset, [j for j in columns if j not in free_text])
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = features if len(features) <= MAX_RECORDS else features.iloc[
        np.sort(rng.choice(len(features), MAX_RECORDS, replace=False))]
    entries = []
    grids = {j: feature_grid(features.iloc[:, j], pdp.grid_resolution) for j in columns if j not in free_text}

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
            answer: Predictions | None = None
            try:
                answer = next(answered)
                scores = answer.scores.reshape(len(grid), len(sample), -1)
            except UserError as error:
                labels = labels_not_scores("methods.pdp", error) or labels_not_scores("methods.pdp", predictions=answer)
                if labels is not None:
                    raise labels from None
                raise
            predictions = answer
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
    ``predictor.max_concurrency``, else the client's default). A model answering labels where scores are
    read fails with PDP's message (``labels_not_scores``)."""
    cap = concurrency or getattr(endpoint.predictor, "max_concurrency", None)
    with endpoint.client(**({} if cap is None else {"concurrency": int(cap)})) as client:
        for frame in frames:
            try:
                predictions = client.predict(frame)
            except LabelsNotScores as error:  # worded here: a Spark task hands its errors on as text
                raise labels_not_scores("methods.pdp", error) or error from None
            yield predictions


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
