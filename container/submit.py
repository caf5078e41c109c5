"""The job's driver for ``spark-submit``: the cluster you already run (YARN, Kubernetes, standalone, EMR).

    spark-submit --master yarn "$(python -m container.submit --driver-path)" --processing-root ./job

``spark-submit`` runs this file as the application's Python driver with the arguments after it (those of
``lucent run``). The job runs on the Spark engine, and its session's master is the one ``spark-submit``
configured (``--master``, ``spark-defaults.conf``): ``LUCENT_SPARK_MASTER`` is ignored here, and
``--spark-master`` only overrides it when given. Every host's hosts file (``resourceconfig.json``) is
ignored too: the cluster is spark-submit's, so no Spark daemon is started. Exit code and exit message as
``lucent run``'s. See docs/spark.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a file (spark-submit's way), Python puts this folder first on sys.path, where a module named
    # like a standard one would shadow it: the package is imported from where it is installed instead.
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]

DRIVER_PATH_FLAG = "--driver-path"


def main(argv: list[str] | None = None) -> int:
    """``lucent run`` on the Spark engine with spark-submit's master; ``--driver-path`` prints this file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == [DRIVER_PATH_FLAG]:
        print(Path(__file__).resolve())
        return 0
    from analyzer.engines import SPARK_MASTER_ENV, engine_arguments
    from analyzer.environment import environment_set
    from analyzer.logs import level_from_args
    from container.cli import build_parser
    from container.job import JobPaths, configure_logging, run_job

    parser = build_parser()
    parser.prog = "spark-submit container/submit.py"
    args = parser.parse_args(["run", *argv])
    if args.engine == "local":
        parser.error("--engine local: under spark-submit the job runs on Spark (run `lucent run` instead)")
    configure_logging(level=level_from_args(args))
    paths = JobPaths.for_root(args.processing_root, args.message_file)
    with environment_set({SPARK_MASTER_ENV: ""}), engine_arguments("spark", args.spark_master):
        return run_job(paths, allow_paths_outside_root=args.allow_paths_outside_root)


if __name__ == "__main__":
    sys.exit(main())
