"""The Spark engine reading the data on the cluster (issue #15, "Data on the cluster"), on ``local[2]``:
post-training predictions as a Spark stage calling the model, JSON Lines with the config's JMESPath,
and dataset URIs handed to Spark unchanged. Each job is compared byte for byte with the local engine's
run (``run_both``), and each checks from the engine's log that Spark did the work. The Spark session
is ``tests/test_engine_spark.py``'s module-wide one (its fixtures, imported).
"""

# ruff: noqa: F811 - `spark` and `no_engine_settings` are test_engine_spark's fixtures, imported

from __future__ import annotations

import gzip
import json
import logging
import socket
from http.server import BaseHTTPRequestHandler
from io import StringIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analyzer.bias import bias_analysis
from analyzer.config import parse_config
from analyzer.engines import ENGINE_ENV, SPARK_MASTER_ENV, GroupedRows, LocalEngine, counted_rows
from analyzer.engines.spark_read import merged_dtype
from analyzer.errors import DataError, DependencyError, UserError
from analyzer.pipeline import load_job_dataset
from analyzer.predict import ModelEndpoint
from tests.conftest import JobRoot, csv_scoring_model, http_server
from tests.test_engine_local import BIAS_CONFIG, bias_frame
from tests.test_engine_spark import MASTER, no_engine_settings, run_both, spark  # noqa: F401 - fixtures

pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")

pytestmark = pytest.mark.slow
TRACES = ("Traceback", "py4j", "Py4J", "PythonException", "\tat ", "\n")  # one line: no stack trace


def probability(frame: pd.DataFrame) -> np.ndarray:
    """The in-test model over the request rows [age, sex, x, g]: one score per record."""
    return 1 / (1 + np.exp(-(frame[2].to_numpy(dtype=float) + (frame[0].to_numpy(dtype=float) - 50) / 20)))


def two_scores(frame: pd.DataFrame) -> np.ndarray:
    p = probability(frame)
    return np.column_stack([1 - p, p])


@pytest.fixture
def model():
    with http_server(csv_scoring_model(probability), request_rows=[]) as server:
        yield server


@pytest.fixture
def model_two_scores():
    with http_server(csv_scoring_model(two_scores), request_rows=[]) as server:
        yield server


def predictions_config(server, **predictor) -> dict:
    config = {key: value for key, value in BIAS_CONFIG.items() if key != "predicted_label"}
    config["probability_threshold"] = 0.45
    config["predictor"] = {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "content_type": "text/csv",
                           "accept_type": "text/csv", **predictor}
    return config


