"""``make demo-monitor``: the bias-monitoring walkthrough (seed 002) end to end on this machine.

1. A churn dataset (the walkthrough's columns, synthetic) and a scikit-learn model of P(churn) served by
   the built-in model server.
2. Baselines (``suggest_baseline``): ``lucent run`` of the bias config (facet ``Account Length`` with
   threshold 100, group ``Day Calls``, label 0 = no churn is the positive outcome, probability threshold
   0.8) and of the explainability config on the baseline records; each ``analysis.json`` is the
   constraints file of its monitor.
3. ``lucent endpoint`` with data capture at 100 %, two hours of traffic sent with boto3, one record per
   request with its ``InferenceId``: the first hour is the baseline's own records (normal traffic), the
   second hour is drifted (long-standing customers call customer service far more, and day minutes stop
   varying, so the model's attributions move). The demo cannot wait two hours, so each hour's traffic is sent in
   seconds and its captured lines (written by the endpoint) are then filed under the hour they stand for:
   the inference times are shifted and the files rewritten into that hour's folder.
4. Ground truth for every record, uploaded to the hour folder of its hour, as the walkthrough does.
5. ``lucent monitor`` of both job definitions on both hours. The first hour has no violations; the
   second has bias and feature-attribution drift violations.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from analyzer.monitor.capture import capture_key, capture_line, parse_inference_time, read_capture_lines

ENDPOINT = "churn-endpoint"
VARIANT = "AllTraffic"
LABEL = "Churn"
FEATURES = ["Account Length", "VMail Message", "Day Mins", "Day Calls", "Eve Mins", "Eve Calls", "Night Mins",
            "Night Calls", "Intl Mins", "Intl Calls", "CustServ Calls"]
RECORDS_PER_HOUR = 400
PROBABILITY_THRESHOLD = 0.8


def make_churn_data(n_rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    """Customers of a phone company and whether they left. ``drift``: the customers with accounts
    longer than 100 days call customer service far more (bias drift), and day minutes no longer vary
    (the model's second most important feature stops mattering: attribution drift)."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({
        "Account Length": rng.integers(1, 220, n_rows),
        "VMail Message": rng.choice([0, 0, 0, 15, 25, 35], n_rows),
        "Day Mins": rng.normal(180, 50, n_rows).clip(0, 350).round(1),
        "Day Calls": rng.integers(60, 140, n_rows),
        "Eve Mins": rng.normal(200, 50, n_rows).clip(0, 360).round(1),
        "Eve Calls": rng.integers(60, 140, n_rows),
        "Night Mins": rng.normal(200, 50, n_rows).clip(0, 390).round(1),
        "Night Calls": rng.integers(60, 140, n_rows),
        "Intl Mins": rng.normal(10, 2.8, n_rows).clip(0, 20).round(1),
        "Intl Calls": rng.integers(0, 10, n_rows),
        "CustServ Calls": rng.poisson(1.5, n_rows),
    })
    if drift:
        long_standing = data["Account Length"] > 100
        data.loc[long_standing, "CustServ Calls"] += rng.poisson(4, int(long_standing.sum()))
        data["Day Mins"] = 180.0  # a billing change: every plan is now a flat 180 day minutes
    logit = (-2.6 + 0.02 * (data["Day Mins"] - 180) + 0.9 * (data["CustServ Calls"] - 1.5)
             + 0.6 * (data["Intl Calls"] < 3) - 0.02 * data["VMail Message"] + 0.004 * (data["Eve Mins"] - 200))
    churn = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    data.insert(0, LABEL, churn.astype(int))
    return data


def train_model(data: pd.DataFrame, seed: int = 0):
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=seed).fit(
        data[FEATURES].to_numpy(dtype=float), data[LABEL].to_numpy())


def bias_config() -> dict:
    """The monitor's analysis config as the SDK writes it (``BiasAnalysisConfig._to_dict()``)."""
    return {"label_values_or_threshold": [0], "facet": [{"name_or_index": "Account Length", "value_or_threshold": [100]}],
            "group_variable": "Day Calls", "headers": [LABEL, *FEATURES], "label": LABEL}


def explainability_config(baseline: list[float]) -> dict:
    """The monitor's analysis config as the SDK writes it (``ExplainabilityAnalysisConfig._to_dict()``)."""
    return {"methods": {"shap": {"baseline": [baseline], "agg_method": "mean_abs", "use_logit": False,
                                 "save_local_shap_values": False}},
            "predictor": {"model_name": "churn-model", "instance_type": "ml.m5.xlarge", "initial_instance_count": 1,
                          "probability": 1},
            "headers": FEATURES}


