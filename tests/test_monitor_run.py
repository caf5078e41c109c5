"""`lucent monitor`: whole executions on real files and a real S3 API (moto server on loopback).

The captured traffic is written with the endpoint's own record functions (``analyzer.monitor.capture``);
the model's scores are a fixed function of the features, so a bias execution needs no model and its
metrics can be checked against `lucent run` on the same records as a CSV.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.monitor.capture import capture_key, capture_line, capture_record
from analyzer.monitor.drift import bias_violations, violations_document
from container.cli import main as lucent
from container.demo import csv_record
from container.monitor.demo import (
    ENDPOINT,
    FEATURES,
    LABEL,
    VARIANT,
    bias_config,
    job_definition,
    make_churn_data,
    write_ground_truth,
)
from tests.conftest import moto_s3, use_test_credentials

T = datetime(2024, 5, 1, 6, tzinfo=UTC)  # the execution time: the window is [05:00, 06:00)
HOUR = T - timedelta(hours=1)
THRESHOLD = 0.8
SCHEDULE = "churn-bias-schedule"


def churn_score(records: pd.DataFrame) -> np.ndarray:
    """The 'model': P(churn) from day minutes and customer-service calls."""
    logit = -3.0 + 0.03 * (records["Day Mins"] - 180) + 1.1 * (records["CustServ Calls"] - 1.5)
    return 1 / (1 + np.exp(-logit.to_numpy()))


def write_capture(folder: Path, hour: datetime, records: pd.DataFrame, first_id: int, *, files: int = 3) -> None:
    """The records as the endpoint captures them (one request each, InferenceId = its number, answer
    "p0,p1"), spread over ``files`` capture files of ``hour``."""
    scores = churn_score(records)
    lines = [capture_line(capture_record(
        event_id=str(uuid.uuid4()), inference_time=hour + timedelta(seconds=7 * i), inference_id=str(first_id + i),
        input_body=csv_record(row).encode(), input_content_type="text/csv",
        output_body=f"{1 - score},{score}".encode(), output_content_type="text/csv",
        csv_types=["text/csv"], json_types=[])) for i, (row, score) in
        enumerate(zip(records[FEATURES].itertuples(index=False), scores, strict=True))]
    for part in np.array_split(np.arange(len(lines)), files):
        path = folder / capture_key(ENDPOINT, VARIANT, hour, str(uuid.uuid4()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines[i] for i in part), encoding="utf-8")


class Setup:
    """Capture, ground truth, config and job definition for a bias monitor, in a folder (or a bucket)."""

    def __init__(self, root: Path, records: pd.DataFrame, *, constraints: Path | None = None):
        self.root, self.records = root, records
        self.capture = root / "capture"
        write_capture(self.capture, HOUR, records, 0)
        write_ground_truth(root / "ground-truth", HOUR, records[LABEL], 0)
        self.config = root / "monitor-config.json"
        self.config.write_text(json.dumps(bias_config()), encoding="utf-8")
        self.write_definition(constraints)

    def write_definition(self, constraints: Path | None, **changes) -> Path:
        definition = job_definition("bias", self.root, self.config, constraints or self.root / "none.json")
        if constraints is None:
            del definition["ModelBiasBaselineConfig"]
        definition.update(changes)
        self.definition = self.root / "job-definition.json"
        self.definition.write_text(json.dumps(definition), encoding="utf-8")
        return self.definition

    def run(self, *extra: str, now: datetime = T) -> int:
        return lucent(["monitor", "--job-definition", str(self.definition), "--capture-uri", str(self.capture),
                       "--now", now.isoformat(), "--schedule-name", SCHEDULE,
                       "--processing-root", str(self.root / "work"), *extra])

    def window_folder(self, now: datetime = T) -> Path:
        return self.root / "monitoring" / ENDPOINT / SCHEDULE / f"{now:%Y/%m/%d/%H}"

    def status(self, now: datetime = T) -> dict:
        return json.loads((self.window_folder(now) / "monitoring_execution.json").read_text(encoding="utf-8"))

    def analysis(self, now: datetime = T) -> dict:
        return json.loads((self.window_folder(now) / "analysis.json").read_text(encoding="utf-8"))

    def published(self, now: datetime = T) -> list[str]:
        return sorted(p.name for p in self.window_folder(now).iterdir() if not p.name.startswith("."))


@pytest.fixture
def normal() -> pd.DataFrame:
    return make_churn_data(300, seed=2)


def metric_values(analysis: dict) -> dict[tuple, float]:
    return {(stage, facet, group["value_or_threshold"], metric["name"]): metric["value"]
            for stage in ("pre_training_bias_metrics", "post_training_bias_metrics")
            for facet, groups in analysis[stage]["facets"].items()
            for group in groups for metric in group["metrics"]}


def batch_job_analysis(tmp_path: Path, records: pd.DataFrame) -> dict:
    """`lucent run` on the same records as a CSV, with the captured predicted labels as a column."""
    root = tmp_path / "batch"
    for folder in ("config", "data"):
        (root / "input" / folder).mkdir(parents=True)
    table = records[[LABEL, *FEATURES]].assign(predicted=(churn_score(records) > THRESHOLD).astype(int))
    table.to_csv(root / "input" / "data" / "data.csv", index=False, header=False)
    config = {**bias_config(), "dataset_type": "text/csv", "headers": [LABEL, *FEATURES, "predicted"],
              "predicted_label": "predicted",
              "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}}}
    (root / "input" / "config" / "analysis_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert lucent(["run", "--processing-root", str(root)]) == 0, (root / "message").read_text()
    return json.loads((root / "output" / "analysis.json").read_text(encoding="utf-8"))


def test_a_bias_execution_computes_what_lucent_run_computes_on_the_same_records(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0
    status = setup.status()
    assert status["ExecutionStatus"] == "Completed" and status["Window"] == "[2024-05-01T05:00:00Z, 2024-05-01T06:00:00Z)"
    assert setup.published() == ["analysis.json", "metrics.prom", "monitoring_execution.json",
                                 "report.html", "report.ipynb", "report.pdf"]  # no constraints: no violations file
    window = setup.analysis()
    batch = batch_job_analysis(tmp_path, normal)
    expected = metric_values(batch)
    assert len(expected) == 21  # every pre- and post-training metric
    assert metric_values(window) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    counts = window["lucent"]["monitor"]
    assert counts["merged_records"] == counts["records_in_window"] == len(normal)
    assert counts["records_without_ground_truth"] == counts["ground_truth_without_records"] == 0
    for group in window["pre_training_bias_metrics"]["facets"]["Account Length"]:  # intervals beside the values
        for metric in group["metrics"]:
            low, high = metric["lucent_ci"]
            assert low <= metric["value"] <= high
    assert "Completed: window [2024-05-01T05:00:00Z" in (tmp_path / "work" / "message").read_text()


def test_drift_raises_violations_and_a_rerun_replaces_the_window(tmp_path: Path, normal) -> None:
    baseline_setup = Setup(tmp_path / "baseline", normal)
    assert baseline_setup.run() == 0
    constraints = baseline_setup.window_folder() / "analysis.json"

    drifted = make_churn_data(300, seed=3, drift=True)
    setup = Setup(tmp_path / "live", drifted, constraints=constraints)
    assert setup.run() == 0  # violations are a result, not a failure
    status = setup.status()
    assert status["ExecutionStatus"] == "CompletedWithViolations"
    violations = json.loads((setup.window_folder() / "constraint_violations.json").read_text(encoding="utf-8"))
    expected = violations_document(bias_violations(setup.analysis(), json.loads(constraints.read_text())))
    assert violations == expected and status["Violations"] == len(expected["violations"]) > 0
    assert {v["constraint_check_type"] for v in violations["violations"]} == {"bias_drift_check"}
    assert "violation(s) in constraint_violations.json" in (tmp_path / "live" / "work" / "message").read_text()

    # The same window against its own results as constraints: no violation, and the old file is gone.
    setup.write_definition(setup.window_folder() / "analysis.json")
    own = tmp_path / "own-constraints.json"
    own.write_bytes((setup.window_folder() / "analysis.json").read_bytes())
    setup.write_definition(own)
    assert setup.run() == 0
    assert setup.status()["ExecutionStatus"] == "Completed"
    assert "constraint_violations.json" not in setup.published()


def test_the_bootstrap_rule_only_flags_metrics_whose_whole_interval_is_worse(tmp_path: Path, normal, monkeypatch) -> None:
    baseline_setup = Setup(tmp_path / "baseline", normal)
    assert baseline_setup.run() == 0
    constraints = baseline_setup.window_folder() / "analysis.json"
    live = Setup(tmp_path / "live", make_churn_data(300, seed=4), constraints=constraints)  # no drift, new sample
    assert live.run() == 0
    plain = live.status()["Violations"]
    monkeypatch.setenv("LUCENT_BOOTSTRAP", "1")
    assert live.run() == 0
    strict = live.status()["Violations"]
    expected = bias_violations(live.analysis(), json.loads(constraints.read_text()), use_intervals=True)
    assert strict == len(expected) < plain  # sampling noise alone flags some metrics, the intervals do not


@pytest.mark.parametrize("problem", ["empty window", "no ground truth", "missing config", "unmatched constraints",
                                     "feature count", "output not writable"])
def test_a_failed_execution_says_why_and_publishes_nothing_partial(tmp_path: Path, normal, problem: str) -> None:
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0  # a completed run of the window first: a failure must replace it
    now, expected_code = T, 1
    if problem == "empty window":
        now = T + timedelta(hours=5)
        reason = "no capture file"
    elif problem == "no ground truth":
        for path in (tmp_path / "ground-truth").rglob("*.jsonl"):
            path.unlink()
        reason = "ground truth"
    elif problem == "missing config":
        setup.config.unlink()
        reason = "monitor-config.json"
    elif problem == "unmatched constraints":
        other = tmp_path / "other.json"
        baseline = setup.analysis()
        for stage in ("pre_training_bias_metrics", "post_training_bias_metrics"):
            baseline[stage]["facets"] = {"Day Calls": baseline[stage]["facets"]["Account Length"]}
        other.write_text(json.dumps(baseline), encoding="utf-8")
        setup.write_definition(other)
        reason = "Account Length"
    elif problem == "feature count":
        setup.config.write_text(json.dumps({**bias_config(), "headers": [LABEL, *FEATURES, "extra"]}), encoding="utf-8")
        reason = "feature"
    else:
        target = tmp_path / "monitoring" / ENDPOINT
        for path in sorted(target.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        target.rmdir()
        target.write_text("a file where the schedule's folder should be")
        code = setup.run()
        assert code == expected_code
        assert "monitoring" in (tmp_path / "work" / "message").read_text()
        return
    code = setup.run(now=now)
    assert code == expected_code
    status = setup.status(now)
    assert status["ExecutionStatus"] == "Failed"
    assert reason.lower() in status["FailureReason"].lower()
    assert setup.published(now) == ["monitoring_execution.json"]  # the earlier results are gone too
    message = (tmp_path / "work" / "message").read_text()
    assert message.startswith("Failed: ClientError: ") and reason.lower() in message.lower()


def test_cloudwatch_metric_records_when_the_definition_enables_them(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    definition = json.loads(setup.definition.read_text())
    definition["ModelBiasAppSpecification"]["Environment"]["publish_cloudwatch_metrics"] = "Enabled"
    setup.definition.write_text(json.dumps(definition))
    assert setup.run("--cloudwatch-dir", str(tmp_path / "cloudwatch")) == 0
    [path] = (tmp_path / "cloudwatch").iterdir()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    names = {r["MetricName"] for r in records}
    assert {"bias_metric_DPPL", "bias_metric_CI", "bias_metric_DI"} <= names
    dpp = next(r for r in records if r["MetricName"] == "bias_metric_DPPL")
    dimensions = {d["Name"]: d["Value"] for d in dpp["Dimensions"]}
    assert dimensions["Endpoint"] == ENDPOINT and dimensions["MonitoringSchedule"] == SCHEDULE
    value = next(m["value"] for g in setup.analysis()["post_training_bias_metrics"]["facets"]["Account Length"]
                 for m in g["metrics"] if m["name"] == "DPPL")
    assert dpp["Value"] == pytest.approx(value)


def test_everything_on_s3_gives_the_local_results(tmp_path: Path, normal, monkeypatch) -> None:
    import boto3

    local = Setup(tmp_path / "local", normal)
    assert local.run() == 0
    with moto_s3() as url:
        use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=url)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="mon-bucket")
        remote = tmp_path / "remote"
        setup = Setup(remote, normal)
        for folder in ("capture", "ground-truth"):
            for path in (remote / folder).rglob("*.jsonl"):
                s3.upload_file(str(path), "mon-bucket", f"{folder}/{path.relative_to(remote / folder).as_posix()}")
        s3.upload_file(str(setup.config), "mon-bucket", "config/analysis_config.json")
        definition = json.loads(setup.definition.read_text())
        definition["ModelBiasAppSpecification"]["ConfigUri"] = "s3://mon-bucket/config/analysis_config.json"
        definition["ModelBiasJobInput"]["GroundTruthS3Input"]["S3Uri"] = "s3://mon-bucket/ground-truth"
        definition["ModelBiasJobOutputConfig"]["MonitoringOutputs"][0]["S3Output"]["S3Uri"] = "s3://mon-bucket/monitoring"
        setup.definition.write_text(json.dumps(definition))
        code = lucent(["monitor", "--job-definition", str(setup.definition), "--capture-uri", "s3://mon-bucket/capture",
                       "--now", T.isoformat(), "--schedule-name", SCHEDULE])
        assert code == 0
        prefix = f"monitoring/{ENDPOINT}/{SCHEDULE}/{T:%Y/%m/%d/%H}/"
        keys = sorted(o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket="mon-bucket", Prefix=prefix)["Contents"])
        assert [key for key in keys if not key.startswith(".")] == local.published()  # dot files: the publisher's
        analysis = json.loads(s3.get_object(Bucket="mon-bucket", Key=prefix + "analysis.json")["Body"].read())
    assert metric_values(analysis) == metric_values(local.analysis())
    assert analysis["lucent"]["monitor"]["capture_files"] == 3


def test_a_bad_job_definition_lists_its_problems(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"JobDefinitionName": "x", "ModelBiasAppSpecification": {"ImageUri": "i"}}))
    assert lucent(["monitor", "--job-definition", str(path), "--capture-uri", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ConfigUri" in out and "problem" in out


def test_an_explainability_execution_explains_the_window_through_the_model(tmp_path: Path) -> None:
    import joblib

    from container.monitor.demo import baseline_job_config, explainability_config, run_baseline, train_model

    records = make_churn_data(60, seed=2)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    training = make_churn_data(1000, seed=1)
    joblib.dump(train_model(training), model_dir / "model.joblib")
    config = explainability_config([round(float(v), 3) for v in training[FEATURES].mean()])
    baseline = run_baseline(tmp_path, "baseline", baseline_job_config(config), records[FEATURES], model_dir)

    capture = tmp_path / "capture"
    write_capture(capture, HOUR, records, 0)
    config_path = tmp_path / "monitor-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    definition = tmp_path / "job-definition.json"
    definition.write_text(json.dumps(job_definition("explainability", tmp_path, config_path, baseline)))
    code = lucent(["monitor", "--job-definition", str(definition), "--capture-uri", str(capture),
                   "--now", T.isoformat(), "--schedule-name", "shap", "--model-dir", str(model_dir)])
    assert code == 0
    folder = tmp_path / "monitoring" / ENDPOINT / "shap" / f"{T:%Y/%m/%d/%H}"
    window = json.loads((folder / "analysis.json").read_text())
    expected = json.loads(baseline.read_text())["explanations"]["kernel_shap"]["label0"]
    got = window["explanations"]["kernel_shap"]["label0"]
    # The same records through the same model and the same exact design: the same attributions.
    assert got["global_shap_values"] == pytest.approx(expected["global_shap_values"], rel=1e-9)
    assert got["expected_value"] == pytest.approx(expected["expected_value"], rel=1e-12)
    assert window["lucent"]["monitor"]["ndcg"] == {"label0": pytest.approx(1.0)}
    assert json.loads((folder / "monitoring_execution.json").read_text())["ExecutionStatus"] == "Completed"


@pytest.mark.slow
def test_demo_monitor_flags_the_drifted_hour_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "demo-monitor"
    run = subprocess.run([sys.executable, "-m", "container.monitor.demo", str(root)],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("  bias") or line.startswith("  explainability")]
    assert len(lines) == 4
    assert "normal" in lines[0] and ": Completed, 0 violation(s)" in lines[0]
    assert "drifted" in lines[1] and "CompletedWithViolations" in lines[1]
    assert "normal" in lines[2] and ": Completed, 0 violation(s)" in lines[2]
    assert "drifted" in lines[3] and "CompletedWithViolations, 1 violation(s)" in lines[3]
    captured = sum(1 for path in (root / "capture").rglob("*.jsonl") for line in path.read_text().splitlines() if line)
    assert captured == 800  # every request captured, filed under its hour


def test_malformed_capture_lines_are_listed_under_one_percent_and_fail_the_execution_above(
        tmp_path: Path, normal, caplog) -> None:
    setup = Setup(tmp_path, normal)
    [first, *_] = sorted((setup.capture / ENDPOINT).rglob("*.jsonl"))
    lines = first.read_text().splitlines(keepends=True)
    first.write_text("".join(lines[:5]) + "{not json\n" + "".join(lines[5:]))
    assert setup.run() == 0
    counts = setup.analysis()["lucent"]["monitor"]
    assert counts["malformed_lines"] == 1 and counts["merged_records"] == len(normal)
    [example] = counts["malformed_examples"]
    assert first.name in example and "line 6" in example

    first.write_text("".join(lines[:5]) + "{not json\n" * 10 + "".join(lines[5:]))  # 10 of 310 lines: over 1 %
    assert setup.run() == 1
    status = setup.status()
    assert status["ExecutionStatus"] == "Failed" and "malformed" in status["FailureReason"]
    assert first.name in status["FailureReason"]
    assert setup.published() == ["monitoring_execution.json"]


def jsonlines_setup(root: Path, records, *, config: dict) -> Path:
    """The NB-BIAS walkthrough: JSON Lines requests {"features": [...]}, answers {"predicted_label", "score"},
    the job definition's EndpointInput naming the attributes; returns the job definition file."""
    scores = churn_score(records)
    lines = [capture_line(capture_record(
        event_id=str(uuid.uuid4()), inference_time=HOUR + timedelta(seconds=5 * i), inference_id=str(i),
        input_body=json.dumps({"features": [getattr(v, "item", lambda v=v: v)() for v in row]}).encode(),
        input_content_type="application/jsonlines",
        output_body=json.dumps({"predicted_label": int(score > THRESHOLD), "score": float(score)}).encode() + b"\n",
        output_content_type="application/jsonlines", csv_types=[], json_types=["application/jsonlines"]))
        for i, (row, score) in enumerate(zip(records[FEATURES].itertuples(index=False), scores, strict=True))]
    path = root / "capture" / capture_key(ENDPOINT, VARIANT, HOUR, str(uuid.uuid4()))
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines), encoding="utf-8")
    truth = root / "ground-truth" / f"{HOUR:%Y/%m/%d/%H}"
    truth.mkdir(parents=True)
    (truth / "labels.jsonl").write_text("".join(
        json.dumps({"groundTruthData": {"data": json.dumps({"label": int(label)}), "encoding": "JSON"},
                    "eventMetadata": {"eventId": str(i)}, "eventVersion": "0"}) + "\n"
        for i, label in enumerate(records[LABEL])), encoding="utf-8")
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    definition = job_definition("bias", root, root / "config.json", root / "none.json")
    del definition["ModelBiasBaselineConfig"]
    definition["ModelBiasJobInput"]["EndpointInput"].update(
        FeaturesAttribute="features", InferenceAttribute="predicted_label", ProbabilityAttribute="score")
    (root / "definition.json").write_text(json.dumps(definition), encoding="utf-8")
    return root / "definition.json"


