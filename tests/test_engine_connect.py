"""The Spark engine over Spark Connect (``sc://``, what Databricks and Spark 4 clusters offer): a Spark
Connect server (pyspark's own jars, ``SparkSubmit --class ...SparkConnectServer`` on ``local[2]``) started
by this module on loopback and stopped at its end. A Connect client has no ``sparkContext`` and no RDDs,
so a job that runs here uses the DataFrame API only; it writes the same bytes as the local engine's run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from analyzer.engines import close_engines
from tests.test_engine_cluster import Daemon, free_port
from tests.test_engine_local import bias_frame
from tests.test_engine_spark import (  # noqa: F401 - no_engine_settings: an autouse fixture here too
    no_engine_settings,
    run_both,
    shap_identical,
    spark_engine,
    write_bias_job,
)

pyspark = pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")
pytest.importorskip("grpc", reason="the Spark Connect client needs grpcio (pip install lucent[spark])")

pytestmark = pytest.mark.slow


def connect_server(work: Path, *conf: str) -> tuple[Daemon, str]:
    """A Spark Connect server on ``local[2]``, listening on 127.0.0.1, ready; ``conf``: more ``key=value``."""
    env = {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(work / "logs"), "PYSPARK_PYTHON": sys.executable}
    port = free_port()
    settings = ["spark.connect.grpc.binding.address=127.0.0.1", f"spark.connect.grpc.binding.port={port}",
                "spark.ui.enabled=false", "spark.sql.shuffle.partitions=4", *conf]
    server = Daemon("org.apache.spark.deploy.SparkSubmit",
                    ["--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", "local[2]",
                     *(part for setting in settings for part in ("--conf", setting)), "spark-internal"], env)
    try:
        server.wait_for("Spark Connect server started")
    except BaseException:
        server.stop()
        raise
    return server, f"sc://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def connect(tmp_path_factory):
    server, url = connect_server(tmp_path_factory.mktemp("spark-connect"))
    try:
        yield url, spark_engine(url)
    finally:
        close_engines()
        server.stop()


def test_bias_over_spark_connect_identical(connect, job, caplog):
    url, engine = connect
    write_bias_job(job, "csv_header", bias_frame(4000, seed=5))
    run_both(job, url, ["analysis.json"], caplog)
    assert "Spark: counted 4000 rows" in caplog.text
    assert type(engine.session).__module__.startswith("pyspark.sql.connect")  # a Connect client session


def test_shap_over_spark_connect_identical(connect, job, monkeypatch, caplog):
    url, _ = connect
    shap_identical(job, url, monkeypatch, caplog)


def test_a_server_that_may_run_a_shard_twice_is_refused(tmp_path, job):
    """Speculative execution would score a shard twice; a Connect client cannot turn it off, so it must be
    off on the server: a server started with it on fails the job, saying so."""
    close_engines()  # this test's own engine, on its own server
    server, url = connect_server(tmp_path, "spark.speculation=true")
    try:
        write_bias_job(job, "csv_header", bias_frame(200, seed=6))
        assert job.run("--engine", "spark", "--spark-master", url) == 1
        assert "spark.speculation=true" in job.message and url in job.message
    finally:
        close_engines()
        server.stop()
