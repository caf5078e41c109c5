"""A window's metrics for alerting (analyzer/monitor/metrics.py, spec model-monitor.md 8).

CloudWatch records are checked against the DG's names, dimensions and infinity rule; the Prometheus text
is parsed back with prometheus_client's own parser; pushes go to a real Prometheus Pushgateway (the
Debian package prometheus-pushgateway) and are read back from its /metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import subprocess
import threading
import urllib.request
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from analyzer.errors import DependencyError, UserError
from analyzer.monitor.metrics import (
    CLOUDWATCH_INFINITY,
    cloudwatch_file_text,
    cloudwatch_records,
    prometheus_text,
    push_metrics,
)
from tests.test_monitor_drift import NB_FA_BASELINE, nb_window

WHEN = datetime(2023, 1, 19, 6, 0, 0, tzinfo=UTC)
BIAS_DIMENSIONS = ["Endpoint", "MonitoringSchedule", "BiasStage", "Label", "LabelValue", "Facet", "FacetValue"]
EXPLAINABILITY_DIMENSIONS = ["Endpoint", "MonitoringSchedule", "ExplainabilityMethod", "Label", "ValueType"]


def bias_results() -> dict:
    """The NB-BIAS window, with a -Infinity, a failed metric (null + error) and a second facet value."""
    results = nb_window()
    post = results["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]
    by_name = {m["name"]: m for m in post}
    by_name["DCR"]["value"] = "-Infinity"
    by_name["FT"].update(value=None, error="FT needs the dataset's feature columns")
    pre = results["pre_training_bias_metrics"]["facets"]["Sex"]
    pre.append({"value_or_threshold": "1", "metrics": [{"name": "CI", "description": "Class Imbalance (CI)",
                                                        "value": -0.36936936936936937}]})
    return results


def _dimensions(record: dict) -> dict[str, str]:
    return {d["Name"]: d["Value"] for d in record["Dimensions"]}


def test_bias_records_names_dimensions_and_infinity():
    results = bias_results()
    records = cloudwatch_records(results, kind="ModelBias", endpoint="churn-endpoint", schedule="hourly",
                                 timestamp=WHEN)
    post = results["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]
    pre = results["pre_training_bias_metrics"]["facets"]["Sex"]
    published_post = [m for m in post if m["value"] is not None]
    assert len(records) == len(published_post) + len(pre[0]["metrics"]) + 1  # FT (null) is not published
    assert [r["MetricName"] for r in records[:len(published_post)]] == [f"bias_metric_{m['name']}" for m in published_post]
    for record in records:
        assert list(record) == ["MetricName", "Timestamp", "Dimensions", "Value"]
        assert record["Timestamp"] == "2023-01-19T06:00:00Z"
        assert [d["Name"] for d in record["Dimensions"]] == BIAS_DIMENSIONS
        assert math.isfinite(record["Value"])
    by_key = {(r["MetricName"], _dimensions(r)["BiasStage"], _dimensions(r)["FacetValue"]): r for r in records}
    te = by_key[("bias_metric_TE", "Post-Training", "0")]
    assert te["Value"] == CLOUDWATCH_INFINITY == 2.348543e108
    assert by_key[("bias_metric_DCR", "Post-Training", "0")]["Value"] == -2.348543e108
    assert by_key[("bias_metric_CDDPL", "Post-Training", "0")]["Value"] == 0.37745519271384836
    assert _dimensions(te) == {"Endpoint": "churn-endpoint", "MonitoringSchedule": "hourly", "BiasStage": "Post-Training",
                               "Label": "Target", "LabelValue": "1", "Facet": "Sex", "FacetValue": "0"}
    assert by_key[("bias_metric_CI", "Pre-training", "1")]["Value"] == -0.36936936936936937
    assert ("bias_metric_FT", "Post-Training", "0") not in by_key


def test_explainability_records():
    records = cloudwatch_records(NB_FA_BASELINE, kind="ModelExplainability", endpoint="adult", schedule="daily",
                                 timestamp=datetime(2023, 1, 19, 8, 30, 15, tzinfo=timezone(timedelta(hours=2))))
    shap = NB_FA_BASELINE["explanations"]["kernel_shap"]["label0"]
    assert [r["MetricName"] for r in records] == [f"feature_{name}" for name in shap["global_shap_values"]] + ["ExpectedValue"]
    assert records[0]["Timestamp"] == "2023-01-19T06:30:15Z"  # converted to UTC
    for record, value in zip(records, [*shap["global_shap_values"].values(), shap["expected_value"]], strict=True):
        assert [d["Name"] for d in record["Dimensions"]] == EXPLAINABILITY_DIMENSIONS
        assert record["Value"] == value
    assert _dimensions(records[1]) == {"Endpoint": "adult", "MonitoringSchedule": "daily",
                                       "ExplainabilityMethod": "KernelShap", "Label": "label0",
                                       "ValueType": "GlobalShapValues"}
    assert _dimensions(records[-1])["ValueType"] == "ExpectedValue"


def test_cloudwatch_file_is_one_json_record_per_line():
    records = cloudwatch_records(bias_results(), kind="ModelBias", endpoint="e", schedule="s", timestamp=WHEN)
    text = cloudwatch_file_text(records)
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == len(records)
    assert [json.loads(line) for line in lines] == records
    assert "Infinity" not in text and "NaN" not in text
    assert cloudwatch_file_text([]) == ""


def _samples(text: str) -> dict[tuple, float]:
    """Every sample of exposition text as {(name, sorted labels): value}, read by prometheus_client's parser."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


