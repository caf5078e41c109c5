"""What the Spark engine checks before it starts a JVM: a master URL Spark accepts, a SPARK_HOME with Spark
in it. Spark's own failures for these name its gateway or a missing file, not the setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from analyzer.engines.spark import SparkEngine, check_master_form, check_spark_home
from analyzer.errors import UserError


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local[4,2]", "local[*,3]",
                                    "local-cluster[2,1,1024]", "spark://h1:7077", "spark://h1:7077,h2:7077",
                                    "yarn", "k8s://https://api:6443", "sc://localhost:15002"])
def test_master_urls_spark_accepts_pass(master: str) -> None:
    check_master_form(master)


@pytest.mark.parametrize("master", ["bogus://x", "local[abc]", "local[2", "spark:/h:7077", "YARN "])
def test_other_masters_are_named_before_a_jvm_starts(master: str) -> None:
    with pytest.raises(UserError, match=r"is not a master URL Spark accepts: use local\[N\]") as raised:
        SparkEngine(master=master).session  # noqa: B018 -- the property starts the session
    assert repr(master) in str(raised.value)


def test_a_spark_home_without_spark_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPARK_HOME", str(tmp_path))
    with pytest.raises(UserError, match=rf"SPARK_HOME='{tmp_path}' has no bin/spark-submit"):
        check_spark_home()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "spark-submit").write_text("#!/bin/sh\n")
    check_spark_home()
    monkeypatch.delenv("SPARK_HOME")
    check_spark_home()


def test_the_session_start_wait_is_configurable(monkeypatch) -> None:
    """A JVM on a busy 2-core machine took 104 s to start; the wait (default START_TIMEOUT_S) is
    LUCENT_SPARK_START_SECONDS, checked before anything starts."""
    from analyzer.engines.spark import START_TIMEOUT_S, start_seconds

    monkeypatch.delenv("LUCENT_SPARK_START_SECONDS", raising=False)
    assert SparkEngine("local[2]").start_timeout == START_TIMEOUT_S >= 180
    monkeypatch.setenv("LUCENT_SPARK_START_SECONDS", "900")
    assert SparkEngine("local[2]").start_timeout == start_seconds() == 900.0
    for bad in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("LUCENT_SPARK_START_SECONDS", bad)
        with pytest.raises(UserError, match=rf"LUCENT_SPARK_START_SECONDS='{bad}': must be a positive number of seconds"):
            start_seconds()


LOOPBACK = {"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


@pytest.fixture
def no_user_spark_conf(monkeypatch, tmp_path):
    for name in ("PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT", "SPARK_LOCAL_IP", "SPARK_LOCAL_HOSTNAME", "MASTER",
                 "SPARK_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # an empty folder: no spark-defaults.conf
    return tmp_path


def test_a_local_session_listens_on_loopback_only_unless_the_user_says_otherwise(no_user_spark_conf, monkeypatch):
    """No Spark UI (unauthenticated, on every interface) and the driver on 127.0.0.1 for a local master;
    a setting of the user's own Spark configuration wins; a cluster's session gets none of them."""
    for master in ("local[2]", "local", "local[*]", None):
        assert LOOPBACK.items() <= SparkEngine(master).session_conf().items(), master
    for master in ("spark://h:7077", "yarn", "k8s://https://api:6443", "sc://localhost:15002"):
        assert not set(LOOPBACK) & set(SparkEngine(master).session_conf()), master
    assert SparkEngine("local[2]", conf={"spark.ui.enabled": "true"}).session_conf()["spark.ui.enabled"] == "true"
    (no_user_spark_conf / "spark-defaults.conf").write_text("# mine\nspark.driver.host   10.1.2.3\n"
                                                            "spark.ui.enabled=true\n")
    conf = SparkEngine("local[2]").session_conf()
    assert "spark.driver.host" not in conf and "spark.ui.enabled" not in conf
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    (no_user_spark_conf / "spark-defaults.conf").write_text("spark.master spark://h:7077\n")
    assert "spark.ui.enabled" not in SparkEngine(None).session_conf()  # the configured master is a cluster
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--conf spark.driver.bindAddress=0.0.0.0 pyspark-shell")
    assert SparkEngine("local[2]").session_conf()["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.bindAddress" not in SparkEngine("local[2]").session_conf()
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS")
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.1.2.3")  # Spark's own variable for the driver's address
    assert SparkEngine("local[2]").session_conf().items() >= {"spark.ui.enabled": "false"}.items()
    assert "spark.driver.host" not in SparkEngine("local[2]").session_conf()
    monkeypatch.delenv("SPARK_LOCAL_IP")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "41234")  # under spark-submit: its configuration is the user's
    assert not set(LOOPBACK) & set(SparkEngine("local[2]").session_conf())


def test_a_config_error_fails_before_the_jvm_starts(tmp_path) -> None:
    """Local files: the headers are read here, so a facet that is no column fails without a Spark session."""
    from analyzer.config import parse_config
    from tests.test_engine_local import BIAS_CONFIG, bias_frame

    (tmp_path / "data.csv").write_text(bias_frame(20).to_csv(index=False))
    engine = SparkEngine("local[1]")
    config = parse_config(dict(BIAS_CONFIG, facet=[{"name_or_index": "nationality"}]))
    with pytest.raises(UserError, match="nationality"):
        engine.count_table(config, tmp_path)
    assert engine._session is None


GIVE_UP_SCRIPT = """
from analyzer.engines.spark import SparkEngine
from analyzer.errors import DependencyError
try:
    SparkEngine("local[1]", start_timeout=2.0).session
except DependencyError as error:
    print(error)
"""


def processes_with(marker: str) -> list[int]:
    """The processes whose environment holds ``marker`` (this user's: their environ is readable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_session_start_given_up_on_leaves_no_jvm_behind(tmp_path) -> None:
    """The JVM of a session that did not start in time is stopped with the job, not left starting (it
    went on for 20-60 s after the job had exited)."""
    pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME") or not Path("/proc/self/environ").is_file():
        pytest.skip("needs Java and /proc")
    marker = f"LUCENT_TEST_GATEWAY={uuid.uuid4().hex}"
    env = {key: value for key, value in os.environ.items() if key not in ("PYSPARK_GATEWAY_PORT", "SPARK_HOME")}
    env["LUCENT_TEST_GATEWAY"] = marker.split("=")[1]
    output = tmp_path / "output.txt"  # a file, not a pipe: the JVM would hold a pipe open, and run() wait for it
    with output.open("w") as stream:
        subprocess.run([sys.executable, "-c", GIVE_UP_SCRIPT], env=env, cwd=Path(__file__).parents[1],
                       stdout=stream, stderr=subprocess.STDOUT, timeout=120)
    text = output.read_text()
    assert "The local Spark session (local[1]) did not start within 2 s" in text, text
    assert processes_with(marker) == []
