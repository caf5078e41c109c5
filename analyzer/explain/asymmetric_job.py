"""The time-series explanation job: items -> model forecasts -> asymmetric Shapley values -> outputs.

Glue between the config and the pure explainer (``asymmetric_shapley``): it reads the baseline
(inline or a JSON file), turns the job's ``ModelEndpoint`` into a ``Forecast`` callable (records sent
through the predictor's ``record_template`` placeholders ``$start_time``, ``$target_time_series``,
``$related_time_series``, ``$static_covariates``; forecasts read with
``time_series_predictor_config.forecast``), and writes ``asymmetric_shapley_value/<granularity>_<direction>/
out.jsonl`` through the job's ``OutputStaging`` (published atomically with ``analysis.json``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from analyzer import media
from analyzer.config.model import AnalysisConfig, AsymmetricShapleyValueMethod, Predictor
from analyzer.config.rules import time_series_template_problem
from analyzer.data.files import resolve_local_path
from analyzer.data.time_series import TimeSeriesDataset, TimeSeriesItem
from analyzer.errors import UserError
from analyzer.explain.asymmetric_shapley import (
    MEAN,
    RECORD_FIELDS,
    ZERO,
    AsymmetricShapleyExplainer,
    Forecast,
    TimeSeriesBaseline,
)
from analyzer.output import OutputStaging, to_json_safe
from analyzer.predict import ModelEndpoint

log = logging.getLogger(__name__)

METHOD = "asymmetric_shapley_value"
KEY = f"methods.{METHOD}"
FORECAST_KEY = "predictor.time_series_predictor_config.forecast"
RECORDS_PER_CALL = 20_000  # coalition records sent in one predict call (items are never split)


def output_file(method: AsymmetricShapleyValueMethod) -> str:
    """``asymmetric_shapley_value/<granularity>_<direction>/out.jsonl`` (spec 4.6)."""
    return f"{METHOD}/{method.granularity}_{method.direction}/out.jsonl"


def read_baseline(baseline: str | dict[str, Any] | None, base_dir: Path | None) -> TimeSeriesBaseline:
    """The configured baseline: the inline object, or a JSON file (path or ``file://`` URI, relative to
    the config's folder) holding the same object."""
    if baseline is None:
        return TimeSeriesBaseline()
    where = f"{KEY}.baseline"
    if isinstance(baseline, str):
        from analyzer.config.parser import read_json_file

        path = resolve_local_path(baseline, base_dir=base_dir)
        if not path.is_file():
            raise UserError(f"{where}: {path} is not a file (give a JSON file holding the baseline object)")
        where = f"{where} ({path})"
        baseline = read_json_file(path, "asymmetric Shapley value baseline")
    if not isinstance(baseline, dict):
        raise UserError(f"{where} must be a JSON object with target_time_series, related_time_series and/or "
                        "static_covariates")
    problems = [f"unknown key {key!r}" for key in baseline
                if key not in ("target_time_series", "related_time_series", "static_covariates")]
    for key in ("target_time_series", "related_time_series"):
        if baseline.get(key, ZERO) not in (ZERO, MEAN):
            problems.append(f"{key} must be \"zero\" or \"mean\", got {baseline[key]!r}")
    static = baseline.get("static_covariates")
    if static is not None and (not isinstance(static, dict)
                               or not all(isinstance(v, list) for v in static.values())):
        problems.append("static_covariates must map each item id to a list of values")
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))
    return TimeSeriesBaseline(baseline.get("target_time_series", ZERO), baseline.get("related_time_series", ZERO),
                              {str(k): v for k, v in static.items()} if static is not None else None)


def forecast_endpoint(endpoint: ModelEndpoint) -> ModelEndpoint:
    """The job's endpoint, reading forecasts: one record per coalition (``RECORD_FIELDS``), the
    ``forecast`` JMESPath as the score locator."""
    predictor = endpoint.predictor
    config = predictor.time_series_predictor_config or {}
    if not config.get("forecast"):
        raise UserError(f"{FORECAST_KEY} is required for time-series explanations")
    scoring = replace(predictor, probability=config["forecast"], label=None, label_headers=None)
    return replace(endpoint, predictor=scoring, feature_names=RECORD_FIELDS)


def check_templates(predictor: Predictor, dataset: TimeSeriesDataset) -> None:
    """Placeholders the data cannot fill are the user's error; series the model never sees are logged
    (their values are then all zero)."""
    template = predictor.record_template if media.media_type(predictor.content_type) == media.JSON else \
        predictor.content_template
    if not isinstance(template, str):
        return
    used = {slot.name for slot in media.placeholders(template)}
    where = "predictor.record_template" if template is predictor.record_template else "predictor.content_template"
    problem = time_series_template_problem(template)
    if problem:
        raise UserError(f"{where} {template!r}: {problem}")
    if "target_time_series" not in used:
        raise UserError(f"{where} {template!r} must contain $target_time_series (the history to forecast from)")
    for name, names in (("related_time_series", dataset.related_names), ("static_covariates", dataset.static_names)):
        if name in used and not names:
            raise UserError(f"{where} uses ${name}, but time_series_data_config has no {name}")
        if names and name not in used:
            log.warning("%s has no $%s: the model never sees %s, whose asymmetric Shapley values will be zero",
                        where, name, ", ".join(names))


