"""A processing job as SageMaker runs it: fixed folders in, ``analysis.json`` out, an exit message.

Folder contract (spec clarify-contract.md section 1): the config is the JSON file in
``<root>/input/config``, the dataset is ``<root>/input/data`` (a file or a folder, read recursively)
unless the config's ``dataset_uri`` names another one, and results go to ``<root>/output``.
The exit message goes to ``/opt/ml/output/message`` (where SageMaker Processing reads it), or to
``<root>/message`` when the processing root is not the default one.

Exit codes (``container.outcome``, the one mapping for every command): 0 success, 1 the user's inputs are
wrong (``ClientError: <reason>``), 2 the job did not complete for another reason: an internal error or a failing
dependency (``AlgorithmError: <reason>``), or a stop request (SIGTERM, or SIGINT from Ctrl-C: ``Stopped:
<reason>``, as SageMaker's ``Stopped`` status). The exit message of an earlier run is removed when a job
starts, so it never stands beside this run's outcome.

One job at a time per output folder: a job holds the folder's lock (``analyzer.output.output_folder_lock``)
from before it removes the earlier message until its own is written. A second job on the same folder
(a cron run that overran) is refused at once: exit 1, the reason on stderr, and no message written, since
the message file belongs to the job that is running.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from analyzer import __version__
from analyzer.config import AnalysisConfig, Predictor, find_config_file, load_config
from analyzer.data import Dataset, resolve_local_path
from analyzer.data.files import first_outside, s3_refusal
from analyzer.engines import engine_choice
from analyzer.engines.spark_read import cluster_uri
from analyzer.errors import ConfigError, UserError
from analyzer.logs import configure_logging as configure_log_handler
from analyzer.media import CSV, NPY
from analyzer.output import (
    ANALYSIS_FILE,
    OutputFolderBusy,
    OutputStaging,
    check_output_folder,
    dumps,
    held_stop_signals,
    output_folder_lock,
    write_text_atomic,
)
from analyzer.pipeline import (
    check_inputs,
    check_supported,
    engine_reads_rows,
    load_job_dataset,
    needs_model,
    render_job_reports,
    run_analysis,
    writes_report,
)
from analyzer.predict import ModelEndpoint
from analyzer.predict.client import MAX_PAYLOAD_BYTES
from analyzer.predict.inprocess import ModelLoader
from analyzer.redact import redact
from analyzer.report import ReportError, check_report_engines
from analyzer.report.process import ReportProcess, check_temporary_folder, start_report_process
from container.checkpoint_store import local_checkpoint_folder, open_checkpoint_store
from container.model_endpoint import ServedModel, model_endpoint
from container.model_identity import model_identity
from container.outcome import EXIT_OK, EXIT_USER_ERROR, JobStopped, outcome_of, storage_error
from container.sidecar.server import STARTED_SERVER_MAX_BODY_BYTES

log = logging.getLogger("lucent")

DEFAULT_PROCESSING_ROOT = Path("/opt/ml/processing")
DEFAULT_MESSAGE_FILE = Path("/opt/ml/output/message")
SUCCESS_MESSAGE = "Completed: SageMaker XAI Analyzer ran successfully"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # SageMaker's StopProcessingJob; Ctrl-C on a terminal
# Request size for Lucent's own model server: what the server it starts accepts (several requests per
# worker balance better than a few huge ones).
LOCAL_MAX_PAYLOAD_BYTES = STARTED_SERVER_MAX_BODY_BYTES
LOGGED_ANALYSES_CHARS = 1_000_000  # analysis.json is copied into the log up to this size (see _log_analyses)


def local_model(config: AnalysisConfig) -> bool:
    """The model is on this machine: scored in process, Lucent's built-in server or a sibling container."""
    return not (config.predictor and config.predictor.endpoint_url)


@dataclass(frozen=True)
class JobPaths:
    processing_root: Path
    message_file: Path

    @classmethod
    def for_root(cls, processing_root: Path | str | None = None, message_file: Path | str | None = None) -> JobPaths:
        root = Path(processing_root) if processing_root else DEFAULT_PROCESSING_ROOT
        if message_file is None:
            is_default = root.resolve() == DEFAULT_PROCESSING_ROOT.resolve()
            message_file = DEFAULT_MESSAGE_FILE if is_default else root / "message"
        return cls(root, Path(message_file))

    @property
    def config_dir(self) -> Path:
        return self.processing_root / "input" / "config"

    @property
    def data_path(self) -> Path:
        return self.processing_root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.processing_root / "input" / "model"

    @property
    def output_dir(self) -> Path:
        return self.processing_root / "output"


