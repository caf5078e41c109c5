"""The Spark engine on ``local[2]``: the same job, run by the local engine and by Spark, writes the same
bytes (analysis.json for bias before and after training; out.csv, out_stderr.csv and analysis.json
for SHAP). One Spark session for the whole module.

Each comparison also checks that Spark did the work (its log lines and the number of groups), so
that a job quietly run by the local engine cannot pass.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.config import parse_config
from analyzer.engines import ENGINE_ENV, SPARK_MASTER_ENV, SPARK_REMOTE_ENV, adopt_engine, close_engines
from analyzer.errors import DataError
from analyzer.explain import shards
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot
from tests.test_engine_local import BIAS_CONFIG, bias_frame
from tests.test_explain_job import linear_data, model_folder_job

pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")

pytestmark = pytest.mark.slow
MASTER = "local[2]"


def spark_engine(master: str, **conf: str):
    """A Spark engine whose session the jobs of this module share (started once, stopped at the end).
    A local master's session is on loopback by the engine's own settings (``LOCAL_CONF``); a cluster's
    driver is put there too (the tests' masters and workers listen on loopback)."""
    from analyzer.engines.spark import SparkEngine

    loopback = {} if master.startswith("local") else {"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1"}
    engine = SparkEngine(master, conf={**loopback, "spark.sql.shuffle.partitions": "4",
                                       # several splits per file, in several partitions: the order of first
                                       # appearance must survive Spark's packing of splits by size
                                       "spark.sql.files.maxPartitionBytes": "16k", **conf})
    adopt_engine(engine, master)
    return engine


@pytest.fixture(scope="module")
def spark():
    engine = spark_engine(MASTER)
    yield engine
    close_engines()


@pytest.fixture(autouse=True)
def no_engine_settings(monkeypatch):
    for name in (ENGINE_ENV, SPARK_MASTER_ENV, SPARK_REMOTE_ENV):
        monkeypatch.delenv(name, raising=False)


def run_both(job: JobRoot, master: str, files: list[str], caplog: pytest.LogCaptureFixture) -> dict[str, bytes]:
    """Run ``job`` locally, then on Spark; assert both succeed with the same bytes in ``files``."""
    assert job.run() == 0, job.message
    local = {name: (job.output_dir / name).read_bytes() for name in files}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="analyzer.engines.spark"):
        assert job.run("--engine", "spark", "--spark-master", master) == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    for name in files:
        assert (job.output_dir / name).read_bytes() == local[name], name
    return local


