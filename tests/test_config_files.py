"""Config files on disk: discovery, reading, the sample configs, and what Lucent cannot run yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyzer.config import (
    AnalysisConfig,
    Facet,
    find_config_file,
    load_config,
    parse_config,
    unsupported_methods,
)
from analyzer.config.parser import JSON_ERROR, SCHEMA_ERROR
from analyzer.errors import ConfigError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"
DEMO_COLUMNS = ["age", "sex", "race", "education_years", "hours_per_week", "credit_amount", "age_group",
                "approved", "predicted_approved"]
BIAS = {"dataset_type": "text/csv", "label": "y", "predicted_label": "p", "label_values_or_threshold": [1],
        "facet": [{"name_or_index": "g"}], "methods": {"pre_training_bias": {"methods": "all"}}}


def write(path: Path, doc: dict | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


# ---- discovery ------------------------------------------------------------------------------------
def test_analysis_config_json_is_preferred(tmp_path):
    write(tmp_path / "other.json", BIAS)
    preferred = write(tmp_path / "analysis_config.json", BIAS)
    assert find_config_file(tmp_path) == preferred


def test_single_other_json_file_is_used(tmp_path):
    only = write(tmp_path / "bias_analysis_config.json", BIAS)  # as the boto3 notebook uploads it
    (tmp_path / "notes.txt").write_text("not a config")
    (tmp_path / "._bias_analysis_config.json").write_bytes(b"\x00\x05")  # macOS resource fork
    (tmp_path / "sub.json").mkdir()
    assert find_config_file(tmp_path) == only


def test_no_config_names_the_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match="No analysis configuration in .*analysis_config.json") as caught:
        find_config_file(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_ambiguous_configs_are_listed(tmp_path):
    write(tmp_path / "a.json", BIAS)
    write(tmp_path / "b.json", BIAS)
    with pytest.raises(ConfigError, match=r"Several \.json files .*\(a\.json, b\.json\)") as caught:
        find_config_file(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(tmp_path / "input" / "config")


# ---- reading --------------------------------------------------------------------------------------
def test_load_config_reads_utf8(tmp_path):
    doc = dict(BIAS, facet=[{"name_or_index": "género", "value_or_threshold": ["mujer"]}])
    path = tmp_path / "analysis_config.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, AnalysisConfig)
    assert config.facet == [Facet("género", ["mujer"])]
    assert config.raw == doc


def test_load_config_accepts_a_bom(tmp_path):
    path = tmp_path / "analysis_config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BIAS).encode())
    assert load_config(path).label == "y"


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "analysis_config.json", '{"dataset_type": "text/csv",\n  "label": }')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(JSON_ERROR)
    assert f"{path}, line 2, column 12: Expecting value" in message


def test_trailing_comma_is_invalid_json(tmp_path):
    path = write(tmp_path / "c.json", '{"dataset_type": "text/csv",}')
    with pytest.raises(ConfigError, match=r"line 1, column 29"):
        load_config(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "analysis_config.json"
    path.write_bytes('{"label": "é"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{JSON_ERROR} .* is not UTF-8"):
        load_config(path)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read the analysis configuration"):
        load_config(tmp_path / "missing.json")


def test_validation_errors_name_the_file(tmp_path):
    path = write(tmp_path / "analysis_config.json", dict(BIAS, lable="y"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{SCHEMA_ERROR} {path} has 1 problem: lable: unknown key")
    assert caught.value.problems == ["lable: unknown key; did you mean 'label'?"]


# ---- sample configs -------------------------------------------------------------------------------
SAMPLE_FILES = sorted(p.name for p in SAMPLES.glob("*.json"))


def test_one_sample_per_dataset_type():
    assert SAMPLE_FILES == ["bias_csv.json", "bias_json.json", "bias_jsonlines.json", "bias_parquet.json",
                            "bias_separate_datasets.json"]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_config_parses_and_runs_on_lucent(name):
    config = load_config(SAMPLES / name)
    assert unsupported_methods(config) == []
    assert config.methods.pre_training_bias.methods[0] == "CDDL"
    assert len(config.methods.post_training_bias.methods) == 13
    assert config.label_values_or_threshold == [1]
    assert [f.name_or_index for f in config.facet] == ["sex", "race"]
    assert config.facet[0].value_or_threshold == ["Female"]
    assert config.group_variable == "age_group"
    assert config.predictor is None


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_configs_are_plain_clarify(name):
    # the samples must also run on SageMaker: no Lucent extension keys
    raw = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    assert "predictor" not in raw
    assert raw["version"] == "1.0"


@pytest.mark.parametrize("name", ["bias_csv.json", "bias_jsonlines.json", "bias_json.json"])
def test_samples_name_the_demo_columns(name):
    assert load_config(SAMPLES / name).headers == DEMO_COLUMNS


def test_samples_are_documented():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for name in SAMPLE_FILES:
        assert f"`{name}`" in readme
    for key in ("dataset_type", "headers", "features", "label", "label_values_or_threshold", "predicted_label",
                "facet", "group_variable", "joinsource_name_or_index", "facet_dataset_uri",
                "predicted_label_dataset_uri", "methods.report", "predictor.endpoint_url", "predictor.image_uri"):
        assert f"**`{key}`**" in readme or f"`{key}`" in readme, key


# ---- what this version cannot run ------------------------------------------------------------------
SHAP_DOC = {"dataset_type": "text/csv", "label": "y", "methods": {"shap": {"baseline": [[1]]}},
            "predictor": {"endpoint_url": "http://localhost:8080"}}


@pytest.mark.parametrize("doc, expected", [
    (BIAS, []),
    (dict(BIAS, methods={"pre_training_bias": {"methods": "all"}, "report": {"name": "r"}}), []),
    (SHAP_DOC, []),
    (dict(SHAP_DOC, methods={"pdp": {"features": ["a"]}}), []),
    (dict(SHAP_DOC, methods={"shap": {"text_config": {"granularity": "token", "language": "english"}}}),
     []),
    (dict(BIAS, dataset_type="application/sagemakercapturejson"),
     ["dataset_type: application/sagemakercapturejson (Model Monitor capture data) is not supported yet in this "
      "Lucent version"]),
    (dict(BIAS, segment_config=[{"name_or_index": "g", "segments": [["a"]]}]), []),  # supported since #16
    (dict(BIAS, predicted_label_dataset_uri="p.csv", methods={"post_training_bias": {"methods": "all"}}), []),
])
def test_unsupported_methods(doc, expected):
    assert unsupported_methods(parse_config(json.loads(json.dumps(doc)))) == expected


def test_post_training_bias_from_a_model_is_supported():
    doc = {k: v for k, v in BIAS.items() if k != "predicted_label"}
    doc = dict(doc, methods={"post_training_bias": {"methods": "all"}}, predictor={})  # model from input/model
    assert unsupported_methods(parse_config(doc)) == []


def test_images_and_time_series_are_supported():  # since #16
    images = {"dataset_type": "application/x-image", "methods": {"shap": {"image_config": {
        "model_type": "IMAGE_CLASSIFICATION"}}}, "predictor": {"endpoint_name": "e", "label_headers": ["cat"]}}
    assert unsupported_methods(parse_config(images)) == []  # supported since #16
    time_series = {"dataset_type": "application/json",
                   "time_series_data_config": {"target_time_series": 0, "item_id": 1, "timestamp": 2},
                   "methods": {"asymmetric_shapley_value": {"direction": "chronological", "granularity": "timewise"}},
                   "predictor": {"endpoint_name": "e", "content_template": "$record",
                                 "record_template": "$target_time_series",
                                 "time_series_predictor_config": {"forecast": "mean"}}}
    assert unsupported_methods(parse_config(time_series)) == []
