"""``lucent monitor``: run one monitoring execution of a SageMaker monitoring job definition."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from analyzer.logs import add_log_arguments, level_from_args

DESCRIPTION = """\
Run one execution of a ModelBiasMonitor / ModelExplainabilityMonitor job definition on an endpoint's
captured traffic, as SageMaker Model Monitor does every hour:

  1. the window: the execution time T (--now, rounded down to the hour) plus the job definition's
     StartTimeOffset / EndTimeOffset (default -PT1H and PT0H: the hour before T);
  2. the captured records of that window (--capture-uri/<endpoint>/<variant>/yyyy/mm/dd/hh/), merged with
     the ground truth (bias: GroundTruthS3Input, joined on the inference id) into one table;
  3. bias metrics on the merged records, or Kernel SHAP through the model (explainability);
  4. the comparison with the constraints (a baseline analysis.json: ConstraintsResource.S3Uri).

Results go to <output>/<endpoint>/<schedule>/yyyy/mm/dd/hh/: analysis.json, constraint_violations.json
(only when there are violations), report.html/.ipynb/.pdf, metrics.prom and monitoring_execution.json
(status Completed, CompletedWithViolations, Failed or Stopped, with the reason). Rerunning a window
replaces them.
URIs are s3:// (any S3-compatible store: AWS_ENDPOINT_URL) or local paths.
"""

EPILOG = """\
examples:
  lucent monitor --job-definition bias-job.json --capture-uri s3://bucket/data-capture --now 2024-05-01T06:00Z
  lucent monitor --job-definition shap-job.json --capture-uri ./capture --model-dir ./model
  lucent monitor --job-definition bias-job.json --capture-uri ./capture --data-analysis-start-time=-PT5H \\
      --data-analysis-end-time=-PT1H
environment: LUCENT_BOOTSTRAP=1 raises a bias violation only when a metric's whole bootstrap interval is worse
  than the baseline; LUCENT_PUSHGATEWAY_URL pushes the metrics to a Prometheus Pushgateway;
  LUCENT_CLOUDWATCH_DIR is the default --cloudwatch-dir.
a window is analysed once it is over: its end at least the capture publish delay (the capture writer's roll
  interval plus a minute) before the clock; an earlier run is refused (exit 1) before any work.
exit codes: 0 the execution ran (with or without violations), 1 bad input (bad arguments too), 2 internal
  error, or an execution stopped by SIGTERM / Ctrl-C ("Stopped: ..." in the message file)
"""


def add_monitor_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``monitor`` on the ``lucent`` subcommand parser."""
    parser = subparsers.add_parser("monitor", help="run one bias / explainability monitoring execution on "
                                                   "captured endpoint traffic",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-definition", required=True, type=Path, metavar="FILE",
                        help="the JSON body of CreateModelBiasJobDefinition or CreateModelExplainabilityJobDefinition")
    parser.add_argument("--capture-uri", required=True, metavar="URI",
                        help="the endpoint's DataCaptureConfig.DestinationS3Uri (s3:// or a local folder)")
    parser.add_argument("--now", type=parse_time, metavar="T",
                        help="the execution time, ISO-8601 UTC (2024-05-01T06:00Z); rounded down to the hour "
                             "(default: now)")
    parser.add_argument("--schedule-name", metavar="S",
                        help="the monitoring schedule's name, a folder of the output (default: the job "
                             "definition's name)")
    # argparse reads a separate "-PT5H" as an option: join_offset_values() joins it to its option first.
    parser.add_argument("--data-analysis-start-time", metavar="OFFSET",
                        help="the schedule's DataAnalysisStartTime, overriding StartTimeOffset "
                             "(--data-analysis-start-time=-PT5H, or -PT5H after a space); at most 24 hours before "
                             "the end, as in a schedule")
    parser.add_argument("--data-analysis-end-time", metavar="OFFSET",
                        help="the schedule's DataAnalysisEndTime, overriding EndTimeOffset "
                             "(--data-analysis-end-time=-PT1H, or -PT1H after a space)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-dir", type=Path, metavar="DIR",
                       help="explainability: serve this model folder with the built-in model server")
    model.add_argument("--model-url", metavar="URL",
                       help="explainability: a running model server (/ping, /invocations)")
    parser.add_argument("--processing-root", type=Path, metavar="DIR",
                        help="work folder, kept afterwards (default: a temporary folder, removed once published)")
    parser.add_argument("--message-file", type=Path, metavar="FILE",
                        help="where to write the exit message, by every exit (the previous one is removed when "
                             "the run starts) (default: DIR/message of --processing-root; without either, the log "
                             "only)")
    parser.add_argument("--cloudwatch-dir", type=Path, metavar="DIR",
                        help="where CloudWatch metric files go when publish_cloudwatch_metrics is Enabled "
                             "(the SDK enables it by default); checked writable before the analysis (default: "
                             "$LUCENT_CLOUDWATCH_DIR, else /opt/ml/output/metrics/cloudwatch, SageMaker's path)")
    add_log_arguments(parser)
    _refuse_bad_arguments_as_bad_input(parser)
    return parser


