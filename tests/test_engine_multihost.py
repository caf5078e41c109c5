"""Multi-host processing jobs and spark-submit, for real: ``lucent run`` processes and pyspark's own
``spark-submit``, each job compared byte for byte with the local engine's run of the same inputs.

Two hosts are two ``lucent run`` processes on this machine's loopback (``algo-1`` on 127.0.0.1, ``algo-2``
on 127.0.0.2, through ``LUCENT_HOST_ADDRESSES``), each with its own ``resourceconfig.json`` and its own copy
of the processing root, as two instances of a processing job have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyzer.engines import ENGINE_ENV, SPARK_MASTER_ENV, SPARK_REMOTE_ENV
from analyzer.explain import shards
from container import cluster
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot
from tests.test_engine_cluster import free_port
from tests.test_engine_local import bias_frame
from tests.test_engine_spark import SHAP_FILES, write_bias_job
from tests.test_explain_job import linear_data, model_folder_job

pyspark = pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")

pytestmark = pytest.mark.slow
HOSTS = ["algo-1", "algo-2"]
ADDRESSES = "algo-1=127.0.0.1,algo-2=127.0.0.2"
JOB_TIMEOUT_S = 300  # two JVM daemons per host, a driver and two executors on a busy 2-core machine


@pytest.fixture(autouse=True)
def no_engine_settings(monkeypatch):
    for name in (ENGINE_ENV, SPARK_MASTER_ENV, SPARK_REMOTE_ENV, cluster.RESOURCE_CONFIG_ENV,
                 cluster.HOST_ADDRESSES_ENV, cluster.CLUSTER_PORT_ENV, cluster.CLUSTER_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)


def host_env(folder: Path, current: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of one host's ``lucent run``: its resourceconfig.json, the loopback addresses, one
    core and 1 GiB per worker (Spark's own SPARK_WORKER_* settings)."""
    config = folder / f"resourceconfig-{current}.json"
    config.write_text(json.dumps({"current_host": current, "hosts": HOSTS}))
    return {**os.environ, cluster.RESOURCE_CONFIG_ENV: str(config), cluster.HOST_ADDRESSES_ENV: ADDRESSES,
            cluster.CLUSTER_PORT_ENV: str(port), "SPARK_WORKER_CORES": "1", "SPARK_WORKER_MEMORY": "1g",
            "PYSPARK_PYTHON": sys.executable, **extra}


def start_host(root: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root", str(root)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])


def finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:  # stopped by its SIGTERM handler: its Spark daemons with it
            process.terminate()
            process.wait(timeout=60)


def shap_and_bias_job(root: Path) -> JobRoot:
    """SHAP in 6 shards (a model folder scored in each Spark task) and pre-training bias, one config."""
    job = JobRoot(root)
    model_folder_job(job, linear_data(n=30), {"num_clusters": 2, "num_samples": 20, "seed": 11})
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config.update(label_values_or_threshold=[0], facet=[{"name_or_index": "f0", "value_or_threshold": [0]}])
    config["methods"]["pre_training_bias"] = {"methods": "all"}
    job.write_config(config)
    return job


def test_two_hosts_leader_output_identical_to_the_local_engine(tmp_path, monkeypatch):
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "250")  # 6 shards of 5 records, on both engines
    reference = shap_and_bias_job(tmp_path / "local")
    leader_root, member_root = tmp_path / "algo-1", tmp_path / "algo-2"
    for root in (leader_root, member_root):  # every host gets the same inputs (FullyReplicated)
        shutil.copytree(reference.root, root)
    assert reference.run() == 0, reference.message
    port = free_port()
    member = start_host(member_root, host_env(tmp_path, "algo-2", port), tmp_path / "algo-2.log")
    leader = start_host(leader_root, host_env(tmp_path, "algo-1", port), tmp_path / "algo-1.log")
    leader_code = finish(leader, JOB_TIMEOUT_S)
    member_code = finish(member, 90)  # it notices the master is gone within a second or two
    leader_log, member_log = (tmp_path / "algo-1.log").read_text(), (tmp_path / "algo-2.log").read_text()
    assert leader_code == 0, leader_log[-4000:]
    assert member_code == 0, member_log[-4000:]
    for name in SHAP_FILES:
        assert (leader_root / "output" / name).read_bytes() == (reference.output_dir / name).read_bytes(), name
    assert JobRoot(member_root).output_files() == []  # only the leader writes the outputs
    assert (member_root / "message").read_text().strip() == (leader_root / "message").read_text().strip() \
        == SUCCESS_MESSAGE
    for line in ("This host is algo-1.", "This host is the leader.", "Number of hosts in the cluster is 2.",
                 "The Spark workers of all 2 hosts registered with spark://127.0.0.1:",
                 "Spark: 6 SHAP shards as Spark tasks"):
        assert line in leader_log
    assert f"session on spark://127.0.0.1:{port} started" in leader_log
    for line in ("This host is algo-2.", "This host is not the leader (algo-1 is).",
                 "Number of hosts in the cluster is 2.", "This host's Spark worker joined the leader's master"):
        assert line in member_log
    executors = int(member_log.split("the job is over (")[1].split()[0])
    assert executors >= 1  # the leader's job ran an executor on the other host


