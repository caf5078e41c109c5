"""What the Spark engine checks before it starts a JVM: a master URL Spark accepts, a SPARK_HOME with Spark
in it. Spark's own failures for these name its gateway or a missing file, not the setting."""

from __future__ import annotations

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
