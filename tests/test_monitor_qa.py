"""`lucent monitor`: what QA found (session 11), each on real files and whole executions.

JSON ground truth without the config's label key, the JSON Lines walkthrough's FeaturesAttribute, errors
naming ConfigUri, the CloudWatch folder (checked up front, settable, cleaned after a failed rerun), windows
that are not over yet, and the smaller messages (violations, baseline, records without ground truth).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from container.cli import main as lucent
from container.monitor.demo import (
    ENDPOINT,
    FEATURES,
    LABEL,
    VARIANT,
    bias_config,
    job_definition,
    make_churn_data,
)
from container.monitor.run import capture_publish_delay
from tests.test_monitor_run import HOUR, SCHEDULE, Setup, T, jsonlines_setup


@pytest.fixture
def normal():
    return make_churn_data(300, seed=2)


def json_ground_truth(setup: Setup, key: str, missing: set[int] | None = None) -> Path:
    """Replace the ground truth by JSON data ``{key: label}`` (``{"other": label}`` for the ``missing`` ids)."""
    folder = setup.root / "ground-truth" / f"{HOUR:%Y/%m/%d/%H}"
    for old in folder.iterdir():
        old.unlink()
    path = folder / "labels.jsonl"
    path.write_text("".join(
        json.dumps({"groundTruthData": {"data": json.dumps({("other" if i in (missing or ()) else key): int(v)}),
                                        "encoding": "JSON"}, "eventMetadata": {"eventId": str(i)},
                    "eventVersion": "0"}) + "\n" for i, v in enumerate(setup.records[LABEL])), encoding="utf-8")
    return path


def test_json_ground_truth_without_the_label_key_is_malformed(tmp_path: Path, normal) -> None:
    csv = Setup(tmp_path / "csv", normal)
    assert csv.run() == 0
    setup = Setup(tmp_path / "json", normal)
    path = json_ground_truth(setup, "label")  # the notebook's {"label": v}; the config's label is "Churn"
    assert setup.run() == 1
    status = setup.status()
    assert status["ExecutionStatus"] == "Failed"
    assert "300 of the 300 ground truth lines read are malformed" in status["FailureReason"]
    assert f"{path} line 1: " in status["FailureReason"] and "has no 'Churn'" in status["FailureReason"]
    assert setup.published() == ["monitoring_execution.json"]

    # One line in 300 (under 1 %): skipped and counted; the metrics are those of the CSV labels, which
    # the JSON labels equal, except that record's contributions (it has no ground truth now).
    json_ground_truth(setup, LABEL, missing={17})
    assert setup.run() == 0
    counts = setup.analysis()["lucent"]["monitor"]
    assert counts["malformed_ground_truth_lines"] == 1 and counts["records_without_ground_truth"] == 1
    assert f"{path} line 18: " in counts["malformed_ground_truth_examples"][0]
    json_ground_truth(setup, LABEL)
    assert setup.run() == 0
    assert setup.analysis()["pre_training_bias_metrics"] == csv.analysis()["pre_training_bias_metrics"]


def monitor(definition: Path, capture: Path, *extra: str, now: datetime = T) -> int:
    return lucent(["monitor", "--job-definition", str(definition), "--capture-uri", str(capture), "--now",
                   now.isoformat(), "--schedule-name", SCHEDULE, *extra])


def test_json_lines_features_come_from_the_job_definition(tmp_path: Path, normal) -> None:
    """The SDK's config has no "features": the JMESPath is EndpointInput.FeaturesAttribute. Same metrics as
    the CSV capture of the same traffic."""
    csv = Setup(tmp_path / "csv", normal)
    assert csv.run() == 0
    root = tmp_path / "json"
    definition = jsonlines_setup(root, normal, config={**bias_config(), "headers": [*FEATURES, "label"],
                                                       "label": "label"})
    assert monitor(definition, root / "capture") == 0
    analysis = json.loads((root / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}" / "analysis.json").read_text())
    for stage in ("pre_training_bias_metrics", "post_training_bias_metrics"):
        ours = {m["name"]: m["value"] for m in analysis[stage]["facets"]["Account Length"][0]["metrics"]}
        theirs = {m["name"]: m["value"] for m in csv.analysis()[stage]["facets"]["Account Length"][0]["metrics"]}
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_config_errors_name_the_config_uri(tmp_path: Path, normal) -> None:
    root = tmp_path / "json"
    definition = jsonlines_setup(root, normal, config={**bias_config(), "headers": [*FEATURES, "label"],
                                                       "label": "label", "facet": "not a list"})
    assert monitor(definition, root / "capture", "--processing-root", str(tmp_path / "work")) == 1
    reason = json.loads((root / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}" /
                         "monitoring_execution.json").read_text())["FailureReason"]
    assert f"ConfigUri {root / 'config.json'}" in reason and "facet" in reason
    assert str(tmp_path / "work") not in reason
    (root / "config.json").write_text("{broken", encoding="utf-8")
    assert monitor(definition, root / "capture", "--processing-root", str(tmp_path / "work")) == 1
    reason = json.loads((root / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}" /
                         "monitoring_execution.json").read_text())["FailureReason"]
    assert f"ConfigUri {root / 'config.json'}" in reason and str(tmp_path / "work") not in reason


def cloudwatch_setup(tmp_path: Path, records) -> Setup:
    setup = Setup(tmp_path, records)
    body = json.loads(setup.definition.read_text())
    body["ModelBiasAppSpecification"]["Environment"]["publish_cloudwatch_metrics"] = "Enabled"
    setup.definition.write_text(json.dumps(body))
    return setup


def test_an_unwritable_cloudwatch_folder_fails_before_the_analysis(tmp_path: Path, normal, caplog) -> None:
    setup = cloudwatch_setup(tmp_path, normal)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="lucent"):
        assert setup.run("--cloudwatch-dir", str(blocker / "cw")) == 1
    status = setup.status()
    assert status["ExecutionStatus"] == "Failed" and "--cloudwatch-dir" in status["FailureReason"]
    assert str(blocker / "cw") in status["FailureReason"]
    assert not any("Captured data" in r.getMessage() for r in caplog.records)  # before anything was read


def test_the_cloudwatch_folder_from_the_environment_and_a_failed_rerun(tmp_path: Path, normal, monkeypatch) -> None:
    setup = cloudwatch_setup(tmp_path, normal)
    folder = tmp_path / "cw"
    monkeypatch.setenv("LUCENT_CLOUDWATCH_DIR", str(folder))
    assert setup.run() == 0
    [written] = folder.iterdir()
    assert written.name == f"{ENDPOINT}-{SCHEDULE}-{T:%Y%m%d%H}.json"
    assert [json.loads(line) for line in written.read_text().splitlines()]
    for path in (setup.capture / ENDPOINT / VARIANT).rglob("*.jsonl"):  # the rerun finds no traffic: it fails
        path.unlink()
    assert setup.run() == 1
    assert setup.status()["ExecutionStatus"] == "Failed" and list(folder.iterdir()) == []


def test_a_window_that_is_not_over_is_refused_before_any_work(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    next_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    message = tmp_path / "message"
    assert setup.run("--message-file", str(message), now=next_hour) == 1
    assert "is not over yet" in message.read_text()
    assert not setup.window_folder(next_hour).exists() and not (tmp_path / "work").exists()
    setup.write_definition(None)
    body = json.loads(setup.definition.read_text())
    body["ModelBiasJobInput"]["EndpointInput"].update(StartTimeOffset="-PT1H", EndTimeOffset="PT2H")
    setup.definition.write_text(json.dumps(body))
    just_past = datetime.now(UTC) - timedelta(hours=1)  # its window ends an hour from now
    assert setup.run("--message-file", str(message), now=just_past) == 1
    assert "is not over yet" in message.read_text() and not setup.window_folder(just_past).exists()
    assert capture_publish_delay() == timedelta(seconds=120)  # the capture writer's 60 s roll + 60 s


def test_unpublished_capture_files_are_named(tmp_path: Path, normal, caplog) -> None:
    setup = Setup(tmp_path, normal)
    hour_folder = next((setup.capture / ENDPOINT / VARIANT).rglob("*.jsonl")).parent
    pending = hour_folder / ".churn-endpoint-capture.jsonl.k3j2.tmp"  # what atomic_writer names them
    pending.write_text("")
    with caplog.at_level(logging.WARNING, logger="lucent"):
        assert setup.run() == 0
    [warning] = [r.getMessage() for r in caplog.records if "not published yet" in r.getMessage()]
    assert str(pending) in warning


def test_log_lines_name_violations_baseline_and_missing_ground_truth(tmp_path: Path, normal, caplog) -> None:
    setup = Setup(tmp_path, normal, constraints=tmp_path / "no-such-baseline.json")
    assert setup.run() == 1
    assert "ConstraintsResource.S3Uri" in setup.status()["FailureReason"]

    baseline = Setup(tmp_path / "base", make_churn_data(300, seed=2, drift=False))
    assert baseline.run() == 0
    drifted = Setup(tmp_path / "drift", make_churn_data(300, seed=3, drift=True),
                    constraints=baseline.window_folder() / "analysis.json")
    truth = next((tmp_path / "drift" / "ground-truth").rglob("*.jsonl"))
    truth.write_text("".join(truth.read_text().splitlines(keepends=True)[:-5]))  # 5 records without labels
    with caplog.at_level(logging.INFO, logger="lucent"):
        assert drifted.run() == 0
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "5 captured record(s) of the window have no ground truth (no label with their "
            "inference id under GroundTruthS3Input.S3Uri yet): they are left out of the metrics") in messages
    violations = json.loads((drifted.window_folder() / "constraint_violations.json").read_text())["violations"]
    assert violations
    logged = [m for level, m in messages if m.startswith("Violation: ")]
    assert logged == [f"Violation: {v['metric_name']} facet {v['facet']!r} value {v['facet_value']!r}: "
                      f"{v['description']}" for v in violations]


def test_a_failed_publish_removes_the_temporary_folder(tmp_path: Path, normal, monkeypatch) -> None:
    import tempfile

    from tests.conftest import moto_s3, use_test_credentials

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where mkdtemp makes the execution's folder
    (tmp_path / "tmp").mkdir()
    setup = Setup(tmp_path, normal)
    body = json.loads(setup.definition.read_text())
    body["ModelBiasJobOutputConfig"]["MonitoringOutputs"][0]["S3Output"]["S3Uri"] = "s3://no-such-bucket/results"
    setup.definition.write_text(json.dumps(body))
    with moto_s3() as url:
        use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=url)
        assert monitor(setup.definition, setup.capture) == 1  # nothing can be published: not even the status
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_help_examples_parse() -> None:
    """Every example in `lucent monitor --help` is a command line its own parser accepts (the -PT5H one was not)."""
    import shlex

    from container.cli import build_parser
    from container.monitor.cli import EPILOG

    text = EPILOG.split("examples:\n", 1)[1].split("\nenvironment:", 1)[0].replace("\\\n", " ")
    examples = [shlex.split(line)[1:] for line in text.splitlines() if line.strip().startswith("lucent monitor")]
    assert len(examples) == 3
    parsed = [build_parser().parse_args(argv) for argv in examples]
    assert (parsed[2].data_analysis_start_time, parsed[2].data_analysis_end_time) == ("-PT5H", "-PT1H")


def test_explainability_reads_the_score_where_the_job_definition_says(tmp_path: Path) -> None:
    """The SDK's explainability config has no predictor.probability (model_scores went to EndpointInput):
    the execution takes ProbabilityAttribute ("1", the score's CSV column) and explains what the baseline,
    made with probability 1, explained."""
    import joblib

    from container.monitor.demo import baseline_job_config, explainability_config, run_baseline, train_model
    from tests.test_monitor_run import write_capture

    records = make_churn_data(40, seed=2)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    training = make_churn_data(1000, seed=1)
    joblib.dump(train_model(training), model_dir / "model.joblib")
    config = explainability_config([round(float(v), 3) for v in training[FEATURES].mean()])
    baseline = run_baseline(tmp_path, "baseline", baseline_job_config(config), records[FEATURES], model_dir)
    del config["predictor"]["probability"]  # as the SDK writes it
    write_capture(tmp_path / "capture", HOUR, records, 0)
    config_path = tmp_path / "monitor-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    definition = tmp_path / "job-definition.json"
    body = job_definition("explainability", tmp_path, config_path, baseline)
    assert body["ModelExplainabilityJobInput"]["EndpointInput"]["ProbabilityAttribute"] == "1"
    definition.write_text(json.dumps(body))
    assert monitor(definition, tmp_path / "capture", "--model-dir", str(model_dir)) == 0
    window = json.loads((tmp_path / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}" / "analysis.json").read_text())
    expected = json.loads(baseline.read_text())["explanations"]["kernel_shap"]["label0"]
    assert list(window["explanations"]["kernel_shap"]) == ["label0"]
    got = window["explanations"]["kernel_shap"]["label0"]
    assert got["global_shap_values"] == pytest.approx(expected["global_shap_values"], rel=1e-9)
    assert got["expected_value"] == pytest.approx(expected["expected_value"], rel=1e-12)


def test_a_negative_offset_after_a_space_is_read_as_the_options_value() -> None:
    """`--data-analysis-start-time -PT5H` (a space, as users type it): argparse alone read -PT5H as an option."""
    from container.cli import build_parser
    from container.monitor.cli import join_offset_values

    argv = ["monitor", "--job-definition", "d.json", "--capture-uri", "c", "--data-analysis-start-time", "-PT5H",
            "--data-analysis-end-time", "-PT1H", "--schedule-name", "-PT9H"]
    joined = join_offset_values(argv)
    assert joined[5:7] == ["--data-analysis-start-time=-PT5H", "--data-analysis-end-time=-PT1H"]
    assert joined[-2:] == ["--schedule-name", "-PT9H"]  # other options are left to argparse
    parsed = build_parser().parse_args(joined[:7])
    assert (parsed.data_analysis_start_time, parsed.data_analysis_end_time) == ("-PT5H", "-PT1H")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv[:7])  # what the fix is for: argparse refuses it as given