def _refuse_bad_arguments_as_bad_input(parser: argparse.ArgumentParser) -> None:
    """Make the parser's errors (a bad --now, a missing option) bad input: exit 1, as the other refusals,
    and the exit message written to --message-file (else --processing-root/message) when the arguments
    name one, replacing the previous run's. argparse alone exits 2, which the docs reserve for internal
    errors, and writes no message: a schedule's previous "Completed" would stay in the file."""
    given: list[list[str]] = []
    parse_known_args = parser.parse_known_args

    def remembering(args=None, namespace=None):
        given.append(list(args) if args is not None else [])
        namespace, extras = parse_known_args(args, namespace)
        if extras:  # the subcommand is the last word of `lucent`: what it does not know, nothing knows
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(message: str):
        from container.outcome import EXIT_USER_ERROR

        parser.print_usage(sys.stderr)
        target = _message_file_in(given[-1] if given else [])
        if target is not None:
            from container.job import clear_message
            from container.monitor.run import refuse

            clear_message(target)
            refuse(target, f"lucent monitor: {message}")
        parser.exit(EXIT_USER_ERROR, f"{parser.prog}: error: {message}\n")

    parser.parse_known_args = remembering  # type: ignore[method-assign]
    parser.error = error  # type: ignore[method-assign]


def _message_file_in(argv: list[str]) -> Path | None:
    """The message file the arguments name (--message-file, else --processing-root/message), read with the
    options' own rules (abbreviations, --option=value) even when another argument is bad; None without."""
    reader = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    reader.add_argument("--message-file", type=Path)
    reader.add_argument("--processing-root", type=Path)
    try:
        found, _ = reader.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    if found.message_file is not None:
        return found.message_file
    return found.processing_root / "message" if found.processing_root is not None else None


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (``Z`` or an offset; naive is UTC), in UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        hint = " (a number of seconds since 1970 is not one)" if text.strip().lstrip("-").isdigit() else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time such as 2024-05-01T06:00Z{hint}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def run_monitor_command(args: argparse.Namespace) -> int:
    """``lucent monitor``: one execution; returns the exit code. Every exit writes the exit message file
    (``--message-file``, else ``--processing-root``/message), after removing the previous run's first."""
    import logging
    import traceback

    from analyzer.redact import install_redaction
    from container.job import clear_message, configure_logging
    from container.monitor.run import FAILED, exit_with
    from container.outcome import outcome_of

    configure_logging(level=level_from_args(args))
    install_redaction()
    message_file = args.message_file or (args.processing_root / "message" if args.processing_root else None)
    if message_file is not None:
        clear_message(message_file)  # the message always belongs to the run that started last
    try:
        return _run(args, message_file)
    except Exception as error:  # noqa: BLE001 - every exit leaves its message
        failed = outcome_of(error)
        if failed.internal:
            logging.getLogger("lucent.monitor").error("Internal error:\n%s", traceback.format_exc())
        return exit_with(message_file, failed.code, f"{FAILED}: {failed.message}")


def _run(args: argparse.Namespace, message_file: Path | None) -> int:
    from analyzer.errors import ConfigError, UserError
    from analyzer.monitor.window import execution_time
    from container.monitor.definition import analysis_window_problem, load_job_definition
    from container.monitor.run import (
        CLOUDWATCH_DIR_VARIABLE,
        DEFAULT_CLOUDWATCH_DIR,
        Execution,
        refuse,
        run_monitor,
    )

    try:
        definition = load_job_definition(args.job_definition)
    except ConfigError as error:
        problems = getattr(error, "problems", None) or [str(error)]
        print(f"{args.job_definition}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
        return refuse(message_file, f"job definition {args.job_definition}: {len(problems)} problem(s): "
                                    + "; ".join(problems))
    except UserError as error:
        print(f"error: {error}")
        return refuse(message_file, f"job definition {args.job_definition}: {error}")
    if problem := analysis_window_problem(definition, args.data_analysis_start_time, args.data_analysis_end_time,
                                          names=OFFSET_OPTIONS):
        print(f"error: {problem}")
        return refuse(message_file, problem)
    execution = Execution(
        definition=definition, capture_uri=args.capture_uri, now=execution_time(args.now),
        schedule_name=args.schedule_name or definition.name,
        start_offset=args.data_analysis_start_time, end_offset=args.data_analysis_end_time,
        model_dir=args.model_dir, model_url=args.model_url, work_dir=args.processing_root,
        message_file=args.message_file,
        cloudwatch_dir=args.cloudwatch_dir or Path(os.environ.get(CLOUDWATCH_DIR_VARIABLE) or DEFAULT_CLOUDWATCH_DIR))
    return run_monitor(execution)


OFFSET_OPTIONS = ("--data-analysis-start-time", "--data-analysis-end-time")


def join_offset_values(argv: list[str]) -> list[str]:
    """``argv`` with a negative ISO-8601 offset given after a space (``--data-analysis-start-time -PT5H``)
    joined to its option (``--data-analysis-start-time=-PT5H``): argparse would read "-PT5H" as an option."""
    joined: list[str] = []
    values = iter(range(len(argv)))
    for i in values:
        if argv[i] in OFFSET_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-P"):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            next(values)
        else:
            joined.append(argv[i])
    return joined
