"""`lucent monitor`: what its messages say, and where they go (QA session 12).

Every exit after the arguments parse writes the exit message file (``--message-file``, else
``--processing-root``/message) and a starting run removes the previous one first; messages name the job
definition's fields (``ProbabilityAttribute``) rather than the config keys they were copied to; a wrong
``--capture-uri`` or ground truth folder is told apart from an hour without traffic; the schedule's
24-hour limit applies to ``--data-analysis-*``; a facet captured as floats gets a hint.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analyzer.errors import ConfigError
from analyzer.monitor.capture import capture_key, capture_line, capture_record
from container.cli import main as lucent
from container.monitor.definition import (
    analysis_window_problem,
    check_schedule_pair,
    parse_job_definition,
    parse_monitoring_schedule,
)
from container.monitor.demo import ENDPOINT, FEATURES, VARIANT, bias_config, job_definition, make_churn_data
from tests.conftest import moto_s3, use_test_credentials
from tests.test_monitor_run import HOUR, SCHEDULE, Setup, T, churn_score, jsonlines_setup


@pytest.fixture
def normal():
    return make_churn_data(120, seed=2)


def message(setup: Setup) -> str:
    return (setup.root / "work" / "message").read_text(encoding="utf-8")


# -- 2. the exit message of early exits ----------------------------------------------------------------


def test_a_window_not_over_yet_replaces_the_previous_message(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0 and message(setup).startswith("Completed: window")
    later = datetime.now(UTC) + timedelta(hours=2)
    assert setup.run(now=later) == 1  # --processing-root only: the message goes to DIR/message
    assert message(setup).startswith("Failed: ClientError: the window [") and "is not over yet" in message(setup)
    assert not setup.window_folder(later).exists()  # refused before anything: nothing published


@pytest.mark.parametrize("body", [{"JobDefinitionName": "x"}, "endpoint name", "not json"])
def test_a_bad_job_definition_writes_the_message(tmp_path: Path, normal, body, capsys) -> None:
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0 and message(setup).startswith("Completed")
    bad = tmp_path / "bad.json"
    if body == "endpoint name":
        document = json.loads(setup.definition.read_text())
        document["ModelBiasJobInput"]["EndpointInput"]["EndpointName"] = "../x"
        bad.write_text(json.dumps(document))
        expected = "ModelBiasJobInput.EndpointInput.EndpointName: '../x' is not an endpoint name"
    elif body == "not json":
        bad.write_text("{broken")
        expected = "line 1"
    else:
        bad.write_text(json.dumps(body))
        expected = "not a CreateModelBiasJobDefinition or CreateModelExplainabilityJobDefinition body"
    argv = ["monitor", "--job-definition", str(bad), "--capture-uri", str(setup.capture), "--now", T.isoformat()]
    assert lucent([*argv, "--processing-root", str(setup.root / "work")]) == 1
    text = message(setup)
    assert text.startswith(f"Failed: ClientError: job definition {bad}: 1 problem(s): ") and expected in text
    assert expected in capsys.readouterr().out  # and on the terminal, as before
    explicit = tmp_path / "elsewhere" / "message.txt"
    assert lucent([*argv, "--message-file", str(explicit)]) == 1
    assert explicit.read_text() == text
    assert not list(explicit.parent.glob(".*"))  # written atomically: no temporary file left


def test_without_a_message_file_or_processing_root_only_the_log_has_it(tmp_path: Path, normal, caplog) -> None:
    setup = Setup(tmp_path, normal)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"JobDefinitionName": "x"}))
    assert lucent(["monitor", "--job-definition", str(bad), "--capture-uri", str(setup.capture)]) == 1
    assert "exit_message: Failed: ClientError: job definition" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.json", "capture", "ground-truth",
                                                                  "job-definition.json", "monitor-config.json"])


def test_a_run_starts_by_removing_the_previous_message(tmp_path: Path, normal) -> None:
    """The message always belongs to the run that started last: even one that ends in an internal error
    (here: --cloudwatch-dir is a file, which the execution reports) never leaves "Completed" standing."""
    setup = Setup(tmp_path, normal)
    assert setup.run() == 0 and message(setup).startswith("Completed")
    body = json.loads(setup.definition.read_text())
    body["ModelBiasAppSpecification"]["Environment"]["publish_cloudwatch_metrics"] = "Enabled"
    setup.definition.write_text(json.dumps(body))
    (tmp_path / "a-file").write_text("x")
    assert setup.run("--cloudwatch-dir", str(tmp_path / "a-file" / "cw")) == 1
    assert message(setup).startswith("Failed: ClientError: --cloudwatch-dir")


# -- 5. --data-analysis-* are at most 24 hours apart ----------------------------------------------------


@pytest.mark.parametrize(("options", "expected"), [
    (["--data-analysis-start-time=-P2D"],
     "--data-analysis-start-time '-P2D' and --data-analysis-end-time 'PT0H' (not given: the default "
     "EndTimeOffset) are 48 hours apart: at most 24 hours (SageMaker's limit)"),
    (["--data-analysis-start-time=-PT30H", "--data-analysis-end-time=-PT1H"],
     "--data-analysis-start-time '-PT30H' and --data-analysis-end-time '-PT1H' are 29 hours apart: at most 24 "
     "hours (SageMaker's limit)"),
    (["--data-analysis-end-time=-PT2H"],
     "--data-analysis-start-time '-PT1H' (not given: the default StartTimeOffset) must come before "
     "--data-analysis-end-time '-PT2H'"),
])
def test_the_analysis_offsets_are_checked_as_the_schedule_checks_them(tmp_path: Path, normal, options,
                                                                       expected: str) -> None:
    setup = Setup(tmp_path, normal)
    assert setup.run(*options) == 1
    assert message(setup) == f"Failed: ClientError: {expected}\n"
    assert not setup.window_folder().exists()
    assert setup.run("--data-analysis-start-time=-PT24H") == 0  # 24 hours is the limit, not past it


def test_one_implementation_for_the_schedule_and_the_command() -> None:
    definition = parse_job_definition(job_definition("bias", Path("/r"), Path("/c.json"), Path("/b.json")))
    assert analysis_window_problem(definition, None, None) is None
    assert analysis_window_problem(definition, "-PT5H", "-PT1H") is None
    schedule = parse_monitoring_schedule({"MonitoringScheduleName": "s", "MonitoringScheduleConfig": {
        "MonitoringJobDefinitionName": definition.name, "ScheduleConfig": {
            "ScheduleExpression": "cron(0 * ? * * *)", "DataAnalysisStartTime": "-P2D"}}})
    with pytest.raises(ConfigError, match=r"MonitoringScheduleConfig.ScheduleConfig: DataAnalysisStartTime '-P2D' and "
                                        r"DataAnalysisEndTime 'PT0H' \(not given: the default EndTimeOffset\) are 48 "
                                        r"hours apart"):
        check_schedule_pair(schedule, definition)
    with pytest.raises(ConfigError, match="are 25 hours apart: at most 24 hours"):
        parse_monitoring_schedule({"MonitoringScheduleName": "s", "MonitoringScheduleConfig": {"ScheduleConfig": {
            "ScheduleExpression": "NOW", "DataAnalysisStartTime": "-PT26H", "DataAnalysisEndTime": "-PT1H"}}})


# -- 4. a wrong --capture-uri or ground truth folder ---------------------------------------------------


def failure(setup: Setup, capture: str | Path, now: datetime = T) -> str:
    code = lucent(["monitor", "--job-definition", str(setup.definition), "--capture-uri", str(capture),
                   "--now", now.isoformat(), "--schedule-name", SCHEDULE, "--processing-root", str(setup.root / "work")])
    assert code == 1
    reason = setup.status(now)["FailureReason"]
    assert message(setup) == f"Failed: ClientError: {reason}\n"
    return reason


def test_a_wrong_capture_uri_is_not_an_hour_without_traffic(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    capture = setup.capture
    head = "No capture files for the window [2024-05-01T05:00:00Z, 2024-05-01T06:00:00Z): "
    missing = failure(setup, tmp_path / "nowhere")
    assert missing == (f"{head}--capture-uri {tmp_path / 'nowhere'} does not exist (looked for {tmp_path}/nowhere/"
                       f"{ENDPOINT}/<variant>/yyyy/mm/dd/hh/ for the window's hour(s) 2024/05/01/05). --capture-uri "
                       "is the endpoint's DataCaptureConfig.DestinationS3Uri")
    (tmp_path / "empty").mkdir()
    assert failure(setup, tmp_path / "empty").startswith(f"{head}--capture-uri {tmp_path / 'empty'} is empty")

    deep = failure(setup, capture / ENDPOINT)  # one level too deep: the endpoint's folder
    assert deep.startswith(f"{head}--capture-uri {capture / ENDPOINT} holds the folder(s) {VARIANT} but no "
                           f"{ENDPOINT}/ (ModelBiasJobInput.EndpointInput.EndpointName of the job definition)")
    assert deep.endswith(f"{capture / ENDPOINT} ends with the endpoint's name: give the folder above it")
    deeper = failure(setup, capture / ENDPOINT / VARIANT)
    assert f"holds the folder(s) 2024 but no {ENDPOINT}/" in deeper
    assert deeper.endswith("holds year folders: it is a variant's folder; give the folder two levels up (the one "
                           f"that holds {ENDPOINT}/)")
    high = failure(setup, tmp_path)  # one level too high
    assert high.endswith(f"{capture} holds {ENDPOINT}/: give --capture-uri {capture}")

    definition = json.loads(setup.definition.read_text())  # the endpoint's name misspelt
    definition["ModelBiasJobInput"]["EndpointInput"]["EndpointName"] = "churn-endpoint-2"
    setup.definition.write_text(json.dumps(definition))
    assert lucent(["monitor", "--job-definition", str(setup.definition), "--capture-uri", str(capture), "--now",
                   T.isoformat(), "--processing-root", str(setup.root / "work")]) == 1
    other = message(setup).removeprefix("Failed: ClientError: ")
    assert other.startswith(f"{head}--capture-uri {capture} holds the folder(s) {ENDPOINT} but no churn-endpoint-2/")


def test_an_hour_without_traffic_says_which_hours_the_capture_has(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    later = T + timedelta(hours=5)
    (setup.capture / ENDPOINT / VARIANT / f"{later - timedelta(hours=1):%Y/%m/%d/%H}").mkdir(parents=True)
    (setup.capture / ENDPOINT / VARIANT / f"{later - timedelta(hours=1):%Y/%m/%d/%H}" / ".x.jsonl.abc.tmp").write_text("")
    reason = failure(setup, setup.capture, now=later)
    folder = setup.capture / ENDPOINT
    assert reason == ("No capture files for the window [2024-05-01T10:00:00Z, 2024-05-01T11:00:00Z): no capture file "
                      f"in {folder}/{VARIANT}/2024/05/01/10/ (the window's hour(s) 2024/05/01/10; {folder}/ holds the "
                      f"variant folder(s) {VARIANT}: {VARIANT} has hour folders 2024/05/01/05 to 2024/05/01/10); 1 "
                      "capture file(s) there are not published yet (.tmp files the capture writer is still writing, "
                      "or left behind by an endpoint that stopped without closing its writer)")
    # A window of several hours names each prefix listed.
    code = lucent(["monitor", "--job-definition", str(setup.definition), "--capture-uri", str(setup.capture),
                   "--now", (later + timedelta(hours=3)).isoformat(), "--schedule-name", SCHEDULE,
                   "--data-analysis-start-time=-PT3H", "--processing-root", str(setup.root / "work")])
    assert code == 1
    assert (f"no capture file in {folder}/{VARIANT}/2024/05/01/11/, {folder}/{VARIANT}/2024/05/01/12/, "
            f"{folder}/{VARIANT}/2024/05/01/13/ (the window's hour(s) 2024/05/01/11 to 2024/05/01/13 (3 hours)"
            in message(setup))


def test_no_ground_truth_names_the_folders_searched(tmp_path: Path, normal) -> None:
    setup = Setup(tmp_path, normal)
    truth = tmp_path / "ground-truth"
    (truth / f"{HOUR:%Y/%m/%d/%H}" / f"{HOUR:%M%S}.jsonl").rename(tmp_path / "labels.jsonl")
    reason = failure(setup, setup.capture)
    assert (f"(0 ground truth record(s) from 0 file(s) in {truth}/2024/05/01/05/ to {truth}/2024/05/01/06/ (2 hour "
            f"folders); GroundTruthS3Input.S3Uri {truth} has the hour folder 2024/05/01/05 only; records are joined "
            "on eventMetadata.inferenceId") in reason
    later = truth / "2024/05/01/09"  # labels collected at the wrong time: after T
    later.mkdir(parents=True)
    (tmp_path / "labels.jsonl").rename(later / "labels.jsonl")
    assert f"{truth} has hour folders 2024/05/01/05 to 2024/05/01/09" in failure(setup, setup.capture)
    import shutil

    shutil.rmtree(truth)
    assert f"GroundTruthS3Input.S3Uri {truth} does not exist" in failure(setup, setup.capture)


def test_a_wrong_capture_uri_on_s3(tmp_path: Path, normal, monkeypatch) -> None:
    import boto3

    setup = Setup(tmp_path, normal)
    with moto_s3() as url:
        use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=url)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="cap-bucket")
        for path in setup.capture.rglob("*.jsonl"):
            s3.upload_file(str(path), "cap-bucket", f"data-capture/{path.relative_to(setup.capture).as_posix()}")
        head = "No capture files for the window [2024-05-01T05:00:00Z, 2024-05-01T06:00:00Z): "
        assert failure(setup, "s3://cap-bucket/nothing").startswith(
            f"{head}--capture-uri s3://cap-bucket/nothing does not exist (looked for s3://cap-bucket/nothing/{ENDPOINT}/")
        deep = failure(setup, f"s3://cap-bucket/data-capture/{ENDPOINT}")
        assert deep.startswith(f"{head}--capture-uri s3://cap-bucket/data-capture/{ENDPOINT} holds the folder(s) "
                               f"{VARIANT} but no {ENDPOINT}/")
        assert deep.endswith("ends with the endpoint's name: give the folder above it")
        assert failure(setup, "s3://cap-bucket").endswith(
            f"s3://cap-bucket/data-capture holds {ENDPOINT}/: give --capture-uri s3://cap-bucket/data-capture")
        empty_hour = failure(setup, "s3://cap-bucket/data-capture", now=T + timedelta(hours=2))
        assert (f"no capture file in s3://cap-bucket/data-capture/{ENDPOINT}/{VARIANT}/2024/05/01/07/ (the window's "
                f"hour(s) 2024/05/01/07; s3://cap-bucket/data-capture/{ENDPOINT}/ holds the variant folder(s) "
                f"{VARIANT}: {VARIANT} has the hour folder 2024/05/01/05 only)") in empty_hour


# -- 3. messages name the job definition's fields ----------------------------------------------------------


def test_a_bad_probability_attribute_names_the_field_and_the_file(tmp_path: Path, normal) -> None:
    root = tmp_path / "json"
    definition = jsonlines_setup(root, normal, config={**bias_config(), "headers": [*FEATURES, "label"],
                                                       "label": "label"})
    body = json.loads(definition.read_text())
    endpoint = body["ModelBiasJobInput"]["EndpointInput"]
    del endpoint["InferenceAttribute"]
    endpoint["ProbabilityAttribute"] = "1"  # a CSV column index, but the responses are JSON Lines
    definition.write_text(json.dumps(body))
    argv = ["monitor", "--job-definition", str(definition), "--capture-uri", str(root / "capture"), "--now",
            T.isoformat(), "--schedule-name", SCHEDULE, "--processing-root", str(root / "work")]
    assert lucent(argv) == 1
    text = (root / "work" / "message").read_text()
    assert text.startswith(f"Failed: ClientError: ModelBiasJobInput.EndpointInput.ProbabilityAttribute (job definition "
                           f"{definition}) '1' is not a valid JMESPath expression: ")
    assert "The window's captured responses are application/jsonlines: there the attribute is a JMESPath" in text
    assert "predictor." not in text and "***" not in text
    endpoint["ProbabilityAttribute"] = "probability"  # a key the responses do not have
    definition.write_text(json.dumps(body))
    assert lucent(argv) == 1
    text = (root / "work" / "message").read_text()
    assert f"ModelBiasJobInput.EndpointInput.ProbabilityAttribute (job definition {definition})" in text
    assert "predictor." not in text


def test_an_explainability_score_attribute_names_the_field(tmp_path: Path) -> None:
    """The SDK's explainability config has no predictor.probability: ProbabilityAttribute is copied there,
    and a problem with it names ProbabilityAttribute (here: a JMESPath for a CSV model)."""
    import joblib

    from container.monitor.demo import explainability_config, train_model
    from tests.test_monitor_run import write_capture

    records = make_churn_data(20, seed=2)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(train_model(make_churn_data(300, seed=1)), model_dir / "model.joblib")
    config = explainability_config([round(float(v), 3) for v in records[FEATURES].mean()])
    del config["predictor"]["probability"]
    write_capture(tmp_path / "capture", HOUR, records, 0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    body = job_definition("explainability", tmp_path, tmp_path / "config.json", tmp_path / "none.json")
    del body["ModelExplainabilityBaselineConfig"]
    body["ModelExplainabilityJobInput"]["EndpointInput"]["ProbabilityAttribute"] = "score"
    definition = tmp_path / "job-definition.json"
    definition.write_text(json.dumps(body))
    assert lucent(["monitor", "--job-definition", str(definition), "--capture-uri", str(tmp_path / "capture"),
                   "--now", T.isoformat(), "--schedule-name", SCHEDULE, "--model-dir", str(model_dir),
                   "--processing-root", str(tmp_path / "work")]) == 1
    text = (tmp_path / "work" / "message").read_text()
    assert (f"ModelExplainabilityJobInput.EndpointInput.ProbabilityAttribute (job definition {definition})"
            in text), text
    assert "predictor.probability" not in text


# -- 6. a facet captured as floats --------------------------------------------------------------------------


def write_float_capture(folder: Path, records, facet: str) -> None:
    """The records as the SDK's CSVSerializer sends a pandas row of floats: ``1.0`` for ``1``."""
    lines = [capture_line(capture_record(
        event_id=str(uuid.uuid4()), inference_time=HOUR + timedelta(seconds=7 * i), inference_id=str(i),
        input_body=",".join(f"{float(v):.1f}" if name == facet else str(v)
                            for name, v in zip(FEATURES, row, strict=True)).encode(),
        input_content_type="text/csv", output_body=f"{1 - score},{score}".encode(), output_content_type="text/csv",
        csv_types=["text/csv"], json_types=[]))
        for i, (row, score) in enumerate(zip(records[FEATURES].itertuples(index=False), churn_score(records),
                                             strict=True))]
    path = folder / capture_key(ENDPOINT, VARIANT, HOUR, str(uuid.uuid4()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def test_a_facet_captured_as_floats_gets_a_hint(tmp_path: Path) -> None:
    records = make_churn_data(300, seed=2)
    facet = "VMail Message"  # 0, 15, 25 or 35: categorical as integers, a threshold facet as floats
    config = {**bias_config(), "facet": [{"name_or_index": facet, "value_or_threshold": [0]}]}
    baseline = Setup(tmp_path / "baseline", records)
    baseline.config.write_text(json.dumps(config))
    assert baseline.run() == 0
    constraints = baseline.window_folder() / "analysis.json"
    assert [group["value_or_threshold"] for group in
            json.loads(constraints.read_text())["pre_training_bias_metrics"]["facets"][facet]] == ["0"]
    live = Setup(tmp_path / "live", records, constraints=constraints)
    live.config.write_text(json.dumps(config))
    for path in live.capture.rglob("*.jsonl"):
        path.unlink()
    write_float_capture(live.capture, records, facet)
    assert live.run() == 1
    reason = live.status()["FailureReason"]
    assert (f"it has no value of facet {facet!r} the window has in post_training_bias_metrics: the window has "
            "'(0.0, 35.0]', the constraints file '0'. The captured values of 'VMail Message' are numbers (") in reason
    assert "send the values as the baseline's data has them (35, not 35.0: the SDK's CSVSerializer" in reason
    assert reason.count("The captured values of") == 1  # once per facet, not once per stage
