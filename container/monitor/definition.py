"""The monitoring job definition and schedule files: the JSON bodies the SageMaker SDK sends.

``ModelBiasMonitor`` / ``ModelExplainabilityMonitor.create_monitoring_schedule`` send two requests: a
``CreateModelBiasJobDefinition`` (or ``CreateModelExplainabilityJobDefinition``) body, read by
``load_job_definition`` for ``lucent monitor --job-definition``, and a ``CreateMonitoringSchedule`` body,
read by ``load_monitoring_schedule`` for ``lucent schedule --monitoring-schedule``. A
``Describe...JobDefinition`` / ``DescribeMonitoringSchedule`` response works too (its extra keys are
ignored).

The constraints are the API's (botocore's ``sagemaker`` service model: lengths, patterns, enums), declared
as a table with ``analyzer.config.spec`` and the endpoint config's helpers, so that every problem is
reported at once, each naming its field (``ModelBiasJobInput.EndpointInput.StartTimeOffset: ...``).
Unknown top-level keys are logged once each and ignored, as are the keys Lucent has no use for
(``JobResources``, ``RoleArn``, ``NetworkConfig``, ``StoppingCondition``, ``Tags``, ``ImageUri``, ...);
a misspelt key inside a section is an error with a "did you mean" hint. Lucent extensions: every URI
(``ConfigUri``, ``GroundTruthS3Input``, ``ConstraintsResource``, the output) may also be a local path or
``file://`` URI; a relative path is taken from the working directory of ``lucent monitor``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from analyzer.config.parser import read_json_file
from analyzer.config.spec import INVALID, Checked, Context, Enum, MapOf, Obj, Spec, Typed, closest, shown
from analyzer.errors import ConfigError, UserError
from analyzer.monitor.attributes import BIAS, EXPLAINABILITY, KINDS, EndpointAttributes
from analyzer.monitor.window import DEFAULT_END_OFFSET, DEFAULT_START_OFFSET, parse_duration
from container.api_spec import api_string, bounded_list, has_invalid, jmespath_expression, object_or_empty
from container.endpoint.config import ENDPOINT_NAME_PATTERN
from container.storage import parse_uri

log = logging.getLogger("lucent.monitor")

__all__ = ["BIAS", "EXPLAINABILITY", "JobDefinition", "MonitoringSchedule", "analysis_span_problem",
           "analysis_window_problem", "check_schedule_pair",
           "load_job_definition", "load_monitoring_schedule", "parse_job_definition", "parse_monitoring_schedule"]

OTHER_KINDS = ("DataQuality", "ModelQuality")  # monitoring types of the Model Monitor image, not Clarify's
SECTIONS = ("AppSpecification", "JobInput", "JobOutputConfig", "BaselineConfig")
UNUSED_KEYS = ("JobResources", "NetworkConfig", "RoleArn", "StoppingCondition", "Tags")
NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"  # MonitoringJobDefinitionName, MonitoringScheduleName
CLOUDWATCH_KEY = "publish_cloudwatch_metrics"
MAX_WINDOW = timedelta(hours=24)  # DataAnalysisStartTime / EndTime: "must not precede ... by more than 24 hours"
NOW = "NOW"
DEFAULT_EXPRESSION = "cron(0 0 ? * * *)"  # no ScheduleConfig: SageMaker runs daily at a time it picks
# The expressions SageMaker accepts (API ScheduleExpression; DG model-monitor-schedule-expression):
# hourly, daily at hour H, every N hours from hour H -- what CronExpressionGenerator writes -- and NOW.
_EXPRESSION = re.compile(r"cron\(\s*0\s+(?:\*|(?P<hour>\d{1,2})(?:/(?P<every>\d{1,2}))?)\s+\?\s+\*\s+\*\s+\*\s*\)")


def _uri_problem(value: str) -> str | None:
    try:
        parse_uri(value)
    except UserError as error:
        return str(error)
    return None


def _uri(max_length: int) -> Spec:
    """An s3:// URI (any S3-compatible store), a file:// URI or a local path: what ``container.storage``,
    the one URI parser, accepts (schemes in any case; ``s3:/b/k`` refused rather than taken for a path)."""
    return Checked(api_string(1, max_length), _uri_problem)


def _duration_problem(value: str) -> str | None:
    try:
        parse_duration(value, "@")
    except UserError as error:
        return str(error).removeprefix("@ ").removeprefix("@: ")
    return None


# MonitoringTimeOffsetString: 1-15 characters matching ``.?P.*``, and a duration Lucent can add to a time.
OFFSET = Checked(api_string(1, 15, r".?P.*", "an ISO-8601 duration such as -PT1H"), _duration_problem)
# DataAnalysisStartTime / EndTime are plain strings in the API; the same durations.
ANALYSIS_OFFSET = Checked(Typed(("string",)), _duration_problem)


def _environment_problem(env: dict) -> str | None:
    if len(env) > 50:
        return f"must have at most 50 entries, got {len(env)}"
    bad = [key for key in env if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key) or len(key) > 256]
    if bad:
        return f"{bad[0]!r} is not an environment variable name (letters, digits and '_', not first a digit)"
    return None


ENVIRONMENT = Checked(MapOf(api_string(0, 256)), _environment_problem)
APP_SPECIFICATION = Obj({"ImageUri": api_string(0, 255), "ConfigUri": _uri(1024), "Environment": ENVIRONMENT})
ENDPOINT_INPUT = Obj({
    "EndpointName": api_string(1, 63, ENDPOINT_NAME_PATTERN, "an endpoint name (letters, digits and hyphens)"),
    "LocalPath": api_string(0, 256),
    "S3InputMode": Enum(("Pipe", "File"), case_sensitive=True),
    "S3DataDistributionType": Enum(("FullyReplicated", "ShardedByS3Key"), case_sensitive=True),
    "FeaturesAttribute": jmespath_expression(1024),  # JMESPath to the features of a JSON record
    "InferenceAttribute": api_string(1, 1024),  # JMESPath, or a column index for CSV ("0" is no JMESPath)
    "ProbabilityAttribute": api_string(1, 1024),
    "ProbabilityThresholdAttribute": Typed(("number",), as_float=True),
    "StartTimeOffset": OFFSET,
    "EndTimeOffset": OFFSET,
    "ExcludeFeaturesAttribute": api_string(0, 100),
}, required=("EndpointName",))
BATCH_TRANSFORM = Checked(Typed(("object",)), lambda _: "monitoring a batch transform job is not supported by "
                           "Lucent: give EndpointInput (the endpoint whose capture --capture-uri holds)")
GROUND_TRUTH = Obj({"S3Uri": _uri(512)})
OUTPUT_CONFIG = Obj({
    "MonitoringOutputs": bounded_list(Obj({"S3Output": Obj({
        "S3Uri": _uri(512),
        "LocalPath": api_string(0, 256),
        "S3UploadMode": Enum(("Continuous", "EndOfJob"), case_sensitive=True),
    }, required=("S3Uri",))}, required=("S3Output",)), 1, 1),
    "KmsKeyId": api_string(0, 2048, r"[a-zA-Z0-9:/_-]*"),
}, required=("MonitoringOutputs",))
BASELINE_CONFIG = Obj({"BaseliningJobName": api_string(1, 63, NAME_PATTERN, "a processing job name"),
                       "ConstraintsResource": Obj({"S3Uri": _uri(1024)})})
JOB_DEFINITION_NAME = api_string(1, 63, NAME_PATTERN, "a job definition name (letters, digits and hyphens)")


@dataclass(frozen=True)
class JobDefinition:
    """What one monitoring execution needs from a job definition (field names follow ``lucent monitor``)."""

    kind: str  # BIAS or EXPLAINABILITY
    name: str  # JobDefinitionName
    config_uri: str  # {kind}AppSpecification.ConfigUri: the monitoring analysis config
    endpoint_name: str  # EndpointInput.EndpointName: the capture folder under --capture-uri
    attributes: EndpointAttributes
    start_time_offset: str | None  # EndpointInput.StartTimeOffset as written (None: the window's default)
    end_time_offset: str | None
    ground_truth_uri: str | None  # GroundTruthS3Input.S3Uri; always set for BIAS
    constraints_uri: str | None  # {kind}BaselineConfig.ConstraintsResource.S3Uri: a baseline analysis.json
    output_uri: str  # MonitoringOutputs[0].S3Output.S3Uri (s3:// or a local path)
    environment: dict[str, str] = field(default_factory=dict)  # {kind}AppSpecification.Environment
    # Environment publish_cloudwatch_metrics == "Enabled". Absent: False (the SDK always writes the key,
    # "Enabled" unless create_monitoring_schedule got enable_cloudwatch_metrics=False).
    publish_cloudwatch_metrics: bool = False


def load_job_definition(path: Path) -> JobDefinition:
    """Read and validate ``path``; ``ConfigError`` lists every problem, each naming its field. Messages
    about the ``EndpointInput`` attributes later name ``path`` too (``EndpointAttributes.source``)."""
    definition = parse_job_definition(read_json_file(path, "monitoring job definition (--job-definition)"))
    return replace(definition, attributes=replace(definition.attributes, source=f"job definition {path}"))


def parse_job_definition(document: Any) -> JobDefinition:
    """The ``JobDefinition`` of a ``CreateModelBiasJobDefinition`` / ``CreateModelExplainabilityJobDefinition``
    body, its kind told by its keys; ``ConfigError`` lists every problem at once."""
    if not isinstance(document, dict):
        raise ConfigError("(top level): expected a JSON object (a CreateModelBiasJobDefinition or "
                          f"CreateModelExplainabilityJobDefinition body), got {shown(document)}")
    kind = _kind(document)
    ctx = Context()
    known = {"JobDefinitionName", *(f"{kind}{section}" for section in SECTIONS)}
    for key in document:
        if key in UNUSED_KEYS:
            log.info("Job definition key %s is not used by Lucent; ignored", key)
        elif key not in known:
            log.info("Job definition key %s is not a key Lucent reads; ignored", key)
    unknown = [key for key in document if key not in known]
    checked = {key: spec.check(document[key], key, ctx) for key, spec in (
        ("JobDefinitionName", JOB_DEFINITION_NAME), (f"{kind}AppSpecification", APP_SPECIFICATION),
        (f"{kind}JobInput", _job_input(kind)), (f"{kind}JobOutputConfig", OUTPUT_CONFIG),
        (f"{kind}BaselineConfig", BASELINE_CONFIG)) if document.get(key) is not None}
    for key, why in (("JobDefinitionName", "the job definition's name"),
                     (f"{kind}AppSpecification", "it names the analysis config (ConfigUri)"),
                     (f"{kind}JobInput", "it names the endpoint (EndpointInput)"),
                     (f"{kind}JobOutputConfig", "it names the output (MonitoringOutputs)")):
        if document.get(key) is None:
            _missing(ctx, key, why, unknown)
    app = object_or_empty(checked.get(f"{kind}AppSpecification"))
    job_input = object_or_empty(checked.get(f"{kind}JobInput"))
    endpoint = object_or_empty(job_input.get("EndpointInput"))
    environment = _environment(app, f"{kind}AppSpecification", ctx)
    raw_app, raw_input = document.get(f"{kind}AppSpecification"), document.get(f"{kind}JobInput")
    if isinstance(raw_app, dict) and raw_app.get("ConfigUri") is None:
        ctx.add(f"{kind}AppSpecification.ConfigUri", "required: the monitoring analysis config (analysis_config.json "
                "with headers, label, facet... for bias; methods.shap for explainability), an s3:// URI or a "
                "local path")
    if isinstance(raw_input, dict) and raw_input.get("EndpointInput") is None \
            and raw_input.get("BatchTransformInput") is None:
        ctx.add(f"{kind}JobInput.EndpointInput", "required: the endpoint whose captured traffic is monitored "
                "(EndpointName, and the attributes that read its records)")
    ground_truth = _ground_truth(kind, document, job_input, ctx)
    _check_offsets(endpoint, f"{kind}JobInput.EndpointInput", ctx)
    constraints = _constraints(kind, object_or_empty(checked.get(f"{kind}BaselineConfig")), ctx)
    output_config = object_or_empty(checked.get(f"{kind}JobOutputConfig"))
    if output_config.get("KmsKeyId"):
        log.warning("%sJobOutputConfig.KmsKeyId is ignored: results are written unencrypted by Lucent (use the "
                    "destination's own encryption, e.g. S3 default bucket encryption)", kind)
    if app.get("ImageUri"):
        log.info("%sAppSpecification.ImageUri is not used: Lucent runs the execution itself", kind)
    if ctx.problems or any(has_invalid(value) for value in checked.values()):
        raise ConfigError(ctx.problems or ["(top level): invalid job definition"])
    outputs = output_config["MonitoringOutputs"]
    return JobDefinition(
        kind=kind, name=checked["JobDefinitionName"], config_uri=app["ConfigUri"],
        endpoint_name=endpoint["EndpointName"],
        attributes=EndpointAttributes(
            features_attribute=endpoint.get("FeaturesAttribute"),
            inference_attribute=endpoint.get("InferenceAttribute"),
            probability_attribute=endpoint.get("ProbabilityAttribute"),
            probability_threshold_attribute=endpoint.get("ProbabilityThresholdAttribute"),
            exclude_features_attribute=endpoint.get("ExcludeFeaturesAttribute"),
            path=f"{kind}JobInput.EndpointInput"),
        start_time_offset=endpoint.get("StartTimeOffset"), end_time_offset=endpoint.get("EndTimeOffset"),
        ground_truth_uri=ground_truth, constraints_uri=constraints,
        output_uri=outputs[0]["S3Output"]["S3Uri"], environment=environment,
        publish_cloudwatch_metrics=environment.get(CLOUDWATCH_KEY) == "Enabled")


def _kind(document: dict) -> str:
    """BIAS or EXPLAINABILITY, from the body's section keys (``ModelBiasJobInput``, ...)."""
    def has(prefix: str) -> bool:
        return any(f"{prefix}{section}" in document for section in SECTIONS)

    kinds = [kind for kind in KINDS if has(kind)]
    if len(kinds) == 1:
        return kinds[0]
    if len(kinds) > 1:
        raise ConfigError("(top level): both ModelBias* and ModelExplainability* sections: a job definition is one "
                          "of CreateModelBiasJobDefinition or CreateModelExplainabilityJobDefinition; split it in two")
    if other := next((kind for kind in OTHER_KINDS if has(kind)), None):
        raise ConfigError(f"(top level): a {other} job definition: Lucent runs the ModelBias and "
                          "ModelExplainability monitors (Clarify's), not the Model Monitor image's data and "
                          "model quality checks")
    hints = [f"{key!r} (did you mean {guess!r}?)" for key in document
             if (guess := closest(key, [f"{k}{s}" for k in KINDS for s in SECTIONS])) and guess != key]
    raise ConfigError("(top level): not a CreateModelBiasJobDefinition or CreateModelExplainabilityJobDefinition "
                      "body: expected ModelBiasAppSpecification, ModelBiasJobInput and ModelBiasJobOutputConfig "
                      "(or the ModelExplainability* ones)" + (f"; found {', '.join(hints)}" if hints else ""))


