"""The image's entrypoint: ``lucent run`` (a processing job), a model server, or the roles Spark on
Kubernetes gives a pod.

The image is a SageMaker processing container first: ``docker run IMAGE [ARGS]`` is ``lucent run [ARGS]``,
as before. It is also a SageMaker *model* container: SageMaker hosting starts one with the single argument
``serve``, which is ``lucent serve-model`` (the model in ``/opt/ml/model``, on ``$SAGEMAKER_BIND_TO_PORT`` or
8080; the image sets ``LUCENT_HOST=0.0.0.0``), so a model image built ``FROM`` this one is served as is. A
first argument that names a ``lucent`` subcommand (``serve-model``, ``endpoint``, ``validate``, ...) runs
that subcommand. Built with the Spark extra (``make image-spark``) it is also usable as
``spark.kubernetes.container.image``: Spark starts its driver and executor pods from that image with the
first argument ``driver`` or ``executor`` and the rest in environment variables, and expects the image's
entrypoint to start them as Spark's own images do (Spark's ``entrypoint.sh``):

* ``driver ARGS``: ``spark-submit --conf spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS
  --deploy-mode client ARGS``;
* ``executor``: the JVM of ``KubernetesExecutorBackend``, given the driver's URL, the executor's id,
  cores, application id, address, resource profile and pod name from ``SPARK_*`` variables, its heap
  from ``SPARK_EXECUTOR_MEMORY`` and the driver's JVM options from ``SPARK_JAVA_OPT_<n>``.

Spark's home is the installed pyspark package (its ``bin/`` scripts and ``jars/``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

# `lucent` subcommands a first argument passes through to (tests/test_entrypoint_roles.py checks this list
# against container.cli's parser); any other arguments are `lucent run`'s.
LUCENT_COMMANDS = ("run", "validate", "serve-model", "endpoint", "launch", "monitor", "schedule")
SERVE = "serve"  # what SageMaker hosting passes to a model container
EXECUTOR_CLASS = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
# (argument, variable) pairs Spark's driver sets on an executor pod; all are required.
EXECUTOR_ARGUMENTS = (("--driver-url", "SPARK_DRIVER_URL"), ("--executor-id", "SPARK_EXECUTOR_ID"),
                      ("--cores", "SPARK_EXECUTOR_CORES"), ("--app-id", "SPARK_APPLICATION_ID"),
                      ("--hostname", "SPARK_EXECUTOR_POD_IP"), ("--resourceProfileId", "SPARK_RESOURCE_PROFILE_ID"),
                      ("--podName", "SPARK_EXECUTOR_POD_NAME"))


def executor_command(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start a Kubernetes executor's JVM (``spark-class`` adds Java 17's
    module options and Spark's class path); ``SystemExit`` naming what is missing."""
    from container.cluster import spark_home

    missing = [name for _, name in EXECUTOR_ARGUMENTS if not env.get(name)]
    if missing:
        raise SystemExit(f"lucent image: an executor pod needs {', '.join(missing)} (set by Spark's driver on "
                         "Kubernetes)")
    home = spark_home()
    options = [env[name] for name in sorted((n for n in env if n.startswith("SPARK_JAVA_OPT_")),
                                            key=lambda n: int(n.rsplit("_", 1)[1]) if n.rsplit("_", 1)[1].isdigit() else 0)]
    launch_env = {**env, "SPARK_HOME": str(home), "SPARK_JAVA_OPTS": " ".join(options)}
    if env.get("SPARK_EXECUTOR_MEMORY"):  # spark-class sizes a class it does not know by the driver's key
        launch_env["SPARK_DRIVER_MEMORY"] = env["SPARK_EXECUTOR_MEMORY"]
    command = [str(home / "bin" / "spark-class"), EXECUTOR_CLASS]
    for argument, name in EXECUTOR_ARGUMENTS:
        command += [argument, env[name]]
    return command, launch_env


def driver_command(args: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``spark-submit`` command of a Kubernetes driver pod (client mode inside the pod)."""
    from container.cluster import spark_home

    home = spark_home()
    command = [str(home / "bin" / "spark-submit")]
    if env.get("SPARK_DRIVER_BIND_ADDRESS"):
        command += ["--conf", f"spark.driver.bindAddress={env['SPARK_DRIVER_BIND_ADDRESS']}"]
    return [*command, "--deploy-mode", "client", *args], {**env, "SPARK_HOME": str(home)}


def lucent_arguments(args: Sequence[str]) -> list[str]:
    """The ``lucent`` command line for the image's arguments: ``serve [OPTIONS]`` is ``serve-model
    [OPTIONS]``, a ``lucent`` subcommand is itself, anything else (none included) is ``run ARGS``."""
    args = list(args)
    if args[:1] == [SERVE]:
        return ["serve-model", *args[1:]]
    if args and args[0] in LUCENT_COMMANDS:
        return args
    return ["run", *args]


def main(argv: Sequence[str] | None = None) -> int:
    """``lucent run ARGS``, ``serve`` (the model server), a ``lucent`` subcommand, or a Spark pod's role
    (module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    role = args[0] if args else None
    if role in ("driver", "executor"):
        command, env = driver_command(args[1:], os.environ) if role == "driver" else executor_command(os.environ)
        sys.stdout.flush()
        os.execvpe(command[0], command, env)  # the pod is the JVM from here on
    from container.cli import main as lucent

    return lucent(lucent_arguments(args), program=argv is None)


if __name__ == "__main__":
    sys.exit(main())
