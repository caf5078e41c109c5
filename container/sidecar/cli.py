"""``lucent serve-model``: serve a model folder over SageMaker's model-container HTTP contract.

Also runnable as ``python -m container.sidecar``; :func:`main` takes the arguments after the
subcommand name, so the ``lucent`` CLI can delegate to it unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analyzer.errors import UserError
from analyzer.logs import ThirdPartyFilter, add_log_arguments, level_from_args
from container.sidecar.errors import ModelServerError
from container.sidecar.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SEND_TIMEOUT_S,
    MAX_BODY_VARIABLE,
    MIB,
    SAGEMAKER_MAX_BODY_BYTES,
    RequestLimits,
    default_max_body_bytes,
    mb_to_bytes,
)
from container.sidecar.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOST_VARIABLE,
    MAX_PORT,
    cpu_count,
    default_host,
    default_port,
    default_timeout,
    default_workers,
    serve,
)

DESCRIPTION = """\
Serve a model folder the way a SageMaker model container does: GET /ping, POST /invocations
(text/csv, application/jsonlines, application/json, application/x-npy).

The folder is what SageMaker extracts to /opt/ml/model (or the model.tar.gz itself):
  code/inference.py      optional handlers model_fn / input_fn / predict_fn / output_fn
  model.joblib | *.pkl   a scikit-learn model (or xgboost-model, *.json/*.ubj XGBoost, *.txt LightGBM)

Each worker receives a request in full before running it, so slow clients cost no worker time;
a body over --max-body-mb is answered 413 before it is read, late headers or bodies get 408.
"""


def build_parser(prog: str = "lucent serve-model") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"), metavar="DIR",
                        help="model folder or model.tar.gz (default: /opt/ml/model)")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help=f"port to listen on (default: $SAGEMAKER_BIND_TO_PORT, else {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--host", help=f"address to listen on (default: ${HOST_VARIABLE}, else {DEFAULT_HOST}: "
                                       f"this machine only; the Lucent image sets {HOST_VARIABLE}=0.0.0.0)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"worker processes (default: $SAGEMAKER_MODEL_SERVER_WORKERS, else one per core: "
                             f"{cpu_count()} here)")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="seconds one request may take before its worker is restarted "
                             "(default: $SAGEMAKER_MODEL_SERVER_TIMEOUT, else 300)")
    parser.add_argument("--max-body-mb", metavar="MB",
                        help=f"largest request body in MB of 1,048,576 bytes; larger ones get 413 before they are "
                             f"read (default: ${MAX_BODY_VARIABLE}, else {SAGEMAKER_MAX_BODY_BYTES // MIB} "
                             "as SageMaker)")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="SECONDS",
                        help="seconds from a connection to the end of its request headers, else 408 "
                             f"(default: {DEFAULT_HEADER_TIMEOUT_S:g})")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="SECONDS",
                        help="seconds from the headers to the end of the request body, else 408 "
                             f"(default: {DEFAULT_BODY_TIMEOUT_S:g})")
    parser.add_argument("--send-timeout", type=float, default=DEFAULT_SEND_TIMEOUT_S, metavar="SECONDS",
                        help="seconds for a client to read its response, sent in the background meanwhile; "
                             f"then the connection is closed (default: {DEFAULT_SEND_TIMEOUT_S:g})")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="connections each worker holds while their requests arrive; one more closes the "
                             f"oldest incomplete one (default: {DEFAULT_MAX_CONNECTIONS})")
    # Internal: how start_model_server hands over the socket it bound, its own pid and the pipe on which
    # workers report that they have loaded the model.
    add_log_arguments(parser)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 1
    try:
        limits = _limits(args)
        # The settings read from the environment, checked before anything starts (a bad one is an
        # error line naming the variable, not a traceback from inside the server).
        port = default_port() if args.port is None else args.port
        workers = default_workers() if args.workers is None else args.workers
        timeout = default_timeout() if args.timeout is None else args.timeout
    except (ValueError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    level = level_from_args(args)  # a bad $LUCENT_LOG_LEVEL exits here with a line naming it
    # gunicorn's own format (with the worker's pid), at the level asked for; other libraries' lines from
    # WARNING up, as in every Lucent command (analyzer.logs).
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(ThirdPartyFilter(level))
    try:
        return serve(args.model_dir, host=args.host or default_host(), port=port, workers=workers,
                     timeout=timeout, limits=limits, listen_fd=args.listen_fd, parent_pid=args.parent_pid,
                     ready_fd=args.ready_fd, log_level=level)
    except ModelServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _limits(args: argparse.Namespace) -> RequestLimits:
    """The request limits from the options (ValueError naming the option when one is out of range)."""
    max_body = default_max_body_bytes() if args.max_body_mb is None else mb_to_bytes(args.max_body_mb, "--max-body-mb")
    for option, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout),
                          ("--send-timeout", args.send_timeout)):
        if not 0 < value < 1e6:
            raise ValueError(f"{option} must be more than 0 seconds, got {value:g}")
    if args.port is not None and not 0 <= args.port <= MAX_PORT:
        raise ValueError(f"--port must be from 0 to {MAX_PORT} (0: any free port), got {args.port}")
    if args.timeout is not None and args.timeout < 1:
        raise ValueError(f"--timeout must be at least 1 second, got {args.timeout}")
    if args.max_connections < 1:
        raise ValueError(f"--max-connections must be at least 1, got {args.max_connections}")
    return RequestLimits(max_body, args.header_timeout, args.body_timeout, args.max_connections, args.send_timeout)