def _job_input(kind: str) -> Obj:
    fields: dict[str, Spec] = {"EndpointInput": ENDPOINT_INPUT, "BatchTransformInput": BATCH_TRANSFORM}
    if kind == BIAS:
        fields["GroundTruthS3Input"] = GROUND_TRUTH
    return Obj(fields)


def _missing(ctx: Context, key: str, why: str, unknown: list[str]) -> None:
    guess = closest(key, unknown)
    hint = f"; the body has {guess!r}: did you mean {key!r}?" if guess else ""
    ctx.add(key, f"required key missing ({why}){hint}")


def _environment(app: dict, path: str, ctx: Context) -> dict[str, str]:
    environment = app.get("Environment")
    if not isinstance(environment, dict) or has_invalid(environment):
        return {}
    environment = dict(environment)
    if CLOUDWATCH_KEY in environment:
        value = Enum(("Enabled", "Disabled")).check(environment[CLOUDWATCH_KEY],
                                                    f"{path}.Environment.{CLOUDWATCH_KEY}", ctx)
        if value is not INVALID:
            environment[CLOUDWATCH_KEY] = value
    return environment


def _ground_truth(kind: str, document: dict, job_input: dict, ctx: Context) -> str | None:
    if kind != BIAS:
        return None
    truth = job_input.get("GroundTruthS3Input")
    if isinstance(truth, dict) and isinstance(truth.get("S3Uri"), str):
        return truth["S3Uri"]
    raw = document.get(f"{kind}JobInput")
    raw_truth = raw.get("GroundTruthS3Input") if isinstance(raw, dict) else None
    raw_uri = raw_truth.get("S3Uri") if isinstance(raw_truth, dict) else None
    if isinstance(raw, dict) and raw_uri is None and (raw_truth is None or isinstance(raw_truth, dict)):
        ctx.add(f"{kind}JobInput.GroundTruthS3Input.S3Uri", "can not be None (the SDK's \"ground_truth_input can "
                "not be None.\"): a bias execution joins the captured predictions with their labels; give the "
                "s3:// URI or folder of the ground truth records (yyyy/mm/dd/hh/*.jsonl)")
    return None


