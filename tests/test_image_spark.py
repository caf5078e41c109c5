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
        container.remove(force=True)


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