def _expected_samples(records: list[dict], extra_labels: dict[str, str] | None = None) -> dict[tuple, float]:
    """What the Prometheus text must hold for these CloudWatch records (same values, +/-Inf kept)."""
    expected = {}
    for record in records:
        labels = {_snake(d["Name"]): d["Value"] for d in record["Dimensions"]} | (extra_labels or {})
        name = record["MetricName"]
        if name.startswith("bias_metric_"):
            family, labels["metric"] = "lucent_bias_metric", name.removeprefix("bias_metric_")
        elif name == "ExpectedValue":
            family = "lucent_expected_value"
        else:
            family, labels["feature"] = "lucent_feature_attribution", name.removeprefix("feature_")
        value = record["Value"]
        if abs(value) == CLOUDWATCH_INFINITY:
            value = math.copysign(math.inf, value)
        expected[(family, tuple(sorted(labels.items())))] = value
    return expected


@pytest.mark.parametrize("kind", ["ModelBias", "ModelExplainability"])
def test_prometheus_text_holds_the_cloudwatch_values(kind):
    results = bias_results() if kind == "ModelBias" else NB_FA_BASELINE
    text = prometheus_text(results, kind=kind, endpoint='odd "endpoint"\\name', schedule="hourly")
    records = cloudwatch_records(results, kind=kind, endpoint='odd "endpoint"\\name', schedule="hourly", timestamp=WHEN)
    assert _samples(text) == _expected_samples(records)
    assert "# TYPE lucent_" in text


def test_prometheus_text_of_the_infinite_values():
    samples = _samples(prometheus_text(bias_results(), kind="ModelBias", endpoint="e", schedule="s"))
    values = {dict(labels)["metric"]: value for (_, labels), value in samples.items() if dict(labels)["bias_stage"] == "Post-Training"}
    assert values["TE"] == math.inf and values["DCR"] == -math.inf and "FT" not in values


def test_prometheus_counts_the_violations_for_alert_rules():
    from analyzer.monitor.drift import bias_violations
    from tests.test_monitor_drift import nb_baseline

    violations = bias_violations(nb_window(), nb_baseline())
    counted = _samples(prometheus_text(nb_window(), kind="ModelBias", endpoint="e", schedule="s", violations=violations))
    key = ("lucent_monitor_violations", (("endpoint", "e"), ("monitor", "ModelBias"), ("monitoring_schedule", "s")))
    assert counted[key] == 9
    none = _samples(prometheus_text(nb_window(), kind="ModelBias", endpoint="e", schedule="s", violations=[]))
    assert none[key] == 0
    without = _samples(prometheus_text(nb_window(), kind="ModelBias", endpoint="e", schedule="s"))
    assert not any(name == "lucent_monitor_violations" for name, _ in without)
    assert {k: v for k, v in counted.items() if k != key} == without


# --------------------------------------------------------------------------------------------
# Pushgateway
# --------------------------------------------------------------------------------------------

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