class StopRequests:
    """The stop requests (signal numbers, in order) a ``stop_on_signals`` block received; its handler.

    The first raises ``JobStopped``. A later one (Ctrl-C pressed again, SageMaker's SIGTERM after the user's
    SIGINT) is only recorded while that stop is under way, so the cleanup it started (model server, SHAP
    workers and report process stopped, staging folders removed) is never cut short, and once the job has
    its outcome (``settle``: its message is being written). It raises again only when no ``JobStopped`` is
    being handled any more and the job goes on: code that caught the first one without stopping."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.settled = False  # the job's outcome is decided: nothing raises any more
        self.closing = False  # the block ends: nothing raises, the handlers change
        self.raised = False

    def settle(self) -> None:
        self.settled = True

    def __call__(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self.settled or self.closing:
            return
        if not self.raised or not _stopping():
            self.raised = True
            raise JobStopped(signum)


def _stopping() -> bool:
    """A ``JobStopped`` is being handled in this thread (an ``except``, ``finally`` or ``__exit__`` under
    way), itself or as the cause or context of another error raised meanwhile."""
    pending, seen = [sys.exc_info()[1]], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        if isinstance(error, JobStopped):
            return True
        seen.add(id(error))
        pending += [error.__cause__, error.__context__]
    return False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequests]:
    """SIGTERM and SIGINT raise ``JobStopped`` in the main thread while the block runs: the job stops the
    same way for SageMaker's stop request and for Ctrl-C (no bare ``KeyboardInterrupt`` traceback). A
    request stops the job once (``StopRequests``). When the block ends, the handlers that were there are
    back, unless the process ends with the job (``keep_stop_signals_until_exit``): then stop requests are
    ignored until it has exited."""
    requests = StopRequests()
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, requests)
        yield requests
    finally:
        requests.closing = True
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if _STOPS_IGNORED_AFTER_JOB else handler)
        if requests.received and not requests.raised and not _STOPS_IGNORED_AFTER_JOB:
            # Came once the job had its outcome: the request is for the code around the block (a launch
            # that publishes the results next), as its restored handler decides.
            signal.raise_signal(requests.received[0])


_STOPS_IGNORED_AFTER_JOB = False  # set by keep_stop_signals_until_exit


def keep_stop_signals_until_exit() -> None:
    """Called by ``lucent run`` as a program, before the job: the process exits right after the job, so
    a stop request that comes once the job has ended (a second Ctrl-C, SageMaker's SIGTERM after the user's
    SIGINT) is ignored until then, instead of meeting the default handler again, which would kill the
    process (exit 143) after its message said ``Stopped``, exit 2."""
    global _STOPS_IGNORED_AFTER_JOB
    _STOPS_IGNORED_AFTER_JOB = True


def ignore_stop_signals() -> None:
    """From now on, ignore SIGTERM and SIGINT: the job has ended and the process only exits. ``SIG_IGN``,
    not a Python handler: the interpreter's own exit puts the default handlers back in place of Python
    ones (a normal exit, when a thread is still to be joined), and the default kills."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def clear_message(message_file: Path) -> None:
    """Remove an earlier run's exit message: a job that starts must not leave "Completed" standing when it
    then fails, stops or is killed (SIGKILL writes nothing). Unlinking is atomic."""
    try:
        message_file.unlink(missing_ok=True)
    except OSError as error:
        log.warning("Could not remove the previous exit message %s: %s", message_file, error)


def configure_logging(verbose: bool = False, level: int | None = None) -> None:
    """Log lines to stderr, where SageMaker (and `docker logs`) collect them, at ``level`` (default INFO,
    DEBUG when ``verbose``); other libraries' lines only from WARNING up except at DEBUG
    (``analyzer.logs``). Idempotent, redacted, and leaves other handlers on the root logger alone."""
    configure_log_handler(logging.DEBUG if verbose else (logging.INFO if level is None else level))