def _check_offsets(endpoint: dict, path: str, ctx: Context) -> None:
    start_text = endpoint.get("StartTimeOffset", DEFAULT_START_OFFSET)
    end_text = endpoint.get("EndTimeOffset", DEFAULT_END_OFFSET)
    if start_text is INVALID or end_text is INVALID:
        return
    if parse_duration(start_text, "StartTimeOffset") >= parse_duration(end_text, "EndTimeOffset"):
        ctx.add(path, f"StartTimeOffset {start_text!r} must come before EndTimeOffset {end_text!r} (defaults "
                f"{DEFAULT_START_OFFSET} and {DEFAULT_END_OFFSET}): the window [T{start_text}, T{end_text}) is empty")


def _constraints(kind: str, baseline: dict, ctx: Context) -> str | None:
    path = f"{kind}BaselineConfig"
    resource = baseline.get("ConstraintsResource")
    job = baseline.get("BaseliningJobName")
    if isinstance(resource, dict):
        uri = resource.get("S3Uri")
        if uri is None:
            ctx.add(f"{path}.ConstraintsResource.S3Uri", "required: the baseline's analysis.json (what `lucent "
                    "run` wrote for the baseline, the SDK's suggested constraints)")
        if isinstance(job, str):
            log.info("%s.BaseliningJobName %s is not used: the constraints are ConstraintsResource.S3Uri", path, job)
        return uri if isinstance(uri, str) else None
    if isinstance(job, str):
        ctx.add(f"{path}.BaseliningJobName", f"Lucent has no registry of processing jobs to look {job!r} up in: "
                "give the baseline's analysis.json as ConstraintsResource.S3Uri instead (create_monitoring_schedule"
                "(constraints=<its URI>) writes that)")
    return None