def _bcrypt(password: str) -> str | None:
    """A bcrypt hash for the gateway's web config (the crypt module, deprecated but in Python 3.11/3.12)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))
    return hashed if hashed and hashed.startswith("$2") else None


@contextlib.contextmanager
def pushgateway(folder: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """A real Prometheus Pushgateway on 127.0.0.1 (port chosen by the OS, read from its log); yields its URL."""
    if PUSHGATEWAY is None:
        pytest.skip("prometheus-pushgateway is not installed (Debian package prometheus-pushgateway)")
    command = [PUSHGATEWAY, "--web.listen-address=127.0.0.1:0", "--persistence.file="]
    if users:
        config = folder / "web.yml"
        config.write_text("basic_auth_users:\n" + "".join(f"  {user}: '{hashed}'\n" for user, hashed in users.items()))
        command.append(f"--web.config.file={config}")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log_lines = []
    try:
        address = None
        for line in process.stderr:  # the log says where it listens once the socket is bound
            log_lines.append(line)
            found = re.search(r'msg="Listening on" address=(\S+)', line)
            if found:
                address = found.group(1)
                break
        assert address is not None, "".join(log_lines)
        threading.Thread(target=lambda: log_lines.extend(process.stderr), daemon=True).start()
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _read_metrics(url: str, auth: str | None = None) -> str:
    request = urllib.request.Request(f"{url}/metrics")
    if auth is not None:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _pushed(text: str) -> dict[tuple, float]:
    return {key: value for key, value in _samples(text).items() if key[0].startswith("lucent_")}


def test_push_to_a_real_pushgateway_and_read_back(tmp_path):
    results = bias_results()
    with pushgateway(tmp_path) as url:
        push_metrics(url, results, kind="ModelBias", endpoint="churn", schedule="hourly")
        push_metrics(url, NB_FA_BASELINE, kind="ModelExplainability", endpoint="churn", schedule="hourly",
                     violations=[])
        pushed = _pushed(_read_metrics(url))
    assert pushed.pop(("lucent_monitor_violations", (
        ("endpoint", "churn"), ("instance", ""), ("job", "lucent_monitor"), ("monitor", "ModelExplainability"),
        ("monitoring_schedule", "hourly")))) == 0
    group = {"job": "lucent_monitor", "instance": ""}
    bias = _expected_samples(cloudwatch_records(results, kind="ModelBias", endpoint="churn", schedule="hourly",
                                                timestamp=WHEN), group | {"monitor": "ModelBias"})
    explainability = _expected_samples(cloudwatch_records(NB_FA_BASELINE, kind="ModelExplainability", endpoint="churn",
                                                          schedule="hourly", timestamp=WHEN),
                                       group | {"monitor": "ModelExplainability"})
    # Both monitors' groups are kept side by side, with every value (infinities included).
    assert pushed == bias | explainability
    assert len(bias) == 21 and len(explainability) == 15


def test_a_new_execution_replaces_its_group(tmp_path):
    first, second = bias_results(), bias_results()
    second["pre_training_bias_metrics"]["facets"]["Sex"].pop()  # facet value "1" gone in the next window
    with pushgateway(tmp_path) as url:
        push_metrics(url, first, kind="ModelBias", endpoint="churn", schedule="hourly")
        before = _pushed(_read_metrics(url))
        push_metrics(url, second, kind="ModelBias", endpoint="churn", schedule="hourly")
        after = _pushed(_read_metrics(url))
    assert len(before) == len(after) + 1
    assert not any(dict(labels).get("facet_value") == "1" for _, labels in after)


def test_push_with_basic_auth_never_logs_the_password(tmp_path, caplog):
    hashed = _bcrypt("p@ss:w0rd/x")
    if hashed is None:
        pytest.skip("no bcrypt implementation to configure the gateway's basic auth (crypt module)")
    caplog.set_level(logging.DEBUG)
    with pushgateway(tmp_path, users={"monitor": hashed}) as url:
        authed = url.replace("http://", "http://monitor:p%40ss%3Aw0rd%2Fx@")
        push_metrics(authed, bias_results(), kind="ModelBias", endpoint="churn", schedule="hourly")
        pushed = _pushed(_read_metrics(url, auth="monitor:p@ss:w0rd/x"))
        with pytest.raises(DependencyError) as refused:
            push_metrics(url.replace("http://", "http://monitor:wrong@"), bias_results(), kind="ModelBias",
                         endpoint="churn", schedule="hourly")
    assert len(pushed) == 21
    assert "401" in str(refused.value) and "wrong" not in str(refused.value)
    assert "Pushed the ModelBias metrics of churn / hourly" in caplog.text
    for secret in ("p@ss", "p%40ss", "w0rd", "wrong"):
        assert secret not in caplog.text


def test_unreachable_gateway_and_bad_urls(tmp_path):
    with pushgateway(tmp_path) as url:
        pass  # stopped: nothing listens there any more
    with pytest.raises(DependencyError, match=r"Could not push the monitoring metrics to the Pushgateway at "
                                              r"http://127\.0\.0\.1:\d+: .*Connection refused") as refused:
        push_metrics(url.replace("http://", "http://u:secret@"), bias_results(), kind="ModelBias", endpoint="e",
                     schedule="s", timeout=5)
    assert "secret" not in str(refused.value)
    for bad in ("ftp://gateway:9091", "gateway:9091", "http://:9091", "http://h:port"):
        with pytest.raises(UserError, match="LUCENT_PUSHGATEWAY_URL"):
            push_metrics(bad, bias_results(), kind="ModelBias", endpoint="e", schedule="s")
