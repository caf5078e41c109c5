"""The engine seam without a JVM: choosing the engine, weighted counts, and the Spark engine's errors.

The weighted-counts test is the seam's oracle: grouping the rows by hand (pandas) into one row per
distinct combination of role values with its count must give byte-identical bias reports to the rows
themselves, whatever engine did the grouping.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import bias_analysis
from analyzer.config import parse_config
from analyzer.config.model import POST_TRAINING_METRICS
from analyzer.data import Column
from analyzer.engines import (
    ENGINE_ENV,
    SPARK_MASTER_ENV,
    SPARK_REMOTE_ENV,
    GroupedRows,
    LocalEngine,
    WeightedColumn,
    close_engines,
    counted_rows,
    engine_arguments,
    engine_choice,
    job_engine,
    row_weights,
)
from analyzer.engines.spark import check_java, check_master_reachable, import_pyspark, master_addresses
from analyzer.errors import UserError
from tests.conftest import JobRoot

BIAS_CONFIG = {
    "dataset_type": "text/csv", "label": "y", "predicted_label": "yhat", "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "sex"}, {"name_or_index": "age", "value_or_threshold": [40]}],
    "group_variable": "g",
    "methods": {"pre_training_bias": {"methods": "all"},
                "post_training_bias": {"methods": [m for m in POST_TRAINING_METRICS if m != "FT"]}},
}  # every metric but the Flip Test, the one that needs the feature rows


def bias_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Role columns with missing values, numbers, strings and a skewed label."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(18, 80, n), "sex": rng.choice(["m", "f", ""], n, p=[0.5, 0.45, 0.05]),
        "x": rng.normal(size=n).round(3), "y": (rng.random(n) < 0.3).astype(int),
        "yhat": rng.integers(0, 2, n), "g": rng.choice(["a", "b", "c"], n)})


@pytest.fixture(autouse=True)
def no_engine_settings(monkeypatch):
    for name in (ENGINE_ENV, SPARK_MASTER_ENV, SPARK_REMOTE_ENV):
        monkeypatch.delenv(name, raising=False)
    yield
    close_engines()


def config_with(lucent: object = None):
    raw = dict(BIAS_CONFIG)
    config = parse_config(raw)
    if lucent is not None:  # the schema does not know the key yet: set it as the parser would keep it
        config.raw["lucent"] = lucent
    return config


def test_engine_choice_order(monkeypatch):
    assert engine_choice(config_with()).name == "local"
    assert engine_choice(None).name == "local"
    chosen = engine_choice(config_with({"engine": "Spark", "spark_master": "local[2]"}))
    assert (chosen.name, chosen.master, chosen.source) == ("spark", "local[2]", "lucent.engine")
    monkeypatch.setenv(SPARK_REMOTE_ENV, "sc://h:15002")
    assert engine_choice(config_with()) == engine_choice(None)
    assert (engine_choice(None).name, engine_choice(None).master) == ("spark", "sc://h:15002")
    monkeypatch.setenv(ENGINE_ENV, "local")  # the flag / environment wins over the file and SPARK_REMOTE
    assert engine_choice(config_with({"engine": "spark"})).name == "local"
    monkeypatch.setenv(ENGINE_ENV, "spark")
    monkeypatch.setenv(SPARK_MASTER_ENV, "spark://m:7077")
    assert engine_choice(config_with({"spark_master": "local[2]"})).master == "spark://m:7077"


@pytest.mark.parametrize(("env", "lucent", "fragments"), [
    ("dask", None, [ENGINE_ENV, "'dask'", "local, spark"]),
    (None, {"engine": "ray"}, ["lucent.engine", "'ray'"]),
    (None, "spark", ["'lucent'", "must be an object"]),
    (None, {"engine": "spark", "spark_master": 7077}, ["lucent.spark_master", "7077"]),
])
def test_bad_engine_settings_name_the_key(monkeypatch, env, lucent, fragments):
    if env is not None:
        monkeypatch.setenv(ENGINE_ENV, env)
    with pytest.raises(UserError) as error:
        engine_choice(config_with(lucent))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_engine_arguments_last_for_the_run_only(monkeypatch):
    monkeypatch.setenv(SPARK_MASTER_ENV, "spark://before:7077")
    with engine_arguments("spark", None):
        assert engine_choice(None).master == "spark://before:7077"
        with engine_arguments(None, "local[2]"):
            assert engine_choice(None).master == "local[2]"
        assert engine_choice(None).master == "spark://before:7077"
    assert engine_choice(None).name == "local"
    assert isinstance(job_engine(None), LocalEngine) and job_engine(None) is job_engine(config_with())


def grouped_by_hand(frame: pd.DataFrame, roles: list[str]) -> GroupedRows:
    """One row per distinct combination of role values, in order of first appearance, with its count."""
    keys = frame[roles].astype(str)
    first = keys.drop_duplicates()
    counts = keys.value_counts(sort=False)
    weights = np.array([counts[tuple(row)] for row in first.itertuples(index=False)], dtype=np.int64)
    rows = frame.loc[first.index].reset_index(drop=True)
    rows["sex"] = rows["sex"].replace("", np.nan)
    column = {name: WeightedColumn.weighted(Column.from_series(rows[name], name), weights) for name in roles}
    return GroupedRows(source="by hand", n_rows=len(frame), headers=list(frame.columns), feature_names=["age", "sex", "x", "g"],
                       label=column["y"], predicted_label=column.get("yhat"),
                       facets={name: column[name] for name in ("sex", "age") if name in column},
                       group=column.get("g"), weights=weights)


@pytest.mark.parametrize("stage", ["pre_training", "post_training"])
def test_grouped_rows_with_weights_give_the_rows_reports(tmp_path, stage):
    frame = bias_frame()
    (tmp_path / "data.csv").write_text(frame.to_csv(index=False))
    config = parse_config(BIAS_CONFIG)
    rows = LocalEngine().count_table(config, tmp_path / "data.csv")
    assert rows.n_rows == len(frame) and rows.features is None
    expected = json.dumps(bias_analysis(rows, config, stage))
    grouped = grouped_by_hand(frame, ["y", "yhat", "sex", "age", "g"])
    assert len(grouped.weights) < len(frame) / 2  # the test groups for real
    with counted_rows(grouped):
        assert json.dumps(bias_analysis(grouped, config, stage)) == expected
    # Without the weights each combination counts once: the counts (and so the values) differ.
    assert json.dumps(bias_analysis(grouped, config, stage)) != expected


def test_column_typing_counts_the_rows_not_the_groups(tmp_path):
    """age has 62 values in 3,000 rows (uniqueness 0.02: categorical, threshold 40 is a value), but in
    only ~120 groups of (y, age): uniqueness must be computed over the rows, not the groups."""
    frame = bias_frame()
    (tmp_path / "data.csv").write_text(frame.to_csv(index=False))
    config = parse_config({"dataset_type": "text/csv", "label": "y", "label_values_or_threshold": [1],
                           "facet": [{"name_or_index": "age", "value_or_threshold": [40]}],
                           "methods": {"pre_training_bias": {"methods": "all"}}})
    expected = bias_analysis(LocalEngine().count_table(config, tmp_path / "data.csv"), config, "pre_training")
    grouped = grouped_by_hand(frame, ["y", "age"])
    assert len(grouped.weights) < 130 and grouped.facets["age"].count == len(frame)
    with counted_rows(grouped):
        assert bias_analysis(grouped, config, "pre_training") == expected
    assert expected["facets"]["age"][0]["value_or_threshold"] == "40"
    unweighted = grouped.facets["age"]  # the same groups with a row count of one each: typed otherwise
    grouped.facets["age"] = Column(unweighted.name, unweighted.uniques, unweighted.codes)
    with counted_rows(grouped):
        assert bias_analysis(grouped, config, "pre_training")["facets"]["age"][0]["value_or_threshold"] == "(40, 79]"


def test_report_distributions_count_grouped_rows_with_their_weights(tmp_path):
    from analyzer.pipeline import value_counts

    frame = bias_frame()
    (tmp_path / "data.csv").write_text(frame.to_csv(index=False))
    rows = LocalEngine().count_table(parse_config(BIAS_CONFIG), tmp_path / "data.csv")
    grouped = grouped_by_hand(frame, ["y", "yhat", "sex", "age", "g"])
    for name in ("sex", "age"):
        expected = value_counts(rows.facets[name], limit=100)
        assert value_counts(grouped.facets[name], row_weights(grouped), limit=100) == expected
        assert sum(expected.values()) == len(frame)
        assert value_counts(grouped.facets[name], limit=100) != expected  # unweighted: one per combination


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # what an environment without pyspark raises
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(UserError) as error:
        import_pyspark()
    assert "pip install lucent[spark]" in str(error.value) and "Java 17" in str(error.value)


def test_missing_java_names_the_install(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as error:
        check_java()
    assert "Java runtime" in str(error.value) and "pip install lucent[spark]" in str(error.value)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_master_addresses():
    assert master_addresses("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    assert master_addresses("sc://h") == [("h", 15002)]
    assert master_addresses("sc://h:1234/;token=x") == [("h", 1234)]
    assert master_addresses("local[2]") == [] and master_addresses("yarn") == []
    with pytest.raises(UserError, match="spark://host:port"):
        master_addresses("spark://nohost")


@pytest.mark.parametrize("scheme", ["spark", "sc"])
def test_unreachable_master_fails_fast_naming_the_url(scheme):
    url = f"{scheme}://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError) as error:
        check_master_reachable(url)
    assert url in str(error.value) and "cannot be reached" in str(error.value)


def test_job_on_an_unreachable_master_exits_1_within_60_s(tmp_path):
    job = JobRoot(tmp_path)
    job.write_data(bias_frame(200).to_csv(index=False))
    job.write_config(BIAS_CONFIG)
    url = f"spark://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    assert job.run("--engine", "spark", "--spark-master", url) == 1
    assert time.perf_counter() - started < 60
    assert job.message.startswith("ClientError: The Spark master " + url + " cannot be reached")
    assert "Traceback" not in job.message and "java." not in job.message
    assert not (job.output_dir / "analysis.json").exists()


def test_local_flag_is_todays_path(tmp_path):
    job = JobRoot(tmp_path)
    job.write_data(bias_frame(500).to_csv(index=False))
    job.write_config(BIAS_CONFIG)
    assert job.run() == 0, job.message
    default = (job.output_dir / "analysis.json").read_bytes()
    assert job.run("--engine", "local") == 0, job.message
    assert (job.output_dir / "analysis.json").read_bytes() == default
    assert job.analysis()["pre_training_bias_metrics"]["facets"]["sex"][0]["value_or_threshold"] == "m"
    assert Path(job.output_dir / "analysis.json").stat().st_size > 1000


def test_a_cluster_uri_for_a_job_that_reads_rows_here_is_refused_naming_the_key(tmp_path):
    # SHAP reads the feature rows on this machine: an hdfs:// dataset only Spark could read is a config error,
    # said before any session starts (the master is unreachable: reaching it would fail differently).
    job = JobRoot(tmp_path)
    job.write_data(bias_frame(50).to_csv(index=False))
    job.write_config(dict(BIAS_CONFIG, dataset_uri="hdfs://user:secret@namenode:8020/data/adult.csv",
                          methods={"shap": {"baseline": [[0.0] * 3], "num_samples": 8}},
                          predictor={"endpoint_url": f"http://127.0.0.1:{closed_port()}", "content_type": "text/csv"}))
    assert job.run("--engine", "spark", "--spark-master", f"spark://127.0.0.1:{closed_port()}") == 1
    assert job.message.startswith("ClientError: dataset_uri hdfs://"), job.message
    assert "only the Spark engine can read it" in job.message and "secret" not in job.message, job.message