def spark_log(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


# ---- predictions for post-training bias as a Spark stage --------------------------------------------

@pytest.mark.parametrize("layout", ["csv", "parquet"])
def test_predictions_in_a_spark_stage_identical(spark, job, model, model_two_scores, layout, caplog):
    frame = bias_frame(2000, seed=5).drop(columns="yhat")
    halves = [frame.iloc[:800], frame.iloc[800:]]
    if layout == "csv":  # one score per record, cut at probability_threshold: int labels
        server, config = model, predictions_config(model)
        for i, part in enumerate(halves):
            job.write_data(part.to_csv(index=False), f"part-{i}.csv")
    else:  # two scores and label_headers: the labels are an object array of the headers
        server, config = model_two_scores, predictions_config(model_two_scores, label_headers=[0, 1])
        config["dataset_type"] = "application/x-parquet"
        for i, part in enumerate(halves):
            part.assign(sex=part["sex"].replace("", None)).reset_index(drop=True).to_parquet(
                job.data_dir / f"part-{i}.parquet", index=False)
    job.write_config(config)
    run_both(job, MASTER, ["analysis.json"], caplog)
    assert sum(server.request_rows) == 2 * len(frame)  # every row scored once by each engine
    stage = spark_log(caplog, "Spark: 2000 predictions from the model in a Spark stage, counted in ")
    assert len(stage) == 1
    assert 50 < int(stage[0].split("counted in ")[1].split()[0]) < 2000  # grouped with the predicted label
    post = job.analysis()["post_training_bias_metrics"]["facets"]["sex"][0]["metrics"]
    assert any(m["value"] not in (0, None) for m in post)  # the predictions carry information


class TextModel(BaseHTTPRequestHandler):
    """A model that reads its request as text (``dtype=str``) and records the ``code`` fields it gets:
    codes written "007" in the file score lower than "7" would."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        frame = pd.read_csv(StringIO(body), header=None, dtype=str, keep_default_na=False)
        self.server.codes.update(frame[4])
        z = frame[2].astype(float) + (frame[0].astype(float) - 50) / 20 - 2 * frame[4].str.startswith("0")
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write("".join(f"{v!r}\n" for v in 1 / (1 + np.exp(-z))).encode())

    def log_message(self, *args):
        pass


def test_predictions_send_each_value_typed_over_the_whole_column(spark, job, caplog):
    # "code" reads as numbers in the first file's batches and as text over the whole column (the second
    # file has "A3"): locally the model gets "007"; each Spark batch must send it so too, not 7.
    frame = bias_frame(1500, seed=6).drop(columns="yhat")
    frame["code"] = [f"{i % 40:03d}" for i in range(len(frame))]
    frame.loc[1400:, "code"] = "A3"
    for i, part in enumerate([frame.iloc[:1000], frame.iloc[1000:]]):
        job.write_data(part.to_csv(index=False), f"part-{i}.csv")
    with http_server(TextModel, codes=set()) as server:
        job.write_config(predictions_config(server))
        run_both(job, MASTER, ["analysis.json"], caplog)
    assert "007" in server.codes and "A3" in server.codes and "7" not in server.codes
    assert len(spark_log(caplog, "Spark: 1500 predictions from the model in a Spark stage")) == 1


def test_merged_dtype_is_pandas_typing_of_the_whole_column():
    assert merged_dtype([("int64", False, False), ("int64", False, False)]) == "int64"
    assert merged_dtype([("int64", False, False), ("float64", True, True)]) == "float64"  # a batch of NaN
    assert merged_dtype([("int64", False, False), ("float64", False, False)]) == "float64"
    assert merged_dtype([("bool", False, False), ("bool", False, False)]) == "bool"
    assert merged_dtype([("bool", False, False), ("float64", True, True)]) == "object"  # True, False, NaN
    assert merged_dtype([("int64", False, False), ("object", False, False)]) == "object"
    assert merged_dtype([("bool", False, False), ("int64", False, False)]) == "object"
    assert merged_dtype([("object", True, True)]) == "object"
    for values in ([1, 2, None, 3.5], [True, None], [1, "a"], [1, 2]):  # pandas itself, batch by batch
        batches = [pd.Series(values[:2]), pd.Series(values[2:])]
        entries = [(str(b.dtype), bool(b.isna().any()), bool(b.isna().all())) for b in batches if len(b)]
        assert merged_dtype(entries) == str(pd.Series(values).dtype), values


def test_model_error_in_a_spark_task_is_the_jobs_message(spark, job):
    class Maybe(csv_scoring_model(probability)):
        def do_POST(self):  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.end_headers()
            self.wfile.write(b"maybe\n" * len(body.strip().splitlines()))

    job.write_data(bias_frame(300).drop(columns="yhat").to_csv(index=False))
    with http_server(Maybe, request_rows=[]) as server:
        job.write_config(predictions_config(server, label=0, label_headers=["no", "yes"]))
        assert job.run("--engine", "spark", "--spark-master", MASTER) == 1
    assert job.message.startswith("ClientError: ") and "maybe" in job.message, job.message
    assert not any(trace in job.message for trace in TRACES), job.message


def test_an_executor_that_cannot_reach_the_model_fails_with_the_models_error(spark, job):
    job.write_data(bias_frame(200).drop(columns="yhat").to_csv(index=False))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = parse_config(predictions_config(type("Server", (), {"server_port": port})))
    dataset = spark.count_table(config, job.data_dir)
    endpoint = ModelEndpoint(url, config.predictor, tuple(dataset.feature_names), timeout=3.0)
    with pytest.raises(DependencyError) as failure:
        spark.predict_groups(config, dataset, endpoint)
    message = str(failure.value)
    assert f"127.0.0.1:{port}" in message and ("did not answer" in message or "cannot connect" in message), message
    assert not any(trace in message for trace in TRACES), message


# ---- JSON Lines with the config's JMESPath -------------------------------------------------------------

def write_jsonl_job(job: JobRoot, frame: pd.DataFrame, **config) -> None:
    """The rows as two JSON Lines files (the second gzipped, with blank lines): features under
    ``record.features``, label and predicted label as nested keys; ints, floats and nulls mixed."""
    lines = []
    for row in frame.itertuples(index=False):
        sex = None if row.sex == "" else row.sex
        age = float(row.age) if row.age % 7 == 0 else int(row.age)  # pandas makes the column float64
        lines.append(json.dumps({"record": {"features": [age, sex, row.x, row.g]},
                                 "truth": {"y": int(row.y)}, "model": {"yhat": int(row.yhat)}}))
    cut = len(lines) // 3
    job.write_data("\n".join(lines[:cut]) + "\n", "part-0.jsonl")
    (job.data_dir / "part-1.jsonl.gz").write_bytes(gzip.compress(("\n\n".join(lines[cut:]) + "\n\n").encode()))
    job.write_config({**BIAS_CONFIG, "dataset_type": "application/jsonlines", "features": "record.features",
                      "label": "truth.y", "predicted_label": "model.yhat", "headers": ["age", "sex", "x", "g"],
                      "facet": [{"name_or_index": "sex"}, {"name_or_index": 0, "value_or_threshold": [40]}],
                      **config})


def test_jsonlines_bias_identical(spark, job, caplog):
    frame = bias_frame(2000, seed=7)
    frame.loc[len(frame) // 3 + 3, "sex"] = "z"  # seen once, in the gzipped file
    write_jsonl_job(job, frame)
    run_both(job, MASTER, ["analysis.json"], caplog)
    counted = spark_log(caplog, "Spark: counted 2000 rows in ")
    assert len(counted) == 1 and 100 < int(counted[0].split(" in ")[1].split()[0]) < 2000
    sex = job.analysis()["pre_training_bias_metrics"]["facets"]["sex"]
    expected = list(dict.fromkeys(frame["sex"].replace("", "nan")))  # order of first appearance
    assert [entry["value_or_threshold"] for entry in sex] == expected and expected[-1] == "z"


def test_jsonlines_predictions_in_a_spark_stage_identical(spark, job, model, caplog):
    write_jsonl_job(job, bias_frame(1000, seed=8), predictor=predictions_config(model)["predictor"])
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    del config["predicted_label"]  # the model predicts
    job.write_config(config)
    run_both(job, MASTER, ["analysis.json"], caplog)
    assert len(spark_log(caplog, "Spark: 1000 predictions from the model in a Spark stage")) == 1


def test_jsonlines_bad_record_names_the_file(spark, job):
    write_jsonl_job(job, bias_frame(200))
    job.write_data('{"record": {"features": [1, "m", 0.5]}, "truth": {"y": 1}}\n', "part-2.jsonl")
    assert job.run("--engine", "spark", "--spark-master", MASTER) == 1
    assert "part-2.jsonl" in job.message and "has 3 feature values but the first record has 4" in job.message
    assert not any(trace in job.message for trace in TRACES), job.message


# ---- dataset URIs ---------------------------------------------------------------------------------------

def local_and_spark(spark, config: dict, local_path, uri: str) -> tuple[str, str, GroupedRows]:
    parsed = parse_config(config)
    rows = spark.count_table(parsed, uri)
    local = LocalEngine().count_table(parsed, local_path)
    results = []
    for dataset in (local, rows):
        with counted_rows(dataset):
            results.append(json.dumps(bias_analysis(dataset, parsed, "pre_training")))
    return results[0], results[1], rows


@pytest.mark.parametrize("dataset_type", ["text/csv", "application/x-parquet", "application/jsonlines"])
def test_file_uri_is_read_by_spark(spark, job, dataset_type):
    frame = bias_frame(800, seed=9)
    config = dict(BIAS_CONFIG, dataset_type=dataset_type)
    folder = job.data_dir / "nested" / "deeper"  # read recursively below the URI, as locally
    folder.mkdir(parents=True)
    if dataset_type == "text/csv":  # headers from the first line of the first file, read through Spark
        (job.data_dir / "nested" / "a.csv").write_text(frame.iloc[:300].to_csv(index=False))
        (folder / "b.csv").write_text(frame.iloc[300:].to_csv(index=False))
    elif dataset_type == "application/x-parquet":
        frame.assign(sex=frame["sex"].replace("", None)).to_parquet(folder / "a.parquet", index=False)
    else:
        write_jsonl_job(job, frame)
        config = json.loads((job.config_dir / "analysis_config.json").read_text())
    local, on_spark, rows = local_and_spark(spark, config, job.data_dir, job.data_dir.as_uri())
    assert on_spark == local
    assert rows.n_rows == 800 and rows.source == job.data_dir.as_uri()


def test_a_headerless_csv_uri_keeps_its_first_row_on_spark(spark, job):
    """No header row and no `headers`: the local reader's rule, on the lines Spark reads (a first row of
    numbers is data, the columns are column_0, column_1, ...)."""
    frame = bias_frame(500, seed=4)[["y", "age", "yhat"]]
    (job.data_dir / "a.csv").write_text(frame.to_csv(index=False, header=False))
    config = {"dataset_type": "text/csv", "label": "column_0", "predicted_label": "column_2",
              "label_values_or_threshold": [1], "facet": [{"name_or_index": "column_1", "value_or_threshold": [40]}],
              "methods": {"pre_training_bias": {"methods": "all"}}}
    local, on_spark, rows = local_and_spark(spark, config, job.data_dir, job.data_dir.as_uri())
    assert on_spark == local
    assert rows.n_rows == 500


def test_the_pipeline_hands_a_uri_to_the_spark_engine(spark, job, monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "spark")
    monkeypatch.setenv(SPARK_MASTER_ENV, MASTER)  # the module's session (adopted for this master)
    job.write_data(bias_frame(300).to_csv(index=False))
    dataset = load_job_dataset(parse_config(BIAS_CONFIG), job.data_dir.as_uri())
    assert isinstance(dataset, GroupedRows) and dataset.source == job.data_dir.as_uri()
    assert dataset.n_rows == 300 and int(dataset.weights.sum()) == 300


def test_s3a_without_hadoop_aws_names_the_uri_and_what_to_install(spark):
    config = parse_config(BIAS_CONFIG)
    with pytest.raises(UserError) as failure:
        spark.count_table(config, "s3a://lucent-bucket/bias/data.csv")
    message = str(failure.value)
    assert "s3a://lucent-bucket/bias/data.csv" in message and "hadoop-aws" in message, message
    assert "classpath" in message and not any(trace in message for trace in TRACES), message


def test_uri_that_does_not_exist_is_named(spark, tmp_path):
    uri = (tmp_path / "nothing-here").as_uri()
    with pytest.raises(UserError, match="dataset_uri file:.*nothing-here.*(PATH_NOT_FOUND|does not exist)"):
        spark.count_table(parse_config(dict(BIAS_CONFIG, headers=list(bias_frame(1).columns))), uri)


# ---- Parquet parts that type or order columns differently; scores in the predicted label column ----------

def analyses(dataset, config) -> str:
    """Pre- and post-training bias of ``dataset`` as JSON text (the numbers analysis.json holds)."""
    with counted_rows(dataset):
        return json.dumps([bias_analysis(dataset, config, stage) for stage in ("pre_training", "post_training")])


def test_parquet_parts_typed_and_ordered_differently_read_as_locally(spark, job, caplog):
    """pandas' int column with a NaN is a double part; columns in another order are read by name; 1.5 where
    the first part has int64 makes the column double; doubles in a string column are cast as Arrow casts
    them (1.0 is "1"; Spark's cast says "1.0"): the local reader's rules (data-formats.md). Spark read such
    parts with one part's schema and failed (PARQUET_COLUMN_DATA_TYPE_MISMATCH)."""
    frame = bias_frame(1500, seed=7)
    frame = frame.assign(sex=frame["sex"].replace("", None))
    first, second, third = frame.iloc[:600], frame.iloc[600:1100].copy(), frame.iloc[1100:].copy()
    second["age"] = second["age"].where(second.index % 7 != 0)  # int with NaN: pandas writes double
    second["g"] = second["g"].map({"a": 1.0, "b": 2.0, "c": 2.5})  # the group variable: strings, then doubles
    second = second.astype({"y": float})[list(reversed(frame.columns))]  # whole doubles, columns reversed
    third["age"] = third["age"] + 0.5  # does not fit int64: the column is read as double
    for i, part in enumerate((first, second, third)):
        part.reset_index(drop=True).to_parquet(job.data_dir / f"part-{i}.parquet", index=False)
    config = parse_config(dict(BIAS_CONFIG, dataset_type="application/x-parquet"))
    local = LocalEngine().count_table(config, job.data_dir)
    with caplog.at_level(logging.INFO, logger="analyzer.engines.spark"):
        rows = spark.count_table(config, job.data_dir)
    assert "read in 3 groups of column types" in caplog.text  # part-0 as is, part-1 and part-2 cast
    assert rows.n_rows == 1500 and len(rows.weights) < 1500
    assert (rows.label.dtype, rows.facets["age"].dtype, rows.predicted_label.dtype) == (
        np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.int64))
    assert (local.label.dtype, local.facets["age"].dtype) == (np.dtype(np.int64), np.dtype(np.float64))
    ages = pd.Series(np.repeat(rows.facets["age"].to_series().to_numpy(), rows.weights))
    assert ages.isna().sum() == (second["age"].isna()).sum() > 0
    assert ages.sum() == pytest.approx(first["age"].sum() + second["age"].sum() + third["age"].sum())
    assert rows.group.uniques.tolist() == local.group.uniques.tolist() == ["b", "a", "c", "2", "1", "2.5"]
    assert analyses(rows, config) == analyses(local, config)