@dataclass(frozen=True)
class MonitoringSchedule:
    """A ``CreateMonitoringSchedule`` body: when to run a job definition, and on which window."""

    name: str  # MonitoringScheduleName: the schedule folder of the outputs, the crontab entry's mark
    expression: str  # cron(0 * ? * * *), cron(0 H ? * * *), cron(0 H/N ? * * *) or NOW
    job_definition_name: str | None  # MonitoringJobDefinitionName: must be the job definition's name
    monitoring_type: str | None  # BIAS or EXPLAINABILITY when given
    data_analysis_start_time: str | None  # ISO-8601 offsets from the scheduled time, as written
    data_analysis_end_time: str | None

    @property
    def one_time(self) -> bool:
        """``NOW``: one execution, immediately, instead of a recurring schedule."""
        return self.expression == NOW


SCHEDULE_CONFIG = Obj({
    "ScheduleExpression": Checked(api_string(1, 256), lambda v: None if v.strip() == NOW or _EXPRESSION.fullmatch(
        v.strip()) and _hours_fit(v.strip()) else f"{v!r} is not one SageMaker accepts: cron(0 * ? * * *) (hourly), "
        "cron(0 H ? * * *) (daily at hour H, 0-23), cron(0 H/N ? * * *) (every N hours, 1-24, from hour H) or NOW"),
    "DataAnalysisStartTime": ANALYSIS_OFFSET,
    "DataAnalysisEndTime": ANALYSIS_OFFSET,
}, required=("ScheduleExpression",))
MONITORING_SCHEDULE_CONFIG = Obj({
    "ScheduleConfig": SCHEDULE_CONFIG,
    "MonitoringJobDefinitionName": JOB_DEFINITION_NAME,
    "MonitoringType": Checked(Enum((*KINDS, *OTHER_KINDS), case_sensitive=True), lambda v: None if v in KINDS else
                               f"{v} schedules run the Model Monitor image, not Clarify: Lucent runs ModelBias and "
                               "ModelExplainability"),
    "MonitoringJobDefinition": Checked(Typed(("object",)), lambda _: "an inline MonitoringJobDefinition is a data "
                                        "or model quality schedule, which Lucent does not run: give "
                                        "MonitoringJobDefinitionName and the job definition file (--job-definition)"),
})