@contextmanager
def endpoint_forecast(endpoint: ModelEndpoint) -> Iterator[Forecast]:
    """A ``Forecast`` callable over the model behind ``endpoint`` (one client, closed afterwards)."""
    scoring = forecast_endpoint(endpoint)
    with scoring.client() as client:
        def forecast(records: pd.DataFrame) -> np.ndarray:
            try:
                return client.predict(records).scores
            except UserError as error:  # the parser names the locator it was given: name the config key
                raise type(error)(str(error).replace("predictor.probability", FORECAST_KEY)) from None

        yield forecast


def time_series_explanations(config: AnalysisConfig, dataset: TimeSeriesDataset, endpoint: ModelEndpoint | None,
                             staging: OutputStaging, base_dir: Path | None = None, *,
                             output_uri: str | None = None) -> dict[str, Any]:
    """Explain every item's forecast, write ``out.jsonl`` into ``staging`` and return the ``explanations``
    section of ``analysis.json`` (spec 4.6). ``explanation_results_path`` is where ``out.jsonl`` is
    published: under ``output_uri`` (the output's S3 URI, as Clarify writes it) when known, else its
    local path."""
    method = config.methods.asymmetric_shapley_value
    if method is None:
        return {}
    if endpoint is None:
        raise UserError(f"{KEY}: no model was given to forecast with")
    explainer = AsymmetricShapleyExplainer(method.direction, method.granularity, method.num_samples,
                                           read_baseline(method.baseline, base_dir))
    check_baseline(explainer, dataset)
    check_templates(endpoint.predictor, dataset)
    if config.methods.report is not None:  # the SDK adds methods.report to every config it writes
        log.info("methods.report: no report is written for time-series explanations (as Clarify); "
                 "the values are in out.jsonl")
    relative = output_file(method)
    started = time.perf_counter()
    series = [dataset.target_name, *dataset.related_names]
    lines = 0
    with staging.path(relative).open("wb") as out, endpoint_forecast(endpoint) as forecast:
        for chunk in _chunks(dataset.items, explainer, series, dataset.static_names):
            for explanation in explainer.explain(chunk, forecast, series, dataset.static_names):
                out.write(orjson.dumps(to_json_safe(explanation.document())) + b"\n")
                lines += 1
    published = staging.output_dir / relative
    log.info("Wrote %d lines to %s (asymmetric Shapley values, %s %s, %.2f s)", lines, published,
             method.granularity, method.direction, time.perf_counter() - started)
    return {METHOD: {"direction": method.direction, "granularity": method.granularity,
                     "explanation_results_path": (f"{output_uri.rstrip('/')}/{relative}" if output_uri
                                                  else str(published.resolve()))}}


def check_baseline(explainer: AsymmetricShapleyExplainer, dataset: TimeSeriesDataset) -> None:
    """Every item has the baseline values it needs (static covariates per item), checked before the
    model is asked anything."""
    for item in dataset.items:
        explainer.baseline.for_item(item)


def check_time_series_inputs(config: AnalysisConfig, dataset: TimeSeriesDataset, base_dir: Path | None) -> list[str]:
    """What ``lucent validate`` reports for a time-series job: the baseline and the request template."""
    method = config.methods.asymmetric_shapley_value
    if method is None:
        return []
    problems = []
    try:
        explainer = AsymmetricShapleyExplainer(method.direction, method.granularity, method.num_samples,
                                               read_baseline(method.baseline, base_dir))
        check_baseline(explainer, dataset)
    except UserError as error:
        problems.append(str(error))
    if config.predictor is not None:
        try:
            check_templates(config.predictor, dataset)
        except UserError as error:
            problems.append(str(error))
    return problems


def _chunks(items: list[TimeSeriesItem], explainer: AsymmetricShapleyExplainer, series: list[str],
            statics: list[str]) -> Iterator[list[TimeSeriesItem]]:
    """Items in groups of about ``RECORDS_PER_CALL`` coalition records (one predict call each)."""
    chunk: list[TimeSeriesItem] = []
    records = 0
    for item in items:
        size = len(explainer.plan(item, series, statics).masks)
        if chunk and records + size > RECORDS_PER_CALL:
            yield chunk
            chunk, records = [], 0
        chunk.append(item)
        records += size
    if chunk:
        yield chunk
