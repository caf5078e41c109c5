"""JSON Lines, JSON and Parquet datasets: the tabular view, typing, and their errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analyzer.config.model import AnalysisConfig, Facet, Methods
from analyzer.data import load_dataset
from analyzer.errors import DataError


def config(dataset_type: str, **kwargs) -> AnalysisConfig:
    return AnalysisConfig(dataset_type=dataset_type, methods=Methods(), **kwargs)


def jsonl_config(**kwargs) -> AnalysisConfig:
    return config("application/jsonlines", **kwargs)


def write_lines(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    {"features": [30, "M", 1.5], "label": 1, "score": {"p": 0.9}},
    {"features": [40, "F", 2.5], "label": 0, "score": {"p": 0.2}},
    {"features": [50, "F", None], "label": 1, "score": {"p": 0.7}},
]


# JSON Lines -------------------------------------------------------------------------------------------


def test_jsonlines_without_headers(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    cfg = jsonl_config(features="features", label="label", predicted_label="score.p", facet=[Facet("column_1")])
    dataset = load_dataset(cfg, path, need_features=True)
    assert dataset.n_rows == 3
    assert dataset.headers == ["column_0", "column_1", "column_2", "label", "predicted_label"]
    assert dataset.feature_names == ["column_0", "column_1", "column_2"]
    assert dataset.label.name == "label" and dataset.label.to_series().tolist() == [1, 0, 1]
    assert dataset.predicted_label.to_series().tolist() == [0.9, 0.2, 0.7]
    assert dataset.facets["column_1"].to_series().tolist() == ["M", "F", "F"]
    expected = pd.DataFrame({"column_0": [30, 40, 50], "column_1": ["M", "F", "F"], "column_2": [1.5, 2.5, np.nan]})
    pd.testing.assert_frame_equal(dataset.features, expected)


def test_jsonlines_with_headers_names_features_then_label(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    cfg = jsonl_config(features="features", label="label", headers=["age", "sex", "amount", "approved"],
                       facet=[Facet(1)], group_variable="amount", excluded_columns=[0])
    dataset = load_dataset(cfg, path)
    assert dataset.headers == ["age", "sex", "amount", "approved"]
    assert dataset.label.name == "approved"
    assert list(dataset.facets) == ["sex"]
    assert dataset.group.dtype == np.float64 and dataset.group.has_missing()
    assert dataset.feature_names == ["sex", "amount"]
    assert dataset.features is None


def test_jsonlines_headers_for_features_only(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    cfg = jsonl_config(features="features", label="label", headers=["age", "sex", "amount"])
    dataset = load_dataset(cfg, path)
    assert dataset.headers == ["age", "sex", "amount", "label"]


def test_jsonlines_folder_with_gzip_and_blank_lines_and_missing_label(tmp_path):
    write_lines(tmp_path / "d" / "a.jsonl", RECORDS[:2])
    (tmp_path / "d" / "b.jsonl.gz").write_bytes(gzip.compress(b'\n{"features": [1, "M", 0.5]}\n\n'))
    dataset = load_dataset(jsonl_config(features="features", label="label"), tmp_path / "d")
    assert dataset.n_rows == 3
    assert dataset.label.to_series().tolist()[:2] == [1.0, 0.0] and dataset.label.has_missing()
    assert dataset.label.dtype == np.float64


def test_jsonlines_errors_name_file_and_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    with path.open("a") as f:
        f.write("\n{not json}\n")
    with pytest.raises(DataError, match=rf"{path} line 5 is not valid JSON"):
        load_dataset(jsonl_config(features="features"), path)


@pytest.mark.parametrize(("features", "found"), [("nothing", "nothing (no match)"), ("label", "a int (1)")])
def test_jsonlines_features_matching_nothing_or_not_a_list(tmp_path, features, found):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError) as error:
        load_dataset(jsonl_config(features=features), path)
    message = str(error.value)
    assert message.startswith("Data must contain features.")
    assert f"gives {found} on {path} line 1" in message


def test_jsonlines_nested_or_ragged_features(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"f": [1, 2]}, {"f": [1, [2]]}])
    with pytest.raises(DataError, match=rf"Data must contain features. Feature 'column_1' is a list on {path} line 2"):
        load_dataset(jsonl_config(features="f"), path)
    path = write_lines(tmp_path / "e.jsonl", [{"f": [1, 2]}, {"f": [1, 2, 3]}])
    with pytest.raises(DataError, match=rf"{path} line 2 has 3 feature values but {path} line 1 has 2"):
        load_dataset(jsonl_config(features="f"), path)


def test_jsonlines_label_errors(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError, match=r"^Headers must contain label. The `label` JMESPath 'target' matches nothing"):
        load_dataset(jsonl_config(features="features", label="target"), path)
    with pytest.raises(DataError, match=rf"gives a dict on {path} line 1; it must select one value"):
        load_dataset(jsonl_config(features="features", label="score"), path)


def test_jsonlines_config_errors(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError, match=r"^Feature names not found. `features`"):
        load_dataset(jsonl_config(label="label"), path)
    with pytest.raises(DataError, match="is not a valid JMESPath expression"):
        load_dataset(jsonl_config(features="features[", label="label"), path)
    with pytest.raises(DataError, match=r"^Headers in config do not match .* `headers` has 2 names .* expected 3 or 4"):
        load_dataset(jsonl_config(features="features", label="label", headers=["a", "b"]), path)


def test_jsonlines_empty_and_invalid_utf8(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="has no data rows"):
        load_dataset(jsonl_config(features="f"), empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"f": [1]}\n{"f": ["\xff"]}\n')
    with pytest.raises(DataError, match=rf"{bad} line 2 is not valid UTF-8 text"):
        load_dataset(jsonl_config(features="f"), bad)


# JSON -------------------------------------------------------------------------------------------------


def test_json_documents_one_per_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.json").write_text(json.dumps({"rows": [[1, "a"], [2, "b"]], "y": [0, 1]}))
    (tmp_path / "d" / "2.json").write_text(json.dumps({"rows": [[3, "a"]], "y": [1]}))
    cfg = config("application/json", features="rows", label="y", headers=["n", "s", "target"], facet=[Facet("s")])
    dataset = load_dataset(cfg, tmp_path / "d", need_features=True)
    assert dataset.n_rows == 3
    assert dataset.label.name == "target" and dataset.label.to_series().tolist() == [0, 1, 1]
    assert dataset.facets["s"].to_series().tolist() == ["a", "b", "a"]
    assert dataset.features.to_dict("list") == {"n": [1, 2, 3], "s": ["a", "b", "a"]}


def test_json_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"rows": [[1, "a"]],\n "y": [0, }')
    with pytest.raises(DataError, match=rf"{path} line 2 column \d+: invalid JSON"):
        load_dataset(config("application/json", features="rows"), path)
    path.write_text(json.dumps({"rows": [1, 2], "y": [0, 1]}))
    with pytest.raises(DataError, match=r"^Data must contain features. .* must select a list of records"):
        load_dataset(config("application/json", features="rows"), path)
    path.write_text(json.dumps({"rows": [[1], [2]], "y": [0]}))
    with pytest.raises(DataError, match=r"^The `label` JMESPath 'y' gives a list of 1 values on .* but `features` gives 2 "
                                        r"records there; .* \(1 value\(s\) short\)"):
        load_dataset(config("application/json", features="rows", label="y"), path)


# Parquet ----------------------------------------------------------------------------------------------


def parquet_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [30, 40, 50, 60, 70],
        "sex": ["M", "F", None, "F", "M"],
        "amount": [1.5, 2.5, 3.5, np.nan, 5.0],
        "grade": pd.Categorical(["b", "a", None, "b", "a"], categories=["z", "b", "a"]),
        "approved": [True, False, True, True, False],
    }, index=[10, 11, 12, 13, 14])


def test_parquet_row_groups_and_dtypes_like_read_parquet(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    frame = parquet_frame()
    frame.iloc[:3].to_parquet(root / "part-0.parquet", row_group_size=2)
    # the second file has nulls in int and bool columns: the whole columns become float64 / object
    second = pa.table({"age": pa.array([None, 80], pa.int64()), "sex": ["F", "M"], "amount": [1.0, 2.0],
                       "grade": pa.array(["a", "b"]).dictionary_encode(),
                       "approved": pa.array([None, True], pa.bool_())})
    pq.write_table(second, root / "part-1.parquet")
    (root / "_SUCCESS").write_text("")
    pq.write_table(pa.table({"age": [1]}), root / "part-1.parquet.crc".replace("part", ".part"))
    cfg = config("application/x-parquet", label="approved", facet=[Facet("age"), Facet("grade")],
                 group_variable="sex")
    dataset = load_dataset(cfg, root, need_features=True, chunk_rows=1)
    expected = pd.read_parquet(root)
    assert dataset.n_rows == 5
    assert dataset.headers == ["age", "sex", "amount", "grade", "approved"]  # no pandas index column
    pd.testing.assert_series_equal(dataset.facets["age"].to_series(), expected["age"].reset_index(drop=True))
    assert dataset.facets["age"].dtype == np.float64
    # a Column's missing value is NaN; read_parquet has None in object columns (both are missing)
    sex = expected["sex"].reset_index(drop=True)
    pd.testing.assert_series_equal(dataset.group.to_series(), sex.where(sex.notna(), np.nan))
    assert dataset.label.dtype == object and dataset.label.has_missing()
    grade = dataset.facets["grade"]
    assert isinstance(grade.dtype, pd.CategoricalDtype) and list(grade.dtype.categories) == ["z", "b", "a"]
    assert grade.uniques.tolist() == ["b", "a"]
    assert grade.codes.tolist() == [0, 1, -1, 1, 0]
    assert list(dataset.features.columns) == ["age", "sex", "amount", "grade"]
    pd.testing.assert_series_equal(dataset.features["amount"], expected["amount"].reset_index(drop=True))
    assert dataset.features["grade"].tolist()[:2] == ["b", "a"]


def test_parquet_config_headers_rename_columns(tmp_path):
    path = tmp_path / "d.parquet"
    parquet_frame().to_parquet(path, index=False)
    cfg = config("application/x-parquet", headers=["A", "S", "M", "G", "Y"], label="Y", facet=[Facet(1)])
    dataset = load_dataset(cfg, path)
    assert dataset.label.name == "Y" and dataset.label.to_series().tolist() == [True, False, True, True, False]
    assert list(dataset.facets) == ["S"]
    with pytest.raises(DataError, match=r"^Headers in config do not match .* names 2 columns but .* has 5"):
        load_dataset(config("application/x-parquet", headers=["A", "S"], label="A"), path)


def test_parquet_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=rf"{bad}: cannot read this file as Parquet"):
        load_dataset(config("application/x-parquet", label="a"), bad)
    root = tmp_path / "d"
    root.mkdir()
    pq.write_table(pa.table({"a": [1], "b": [2]}), root / "1.parquet")
    pq.write_table(pa.table({"a": [1], "c": [2]}), root / "2.parquet")
    with pytest.raises(DataError, match=r"2.parquet does not have the columns of .*1.parquet: it lacks \['b'\]; it also "
                                        r"has \['c'\] \(.*1.parquet has \['a', 'b'\]\)"):
        load_dataset(config("application/x-parquet", label="a"), root)


def test_unsupported_dataset_type(tmp_path):
    path = tmp_path / "images.manifest"
    path.write_text("{}")
    with pytest.raises(DataError, match="dataset_type 'application/x-image' is not supported"):
        load_dataset(config("application/x-image"), path)