def test_parquet_parts_without_a_common_type_are_refused_as_locally(spark, job):
    frame = bias_frame(40, seed=2)
    frame.iloc[:20].assign(g=np.arange(20)).to_parquet(job.data_dir / "part-0.parquet", index=False)  # int64 g
    frame.iloc[20:].to_parquet(job.data_dir / "part-1.parquet", index=False)  # strings "a", "b", "c"
    config = parse_config(dict(BIAS_CONFIG, dataset_type="application/x-parquet"))
    with pytest.raises(DataError) as local:
        LocalEngine().count_table(config, job.data_dir)
    with pytest.raises(DataError) as on_spark:
        spark.count_table(config, job.data_dir)
    assert str(on_spark.value) == str(local.value)
    assert "Column 'g' of the Parquet dataset" in str(local.value) and "no type holds both" in str(local.value)
    # below a URI the driver opens nothing: Spark's reason, named, and what to do
    with pytest.raises(UserError) as uri:
        spark.count_table(config, job.data_dir.as_uri())
    part = (job.data_dir / "part-1.parquet").as_uri()
    assert (f"the Parquet part {part} has column 'g' as BINARY, but Spark reads the parts of a URI with one schema, "
            "where it is bigint (another part's type). Write every part with the same column types") in str(uri.value)
    assert not any(trace in str(uri.value) for trace in TRACES), str(uri.value)
    # 1.5 makes the column double, which 2**53 + 1 in the int64 part does not fit: refused on the driver too
    folder = job.root / "input" / "wide"
    folder.mkdir()
    pq.write_table(pa.table({"age": [2**53 + 1, 30], "y": [0, 1]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"age": [1.5, 60.0], "y": [1, 0]}), folder / "part-1.parquet")
    config = parse_config(dict(BIAS_CONFIG, dataset_type="application/x-parquet", predicted_label=None,
                               group_variable=None, facet=[{"name_or_index": "age", "value_or_threshold": [40]}],
                               methods={"pre_training_bias": {"methods": ["CI"]}}))
    with pytest.raises(DataError) as local:
        LocalEngine().count_table(config, folder)
    with pytest.raises(DataError) as on_spark:
        spark.count_table(config, folder)
    assert str(on_spark.value) == str(local.value)
    assert str(local.value).startswith(f"{folder / 'part-0.parquet'}: column 'age' is int64 there and cannot be read "
                                       "as double")


