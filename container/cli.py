"""``lucent``: command-line entry point of the Lucent processing job.

Each subcommand is a thin layer over a function in ``container`` or ``analyzer``; argument
parsing and exit codes live here, nothing else.

Importing this module costs nothing beyond the standard library: ``lucent --version`` answers before
any parser is built, and each subcommand imports what it runs (pandas, scikit-learn, matplotlib and
WeasyPrint only in the commands and steps that use them; tests/test_logging_cli.py checks it).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from analyzer import __version__
from analyzer.logs import add_log_arguments, level_from_args

DESCRIPTION = """\
Lucent: a self-hosted fairness and explainability job that reads SageMaker Clarify's
analysis_config.json and writes Clarify's analysis.json.

A processing root is the folder SageMaker Processing would mount at /opt/ml/processing:
  <root>/input/config/analysis_config.json   the analysis config (or the one *.json there)
  <root>/input/data/                         the dataset: a file or a folder, read recursively
  <root>/input/model/                        the model, when the job needs predictions and the config
                                             names no predictor.endpoint_url / image_uri
  <root>/output/                             results: analysis.json, ...
"""

EPILOG = """\
examples:
  lucent run --processing-root ./job          run the job in ./job, results in ./job/output
  lucent validate --processing-root ./job     list every problem with the config and data
  lucent serve-model --model-dir ./model      serve a model folder on port 8080 (/ping, /invocations)
  lucent endpoint --config endpoint-config.json --endpoint-name demo --model-dir ./model
                                              a SageMaker endpoint (boto3 invoke_endpoint) on port 8080
  lucent monitor --job-definition bias-job.json --capture-uri s3://bucket/capture
                                              one bias / explainability monitoring execution (last hour)