def _hours_fit(expression: str) -> bool:
    match = _EXPRESSION.fullmatch(expression)
    hour, every = match.group("hour"), match.group("every")
    return (hour is None or int(hour) <= 23) and (every is None or 1 <= int(every) <= 24)


def load_monitoring_schedule(path: Path) -> MonitoringSchedule:
    """Read and validate ``path``; ``ConfigError`` lists every problem, each naming its field."""
    return parse_monitoring_schedule(read_json_file(path, "monitoring schedule (--monitoring-schedule)"))


def parse_monitoring_schedule(document: Any) -> MonitoringSchedule:
    """The ``MonitoringSchedule`` of a ``CreateMonitoringSchedule`` body; ``ConfigError`` lists every problem."""
    if not isinstance(document, dict):
        raise ConfigError(f"(top level): expected a JSON object (a CreateMonitoringSchedule body), got {shown(document)}")
    ctx = Context()
    known = ("MonitoringScheduleName", "MonitoringScheduleConfig")
    for key in document:
        if key not in known:
            log.info("Monitoring schedule key %s is not used by Lucent; ignored", key)
    unknown = [key for key in document if key not in known]
    name = config = None
    if document.get("MonitoringScheduleName") is None:
        _missing(ctx, "MonitoringScheduleName", "the schedule's name, a folder of the outputs", unknown)
    else:
        name = api_string(1, 63, NAME_PATTERN, "a schedule name (letters, digits and hyphens)").check(
            document["MonitoringScheduleName"], "MonitoringScheduleName", ctx)
    if document.get("MonitoringScheduleConfig") is None:
        _missing(ctx, "MonitoringScheduleConfig", "ScheduleConfig and MonitoringJobDefinitionName", unknown)
    else:
        config = MONITORING_SCHEDULE_CONFIG.check(document["MonitoringScheduleConfig"], "MonitoringScheduleConfig", ctx)
    config = object_or_empty(config)
    schedule = object_or_empty(config.get("ScheduleConfig"))
    expression = schedule.get("ScheduleExpression")
    raw_config = document.get("MonitoringScheduleConfig")
    if isinstance(raw_config, dict) and raw_config.get("ScheduleConfig") is None:
        log.info("MonitoringScheduleConfig has no ScheduleConfig: daily at 00:00 UTC, %s (SageMaker runs such a "
                 "schedule daily at a time it picks)", DEFAULT_EXPRESSION)
        expression = DEFAULT_EXPRESSION
    start, end = schedule.get("DataAnalysisStartTime"), schedule.get("DataAnalysisEndTime")
    path = "MonitoringScheduleConfig.ScheduleConfig"
    if isinstance(expression, str) and expression.strip() == NOW and (start is None or end is None):
        ctx.add(path, "NOW (one execution, immediately) needs both DataAnalysisStartTime and DataAnalysisEndTime "
                "(e.g. -PT1H and -PT0H)")
    if isinstance(start, str) and isinstance(end, str) and (problem := analysis_span_problem(start, end)):
        ctx.add(path, problem)
    if ctx.problems or has_invalid(config) or name is INVALID or not isinstance(expression, str):
        raise ConfigError(ctx.problems or ["(top level): invalid monitoring schedule"])
    return MonitoringSchedule(
        name=name, expression=expression.strip(), job_definition_name=config.get("MonitoringJobDefinitionName"),
        monitoring_type=config.get("MonitoringType"), data_analysis_start_time=start, data_analysis_end_time=end)


