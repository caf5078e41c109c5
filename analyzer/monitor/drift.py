"""Constraints and violations of a monitoring execution (spec model-monitor.md section 5).

The constraints file is a baseline ``analysis.json``; a window's ``analysis.json`` is checked against
it. Bias drift: a metric whose window value is farther from the metric's ideal value than the
baseline's value is a ``bias_drift_check`` violation, where "farther" is measured on the scale the
metric registry declares (``BiasMetric.distance_from_ideal``: linear, log for the DI ratio).
Feature-attribution drift: the NDCG of the window's global SHAP ranking against the baseline's, per
label, below a threshold (0.9) is a ``feature_attribution_drift_check`` violation.

Beyond Clarify, ``add_bootstrap_intervals`` puts a percentile bootstrap interval (``lucent_ci``) beside
each window bias metric, so that ``bias_violations(..., use_intervals=True)`` raises a violation only
when the whole interval is worse than the baseline: small windows then do not cry wolf. The bootstrap
redraws the facet group's contingency cells (a multinomial over the cells is a row bootstrap, exactly
in distribution) and recomputes every metric from the redrawn counts with the functions
``bias_analysis`` uses, so 1,000 resamples cost milliseconds whatever the number of rows.

The rules, metric by metric, are written up in docs/monitoring-drift.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from analyzer.bias.report import StageCells, metric_from_split, split_from_cells, stage_cells
from analyzer.bias_registry import BIAS_METRICS_BY_NAME, BiasMetric
from analyzer.config import AnalysisConfig
from analyzer.data import Dataset
from analyzer.errors import UserError
from analyzer.monitor.attributes import BIAS, KINDS
from analyzer.output import to_json_safe
from analyzer.pipeline import STAGES

log = logging.getLogger(__name__)

VIOLATIONS_VERSION = "1.0"
BIAS_DRIFT_CHECK = "bias_drift_check"
ATTRIBUTION_DRIFT_CHECK = "feature_attribution_drift_check"
ATTRIBUTION_METRIC = "shap"
DEFAULT_ATTRIBUTION_THRESHOLD = 0.9  # DG: "If the score is less than 0.9, then a violation is logged"
LUCENT_KEY = "lucent"  # Lucent's own section of analysis.json / of a constraints file
THRESHOLD_KEY = "feature_attribution_drift_threshold"  # under LUCENT_KEY in the constraints file
BOOTSTRAP_VARIABLE = "LUCENT_BOOTSTRAP"
CI_KEY = "lucent_ci"  # [low, high] beside "value" in a bias metric entry

DEFAULT_RESAMPLES = 1000
NO_INTERVAL_METRICS = frozenset({"FT"})  # needs the feature rows: a bootstrap would rerun the neighbour search
RESAMPLE_CHUNK_CELLS = 1 << 20  # redrawn cells held at once (8 MB of int64)
_JSON_NUMBERS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}
_STAGE_KEYS = tuple(key for _, key, _ in STAGES)  # analysis.json order: post-training first, as Clarify


# --------------------------------------------------------------------------------------------
# Values as analysis.json writes them
# --------------------------------------------------------------------------------------------


def _number(value: Any, where: str) -> float | None:
    """A metric value of analysis.json as a float: numbers, "Infinity" / "-Infinity" (Clarify's strings),
    None (a metric that failed). Anything else is a broken constraints file: UserError naming ``where``."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in _JSON_NUMBERS:
            return _JSON_NUMBERS[value]
    elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    raise UserError(f"{where}: expected a number, \"Infinity\" or \"-Infinity\", got {value!r}")


def _value_text(value: Any) -> str:
    """A value as the violation descriptions print it: Python's repr of a float (shortest round trip,
    as in the real file: "-0.14", "0.37745519271384836"), "Infinity" / "-Infinity" as analysis.json."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    number = float(value)
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


_INTERVAL = re.compile(r"\((?P<left>[^,()\[\]]+), (?P<right>[^,()\[\]]+)\]")


def group_key(value_or_threshold: Any) -> tuple[str, Any]:
    """What identifies a facet group (or a positive label) across datasets.

    A categorical value is its string ("0", "1,2"). A threshold group is printed as pandas intervals whose
    last upper bound is the data's maximum ("(100, 243]" in the baseline, "(100, 232]" in a window with
    smaller values), so it is identified by its lower bounds as numbers ("(100.0, 243.0]" from a float
    column matches too).
    """
    text = str(value_or_threshold)
    intervals = list(_INTERVAL.finditer(text))
    if intervals and ",".join(m.group(0) for m in intervals) == text:
        try:
            return "thresholds", tuple(float(m["left"]) for m in intervals)
        except ValueError:
            pass
    return "values", text


# --------------------------------------------------------------------------------------------
# Bias drift
# --------------------------------------------------------------------------------------------


def _closest_distance(metric: BiasMetric, low: float, high: float) -> float:
    """The smallest distance from the ideal of any value in [low, high] (0 when the interval holds the
    ideal). Distances grow monotonically away from the ideal on both sides, so the ends decide."""
    if low <= metric.ideal <= high:
        return 0.0
    return min(metric.distance_from_ideal(low), metric.distance_from_ideal(high))


def _interval(entry: Mapping[str, Any], where: str) -> tuple[float, float] | None:
    interval = entry.get(CI_KEY)
    if interval is None:
        return None
    if not isinstance(interval, list | tuple) or len(interval) != 2:
        raise UserError(f"{where}: {CI_KEY} must be [low, high], got {interval!r}")
    low, high = (_number(end, f"{where} {CI_KEY}") for end in interval)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return low, high


def is_worse(metric: BiasMetric, live: float | None, baseline: float | None,
             interval: tuple[float, float] | None = None) -> bool:
    """Whether a window value violates its baseline constraint: it is farther from the metric's ideal
    than the baseline value (a tie is no violation). With ``interval``, the whole interval must be farther.

    No violation when either value is missing or NaN (a metric that could not be computed on the
    window or on the baseline says nothing about drift). Infinite values are infinitely far: a window
    at +/-Infinity violates any finite baseline, and never a baseline that is itself infinite.
    """
    if live is None or baseline is None or math.isnan(live) or math.isnan(baseline):
        return False
    allowed = metric.distance_from_ideal(baseline)
    distance = _closest_distance(metric, *interval) if interval is not None else metric.distance_from_ideal(live)
    return distance > allowed


def _metric_entries(document: Mapping[str, Any]) -> Iterator[tuple[str, str, str, Mapping[str, Any]]]:
    """(stage key, facet, facet value, metric entry) of every bias metric, in analysis.json order."""
    for key in _STAGE_KEYS:
        section = document.get(key)
        if not isinstance(section, Mapping):
            continue
        for facet, groups in (section.get("facets") or {}).items():
            for group in groups or []:
                for entry in group.get("metrics") or []:
                    yield key, facet, str(group.get("value_or_threshold")), entry


def bootstrap_violations_enabled() -> bool:
    """``LUCENT_BOOTSTRAP=1``: violations only when the whole bootstrap interval is worse. Unset, blank or
    0 is off; any other value is a ``UserError`` naming the variable (a typo must not silently change the
    alerting rule)."""
    text = os.environ.get(BOOTSTRAP_VARIABLE, "").strip()
    if text not in ("", "0", "1"):
        raise UserError(f"{BOOTSTRAP_VARIABLE}={text!r}: must be 1 (violations only when the whole bootstrap "
                        "interval is worse) or 0")
    return text == "1"


def bias_violations(window: dict, baseline: dict, *, use_intervals: bool = False,
                    source: str = "constraints file") -> list[dict]:
    """The ``bias_drift_check`` violations of a window's analysis.json against the baseline's.

    One violation per (stage, facet, facet value, metric) whose window value ``is_worse`` than the
    baseline value of the same metric, facet and facet value, in analysis.json order (post-training
    first, metrics alphabetical, as the real file lists them). Metrics without a baseline entry are not
    checked (``check_constraints_match`` refuses a baseline with no matching facet or label first).

    ``use_intervals`` (``LUCENT_BOOTSTRAP=1``): a metric with a ``lucent_ci`` interval violates only when
    the whole interval is worse; one without (FT, or too few valid resamples) falls back to its value.
    ``source`` names the baseline in messages ("constraints file s3://.../analysis.json").
    """
    baseline_values: dict[tuple[str, str, tuple, str], Any] = {}
    for key, facet, facet_value, entry in _metric_entries(baseline):
        baseline_values[(key, facet, group_key(facet_value), str(entry.get("name")))] = entry.get("value")
    violations = []
    for key, facet, facet_value, entry in _metric_entries(window):
        name = str(entry.get("name"))
        metric = BIAS_METRICS_BY_NAME.get(name)
        constraint_key = (key, facet, group_key(facet_value), name)
        if metric is None or constraint_key not in baseline_values:
            continue
        where = f"{key} facet {facet!r} value {facet_value!r} metric {name}"
        baseline_value = baseline_values[constraint_key]
        live = _number(entry.get("value"), f"window analysis.json {where}")
        allowed = _number(baseline_value, f"{source} {where}")
        interval = _interval(entry, f"window analysis.json {where}") if use_intervals else None
        if is_worse(metric, live, allowed, interval):
            violations.append({
                "facet": facet,
                "facet_value": facet_value,
                "metric_name": name,
                "constraint_check_type": BIAS_DRIFT_CHECK,
                "description": f"Metric value {_value_text(entry['value'])} doesn't meet the baseline "
                               f"constraint requirement {_value_text(baseline_value)}",
            })
    return violations


# --------------------------------------------------------------------------------------------
# Does the constraints file fit the window?
# --------------------------------------------------------------------------------------------


def _quoted(names: Any) -> str:
    names = list(names)
    return ", ".join(repr(str(n)) for n in names) if names else "none"


def _numbers_hint(facet: str, live_values: list[str], base_values: list[str], dataset: Dataset | None) -> str:
    """Why a window's facet values can be intervals where the baseline's are categories: the captured values
    are numbers (``1.0``), so the configured value is a threshold; a hint on what to send instead."""
    def threshold(value: str) -> bool:  # a threshold facet's group: "(0.0, 35.0]"
        return group_key(value)[0] == "thresholds"

    if not live_values or not all(map(threshold, live_values)) or any(map(threshold, base_values)):
        return ""
    column = dataset.facets.get(facet) if dataset is not None else None
    values = column.uniques.head(3).tolist() if column is not None else []
    examples = f" ({', '.join(map(repr, values))}{', ...' if len(column.uniques) > 3 else ''})" if values else ""
    whole = next((v for v in values if isinstance(v, float) and v.is_integer() and v), 1.0)
    return (f". The captured values of {facet!r} are numbers{examples}, so the window reads the facet's "
            "value_or_threshold as a threshold, while the constraints file has categories: send the values as "
            f"the baseline's data has them ({int(whole)}, not {whole!r}: the SDK's CSVSerializer sends a pandas row "
            "as floats; cast integer columns to int before sending), or make the baseline from data sent the same "
            "way")


def _bias_mismatches(window: Mapping[str, Any], baseline: Mapping[str, Any], dataset: Dataset | None = None) -> list[str]:
    problems = []
    hinted: set[str] = set()  # the numbers hint once per facet, not once per stage
    for key in _STAGE_KEYS:
        live = window.get(key)
        if not isinstance(live, Mapping):
            continue
        base = baseline.get(key)
        if not isinstance(base, Mapping):
            problems.append(f"it has no {key} section, which the window computes")
            continue
        if str(base.get("label")) != str(live.get("label")):
            problems.append(f"its {key} label is {base.get('label')!r}, the window's is {live.get('label')!r}")
        if group_key(base.get("label_value_or_threshold")) != group_key(live.get("label_value_or_threshold")):
            problems.append(f"its {key} label_value_or_threshold is {base.get('label_value_or_threshold')!r}, "
                            f"the window's is {live.get('label_value_or_threshold')!r}")
        base_facets = base.get("facets") or {}
        for facet, groups in (live.get("facets") or {}).items():
            if facet not in base_facets:
                problems.append(f"it has no facet {facet!r} in {key} (it has {_quoted(base_facets)})")
                continue
            base_values = [str(g.get("value_or_threshold")) for g in base_facets[facet] or []]
            live_values = [str(g.get("value_or_threshold")) for g in groups or []]
            base_keys = {group_key(v) for v in base_values}
            unmatched = [v for v in live_values if group_key(v) not in base_keys]
            if live_values and len(unmatched) == len(live_values):
                problems.append(f"it has no value of facet {facet!r} the window has in {key}: the window has "
                                f"{_quoted(live_values)}, the constraints file {_quoted(base_values)}"
                                + ("" if facet in hinted else _numbers_hint(facet, live_values, base_values, dataset)))
                hinted.add(facet)
            elif unmatched:
                # A one-vs-all facet can meet a value live that the baseline data never had: nothing to
                # compare it with, which is no reason to fail the other values' checks.
                log.warning("Facet %r values %s are not in the constraints file (%s): not checked", facet,
                            _quoted(unmatched), key)
    if not any(isinstance(window.get(key), Mapping) for key in _STAGE_KEYS):
        problems.append("the window has no bias metrics to check")
    return problems


def _kernel_shap(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    section = (document.get("explanations") or {}).get("kernel_shap")
    return section if isinstance(section, Mapping) else None


def _attribution_mismatches(window: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    live = _kernel_shap(window)
    if live is None:
        return ["the window has no explanations.kernel_shap to check"]
    base = _kernel_shap(baseline)
    if base is None:
        return ["it has no explanations.kernel_shap section"]
    problems = []
    for label, entry in live.items():
        if label not in base:
            problems.append(f"it has no label {label!r} in explanations.kernel_shap (it has {_quoted(base)})")
            continue
        live_features = list((entry or {}).get("global_shap_values") or {})
        base_features = list((base[label] or {}).get("global_shap_values") or {})
        missing = [f for f in live_features if f not in base_features]
        extra = [f for f in base_features if f not in live_features]
        if missing or extra:
            problems.append(f"label {label!r}: features of the window not in it: {_quoted(missing)}; "
                            f"features in it not in the window: {_quoted(extra)}")
    return problems


def check_constraints_match(window: dict, baseline: dict, kind: str, dataset: Dataset | None = None) -> None:
    """Refuse a constraints file that cannot be compared with the window: ``UserError`` listing, at once,
    every stage, label, facet, facet value (bias) or label and feature (explainability) it lacks.

    ``kind`` is ``"ModelBias"`` or ``"ModelExplainability"`` (the monitor's type). For bias, every stage
    the window computed needs the same label and positive label value in the constraints file, each
    facet needs to be there, with at least one of the window's facet values (values only the window
    has are logged and not checked: a one-vs-all facet can meet a new value live). ``dataset``: the window's
    records, for the captured values a hint quotes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(baseline, Mapping):
        raise UserError(f"The constraints file must be a baseline analysis.json object, got {type(baseline).__name__}")
    problems = _bias_mismatches(window, baseline, dataset) if kind == BIAS else _attribution_mismatches(window, baseline)
    if problems:
        raise UserError("The constraints file does not match this monitor's analysis: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Feature-attribution drift
# --------------------------------------------------------------------------------------------


def _finite_attributions(values: Mapping[str, Any], features: list[str], where: str) -> np.ndarray:
    """The attributions of ``features`` as floats; ``ValueError`` naming ``where`` and the feature for a value
    that is not a finite number (null, "NaN", "Infinity", a string)."""
    numbers = np.empty(len(features), dtype=float)
    for i, feature in enumerate(features):
        value = values[feature]
        number = math.nan
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
            number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{where}feature {feature!r}: expected a finite number, got {value!r}")
        numbers[i] = number
    return numbers


def _dcg(gains: np.ndarray, scores: np.ndarray, discount: np.ndarray) -> float:
    """DCG of ``gains`` in the order of ``scores`` (highest first), ties of ``scores`` averaged as sklearn does.

    The gains are put in the ranked order and each tie group holding different gains gets their mean in
    every position of the group (McSherry and Najork; the same value as averaging the group's discounts),
    then one dot product with the discounts. A tie group whose gains are all equal keeps them unchanged:
    the ideal ranking (``scores`` = ``gains``) is then exactly the gains sorted, and any ranking consistent
    with it gives the same array, so the same float: an unchanged ranking scores exactly 1.0.
    """
    order = np.lexsort((-gains, -scores))  # by score, then by gain: one canonical order
    ranked, ranked_scores = gains[order], scores[order]
    starts = np.flatnonzero(np.r_[True, ranked_scores[1:] != ranked_scores[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if end - start > 1 and ranked[start] != ranked[end - 1]:  # sorted by gain within the group
            ranked[start:end] = ranked[start:end].mean()
    return float(np.dot(ranked, discount))


def ndcg(baseline: Mapping[str, float], window: Mapping[str, float]) -> float:
    """NDCG of the window's attribution ranking, with the baseline attributions as relevance (spec 5.2), in [0, 1].

    DCG = sum_i a(f'_i) / log2(i + 1) over the features f' sorted by window attribution, divided by the
    same sum over the features sorted by baseline attribution. Importance is magnitude: features are ranked
    and weighted by the absolute value of their global SHAP value (``agg_method`` ``median`` gives signed
    values; ``mean_abs`` and ``mean_sq`` never negative ones, and then nothing changes). Equal to
    ``sklearn.metrics.ndcg_score([|baseline|], [|window|])``, ties included: features with equal window
    attributions share the average of their gains (McSherry and Najork, sklearn's default), so the result
    does not depend on the order of the keys. DCG and the ideal DCG are computed by the same function, so
    an unchanged ranking gives exactly 1.0 (and rounding never gives more than 1).

    No ranking to compare: a single feature, or all-zero baseline attributions (a model whose
    predictions did not depend on the features on the baseline data), give 1.0 (sklearn gives 0 for the
    latter, which would be a violation every hour for a constant model; ``attribution_scores`` logs a
    WARNING).

    Raises ``ValueError`` when the two mappings name different features or a value is not a finite number.
    """
    features = list(baseline)
    if set(features) != set(window):
        raise ValueError(f"the baseline and the window attribute different features: baseline only "
                         f"{_quoted(f for f in features if f not in window)}, window only "
                         f"{_quoted(f for f in window if f not in baseline)}")
    relevance = np.abs(_finite_attributions(baseline, features, "the baseline's "))
    scores = np.abs(_finite_attributions(window, features, "the window's "))
    if len(features) <= 1 or not relevance.any():
        return 1.0
    discount = 1 / (np.log(np.arange(len(features)) + 2) / np.log(2))  # log2 as sklearn computes it
    ideal = _dcg(relevance, relevance, discount)
    return min(1.0, _dcg(relevance, scores, discount) / ideal)


def attribution_threshold(baseline: Mapping[str, Any], threshold: float | None = None) -> float:
    """The NDCG threshold: ``threshold`` when given, else the constraints file's
    ``lucent.feature_attribution_drift_threshold``, else 0.9. Must be a number in (0, 1]."""
    where = "the threshold"
    if threshold is None:
        lucent = baseline.get(LUCENT_KEY)
        threshold = DEFAULT_ATTRIBUTION_THRESHOLD
        if isinstance(lucent, Mapping) and THRESHOLD_KEY in lucent:
            threshold, where = lucent[THRESHOLD_KEY], f"the constraints file's {LUCENT_KEY}.{THRESHOLD_KEY}"
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise UserError(f"{where} must be a number in (0, 1] (an NDCG), got {threshold!r}")
    return threshold


def attribution_scores(window: dict, baseline: dict, *, source: str = "constraints file") -> dict[str, float]:
    """NDCG of each label of the window's ``explanations.kernel_shap`` against the baseline's.

    ``source`` names the baseline in messages ("constraints file s3://.../analysis.json"). A value that is not
    a finite number is a ``UserError`` naming the file, the label and the feature. A label whose baseline
    attributions are all 0 scores 1.0 (``ndcg``: no ranking to compare with) and is logged as a WARNING."""
    live, base = _kernel_shap(window) or {}, _kernel_shap(baseline) or {}
    scores = {}
    for label, entry in live.items():
        if label not in base:
            raise UserError(f"The {source} has no label {label!r} in explanations.kernel_shap")
        base_values = (base[label] or {}).get("global_shap_values") if isinstance(base[label], Mapping) else None
        live_values = (entry or {}).get("global_shap_values") if isinstance(entry, Mapping) else None
        path = f"explanations.kernel_shap.{label}.global_shap_values"
        if not isinstance(base_values, Mapping):
            raise UserError(f"{source} {path}: expected an object of feature: value, got {base_values!r}")
        if not isinstance(live_values, Mapping):
            raise UserError(f"window analysis.json {path}: expected an object of feature: value, got {live_values!r}")
        features = list(base_values)
        try:
            _finite_attributions(base_values, features, "")
        except ValueError as error:
            raise UserError(f"{source} {path} {error}") from None
        try:
            scores[label] = ndcg(base_values, live_values)
        except ValueError as error:
            raise UserError(f"Feature attribution drift of label {label!r}: {error}") from error
        if features and not any(base_values[f] for f in features) and len(features) > 1:
            largest = max(features, key=lambda f: abs(live_values[f]))
            log.warning("Label %r: every global SHAP value in the %s is 0 (a model whose predictions did not depend "
                        "on the features on the baseline data): there is no ranking to compare with, so the NDCG is "
                        "taken as 1.0 and no feature attribution drift can be detected against this baseline (the "
                        "window's largest attribution: %r %s). Make the baseline on data where the model's "
                        "predictions vary", label, source, largest, _value_text(live_values[largest]))
    return scores


def attribution_violations(window: dict, baseline: dict, threshold: float | None = None, *,
                           source: str = "constraints file") -> list[dict]:
    """The ``feature_attribution_drift_check`` violations: one per label whose NDCG is below the threshold
    (``attribution_threshold``), worded as the spec's example ("Feature attribution drift 0.76...
    exceeds threshold 0.9")."""
    limit = attribution_threshold(baseline, threshold)
    return [{
        "label": label,
        "metric_name": ATTRIBUTION_METRIC,
        "constraint_check_type": ATTRIBUTION_DRIFT_CHECK,
        "description": f"Feature attribution drift {_value_text(score)} exceeds threshold {_value_text(limit)}",
    } for label, score in attribution_scores(window, baseline, source=source).items() if score < limit]


def violations_document(violations: list[dict]) -> dict:
    """The ``constraint_violations.json`` document (spec 5.1 / 5.2 schema)."""
    return {"version": VIOLATIONS_VERSION, "violations": list(violations)}


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------


def resampled_cells(cells: np.ndarray, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``n_resamples`` bootstrap redraws of a facet group's cells, each with the same shape and total.

    Drawing n rows with replacement and counting them per cell is a multinomial draw over the cells with
    the observed shares as probabilities, so the cells are drawn directly: the cost depends on the
    number of occupied cells, not of rows. Draws are made in chunks to bound memory.
    """
    flat = np.asarray(cells, dtype=np.int64).reshape(-1)
    total = int(flat.sum())
    occupied = np.flatnonzero(flat)
    shares = flat[occupied] / total if total else flat[occupied].astype(float)
    chunk = max(1, RESAMPLE_CHUNK_CELLS // max(1, flat.size))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = np.zeros((size, flat.size), dtype=np.int64)
        if total:
            draws[:, occupied] = rng.multinomial(total, shares, size=size)
        yield from draws.reshape(size, *cells.shape)


def bootstrap_samples(cells: np.ndarray, names: list[str], stage: StageCells, n_resamples: int,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each metric of ``names`` on every redraw of ``cells`` (NaN where a redraw makes it fail, e.g. an
    empty facet side), computed from the redrawn counts by ``bias_analysis``'s own metric functions."""
    samples = {name: np.full(n_resamples, np.nan) for name in names}
    for index, redraw in enumerate(resampled_cells(cells, n_resamples, rng)):
        split = split_from_cells(redraw)
        for name in names:
            # A failure the report would show as the metric's error: no value for this redraw.
            with contextlib.suppress(Exception):
                samples[name][index] = metric_from_split(name, split, stage.groups)
    return samples


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    """The two-sided percentile interval of the valid (non-NaN) samples, from order statistics (no
    interpolation, so infinite samples stay exact); None when more than ``1 - level`` of them failed."""
    valid = samples[~np.isnan(samples)]
    if len(valid) == 0 or len(valid) < level * len(samples):
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(valid, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def add_bootstrap_intervals(results: dict, dataset: Dataset, config: AnalysisConfig, *,
                            n_resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> None:
    """Put ``"lucent_ci": [low, high]`` beside ``"value"`` in each bias metric entry of ``results``.

    ``results`` is the window's analysis.json document computed from ``dataset`` and ``config``; its
    facet groups are counted again (``stage_cells``: the same decisions as ``bias_analysis``) and each is
    redrawn ``n_resamples`` times. The interval is the percentile interval at ``level`` (Clarify's docs
    name a "normal bootstrap interval" without a formula; percentiles stay inside each metric's range and
    handle infinite values). No interval for FT (it needs the rows), a metric whose value is null, or one
    that fails in more than ``1 - level`` of the redraws. Deterministic: facet group g of stage s draws
    from ``numpy.random.default_rng([seed, s, g])``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    started, n_groups = time.perf_counter(), 0
    for stage_index, (stage, key, _) in enumerate(STAGES):
        section = results.get(key)
        if not section:
            continue
        counted = stage_cells(dataset, config, stage)
        reported = [(facet, group) for facet, groups in section["facets"].items() for group in groups]
        found = [(c.facet, c.value_or_threshold) for c in counted.facet_groups]
        if found != [(facet, group["value_or_threshold"]) for facet, group in reported]:
            raise ValueError(f"{key} does not come from this dataset and config: facet groups {found}")
        for group_index, (cells, (_, group)) in enumerate(zip(counted.facet_groups, reported, strict=True)):
            names = [m["name"] for m in group["metrics"]
                     if m.get("value") is not None and m["name"] not in NO_INTERVAL_METRICS]
            if not names:
                continue
            rng = np.random.default_rng([seed, stage_index, group_index])
            samples = bootstrap_samples(cells.cells, names, counted, n_resamples, rng)
            n_groups += 1
            for entry in group["metrics"]:
                interval = percentile_interval(samples[entry["name"]], level) if entry["name"] in samples else None
                if interval is not None:
                    entry[CI_KEY] = to_json_safe(list(interval))
    log.info("Bootstrap intervals (%d resamples, level %g) for %d facet group(s) in %.2f s", n_resamples, level,
             n_groups, time.perf_counter() - started)