def test_json_lines_capture_with_attributes(tmp_path: Path, normal) -> None:
    """The NB-BIAS setup: JSON Lines requests ``{"features": [...]}``, answers ``{"predicted_label", "score"}``,
    ground truth ``{"label": 0}``; the same metrics as the CSV capture of the same traffic."""
    csv = Setup(tmp_path / "csv", normal)
    assert csv.run() == 0

    root = tmp_path / "json"
    jsonlines_setup(root, normal, config={**bias_config(), "headers": [*FEATURES, "label"], "label": "label",
                                          "features": "features"})
    assert lucent(["monitor", "--job-definition", str(root / "definition.json"), "--capture-uri",
                   str(root / "capture"), "--now", T.isoformat(), "--schedule-name", SCHEDULE]) == 0
    analysis = json.loads((root / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}" / "analysis.json").read_text())
    assert metric_values(analysis) == pytest.approx(metric_values(csv.analysis()), rel=1e-12, abs=1e-15)


def test_the_metrics_are_pushed_to_a_pushgateway(tmp_path: Path, normal, monkeypatch) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_monitor_metrics import _read_metrics, pushgateway

    setup = Setup(tmp_path, normal)
    with pushgateway(tmp_path) as url:
        monkeypatch.setenv("LUCENT_PUSHGATEWAY_URL", url)
        assert setup.run() == 0
        pushed = _read_metrics(url)
    written = (setup.window_folder() / "metrics.prom").read_text()

    def samples(text: str) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name.startswith("lucent_bias")}

    ours, gateway = samples(written), samples(pushed)
    assert len(ours) == 21 and len(gateway) == 21
    for (name, labels), value in ours.items():  # the gateway adds its grouping labels (job, ...)
        [match] = [v for (n, more), v in gateway.items() if n == name and set(labels) <= set(more)]
        assert match == value


