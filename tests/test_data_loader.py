"""load_dataset: locating roles, features, side datasets and joins, dataset paths, logging."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.config.model import AnalysisConfig, Facet, Methods
from analyzer.data import Dataset, load_dataset, resolve_local_path
from analyzer.errors import DataError

MAIN = "id,age,sex,race,income,approved,predicted\n" + "".join(
    f"{i},{20 + i},{'MF'[i % 2]},{'abc'[i % 3]},{1000 * i},{i % 2},{(i + 1) % 2}\n" for i in range(1, 7))


def csv_config(**kwargs) -> AnalysisConfig:
    return AnalysisConfig(dataset_type="text/csv", methods=Methods(), **kwargs)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def main_csv(tmp_path) -> Path:
    return write(tmp_path / "main.csv", MAIN)


def test_roles_features_and_excluded_columns(main_csv):
    config = csv_config(label="approved", predicted_label="predicted", facet=[Facet("sex"), Facet("race")],
                        group_variable="race", excluded_columns=["income"], joinsource_name_or_index="id")
    dataset = load_dataset(config, main_csv, need_features=True)
    assert isinstance(dataset, Dataset)
    assert dataset.source == str(main_csv)
    assert dataset.n_rows == 6
    assert dataset.headers == ["id", "age", "sex", "race", "income", "approved", "predicted"]
    assert dataset.feature_names == ["age", "sex", "race"]  # facets stay features
    assert dataset.label.to_series().tolist() == [1, 0, 1, 0, 1, 0]
    assert dataset.predicted_label.to_series().tolist() == [0, 1, 0, 1, 0, 1]
    assert list(dataset.facets) == ["sex", "race"]
    assert dataset.facets["sex"].uniques.tolist() == ["F", "M"]
    assert dataset.group.to_series().tolist() == list("bcabca")
    assert dataset.joinsource.to_series().tolist() == [1, 2, 3, 4, 5, 6]
    expected = pd.read_csv(main_csv)[["age", "sex", "race"]]
    pd.testing.assert_frame_equal(dataset.features, expected)


def test_index_locators(main_csv):
    config = csv_config(label=5, predicted_label=6, facet=[Facet(2)], group_variable=3, excluded_columns=[4, "age"],
                        joinsource_name_or_index=0)
    dataset = load_dataset(config, main_csv)
    assert dataset.label.name == "approved" and dataset.predicted_label.name == "predicted"
    assert list(dataset.facets) == ["sex"] and dataset.group.name == "race" and dataset.joinsource.name == "id"
    assert dataset.feature_names == ["sex", "race"]
    assert dataset.features is None


def test_no_roles_still_counts_rows(main_csv):
    dataset = load_dataset(csv_config(), main_csv)
    assert dataset.n_rows == 6
    assert dataset.label is None and dataset.facets == {} and dataset.group is None
    assert dataset.feature_names == dataset.headers


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"label": "aproved"}, "Headers must contain label. `label` 'aproved' is not a column of {path}. "
                           "Headers: ['id', 'age', 'sex', 'race', 'income', 'approved', 'predicted']. "
                           "Did you mean 'approved'?"),
    ({"facet": [Facet("Sex")]}, "Unable to locate the facet. `facet` 'Sex' is not a column of {path}. "),
    ({"group_variable": "races"}, "Unable to locate the group variable. `group_variable` 'races'"),
    ({"predicted_label": "prediction"}, "Headers must contain predicted label. `predicted_label` 'prediction'"),
    ({"joinsource_name_or_index": "ID"}, "Unable to locate the joinsource column."),
    ({"excluded_columns": ["incom"]}, "Unable to locate the excluded column."),
    ({"label": 7}, "Headers must contain label. `label` index 7 is out of range: {path} has 7 columns "
                   "(valid indices 0..6)."),
    ({"facet": [Facet(-1)]}, "Unable to locate the facet. `facet` index -1 is out of range"),
])
def test_error_locators(main_csv, kwargs, message):
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(**kwargs), main_csv)
    assert str(error.value).startswith(message.format(path=main_csv))
    if kwargs.get("facet") == [Facet("Sex")]:
        assert str(error.value).endswith("Did you mean 'sex'?")


# Side datasets and joins --------------------------------------------------------------------------------


def test_facet_and_predicted_label_datasets_joined_by_id(tmp_path):
    main = write(tmp_path / "main.csv", "id,x,y\n1,10,0\n2,20,1\n3,30,1\n")
    # facet rows in another order, spread over files, with an extra id that is ignored
    write(tmp_path / "facets" / "a.csv", "id,gender,region\n3,F,north\n9,M,south\n")
    write(tmp_path / "facets" / "b.csv", "1,M,south\n2,F,south\n")
    write(tmp_path / "pred.csv", "id,predicted_label\n2,1\n1,0\n3,1\n")
    config = csv_config(
        label="y", facet=[Facet("gender")], group_variable="region", joinsource_name_or_index="id",
        facet_dataset_uri=str(tmp_path / "facets"), facet_headers=["id", "gender", "region"],
        predicted_label_dataset_uri=f"file://{tmp_path / 'pred.csv'}",
    )
    dataset = load_dataset(config, main, need_features=True)
    assert dataset.feature_names == ["x"]  # id is the joinsource; facet-dataset columns are never features
    assert list(dataset.features.columns) == ["x"]
    gender = dataset.facets["gender"]
    assert gender.to_series().tolist() == ["M", "F", "F"]
    assert gender.uniques.tolist() == ["M", "F"]  # renumbered in main-row order
    assert gender.codes.tolist() == [0, 1, 1]
    assert dataset.group.name == "region" and dataset.group.to_series().tolist() == ["south", "south", "north"]
    assert dataset.predicted_label.name == "predicted_label"
    assert dataset.predicted_label.to_series().tolist() == [0, 1, 1]


def test_side_datasets_by_row_order_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = write(tmp_path / "main.csv", "x,y\n10,0\n20,1\n")
    write(tmp_path / "side" / "facet.csv", "f\nA\nB\n")
    write(tmp_path / "side" / "pred.csv", "0.2,p\n0.9,q\n")
    config = csv_config(label="y", facet=[Facet(0)], facet_dataset_uri="side/facet.csv",
                        predicted_label_dataset_uri="side/pred.csv", predicted_label_headers=["score", "other"],
                        predicted_label="score")
    dataset = load_dataset(config, main)
    assert dataset.facets["f"].to_series().tolist() == ["A", "B"]
    assert dataset.predicted_label.to_series().tolist() == [0.2, 0.9]
    assert dataset.feature_names == ["x"]


def test_facet_found_in_main_dataset_when_not_in_facet_dataset(tmp_path):
    main = write(tmp_path / "main.csv", "x,y\n10,0\n20,1\n")
    write(tmp_path / "facet.csv", "f\nA\nB\n")
    config = csv_config(label="y", facet=[Facet("f"), Facet("x")], facet_dataset_uri=str(tmp_path / "facet.csv"))
    dataset = load_dataset(config, main)
    assert dataset.facets["x"].to_series().tolist() == [10, 20]
    assert dataset.feature_names == ["x"]


def test_error_side_dataset_row_counts(tmp_path):
    main = write(tmp_path / "main.csv", "x,y\n10,0\n20,1\n")
    facet = write(tmp_path / "facet.csv", "f\nA\nB\nC\n")
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(label="y", facet=[Facet("f")], facet_dataset_uri=str(facet)), main)
    assert str(error.value).startswith(f"{facet} (`facet_dataset_uri`) has 3 rows but the dataset {main} has 2.")


@pytest.mark.parametrize(("facet_rows", "message"), [
    ("1,A\n1,B\n2,C\n", "1 joinsource values of {facet} (`facet_dataset_uri`) (column 'id') appear on more than "
                        "one row, e.g. 1 (2 rows)."),
    ("1,A\n", "1 of the 2 joinsource values of {main} (column 'id') are not in {facet} (`facet_dataset_uri`), "
              "e.g. 2."),
    ("1,A\n,B\n", "1 rows of {facet} (`facet_dataset_uri`) have no joinsource value (column 'id'), the first is "
                  "data row 2."),
])
def test_error_join_ids(tmp_path, facet_rows, message):
    main = write(tmp_path / "main.csv", "id,y\n1,0\n2,1\n")
    facet = write(tmp_path / "facet.csv", "id,f\n" + facet_rows)
    config = csv_config(label="y", facet=[Facet("f")], facet_dataset_uri=str(facet), joinsource_name_or_index="id")
    with pytest.raises(DataError) as error:
        load_dataset(config, main)
    assert str(error.value).startswith(message.format(main=main, facet=facet))


def test_error_joinsource_missing_from_side_dataset(tmp_path):
    main = write(tmp_path / "main.csv", "id,y\n1,0\n")
    facet = write(tmp_path / "facet.csv", "key,f\n1,A\n")
    config = csv_config(label="y", facet=[Facet("f")], facet_dataset_uri=str(facet), joinsource_name_or_index=0)
    with pytest.raises(DataError, match=r"^Unable to locate the joinsource column. `joinsource_name_or_index` 'id' "
                                        r"is not a column of .*facet.csv \(`facet_dataset_uri`\)"):
        load_dataset(config, main)


# Paths --------------------------------------------------------------------------------------------------


def test_resolve_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_local_path("data/x.csv") == tmp_path / "data" / "x.csv"
    assert resolve_local_path("data/x.csv", base_dir=Path("/config/dir")) == Path("/config/dir/data/x.csv")
    assert resolve_local_path("/abs/x.csv", base_dir=Path("/config/dir")) == Path("/abs/x.csv")
    assert resolve_local_path("file:///abs/with%20space.csv") == Path("/abs/with space.csv")
    assert resolve_local_path("file://localhost/abs/x.csv") == Path("/abs/x.csv")
    with pytest.raises(DataError, match=r"^s3://bucket/key: S3 URIs are read by `lucent launch`, which downloads"):
        resolve_local_path("s3://bucket/key")
    with pytest.raises(DataError, match="unsupported URI scheme 'https'"):
        resolve_local_path("https://example.com/x.csv")
    with pytest.raises(DataError, match="file:// URIs must name a local file"):
        resolve_local_path("file://otherhost/x.csv")


def test_error_s3_side_dataset(main_csv):
    config = csv_config(label="approved", facet_dataset_uri="s3://bucket/facets/")
    with pytest.raises(DataError, match=r"^facet_dataset_uri: s3://bucket/facets/: S3 URIs are read by `lucent launch`"):
        load_dataset(config, main_csv)


def test_error_dataset_path_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=rf"^Dataset not found: {missing} does not exist"):
        load_dataset(csv_config(label="y"), missing)


def test_error_folder_without_data_files(tmp_path):
    (tmp_path / "d" / "_temporary").mkdir(parents=True)
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".keep").write_text("")
    with pytest.raises(DataError, match=rf"^Dataset folder {tmp_path / 'd'} contains no data files"):
        load_dataset(csv_config(label="y"), tmp_path / "d")


# Logging ------------------------------------------------------------------------------------------------


def test_log_lines(main_csv, caplog):
    caplog.set_level(logging.INFO, logger="analyzer.data")
    load_dataset(csv_config(label="approved", facet=[Facet("sex")], group_variable="race"), main_csv)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"Dataset type: text/csv uri: {main_csv}"
    assert messages[1] == "Loading dataset..."
    assert messages[2] == (f"{main_csv} line 1 is the header row: 'id' (column 0) is text and the next rows there "
                           "are numbers (no `headers` in the analysis config; set it if this is wrong)")
    assert messages[3].startswith("Loaded dataset: 6 rows, 7 columns (1 files) in ")
    assert messages[4] == ("Role columns: label 'approved': int64 (2 distinct); facet 'sex': object (2 distinct); "
                           "group_variable 'race': object (3 distinct)")


def test_missing_values_in_role_columns(tmp_path):
    path = write(tmp_path / "d.csv", "sex,y\nM,1\n,0\nF,\n")
    dataset = load_dataset(csv_config(label="y", facet=[Facet("sex")]), path)
    assert dataset.label.dtype == np.float64 and dataset.label.codes.tolist() == [0, 1, -1]
    assert dataset.facets["sex"].codes.tolist() == [0, -1, 1]
    assert dataset.facets["sex"].missing_position() == 1