def request_format(config: AnalysisConfig, dataset: Dataset, served: ServedModel) -> Predictor:
    """The predictor settings to use with this model.

    Lucent's own server, when it decodes and encodes with its default handlers, gives the model the
    same array whatever the content type and returns the model's own numbers: numeric features then go
    as npy (several times cheaper than CSV), and so do score-only answers (read with the same column
    indexes as CSV, without formatting and parsing every float). A model scored in process with the
    default handlers gets the same settings: its rows are then passed as they are, not encoded at all.
    """
    predictor = config.predictor
    if not served.default_io:
        return predictor
    changes = {}
    numeric = dataset.features is not None and all(dtype.kind in "biuf" for dtype in dataset.features.dtypes)
    if numeric and predictor.content_type != NPY:
        changes["content_type"] = NPY
    if predictor.label is None and predictor.accept_type in (None, CSV):
        changes["accept_type"] = NPY
    if changes:
        log.info("The model folder uses the default handlers: exchanging %s as %s (the same numbers, faster)",
                 " and ".join("features" if k == "content_type" else "scores" for k in changes), NPY)
    return replace(predictor, **changes)


def open_model(config: AnalysisConfig, dataset: Dataset, model_dir: Path,
               scope: contextlib.ExitStack) -> tuple[ModelEndpoint, str]:
    """Start (or find, or load) the config's model for ``dataset``, released when ``scope`` closes;
    returns the endpoint the analyses call and the model's identity (SHAP checkpoints are kept per model;
    empty when the job explains nothing).

    A model folder is scored in process unless ``predictor.lucent_scoring`` is ``"server"``: it is loaded
    here (an unloadable folder fails the job now) and no model server is started."""
    from container.model_endpoint import in_process_model, scores_in_process

    if config.predictor is not None and config.predictor.endpoint_name and (problems := model_problems(config, model_dir)):
        raise UserError(problems[0])
    local = None
    if scores_in_process(config):
        from analyzer.explain.job import expected_shap_workers
        from analyzer.explain.shards import spare_workers

        workers = expected_shap_workers(config, dataset)

        def start_shap_workers(loader: ModelLoader) -> None:  # they load the model while this process does
            scope.enter_context(spare_workers(loader, workers))

        local, default_io = scope.enter_context(
            in_process_model(config, model_dir, before_load=start_shap_workers if workers > 1 else None))
        served = ServedModel("", default_io=default_io)
    else:
        served = scope.enter_context(model_endpoint(config, model_dir))
    endpoint = ModelEndpoint(
        served.url, request_format(config, dataset, served), tuple(dataset.feature_names),
        # Lucent's own server takes bigger requests than SageMaker's 6 MB limit: fewer, larger
        # predict calls are most of the throughput on a local model.
        max_payload_bytes=LOCAL_MAX_PAYLOAD_BYTES if local_model(config) else MAX_PAYLOAD_BYTES, local=local,
        composes_pictures=served.composes_pictures)
    identity = model_identity(config, model_dir) if config.methods.shap is not None else ""
    return endpoint, identity


def model_problems(config: AnalysisConfig, model_dir: Path) -> list[str]:
    """Why the job's model folder cannot serve it, found without loading it (``lucent validate``; the job
    finds the same when it loads): none when the job needs no model or calls a server (``endpoint_url``,
    ``image_uri``). A config made for SageMaker names its model by ``predictor.endpoint_name``, which
    Lucent cannot call: then that is the problem named."""
    predictor = config.predictor
    if predictor is None or not needs_model(config) or predictor.endpoint_url or predictor.image_uri:
        return []
    from container.sidecar.model import model_folder_problem

    problem = model_folder_problem(model_dir)
    if problem is None:
        return []
    if predictor.endpoint_name:
        return [f"predictor.endpoint_name {predictor.endpoint_name!r} names a SageMaker endpoint, which cannot be "
                "called here: set predictor.endpoint_url to the URL of a server that answers /ping and "
                f"/invocations, or put the model folder in {model_dir} ({problem})"]
    return [f"the model: {problem}. Put the model folder (or model.tar.gz) in {model_dir}, or set "
            "predictor.endpoint_url / predictor.image_uri"]


