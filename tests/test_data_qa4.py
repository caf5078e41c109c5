"""QA round 4 on batch data reading: split side datasets need a joinsource, Parquet parts typed as pandas
reads them, facet lookup with a facet dataset, SDK-shaped JSON headers, scores from the data cut at
probability_threshold, and messages naming what is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analyzer.bias.report import bias_analysis
from analyzer.config import ConfigValidationError, parse_config
from analyzer.config.model import AnalysisConfig, Facet, Methods
from analyzer.data import load_dataset
from analyzer.data.files import list_data_files
from analyzer.data.parquet_format import ParquetTable
from analyzer.errors import DataError
from container.job import JobPaths, validate_job
from tests.test_data_loader import csv_config, write

BIAS_METHODS = {"pre_training_bias": {"methods": ["CI"]}, "post_training_bias": {"methods": ["DPPL", "DI"]}}


def _tenths(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """``frame`` cut into 10 consecutive parts (np.array_split on a DataFrame is deprecated)."""
    bounds = np.linspace(0, len(frame), 11).astype(int)
    return [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

def frame(n: int = 300, seed: int = 51) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": np.arange(1000, 1000 + n), "age": rng.integers(18, 80, n),
                       "gender": rng.choice([0, 1, 2], n), "income": np.round(rng.normal(50, 15, n), 2)})
    df["label"] = (rng.random(n) < 0.3 + 0.3 * (df.gender == 1)).astype(int)
    df["score"] = np.round(rng.random(n), 4)
    df["pred"] = (df.score > 0.5).astype(int)
    return df


def dppl(facet: pd.Series, predicted: pd.Series, sensitive: object) -> float:
    """DPPL by hand: positive prediction rate of the others minus that of the sensitive group."""
    d = facet == sensitive
    return float((predicted[~d] == 1).mean() - (predicted[d] == 1).mean())


# -- 1. a split side dataset without joinsource_name_or_index ---------------------------------------------
def split_prediction_job(root: Path, df: pd.DataFrame, *, joinsource: bool) -> dict:
    """Main dataset one file, predicted labels in preds_1.csv ... preds_10.csv (path order: 1, 10, 2, ...)."""
    main = df[["id", "age", "gender", "income", "label"]] if joinsource else df[["age", "gender", "income", "label"]]
    write(root / "input" / "data" / "d.csv", main.to_csv(index=False))
    columns = ["id", "pred"] if joinsource else ["pred"]
    for i, chunk in enumerate(_tenths(df[columns]), start=1):
        write(root / "input" / "pred" / f"preds_{i}.csv", chunk.to_csv(index=False, header=False))
    config = {"dataset_type": "text/csv", "label": "label", "label_values_or_threshold": [1],
              "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}], "methods": BIAS_METHODS,
              "predicted_label_dataset_uri": "../pred", "predicted_label_headers": columns, "predicted_label": "pred"}
    if joinsource:
        config["joinsource_name_or_index"] = "id"
    write(root / "input" / "config" / "analysis_config.json", json.dumps(config))
    return config


def test_split_predicted_label_dataset_without_joinsource_is_an_error(tmp_path):
    df = frame()
    split_prediction_job(tmp_path, df, joinsource=False)
    config = parse_config(json.loads((tmp_path / "input/config/analysis_config.json").read_text()))
    with pytest.raises(DataError) as caught:
        load_dataset(config, tmp_path / "input" / "data", base_dir=tmp_path / "input" / "config")
    message = str(caught.value)
    assert "pred (`predicted_label_dataset_uri`) is split across 10 files (preds_1.csv, preds_10.csv, preds_2.csv, " \
           "preds_3.csv, ...) and `joinsource_name_or_index` is not set" in message
    assert "set `joinsource_name_or_index` to its name" in message
    assert "`headers` / `predicted_label_headers`" in message
    # lucent validate says it too (it exited 0 with "OK" before), and the run fails before writing results
    problems = validate_job(JobPaths.for_root(tmp_path))
    assert len(problems) == 1 and "is split across 10 files" in problems[0]


def test_split_facet_dataset_without_joinsource_fails_the_run_before_any_output(job):
    df = frame()
    job.write_data(df[["age", "income", "label", "pred"]].to_csv(index=False), "d.csv")
    for i, chunk in enumerate(_tenths(df[["gender"]]), start=1):
        write(job.root / "input" / "facet" / f"f_{i}.csv", chunk.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "label": "label", "predicted_label": "pred",
                      "label_values_or_threshold": [1], "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}],
                      "facet_dataset_uri": "../facet", "facet_headers": ["gender"], "methods": BIAS_METHODS})
    assert job.run(command="validate") == 1
    assert job.run() != 0
    assert "facet (`facet_dataset_uri`) is split across 10 files (f_1.csv, f_10.csv, f_2.csv, f_3.csv, ...)" \
        in job.message
    assert "`headers` / `facet_headers`" in job.message
    assert not (job.output_dir / "analysis.json").exists()


def test_split_main_dataset_with_one_file_side_dataset_needs_joinsource(tmp_path):
    """Spec 2.1: required when several datasets are given and ANY of them (the main one too) is split."""
    write(tmp_path / "main" / "part-1.csv", "x,y\n1,0\n2,1\n")
    write(tmp_path / "main" / "part-2.csv", "x,y\n3,0\n")
    facet = write(tmp_path / "facet.csv", "f\nA\nB\nA\n")
    config = csv_config(label="y", facet=[Facet("f")], facet_dataset_uri=str(facet))
    with pytest.raises(DataError, match=r"^The dataset .*main is split across 2 files \(part-1.csv, part-2.csv\) and "
                                        r"`joinsource_name_or_index` is not set: its rows would be paired with those "
                                        r"of .*facet.csv \(`facet_dataset_uri`\) by position"):
        load_dataset(config, tmp_path / "main")
    # without a side dataset a split main dataset is fine, and so is an empty extra side file
    assert load_dataset(csv_config(label="y"), tmp_path / "main").n_rows == 3
    write(tmp_path / "pred" / "p.csv", "1\n0\n1\n")
    write(tmp_path / "pred" / "q.csv", "")
    single = write(tmp_path / "m.csv", "x\n1\n2\n3\n")
    one = load_dataset(csv_config(label="x", predicted_label="p", predicted_label_dataset_uri=str(tmp_path / "pred"),
                                  predicted_label_headers=["p"]), single)
    assert one.predicted_label.to_series().tolist() == [1, 0, 1]


def test_split_predicted_label_dataset_with_joinsource_gives_the_right_numbers(tmp_path):
    df = frame()
    config = parse_config(split_prediction_job(tmp_path, df, joinsource=True))
    dataset = load_dataset(config, tmp_path / "input" / "data", base_dir=tmp_path / "input" / "config")
    assert dataset.predicted_label.to_series().tolist() == df.pred.tolist()
    result = bias_analysis(dataset, config, "post_training")
    value = next(m["value"] for m in result["facets"]["gender"][0]["metrics"] if m["name"] == "DPPL")
    assert value == pytest.approx(dppl(df.gender, df.pred, 0), abs=1e-12)


# -- 2. Parquet parts typed differently, or with columns in another order ---------------------------------
def assert_reads_like_pandas(folder: Path) -> ParquetTable:
    table = ParquetTable(list_data_files(folder), str(folder), None, chunk_rows=64)
    expected = pd.read_parquet(folder)
    values = table.read([], table.headers).values
    columns = table.read(table.headers).columns
    assert table.headers == list(expected.columns)
    for name in table.headers:
        pd.testing.assert_series_equal(values[name], expected[name].reset_index(drop=True), check_names=False)
        pd.testing.assert_series_equal(columns[name].to_series(), expected[name].reset_index(drop=True),
                                       check_names=False)
    return table


def test_parquet_part_with_a_nan_reads_like_pandas(tmp_path):
    df = frame(400, 111)
    a, b = df[:200].copy(), df[200:].copy()
    b.loc[b.index[3], "age"] = np.nan  # pandas writes age as double in this part only
    a.to_parquet(tmp_path / "part-0.parquet", index=False)
    b.to_parquet(tmp_path / "part-1.parquet", index=False)
    assert pq.read_schema(tmp_path / "part-0.parquet").field("age").type == pa.int64()
    assert pq.read_schema(tmp_path / "part-1.parquet").field("age").type == pa.float64()
    assert_reads_like_pandas(tmp_path)
    config = AnalysisConfig(dataset_type="application/x-parquet", methods=Methods(), label="label",
                            predicted_label="pred", facet=[Facet("age")], excluded_columns=["id", "score"])
    dataset = load_dataset(config, tmp_path, need_features=True)
    assert dataset.facets["age"].dtype == np.float64 and dataset.facets["age"].has_missing()
    assert dataset.features["age"].isna().sum() == 1


def test_parquet_int_and_whole_double_parts_read_as_the_first_part_type(tmp_path):
    df = frame(200)
    df[:100].to_parquet(tmp_path / "a.parquet", index=False)
    df[100:].astype({"label": float}).to_parquet(tmp_path / "b.parquet", index=False)
    table = assert_reads_like_pandas(tmp_path)
    assert table.read(["label"]).columns["label"].dtype == np.int64  # as pandas: the first file's type


def test_parquet_parts_with_columns_in_another_order(tmp_path):
    df = frame(120)
    df["group"] = pd.Categorical(np.where(df.gender == 0, "F", "M"))
    df[:60].to_parquet(tmp_path / "a.parquet", index=False)
    df[60:][list(reversed(df.columns))].to_parquet(tmp_path / "b.parquet", index=False)
    assert_reads_like_pandas(tmp_path)
    # headers rename in the first file's order
    renamed = ParquetTable(list_data_files(tmp_path), str(tmp_path), [c.upper() for c in df.columns], chunk_rows=50)
    assert renamed.read(["LABEL"]).columns["LABEL"].to_series().tolist() == df.label.tolist()


def test_parquet_values_that_do_not_fit_the_first_type_are_promoted(tmp_path):
    pq.write_table(pa.table({"x": pa.array([1, 2], pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([1.5, None], pa.float64())}), tmp_path / "b.parquet")
    table = ParquetTable(list_data_files(tmp_path), str(tmp_path), None, chunk_rows=10)
    assert table.read([], ["x"]).values["x"].tolist()[:3] == [1.0, 2.0, 1.5]
    assert np.isnan(table.read([], ["x"]).values["x"].iloc[3])


def test_parquet_errors_for_parts_that_really_differ(tmp_path):
    pq.write_table(pa.table({"a": [1], "b": [2]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "2.parquet")
    with pytest.raises(DataError, match=r"2.parquet does not have the columns of .*1.parquet: it lacks \['b'\] "):
        ParquetTable(list_data_files(tmp_path), str(tmp_path), None, chunk_rows=10)
    pq.write_table(pa.table({"a": ["x"], "b": [2]}), tmp_path / "2.parquet")
    table = ParquetTable(list_data_files(tmp_path), str(tmp_path), None, chunk_rows=10)
    with pytest.raises(DataError, match=r"Column 'a' of the Parquet dataset .* is int64 in .*1.parquet but string in "
                                        r".*2.parquet, and no type holds both"):
        table.read(["a"])


# -- 3. facets with a facet dataset: the facet dataset first, then the main dataset ------------------------
SIDE = {"dataset_type": "text/csv", "headers": ["id", "age", "income", "label"], "label": "label",
        "joinsource_name_or_index": "id", "facet_dataset_uri": "f.csv", "facet_headers": ["id", "gender"],
        "label_values_or_threshold": [1], "methods": {"pre_training_bias": {"methods": "all"}},
        "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}, {"name_or_index": "age", "value_or_threshold": [50]}]}


def test_facet_of_the_main_dataset_with_facet_headers(tmp_path):
    config = parse_config(SIDE)  # 'age' is not in facet_headers but in headers: accepted (it was refused)
    df = frame(60)
    main = write(tmp_path / "d.csv", df[["id", "age", "income", "label"]].to_csv(index=False, header=False))
    write(tmp_path / "f.csv", df[["id", "gender"]].sample(frac=1, random_state=1).to_csv(index=False, header=False))
    dataset = load_dataset(config, main, base_dir=tmp_path)
    assert dataset.facets["gender"].to_series().tolist() == df.gender.tolist()
    assert dataset.facets["age"].to_series().tolist() == df.age.tolist()
    # a name in neither list, and an index (it refers to the facet dataset) beyond facet_headers, are refused
    for facet, problem in (("sex", "'sex' is not in facet_headers or headers"),
                           (3, "column index 3 is out of range: facet_headers has 2 columns")):
        with pytest.raises(ConfigValidationError, match=problem):
            parse_config(dict(SIDE, facet=[{"name_or_index": facet}]))


# -- 4. SDK-shaped JSON configs: headers = feature names + label name ------------------------------------
SDK_FEATURES = ["age", "gender", "race", "income", "grp"]


def sdk_records(df: pd.DataFrame) -> list[dict]:
    return [{"x": {"f": [int(r.age), int(r.gender), 1, float(r.income), 2]}, "y": {"true": int(r.label)},
             "out": {"lab": int(r.pred), "p": float(r.score)}} for r in df.itertuples()]


def test_sdk_jsonlines_headers_with_label_and_predicted_label(tmp_path):
    """SDK DataConfig(dataset_type="application/jsonlines", features="x.f", label="y.true",
    headers=[5 features, "label"], predicted_label="out.lab")."""
    df = frame(200)
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in sdk_records(df)))
    config = parse_config({"dataset_type": "application/jsonlines", "features": "x.f", "label": "y.true",
                           "headers": [*SDK_FEATURES, "label"], "predicted_label": "out.lab",
                           "label_values_or_threshold": [1], "methods": BIAS_METHODS,
                           "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}]})
    dataset = load_dataset(config, path)
    assert dataset.headers == [*SDK_FEATURES, "label", "predicted_label"]
    assert dataset.feature_names == SDK_FEATURES
    assert dataset.label.to_series().tolist() == df.label.tolist()
    assert dataset.predicted_label.to_series().tolist() == df.pred.tolist()
    result = bias_analysis(dataset, config, "post_training")
    value = next(m["value"] for m in result["facets"]["gender"][0]["metrics"] if m["name"] == "DPPL")
    assert value == pytest.approx(dppl(df.gender, df.pred, 0), abs=1e-12)


def test_sdk_json_headers_with_label_and_predicted_label(tmp_path):
    df = frame(40)
    document = {"instances": [{"features": r["x"]["f"]} for r in sdk_records(df)], "labels": df.label.tolist(),
                "preds": df.pred.tolist()}
    path = write(tmp_path / "d.json", json.dumps(document))
    config = AnalysisConfig(dataset_type="application/json", methods=Methods(), features="instances[*].features",
                            label="labels", predicted_label="preds", headers=[*SDK_FEATURES, "label"])
    dataset = load_dataset(config, path)
    assert dataset.headers == [*SDK_FEATURES, "label", "predicted_label"]
    assert dataset.predicted_label.to_series().tolist() == df.pred.tolist()
    with pytest.raises(DataError, match=r"`headers` has 4 names but the records of .* have 5 feature values .* "
                                        r"expected 5, 6 or 7 names"):
        load_dataset(AnalysisConfig(dataset_type="application/json", methods=Methods(),
                                    features="instances[*].features", label="labels", predicted_label="preds",
                                    headers=SDK_FEATURES[:4]), path)


# -- 5. probability_threshold on scores read from the data -----------------------------------------------
def test_jsonl_predicted_label_scores_are_cut_at_probability_threshold(tmp_path, caplog):
    df = frame(200)
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in sdk_records(df)))
    config = parse_config({"dataset_type": "application/jsonlines", "features": "x.f", "label": "y.true",
                           "predicted_label": "out.p", "headers": SDK_FEATURES, "label_values_or_threshold": [1],
                           "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}],
                           "probability_threshold": 0.5, "methods": BIAS_METHODS})
    with caplog.at_level(logging.INFO):
        dataset = load_dataset(config, path)
    expected = (df.score > 0.5).astype(int)
    assert dataset.predicted_label.dtype == np.int64
    assert dataset.predicted_label.to_series().tolist() == expected.tolist()
    assert "We assume a prediction above 0.500 indicates 1 and below or equal indicates 0." in caplog.text
    result = bias_analysis(dataset, config, "post_training")  # failed: "... datatype is not the same as ..."
    value = next(m["value"] for m in result["facets"]["gender"][0]["metrics"] if m["name"] == "DPPL")
    assert value == pytest.approx(dppl(df.gender, expected, 0), abs=1e-12)


def test_predicted_label_dataset_scores_with_threshold_like_example_j(job):
    """Spec example (j): a predicted label dataset, ModelPredictedLabelConfig(probability_threshold=0.8), no
    predictor. DPPL and DI by hand on score > 0.8 (a score equal to the threshold is negative)."""
    df = frame(300)
    df.loc[:4, "score"] = 0.8
    job.write_data(df[["id", "age", "gender", "income", "label"]].to_csv(index=False, header=False), "d.csv")
    write(job.root / "input" / "pred" / "p.csv",
          df[["id", "score"]].sample(frac=1, random_state=4).to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": ["id", "age", "gender", "income", "label"],
                      "label": "label", "joinsource_name_or_index": "id", "label_values_or_threshold": [1],
                      "facet": [{"name_or_index": "gender", "value_or_threshold": [0]}], "methods": BIAS_METHODS,
                      "predicted_label_dataset_uri": "../pred/p.csv", "predicted_label_headers": ["id", "score"],
                      "predicted_label": "score", "probability_threshold": 0.8})
    assert job.run() == 0, job.message
    metrics = {m["name"]: m["value"]
               for m in job.analysis()["post_training_bias_metrics"]["facets"]["gender"][0]["metrics"]}
    predicted = (df.score > 0.8).astype(int)
    d = df.gender == 0
    assert metrics["DPPL"] == pytest.approx(dppl(df.gender, predicted, 0), abs=1e-12)
    assert metrics["DI"] == pytest.approx(predicted[d].mean() / predicted[~d].mean(), abs=1e-12)


def test_float_labels_and_whole_float_predictions_are_not_cut(tmp_path):
    # a float label (regression-like): both continuous, the label threshold applies to both; left as read
    path = write(tmp_path / "d.csv", "x,y,p\n" + "".join(f"{i},{i * 0.1:.1f},{i * 0.1 + 0.05:.2f}\n" for i in range(20)))
    dataset = load_dataset(csv_config(label="y", predicted_label="p", label_values_or_threshold=[0.5]), path)
    assert dataset.predicted_label.dtype == np.float64
    assert dataset.predicted_label.to_series().iloc[3] == pytest.approx(0.35)
    # class labels read as floats because one is missing: not scores, left as read
    path = write(tmp_path / "e.csv", "x,y,p\n" + "".join(f"{i},{i % 3},{'' if i == 5 else i % 3}\n" for i in range(60)))
    dataset = load_dataset(csv_config(label="y", predicted_label="p", label_values_or_threshold=[2]), path)
    assert dataset.predicted_label.dtype == np.float64 and dataset.predicted_label.nunique == 3


# -- 6. messages --------------------------------------------------------------------------------------
def test_json_label_list_of_the_wrong_length(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"X": [[1], [2], [3]], "y": [0, 1]}))
    config = AnalysisConfig(dataset_type="application/json", methods=Methods(), features="X", label="y")
    with pytest.raises(DataError) as caught:
        load_dataset(config, path)
    assert str(caught.value) == (
        f"The `label` JMESPath 'y' gives a list of 2 values on {path} but `features` gives 3 records there; it must "
        "select a list with one label per record (1 value(s) short).")


def test_jsonl_record_without_label_is_named(tmp_path, caplog):
    records = [{"x": [i, i % 2], "y": i % 2, "p": (i + 1) % 2} for i in range(8)]
    del records[1]["y"], records[6]["y"]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    config = AnalysisConfig(dataset_type="application/jsonlines", methods=Methods(), features="x", label="y",
                            predicted_label="p")
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(config, path)
    assert dataset.label.has_missing()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"2 record(s) of {path} have no label: the `label` JMESPath 'y' matches nothing (or null) on "
                        f"{path} line 2, {path} line 7. Their label is a missing value, which also makes the column's "
                        "values floats or mixed (a typing error in the bias stages may follow); give every record "
                        "its label."]