def test_scores_in_the_predicted_label_column_are_cut_as_locally(spark, job, caplog):
    """Contract example (j) without a side dataset: a predicted label column of scores and a categorical
    label; the scores are cut at probability_threshold (0.6: a score equal to it is negative)."""
    frame = bias_frame(1200, seed=11)
    rng = np.random.default_rng(11)
    frame["yhat"] = np.round(rng.random(len(frame)), 3)
    frame.loc[:9, "yhat"] = 0.6
    job.write_data(frame.iloc[:500].to_csv(index=False), "part-0.csv")
    job.write_data(frame.iloc[500:].to_csv(index=False), "part-1.csv")
    job.write_config(dict(BIAS_CONFIG, probability_threshold=0.6,
                          methods={"post_training_bias": {"methods": ["DPPL", "DI"]}}))
    run_both(job, MASTER, ["analysis.json"], caplog)
    assert any(r.getMessage().startswith("Spark: counted 1200 rows in ") for r in caplog.records)
    facet = job.analysis()["post_training_bias_metrics"]["facets"]["age"][0]
    metrics = {m["name"]: m["value"] for m in facet["metrics"]}
    predicted, d = frame["yhat"] > 0.6, frame["age"] > 40
    assert metrics["DPPL"] == pytest.approx(predicted[~d].mean() - predicted[d].mean(), abs=1e-12)
    assert metrics["DI"] == pytest.approx(predicted[d].mean() / predicted[~d].mean(), abs=1e-12)
