"""``lucent serve-model``: serve a model folder over SageMaker's model-container HTTP contract.

Also runnable as ``python -m container.sidecar``; :func:`main` takes the arguments after the
subcommand name, so the ``lucent`` CLI can delegate to it unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from container.sidecar.errors import ModelServerError
from container.sidecar.server import DEFAULT_PORT, default_workers, serve

DESCRIPTION = """\
Serve a model folder the way a SageMaker model container does: GET /ping, POST /invocations
(text/csv, application/jsonlines, application/json, application/x-npy).

The folder is what SageMaker extracts to /opt/ml/model (or the model.tar.gz itself):
  code/inference.py      optional handlers model_fn / input_fn / predict_fn / output_fn
  model.joblib | *.pkl   a scikit-learn model (or xgboost-model, *.json/*.ubj XGBoost, *.txt LightGBM)
"""


def build_parser(prog: str = "lucent serve-model") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"), metavar="DIR",
                        help="model folder or model.tar.gz (default: /opt/ml/model)")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help=f"port to listen on (default: $SAGEMAKER_BIND_TO_PORT, else {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"worker processes (default: $SAGEMAKER_MODEL_SERVER_WORKERS, else one per core: "
                             f"{default_workers()} here)")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="seconds one request may take before its worker is restarted "
                             "(default: $SAGEMAKER_MODEL_SERVER_TIMEOUT, else 300)")
    # Internal: how start_model_server hands over the socket it bound, its own pid and the pipe on which
    # workers report that they have loaded the model.
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
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    try:
        return serve(args.model_dir, host=args.host, port=args.port, workers=args.workers, timeout=args.timeout,
                     listen_fd=args.listen_fd, parent_pid=args.parent_pid, ready_fd=args.ready_fd)
    except ModelServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