def analysis_span_problem(start: str, end: str, start_name: str = "DataAnalysisStartTime",
                          end_name: str = "DataAnalysisEndTime", notes: tuple[str, str] = ("", "")) -> str | None:
    """What is wrong with the window ``[T + start, T + end)`` of a schedule's ``DataAnalysisStartTime`` /
    ``DataAnalysisEndTime`` (start before end, at most 24 hours apart: SageMaker's limit), or None. The
    one check of ``lucent schedule`` (the schedule file) and ``lucent monitor`` (its options); the names
    are how the message calls the two offsets, ``notes`` what it adds after each value. Offsets that are
    not durations are left to their parser."""
    try:
        span = parse_duration(end, end_name) - parse_duration(start, start_name)
    except UserError:
        return None
    first, second = f"{start_name} {start!r}{notes[0]}", f"{end_name} {end!r}{notes[1]}"
    if span <= timedelta(0):
        return f"{first} must come before {second}"
    if span > MAX_WINDOW:
        return f"{first} and {second} are {_hours(span)} apart: at most 24 hours (SageMaker's limit)"
    return None


def analysis_window_problem(definition: JobDefinition, start: str | None, end: str | None,
                            names: tuple[str, str] = ("DataAnalysisStartTime", "DataAnalysisEndTime")) -> str | None:
    """``analysis_span_problem`` of the window a schedule's ``DataAnalysisStartTime`` / ``DataAnalysisEndTime``
    (``start`` / ``end``, either may be None) make with the job definition's offsets, or None when neither
    is given (the job definition's own offsets have no 24-hour limit: ``-P8D`` / ``-P1D`` is the DG's
    example). ``names`` are how the message calls the two (``--data-analysis-start-time`` for the command)."""
    if start is None and end is None:
        return None
    notes = ["", ""]
    if start is None:
        notes[0] = " (not given: the {} StartTimeOffset)".format(
            "job definition's" if definition.start_time_offset is not None else "default")
        start = definition.start_time_offset or DEFAULT_START_OFFSET
    if end is None:
        notes[1] = " (not given: the {} EndTimeOffset)".format(
            "job definition's" if definition.end_time_offset is not None else "default")
        end = definition.end_time_offset or DEFAULT_END_OFFSET
    return analysis_span_problem(start, end, *names, notes=(notes[0], notes[1]))