def test_a_pushgateway_that_is_down_is_reported_without_failing_the_execution(tmp_path: Path, normal,
                                                                            monkeypatch) -> None:
    import socket

    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("LUCENT_PUSHGATEWAY_URL", f"http://user:secret-pw@127.0.0.1:{port}")
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0
    status = setup.status()
    assert status["ExecutionStatus"] == "Completed" and status["MetricsPushError"]
    assert "secret-pw" not in json.dumps(status)


def test_explainability_needs_a_model_it_can_reach(tmp_path: Path) -> None:
    from container.monitor.demo import explainability_config

    records = make_churn_data(20, seed=2)
    write_capture(tmp_path / "capture", HOUR, records, 0)
    config_path = tmp_path / "monitor-config.json"
    config_path.write_text(json.dumps(explainability_config([0.0] * len(FEATURES))), encoding="utf-8")
    definition = job_definition("explainability", tmp_path, config_path, tmp_path / "none.json")
    del definition["ModelExplainabilityBaselineConfig"]
    (tmp_path / "definition.json").write_text(json.dumps(definition))
    code = lucent(["monitor", "--job-definition", str(tmp_path / "definition.json"), "--capture-uri",
                   str(tmp_path / "capture"), "--now", T.isoformat(), "--schedule-name", "shap",
                   "--processing-root", str(tmp_path / "work")])
    assert code == 1
    status = json.loads((tmp_path / "monitoring" / ENDPOINT / "shap" / f"{T:%Y/%m/%d/%H}" /
                         "monitoring_execution.json").read_text())
    assert status["ExecutionStatus"] == "Failed"
    assert "--model-dir" in status["FailureReason"] and "'churn-model'" in status["FailureReason"]