def baseline_job_config(monitor_config: dict) -> dict:
    """The ``suggest_baseline`` processing job's config for a monitor's config."""
    config = {**monitor_config, "dataset_type": "text/csv"}
    if "methods" not in config:
        config.update(methods={"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
                      probability_threshold=PROBABILITY_THRESHOLD,
                      predictor={"model_name": "churn-model", "instance_type": "ml.m5.xlarge",
                                 "initial_instance_count": 1, "probability": 1})
    return config


def job_definition(kind: str, root: Path, config_path: Path, constraints: Path) -> dict:
    """The ``CreateModelBiasJobDefinition`` / ``CreateModelExplainabilityJobDefinition`` body, as the SDK's
    ``create_monitoring_schedule`` sends it."""
    prefix = "ModelBias" if kind == "bias" else "ModelExplainability"
    endpoint_input = {"EndpointName": ENDPOINT, "LocalPath": "/opt/ml/processing/input/endpoint",
                      "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated",
                      "ProbabilityAttribute": "1", "ProbabilityThresholdAttribute": PROBABILITY_THRESHOLD}
    job_input = {"EndpointInput": endpoint_input}
    if kind == "bias":
        job_input["GroundTruthS3Input"] = {"S3Uri": str(root / "ground-truth")}
    return {
        "JobDefinitionName": f"churn-{kind}-job-definition",
        f"{prefix}AppSpecification": {"ImageUri": "lucent:dev", "ConfigUri": str(config_path),
                                      "Environment": {"publish_cloudwatch_metrics": "Disabled"}},
        f"{prefix}JobInput": job_input,
        f"{prefix}BaselineConfig": {"ConstraintsResource": {"S3Uri": str(constraints)}},
        f"{prefix}JobOutputConfig": {"MonitoringOutputs": [{"S3Output": {
            "S3Uri": str(root / "monitoring"), "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "JobResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 20}},
        "RoleArn": "arn:aws:iam::000000000000:role/demo",
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
    }


def endpoint_config(capture: Path) -> dict:
    return {"ProductionVariants": [{"VariantName": VARIANT}],
            "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100,
                                  "DestinationS3Uri": str(capture),
                                  "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                  "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]}}}


def run_baseline(root: Path, name: str, config: dict, data: pd.DataFrame, model_dir: Path) -> Path:
    """``lucent run`` of the baselining job; returns its ``analysis.json``."""
    import shutil

    from container.job import JobPaths, run_job

    job = root / name
    for folder in ("config", "data"):
        (job / "input" / folder).mkdir(parents=True, exist_ok=True)
    (job / "input" / "config" / "analysis_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    data.to_csv(job / "input" / "data" / "baseline.csv", index=False, header=False)
    shutil.copytree(model_dir, job / "input" / "model", dirs_exist_ok=True)
    code = run_job(JobPaths.for_root(job))
    if code != 0:
        raise RuntimeError(f"the {name} job failed: {(job / 'message').read_text(encoding='utf-8')}")
    return job / "output" / "analysis.json"


def send_traffic(url: str, records: pd.DataFrame, first_id: int) -> int:
    """One boto3 ``invoke_endpoint`` per record, ``InferenceId`` = its number."""
    from container.demo import csv_record, runtime_client

    runtime = runtime_client(url)
    for offset, record in enumerate(records[FEATURES].itertuples(index=False)):
        runtime.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Accept="text/csv",
                                Body=csv_record(record), InferenceId=str(first_id + offset))
    return len(records)


def file_under_hours(capture: Path, hour_of: dict[str, datetime]) -> dict[datetime, int]:
    """Rewrite the endpoint's capture files so that each line is in the hour its record stands for:
    ``hour_of`` maps an inference id to that hour. Returns lines per hour."""
    lines_by_hour: dict[datetime, list[str]] = {}
    written = sorted(path for path in (capture / ENDPOINT).rglob("*.jsonl"))
    for path in written:
        for record in read_capture_lines(path.read_text(encoding="utf-8"), str(path)):
            metadata = record["eventMetadata"]
            hour = hour_of[metadata["inferenceId"]]
            sent = parse_inference_time(metadata["inferenceTime"])
            metadata["inferenceTime"] = (hour + timedelta(minutes=sent.minute, seconds=sent.second)
                                         ).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines_by_hour.setdefault(hour, []).append(capture_line(record))
        path.unlink()
    for hour, lines in lines_by_hour.items():
        key = capture_key(ENDPOINT, VARIANT, hour, str(uuid.uuid4()))
        (capture / key).parent.mkdir(parents=True, exist_ok=True)
        (capture / key).write_text("".join(lines), encoding="utf-8")
    return {hour: len(lines) for hour, lines in lines_by_hour.items()}


