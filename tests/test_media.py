"""Media types and the request-template grammar (analyzer/media.py): one declaration that config
validation, the request encoder, the response parser and the built-in model server all use."""

from __future__ import annotations

import pytest

import container.job
from analyzer import media
from analyzer.config import ConfigValidationError, Predictor, model, parse_config, rules, schema
from analyzer.errors import UserError
from analyzer.predict import decode, encode
from container.sidecar import codecs

FEATURE_NAMES = ["age", "sex", "race", "education_years", "hours_per_week", "credit_amount", "age_group"]


@pytest.mark.parametrize(("header", "expected"), [
    ("Text/CSV; charset=utf-8", "text/csv"),
    (" application/JSON ", "application/json"),
    ("application/x-ndjson", "application/jsonlines"),
    ("application/jsonl; q=0.9", "application/jsonlines"),
    ("application/x-npy", "application/x-npy"),
    (None, ""),
])
def test_media_type_normalises_headers_and_config_values(header, expected):
    assert media.media_type(header) == expected


def test_every_user_takes_the_types_from_the_one_module():
    assert model.DATASET_TYPES is media.DATASET_TYPES
    assert schema.MODEL_CONTENT_TYPES is media.MODEL_CONTENT_TYPES
    assert schema.MODEL_ACCEPT_TYPES is decode.ACCEPT_TYPES is media.TABULAR_TYPES
    assert codecs.SUPPORTED_TYPES is media.REQUEST_TYPES
    assert encode.media_type is decode.media_type is codecs.media_type is media.media_type
    assert (container.job.CSV, container.job.NPY, codecs.JSON) == (media.CSV, media.NPY, media.JSON)
    assert rules.COLUMN_TYPES == (media.CSV, media.PARQUET)


def test_placeholders_follow_the_template_grammar():
    template = '{"a": "${age}", "b": ${sex}, "all": $features, "kvp": $features_kvp, "n": $feature_names}'
    assert [(p.name, p.feature) for p in media.placeholders(template)] == [
        (None, "age"), (None, "sex"), ("features", None), ("features_kvp", None), ("feature_names", None)]
    assert [p.name for p in media.placeholders('{"instances": $records} $record')] == ["records", "record"]
    # Whole words only, like string.Template identifiers: $featuresX and $recordset are text.
    assert media.placeholders("$featuresX $recordset $start_time") == [
        media.Placeholder("start_time", None, 22, 33)]
    quoted = media.placeholders('"${age}"')[0]
    assert (quoted.start, quoted.end) == (0, 8)  # the quotes belong to the placeholder


def _config_problems(demo_config: dict, predictor: dict) -> str | None:
    demo_config["predictor"] = {"endpoint_url": "http://127.0.0.1:1", **predictor}
    demo_config["methods"] = {"shap": {"num_clusters": 1}}
    try:
        parse_config(demo_config)
    except ConfigValidationError as error:
        return str(error)
    return None


def _encoder_problem(predictor: dict) -> str | None:
    try:
        encode.RequestEncoder(Predictor(**predictor), FEATURE_NAMES)
    except UserError as error:
        return str(error)
    return None


@pytest.mark.parametrize(("predictor", "accepted"), [
    ({"content_type": "application/jsonlines", "content_template": '{"features":$features}'}, True),
    ({"content_type": "application/jsonlines", "content_template": '{"features":$featuresX}'}, False),
    ({"content_type": "application/jsonlines", "content_template": '{"features":[1,2]}'}, False),
    ({"content_type": "application/json", "content_template": '{"instances":$records}',
      "record_template": '{"age": ${age}, "sex": "${sex}"}'}, True),
    ({"content_type": "application/json", "content_template": "$record",
      "record_template": "$features_kvp"}, True),
    ({"content_type": "application/json", "content_template": '{"instances":$records}',
      "record_template": '{"age": ${agee}}'}, False),  # a bare placeholder naming no column
    ({"content_type": "application/json", "content_template": '{"instances":$recordset}',
      "record_template": "$features"}, False),
    ({"content_type": "application/json", "content_template": '{"instances":$records}',
      "record_template": '{"x": 1}'}, False),
])
def test_config_validation_and_the_encoder_read_templates_alike(demo_config, predictor, accepted):
    config_problem, encoder_problem = _config_problems(demo_config, predictor), _encoder_problem(predictor)
    assert (config_problem is None, encoder_problem is None) == (accepted, accepted), (config_problem,
                                                                                      encoder_problem)