def _hours(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} hours"


def check_schedule_pair(schedule: MonitoringSchedule, definition: JobDefinition) -> None:
    """``ConfigError`` unless the schedule names this job definition (name and type, when it gives them) and
    its DataAnalysis offsets give a non-empty window with the definition's offsets."""
    problems = []
    if schedule.job_definition_name is not None and schedule.job_definition_name != definition.name:
        problems.append(f"MonitoringScheduleConfig.MonitoringJobDefinitionName: the schedule runs "
                        f"{schedule.job_definition_name!r} but --job-definition is {definition.name!r}")
    if schedule.monitoring_type is not None and schedule.monitoring_type != definition.kind:
        problems.append(f"MonitoringScheduleConfig.MonitoringType: {schedule.monitoring_type} but --job-definition "
                        f"is a {definition.kind} job definition")
    start = schedule.data_analysis_start_time or definition.start_time_offset or DEFAULT_START_OFFSET
    end = schedule.data_analysis_end_time or definition.end_time_offset or DEFAULT_END_OFFSET
    if parse_duration(start, "start") >= parse_duration(end, "end"):
        problems.append(f"MonitoringScheduleConfig.ScheduleConfig: the window [T{_signed(start)}, T{_signed(end)}) "
                        "is empty (start from "
                        "DataAnalysisStartTime or the job definition's StartTimeOffset, end likewise)")
    elif problem := analysis_window_problem(definition, schedule.data_analysis_start_time,
                                            schedule.data_analysis_end_time):
        problems.append(f"MonitoringScheduleConfig.ScheduleConfig: {problem}")
    if problems:
        raise ConfigError(problems)


def _signed(offset: str) -> str:
    """``PT1H`` -> ``+PT1H``, so that ``T+PT1H`` reads as a time (a ``-`` or ``+`` offset is kept)."""
    return offset if offset[:1] in "+-" else f"+{offset}"
