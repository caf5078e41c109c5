"""Job definitions and monitoring schedules: the SDK's own request bodies, and every kind of bad one.

The bodies below were recorded from the SageMaker Python SDK itself (sagemaker 3.27.0, sagemaker-core
2.27.0, in a throwaway virtualenv; sagemaker is not a Lucent dependency): ``ModelBiasMonitor`` and
``ModelExplainabilityMonitor.create_monitoring_schedule`` with a session whose SageMaker client records
the keyword arguments of ``create_model_bias_job_definition``, ``create_model_explainability_job_definition``
and ``create_monitoring_schedule`` (``SDK_SCRIPT``). With ``LUCENT_SAGEMAKER_PYTHON`` set to the python of
an environment that has the SDK, ``test_the_bodies_are_what_the_sdk_sends`` records them again and
compares.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.errors import ConfigError
from analyzer.monitor.attributes import EndpointAttributes
from container.monitor.definition import (
    BIAS,
    EXPLAINABILITY,
    JobDefinition,
    MonitoringSchedule,
    check_schedule_pair,
    load_job_definition,
    load_monitoring_schedule,
    parse_job_definition,
    parse_monitoring_schedule,
)

CLARIFY_IMAGE = "306415355426.dkr.ecr.us-west-2.amazonaws.com/sagemaker-clarify-processing:1.0"
CLUSTER = {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}}
OUTPUT = {"MonitoringOutputs": [{"S3Output": {"LocalPath": "/opt/ml/processing/output", "S3UploadMode": "Continuous",
                                              "S3Uri": "s3://bucket/churn/reports"}}]}
ROLE = "arn:aws:iam::111122223333:role/monitor"

# ModelBiasMonitor(role, max_runtime_in_seconds=1800).create_monitoring_schedule(EndpointInput(..., -PT1H, -PT0H,
# probability_threshold_attribute=0.8), ground truth, constraints, hourly)
BIAS_DEFINITION = {
    "JobDefinitionName": "model-bias-job-definition-2026-12-06-07-36-32-776",
    "JobResources": CLUSTER,
    "ModelBiasAppSpecification": {"ConfigUri": "s3://bucket/churn/monitor/analysis_config.json",
                                  "Environment": {"publish_cloudwatch_metrics": "Enabled"}, "ImageUri": CLARIFY_IMAGE},
    "ModelBiasBaselineConfig": {"ConstraintsResource": {"S3Uri": "s3://bucket/churn/baselining/analysis.json"}},
    "ModelBiasJobInput": {
        "EndpointInput": {"EndTimeOffset": "-PT0H", "EndpointName": "churn-endpoint",
                          "LocalPath": "/opt/ml/processing/input/endpoint", "ProbabilityThresholdAttribute": 0.8,
                          "S3DataDistributionType": "FullyReplicated", "S3InputMode": "File",
                          "StartTimeOffset": "-PT1H"},
        "GroundTruthS3Input": {"S3Uri": "s3://bucket/churn/ground-truth"}},
    "ModelBiasJobOutputConfig": OUTPUT,
    "RoleArn": ROLE,
    "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
}
BIAS_SCHEDULE = {
    "MonitoringScheduleConfig": {"MonitoringJobDefinitionName": "model-bias-job-definition-2026-12-06-07-36-32-776",
                                 "MonitoringType": "ModelBias",
                                 "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"}},
    "MonitoringScheduleName": "churn-bias", "Tags": [],
}
# ModelExplainabilityMonitor(role, env={"LUCENT_SHAP_WORKERS": "2"}).create_monitoring_schedule(EndpointInput(...,
# features_attribute="features", inference_attribute="score", -PT2H, -PT1H), daily_every_x_hours(6, 1),
# enable_cloudwatch_metrics=False)
EXPLAIN_DEFINITION = {
    "JobDefinitionName": "model-explainability-job-definition-2026-12-06-07-36-32-791",
    "JobResources": CLUSTER,
    "ModelExplainabilityAppSpecification": {
        "ConfigUri": "s3://bucket/churn/monitor/explain_config.json",
        "Environment": {"LUCENT_SHAP_WORKERS": "2", "publish_cloudwatch_metrics": "Disabled"}, "ImageUri": CLARIFY_IMAGE},
    "ModelExplainabilityJobInput": {
        "EndpointInput": {"EndTimeOffset": "-PT1H", "EndpointName": "churn-endpoint", "FeaturesAttribute": "features",
                          "InferenceAttribute": "score", "LocalPath": "/opt/ml/processing/input/endpoint",
                          "S3DataDistributionType": "FullyReplicated", "S3InputMode": "File",
                          "StartTimeOffset": "-PT2H"}},
    "ModelExplainabilityJobOutputConfig": OUTPUT,
    "RoleArn": ROLE,
}
EXPLAIN_SCHEDULE = {
    "MonitoringScheduleConfig": {
        "MonitoringJobDefinitionName": "model-explainability-job-definition-2026-12-06-07-36-32-791",
        "MonitoringType": "ModelExplainability", "ScheduleConfig": {"ScheduleExpression": "cron(0 1/6 ? * * *)"}},
    "MonitoringScheduleName": "churn-explain", "Tags": [],
}
# ModelBiasMonitor(role).create_monitoring_schedule("churn-endpoint", ..., NOW, -PT5H, -PT1H): no offsets, no constraints
ONCE_DEFINITION = {
    "JobDefinitionName": "model-bias-job-definition-2026-12-06-07-36-32-951",
    "JobResources": CLUSTER,
    "ModelBiasAppSpecification": {"ConfigUri": "s3://bucket/churn/monitor/analysis_config.json",
                                  "Environment": {"publish_cloudwatch_metrics": "Enabled"}, "ImageUri": CLARIFY_IMAGE},
    "ModelBiasJobInput": {
        "EndpointInput": {"EndpointName": "churn-endpoint", "LocalPath": "/opt/ml/processing/input/endpoint",
                          "S3DataDistributionType": "FullyReplicated", "S3InputMode": "File"},
        "GroundTruthS3Input": {"S3Uri": "s3://bucket/churn/ground-truth"}},
    "ModelBiasJobOutputConfig": OUTPUT,
    "RoleArn": ROLE,
}
ONCE_SCHEDULE = {
    "MonitoringScheduleConfig": {
        "MonitoringJobDefinitionName": "model-bias-job-definition-2026-12-06-07-36-32-951", "MonitoringType": "ModelBias",
        "ScheduleConfig": {"DataAnalysisEndTime": "-PT1H", "DataAnalysisStartTime": "-PT5H", "ScheduleExpression": "NOW"}},
    "MonitoringScheduleName": "churn-bias-once", "Tags": [],
}
SDK_BODIES = [BIAS_DEFINITION, BIAS_SCHEDULE, EXPLAIN_DEFINITION, EXPLAIN_SCHEDULE, ONCE_DEFINITION, ONCE_SCHEDULE]

SDK_SCRIPT = r'''
import json, sys
import boto3
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.model_monitor import (ModelBiasMonitor, ModelExplainabilityMonitor, EndpointInput,
                                          CronExpressionGenerator)
from sagemaker.core.model_monitor.monitoring_files import Constraints

calls = []

class Recorder:
    def __getattr__(self, name):
        def record(**kwargs):
            calls.append(kwargs)
            return {}
        return record

boto = boto3.Session(region_name="us-west-2", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")
session = Session(boto_session=boto, sagemaker_client=Recorder(), default_bucket="bucket")
ROLE = "arn:aws:iam::111122223333:role/monitor"
ModelBiasMonitor(role=ROLE, sagemaker_session=session, max_runtime_in_seconds=1800).create_monitoring_schedule(
    endpoint_input=EndpointInput(endpoint_name="churn-endpoint", destination="/opt/ml/processing/input/endpoint",
                                 start_time_offset="-PT1H", end_time_offset="-PT0H", probability_threshold_attribute=0.8),
    ground_truth_input="s3://bucket/churn/ground-truth",
    analysis_config="s3://bucket/churn/monitor/analysis_config.json", output_s3_uri="s3://bucket/churn/reports",
    constraints=Constraints({}, "s3://bucket/churn/baselining/analysis.json", sagemaker_session=session),
    monitor_schedule_name="churn-bias", schedule_cron_expression=CronExpressionGenerator.hourly())
ModelExplainabilityMonitor(role=ROLE, sagemaker_session=session, env={"LUCENT_SHAP_WORKERS": "2"}
                           ).create_monitoring_schedule(
    endpoint_input=EndpointInput(endpoint_name="churn-endpoint", destination="/opt/ml/processing/input/endpoint",
                                 features_attribute="features", inference_attribute="score",
                                 start_time_offset="-PT2H", end_time_offset="-PT1H"),
    analysis_config="s3://bucket/churn/monitor/explain_config.json", output_s3_uri="s3://bucket/churn/reports",
    monitor_schedule_name="churn-explain",
    schedule_cron_expression=CronExpressionGenerator.daily_every_x_hours(6, starting_hour=1),
    enable_cloudwatch_metrics=False)
ModelBiasMonitor(role=ROLE, sagemaker_session=session).create_monitoring_schedule(
    endpoint_input="churn-endpoint", ground_truth_input="s3://bucket/churn/ground-truth",
    analysis_config="s3://bucket/churn/monitor/analysis_config.json", output_s3_uri="s3://bucket/churn/reports",
    monitor_schedule_name="churn-bias-once", schedule_cron_expression=CronExpressionGenerator.now(),
    data_analysis_start_time="-PT5H", data_analysis_end_time="-PT1H")
json.dump(calls, sys.stdout)
'''


def _timeless(document):
    """The SDK names job definitions with the time they were made: compare without it."""
    return json.loads(re.sub(r"(job-definition)-\d{4}(?:-\d\d){5}-\d{3}", r"\1", json.dumps(document)))


@pytest.mark.skipif(not os.environ.get("LUCENT_SAGEMAKER_PYTHON"),
                    reason="set LUCENT_SAGEMAKER_PYTHON to a python with the sagemaker SDK (not a Lucent dependency)")
def test_the_bodies_are_what_the_sdk_sends():
    recorded = subprocess.run([os.environ["LUCENT_SAGEMAKER_PYTHON"], "-c", SDK_SCRIPT], capture_output=True,
                              text=True, check=True, timeout=120).stdout
    assert _timeless(json.loads(recorded)) == _timeless(SDK_BODIES)


def test_the_sdk_bias_body():
    assert parse_job_definition(BIAS_DEFINITION) == JobDefinition(
        kind=BIAS, name="model-bias-job-definition-2026-12-06-07-36-32-776",
        config_uri="s3://bucket/churn/monitor/analysis_config.json", endpoint_name="churn-endpoint",
        attributes=EndpointAttributes(probability_threshold_attribute=0.8),
        start_time_offset="-PT1H", end_time_offset="-PT0H", ground_truth_uri="s3://bucket/churn/ground-truth",
        constraints_uri="s3://bucket/churn/baselining/analysis.json", output_uri="s3://bucket/churn/reports",
        environment={"publish_cloudwatch_metrics": "Enabled"}, publish_cloudwatch_metrics=True)


def test_the_sdk_explainability_body():
    assert parse_job_definition(EXPLAIN_DEFINITION) == JobDefinition(
        kind=EXPLAINABILITY, name="model-explainability-job-definition-2026-12-06-07-36-32-791",
        config_uri="s3://bucket/churn/monitor/explain_config.json", endpoint_name="churn-endpoint",
        attributes=EndpointAttributes(features_attribute="features", inference_attribute="score"),
        start_time_offset="-PT2H", end_time_offset="-PT1H", ground_truth_uri=None, constraints_uri=None,
        output_uri="s3://bucket/churn/reports",
        environment={"LUCENT_SHAP_WORKERS": "2", "publish_cloudwatch_metrics": "Disabled"},
        publish_cloudwatch_metrics=False)


def test_the_sdk_body_without_offsets_or_constraints():
    definition = parse_job_definition(ONCE_DEFINITION)
    assert (definition.start_time_offset, definition.end_time_offset, definition.constraints_uri) == (None, None, None)
    assert definition.attributes == EndpointAttributes()


def test_the_sdk_schedules():
    assert [parse_monitoring_schedule(body) for body in (BIAS_SCHEDULE, EXPLAIN_SCHEDULE, ONCE_SCHEDULE)] == [
        MonitoringSchedule("churn-bias", "cron(0 * ? * * *)", "model-bias-job-definition-2026-12-06-07-36-32-776",
                           BIAS, None, None),
        MonitoringSchedule("churn-explain", "cron(0 1/6 ? * * *)",
                           "model-explainability-job-definition-2026-12-06-07-36-32-791", EXPLAINABILITY, None, None),
        MonitoringSchedule("churn-bias-once", "NOW", "model-bias-job-definition-2026-12-06-07-36-32-951", BIAS,
                           "-PT5H", "-PT1H")]
    assert parse_monitoring_schedule(ONCE_SCHEDULE).one_time and not parse_monitoring_schedule(BIAS_SCHEDULE).one_time
    for schedule, definition in ((BIAS_SCHEDULE, BIAS_DEFINITION), (EXPLAIN_SCHEDULE, EXPLAIN_DEFINITION),
                                 (ONCE_SCHEDULE, ONCE_DEFINITION)):
        check_schedule_pair(parse_monitoring_schedule(schedule), parse_job_definition(definition))


def test_files_and_describe_responses(tmp_path, caplog):
    """A DescribeModelBiasJobDefinition response is a body with more keys: each is logged once and ignored."""
    described = {**BIAS_DEFINITION, "JobDefinitionArn": "arn:aws:sagemaker:us-west-2:111122223333:model-bias-job-"
                 "definition/x", "CreationTime": "2024-05-01T00:00:00Z"}
    (tmp_path / "definition.json").write_text(json.dumps(described), encoding="utf-8")
    (tmp_path / "schedule.json").write_text(json.dumps(BIAS_SCHEDULE), encoding="utf-8")
    expected = parse_job_definition(BIAS_DEFINITION)
    with caplog.at_level(logging.INFO, logger="lucent.monitor"):
        caplog.clear()  # the records of the parse above, kept when an earlier test raised the root level
        assert load_job_definition(tmp_path / "definition.json") == expected
        assert load_monitoring_schedule(tmp_path / "schedule.json").name == "churn-bias"
    logged = [record.getMessage() for record in caplog.records]
    for key in ("JobDefinitionArn", "CreationTime", "JobResources", "RoleArn", "StoppingCondition", "Tags"):
        assert sum(f" {key} " in message for message in logged) == 1, (key, logged)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "definition.json").write_text('{"JobDefinitionName": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"monitoring job definition \(--job-definition\) as JSON\. .*definition\.json"):
        load_job_definition(tmp_path / "definition.json")
    with pytest.raises(ConfigError, match="Cannot read the monitoring schedule"):
        load_monitoring_schedule(tmp_path / "missing.json")


def _problems(document, parse=parse_job_definition) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(document)
    return caught.value.problems


def test_every_problem_at_once_each_naming_its_field():
    body = copy.deepcopy(BIAS_DEFINITION)
    endpoint = body["ModelBiasJobInput"]["EndpointInput"]
    endpoint.update(StartTimeOffset="-P1M", ProbabilityThresholdAttribute="0.8", StartTimeOfset="-PT1H",
                    FeaturesAttribute="features[", S3InputMode="file")
    del body["ModelBiasJobInput"]["GroundTruthS3Input"]
    body["ModelBiasAppSpecification"].update(ConfigUri="s3:/bucket/config.json",
                                             Environment={"publish_cloudwatch_metrics": "yes", "1X": "a"})
    body["ModelBiasJobOutputConfig"] = {"MonitoringOutputs": []}
    body["ModelBiasBaselineConfig"] = {"BaseliningJobName": "baseline-suggestion-job-1"}
    assert sorted(problem.split(":")[0] for problem in _problems(body)) == sorted([
        "ModelBiasAppSpecification.ConfigUri",
        "ModelBiasAppSpecification.Environment",
        "ModelBiasJobInput.EndpointInput.StartTimeOffset",
        "ModelBiasJobInput.EndpointInput.ProbabilityThresholdAttribute",
        "ModelBiasJobInput.EndpointInput.StartTimeOfset",
        "ModelBiasJobInput.EndpointInput.FeaturesAttribute",
        "ModelBiasJobInput.EndpointInput.S3InputMode",
        "ModelBiasJobInput.GroundTruthS3Input.S3Uri",
        "ModelBiasJobOutputConfig.MonitoringOutputs",
        "ModelBiasBaselineConfig.BaseliningJobName",
    ])
    text = "\n".join(_problems(body))
    assert "StartTimeOfset: unknown key; did you mean 'StartTimeOffset'?" in text
    assert "ProbabilityThresholdAttribute: expected a number, got \"0.8\" (string)" in text
    assert "S3InputMode: 'file' is not one of Pipe, File" in text
    assert "'1X' is not an environment variable name" in text


def test_publish_cloudwatch_metrics_checked_once_the_environment_is_valid():
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasAppSpecification"]["Environment"] = {"publish_cloudwatch_metrics": "yes"}
    assert _problems(body) == ["ModelBiasAppSpecification.Environment.publish_cloudwatch_metrics: 'yes' is not one "
                               "of Enabled, Disabled"]


@pytest.mark.parametrize(("environment", "published"), [
    ({"publish_cloudwatch_metrics": "Enabled"}, True),
    ({"publish_cloudwatch_metrics": "enabled"}, True),
    ({"publish_cloudwatch_metrics": "Disabled"}, False),
    ({}, False),  # the documented default when the key is absent (the SDK always writes it)
    (None, False),
])
def test_publish_cloudwatch_metrics(environment, published):
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasAppSpecification"]["Environment"] = environment
    definition = parse_job_definition(body)
    assert definition.publish_cloudwatch_metrics is published
    assert definition.environment.get("publish_cloudwatch_metrics") == ("Enabled" if published else (
        "Disabled" if environment else None))


def test_ground_truth_is_required_for_bias():
    for job_input in ({"EndpointInput": {"EndpointName": "e"}},
                      {"EndpointInput": {"EndpointName": "e"}, "GroundTruthS3Input": {}},
                      {"EndpointInput": {"EndpointName": "e"}, "GroundTruthS3Input": {"S3Uri": None}}):
        problems = _problems({**BIAS_DEFINITION, "ModelBiasJobInput": job_input})
        assert len(problems) == 1
        assert problems[0].startswith("ModelBiasJobInput.GroundTruthS3Input.S3Uri: can not be None (the SDK's "
                                      "\"ground_truth_input can not be None.\")")


def test_explainability_has_no_ground_truth():
    body = copy.deepcopy(EXPLAIN_DEFINITION)
    body["ModelExplainabilityJobInput"]["GroundTruthS3Input"] = {"S3Uri": "s3://bucket/truth"}
    assert _problems(body) == ["ModelExplainabilityJobInput.GroundTruthS3Input: unknown key (known keys here: "
                               "EndpointInput, BatchTransformInput)"]


def test_constraints():
    both = {**BIAS_DEFINITION, "ModelBiasBaselineConfig": {
        "BaseliningJobName": "baseline-1", "ConstraintsResource": {"S3Uri": "./baseline/analysis.json"}}}
    assert parse_job_definition(both).constraints_uri == "./baseline/analysis.json"
    job_only = {**BIAS_DEFINITION, "ModelBiasBaselineConfig": {"BaseliningJobName": "baseline-1"}}
    [problem] = _problems(job_only)
    assert problem.startswith("ModelBiasBaselineConfig.BaseliningJobName: Lucent has no registry of processing jobs "
                              "to look 'baseline-1' up in: give the baseline's analysis.json as "
                              "ConstraintsResource.S3Uri")
    empty = {**BIAS_DEFINITION, "ModelBiasBaselineConfig": {"ConstraintsResource": {}}}
    assert _problems(empty)[0].startswith("ModelBiasBaselineConfig.ConstraintsResource.S3Uri: required")
    assert parse_job_definition({**BIAS_DEFINITION, "ModelBiasBaselineConfig": {}}).constraints_uri is None


@pytest.mark.parametrize("uri", ["./analysis_config.json", "/srv/monitor/analysis_config.json",
                                 "file:///srv/monitor/analysis_config.json", "S3://bucket/analysis_config.json"])
def test_local_paths_and_file_uris(uri):
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasAppSpecification"]["ConfigUri"] = uri
    body["ModelBiasJobOutputConfig"]["MonitoringOutputs"][0]["S3Output"]["S3Uri"] = uri
    definition = parse_job_definition(body)
    assert (definition.config_uri, definition.output_uri) == (uri, uri)


@pytest.mark.parametrize(("uri", "message"), [
    ("s3:/bucket/config.json", "s3:/bucket/config.json: not a well-formed S3 URI (write s3://bucket/key)"),
    ("s3://", "no bucket"),
    ("https://example.com/config.json", "unsupported URI scheme 'https'"),
    ("", "must have at least 1 character"),
])
def test_bad_uris(uri, message):
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasAppSpecification"]["ConfigUri"] = uri
    [problem] = _problems(body)
    assert problem.startswith("ModelBiasAppSpecification.ConfigUri: ") and message in problem


def test_missing_config_uri_and_sections():
    body = copy.deepcopy(BIAS_DEFINITION)
    del body["ModelBiasAppSpecification"]["ConfigUri"]
    assert _problems(body) == ["ModelBiasAppSpecification.ConfigUri: required: the monitoring analysis config "
                               "(analysis_config.json with headers, label, facet... for bias; methods.shap for "
                               "explainability), an s3:// URI or a local path"]
    body = {key: value for key, value in BIAS_DEFINITION.items() if key != "ModelBiasJobOutputConfig"}
    body["ModelBiasJobOutputConfigs"] = OUTPUT
    assert _problems(body) == ["ModelBiasJobOutputConfig: required key missing (it names the output "
                               "(MonitoringOutputs)); the body has 'ModelBiasJobOutputConfigs': did you mean "
                               "'ModelBiasJobOutputConfig'?"]
    assert _problems({**BIAS_DEFINITION, "ModelBiasJobInput": {"GroundTruthS3Input": {"S3Uri": "s3://b/t"}}}) == [
        "ModelBiasJobInput.EndpointInput: required: the endpoint whose captured traffic is monitored (EndpointName, "
        "and the attributes that read its records)"]


def test_batch_transform_input_is_not_supported():
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasJobInput"] = {"BatchTransformInput": {"DataCapturedDestinationS3Uri": "s3://b/c"},
                                 "GroundTruthS3Input": {"S3Uri": "s3://b/t"}}
    [problem] = _problems(body)
    assert problem.startswith("ModelBiasJobInput.BatchTransformInput: monitoring a batch transform job is not "
                              "supported by Lucent")


@pytest.mark.parametrize(("document", "message"), [
    ({}, "not a CreateModelBiasJobDefinition or CreateModelExplainabilityJobDefinition body"),
    ({"ModelBiasJobInputs": {}}, "found 'ModelBiasJobInputs' (did you mean 'ModelBiasJobInput'?)"),
    ({"DataQualityAppSpecification": {}, "DataQualityJobInput": {}}, "a DataQuality job definition"),
    ({"ModelBiasJobInput": {}, "ModelExplainabilityJobInput": {}}, "both ModelBias* and ModelExplainability*"),
    ([], "expected a JSON object"),
])
def test_the_kind_comes_from_the_keys(document, message):
    [problem] = _problems(document)
    assert problem.startswith("(top level): ") and message in problem


@pytest.mark.parametrize("offset", ["-PT1H", "PT0H", "-PT0H", "-P8D", "-P1W", "-P1DT2H30M", "+PT30M"])
def test_good_offsets(offset):
    body = copy.deepcopy(EXPLAIN_DEFINITION)
    body["ModelExplainabilityJobInput"]["EndpointInput"].update(StartTimeOffset="-P30D", EndTimeOffset=offset)
    assert parse_job_definition(body).end_time_offset == offset


@pytest.mark.parametrize(("offset", "message"), [
    ("1H", "'1H' is not an ISO-8601 duration such as -PT1H"),  # the API's pattern .?P.*
    ("-P100DT10H30M15S", "must have at most 15 characters"),
    ("-P1M", "years and months have no fixed length"),
    ("-P", "is not an ISO-8601 duration"),
    ("-PT1.5H", "is not an ISO-8601 duration"),
    ("", "must have at least 1 character"),
    (-1, "expected a string, got -1 (integer)"),
])
def test_bad_offsets(offset, message):
    body = copy.deepcopy(BIAS_DEFINITION)
    body["ModelBiasJobInput"]["EndpointInput"]["EndTimeOffset"] = offset
    [problem] = _problems(body)
    assert problem.startswith("ModelBiasJobInput.EndpointInput.EndTimeOffset: ") and message in problem


@pytest.mark.parametrize(("start", "end"), [("-PT1H", "-PT1H"), ("-PT0H", "-PT1H"), ("PT0H", None), (None, "-PT2H")])
def test_empty_windows(start, end):
    body = copy.deepcopy(ONCE_DEFINITION)
    endpoint = body["ModelBiasJobInput"]["EndpointInput"]
    endpoint.update({key: value for key, value in (("StartTimeOffset", start), ("EndTimeOffset", end)) if value})
    [problem] = _problems(body)
    assert problem.startswith("ModelBiasJobInput.EndpointInput: StartTimeOffset ") and "is empty" in problem


def _schedule(expression: str | None, start: str | None = None, end: str | None = None, **config) -> dict:
    schedule = {key: value for key, value in (("ScheduleExpression", expression), ("DataAnalysisStartTime", start),
                                              ("DataAnalysisEndTime", end)) if value is not None}
    return {"MonitoringScheduleName": "s", "MonitoringScheduleConfig": {"ScheduleConfig": schedule, **config}}


@pytest.mark.parametrize("expression", ["cron(0 * ? * * *)", "cron(0 0 ? * * *)", "cron(0 23 ? * * *)",
                                        "cron(0 07 ? * * *)", "cron(0 17/12 ? * * *)", "cron(0 0/1 ? * * *)",
                                        "cron(0 0/24 ? * * *)", " cron(0 * ? * * *) "])
def test_accepted_expressions(expression):
    assert parse_monitoring_schedule(_schedule(expression)).expression == expression.strip()


@pytest.mark.parametrize("expression", ["cron(30 * ? * * *)", "cron(0 24 ? * * *)", "cron(0 1/25 ? * * *)",
                                        "cron(0 1/0 ? * * *)", "cron(0 2 ? * MON *)", "cron(0 * * * ? *)", "hourly",
                                        "rate(1 hour)", "now", "0 * * * *"])
def test_refused_expressions(expression):
    [problem] = _problems(_schedule(expression), parse_monitoring_schedule)
    assert problem.startswith(f"MonitoringScheduleConfig.ScheduleConfig.ScheduleExpression: {expression!r} is not "
                              "one SageMaker accepts: cron(0 * ? * * *) (hourly)")


def test_no_schedule_config_is_daily():
    schedule = parse_monitoring_schedule({"MonitoringScheduleName": "s", "MonitoringScheduleConfig": {
        "MonitoringJobDefinitionName": "d"}})
    assert schedule.expression == "cron(0 0 ? * * *)"
    assert parse_monitoring_schedule({"MonitoringScheduleName": "s", "MonitoringScheduleConfig": {}}).expression == \
        "cron(0 0 ? * * *)"


@pytest.mark.parametrize(("start", "end", "message"), [
    (None, None, "NOW (one execution, immediately) needs both DataAnalysisStartTime and DataAnalysisEndTime"),
    ("-PT5H", None, "NOW (one execution, immediately) needs both"),
    ("-PT25H", "PT0H", "DataAnalysisStartTime '-PT25H' and DataAnalysisEndTime 'PT0H' are 25 hours apart: at most "
                       "24 hours"),
    ("-PT1H", "-PT2H", "DataAnalysisStartTime '-PT1H' must come before DataAnalysisEndTime '-PT2H'"),
])
def test_analysis_window_rules(start, end, message):
    [problem] = _problems(_schedule("NOW", start, end), parse_monitoring_schedule)
    assert problem.startswith(f"MonitoringScheduleConfig.ScheduleConfig: {message}")


def test_analysis_window_of_24_hours_and_cron_schedules():
    assert parse_monitoring_schedule(_schedule("NOW", "-P1D", "PT0H")).data_analysis_start_time == "-P1D"
    hourly = parse_monitoring_schedule(_schedule("cron(0 * ? * * *)", "-PT3H", "-PT1H"))
    assert (hourly.data_analysis_start_time, hourly.data_analysis_end_time) == ("-PT3H", "-PT1H")
    [problem] = _problems(_schedule("cron(0 * ? * * *)", "-P1M"), parse_monitoring_schedule)
    assert problem.startswith("MonitoringScheduleConfig.ScheduleConfig.DataAnalysisStartTime: '-P1M': years and months")


def test_other_monitoring_types_and_inline_definitions():
    problems = _problems(_schedule("cron(0 * ? * * *)", MonitoringType="DataQuality",
                                   MonitoringJobDefinition={"MonitoringInputs": []}), parse_monitoring_schedule)
    assert [problem.split(":")[0] for problem in problems] == ["MonitoringScheduleConfig.MonitoringType",
                                                               "MonitoringScheduleConfig.MonitoringJobDefinition"]
    assert _problems({"MonitoringScheduleConfig": {}}, parse_monitoring_schedule) == [
        "MonitoringScheduleName: required key missing (the schedule's name, a folder of the outputs)"]
    assert _problems(_schedule(None), parse_monitoring_schedule) == [
        "MonitoringScheduleConfig.ScheduleConfig.ScheduleExpression: required key missing"]


def test_a_schedule_must_name_its_job_definition():
    with pytest.raises(ConfigError) as caught:
        check_schedule_pair(parse_monitoring_schedule(BIAS_SCHEDULE), parse_job_definition(EXPLAIN_DEFINITION))
    assert caught.value.problems == [
        "MonitoringScheduleConfig.MonitoringJobDefinitionName: the schedule runs 'model-bias-job-definition-2026-12-"
        "06-07-36-32-776' but --job-definition is 'model-explainability-job-definition-2026-12-06-07-36-32-791'",
        "MonitoringScheduleConfig.MonitoringType: ModelBias but --job-definition is a ModelExplainability job "
        "definition"]
    late = parse_monitoring_schedule(_schedule("cron(0 * ? * * *)", "-PT0H"))  # with the definition's -PT0H end
    with pytest.raises(ConfigError, match=r"the window \[T-PT0H, T-PT0H\) is empty"):
        check_schedule_pair(late, parse_job_definition(BIAS_DEFINITION))
    ahead = parse_monitoring_schedule(_schedule("cron(0 * ? * * *)", "PT1H"))  # a positive offset gets its sign
    with pytest.raises(ConfigError, match=r"the window \[T\+PT1H, T-PT0H\) is empty"):
        check_schedule_pair(ahead, parse_job_definition(BIAS_DEFINITION))


def test_the_sdk_bodies_as_files_round_trip(tmp_path: Path):
    for index, body in enumerate(SDK_BODIES):
        (tmp_path / f"{index}.json").write_text(json.dumps(body, indent=2), encoding="utf-8")
    assert load_job_definition(tmp_path / "2.json") == parse_job_definition(EXPLAIN_DEFINITION)
    assert load_monitoring_schedule(tmp_path / "5.json") == parse_monitoring_schedule(ONCE_SCHEDULE)


def _paths(tree, prefix=()):
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                           | st.sampled_from(["-PT1H", "PT0H", "-P99999999D", "NOW", "s3://b/k", "s3:/b", "./x"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(SDK_BODIES) - 1), edits=st.lists(st.tuples(st.integers(0, 10_000), JSON_VALUES,
                                                                            st.booleans()), min_size=1, max_size=3))
def test_mutated_sdk_bodies_give_a_result_or_problems(index, edits):
    """Any value anywhere in an SDK body: a parsed result or a ConfigError listing problems, never a traceback."""
    body = copy.deepcopy(SDK_BODIES[index])
    for position, value, delete in edits:
        paths = [path for path in _paths(body) if path]
        parent_path, key = (path := paths[position % len(paths)])[:-1], path[-1]
        parent = body
        for step in parent_path:
            parent = parent[step]
        if delete and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = value
    parse = parse_job_definition if index % 2 == 0 else parse_monitoring_schedule
    try:
        parse(body)
    except ConfigError as error:
        assert error.problems and all(isinstance(problem, str) and ": " in problem for problem in error.problems)
