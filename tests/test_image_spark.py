"""The Spark engine's image (`make image-spark`: the image built with LUCENT_EXTRAS=spark), for real: a
Java runtime and pyspark inside, and a job run with ``--engine spark --spark-master local[2]`` in the
container writes the same bytes as the local engine's run of the same job in the same image (and the
same numbers as on the host).

Uses test_container.py's container engine (skipped, with the reason, where it is absent).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from analyzer.explain import shards
from container.engine import remove_container
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot
from tests.test_container import REPO, assert_same_numbers, engine  # noqa: F401 - engine: a fixture
from tests.test_engine_multihost import shap_and_bias_job
from tests.test_engine_spark import SHAP_FILES

pytestmark = pytest.mark.slow

SPARK_IMAGE = "localhost/lucent-spark:test"
SHARD_ROWS = "250"  # 6 SHAP shards: several Spark tasks


@pytest.fixture(scope="session")
def spark_image(engine) -> str:  # noqa: F811 - the fixture imported above
    """The Spark image, built from this work tree on the local base image (as `make image-spark`)."""
    base = os.environ.get("LUCENT_BASE_IMAGE", "python:3.11-slim")
    engine.images.build(path=str(REPO), tag=SPARK_IMAGE, buildargs={"BASE_IMAGE": base, "LUCENT_EXTRAS": "spark"},
                        network_mode="host", rm=True)
    return SPARK_IMAGE


def run_job_in(engine, image: str, source: JobRoot, target: JobRoot, *args: str) -> tuple[int, str]:  # noqa: F811
    """``lucent run ARGS`` in the image on a copy of ``source``'s inputs (read-only), results in ``target``."""
    shutil.copytree(source.root / "input", target.root / "input", dirs_exist_ok=True)
    for folder in (target.output_dir, target.root / "message-dir"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # the image runs as the unprivileged user `lucent` (uid 1000)
    volumes = {str(target.root / "input"): {"bind": "/opt/ml/processing/input", "mode": "ro"},
               str(target.output_dir): {"bind": "/opt/ml/processing/output", "mode": "rw"},
               str(target.root / "message-dir"): {"bind": "/opt/ml/output", "mode": "rw"}}
    container = engine.containers.run(image, list(args), detach=True, volumes=volumes,
                                      environment={shards.SHARD_ROWS_ENV: SHARD_ROWS})
    try:
        code = container.wait(timeout=600)["StatusCode"]
        return code, container.logs().decode("utf-8", "replace")
    finally:
        remove_container(container)


def test_spark_job_in_the_image_matches_the_local_engine(engine, spark_image, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, SHARD_ROWS)
    host = shap_and_bias_job(tmp_path / "host")
    local, spark = JobRoot(tmp_path / "local"), JobRoot(tmp_path / "spark")
    code, logs = run_job_in(engine, spark_image, host, local)
    assert code == 0, logs
    code, spark_logs = run_job_in(engine, spark_image, host, spark, "--engine", "spark", "--spark-master", "local[2]")
    assert code == 0, spark_logs
    assert (spark.root / "message-dir" / "message").read_text().strip() == SUCCESS_MESSAGE
    assert "session on local[2] started" in spark_logs and "Spark: 6 SHAP shards as Spark tasks" in spark_logs
    for name in SHAP_FILES:  # Spark in the image writes the bytes the local engine writes there
        assert (spark.output_dir / name).read_bytes() == (local.output_dir / name).read_bytes(), name
    assert host.run() == 0, host.message  # and the numbers the host writes
    assert_same_numbers(json.loads((spark.output_dir / "analysis.json").read_text()), host.analysis())


def test_the_image_has_java_and_pyspark(engine, spark_image):  # noqa: F811
    out = engine.containers.run(spark_image, entrypoint=["/bin/sh", "-c"], remove=True,
                                command=["java -version 2>&1 | head -1; python -c 'import pyspark; print(pyspark.__version__)'"])
    first, version = out.decode().strip().splitlines()
    assert "17." in first
    assert version.split(".")[0] == "4"


def test_an_executor_pod_started_from_the_image_runs_a_drivers_tasks(engine, spark_image, tmp_path, monkeypatch):  # noqa: F811,E501
    """``spark.kubernetes.container.image``: Spark on Kubernetes starts executor pods from the image with
    the argument ``executor`` and the driver's coordinates in ``SPARK_*`` variables. Without a Kubernetes
    cluster here, the pod is the container started the same way, on the host's network, and the driver a
    session on a standalone master with no worker of its own: the only executor that can run its tasks is
    the one the image's entrypoint starts."""
    import pyspark
    from pyspark.sql import SparkSession

    from tests.test_engine_cluster import Daemon, free_port

    # The tasks' interpreter is the image's: PySpark takes it from PYSPARK_PYTHON, which an engine started
    # earlier in this process sets to this interpreter (a path that does not exist in the pod).
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/lucent/bin/python")
    env = {**os.environ, "SPARK_HOME": os.path.dirname(pyspark.__file__), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp_path / "logs")}
    port = free_port()
    master = Daemon("org.apache.spark.deploy.master.Master",
                    ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())], env)
    container = session = None
    try:
        master.wait_for("I have been elected leader")
        session = (SparkSession.builder.master(f"spark://127.0.0.1:{port}").appName("pod-test")
                   .config("spark.driver.host", "127.0.0.1").config("spark.driver.port", str(free_port()))
                   .config("spark.ui.enabled", "false")
                   .config("spark.pyspark.python", "/opt/lucent/bin/python")  # the image's Python, in the pod
                   .getOrCreate())
        context = session.sparkContext
        container = engine.containers.run(spark_image, ["executor"], detach=True, network_mode="host", environment={
            "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{context.getConf().get('spark.driver.port')}",
            "SPARK_EXECUTOR_ID": "1", "SPARK_EXECUTOR_CORES": "1", "SPARK_APPLICATION_ID": context.applicationId,
            "SPARK_EXECUTOR_POD_IP": "127.0.0.1", "SPARK_RESOURCE_PROFILE_ID": "0",
            "SPARK_EXECUTOR_POD_NAME": "lucent-exec-1", "SPARK_EXECUTOR_MEMORY": "600m"})

        def where(batches):
            import sys as task_sys

            import pandas as task_pd

            for batch in batches:
                yield task_pd.DataFrame({"id": batch["id"], "python": task_sys.executable})

        rows = session.range(6).mapInPandas(where, "id long, python string").collect()
        assert sorted(row["id"] for row in rows) == list(range(6))
        pythons = {row["python"] for row in rows}
        assert len(pythons) == 1 and pythons.pop().startswith("/opt/lucent/bin/python")  # in the pod, not here
    finally:
        logs = container.logs().decode("utf-8", "replace") if container is not None else ""
        if session is not None:
            session.stop()
        if container is not None:
            remove_container(container)
        master.stop()
    assert "Successfully registered with driver" in logs, logs[-3000:]


def run_to_end(engine, image: str, args: list[str], environment: dict[str, str]) -> tuple[int, str]:  # noqa: F811
    """Run ``image ARGS`` to its end: (exit status, its output)."""
    container = engine.containers.run(image, args, detach=True, environment=environment)
    try:
        return container.wait(timeout=120)["StatusCode"], container.logs().decode("utf-8", "replace")
    finally:
        remove_container(container)


def test_an_executor_pod_without_the_drivers_variables_says_which(engine, spark_image):  # noqa: F811
    code, logs = run_to_end(engine, spark_image, ["executor"], {"SPARK_EXECUTOR_ID": "1"})
    assert code == 1
    assert "an executor pod needs SPARK_DRIVER_URL, SPARK_EXECUTOR_CORES" in logs, logs


def test_a_driver_pod_started_from_the_image_is_spark_submit_in_client_mode(engine, spark_image):  # noqa: F811
    code, logs = run_to_end(engine, spark_image, ["driver", "--version"], {"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1"})
    assert code == 0
    assert "version 4." in logs, logs  # spark-submit's own banner: the role reached pyspark's spark-submit
