"""One monitoring execution: a job definition, the window's captured traffic -> results for that window.

What SageMaker Model Monitor does every hour for a ``ModelBiasMonitor`` / ``ModelExplainabilityMonitor``
schedule (spec model-monitor.md), on this machine:

1. the execution time T (``--now``, rounded down to the hour) and the offsets give the window
   ``[start, end)``; the outputs go to ``{output}/{endpoint}/{schedule}/yyyy/mm/dd/hh/`` (T's hour),
   checked writable before anything is read;
2. the analysis config (``ConfigUri``) is staged as ``lucent launch`` stages a config (S3 baselines
   downloaded, no local file outside it) and completed for the monitoring type
   (``analyzer.monitor.config``);
3. the capture files of the hour folders overlapping the window are read (and, for bias, the ground
   truth of every hour folder from the window's start to T) and merged into a ``Dataset``
   (``analyzer.monitor.merge``), in memory;
4. the existing pipeline computes the metrics (bias: from the captured predictions; explainability:
   Kernel SHAP through the model), the bias metrics get bootstrap intervals, and the window's
   ``analysis.json`` is compared with the constraints (the baseline ``analysis.json``,
   ``analyzer.monitor.drift``);
5. the window folder is replaced as a whole: ``analysis.json``, ``constraint_violations.json`` (only
   with violations), the reports, ``metrics.prom``, and ``monitoring_execution.json`` last. A failed
   execution leaves only ``monitoring_execution.json`` (status ``Failed`` and the reason): nothing partial;
   SIGTERM or Ctrl-C ends it the same way with status ``Stopped`` (``Stopped: ...``, exit 2).
   Rerunning a window replaces its outputs, which makes executions idempotent per window.

Exit codes as ``lucent run``: 0 the execution ran (with or without violations), 1 bad input, 2 internal
or stopped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from analyzer import __version__
from analyzer.config import find_config_file
from analyzer.config.parser import read_json_file
from analyzer.environment import environment_set
from analyzer.errors import ConfigError, DependencyError, UserError
from analyzer.monitor.attributes import BIAS
from analyzer.monitor.capture import check_name, payload_bytes
from analyzer.monitor.config import monitoring_config
from analyzer.monitor.metrics import CLOUDWATCH_FILE, PROMETHEUS_FILE
from analyzer.monitor.window import Window, check_window_over, execution_time, monitoring_window
from analyzer.output import OutputStaging, dumps, write_text_atomic
from analyzer.pipeline import needs_model, run_analysis, write_outputs
from analyzer.redact import redact, redact_url
from container.job import STOP_SIGNALS, clear_message, finish, open_model, raise_job_stopped
from container.launcher import Launch, locate, printable, result_files
from container.monitor.definition import JobDefinition
from container.outcome import EXIT_OK, STOPPED, JobStopped, Outcome, outcome_of
from container.storage import Location, StorageError

log = logging.getLogger("lucent.monitor")

EXECUTION_FILE = "monitoring_execution.json"
PUSHGATEWAY_VARIABLE = "LUCENT_PUSHGATEWAY_URL"
VIOLATIONS_FILE = "constraint_violations.json"
# ExecutionStatus values (spec model-monitor.md 5: the API's ExecutionStatus); Stopped: SIGTERM or Ctrl-C
# (Stopped, container.outcome.STOPPED, is also the prefix of a stopped execution's exit message)
COMPLETED, WITH_VIOLATIONS, FAILED = "Completed", "CompletedWithViolations", "Failed"
DEFAULT_CLOUDWATCH_DIR = Path(CLOUDWATCH_FILE)  # a folder: SageMaker's BYOC contract reads every file in it
CLOUDWATCH_DIR_VARIABLE = "LUCENT_CLOUDWATCH_DIR"  # the folder when --cloudwatch-dir is not given (schedules)
PUBLISH_MARGIN = timedelta(seconds=60)  # on top of the capture writer's roll interval: clocks, slow uploads
READ_AHEAD = 32  # capture objects fetched concurrently from S3 (each is small; latency dominates)


@dataclass(frozen=True)
class Execution:
    """One monitoring execution: the job definition and what the command line (or schedule) adds."""

    definition: JobDefinition
    capture_uri: str  # the endpoint's DataCaptureConfig.DestinationS3Uri
    now: datetime  # the execution time T, UTC, on the hour
    schedule_name: str
    start_offset: str | None = None  # DataAnalysisStartTime / EndTime of the schedule: override the definition's
    end_offset: str | None = None
    model_dir: Path | None = None
    model_url: str | None = None
    work_dir: Path | None = None  # the processing root (default: a temporary folder, removed when published)
    message_file: Path | None = None
    cloudwatch_dir: Path = DEFAULT_CLOUDWATCH_DIR

    @property
    def exit_message_file(self) -> Path | None:
        """Where the exit message goes: ``--message-file``, else ``DIR/message`` of ``--processing-root``;
        None without either (the execution's temporary folder would not outlive it: the log has it)."""
        if self.message_file is not None:
            return self.message_file
        return self.work_dir / "message" if self.work_dir is not None else None

    @property
    def cloudwatch_file(self) -> Path:
        """This window's CloudWatch metrics file (one per endpoint, schedule and hour: a rerun replaces it)."""
        return self.cloudwatch_dir / (f"{self.definition.endpoint_name}-{self.schedule_name}-"
                                      f"{execution_time(self.now):%Y%m%d%H}.json")

    @property
    def window(self) -> Window:
        """``[start, end)`` from T and the offsets (the schedule's DataAnalysis* first); ``UserError`` if bad."""
        return monitoring_window(self.now, self.start_offset or self.definition.start_time_offset,
                                 self.end_offset or self.definition.end_time_offset)

    @property
    def output(self) -> Location:
        """The window's output folder: ``{output}/{endpoint}/{schedule}/yyyy/mm/dd/hh``. The schedule name
        becomes a folder: it must match SageMaker's name pattern (no ``/``, no ``..``)."""
        check_name(self.schedule_name, "--schedule-name")
        folder = f"{self.definition.endpoint_name}/{self.schedule_name}/{self.now:%Y/%m/%d/%H}"
        return locate("MonitoringOutputs.S3Output.S3Uri", self.definition.output_uri).child(folder)


def capture_publish_delay() -> timedelta:
    """How long after a record's inference time its capture file may still be unpublished: the capture
    writer's roll interval (``container.capture``: a file is published once that old) plus a margin."""
    from container.capture import ROLL_SECONDS

    return timedelta(seconds=ROLL_SECONDS) + PUBLISH_MARGIN


def refuse_unfinished_window(execution: Execution) -> str | None:
    """Why the execution's window cannot be analysed yet (its end is later than the clock minus the capture
    publish delay: records of its last minute may still be unpublished), or None. A window whose offsets
    are bad is left to the execution, which reports it in the window's status."""
    try:
        window = execution.window
    except UserError:
        return None
    try:
        check_window_over(window, capture_publish_delay())
    except UserError as error:
        return str(error)
    return None


def exit_with(message_file: Path | None, code: int, message: str) -> int:
    """Write the exit message (redacted, atomically) to ``message_file`` and log it, as ``lucent run``
    does (``container.job.finish``); without a file, only log it. Returns ``code``."""
    if message_file is not None:
        return finish(message_file, code, message)
    (log.info if code == EXIT_OK else log.error)("exit_message: %s", redact(message))
    return code


def refuse(message_file: Path | None, reason: str) -> int:
    """An execution refused before it started (bad input, exit 1): ``Failed: ClientError: <reason>``."""
    refused = outcome_of(UserError(reason))
    return exit_with(message_file, refused.code, f"{FAILED}: {refused.message}")


def run_monitor(execution: Execution) -> int:
    """Run one execution and publish its window folder; never raises. Returns the exit code and writes
    the exit message (``ClientError: ...`` / ``AlgorithmError: ...`` as ``lucent run``) to
    ``execution.exit_message_file``, after removing the previous run's message first.

    A window that is not over yet is refused before anything (no temporary folder, no status published):
    its results would be partial, and a Failed status would mark the window as attempted."""
    if (message_file := execution.exit_message_file) is not None:
        clear_message(message_file)
    if (problem := refuse_unfinished_window(execution)) is not None:
        return refuse(message_file, problem)
    started = time.perf_counter()
    definition = execution.definition
    root = execution.work_dir or Path(tempfile.mkdtemp(prefix="lucent-monitor-"))
    runner = Launch()
    status: dict[str, Any] = {"MonitoringType": definition.kind, "JobDefinitionName": definition.name,
                              "MonitoringScheduleName": execution.schedule_name,
                              "EndpointName": definition.endpoint_name,
                              "ScheduledTime": execution.now.isoformat().replace("+00:00", "Z"),
                              "LucentVersion": __version__}
    # SIGTERM (a schedule or `docker stop` stopping the execution) and Ctrl-C: status Stopped, not Failed.
    previous_handlers = {signum: signal.signal(signum, raise_job_stopped) for signum in STOP_SIGNALS}
    published = False
    try:
        log.info("Starting Lucent %s %s monitoring execution for endpoint %s, schedule %s, time %s",
                 __version__, definition.kind, definition.endpoint_name, execution.schedule_name,
                 status["ScheduledTime"])
        with job_environment(definition.environment):
            failed, summary = _execute(execution, root, runner, status)  # failed: None when it ran
        stopped = failed is not None and failed.prefix == STOPPED
        status.update(summary)
        status["ExecutionStatus"] = (STOPPED if stopped else FAILED if failed is not None
                                     else WITH_VIOLATIONS if summary.get("Violations") else COMPLETED)
        if failed is not None:
            status["FailureReason"] = failed.reason
        output = _output_or_none(execution)
        if output is not None:
            published = _publish(runner, root, status, output)
        if not published and not stopped:  # the output's fault: the user's to fix, whatever the execution did
            failed = outcome_of(UserError(failed.reason if failed is not None else f"cannot publish to {output}"))
        if failed is not None and definition.publish_cloudwatch_metrics:
            _remove_stale_cloudwatch_file(execution)
        log.info("Execution %s in %.2f s", status["ExecutionStatus"], time.perf_counter() - started)
        if failed is None:
            found = status.get("Violations", 0)
            message = (f"{status['ExecutionStatus']}: window {status.get('Window', '?')}"
                       + (f", {found} violation(s) in {VIOLATIONS_FILE}" if found else ""))
        elif stopped:
            message = failed.message + ("" if published else f" (its status could not be published to {output})")
        else:
            message = f"{FAILED}: {failed.message}"
        return finish(execution.exit_message_file or root / "message", EXIT_OK if failed is None else failed.code,
                      message)
    except JobStopped as stop:  # a second signal, or one while publishing: the status may not be published
        log.error("Stopped (%s) while publishing the window's status", stop.signal_name)
        stopped_late = outcome_of(stop)
        return finish(execution.exit_message_file or root / "message", stopped_late.code,
                      f"{stopped_late.prefix}: the execution was stopped ({stop.signal_name}) while publishing its "
                      "results; the window folder may not show this run: rerun the window")
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if execution.work_dir is None:  # a temporary folder is never kept: the log says what went wrong
            shutil.rmtree(root, ignore_errors=True)
        elif not published:
            log.error("Nothing was published; the execution's folder is kept: %s", root)


def _remove_stale_cloudwatch_file(execution: Execution) -> None:
    """A failed (re)run of a window leaves no CloudWatch metrics: an earlier run's file would be read as
    this window's result."""
    path = execution.cloudwatch_file
    try:
        path.unlink()
        log.warning("Removed the CloudWatch metrics of an earlier run of this window: %s", path)
    except (FileNotFoundError, NotADirectoryError):  # none (or no such folder: the failure may be that)
        pass
    except OSError as error:
        log.error("Could not remove the earlier run's CloudWatch metrics %s: %s", path, error.strerror or error)


def _execute(execution: Execution, root: Path, runner: Launch, status: dict) -> tuple[Outcome | None, dict]:
    """Compute the window's results into ``root/output``; returns (how it failed, or None when it ran;
    the summary)."""
    output_dir = root / "output"
    try:
        output = execution.output
        runner.check_output(output)  # an output that cannot be written fails before any work
        if execution.definition.publish_cloudwatch_metrics:
            _check_cloudwatch_dir(execution.cloudwatch_dir)
        return None, _compute(execution, root, runner, status)
    except (Exception, JobStopped) as error:  # noqa: BLE001 - an execution always ends with a status
        failed = outcome_of(error, subject="execution", output_dir=output_dir)
        if isinstance(error, JobStopped):
            log.error("Execution stopped (%s)", error.signal_name)
        else:
            if failed.internal:
                log.error("Internal error:\n%s", traceback.format_exc())
            log.error("Execution failed: %s", redact(failed.reason))
        shutil.rmtree(output_dir, ignore_errors=True)  # nothing half-made is published
        return replace(failed, reason=redact(failed.reason)), {}


def _check_cloudwatch_dir(folder: Path) -> None:
    """The CloudWatch metrics folder must be writable before the analysis starts (as the output folder)."""
    from analyzer.output import check_output_folder

    try:
        check_output_folder(folder)
    except UserError as error:
        raise UserError(f"--cloudwatch-dir (or ${CLOUDWATCH_DIR_VARIABLE}; publish_cloudwatch_metrics is Enabled): "
                        f"{error}") from None


def _compute(execution: Execution, root: Path, runner: Launch, status: dict) -> dict[str, Any]:
    from analyzer.monitor.config import attribute_keys
    from analyzer.monitor.window import ground_truth_prefixes, hour_prefixes

    definition = execution.definition
    now = execution_time(execution.now)
    window = execution.window
    window_text = str(window)
    status["Window"] = window_text
    log.info("Window %s; results to %s", window_text, execution.output)

    config_file, doc = _stage_config(execution, root, runner)
    capture = Location(execution.capture_uri).child(definition.endpoint_name)
    capture_names = _list_hour_files(runner, capture, hour_prefixes(window), variants=True)
    log.info("Captured data: %d file(s) in the window's hour folders under %s", len(capture_names), capture)
    if unpublished := _unpublished_capture_files(capture, hour_prefixes(window)):
        log.warning("%d capture file(s) in the window's hour folders are not published yet (still being written; "
                    "their records are not analysed): %s", len(unpublished), ", ".join(unpublished[:10]))
    if not capture_names:  # a wrong --capture-uri or EndpointName reads as an hour without traffic: say which
        raise UserError(_no_capture_message(runner, execution, window_text, hour_prefixes(window), len(unpublished)))
    input_content_type = _input_content_type(runner, capture_names)
    config = monitoring_config(doc, definition.kind, definition.attributes, source=config_source(definition),
                               input_content_type=input_content_type)
    ground_truth, truth_where = None, None
    if definition.kind == BIAS:
        truth = Location(definition.ground_truth_uri)
        truth_hours = ground_truth_prefixes(window, now)
        truth_names = _list_hour_files(runner, truth, truth_hours, variants=False)
        log.info("Ground truth: %d file(s) under %s", len(truth_names), truth)
        ground_truth = _read_files(runner, truth_names)
        if not truth_names:
            truth_where = _ground_truth_where(runner, truth, truth_hours)
            log.warning("No ground truth file in %s", truth_where)
    constraints = _read_constraints(runner, definition.constraints_uri)
    # Keys the monitor filled in from EndpointInput (the explainer's predictor.probability): a message
    # about them names the job definition's attribute, which the user wrote.
    with _attribute_names(definition, attribute_keys(doc, definition.kind, definition.attributes,
                                                     input_content_type=input_content_type)):
        return _analyse(execution, root, config, config_file, capture_names, ground_truth, truth_where, constraints,
                        runner, now)


def _analyse(execution: Execution, root: Path, config, config_file: Path, capture_names: list[str], ground_truth,
             truth_where: str | None, constraints: dict | None, runner: Launch, now: datetime) -> dict[str, Any]:
    """The merge, the analysis and the window's files in ``root/output``; returns the status summary."""
    from analyzer.monitor.drift import (
        add_bootstrap_intervals,
        attribution_scores,
        attribution_violations,
        bias_violations,
        bootstrap_violations_enabled,
        check_constraints_match,
        violations_document,
    )
    from analyzer.monitor.merge import merge_window
    from analyzer.monitor.metrics import (
        cloudwatch_file_text,
        cloudwatch_records,
        prometheus_text,
        push_metrics,
    )

    definition = execution.definition
    window = execution.window
    merged = merge_window(config, _read_files(runner, capture_names), window, definition.attributes, ground_truth,
                          ground_truth_where=truth_where)
    dataset = merged.dataset
    log.info("Merged window: %s", ", ".join(f"{k} {v}" for k, v in merged.counts.items() if not isinstance(v, list)))
    if missing := merged.counts.get("records_without_ground_truth"):
        log.warning("%d captured record(s) of the window have no ground truth (no label with their inference id "
                    "under GroundTruthS3Input.S3Uri yet): they are left out of the metrics", missing)
    output_dir = root / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with OutputStaging(output_dir) as staging, contextlib.ExitStack() as model_scope:
        endpoint, identity = None, ""
        if needs_model(config):
            _check_model_given(execution, config)
            model_dir = execution.model_dir or root / "input" / "model"
            endpoint, identity = open_model(_with_model_url(config, execution.model_url), dataset, model_dir,
                                            model_scope)
        try:
            results = run_analysis(config, dataset, staging, endpoint, base_dir=config_file.parent,
                                   model_identity=identity)
        except UserError as error:  # Clarify's label-typing errors, told in the window's terms
            from analyzer.monitor.diagnose import label_failure_message

            clarify = getattr(error, "clarify", str(error))  # Clarify's own words, without the batch job's why
            told = label_failure_message(clarify, dataset, config.label_values_or_threshold)
            if told is None:
                raise
            raise UserError(told) from error
        model_scope.close()
        if definition.kind == BIAS:
            add_bootstrap_intervals(results, dataset, config)
        violations: list[dict] = []
        scores = None  # explainability: NDCG per label against the baseline
        if constraints is not None:
            check_constraints_match(results, constraints, definition.kind, dataset=dataset)
            source = f"constraints file {redact_url(definition.constraints_uri or '')}"
            if definition.kind == BIAS:
                violations = bias_violations(results, constraints, use_intervals=bootstrap_violations_enabled(),
                                             source=source)
            else:
                scores = attribution_scores(results, constraints, source=source)
                violations = attribution_violations(results, constraints, source=source)
        else:
            log.warning("No constraints (ConstraintsResource.S3Uri) in the job definition: metrics are computed "
                        "but not checked")
        monitor = dict(merged.counts)  # the window's bounds and the merge's counts
        if scores is not None:
            monitor["ndcg"] = scores
        results["lucent"] = {"monitor": monitor}
        write_outputs(config, dataset, results, staging, started_at)
        if violations:
            staging.write_json(VIOLATIONS_FILE, violations_document(violations))
        names = {"kind": definition.kind, "endpoint": definition.endpoint_name, "schedule": execution.schedule_name}
        staging.write_text(PROMETHEUS_FILE, prometheus_text(results, **names, violations=violations))
        staging.commit()
    for violation in violations:
        log.warning("Violation: %s", _violation_text(violation))
    if definition.publish_cloudwatch_metrics:
        records = cloudwatch_records(results, **names, timestamp=now)
        path = execution.cloudwatch_file
        write_text_atomic(path, cloudwatch_file_text(records))
        log.info("Wrote %d CloudWatch metric record(s) to %s", len(records), path)
    summary: dict[str, Any] = {"Violations": len(violations), "Records": merged.counts}
    if pushgateway := os.environ.get(PUSHGATEWAY_VARIABLE):
        # The results are complete and about to be published: a gateway that is down is reported (log,
        # status file) rather than failing the execution.
        try:
            push_metrics(pushgateway, results, **names, violations=violations)
            log.info("Pushed the metrics to %s", redact_url(pushgateway))
        except (UserError, DependencyError) as error:
            log.error("Could not push the metrics to %s: %s", redact_url(pushgateway), error)
            summary["MetricsPushError"] = redact(str(error))
    return summary


@contextlib.contextmanager
def _attribute_names(definition: JobDefinition, keys: dict[str, str]) -> Iterator[None]:
    """Re-raise a ``UserError`` / ``DependencyError`` that names a config key the monitor filled in from
    the job definition (``keys``: ``predictor.probability`` -> ``ProbabilityAttribute``) with the attribute's
    name and file instead. ``features`` is a common word: only config problems rename it."""
    keys = {key: name for key, name in keys.items() if key != "features"}
    try:
        yield
    except (UserError, DependencyError) as error:
        text = definition.attributes.named(str(error), keys)
        if text == str(error):
            raise
        raise (DependencyError if isinstance(error, DependencyError) else UserError)(text) from error


MAX_NAMED = 4  # prefixes or folders a message lists before "..."


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMED else "")