def write_bias_job(job: JobRoot, layout: str, frame: pd.DataFrame) -> None:
    """The same rows as two CSV files with header rows, two header-less files, or two Parquet files."""
    config = dict(BIAS_CONFIG)
    halves = [frame.iloc[: len(frame) // 3], frame.iloc[len(frame) // 3:]]
    for i, part in enumerate(halves):
        if layout == "parquet":
            part = part.assign(sex=part["sex"].replace("", None))
            path = job.data_dir / f"part-{i}.parquet"
            part.reset_index(drop=True).to_parquet(path, index=False)
        else:
            job.write_data(part.to_csv(index=False, header=layout == "csv_header"), f"part-{i}.csv")
    if layout == "csv_headerless":
        config["headers"] = list(frame.columns)
    if layout == "parquet":
        config["dataset_type"] = "application/x-parquet"
    job.write_config(config)


@pytest.mark.parametrize("layout", ["csv_header", "csv_headerless", "parquet"])
def test_bias_pre_and_post_training_identical(spark, job, layout, caplog):
    frame = bias_frame(4000, seed=3)
    # Two values seen once each: "z" near the end of the first file (its last split, which Spark packs
    # after the second file's first splits, being smaller), then "w" at the start of the second file.
    frame.loc[len(frame) // 3 - 5, "sex"] = "z"
    frame.loc[len(frame) // 3 + 5, "sex"] = "w"
    write_bias_job(job, layout, frame)
    run_both(job, MASTER, ["analysis.json"], caplog)
    counted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Spark: counted")]
    assert len(counted) == 1 and counted[0].startswith("Spark: counted 4000 rows in ")
    groups = int(counted[0].split(" in ")[1].split()[0])
    assert 100 < groups < 4000  # grouped on the cluster: far fewer rows reach the driver
    analysis = job.analysis()
    assert set(analysis) == {"version", "pre_training_bias_metrics", "post_training_bias_metrics"}
    sex = analysis["pre_training_bias_metrics"]["facets"]["sex"]
    assert [entry["value_or_threshold"] for entry in sex] == ["m", "f", "nan", "z", "w"]  # order of first appearance


SHAP_FILES = ["analysis.json", "explanations_shap/out.csv", "explanations_shap/out_stderr.csv",
              "explanations_shap/baseline.csv"]


def shap_identical(job: JobRoot, master: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                   inference: str | None = None) -> None:
    """A sampled SHAP job in 6 shards (a model folder scored in each worker): same bytes on both engines.
    ``inference``: the model folder's ``code/inference.py``."""
    model_folder_job(job, linear_data(n=30), {"num_clusters": 2, "num_samples": 20, "seed": 11}, inference)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "250")  # (20 + 2) x 2 + 1 = 45 rows per record: 6 shards of 5
    run_both(job, master, SHAP_FILES, caplog)
    assert "Spark: 6 SHAP shards as Spark tasks" in caplog.text
    out = pd.read_csv(job.output_dir / "explanations_shap" / "out.csv")
    assert out.shape == (30, 6) and np.all(np.isfinite(out.to_numpy()))
    assert not (job.output_dir / ".lucent-work").exists()


def test_shap_shards_identical(spark, job, monkeypatch, caplog):
    shap_identical(job, MASTER, monkeypatch, caplog)


NAN_SCRIPT = """
import numpy as np

def predict_fn(data, model):
    scores = model.predict(data)
    scores[np.asarray(data)[:, 0] > 2.5] = np.nan   # only records with a large f0 fail
    return scores
"""


def test_model_error_in_a_spark_task_is_the_jobs_message(spark, job):
    data = linear_data(n=20)
    data.loc[11, "f0"] = 3.0
    model_folder_job(job, data, {"baseline": [[0.0] * 6]}, inference=NAN_SCRIPT)
    assert job.run("--engine", "spark", "--spark-master", MASTER) == 1
    assert job.message.startswith("ClientError: methods.shap:")
    assert "NaN" in job.message and "dataset row 11" in job.message
    for trace in ("Traceback", "py4j", "org.apache.spark", "PythonException"):
        assert trace not in job.message


def test_unsupported_input_names_the_key(spark, job):
    write_bias_job(job, "csv_header", bias_frame(100))
    config = dict(BIAS_CONFIG, dataset_type="application/json", features="features")
    job.write_config(config)
    assert job.run("--engine", "spark", "--spark-master", MASTER) == 1
    assert ("dataset_type: the Spark engine reads text/csv, application/jsonlines and application/x-parquet"
            in job.message), job.message


def test_spark_session_is_the_modules(spark):
    assert spark.session.conf.get("spark.speculation") == "false"
    assert spark.session.conf.get("spark.master") == MASTER
    assert Path(spark.session.conf.get("spark.pyspark.python")).name.startswith("python")


def listening_addresses(pid: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the TCP sockets ``pid`` listens on."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def test_a_local_session_listens_on_loopback_only(spark):
    """The engine's own settings for local[N] (the module's engine is given none): no Spark UI, the driver
    and its block manager on 127.0.0.1; the JVM listens on no other address."""
    conf = spark.session.conf
    assert conf.get("spark.ui.enabled") == "false" and spark.session.sparkContext.uiWebUrl is None
    assert conf.get("spark.driver.host") == conf.get("spark.driver.bindAddress") == "127.0.0.1"
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("no /proc to list the JVM's sockets")
    from pyspark import SparkContext

    addresses = listening_addresses(SparkContext._gateway.proc.pid)
    assert addresses, "the driver's JVM listens on nothing?"
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert addresses <= loopback, addresses  # not 00000000 (every interface) nor an external address


def test_csv_rows_with_another_number_of_fields_are_refused(spark, job):
    """A CSV row with more or fewer fields than there are headers fails the job on Spark with the local
    engine's message (Spark would cut it, or fill it with nulls); empty fields (sex "") are no such rows.
    Through a URI the file is named with the row itself."""
    write_bias_job(job, "csv_header", bias_frame(300, seed=2))
    part = job.data_dir / "part-1.csv"
    lines = part.read_text().splitlines()
    lines[4] += ",999"  # line 5: 7 fields
    lines[9] = lines[9].rsplit(",", 1)[0]  # line 10: 5 fields
    part.write_text("\n".join(lines) + "\n")
    assert job.run() == 1
    local = job.message
    assert "part-1.csv line 5 has 7 fields; " in local and "part-1.csv line 10 has 5 fields" in local, local
    assert job.run("--engine", "spark", "--spark-master", MASTER) == 1
    assert job.message == local
    with pytest.raises(DataError) as raised:
        spark.count_table(parse_config(BIAS_CONFIG), job.data_dir.as_uri())
    message = str(raised.value)
    assert message.startswith("2 rows have another number of fields than the dataset's 6 columns"), message
    assert f"part-1.csv: a row has 7 fields: {lines[4]!r}" in message
    assert f"part-1.csv: a row has 5 fields: {lines[9]!r}" in message


class Stopped(BaseException):
    """The test's stop request (the job's own is ``container.job.JobStopped``, raised by its SIGTERM handler)."""


def test_a_stop_request_interrupts_the_running_spark_job(spark):
    """SIGTERM while a Spark job runs (a wave of shards, the counts): the stop is raised at once and the
    job's task is interrupted, not handled once the job is over (it was, a whole wave later). The task
    holds a connection to the test's server; its Python worker ending closes it."""
    from analyzer.engines.spark_shards import interruptible

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def held(batches):  # a task that runs until it is interrupted (or the test's server gives up)
            import socket

            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.recv(1)
            yield from batches

        ended: list[bytes] = []
        sent: list[float] = []

        def stop_once_running() -> None:
            server.settimeout(120)
            connection, _ = server.accept()  # the task runs
            with connection:
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)  # to the process, as SageMaker's stop does
                connection.settimeout(30)
                try:
                    ended.append(connection.recv(1))  # b"": the task's worker is gone
                except TimeoutError:
                    ended.append(b"still running")

        def stop(signum, frame):
            raise Stopped

        previous = signal.signal(signal.SIGTERM, stop)
        watcher = threading.Thread(target=stop_once_running, daemon=True)
        try:
            watcher.start()
            frame = spark.session.range(1, numPartitions=1).mapInPandas(held, "id long")
            with pytest.raises(Stopped):
                interruptible(spark.session, frame.collect)
            assert time.monotonic() - sent[0] < 10  # at once (the task would hold the collect 30 s)
            watcher.join(60)
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert ended == [b""]
