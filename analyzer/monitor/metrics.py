"""A monitoring window's metrics for alerting: CloudWatch metric records and Prometheus (spec section 8).

One list of values (``metric_values``) is read from the window's analysis.json and written two ways:

* CloudWatch records, the file a SageMaker monitoring container writes to
  ``/opt/ml/output/metrics/cloudwatch`` when ``publish_cloudwatch_metrics`` is ``Enabled``: one
  PutMetricData-like JSON object per line (DG ``model-monitor-byoc-cloudwatch.md``: ``MetricName``,
  ``Timestamp``, ``Dimensions``, ``Value``; the namespace is not in the file, the service picks it),
  names ``bias_metric_<NAME>`` / ``feature_<name>`` / ``ExpectedValue`` and the dimensions of
  DG ``clarify-model-monitor-bias-drift-cw.md`` / ``clarify-feature-attribute-drift-cw.md`` in their
  order. CloudWatch takes no infinity: +/-inf is published as +/-2.348543e108; null values are not
  published.
* Prometheus exposition text (``metrics.prom``) and a push to a Pushgateway
  (``LUCENT_PUSHGATEWAY_URL``), through ``prometheus_client``. Prometheus names cannot carry the
  variable parts of the CloudWatch names (feature names have spaces), so each kind of value is one
  metric family and the rest are labels: ``lucent_bias_metric{metric="CI", ...}``,
  ``lucent_feature_attribution{feature="Age", ...}``, ``lucent_expected_value{...}``, with the
  CloudWatch dimensions as snake_case labels. Infinity stays ``+Inf`` (Prometheus has it).
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway

from analyzer.errors import DependencyError, UserError
from analyzer.monitor.attributes import BIAS, EXPLAINABILITY, KINDS
from analyzer.pipeline import STAGES
from analyzer.redact import redact, redact_url

log = logging.getLogger(__name__)

CLOUDWATCH_INFINITY = 2.348543e108  # DG: "+/- infinity is published as the floating point number +/- 2.348543e108"
CLOUDWATCH_FILE = "/opt/ml/output/metrics/cloudwatch"
PROMETHEUS_FILE = "metrics.prom"
# Where SageMaker publishes each monitor's records (the file itself names no namespace).
NAMESPACES = {
    BIAS: {"endpoint": "aws/sagemaker/Endpoints/bias-metrics",
                 "batch_transform": "aws/sagemaker/ModelMonitoring/bias-metrics"},
    EXPLAINABILITY: {"endpoint": "aws/sagemaker/Endpoints/explainability-metrics",
                            "batch_transform": "aws/sagemaker/ModelMonitoring/explainability-metrics"},
}
BIAS_STAGE_NAMES = {  # the BiasStage dimension, capitalised as the DG page writes it
    "pre_training_bias_metrics": "Pre-training",
    "post_training_bias_metrics": "Post-Training",
}
EXPLAINABILITY_METHOD = "KernelShap"
PUSH_JOB = "lucent_monitor"
VIOLATIONS_FAMILY = "lucent_monitor_violations"
PUSH_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class MetricValue:
    """One published value: its CloudWatch name and dimensions, its Prometheus family and extra label."""

    cloudwatch_name: str
    dimensions: tuple[tuple[str, str], ...]  # (Name, Value) in the documented order
    family: str  # Prometheus metric family
    variable: tuple[str, str] | None  # the Prometheus label carrying the name's variable part
    value: float  # finite or +/-inf (never NaN)


# One Prometheus family per kind of value: (help text, label of the variable part or None).
_FAMILIES = {
    "lucent_bias_metric": ("Clarify bias metric of the monitoring window (analysis.json).", "metric"),
    "lucent_feature_attribution": ("Global SHAP value of a feature over the monitoring window.", "feature"),
    "lucent_expected_value": ("Kernel SHAP expected value (the baseline's mean score) of the window.", None),
}


def _finite_or_infinite(value: Any) -> float | None:
    """A value of analysis.json as a float (+/-inf from "Infinity" / "-Infinity"), None when there is none
    to publish (null, NaN, a failed metric, anything not a number)."""
    if isinstance(value, str):
        value = {"Infinity": math.inf, "-Infinity": -math.inf}.get(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _bias_values(results: Mapping[str, Any], common: tuple[tuple[str, str], ...]) -> Iterator[MetricValue]:
    for _, key, _ in STAGES:
        section = results.get(key)
        if not isinstance(section, Mapping):
            continue
        stage_dimensions = (("BiasStage", BIAS_STAGE_NAMES[key]), ("Label", str(section.get("label"))),
                            ("LabelValue", str(section.get("label_value_or_threshold"))))
        for facet, groups in (section.get("facets") or {}).items():
            for group in groups or []:
                facet_dimensions = (("Facet", str(facet)), ("FacetValue", str(group.get("value_or_threshold"))))
                for entry in group.get("metrics") or []:
                    value = _finite_or_infinite(entry.get("value"))
                    if value is not None:
                        name = str(entry.get("name"))
                        yield MetricValue(f"bias_metric_{name}", common + stage_dimensions + facet_dimensions,
                                          "lucent_bias_metric", ("metric", name), value)


def _explainability_values(results: Mapping[str, Any], common: tuple[tuple[str, str], ...]) -> Iterator[MetricValue]:
    for label, entry in ((results.get("explanations") or {}).get("kernel_shap") or {}).items():
        label_dimensions = (("ExplainabilityMethod", EXPLAINABILITY_METHOD), ("Label", str(label)))
        for feature, shap_value in ((entry or {}).get("global_shap_values") or {}).items():
            value = _finite_or_infinite(shap_value)
            if value is not None:
                yield MetricValue(f"feature_{feature}", common + label_dimensions + (("ValueType", "GlobalShapValues"),),
                                  "lucent_feature_attribution", ("feature", str(feature)), value)
        expected = _finite_or_infinite((entry or {}).get("expected_value"))
        if expected is not None:
            yield MetricValue("ExpectedValue", common + label_dimensions + (("ValueType", "ExpectedValue"),),
                              "lucent_expected_value", None, expected)


def metric_values(results: dict, *, kind: str, endpoint: str, schedule: str) -> list[MetricValue]:
    """Every value a window publishes, in analysis.json order (the one source of both outputs).

    ``kind``: ``"ModelBias"`` (every bias metric with a value, both stages) or ``"ModelExplainability"``
    (each label's global SHAP values, then its expected value).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    common = (("Endpoint", str(endpoint)), ("MonitoringSchedule", str(schedule)))
    values = _bias_values if kind == BIAS else _explainability_values
    return list(values(results, common))


def _timestamp_text(timestamp: datetime) -> str:
    """ISO-8601 UTC seconds, "2019-11-26T03:00:00Z" as in the DG example (a naive time is taken as UTC)."""
    if timestamp.tzinfo is not None:
        timestamp = timestamp.astimezone(UTC)
    return timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def cloudwatch_value(value: float) -> float:
    """A value as CloudWatch takes it: +/-inf become +/-2.348543e108."""
    if math.isinf(value):
        return math.copysign(CLOUDWATCH_INFINITY, value)
    return value


def cloudwatch_records(results: dict, *, kind: str, endpoint: str, schedule: str,
                       timestamp: datetime) -> list[dict]:
    """The CloudWatch metric records of a window (spec section 8), in analysis.json order."""
    when = _timestamp_text(timestamp)
    return [{
        "MetricName": value.cloudwatch_name,
        "Timestamp": when,
        "Dimensions": [{"Name": name, "Value": dimension} for name, dimension in value.dimensions],
        "Value": cloudwatch_value(value.value),
    } for value in metric_values(results, kind=kind, endpoint=endpoint, schedule=schedule)]


def cloudwatch_file_text(records: list[dict]) -> str:
    """The ``/opt/ml/output/metrics/cloudwatch`` file: one JSON record per line (strict JSON: a record
    holding NaN or infinity is a bug, refused by ``json.dumps(allow_nan=False)``)."""
    return "".join(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n" for record in records)


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _label_name(dimension: str) -> str:
    """A CloudWatch dimension name as a Prometheus label: ``MonitoringSchedule`` -> ``monitoring_schedule``."""
    return _CAMEL_BOUNDARY.sub("_", dimension).lower()


def prometheus_registry(results: dict, *, kind: str, endpoint: str, schedule: str,
                        violations: list[dict] | None = None) -> CollectorRegistry:
    """A ``prometheus_client`` registry holding the window's values as gauges (see the module docstring),
    and, when ``violations`` is given, their number as ``lucent_monitor_violations`` (0 included, so that
    an alert rule ``lucent_monitor_violations > 0`` also sees a window without violations)."""
    registry = CollectorRegistry(auto_describe=True)
    if violations is not None:
        Gauge(VIOLATIONS_FAMILY, "Constraint violations of the monitoring window (constraint_violations.json).",
              labelnames=["monitor", "endpoint", "monitoring_schedule"], registry=registry,
              ).labels(monitor=kind, endpoint=str(endpoint), monitoring_schedule=str(schedule)).set(len(violations))
    gauges: dict[str, Gauge] = {}
    for value in metric_values(results, kind=kind, endpoint=endpoint, schedule=schedule):
        labels = {_label_name(name): dimension for name, dimension in value.dimensions}
        if value.variable is not None:
            labels[value.variable[0]] = value.variable[1]
        if value.family not in gauges:
            gauges[value.family] = Gauge(value.family, _FAMILIES[value.family][0], labelnames=list(labels),
                                         registry=registry)
        gauges[value.family].labels(**labels).set(value.value)
    return registry


def prometheus_text(results: dict, *, kind: str, endpoint: str, schedule: str,
                    violations: list[dict] | None = None) -> str:
    """The window's values as Prometheus exposition text (``metrics.prom``); see ``prometheus_registry``."""
    return generate_latest(prometheus_registry(results, kind=kind, endpoint=endpoint, schedule=schedule,
                                               violations=violations)).decode()


def _push_target(url: str) -> tuple[str, Callable[..., Any]]:
    """The gateway URL without its userinfo, and the request handler: HTTP basic auth with the userinfo
    when the URL has one (``http://user:password@host:9091``), else plain requests."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        raise UserError(f"LUCENT_PUSHGATEWAY_URL {redact_url(url)!r} is not a URL: {redact(str(error))}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"LUCENT_PUSHGATEWAY_URL must be an http:// or https:// URL, got {redact_url(url)!r}")
    netloc = parts.netloc.rpartition("@")[2]
    gateway = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.username is None and parts.password is None:
        return gateway, default_handler
    username, password = unquote(parts.username or ""), unquote(parts.password or "")

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return gateway, handler


def push_metrics(url: str, results: dict, *, kind: str, endpoint: str, schedule: str,
                 violations: list[dict] | None = None, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
    """Push the window's values to the Prometheus Pushgateway at ``url`` (``LUCENT_PUSHGATEWAY_URL``).

    The group is job ``lucent_monitor`` with grouping key ``{monitor: kind, endpoint, monitoring_schedule}``:
    each execution replaces its monitor's previous values (PUT), and a bias and an explainability
    monitor of one endpoint do not replace each other's. ``violations``: also push their number (see
    ``prometheus_registry``). Userinfo in ``url`` is sent as HTTP basic auth
    and never appears in a log line or an error. A gateway that cannot be reached or refuses the push
    raises ``DependencyError``; a malformed URL raises ``UserError``.
    """
    gateway, handler = _push_target(url)
    registry = prometheus_registry(results, kind=kind, endpoint=endpoint, schedule=schedule, violations=violations)
    grouping_key = {"monitor": kind, "endpoint": str(endpoint), "monitoring_schedule": str(schedule)}
    try:
        push_to_gateway(gateway, job=PUSH_JOB, registry=registry, grouping_key=grouping_key, timeout=timeout,
                        handler=handler)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DependencyError(f"Could not push the monitoring metrics to the Pushgateway at {redact_url(gateway)}: "
                              f"{redact(str(error))}") from error
    log.info("Pushed the %s metrics of %s / %s to the Pushgateway at %s", kind, endpoint, schedule,
             redact_url(gateway))