def _hours_text(hours: list[str]) -> str:
    return hours[0] if len(hours) == 1 else f"{hours[0]} to {hours[-1]} ({len(hours)} hours)"


def _subfolders(runner: Launch, location: Location) -> tuple[list[str], bool] | None:
    """The names of the folders directly under ``location`` (sorted; dot folders left out) and whether it
    holds anything at all; None when it does not exist (a local path that is not a folder; an S3 prefix
    with no object under it)."""
    if location.is_s3:
        folders, anything = [], False
        with runner.store.errors("listing", str(location)):
            pages = runner.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.prefix, Delimiter="/")
            for page in pages:
                anything = anything or bool(page.get("Contents")) or bool(page.get("CommonPrefixes"))
                folders.extend(p["Prefix"][len(location.prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
        if not anything:
            return None
        return sorted(name for name in folders if name and not name.startswith(".")), True
    folder = location.path
    if not folder.is_dir():
        return None
    entries = list(folder.iterdir())
    return sorted(p.name for p in entries if p.is_dir() and not p.name.startswith(".")), bool(entries)


def _hour_range(runner: Launch, location: Location) -> tuple[str, str] | None:
    """The first and the last ``yyyy/mm/dd/hh`` folder under ``location``, or None when it has none."""
    ends = []
    for pick in (min, max):
        parts, where = [], location
        for _ in range(4):
            listed = _subfolders(runner, where)
            names = [name for name in (listed[0] if listed else []) if name.isdigit()]
            if not names:
                return None
            parts.append(pick(names))
            where = where.child(parts[-1])
        ends.append("/".join(parts))
    return ends[0], ends[1]


def _span_text(span: tuple[str, str]) -> str:
    return f"the hour folder {span[0]} only" if span[0] == span[1] else f"hour folders {span[0]} to {span[1]}"


def _no_capture_message(runner: Launch, execution: Execution, window_text: str, hours: list[str],
                        unpublished: int) -> str:
    """Why no capture file was found for the window: the prefixes listed, and what the capture URI does
    hold (nothing, other endpoints, a variant's folders: a URI one level too deep or too high), so that
    a wrong --capture-uri or EndpointName does not read as an hour without traffic."""
    endpoint = execution.definition.endpoint_name
    base = Location(execution.capture_uri)
    capture = base.child(endpoint)
    head = f"No capture files for the window {window_text}"
    where = f"{capture}/<variant>/yyyy/mm/dd/hh/ for the window's hour(s) {_hours_text(hours)}"
    top = _subfolders(runner, base)
    if top is None:
        return (f"{head}: --capture-uri {base} does not exist (looked for {where}). --capture-uri is the "
                "endpoint's DataCaptureConfig.DestinationS3Uri")
    folders, anything = top
    if not anything:
        return f"{head}: --capture-uri {base} is empty (looked for {where})"
    variants_listed = _subfolders(runner, capture) if endpoint in folders else None
    if variants_listed is None:
        hint = _level_hint(runner, base, folders, endpoint)
        holds = f"the folder(s) {_listed(folders)} but no {endpoint}/" if folders else f"files but no folder, no {endpoint}/"
        return (f"{head}: --capture-uri {base} holds {holds} ({execution.definition.attributes.field_name('EndpointName')}"
                f" of the job definition), so nothing was found in "
                f"{where}. --capture-uri is the endpoint's DataCaptureConfig.DestinationS3Uri, the folder that "
                f"holds <endpoint>/<variant>/yyyy/mm/dd/hh/" + hint)
    variants = variants_listed[0]
    if not variants:
        return f"{head}: {capture}/ holds no variant folder (looked for {where})"
    prefixes = [f"{capture}/{variant}/{hour}/" for variant in variants for hour in hours]
    found = []
    for variant in variants[:MAX_NAMED]:
        span = _hour_range(runner, capture.child(variant))
        found.append(f"{variant} has {_span_text(span)}" if span else f"{variant} has no yyyy/mm/dd/hh folder")
    message = (f"{head}: no capture file in {_listed(prefixes)} (the window's hour(s) {_hours_text(hours)}; "
               f"{capture}/ holds the variant folder(s) {_listed(variants)}: {'; '.join(found)})")
    if unpublished:
        message += (f"; {unpublished} capture file(s) there are not published yet (.tmp files the capture writer "
                    "is still writing, or left behind by an endpoint that stopped without closing its writer)")
    return message


def _level_hint(runner: Launch, base: Location, folders: list[str], endpoint: str) -> str:
    """A hint when --capture-uri is one level off: an endpoint's or a variant's folder, or the folder above
    the destination."""
    if folders and all(name.isdigit() and len(name) == 4 for name in folders):
        return (f". {base} holds year folders: it is a variant's folder; give the folder two levels up "
                f"(the one that holds {endpoint}/)")
    if base.uri.rstrip("/").rsplit("/", 1)[-1] == endpoint:
        return f". {base} ends with the endpoint's name: give the folder above it"
    for name in folders[:20]:
        inner = _subfolders(runner, base.child(name))
        inner_names = inner[0] if inner else []
        if endpoint in inner_names:
            return f". {base.child(name)} holds {endpoint}/: give --capture-uri {base.child(name)}"
        if inner_names and all(n.isdigit() and len(n) == 4 for n in inner_names):
            return (f". {base.child(name)} holds year folders, as a variant's folder does: {base} looks like an "
                    "endpoint's folder; give the folder above it")
    return ""


def _ground_truth_where(runner: Launch, truth: Location, hours: list[str]) -> str:
    """The ground truth hour folders listed, and what the ground truth URI holds, for a message."""
    searched = (f"{truth}/{hours[0]}/" if len(hours) == 1 else
                f"{truth}/{hours[0]}/ to {truth}/{hours[-1]}/ ({len(hours)} hour folders)")
    listed = _subfolders(runner, truth)
    if listed is None:
        return f"{searched}; GroundTruthS3Input.S3Uri {truth} does not exist"
    span = _hour_range(runner, truth)
    if span is None:
        return f"{searched}; GroundTruthS3Input.S3Uri {truth} has no yyyy/mm/dd/hh folder"
    return f"{searched}; GroundTruthS3Input.S3Uri {truth} has {_span_text(span)}"


def _violation_text(violation: dict) -> str:
    """A violation's log line: which metric of which facet value (bias) or label (explainability), then why."""
    subject = (f"facet {violation['facet']!r} value {violation.get('facet_value')!r}" if "facet" in violation
               else f"label {violation['label']!r}" if "label" in violation else "")
    return f"{' '.join(filter(None, (str(violation.get('metric_name')), subject)))}: {violation.get('description')}"


def job_environment(variables: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """The job definition's ``Environment`` as environment variables for the execution, as SageMaker sets
    them in the monitoring container (``publish_cloudwatch_metrics``, ``LUCENT_BOOTSTRAP``, ...); the
    process's own values are restored afterwards."""
    return environment_set(variables)


def _stage_config(execution: Execution, root: Path, runner: Launch) -> tuple[Path, Any]:
    """Stage ``ConfigUri`` (and any S3 baseline it names) under ``root/input`` as ``lucent launch`` does."""
    definition = execution.definition
    if execution.model_dir is None and execution.model_url is None and definition.kind != BIAS:
        log.info("No --model-dir / --model-url: the model comes from the analysis config's predictor")
    shutil.rmtree(root / "input" / "config", ignore_errors=True)  # a reused work folder: this config only
    runner.stage(root, locate("ConfigUri", definition.config_uri), None, None, root)
    staged = root / "input" / "config"
    try:
        config_file = find_config_file(staged)
        return config_file, read_json_file(config_file)
    except ConfigError as error:  # name the user's file, not the staged copy
        raise ConfigError(str(error).replace(str(staged), config_source(definition))) from None


def config_source(definition: JobDefinition) -> str:
    """How messages name the analysis config: the job definition's ``ConfigUri`` (never the staged copy)."""
    return f"ConfigUri {redact_url(definition.config_uri)}"


def _check_model_given(execution: Execution, config) -> None:
    """An explainability execution needs a model Lucent can reach: ``--model-dir``, ``--model-url``, or
    the config's ``predictor.endpoint_url`` / ``image_uri``. The SDK's ``predictor.model_name`` names a
    SageMaker model, which cannot be reached from here."""
    predictor = config.predictor
    if execution.model_dir or execution.model_url or (predictor and (predictor.endpoint_url or predictor.image_uri)):
        return
    named = f" (the config's predictor names the SageMaker model {predictor.model_name!r}, which Lucent " \
            "cannot reach)" if predictor and predictor.model_name else ""
    raise UserError(f"this {execution.definition.kind} execution needs the model: give --model-dir DIR (a model "
                    f"folder for the built-in model server) or --model-url URL (a running model server){named}")


def _with_model_url(config, url: str | None):
    if url is None:
        return config
    return replace(config, predictor=replace(config.predictor, endpoint_url=url, image_uri=None))


def _list_hour_files(runner: Launch, location: Location, hours: list[str], *, variants: bool) -> list[str]:
    """The URIs of the files in the hour folders ``hours`` below ``location`` (below each variant folder
    first when ``variants``), sorted. A missing folder is no files."""
    if location.is_s3:
        store = runner.store
        bases = [location.prefix]
        if variants:
            with store.errors("listing", str(location)):
                pages = store.client.get_paginator("list_objects_v2").paginate(
                    Bucket=location.bucket, Prefix=location.prefix, Delimiter="/")
                bases = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        keys = []
        for base in bases:
            for hour in hours:
                keys.extend(store.objects(location, f"{base}{hour}/"))
        return [f"s3://{location.bucket}/{key}" for key in sorted(keys)]
    folder = location.path
    root = folder.resolve()  # the folder itself may be a link; nothing below it may lead out of it
    bases = sorted(p for p in folder.iterdir() if p.is_dir()) if variants and folder.is_dir() else [folder]
    files: list[str] = []
    for base in bases:
        if base != folder and _real_inside(base, root, folder) is None:  # a variant folder (may not exist)
            continue
        for hour in hours:
            hour_dir = base / hour
            if hour_dir.is_dir() and _real_inside(hour_dir, root, folder) is not None:
                files.extend(_ListedFile(p, root, real) for p in sorted(hour_dir.iterdir())
                             if p.is_file() and not p.name.startswith(".")
                             and (real := _real_inside(p, root, folder)) is not None)
    return sorted(files)


def _real_inside(path: Path, root: Path, folder: Path) -> Path | None:
    """The real path of ``path`` (below ``folder``, whose real path is ``root``) if it lies inside ``root``,
    else None. A symbolic link that leads out of the capture or ground truth folder (to /etc/shadow, to
    another endpoint's capture) is skipped with a warning naming it, as ``lucent run`` refuses links out of
    its inputs: whoever can write into the folder must not make the monitor read any file of this machine."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # gone since it was listed, or a loop of links
        real = None
    if real is not None and real.is_relative_to(root):
        return real
    log.warning("Skipped %s: a link to %s, outside %s (not read)", printable(str(path)),
                printable(str(real)) if real is not None else "nothing (or a loop of links)", printable(str(folder)))
    return None


class _ListedFile(str):
    """A local capture or ground truth file as ``_list_hour_files`` listed it: its path as the merge and its
    messages name it, with the real path the listing checked to lie inside the folder's real path ``root``.
    ``_read_local`` opens that real path, not the listed one, following no link: a file (or folder on its way)
    swapped for a link after the listing is not followed out of the folder."""

    root: Path
    real: Path

    def __new__(cls, path: Path, root: Path, real: Path) -> _ListedFile:
        listed = super().__new__(cls, str(path))
        listed.root, listed.real = root, real
        return listed


def _unpublished_capture_files(location: Location, hours: list[str]) -> list[str]:
    """The capture writer's temporary files (``.<name>.<random>.tmp``, ``analyzer.output.atomic_writer``) in
    the hour folders of a local capture: records not published yet. An S3 capture keeps them in memory."""
    if location.is_s3 or not location.path.is_dir():
        return []
    return sorted(str(path) for base in sorted(p for p in location.path.iterdir() if p.is_dir())
                  for hour in hours for path in (base / hour).glob(".*.tmp") if path.is_file())


def _read_files(runner: Launch, uris: list[str]) -> Iterator[tuple[str, bytes]]:
    """(URI, content) of each file in order; S3 objects are fetched ``READ_AHEAD`` at a time. A local file
    that changed into a link since it was listed is left out (``_read_local``)."""
    if not uris:
        return iter(())
    if not uris[0].startswith("s3://"):
        return ((uri, data) for uri in uris if (data := _read_local(uri)) is not None)
    return _read_s3(runner, uris)


# Opening a folder on the way to a listed file: no link followed (O_NOFOLLOW with O_DIRECTORY refuses one),
# and search permission enough where there is O_PATH (Linux), as when the listing resolved the path.
_FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# The file itself: no link followed, and a FIFO swapped in does not block the open (it is then refused).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _read_local(path: str) -> bytes | None:
    """The content of the local file ``path``. A capture or ground truth file (``_ListedFile``) is opened at
    the real path its listing checked, one part at a time from the folder's real path down, following no
    symbolic link: a part swapped for a link since the listing (a TOCTOU) is not followed, and the file is
    skipped with a warning naming it (None). Any other path (a constraints file the user names) is read as
    given."""
    try:
        if not isinstance(path, _ListedFile):
            return Path(path).read_bytes()
        fd = os.open(path.root, _FOLDER_FLAGS)
        try:
            for part in path.real.relative_to(path.root).parts[:-1]:
                inner = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            file = os.open(path.real.name, _FILE_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as error:
        if isinstance(path, _ListedFile) and error.errno in (errno.ELOOP, errno.ENOTDIR):
            log.warning("Skipped %s: a symbolic link now lies on its path, since it was listed (not read)",
                        printable(str(path)))
            return None
        raise StorageError(f"cannot read {path}: {error.strerror or error}") from None
    with os.fdopen(file, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log.warning("Skipped %s: not a plain file any more, since it was listed (not read)", printable(str(path)))
            return None
        try:
            return handle.read()
        except OSError as error:
            raise StorageError(f"cannot read {path}: {error.strerror or error}") from None


def _read_s3(runner: Launch, uris: list[str]) -> Iterator[tuple[str, bytes]]:
    store = runner.store

    def get(uri: str) -> bytes:
        location = Location(uri)
        with store.errors("reading", uri):
            return store.client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()

    with ThreadPoolExecutor(max_workers=READ_AHEAD) as pool:
        pending = [(uri, pool.submit(get, uri)) for uri in uris[:READ_AHEAD]]
        following = iter(uris[READ_AHEAD:])
        while pending:
            uri, future = pending.pop(0)
            if (next_uri := next(following, None)) is not None:
                pending.append((next_uri, pool.submit(get, next_uri)))
            yield uri, future.result()


def _input_content_type(runner: Launch, uris: list[str]) -> str | None:
    """The captured requests' content type, from the first capture record (the analysis config's default
    ``dataset_type``); None when there is none to read."""
    for uri, data in _read_files(runner, uris[:1]):
        line = data.split(b"\n", 1)[0]
        try:
            record = json.loads(line)
            part = record["captureData"]["endpointInput"]
            payload_bytes(part)
            return part.get("observedContentType")
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deeply
            log.debug("Cannot read the content type from the first line of %s", uri)
    return None


def _read_constraints(runner: Launch, uri: str | None) -> dict | None:
    if uri is None:
        return None
    try:
        [(_, data)] = list(_read_files(runner, [str(Location(uri).uri)]))
    except StorageError as error:
        raise UserError(f"ConstraintsResource.S3Uri (the baseline analysis.json): {error}") from None
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # RecursionError: nested too deeply
        raise UserError(f"ConstraintsResource.S3Uri: {redact_url(uri)} is not a JSON analysis.json: "
                        f"{type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(document, dict):
        raise UserError(f"ConstraintsResource.S3Uri: {redact_url(uri)} is not an analysis.json (a JSON object)")
    return document


def _output_or_none(execution: Execution) -> Location | None:
    try:
        return execution.output
    except UserError as error:
        log.error("%s", error)
        return None


def _publish(runner: Launch, root: Path, status: dict, output: Location) -> bool:
    """Replace the window folder at ``output`` with ``root/output`` and the status file (last)."""
    output_dir = root / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    execution_file = root / EXECUTION_FILE
    write_text_atomic(execution_file, dumps(status) + "\n")
    files = result_files(output_dir)
    files[EXECUTION_FILE] = execution_file
    try:
        summary = runner.publish_files(files, output, last=[EXECUTION_FILE])
    except StorageError as error:
        log.error("Publishing failed: %s", error)
        status["FailureReason"] = str(error)
        return False
    log.info("Results in %s (%s)", output, summary)
    return True