exit codes: 0 success, 1 problem with the inputs (reason in the message file), 2 internal or model error,
or a job stopped by SIGTERM / Ctrl-C ("Stopped: ..." in the message file)
"""


RUN_DESCRIPTION = """\
Run the analysis configured in DIR/input/config on the dataset and write the results to DIR/output,
as SageMaker Processing runs the Clarify container (with no arguments, DIR is /opt/ml/processing):

  DIR/input/config/   analysis_config.json (or the one *.json there)
  DIR/input/data/     the dataset: a file or a folder, read recursively (or the config's dataset_uri)
  DIR/input/model/    the model, when the config asks for predictions and names no predictor.endpoint_url
                      or image_uri: one model file (model.joblib, *.pkl, xgboost-model, ...), scored with
                      the built-in predict (model.predict / predict_proba), or code/inference.py with
                      SageMaker's model_fn / input_fn / predict_fn / output_fn, or a model.tar.gz of them.
                      SAGEMAKER_PROGRAM=<name> picks another script of code/ (the model's entry_point);
                      without it the only script in code/ is used (docs/model-server.md)
  DIR/output/         results: analysis.json, report.*, explanations_shap/; a failed or stopped job
                      publishes nothing there (an earlier run's results stay)

The exit message goes to DIR/message (/opt/ml/output/message for the default DIR, or --message-file);
it is removed when the job starts:
  Completed: SageMaker XAI Analyzer ran successfully   exit 0
  ClientError: <what to fix in the inputs>             exit 1
  AlgorithmError: <internal or model failure>          exit 2
  Stopped: the job was stopped (SIGTERM|SIGINT) ...    exit 2 (SageMaker's stop request, or Ctrl-C)

One job at a time per DIR: while a job runs there, another `lucent run` on it exits 1 at once, names
the running job's pid on stderr, and writes no message (the message file is the running job's).
"""

RUN_EPILOG = """\
example:
  mkdir -p job/input/config job/input/data job/input/model
  cp analysis_config.json job/input/config/ && cp train.csv job/input/data/ && cp model.joblib job/input/model/
  lucent run --processing-root ./job && cat job/message && ls job/output
See docs/running.md (also `lucent validate` to check a job first, `lucent launch` for S3).
"""


def _add_job_arguments(parser: argparse.ArgumentParser, *, message_file: bool = True) -> None:
    from container.job import DEFAULT_MESSAGE_FILE, DEFAULT_PROCESSING_ROOT

    parser.add_argument("--processing-root", type=Path, default=DEFAULT_PROCESSING_ROOT, metavar="DIR",
                        help=f"folder with input/config, input/data and output (default: {DEFAULT_PROCESSING_ROOT})")
    if message_file:
        parser.add_argument("--message-file", type=Path, metavar="FILE",
                            help=f"where to write the exit message (default: {DEFAULT_MESSAGE_FILE} for the default "
                                 "processing root, else DIR/message)")
    else:  # validate writes no message: the option is not offered (JobPaths still wants the attribute)
        parser.set_defaults(message_file=None)
    parser.add_argument("--allow-paths-outside-root", action="store_true",
                        help="let the config read files outside DIR (dataset_uri, facet_dataset_uri, "
                             "predicted_label_dataset_uri, methods.shap.baseline, and links in the dataset "
                             "folder); without it such paths are an error, so that a config from someone else "
                             "cannot publish a local file such as ~/.aws/credentials in analysis.json")
    add_log_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lucent", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lucent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a processing job", description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_job_arguments(run)
    run.add_argument("--engine", choices=("local", "spark"), metavar="ENGINE",
                     help="where bias counts and SHAP shards run: local (default: this machine) or spark "
                          "(same as LUCENT_ENGINE; docs/spark.md)")
    run.add_argument("--spark-master", metavar="URL",
                     help="Spark master for --engine spark: local[2], spark://host:7077, yarn, k8s://..., "
                          "sc://host:15002 (default: LUCENT_SPARK_MASTER, SPARK_REMOTE or Spark's configuration)")
    validate = commands.add_parser(
        "validate", help="check config and data without computing",
        description="Check the config, the dataset, the model folder (without loading it) and the output folder the "
                    "way `lucent run` would, list every problem found, and exit 0 only when the job would start "
                    "(1 otherwise). No model is called and no message file is written; the output folder is only "
                    "probed (a small file written and removed).",
        epilog="example:\n  lucent validate --processing-root ./job     OK: the job would start. (or one line per "
               "problem)", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_job_arguments(validate, message_file=False)
    serve = commands.add_parser("serve-model", add_help=False,
                                help="serve a model folder over SageMaker's model-container protocol "
                                     "(see `lucent serve-model --help`)")
    serve.add_argument("args", nargs=argparse.REMAINDER)
    endpoint = commands.add_parser("endpoint", add_help=False,
                                   help="serve a SageMaker endpoint (runtime API, data capture, online "
                                        "explanations) in front of a model (see `lucent endpoint --help`)")
    endpoint.add_argument("args", nargs=argparse.REMAINDER)
    from container.launcher import add_launch_parser
    from container.monitor.cli import add_monitor_parser
    from container.schedule import add_schedule_parser

    add_launch_parser(commands)
    add_monitor_parser(commands)
    add_schedule_parser(commands)
    return parser


def main(argv: list[str] | None = None, *, program: bool | None = None) -> int:
    """``lucent``. ``program``: this call is the whole process (default: when ``argv`` is None, as for the
    console script and ``python -m container.cli``); a ``run`` then ends the process (``analyzer.process_exit``)."""
    program = argv is None if program is None else program
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # before building the parser, which imports every subcommand's module
        print(f"lucent {__version__}")
        return 0
    if argv[:1] == ["serve-model"]:  # its own parser: argparse REMAINDER would swallow no leading options
        from container.sidecar.cli import main as serve_model

        return serve_model(argv[1:])
    if argv[:1] == ["endpoint"]:
        from container.endpoint.cli import main as serve_endpoint

        return serve_endpoint(argv[1:])
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # Ctrl-C while the subcommands' modules load: no traceback
        print("lucent: stopped (SIGINT)", file=sys.stderr)
        return 2
    if argv[:1] == ["monitor"]:
        from container.monitor.cli import join_offset_values

        argv = join_offset_values(argv)
    args = parser.parse_args(argv)
    if args.command is None:  # the container runs `lucent` with no arguments: that is a job run
        args = parser.parse_args(["run", *argv])
    if args.command == "launch":
        from container.launcher import run_launch

        return run_launch(args)
    if args.command == "monitor":
        from container.monitor.cli import run_monitor_command

        return run_monitor_command(args)
    if args.command == "schedule":
        from container.schedule import run_schedule

        return run_schedule(args)
    from container.job import JobPaths, configure_logging, finish
    from container.outcome import JobStopped, outcome_of

    paths = JobPaths.for_root(args.processing_root, args.message_file)
    try:
        level = level_from_args(args)
    except SystemExit as problem:  # a bad LUCENT_LOG_LEVEL (a processing job's Environment): the job's message says so
        if args.command != "run":
            raise
        print(problem, file=sys.stderr)
        from analyzer.errors import UserError

        refused = outcome_of(UserError(str(problem).removeprefix("lucent: ")))
        return finish(paths.message_file, refused.code, refused.message)
    configure_logging(level=level)
    if args.command == "run":
        from container.job import ignore_stop_signals, keep_stop_signals_until_exit

        if program:  # the process ends with the job: a stop request after the job's first one changes nothing
            keep_stop_signals_until_exit()
        try:
            from analyzer.engines import engine_arguments
            from container.cluster import run_host  # one host: run_job; several: a Spark cluster over them

            with engine_arguments(args.engine, args.spark_master):
                code = run_host(paths, allow_paths_outside_root=args.allow_paths_outside_root)
        except KeyboardInterrupt:  # Ctrl-C before the job's own handler (container.job.stop_on_signals) is set
            stopped = outcome_of(JobStopped(signal.SIGINT))
            code = finish(paths.message_file, stopped.code, stopped.message)
        if program:  # the job is done: no interpreter teardown (analyzer.process_exit)
            from analyzer.process_exit import end_process

            # Not killed now by a late SIGTERM (exit 143 after a message that says otherwise): the job's own
            # handlers stay (run_job); a several-host job restores the defaults when it ends (container.cluster).
            ignore_stop_signals()
            return end_process(code)
        return code
    if args.command == "validate":
        from container.job import validate_job

        problems = validate_job(paths, allow_paths_outside_root=args.allow_paths_outside_root)
        if not problems:
            print("OK: the job would start.")
        else:
            print(f"{len(problems)} problem(s) found:")
            for problem in problems:
                print(f"  - {problem}")
        code = 1 if problems else 0
        if program:
            # As for run: no interpreter teardown, during which a native library's thread (a C++ std::thread
            # still joinable) sometimes aborted the process (exit 134, "terminate called without an active
            # exception") after the report was printed.
            from analyzer.process_exit import end_process

            return end_process(code)
        return code
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