def dataset_path_for(config: AnalysisConfig, paths: JobPaths, config_file: Path) -> Path | str:
    """``dataset_uri`` overrides the ``dataset`` input folder (spec section 1.2). On the Spark engine it
    may be a URI only the cluster reads (``s3a://``, ``hdfs://``), returned as it is, when the job's
    rows are read by the engine alone (docs/spark.md)."""
    uri = config.dataset_uri
    if uri and engine_choice(config).name == "spark" and cluster_uri(uri) and not uri.startswith("file:"):
        if not engine_reads_rows(config):
            raise ConfigError(f"dataset_uri {redact(uri)}: only the Spark engine can read it, and this job reads "
                              "the rows on this machine (explanations, or the Flip Test of a "
                              f"{config.dataset_type} dataset); give a local path, or an s3:// URI to `lucent launch`")
        return uri
    if uri:
        return resolve_local_path(uri, base_dir=config_file.parent)
    return paths.data_path


OUTPUT_URI_VARIABLE = "LUCENT_OUTPUT_URI"  # where the output folder is published (`lucent launch` sets it)
SAGEMAKER_JOB_CONFIG = Path("/opt/ml/config/processingjobconfig.json")  # what SageMaker Processing writes


def published_output_uri(paths: JobPaths, job_config: Path = SAGEMAKER_JOB_CONFIG) -> str | None:
    """The URI the output folder is published to, for the paths ``analysis.json`` names (Clarify writes
    the S3 URI of a time-series job's ``out.jsonl``): ``LUCENT_OUTPUT_URI``, else, in a SageMaker
    processing container, the ``S3Uri`` of the output whose ``LocalPath`` is the output folder in
    ``processingjobconfig.json``. None when neither says (the local path is written then)."""
    if uri := os.environ.get(OUTPUT_URI_VARIABLE, "").strip():
        return uri
    try:
        outputs = json.loads(job_config.read_text(encoding="utf-8"))["ProcessingOutputConfig"]["Outputs"]
        return next(output["S3Output"]["S3Uri"] for output in outputs
                    if Path(output["S3Output"]["LocalPath"]) == paths.output_dir)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):  # not on SageMaker, or not said there
        return None


def local_inputs(config: AnalysisConfig) -> list[tuple[str, str]]:
    """(config key, value) of every config key that names a file or folder the job reads and whose
    content can end up in the outputs."""
    shap = config.methods.shap
    keys = [("dataset_uri", config.dataset_uri), ("facet_dataset_uri", config.facet_dataset_uri),
            ("predicted_label_dataset_uri", config.predicted_label_dataset_uri),
            ("methods.shap.baseline", shap.baseline if shap is not None and isinstance(shap.baseline, str) else None)]
    asv = config.methods.asymmetric_shapley_value
    if asv is not None and isinstance(asv.baseline, str):  # a baseline file (not "zero" / "mean")
        keys.append(("methods.asymmetric_shapley_value.baseline", asv.baseline))
    return [(key, value) for key, value in keys if value]


def s3_input_problems(config: AnalysisConfig) -> list[str]:
    """One problem per config key that names an ``s3://`` file the job would read itself: ``lucent run``
    reads local files (``lucent launch`` downloads them first). The key is named, as a reader deep in
    the analysis could not. A Spark job's ``dataset_uri`` is left to ``dataset_path_for``: its cluster
    may read it."""
    spark = engine_choice(config).name == "spark"
    return [s3_refusal(value, key) for key, value in local_inputs(config)
            if value.lower().startswith("s3://") and not (spark and key == "dataset_uri")]


def inputs_outside_root(config: AnalysisConfig, paths: JobPaths, config_file: Path) -> list[str]:
    """One problem per input the job would read from outside the processing root: a config path (or the
    dataset input folder) whose real location, or that of a data file below it, is elsewhere. Links are
    followed and ``..`` resolved, so ``~/.aws/credentials`` or a link to ``/etc`` cannot be published in
    ``analysis.json`` by a config someone else wrote. URIs that are not local paths are left to the
    readers, which reject them."""
    named = [] if config.dataset_uri else [("the dataset input folder", str(paths.data_path), paths.data_path)]
    for key, value in local_inputs(config):
        try:
            named.append((key, value, resolve_local_path(value, base_dir=config_file.parent)))
        except UserError:
            continue
    if (checkpoints := local_checkpoint_folder(config)) is not None:  # written, listed and removed there
        named.append(("lucent.checkpoint_uri", config.lucent["checkpoint_uri"], checkpoints))
    problems = []
    for key, value, path in named:
        outside = first_outside(path, paths.processing_root)
        if outside is not None:
            through = "" if outside == path else f" (through {outside})"
            problems.append(
                f"{key}: {value!r} is read from {outside.resolve()}{through}, outside the processing root "
                f"{paths.processing_root}. Copy the data into the processing root, or pass "
                f"--allow-paths-outside-root if this config is yours and you mean it.")
    return problems


