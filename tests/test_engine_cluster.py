"""The Spark engine on a real standalone cluster: a master and two worker processes (one core each),
started by this module with pyspark's own ``spark-class`` on loopback, stopped at its end. A job run on
the cluster writes the same bytes as the local engine's run of the same job.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from analyzer.engines import close_engines
from tests.test_engine_local import bias_frame
from tests.test_engine_spark import (  # noqa: F401 - no_engine_settings: an autouse fixture here too
    no_engine_settings,
    run_both,
    shap_identical,
    spark_engine,
    write_bias_job,
)

pyspark = pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 90  # JVM start on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Daemon:
    """A Spark daemon (``spark-class <main class> ...``) whose log lines are read as they come."""

    def __init__(self, main_class: str, args: list[str], env: dict[str, str]):
        spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
        self.process = subprocess.Popen([str(spark_class), main_class, *args], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        """Block until a log line contains ``text`` (the daemon's own readiness message)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout} s; log:\n" + "".join(self.log[-30:])) from None
            if line is None:
                raise AssertionError("the daemon exited; log:\n" + "".join(self.log[-30:]))
            self.log.append(line)
            if text in line:
                return

    def stop(self) -> None:
        """Stop the daemon and the executors it started (its own process group, by its id)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(work / "logs"), "SPARK_WORKER_DIR": str(work / "workers"),
           "PYSPARK_PYTHON": sys.executable}
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    daemons = [Daemon("org.apache.spark.deploy.master.Master",
                      ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())], env)]
    try:
        daemons[0].wait_for("I have been elected leader")
        for _ in range(2):
            daemons.append(Daemon("org.apache.spark.deploy.worker.Worker",
                                  [url, "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                   "--webui-port", str(free_port()), "--work-dir", str(work / "workers")], env))
        for worker in daemons[1:]:
            worker.wait_for("Successfully registered with master")
        engine = spark_engine(url, **{"spark.executor.memory": "700m", "spark.cores.max": "2"})
        yield url, engine
    finally:
        close_engines()
        for daemon in reversed(daemons):
            daemon.stop()


def test_bias_on_two_workers_identical(cluster, job, caplog):
    url, engine = cluster
    write_bias_job(job, "csv_header", bias_frame(4000, seed=4))
    run_both(job, url, ["analysis.json"], caplog)
    assert "Spark: counted 4000 rows" in caplog.text
    assert engine.session.conf.get("spark.master") == url


def test_shap_on_two_workers_identical(cluster, job, monkeypatch, caplog):
    url, _ = cluster
    shap_identical(job, url, monkeypatch, caplog)


# The Python worker scoring a shard's first attempt kills itself by its PID (SIGKILL: no cleanup, no
# answer), as an executor that runs out of memory or is killed by the operating system does. Only inside a
# Spark task (the local engine's run is the reference) and only its first attempt.
KILLED_ONCE = """
import os
import signal

import joblib


MODEL_DIR = None


def model_fn(model_dir):
    global MODEL_DIR
    MODEL_DIR = model_dir
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    try:
        from pyspark import TaskContext
    except ImportError:
        TaskContext = None
    task = TaskContext.get() if TaskContext is not None else None
    if task is not None and task.partitionId() == 2 and task.attemptNumber() == 0 and len(data) > 1:
        with open(os.path.join(MODEL_DIR, f"killed-{os.getpid()}"), "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return model.predict(data)
"""


def test_a_worker_killed_mid_shap_is_retried_and_the_output_is_identical(cluster, job, monkeypatch, caplog):
    url, _ = cluster
    shap_identical(job, url, monkeypatch, caplog, inference=KILLED_ONCE)
    killed = [int(p.name.split("-")[1]) for p in (job.root / "input" / "model").glob("killed-*")]
    assert len(killed) == 1 and killed[0] != os.getpid()  # one Python worker died, and it was not this one