def test_explainability_through_a_running_model_server(tmp_path: Path) -> None:
    import joblib

    from container.monitor.demo import explainability_config, train_model
    from container.sidecar.server import start_model_server

    records = make_churn_data(30, seed=2)
    training = make_churn_data(500, seed=1)
    (tmp_path / "model").mkdir()
    joblib.dump(train_model(training), tmp_path / "model" / "model.joblib")
    write_capture(tmp_path / "capture", HOUR, records, 0)
    config_path = tmp_path / "monitor-config.json"
    config_path.write_text(json.dumps(explainability_config([round(float(v), 3) for v in training[FEATURES].mean()])))
    definition = job_definition("explainability", tmp_path, config_path, tmp_path / "none.json")
    del definition["ModelExplainabilityBaselineConfig"]
    (tmp_path / "definition.json").write_text(json.dumps(definition))
    results = {}
    for option in ("--model-url", "--model-dir"):
        with start_model_server(tmp_path / "model", workers=1) as server:
            where = server.url if option == "--model-url" else str(tmp_path / "model")
            code = lucent(["monitor", "--job-definition", str(tmp_path / "definition.json"), "--capture-uri",
                           str(tmp_path / "capture"), "--now", T.isoformat(), "--schedule-name", option.strip("-"),
                           option, where])
        assert code == 0
        folder = tmp_path / "monitoring" / ENDPOINT / option.strip("-") / f"{T:%Y/%m/%d/%H}"
        results[option] = json.loads((folder / "analysis.json").read_text())["explanations"]
    assert results["--model-url"] == results["--model-dir"]  # the same model, reached two ways


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "x-", "x" * 64])
def test_a_schedule_name_cannot_lead_out_of_the_output_folder(tmp_path: Path, normal, name: str) -> None:
    setup = Setup(tmp_path, normal)
    code = lucent(["monitor", "--job-definition", str(setup.definition), "--capture-uri", str(setup.capture),
                   "--now", T.isoformat(), "--schedule-name", name, "--processing-root", str(tmp_path / "work")])
    assert code == 1
    assert "--schedule-name" in (tmp_path / "work" / "message").read_text()
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"capture", "ground-truth", "monitor-config.json", "job-definition.json", "work"}


@pytest.mark.parametrize("content", [b"[" * 200_000, b"\xff\xfe not utf-8", b'"just a string"', b"{broken"])
def test_a_hostile_constraints_file_fails_the_execution_with_its_name(tmp_path: Path, normal, content: bytes) -> None:
    bad = tmp_path / "constraints.json"
    bad.write_bytes(content)
    setup = Setup(tmp_path, normal, constraints=bad)
    assert setup.run() == 1
    status = setup.status()
    assert status["ExecutionStatus"] == "Failed" and "ConstraintsResource.S3Uri" in status["FailureReason"]
    assert setup.published() == ["monitoring_execution.json"]