def _load(paths: JobPaths) -> tuple[AnalysisConfig, Path]:
    config_file = find_config_file(paths.config_dir)
    log.info("Analysis config path: %s", config_file)
    config = load_config(config_file)
    return config, config_file


@dataclass
class _Progress:
    """How far a job got, for the message of however it ends."""
    locked: bool = False  # past the output folder's lock: the message file is this job's
    published_analysis: bool = False


def run_job(paths: JobPaths, *, allow_paths_outside_root: bool = False) -> int:
    """Run the whole job; never raises. Returns the process exit code and writes the exit message.

    ``allow_paths_outside_root``: read config paths that lead outside the processing root (see
    ``inputs_outside_root``); without it they fail the job."""
    progress = _Progress()
    stop_requests = StopRequests()
    # Closed last, after the message is written: the output folder's lock, then the stop handlers.
    with contextlib.ExitStack() as scope:
        try:
            stop_requests = scope.enter_context(stop_on_signals())
            with held_stop_signals():  # a stop request lands once the lock is held, or once the job is refused
                scope.enter_context(output_folder_lock(paths.output_dir))
                progress.locked = True
            return _run_locked(paths, progress, stop_requests, allow_paths_outside_root)
        except OutputFolderBusy as busy:
            return _refused(paths, busy)
        except JobStopped as stop:  # refused meanwhile, or before the job's outcome was settled
            if isinstance(stop.__context__, OutputFolderBusy) and not progress.locked:
                return _refused(paths, stop.__context__)
            return _stopped(paths, stop, stop_requests, progress.published_analysis)


def _refused(paths: JobPaths, busy: OutputFolderBusy) -> int:
    """Exit 1 without a message: the message file is the running job's (it removed the earlier message and
    writes its own when it ends); this refusal there would stand in for that job's outcome, or be replaced by it."""
    log.error("Not started: %s. This run changed nothing: no output, and no exit message in %s, which belongs "
              "to the job that is running. Run again once it has ended, or use another processing root.",
              busy, paths.message_file)
    return EXIT_USER_ERROR


def _stopped(paths: JobPaths, stop: JobStopped, stop_requests: StopRequests, published_analysis: bool) -> int:
    stop_requests.settle()
    log.error("Signal %d received, cleaning up", stop.signum)
    if later := [signal.Signals(signum).name for signum in stop_requests.received[1:]]:
        log.warning("Also received %s while stopping: the job stops once", ", ".join(later))
    stopped = outcome_of(stop)
    return _finish(paths, stopped.code, stopped.message + _outputs_note(paths, published_analysis))


def _run_locked(paths: JobPaths, progress: _Progress, stop_requests: StopRequests,
                allow_paths_outside_root: bool) -> int:
    """``run_job`` once the output folder is this job's: the work, then the message of its outcome."""
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        clear_message(paths.message_file)
        log.info("Starting Lucent %s processing job (SageMaker Clarify compatible)", __version__)
        config, config_file = _load(paths)
        log.info("Analysis result path: %s", paths.output_dir)
        # Clarify's host lines (resourceconfig.json); a bad file fails the job here. Imported here, not at
        # the top: container.cluster imports this module.
        from container.cluster import log_cluster

        log_cluster()
        check_supported(config)
        if s3_problems := s3_input_problems(config):
            raise UserError("; ".join(s3_problems))
        if not allow_paths_outside_root and (outside := inputs_outside_root(config, paths, config_file)):
            raise UserError("; ".join(outside))
        dataset_path = dataset_path_for(config, paths, config_file)
        log.info("Dataset type: %s uri: %s", config.dataset_type, dataset_path)
        with contextlib.ExitStack() as report_scope, contextlib.ExitStack() as model_scope:
            # The report's process starts now: it checks the PDF engine and loads the renderers while the
            # job reads and computes (WeasyPrint and matplotlib are never imported by this process).
            if writes_report(config):
                check_temporary_folder()  # the report's renderers need one: say so now, not after the work
            reports = report_scope.enter_context(start_report_process()) if writes_report(config) else None
            # Staging first: an output folder that cannot be written fails the job before any work is done.
            with OutputStaging(paths.output_dir) as staging:
                dataset = load_job_dataset(config, dataset_path, base_dir=config_file.parent)
                endpoint, identity = (open_model(config, dataset, paths.model_dir, model_scope)
                                      if needs_model(config) else (None, ""))
                if reports is not None:
                    reports.check_engines()  # fail now, not after hours of computing
                output_uri = published_output_uri(paths)
                results = run_analysis(config, dataset, staging, endpoint, base_dir=config_file.parent,
                                       model_identity=identity, output_uri=output_uri,
                                       checkpoint_store=open_checkpoint_store(config, output_uri))
                staging.write_json(ANALYSIS_FILE, results)
                # analysis.json (and explanations_shap/) is the result: published now, the report never
                # delays it (docs/reports.md, "When the report is written").
                published = staging.commit()
            progress.published_analysis = True
            _log_analyses(results)
            for path in published:
                log.info("Wrote %s", path)
            if reports is not None:
                published_report = _publish_report(reports, config, dataset, results, paths, started_at,
                                                   model_scope)
                for path in published_report:
                    log.info("Wrote %s", path)
        remove_empty_work_area(paths.output_dir)
        log.info("Job finished in %.2f s", time.perf_counter() - started)
        stop_requests.settle()  # from here on a stop request changes nothing: the job has its outcome
        return _finish(paths, EXIT_OK, SUCCESS_MESSAGE)
    except JobStopped as stop:
        return _stopped(paths, stop, stop_requests, progress.published_analysis)
    except Exception as error:  # noqa: BLE001 - the job must always leave an exit message
        stop_requests.settle()
        return _failed(paths, error, progress.published_analysis)


