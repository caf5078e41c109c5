"""Time-series dataset formats (analyzer/data/time_series.py): the SDK's own examples of the three
``dataset_format`` layouts (``TimeSeriesJSONDatasetFormat`` docstring, sagemaker-core clarify), read
into items, and the errors that name the file, item and locator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyzer.config import parse_config
from analyzer.data import load_dataset
from analyzer.data.time_series import TimeSeriesDataset
from analyzer.errors import DataError

# Verbatim from the SDK docstring (three layouts of the same kind of data).
COLUMNS_DOC = {"ids": [1, 2], "timestamps": [3, 4], "target_ts": [5, 6], "rts1": [0.25, 0.5], "rts2": [1.25, 1.5],
               "scv1": [10, 20], "scv2": [30, 40]}
COLUMNS_LOCATORS = {"item_id": "ids", "timestamp": "timestamps", "target_time_series": "target_ts",
                    "related_time_series": ["rts1", "rts2"], "static_covariates": ["scv1", "scv2"]}
ITEM_RECORDS_DOC = [
    {"id": 1, "scv1": 10, "scv2": "red", "timeseries": [
        {"timestamp": 1, "target_ts": 5, "rts1": 0.25, "rts2": 10},
        {"timestamp": 2, "target_ts": 6, "rts1": 0.35, "rts2": 20},
        {"timestamp": 3, "target_ts": 4, "rts1": 0.45, "rts2": 30}]},
    {"id": 2, "scv1": 20, "scv2": "blue", "timeseries": [
        {"timestamp": 1, "target_ts": 4, "rts1": 0.25, "rts2": 40},
        {"timestamp": 2, "target_ts": 2, "rts1": 0.35, "rts2": 50}]},
]
ITEM_RECORDS_LOCATORS = {"item_id": "[*].id", "timestamp": "[*].timeseries[].timestamp",
                         "target_time_series": "[*].timeseries[].target_ts",
                         "related_time_series": ["[*].timeseries[].rts1", "[*].timeseries[].rts2"],
                         "static_covariates": ["[*].scv1", "[*].scv2"]}
TIMESTAMP_RECORDS_DOC = [
    {"id": 1, "timestamp": 1, "target_ts": 5, "scv1": 10, "rts1": 0.25},
    {"id": 1, "timestamp": 2, "target_ts": 6, "scv1": 10, "rts1": 0.5},
    {"id": 1, "timestamp": 3, "target_ts": 3, "scv1": 10, "rts1": 0.75},
    {"id": 2, "timestamp": 5, "target_ts": 10, "scv1": 20, "rts1": 1},
]
TIMESTAMP_RECORDS_LOCATORS = {"item_id": "[*].id", "timestamp": "[*].timestamp", "target_time_series": "[*].target_ts",
                              "related_time_series": ["[*].rts1"], "static_covariates": ["[*].scv1"]}
ASV = {"asymmetric_shapley_value": {"direction": "chronological", "granularity": "timewise"}}
PREDICTOR = {"content_template": "$record", "record_template": '{"target": $target_time_series}',
             "time_series_predictor_config": {"forecast": "mean"}}


def load(tmp_path, document, locators: dict, dataset_format: str | None, **extra) -> TimeSeriesDataset:
    (tmp_path / "data.json").write_text(json.dumps(document))
    ts = dict(locators, **({"dataset_format": dataset_format} if dataset_format else {}))
    config = parse_config({"dataset_type": "application/json", "methods": ASV, "predictor": PREDICTOR,
                           "time_series_data_config": ts, **extra})
    dataset = load_dataset(config, tmp_path / "data.json")
    assert isinstance(dataset, TimeSeriesDataset)
    return dataset


def test_columns(tmp_path):
    dataset = load(tmp_path, COLUMNS_DOC, COLUMNS_LOCATORS, "columns")
    assert [item.item_id for item in dataset.items] == [1, 2]
    assert dataset.items[1].timestamps == [4]
    np.testing.assert_array_equal(dataset.items[0].target, [5.0])
    np.testing.assert_array_equal(dataset.items[1].related, [[0.5], [1.5]])
    assert [item.static for item in dataset.items] == [[10, 30], [20, 40]]
    assert (dataset.target_name, dataset.related_names, dataset.static_names) == ("target_ts", ["rts1", "rts2"],
                                                                                  ["scv1", "scv2"])


def test_item_records_with_flattening_locators_keep_items_apart(tmp_path):
    dataset = load(tmp_path, ITEM_RECORDS_DOC, ITEM_RECORDS_LOCATORS, "item_records")
    first, second = dataset.items
    assert first.timestamps == [1, 2, 3] and second.timestamps == [1, 2]
    np.testing.assert_array_equal(first.target, [5, 6, 4])
    np.testing.assert_array_equal(second.related, [[0.25, 0.35], [40, 50]])
    assert (first.static, second.static) == ([10, "red"], [20, "blue"])
    assert dataset.n_rows == 2 and dataset.feature_names == ["target_ts", "rts1", "rts2", "scv1", "scv2"]


def test_item_records_with_one_list_per_item(tmp_path):
    locators = {key: (value.replace("[].", "[*].") if isinstance(value, str) else
                      [v.replace("[].", "[*].") for v in value]) for key, value in ITEM_RECORDS_LOCATORS.items()}
    nested = load(tmp_path, ITEM_RECORDS_DOC, locators, "item_records")
    flat = load(tmp_path, ITEM_RECORDS_DOC, ITEM_RECORDS_LOCATORS, "item_records")
    for a, b in zip(nested.items, flat.items, strict=True):
        assert a.timestamps == b.timestamps and a.static == b.static
        np.testing.assert_array_equal(a.related, b.related)


def test_timestamp_records(tmp_path):
    dataset = load(tmp_path, TIMESTAMP_RECORDS_DOC, TIMESTAMP_RECORDS_LOCATORS, "timestamp_records",
                   headers=["item", "time", "load", "price", "region"])
    first, second = dataset.items
    assert first.timestamps == [1, 2, 3] and second.timestamps == [5]
    np.testing.assert_array_equal(first.related, [[0.25, 0.5, 0.75]])
    assert (first.static, second.static) == ([10], [20])
    assert (dataset.target_name, dataset.related_names, dataset.static_names) == ("load", ["price"], ["region"])


def test_integer_locators_index_rows(tmp_path):
    rows = [["a", "t1", 1.5, None], ["a", "t2", 2.5, 7], ["b", "t1", 3.0, 8]]
    dataset = load(tmp_path, rows, {"item_id": 0, "timestamp": 1, "target_time_series": 2,
                                    "related_time_series": [3]}, None)
    first, second = dataset.items
    np.testing.assert_array_equal(first.related, [[np.nan, 7]])
    assert dataset.target_name == "column_2" and second.timestamps == ["t1"]


def test_items_split_across_files_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.json", "b.json"):
        (tmp_path / "data" / name).write_text(json.dumps(TIMESTAMP_RECORDS_DOC))
    config = parse_config({"dataset_type": "application/json", "methods": ASV, "predictor": PREDICTOR,
                           "time_series_data_config": dict(TIMESTAMP_RECORDS_LOCATORS,
                                                           dataset_format="timestamp_records")})
    with pytest.raises(DataError, match=r"b\.json: item_id 1 also appears in .*a\.json"):
        load_dataset(config, tmp_path / "data")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d[1].update(timestamp=1), "item 1: timestamp 1 appears twice"),
    (lambda d: d[2].update(scv1=11), "item 1: time_series_data_config.static_covariates[0] must have one value per item"),
    (lambda d: d[0].update(target_ts=[1]), "item 1, timestamp 1: time_series_data_config.target_time_series value [1]"),
    (lambda d: d[3].update(id=None), "row 3 has no item_id"),
])
def test_bad_rows_are_named(tmp_path, mutate, fragment):
    document = json.loads(json.dumps(TIMESTAMP_RECORDS_DOC))
    mutate(document)
    with pytest.raises(DataError, match=None) as error:
        load(tmp_path, document, TIMESTAMP_RECORDS_LOCATORS, "timestamp_records")
    assert fragment in str(error.value)
    assert "data.json" in str(error.value)


def test_item_records_locator_that_mixes_items_is_explained(tmp_path):
    document = {"items": ITEM_RECORDS_DOC}
    locators = {key: (v.replace("[*]", "items[*]") if isinstance(v, str) else [x.replace("[*]", "items[*]") for x in v])
                for key, v in ITEM_RECORDS_LOCATORS.items()}
    with pytest.raises(DataError, match="cannot tell which values belong to which of the 2 items"):
        load(tmp_path, document, locators, "item_records")


def test_headers_must_name_every_located_column(tmp_path):
    with pytest.raises(DataError, match="headers has 3 names, but time_series_data_config locates 5 columns"):
        load(tmp_path, TIMESTAMP_RECORDS_DOC, TIMESTAMP_RECORDS_LOCATORS, "timestamp_records", headers=["a", "b", "c"])


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "data.json").write_text("[{]")
    config = parse_config({"dataset_type": "application/json", "methods": ASV, "predictor": PREDICTOR,
                           "time_series_data_config": dict(TIMESTAMP_RECORDS_LOCATORS, dataset_format="columns")})
    with pytest.raises(DataError, match=r"data\.json: not a valid JSON document"):
        load_dataset(config, tmp_path / "data.json")


def test_timestamp_records_keep_missing_values_in_their_row(tmp_path):
    document = json.loads(json.dumps(TIMESTAMP_RECORDS_DOC))
    document[1]["target_ts"] = None
    del document[2]["rts1"]
    first, _ = load(tmp_path, document, TIMESTAMP_RECORDS_LOCATORS, "timestamp_records").items
    np.testing.assert_array_equal(first.target, [5, np.nan, 3])
    np.testing.assert_array_equal(first.related, [[0.25, 0.5, np.nan]])


@pytest.mark.parametrize("stamps, named", [
    ([1, 2, 4, 3], "timestamp 3 comes after 4"),
    ([1.5, 2.5, 2.0], "timestamp 2.0 comes after 2.5"),
    (["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 04:00", "2024-01-01 03:00"],
     "timestamp '2024-01-01 03:00' comes after '2024-01-01 04:00'"),
])
def test_timestamps_out_of_order_are_refused(tmp_path, stamps, named):
    document = [{"id": "a", "timestamp": t, "target_ts": float(i)} for i, t in enumerate(stamps)]
    locators = {"item_id": "[*].id", "timestamp": "[*].timestamp", "target_time_series": "[*].target_ts"}
    with pytest.raises(DataError) as error:
        load(tmp_path, document, locators, "timestamp_records")
    message = str(error.value)
    assert "data.json" in message and "item 'a'" in message
    assert named in message


def test_timestamps_in_order_or_not_comparable_are_kept(tmp_path):
    locators = {"item_id": "[*].id", "timestamp": "[*].timestamp", "target_time_series": "[*].target_ts"}
    stamps = ["2024-01-01T23:00", "2024-01-02T01:00", "2024-01-10"]   # chronological, not lexical order issue
    dataset = load(tmp_path, [{"id": 1, "timestamp": t, "target_ts": 1.0} for t in stamps], locators,
                   "timestamp_records")
    assert dataset.items[0].timestamps == stamps
    labels = ["week b", "week a"]   # not dates: taken in file order as given
    dataset = load(tmp_path, [{"id": 1, "timestamp": t, "target_ts": 1.0} for t in labels], locators,
                   "timestamp_records")
    assert dataset.items[0].timestamps == labels


DAY_FIRST = [{"id": "A", "timestamp": t, "target_ts": float(i)} for i, t in
             enumerate(["11.01.2021", "12.01.2021", "13.01.2021", "14.01.2021"])] + \
            [{"id": "B", "timestamp": t, "target_ts": float(i)} for i, t in enumerate(["11.01.2021", "12.01.2021"])]
STAMP_LOCATORS = {"item_id": "[*].id", "timestamp": "[*].timestamp", "target_time_series": "[*].target_ts"}


def test_day_first_timestamps_in_order_are_read_day_first_for_the_whole_column(tmp_path, caplog):
    """QA ts/data/d31: '12.01.2021' was read alone as 1 December and '13.01.2021' as 13 January, so rows in
    order were refused. The column is read with one format: '13.01.2021' makes it day-first, for item B too
    (whose own timestamps would read month-first)."""
    from analyzer.data.time_series import parse_timestamps

    with caplog.at_level("INFO", logger="analyzer.data.time_series"):
        dataset = load(tmp_path, DAY_FIRST, STAMP_LOCATORS, "timestamp_records")
    assert [item.timestamps for item in dataset.items] == [["11.01.2021", "12.01.2021", "13.01.2021", "14.01.2021"],
                                                           ["11.01.2021", "12.01.2021"]]
    assert "read day-first (e.g. '14.01.2021' is 2021-01-14)" in caplog.text
    parsed = parse_timestamps(["11.01.2021", "12.01.2021", "13.01.2021"])
    assert {key: f"{value:%Y-%m-%d}" for key, value in parsed.items()} == {
        "11.01.2021": "2021-01-11", "12.01.2021": "2021-01-12", "13.01.2021": "2021-01-13"}
    backwards = [dict(row, timestamp=t) for row, t in zip(DAY_FIRST, ["12.01.2021", "11.01.2021", "13.01.2021",
                                                                      "14.01.2021", "11.01.2021", "12.01.2021"],
                                                           strict=True)]
    with pytest.raises(DataError, match="item 'A': timestamp '11.01.2021' comes after '12.01.2021' but is not later"):
        load(tmp_path, backwards, STAMP_LOCATORS, "timestamp_records")


def test_ambiguous_but_consistent_timestamps_are_read_month_first_and_logged(tmp_path, caplog):
    """Every day <= 12: both readings parse every value. Month-first is kept (as before) and the log says so;
    '05.01.2021' (5 May) then '01.02.2021' (2 January) is out of order that way."""
    from analyzer.data.time_series import parse_timestamps

    stamps = ["01.02.2021", "02.02.2021", "03.02.2021"]
    with caplog.at_level("INFO", logger="analyzer.data.time_series"):
        dataset = load(tmp_path, [{"id": 1, "timestamp": t, "target_ts": 1.0} for t in stamps], STAMP_LOCATORS,
                       "timestamp_records")
    assert dataset.items[0].timestamps == stamps
    assert ("read month-first: every value also reads day-first ('01.02.2021' is 2021-01-02 month-first, "
            "2021-02-01 day-first)") in caplog.text
    assert [f"{v:%Y-%m-%d}" for v in parse_timestamps(stamps).values()] == ["2021-01-02", "2021-02-02", "2021-03-02"]
    with pytest.raises(DataError, match="timestamp '01.02.2021' comes after '05.01.2021' but is not later"):
        load(tmp_path, [{"id": 1, "timestamp": t, "target_ts": 1.0} for t in ["05.01.2021", "01.02.2021"]],
             STAMP_LOCATORS, "timestamp_records")


def test_iso_timestamps_are_not_read_year_day_month_and_mixed_formats_each_parse_alone(caplog):
    from analyzer.data.time_series import parse_timestamps

    with caplog.at_level("INFO", logger="analyzer.data.time_series"):
        iso = parse_timestamps(["2021-01-11", "2021-01-12"])
        assert "month-first" not in caplog.text and "day-first" not in caplog.text
        mixed = parse_timestamps(["2021-01-11", "12 Jan 2021", "2021/01/13"])
    assert [f"{v:%Y-%m-%d}" for v in iso.values()] == ["2021-01-11", "2021-01-12"]
    assert [f"{v:%Y-%m-%d}" for v in mixed.values()] == ["2021-01-11", "2021-01-12", "2021-01-13"]
    assert "in several formats: each is parsed on its own" in caplog.text
    assert parse_timestamps(["week b", "week a"]) is None
