"""``lucent endpoint``: a self-hosted SageMaker endpoint in front of a model container.

:func:`open_endpoint` assembles one (model container, fitted explainer, capture writer, SigV4 check,
HTTP server) and :func:`main` serves it until SIGTERM, then flushes the capture files and stops the
model server it started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.config.model import Predictor
from analyzer.errors import ConfigError, DependencyError, UserError
from analyzer.logs import add_log_arguments, configure_logging, level_from_args
from analyzer.predict import serialize_records
from analyzer.redact import redact_url
from container.endpoint.app import EndpointApp, Explanations
from container.endpoint.auth import ACCESS_KEY_VARIABLE, REGION_VARIABLE, SECRET_KEY_VARIABLE, SigV4Verifier
from container.endpoint.config import (
    ENDPOINT_NAME_PATTERN,
    EndpointConfig,
    ExplainerSettings,
    load_endpoint_config,
)
from container.endpoint.scoring import ModelContainer, build_score, parse_records, response_type_for
from container.endpoint.server import EndpointServer, serve_until_stopped
from container.model_endpoint import ServedModel
from container.sidecar.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    SAGEMAKER_MAX_BODY_BYTES,
    RequestLimits,
)
from container.sidecar.server import DEFAULT_PORT, HOST_VARIABLE, default_host, default_port
from container.storage import StorageError, read_bytes

log = logging.getLogger("lucent.endpoint")

DEFAULT_MODEL_TIMEOUT_S = 60.0  # SageMaker: a model container must answer within 60 seconds
DEFAULT_MAX_CONNECTIONS = 64

DESCRIPTION = f"""\
Serve a self-hosted SageMaker endpoint: the runtime API's InvokeEndpoint
(POST /endpoints/NAME/invocations, what boto3's sagemaker-runtime client sends), POST /invocations,
GET /ping and GET /metrics, in front of a model container, with SageMaker's data capture and
Clarify online explanations configured by FILE: the JSON body of CreateEndpointConfig
(DataCaptureConfig, ExplainerConfig, ProductionVariants[0].VariantName).

With {ACCESS_KEY_VARIABLE} and {SECRET_KEY_VARIABLE} set, every request except GET /ping
must be SigV4-signed with those credentials (boto3 does it when given them);
{REGION_VARIABLE}, when set, is the only region a signature may be scoped to.
"""


def build_parser(prog: str = "lucent endpoint") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="CreateEndpointConfig body (JSON)")
    parser.add_argument("--endpoint-name", required=True, metavar="NAME",
                        help="the endpoint's name: the NAME in /endpoints/NAME/invocations and in capture paths")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-url", metavar="URL", help="a running model container (answers /ping, /invocations)")
    model.add_argument("--image", metavar="URI", help="a model image, run with `serve` (needs a container engine); "
                                                      "--model-dir, when given, is mounted at /opt/ml/model")
    parser.add_argument("--model-dir", type=Path, metavar="DIR",
                        help="a model folder (or model.tar.gz) for Lucent's built-in model server")
    parser.add_argument("--host", help=f"address to listen on (default: ${HOST_VARIABLE}, else 127.0.0.1)")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help=f"port (default: $SAGEMAKER_BIND_TO_PORT, else {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--model-timeout", type=float, default=DEFAULT_MODEL_TIMEOUT_S, metavar="SECONDS",
                        help=f"seconds the model container has to answer (default: {DEFAULT_MODEL_TIMEOUT_S:g})")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help=f"connections open at once (default: {DEFAULT_MAX_CONNECTIONS}); past it a new connection "
                             "closes the oldest one without a complete request, and gets 503 only when every "
                             "one is busy with a request")
    add_log_arguments(parser)
    return parser


@dataclass
class EndpointParts:
    server: EndpointServer
    app: EndpointApp
    capture: Any | None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_url is None and args.image is None and args.model_dir is None:
        parser.error("one of --model-dir, --model-url and --image is required")
    if args.model_url is not None and args.model_dir is not None:
        parser.error("--model-dir cannot be used with --model-url")
    if not re.fullmatch(ENDPOINT_NAME_PATTERN, args.endpoint_name) or len(args.endpoint_name) > 63:
        parser.error(f"--endpoint-name {args.endpoint_name!r}: 1 to 63 letters, digits and hyphens "
                     "(no leading or trailing hyphen)")
    configure_logging(level_from_args(args))  # redacted; other libraries' INFO lines (botocore's) off
    try:
        config = load_endpoint_config(args.config)
        verifier = SigV4Verifier.from_environment()
        # The baseline is read and checked against the config before the model starts: a mistake in the
        # config is reported in a second, not after the model server's start.
        explainer_inputs = _fit_explainer_inputs(config.explainer) if config.explainer is not None else None
    except ConfigError as error:
        print(f"{len(error.problems)} problem(s) in {args.config}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        host = args.host or default_host()
        port = default_port() if args.port is None else args.port
    except UserError as error:  # SAGEMAKER_BIND_TO_PORT that is not a port
        print(f"error: {error}", file=sys.stderr)
        return 1
    failure = None
    served_to_the_end = False  # stopped by SIGTERM/SIGINT, not by a failure
    # serve_until_stopped leaves its handlers in place while capture is flushed and the model stopped;
    # they go once all that is done (main may run in a process that goes on: tests, an embedding program)
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as stack:
            served = stack.enter_context(_model(args))
            parts = stack.enter_context(open_endpoint(config, args.endpoint_name, served.url, host=host, port=port,
                                                      model_timeout=args.model_timeout, verifier=verifier,
                                                      max_connections=args.max_connections,
                                                      default_io=served.default_io, explainer_inputs=explainer_inputs))
            if served.server is not None:
                watch_model_server(served.server, parts.server)
            url = parts.server.url
            serve_until_stopped(parts.server, announce=lambda: log.info(
                "Endpoint %s (variant %s) in service at %s%s", args.endpoint_name, config.variant_name, url,
                "; requests must be SigV4-signed" if verifier else ""))
            failure = parts.server.failure
            served_to_the_end = failure is None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except DependencyError as error:  # the built-in model server had exited when it was to be stopped
        if served_to_the_end:  # it got the stop signal too (systemd's control-group kill): part of the stop
            log.info("The built-in model server had already stopped: %s", str(error).splitlines()[0])
        elif failure is None:
            log.error("%s", error)
            failure = str(error).splitlines()[0].rstrip(".") + "; its last log lines are above"
    except KeyboardInterrupt:  # SIGINT before the endpoint served (while the model or the explainer started)
        print("error: interrupted while the endpoint was starting", file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    return 0


def watch_model_server(model: Any, server: EndpointServer) -> threading.Thread:
    """Stop the endpoint as soon as the built-in model server (``container.sidecar.ModelServer``) exits
    on its own: an endpoint whose model is gone would answer /ping 503 and every invocation ModelError
    until someone looked. The watcher blocks in ``waitid`` (no polling) without reaping the process, so
    that ``ModelServer`` still reads its exit status; an exit after the endpoint began stopping is the
    model server's own stop, not a failure."""

    def watch() -> None:
        with contextlib.suppress(ChildProcessError):  # reaped already: ModelServer knows its status
            os.waitid(os.P_PID, model.pid, os.WEXITED | os.WNOWAIT)
        if server.stopping:
            return
        status = model.exit_status()
        how = f"was killed by signal {-status}" if status is not None and status < 0 else f"exited with code {status}"
        tail = model.log_tail()
        log.error("The built-in model server (pid %d) %s while the endpoint was serving; its log, %s (removed when "
                  "the endpoint exits), ends with:\n%s", model.pid, how, model.log_path, tail or "(empty)")
        if server.stop(f"the built-in model server {how}; the endpoint cannot answer without it "
                       f"(its last log lines are above)"):
            log.info("Stopping the endpoint: finishing requests in flight, flushing capture")

    thread = threading.Thread(target=watch, name="model-server-watch", daemon=True)
    thread.start()
    log.info("Built-in model server: pid %d, log %s", model.pid, model.log_path)
    return thread


@contextlib.contextmanager
def _model(args: argparse.Namespace) -> Iterator[ServedModel]:
    """The model container: the built-in server on --model-dir, --model-url, or --image; what was
    started is stopped on the way out."""
    from container.model_endpoint import _builtin_server, _existing_endpoint, _model_container

    if args.model_url is not None:
        yield ServedModel(_existing_endpoint(args.model_url, "--model-url"))
    elif args.image is not None:
        with _model_container(args.image, args.model_dir or Path("/nonexistent/lucent-no-model"), "--image") as url:
            yield ServedModel(url)
    else:
        with _builtin_server(args.model_dir, during="the endpoint's service") as served:
            yield served


@contextlib.contextmanager
def open_endpoint(config: EndpointConfig, endpoint_name: str, model_url: str, *, host: str = "127.0.0.1",
                  port: int = 0, model_timeout: float = DEFAULT_MODEL_TIMEOUT_S, verifier: SigV4Verifier | None = None,
                  max_connections: int = DEFAULT_MAX_CONNECTIONS, limits: RequestLimits | None = None,
                  default_io: bool = False,
                  explainer_inputs: tuple[np.ndarray, list[str]] | None = None) -> Iterator[EndpointParts]:
    """An endpoint bound to ``host:port`` and ready to serve (``server.serve_forever()``); on exit the
    socket is closed, the capture writer flushed and the model client closed. ``default_io``: the model
    is Lucent's built-in server with its default handlers (``ServedModel.default_io``), so the explainer
    may exchange numeric rows with it as npy. ``explainer_inputs``: the baseline and feature names
    (:func:`_fit_explainer_inputs`) when the caller has read them already."""
    model = ModelContainer(model_url, model_timeout, max_connections)
    limits = limits or RequestLimits(SAGEMAKER_MAX_BODY_BYTES, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S,
                                     max_connections)
    with contextlib.ExitStack() as stack:
        stack.callback(model.close)
        explanations = None
        if config.explainer is not None:
            explanations = _fit_explanations(config.explainer, model, model_url, model_timeout, max_connections, stack,
                                             default_io, explainer_inputs)
        capture = None
        if config.capture is not None:
            from container.capture import CaptureWriter, configured_flush_seconds

            flush_seconds = configured_flush_seconds()  # a bad value is reported at the start, not at the stop
            settings = config.capture
            capture = CaptureWriter(settings.destination, endpoint_name, config.variant_name,
                                    sampling_percentage=settings.sampling_percentage,
                                    capture_input=settings.capture_input, capture_output=settings.capture_output,
                                    csv_types=settings.csv_types, json_types=settings.json_types)
            stack.callback(_close_capture, capture, flush_seconds)
            log.info("Capturing %d%% of invocations to %s", settings.sampling_percentage,
                     redact_url(settings.destination))
        app = EndpointApp(endpoint_name, config.variant_name, model, explanations=explanations, capture=capture,
                          verifier=verifier)
        stack.callback(app.failures.flush)  # the failed invocations not logged yet, counted
        try:
            server = EndpointServer((host, port), app, limits)
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        stack.callback(server.server_close)
        yield EndpointParts(server, app, capture)


def _close_capture(capture: Any, flush_seconds: float | None = None) -> None:
    """Write and publish what is queued, within ``flush_seconds`` (``$LUCENT_CAPTURE_FLUSH_SECONDS``): a
    destination that does not answer must not hold the stop for botocore's timeouts times its retries
    (what is not published by then is counted as dropped and logged)."""
    capture.close(flush_seconds)
    log.info("Capture flushed: %d record(s) written, %d dropped", capture.captured, capture.dropped)


def _fit_explainer_inputs(settings: ExplainerSettings) -> tuple[np.ndarray, list[str]]:
    """The baseline rows (inline ShapBaseline, or the file at ShapBaselineUri) and the feature names."""
    field = "ExplainerConfig.ClarifyExplainerConfig.ShapConfig.ShapBaselineConfig"
    text = settings.baseline if settings.baseline is not None else _read_baseline(settings.baseline_uri, field)
    try:
        # "one or more records in the same format as the model input" (spec 2.2): FeaturesAttribute applies.
        baseline = parse_records(text, settings.baseline_mime_type, feature_types=settings.inference.feature_types,
                                 features_attribute=settings.inference.features_attribute,
                                 what=f"{field}.{'ShapBaseline' if settings.baseline is not None else 'ShapBaselineUri'}")
    except UnicodeDecodeError as error:
        raise UserError(f"{field}.ShapBaselineUri: not UTF-8 text: {error}") from None
    headers = settings.inference.feature_headers
    if headers is not None and len(headers) != baseline.shape[1]:
        raise UserError(f"{field}: baseline records have {baseline.shape[1]} features but "
                        f"InferenceConfig.FeatureHeaders lists {len(headers)}")
    names = list(headers) if headers is not None else [f"feature_{j}" for j in range(baseline.shape[1])]
    return baseline, names


def _read_baseline(uri: str | None, field: str) -> str:
    assert uri is not None
    try:
        return read_bytes(uri).decode("utf-8")
    except StorageError as error:
        raise UserError(f"{field}.ShapBaselineUri: {error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{field}.ShapBaselineUri: not UTF-8 text: {error}") from None


def _fit_explanations(settings: ExplainerSettings, model: ModelContainer, model_url: str, timeout: float,
                      concurrency: int, stack: contextlib.ExitStack, default_io: bool = False,
                      inputs: tuple[np.ndarray, list[str]] | None = None) -> Explanations:
    """Parse the baseline, learn the container's answer type from one call, fit the explainer (the
    baseline's predictions are computed here, once)."""
    from analyzer.explain.online import OnlineShapSettings, fit_online_explainer

    baseline, names = inputs if inputs is not None else _fit_explainer_inputs(settings)
    probe_predictor = Predictor(content_type=settings.baseline_mime_type,
                                content_template=settings.inference.content_template)
    try:
        probe = serialize_records(baseline[:1], names, probe_predictor)
    except UserError as error:
        raise UserError(f"ExplainerConfig.ClarifyExplainerConfig.InferenceConfig: {error}") from None
    try:
        answer = model.invoke(probe, settings.baseline_mime_type, settings.baseline_mime_type)
    except Exception as error:
        raise UserError(f"the model container did not answer the baseline record: {error}") from None
    if not 200 <= answer.status < 300:
        raise UserError(f"the model container refused the baseline record (HTTP {answer.status}): "
                        f"{answer.body[:300].decode('utf-8', 'replace')}")
    score, client = build_score(model_url, settings, names, response_type_for(answer), timeout, concurrency,
                                default_io=default_io, numeric=baseline.dtype != object)
    stack.callback(client.close)
    shap = OnlineShapSettings(num_samples=settings.num_samples, seed=settings.seed, use_logit=settings.use_logit,
                              text_language=settings.text_language, text_granularity=settings.text_granularity,
                              feature_types=settings.inference.feature_types)
    try:
        explainer = fit_online_explainer(baseline, score, shap)
    except ValueError as error:
        raise UserError(f"ExplainerConfig.ClarifyExplainerConfig.ShapConfig: {error}") from None
    except (UserError, DependencyError) as error:  # the container refused or dropped the baseline rows
        raise UserError(f"scoring the SHAP baseline failed: {error}") from None
    log.info("Explainer fitted on %d baseline record(s) of %d feature(s)", baseline.shape[0], baseline.shape[1])
    return Explanations(settings, explainer)