def _failed(paths: JobPaths, error: Exception, published_analysis: bool) -> int:
    """The message of a job that failed with ``error`` (``container.outcome``), with what it published."""
    if isinstance(error, ReportError):  # a report format failed: the note names the files that were published
        note = _published_note(published_analysis, error.written)
    else:
        note = _outputs_note(paths, published_analysis)
    if (full := storage_error(error)) is not None:  # the disk, not the job (nor the report): the user's to fix
        return storage_failure(paths, full, note or "; nothing was published")
    failed = outcome_of(error)
    if failed.internal:
        log.error("Internal error:\n%s", traceback.format_exc())
    else:
        log.error("Job failed: %s", failed.reason)
    return _finish(paths, failed.code, failed.message + note)


def _log_analyses(results: dict) -> None:
    """The results in the log, as Clarify logs them, when they are a readable size. A large analysis.json (a
    facet of thousands of values: tens of MB) is not copied into the log: that cost a second log of its
    size and tens of seconds of redaction before the job's exit message."""
    text = dumps(results)
    if len(text) <= LOGGED_ANALYSES_CHARS or log.isEnabledFor(logging.DEBUG):
        log.info("Collected analyses:\n%s", text)
    else:
        log.info("Collected analyses: %s characters, in analysis.json (too large to log; --log-level debug "
                 "logs them)", f"{len(text):,}")


def storage_failure(paths: JobPaths, error: OSError, note: str) -> int:
    """Exit 1 for a write the storage refused (full disk, quota, file-size limit, read-only mount), naming the
    file as the user will find it in the output folder, never its staging copy; the output folder itself
    when the error names no file."""
    failed = outcome_of(error, output_dir=paths.output_dir)
    log.error("Job failed: %s", failed.reason)
    return _finish(paths, failed.code, f"{failed.message}. {_STORAGE_ADVICE.get(error.errno, _FREE_SPACE)} and run "
                                       f"the job again{note}")


_FREE_SPACE = "Free some space (or raise the quota)"
_STORAGE_ADVICE = {errno.EFBIG: "Raise the file-size limit (ulimit -f), or use a filesystem that takes larger files,",
                   errno.EROFS: "Make the output folder writable"}


def _publish_report(reports: ReportProcess, config: AnalysisConfig, dataset: Dataset, results: dict,
                    paths: JobPaths, started_at: str, model_scope: contextlib.ExitStack) -> list[Path]:
    """Render the report in its own process while the model stops, then publish it beside the published
    ``analysis.json`` (added to the published set, each file atomic). Formats that were written are
    published even when another failed; ``ReportError`` then says which failed."""
    started = time.perf_counter()
    with OutputStaging(paths.output_dir) as staging:
        try:
            render_job_reports(reports, config, dataset, results, staging.staging_dir, paths.output_dir, started_at)
            model_scope.close()  # stop the model while the report renders: nothing needs it any more
            reports.wait()
        except ReportError as error:
            staging.keep_only(error.written)  # complete formats only, as the report process confirmed
            error.written = staging.commit(replace_previous=False)
            raise
        except BaseException:
            # Stopped or failed while the child writes into this staging folder: the child is stopped before
            # the folder is removed, or a file it creates meanwhile leaves the folder in the output.
            reports.stop()
            raise
        published = staging.commit(replace_previous=False)
    log.info("Report written (%s) in %.2f s", ", ".join(p.name for p in published), time.perf_counter() - started)
    return published