def write_ground_truth(folder: Path, hour: datetime, labels: pd.Series, first_id: int) -> None:
    """The walkthrough's ground-truth records for ``labels``, in the hour folder of ``hour``."""
    target = folder / f"{hour:%Y/%m/%d/%H}"
    target.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"groundTruthData": {"data": str(int(label)), "encoding": "CSV"},
                         "eventMetadata": {"eventId": str(first_id + offset)}, "eventVersion": "0"})
             for offset, label in enumerate(labels)]
    (target / f"{hour:%M%S}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_monitor_demo(root: Path) -> int:
    import joblib

    from analyzer.monitor.window import execution_time
    from container.cli import main as lucent
    from container.demo import running_endpoint

    root = Path(root).resolve()
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    training = make_churn_data(3000, seed=1)
    joblib.dump(train_model(training), model_dir / "model.joblib")
    normal, drifted = make_churn_data(RECORDS_PER_HOUR, seed=2), make_churn_data(RECORDS_PER_HOUR, seed=3, drift=True)
    baseline_row = [round(float(v), 3) for v in training[FEATURES].mean()]

    print("1. Baselines (suggest_baseline): lucent run of each monitor's config on the baseline records", flush=True)
    configs = {"bias": bias_config(), "explainability": explainability_config(baseline_row)}
    constraints = {}
    for kind, config in configs.items():
        data = normal if kind == "bias" else normal[FEATURES]
        constraints[kind] = run_baseline(root, f"baseline-{kind}", baseline_job_config(config), data, model_dir)
        print(f"   {kind}: constraints {constraints[kind]}")

    from container.monitor.run import capture_publish_delay

    # The latest window `lucent monitor` accepts: in the first minutes of an hour, the one before.
    now = execution_time(datetime.now(UTC) - capture_publish_delay())
    hours = [now - timedelta(hours=2), now - timedelta(hours=1)]
    capture = root / "capture"
    config_path = root / "endpoint-config.json"
    config_path.write_text(json.dumps(endpoint_config(capture), indent=2), encoding="utf-8")
    print(f"2. lucent endpoint {ENDPOINT} with data capture (100 %) to {capture}; two hours of traffic", flush=True)
    with running_endpoint(config_path, ENDPOINT, model_dir, root / "endpoint.log") as endpoint:
        sent = send_traffic(endpoint.url, normal, 0) + send_traffic(endpoint.url, drifted, RECORDS_PER_HOUR)
    if endpoint.exit_code != 0:
        print(f"the endpoint exited with code {endpoint.exit_code}; see {root / 'endpoint.log'}")
        return 1
    hour_of = {str(i): hours[0] if i < RECORDS_PER_HOUR else hours[1] for i in range(2 * RECORDS_PER_HOUR)}
    filed = file_under_hours(capture, hour_of)
    for hour, count in sorted(filed.items()):
        print(f"   {count} captured records filed under {capture / ENDPOINT / VARIANT / f'{hour:%Y/%m/%d/%H}'}")
    print(f"   ({sent} requests sent; each hour's traffic was sent just now and filed under the hour it stands for)")
    write_ground_truth(root / "ground-truth", hours[0], normal[LABEL], 0)
    write_ground_truth(root / "ground-truth", hours[1], drifted[LABEL], RECORDS_PER_HOUR)
    print(f"3. Ground truth for every record under {root / 'ground-truth'}", flush=True)

    print("4. lucent monitor: both job definitions on both hours", flush=True)
    results = []
    for kind in ("bias", "explainability"):
        monitor_config = root / f"monitor-{kind}-config.json"
        monitor_config.write_text(json.dumps(configs[kind], indent=2), encoding="utf-8")
        definition = root / f"{kind}-job-definition.json"
        definition.write_text(json.dumps(job_definition(kind, root, monitor_config, constraints[kind]), indent=2),
                              encoding="utf-8")
        for label, hour in zip(("normal", "drifted"), hours, strict=True):
            tick = hour + timedelta(hours=1)
            args = ["--job-definition", str(definition), "--capture-uri", str(capture),
                    "--now", tick.strftime("%Y-%m-%dT%H:%MZ"), "--schedule-name", f"churn-{kind}-schedule",
                    "--processing-root", str(root / "work" / f"{kind}-{label}")]
            if kind == "explainability":
                args += ["--model-dir", str(model_dir)]
            code = lucent(["monitor", *args])
            folder = root / "monitoring" / ENDPOINT / f"churn-{kind}-schedule" / f"{tick:%Y/%m/%d/%H}"
            status = json.loads((folder / "monitoring_execution.json").read_text(encoding="utf-8"))
            results.append((kind, label, code, status, folder))
    print("\nResults:")
    ok = True
    for kind, label, code, status, folder in results:
        violations_file = folder / "constraint_violations.json"
        violations = json.loads(violations_file.read_text(encoding="utf-8"))["violations"] if violations_file.is_file() else []
        print(f"  {kind:<15} {label:<8} hour {status.get('Window')}: {status['ExecutionStatus']}, "
              f"{len(violations)} violation(s)  ({folder})")
        for violation in violations[:4]:
            where = violation.get("metric_name") if kind == "bias" else violation.get("label")
            print(f"      {where}: {violation['description']}")
        if len(violations) > 4:
            print(f"      ... {len(violations) - 4} more in {violations_file}")
        expected = "Completed" if label == "normal" else "CompletedWithViolations"
        ok &= code == 0 and status["ExecutionStatus"] == expected
    print("\nThe normal hour has no violations and the drifted hour has: as expected." if ok
          else "\nUnexpected results: see the monitoring folders above.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.monitor.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder for everything the demo writes")
    args = parser.parse_args(argv)
    return run_monitor_demo(args.root)


if __name__ == "__main__":
    sys.exit(main())