def test_a_host_whose_leader_never_starts_fails_naming_it(tmp_path):
    job = shap_and_bias_job(tmp_path / "algo-2")
    port = free_port()  # nothing listens there
    started = time.monotonic()
    process = start_host(job.root, host_env(tmp_path, "algo-2", port, **{cluster.CLUSTER_TIMEOUT_ENV: "3"}),
                         tmp_path / "algo-2.log")
    assert finish(process, 60) == 2, (tmp_path / "algo-2.log").read_text()
    assert time.monotonic() - started < 30
    assert job.message == (f"AlgorithmError: The leader algo-1 (127.0.0.1:{port}) did not start its Spark master "
                           f"within 3 s ({cluster.CLUSTER_TIMEOUT_ENV}); algo-2 had no cluster to join")
    assert job.output_files() == []


def test_one_host_logs_clarify_host_lines_and_runs_locally(job, tmp_path, monkeypatch, caplog):
    write_bias_job(job, "csv_header", bias_frame(200, seed=1))
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    monkeypatch.setenv(cluster.RESOURCE_CONFIG_ENV, str(config))
    assert job.run() == 0, job.message
    lines = [r.getMessage() for r in caplog.records if r.name == "lucent.cluster"]
    assert lines == ["This host is algo-1.", "This host is the leader.", "Number of hosts in the cluster is 1."]
    assert "Spark" not in caplog.text  # one host: the local engine, as before


@pytest.mark.parametrize(("document", "problem"), [
    ({"current_host": "algo-3", "hosts": HOSTS}, "current_host must be one of hosts"),
    ({"current_host": "algo-1", "hosts": []}, "hosts must be a non-empty list"),
    ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, "hosts lists a host twice"),
    ("[1, 2", "cannot read the cluster's hosts"),
])
def test_bad_resource_config_is_a_client_error_naming_the_file(job, tmp_path, monkeypatch, document, problem):
    write_bias_job(job, "csv_header", bias_frame(50, seed=1))
    config = tmp_path / "resourceconfig.json"
    config.write_text(document if isinstance(document, str) else json.dumps(document))
    monkeypatch.setenv(cluster.RESOURCE_CONFIG_ENV, str(config))
    assert job.run() == 1
    assert job.message.startswith(f"ClientError: {config}: {problem}")
    assert job.output_files() == []


def test_spark_submit_runs_the_job_with_its_own_master(job, tmp_path):
    write_bias_job(job, "csv_header", bias_frame(3000, seed=5))
    assert job.run() == 0, job.message
    local = job.analysis()
    reference = (job.output_dir / "analysis.json").read_bytes()
    shutil.rmtree(job.output_dir)
    home = Path(pyspark.__file__).parent
    driver = subprocess.run([sys.executable, "-m", "container.submit", "--driver-path"], check=True,
                            capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert Path(driver) == Path(__file__).parents[1] / "container" / "submit.py"
    # A master in the environment that would fail the job: spark-submit's must be the one used.
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable,
           SPARK_MASTER_ENV: "spark://127.0.0.1:9"}
    result = subprocess.run([str(home / "bin" / "spark-submit"), "--master", "local[2]", "--conf",
                             "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1", driver,
                             "--processing-root", str(job.root)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
                            cwd=tmp_path)  # spark-submit sends its Python driver's stderr to its stdout
    assert result.returncode == 0, result.stdout[-4000:]
    assert job.message == SUCCESS_MESSAGE
    assert (job.output_dir / "analysis.json").read_bytes() == reference
    assert job.analysis() == local
    assert "session on local[2] started" in result.stdout  # not the master in LUCENT_SPARK_MASTER
    assert "Spark: counted 3000 rows in " in result.stdout


def test_a_full_disk_on_a_host_is_the_users_error_as_on_one_host(job, tmp_path, monkeypatch):
    """A host of a multi-host job that runs out of disk says so (exit 1, ClientError naming the file), as a
    one-host job does; it was an internal error (exit 2). The full disk is injected: a real one cannot be
    made here."""
    import errno

    from container.job import JobPaths

    monkeypatch.setattr(cluster, "read_cluster", lambda: cluster.Cluster("algo-2", ("algo-1", "algo-2")))

    def out_of_space(*_args):
        raise OSError(errno.ENOSPC, "No space left on device", str(job.output_dir / "spark" / "block"))

    monkeypatch.setattr(cluster, "_run_member", out_of_space)
    assert cluster.run_host(JobPaths.for_root(job.root, job.root / "message")) == 1
    assert job.message.startswith("ClientError: cannot write ") and "No space left on device" in job.message