def _published_note(analysis_published: bool, report_files: list[Path] | None = None) -> str:
    """What the exit message of a job that failed after publishing ``analysis.json`` adds: that it was."""
    if not analysis_published:
        return ""
    names = ["analysis.json", *(p.name for p in report_files or [])]
    return f"; {', '.join(names)} and the other results were published"


def _outputs_note(paths: JobPaths, analysis_published: bool) -> str:
    """What a failed job's exit message says about the output folder: that this run published
    ``analysis.json``, or that the results still there are an earlier run's (a failed job publishes nothing
    and removes nothing, so they are never mistaken for this run's)."""
    return _published_note(analysis_published) or earlier_results_note(paths.output_dir)


def earlier_results_note(output_dir: Path) -> str:
    """``; <output_dir> still holds an earlier run's results ...`` when it holds a published
    ``analysis.json``, else empty."""
    if not (output_dir / ANALYSIS_FILE).is_file():
        return ""
    return (f"; {output_dir} still holds an earlier run's results ({ANALYSIS_FILE}, ...), not this run's: "
            "this run published nothing")


WORK_AREA = ".lucent-work"  # <output>/.lucent-work: SHAP checkpoints of a job that may be resumed


def remove_empty_work_area(output_dir: Path) -> None:
    """Remove ``<output_dir>/.lucent-work`` and the folders below it when they hold no file: a job that
    succeeded keeps no checkpoint, and an empty work folder would only puzzle whoever reads the output."""
    work = output_dir / WORK_AREA
    if not work.is_dir() or work.is_symlink():
        return
    for parent, _folders, _files in sorted(os.walk(work), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):  # not empty: kept
            os.rmdir(parent)


def validate_job(paths: JobPaths, *, allow_paths_outside_root: bool = False) -> list[str]:
    """Every problem that would stop the job, without computing any metric."""
    try:
        config, config_file = _load(paths)
    except ConfigError as error:
        return error.problems
    except UserError as error:
        return [str(error)]
    problems = []
    try:
        check_supported(config)
    except UserError as error:
        problems.extend(str(error).split("; "))
    if writes_report(config):
        try:
            check_report_engines()
        except ReportError as error:
            problems.append(f"methods.report: {error}")
    try:
        check_output_folder(paths.output_dir)
    except UserError as error:
        problems.append(str(error))
    problems.extend(model_problems(config, paths.model_dir))
    problems.extend(s3_input_problems(config))
    if not allow_paths_outside_root and (outside := inputs_outside_root(config, paths, config_file)):
        return problems + outside  # not read, as the job would not read them
    try:
        dataset = load_job_dataset(config, dataset_path_for(config, paths, config_file),
                                   base_dir=config_file.parent)
        problems.extend(check_inputs(config, dataset, config_file.parent))
    except UserError as error:
        problems.append(str(error))
    # The readers refuse an s3:// value too, without its key: s3_input_problems said it with the key.
    said = {s3_refusal(value) for _key, value in local_inputs(config)}
    return [problem for problem in problems if problem not in said]


def _finish(paths: JobPaths, code: int, message: str) -> int:
    return finish(paths.message_file, code, message)


def finish(message_file: Path, code: int, message: str) -> int:
    """Write the exit message (redacted) to ``message_file`` and log it; returns ``code``."""
    # The message is uploaded and shown to whoever reads the job's status: no URL password or token.
    message = redact(message)
    try:
        write_text_atomic(message_file, message + "\n")
    except OSError as error:
        log.warning("Could not write the exit message to %s: %s", message_file, error)
    (log.info if code == EXIT_OK else log.error)("exit_message: %s", message)
    return code


def raise_job_stopped(signum, frame):  # noqa: ARG001
    """SIGTERM / SIGINT handler: stop the main thread's work with ``JobStopped``."""
    raise JobStopped(signum)

