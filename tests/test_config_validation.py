"""Every validation rule has a failing config whose problem names the key path."""

from __future__ import annotations

import copy
import json

import pytest

from analyzer.config import ConfigValidationError, parse_config
from analyzer.config.parser import SCHEMA_ERROR
from analyzer.errors import ConfigError

HEADERS = ["x", "g", "y", "p"]
BIAS = {
    "dataset_type": "text/csv",
    "headers": HEADERS,
    "label": "y",
    "predicted_label": "p",
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "g", "value_or_threshold": ["b"]}],
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
}
SHAP = {
    "dataset_type": "text/csv",
    "headers": HEADERS[:3],
    "label": "y",
    "methods": {"shap": {"baseline": [[1, "a"]]}},
    "predictor": {"endpoint_name": "e"},
}
TIME_SERIES = {
    "dataset_type": "application/json",
    "time_series_data_config": {"target_time_series": "[].t", "item_id": "[].id", "timestamp": "[].ts",
                                "static_covariates": ["[].s1", "[].s2"], "dataset_format": "timestamp_records"},
    "methods": {"asymmetric_shapley_value": {"direction": "chronological", "granularity": "timewise"}},
    "predictor": {"endpoint_name": "e", "content_template": "$record", "record_template": "$target_time_series",
                  "time_series_predictor_config": {"forecast": "predictions[*].mean"}},
}
DELETE = object()


def edit(base: dict, changes: dict) -> dict:
    """``base`` with dotted-path changes ("methods.shap.seed": 1); DELETE removes a key."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = doc
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return doc


def problems_of(doc) -> list[str]:
    with pytest.raises(ConfigValidationError) as caught:
        parse_config(doc)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert str(error).startswith(SCHEMA_ERROR)
    assert error.problems
    return error.problems


def assert_problem(doc, path: str, *fragments: str) -> None:
    problems = problems_of(doc)
    matching = [p for p in problems if p.startswith(f"{path}: ")]
    assert matching, f"no problem at {path!r} in {problems}"
    assert any(all(f in p for f in fragments) for p in matching), (fragments, matching)


# (base, changes, key path, fragments of the message)
SCHEMA_CASES = {
    "unknown key with suggestion": (BIAS, {"lable": "y"}, "lable", ("unknown key", "did you mean 'label'")),
    "unknown nested key": (SHAP, {"methods.shap.agg_methd": "median"}, "methods.shap.agg_methd",
                           ("did you mean 'agg_method'",)),
    "key in the wrong object": (SHAP, {"predictor.probability_threshold": 0.7}, "predictor.probability_threshold",
                                ("belongs at the top level",)),
    "unknown method": (BIAS, {"methods.shapp": {}}, "methods.shapp", ("did you mean 'shap'",)),
    "unknown key without a near match lists keys": (BIAS, {"methods.pre_training_bias.zzz": 1},
                                                    "methods.pre_training_bias.zzz", ("known keys here: methods",)),
    "dataset_type missing": (BIAS, {"dataset_type": DELETE}, "dataset_type", ("required key missing",)),
    "methods missing": (BIAS, {"methods": DELETE}, "methods", ("required key missing",)),
    "required key null": (BIAS, {"dataset_type": None}, "dataset_type", ("null",)),
    "dataset_type enum": (BIAS, {"dataset_type": "text/tsv"}, "dataset_type", ("'text/tsv' is not one of",
                                                                                "text/csv")),
    "version": (BIAS, {"version": "2.0"}, "version", ("'2.0' is not supported", '"1.0"')),
    "version type": (BIAS, {"version": 1.0}, "version", ("expected a string",)),
    "bool is not a locator": (BIAS, {"label": True}, "label", ("expected a string or an integer", "boolean")),
    "bool is not a count": (SHAP, {"methods.shap.num_samples": True}, "methods.shap.num_samples",
                            ("expected an integer", "got true (boolean)")),
    "float is not a count": (SHAP, {"predictor.initial_instance_count": 1.0}, "predictor.initial_instance_count",
                             ("expected an integer",)),
    "num_samples >= 1": (SHAP, {"methods.shap.num_samples": 0}, "methods.shap.num_samples", ("must be >= 1",)),
    "num_clusters >= 1": (SHAP, {"methods.shap.baseline": DELETE, "methods.shap.num_clusters": -2},
                          "methods.shap.num_clusters", ("must be >= 1",)),
    "negative index": (BIAS, {"label": -1}, "label", ("must be >= 0",)),
    "agg_method": (SHAP, {"methods.shap.agg_method": "mean"}, "methods.shap.agg_method",
                   ("'mean' is not one of mean_abs, median, mean_sq",)),
    "use_logit bool": (SHAP, {"methods.shap.use_logit": "false"}, "methods.shap.use_logit", ("expected a boolean",)),
    "save_local_shap_values bool": (SHAP, {"methods.shap.save_local_shap_values": 1},
                                    "methods.shap.save_local_shap_values", ("expected a boolean",)),
    "seed integer": (SHAP, {"methods.shap.seed": 1.5}, "methods.shap.seed", ("expected an integer",)),
    "facet name missing": (BIAS, {"facet": [{"name_or_index": "g"}, {"value_or_threshold": [1]}]},
                           "facet[1].name_or_index", ("required key missing",)),
    "facet list empty": (BIAS, {"facet": []}, "facet", ("at least 1 item",)),
    "facet not a list": (BIAS, {"facet": {"name_or_index": "g"}}, "facet", ("expected a list",)),
    "facet values list": (BIAS, {"facet": [{"name_or_index": "g", "value_or_threshold": 40}]},
                          "facet[0].value_or_threshold", ("expected a list",)),
    "label values list": (BIAS, {"label_values_or_threshold": 0.5}, "label_values_or_threshold",
                          ("expected a list",)),
    "label values items": (BIAS, {"label_values_or_threshold": [[1]]}, "label_values_or_threshold[0]",
                           ("expected a number or a string or a boolean",)),
    "probability_threshold number": (BIAS, {"probability_threshold": "high"}, "probability_threshold",
                                     ("expected a number", '"high"')),
    "headers strings": (BIAS, {"headers": ["x", 2, "y", "p"]}, "headers[1]", ("expected a string",)),
    "headers empty": (BIAS, {"headers": []}, "headers", ("at least 1 item",)),
    "unknown metric": (BIAS, {"methods.pre_training_bias.methods": ["CI", "XX"]},
                       "methods.pre_training_bias.methods[1]",
                       ("'XX' is not one of CDDL, CI, DPL, JS, KL, KS, LP, TVD",)),
    "metric names are exact": (BIAS, {"methods.post_training_bias.methods": ["dppl"]},
                               "methods.post_training_bias.methods[0]", ("did you mean 'DPPL'",)),
    "metric string other than all": (BIAS, {"methods.pre_training_bias.methods": "DPL"},
                                     "methods.pre_training_bias.methods", ('expected "all" or a list',)),
    "empty metric list": (BIAS, {"methods.pre_training_bias.methods": []}, "methods.pre_training_bias.methods",
                          ("at least 1 item",)),
    "bias methods key": (BIAS, {"methods.pre_training_bias": {}}, "methods.pre_training_bias.methods",
                         ("required key missing",)),
    "language": (SHAP, {"methods.shap.text_config": {"granularity": "token", "language": "englsh"}},
                 "methods.shap.text_config.language", ("'englsh' is not one of the", "did you mean 'english'")),
    "granularity": (SHAP, {"methods.shap.text_config": {"granularity": "word", "language": "en"}},
                    "methods.shap.text_config.granularity", ("token, sentence, paragraph",)),
    "text_config language required": (SHAP, {"methods.shap.text_config": {"granularity": "token"}},
                                      "methods.shap.text_config.language", ("required key missing",)),
    "max_top_tokens": (SHAP, {"methods.shap.text_config": {"granularity": "token", "language": "en",
                                                           "max_top_tokens": 0}},
                       "methods.shap.text_config.max_top_tokens", (">= 1",)),
    "baseline empty": (SHAP, {"methods.shap.baseline": []}, "methods.shap.baseline", ("at least 1 item",)),
    "baseline type": (SHAP, {"methods.shap.baseline": 5}, "methods.shap.baseline",
                      ("expected a string or a list or an object",)),
    "baseline row type": (SHAP, {"methods.shap.baseline": [[1, [2]]]}, "methods.shap.baseline[0][1]",
                          ("expected",)),
    "iou_threshold range": (dict(SHAP, dataset_type="application/x-image", headers=DELETE, label=DELETE),
                            {"methods.shap": {"image_config": {"iou_threshold": 1.5}},
                             "predictor.label_headers": ["a"]},
                            "methods.shap.image_config.iou_threshold", ("must be <= 1",)),
    "image model_type": (SHAP, {"methods.shap": {"image_config": {"model_type": "segmenter"}}},
                         "methods.shap.image_config.model_type", ("IMAGE_CLASSIFICATION, OBJECT_DETECTION",)),
    "pdp grid_resolution": (SHAP, {"methods.pdp": {"grid_resolution": 0}}, "methods.pdp.grid_resolution",
                            (">= 1",)),
    "pdp features empty": (SHAP, {"methods.pdp": {"features": []}}, "methods.pdp.features", ("at least 1 item",)),
    "report name": (BIAS, {"methods.report": {"name": "out/report"}}, "methods.report.name",
                    ("must be a file name",)),
    "endpoint_name_prefix pattern": (SHAP, {"predictor.endpoint_name": DELETE, "predictor.model_name": "m",
                                            "predictor.instance_type": "ml.m5.xlarge",
                                            "predictor.initial_instance_count": 1,
                                            "predictor.endpoint_name_prefix": "~bad"},
                                     "predictor.endpoint_name_prefix",
                                     ("Invalid endpoint_name_prefix", "^[a-zA-Z0-9](-*[a-zA-Z0-9])")),
    "endpoint_name_prefix length": (SHAP, {"predictor.endpoint_name": DELETE, "predictor.model_name": "m",
                                           "predictor.instance_type": "ml.m5.xlarge",
                                           "predictor.initial_instance_count": 1,
                                           "predictor.endpoint_name_prefix": "a" * 24},
                                    "predictor.endpoint_name_prefix", ("at most 23 characters",)),
    "endpoint_url scheme": (SHAP, {"predictor.endpoint_url": "ftp://host/x"}, "predictor.endpoint_url",
                            ("http:// or https:// URL",)),
    "endpoint_url host": (SHAP, {"predictor.endpoint_url": "localhost:8080"}, "predictor.endpoint_url",
                          ("http:// or https:// URL",)),
    "image_uri empty": (SHAP, {"predictor.image_uri": ""}, "predictor.image_uri", ("must not be empty",)),
    "content_type enum": (SHAP, {"predictor.content_type": "application/x-parquet"}, "predictor.content_type",
                          ("'application/x-parquet' is not one of",)),
    "accept_type enum": (SHAP, {"predictor.accept_type": "image/jpeg"}, "predictor.accept_type",
                         ("text/csv, application/jsonlines, application/json",)),
    "custom_attributes ascii": (SHAP, {"predictor.custom_attributes": "café"}, "predictor.custom_attributes",
                                ("US-ASCII",)),
    "custom_attributes length": (SHAP, {"predictor.custom_attributes": "a" * 1025}, "predictor.custom_attributes",
                                 ("1024",)),
    "label_headers items": (SHAP, {"predictor.label_headers": [0.5]}, "predictor.label_headers[0]",
                            ("expected a string or an integer",)),
    "content_template map values": (SHAP, {"predictor.content_template": {"a": 1}}, "predictor.content_template.a",
                                    ("expected a string",)),
    "forecast required": (TIME_SERIES, {"predictor.time_series_predictor_config": {}},
                          "predictor.time_series_predictor_config.forecast", ("required key missing",)),
    "asv direction": (TIME_SERIES, {"methods.asymmetric_shapley_value.direction": "forward"},
                      "methods.asymmetric_shapley_value.direction", ("chronological, anti_chronological",)),
    "asv granularity required": (TIME_SERIES, {"methods.asymmetric_shapley_value.granularity": DELETE},
                                 "methods.asymmetric_shapley_value.granularity", ("required key missing",)),
    "asv baseline enum": (TIME_SERIES, {"methods.asymmetric_shapley_value.baseline": {"target_time_series": "one"}},
                          "methods.asymmetric_shapley_value.baseline.target_time_series", ("zero, mean",)),
    "ts locator lists": (TIME_SERIES, {"time_series_data_config.related_time_series": ["[].a", 3]},
                         "time_series_data_config.related_time_series",
                         ("Please provide a list of str for ``related_time_series``",)),
    "ts empty string": (TIME_SERIES, {"time_series_data_config.related_time_series": [""]},
                        "time_series_data_config.related_time_series[0]", ("empty string",)),
    "ts dataset_format": (TIME_SERIES, {"time_series_data_config.dataset_format": "rows"},
                          "time_series_data_config.dataset_format", ("columns, item_records, timestamp_records",)),
    "ts item_id required": (TIME_SERIES, {"time_series_data_config.item_id": DELETE},
                            "time_series_data_config.item_id", ("required key missing",)),
    "segments not empty": (BIAS, {"segment_config": [{"name_or_index": "g", "segments": []}]},
                           "segment_config[0].segments", ("at least 1 item",)),
    "segment values": (BIAS, {"segment_config": [{"name_or_index": "g", "segments": [[1.5]]}]},
                       "segment_config[0].segments[0][0]", ("expected a string or an integer",)),
    "nan is not a number here": (BIAS, {"probability_threshold": float("nan")}, "probability_threshold",
                                 ("finite",)),
}

RULE_CASES = {
    "report alone": (BIAS, {"methods": {"report": {"name": "report"}}}, "methods",
                     ("analysis_config must have at least one working method", "methods.report alone")),
    "no methods at all": (BIAS, {"methods": {}}, "methods", ("at least one working method",)),
    "bias needs label": (BIAS, {"label": DELETE}, "label", ("required by methods.pre_training_bias",)),
    "bias needs label values": (BIAS, {"label_values_or_threshold": DELETE}, "label_values_or_threshold",
                                ("required by",)),
    "bias needs facet": (BIAS, {"facet": DELETE}, "facet", ("required by",)),
    "a facet column given twice": (BIAS, {"facet": [{"name_or_index": "g", "value_or_threshold": ["a"]},
                                                    {"name_or_index": "g"}]},
                                   "facet[1].name_or_index", ("'g' is facet[0] too",)),
    "baseline and num_clusters": (SHAP, {"methods.shap.num_clusters": 3}, "methods.shap.num_clusters",
                                  ("Baseline and num_clusters cannot be provided together",)),
    "features_to_explain with text": (SHAP, {"methods.shap.features_to_explain": ["x"],
                                             "methods.shap.text_config": {"granularity": "token",
                                                                          "language": "en"}},
                                      "methods.shap.features_to_explain",
                                      ("`features_to_explain` is not supported for datasets containing text "
                                       "features or images.",)),
    "features_to_explain label": (SHAP, {"methods.shap.features_to_explain": ["x", "y"]},
                                  "methods.shap.features_to_explain", ("cannot include the label 'y'",)),
    "image_config needs images": (SHAP, {"methods.shap.image_config": {"model_type": "OBJECT_DETECTION"}},
                                  "methods.shap.image_config", ("only for dataset_type application/x-image",)),
    "pdp needs features without shap": (SHAP, {"methods": {"pdp": {"grid_resolution": 10}}},
                                        "methods.pdp.features",
                                        ("PDP features must be provided when ShapConfig is not provided",)),
    "facet dataset only csv": (dict(BIAS, dataset_type="application/jsonlines", features="f", headers=DELETE),
                               {"facet_dataset_uri": "s3://b/f.csv"}, "facet_dataset_uri",
                               ("'facet_dataset_uri' and 'facet_headers' are not supported for dataset_type "
                                "'application/jsonlines'",)),
    "predicted label dataset only csv": (dict(BIAS, dataset_type="application/x-parquet"),
                                         {"predicted_label_headers": ["p"]}, "predicted_label_headers",
                                         ("'predicted_label_dataset_uri' and 'predicted_label_headers' are not "
                                          "supported",)),
    "predicted_label not with images": (dict(BIAS, dataset_type="application/x-image", headers=DELETE), {},
                                        "predicted_label", ("'predicted_label' is not supported for dataset_type "
                                                            "'application/x-image'",)),
    "excluded_columns not with images": (dict(BIAS, dataset_type="application/x-image", headers=DELETE),
                                         {"excluded_columns": [0]}, "excluded_columns",
                                         ("'excluded_columns' is not supported",)),
    "json needs features": (dict(BIAS, dataset_type="application/json", headers=DELETE), {}, "features",
                            ("features JMESPath is required for application/json dataset_type",)),
    "jsonlines needs features": (dict(BIAS, dataset_type="application/jsonlines", headers=DELETE), {}, "features",
                                 ("features JMESPath is required for application/jsonlines dataset_type",)),
    "jmespath label": (dict(BIAS, dataset_type="application/jsonlines", features="f", headers=DELETE),
                       {"label": 2}, "label", ("JMESPath",)),
    "time series needs json": (TIME_SERIES, {"dataset_type": "text/csv"}, "time_series_data_config",
                               ("only supports JSON",)),
    "label not in headers": (BIAS, {"label": "target"}, "label", ("'target' is not in headers",)),
    "facet not in headers": (BIAS, {"facet": [{"name_or_index": "G"}]}, "facet[0].name_or_index",
                             ("'G' is not in headers", "did you mean 'g'")),
    "facet not in facet headers": (BIAS, {"facet_dataset_uri": "f.csv", "facet_headers": ["id", "sex"],
                                          "facet": [{"name_or_index": "sx"}]},
                                   "facet[0].name_or_index", ("'sx' is not in facet_headers or headers",)),
    "index out of range": (BIAS, {"group_variable": 4}, "group_variable", ("column index 4 is out of range",)),
    "excluded column unknown": (BIAS, {"excluded_columns": ["x", "z"]}, "excluded_columns[1]", ("'z' is not in",)),
    "pdp feature unknown": (SHAP, {"methods.pdp": {"features": ["xx"]}}, "methods.pdp.features[0]",
                            ("'xx' is not in headers", "did you mean 'x'")),
    "display aliases count": (BIAS, {"segment_config": [{"name_or_index": "g", "segments": [["a"]],
                                                         "display_aliases": ["1", "2", "3"]}]},
                              "segment_config[0].display_aliases", ("Number of `display_aliases`",)),
    "shap needs predictor": (SHAP, {"predictor": DELETE}, "predictor", ("required: methods.shap needs model",)),
    "post-training without labels needs predictor": (BIAS, {"predicted_label": DELETE}, "predictor",
                                                     ("neither predicted_label nor predicted_label_dataset_uri",)),
    "model_name needs instance settings": (SHAP, {"predictor": {"model_name": "m"}}, "predictor.instance_type",
                                           ("required with predictor.model_name",)),
    "model_name needs instance count": (SHAP, {"predictor": {"model_name": "m", "instance_type": "ml.m5.large"}},
                                        "predictor.initial_instance_count", ("required with predictor.model_name",)),
    "endpoint_name excludes model_name": (SHAP, {"predictor.model_name": "m", "predictor.instance_type": "t",
                                                 "predictor.initial_instance_count": 1},
                                          "predictor.model_name", ("cannot be used together with "
                                                                   "predictor.endpoint_name",)),
    "endpoint_name excludes prefix": (SHAP, {"predictor.endpoint_name_prefix": "abc"},
                                      "predictor.endpoint_name_prefix", ("predictor.endpoint_name",)),
    "endpoint_url excludes image_uri": (SHAP, {"predictor": {"endpoint_url": "http://h:1", "image_uri": "i"}},
                                        "predictor.image_uri", ("predictor.endpoint_url",)),
    "parquet needs content_type": (dict(SHAP, dataset_type="application/x-parquet"), {}, "predictor.content_type",
                                   ("required when dataset_type is application/x-parquet",)),
    "images need label_headers": (dict(SHAP, dataset_type="application/x-image", headers=DELETE, label=DELETE),
                                  {"methods.shap": {"image_config": {"model_type": "IMAGE_CLASSIFICATION"}}},
                                  "predictor.label_headers", ("required for application/x-image",)),
    "time series model speaks json": (TIME_SERIES, {"predictor.accept_type": "text/csv"}, "predictor.accept_type",
                                      ("must be JSON or JSONLines for time series",)),
    "jsonlines needs content_template": (SHAP, {"predictor.content_type": "application/jsonlines"},
                                         "predictor.content_template",
                                         ("content_template field is required for content_type "
                                          "application/jsonlines",)),
    "jsonlines template needs $features": (SHAP, {"predictor.content_type": "application/jsonlines",
                                                  "predictor.content_template": '{"x": $feature}'},
                                           "predictor.content_template",
                                           ('Invalid content_template {"x": $feature}. Please include a placeholder '
                                            "$features.",)),
    "jsonlines template $features once": (SHAP, {"predictor.content_type": "application/jsonlines",
                                                 "predictor.content_template": "[$features, $features]"},
                                          "predictor.content_template", ("exactly once",)),
    "json needs both templates": (SHAP, {"predictor.content_type": "application/json",
                                         "predictor.content_template": "$records"}, "predictor.record_template",
                                  ("content_template and record_template are required for content_type "
                                   "application/json",)),
    "json template needs $record": (SHAP, {"predictor.content_type": "application/json",
                                           "predictor.content_template": '{"x": 1}',
                                           "predictor.record_template": "$features"},
                                    "predictor.content_template",
                                    ("Please include either placeholder $records or $record.",)),
    "record template needs a placeholder": (SHAP, {"predictor.content_type": "application/json",
                                                   "predictor.content_template": "$records",
                                                   "predictor.record_template": '{"a": 1}'},
                                            "predictor.record_template", ("Invalid record_template",)),
    "record template names columns": (SHAP, {"predictor.content_type": "application/json",
                                             "predictor.content_template": "$records",
                                             "predictor.record_template": '{"a": "${xx}"}'},
                                      "predictor.record_template", ('"${xx}"', "did you mean 'x'")),
    "asv needs time series data": (TIME_SERIES, {"time_series_data_config": DELETE}, "time_series_data_config",
                                   ("required by methods.asymmetric_shapley_value",)),
    "asv needs forecast config": (TIME_SERIES, {"predictor.time_series_predictor_config": DELETE},
                                  "predictor.time_series_predictor_config", ("required by",)),
    "time series data needs asv": (TIME_SERIES, {"methods": {"shap": {"baseline": [[1]]}}},
                                   "methods.asymmetric_shapley_value",
                                   ("Please provide an AsymmetricShapleyValueConfig",)),
    "no bias with time series": (TIME_SERIES, {"methods.pre_training_bias": {"methods": "all"}, "label": "[].y",
                                               "label_values_or_threshold": [1], "facet": [{"name_or_index": "a"}]},
                                 "methods.pre_training_bias", ("Bias metrics are unsupported for time series.",)),
    "no shap with time series": (TIME_SERIES, {"methods.shap": {}}, "methods.shap",
                                 ("cannot be combined with time series",)),
    "no excluded columns with time series": (TIME_SERIES, {"excluded_columns": ["a"]}, "excluded_columns",
                                             ("not supported for time series",)),
    "ts locators same kind": (TIME_SERIES, {"time_series_data_config.item_id": 0}, "time_series_data_config.item_id",
                              ("Please provide str for ``item_id``",)),
    "ts lists same kind": (TIME_SERIES, {"time_series_data_config.static_covariates": [1, 2]},
                           "time_series_data_config.static_covariates", ("list of str",)),
    "ts dataset_format with strings": (TIME_SERIES, {"time_series_data_config.dataset_format": DELETE},
                                       "time_series_data_config.dataset_format", ("required when",)),
    "ts dataset_format not with ints": (TIME_SERIES, {"time_series_data_config": {
        "target_time_series": 0, "item_id": 1, "timestamp": 2, "dataset_format": "columns"}},
        "time_series_data_config.dataset_format", ("only be provided when data files are JSONs",)),
    "fine_grained needs num_samples": (TIME_SERIES, {"methods.asymmetric_shapley_value.granularity": "fine_grained"},
                                       "methods.asymmetric_shapley_value.num_samples", ("required for fine_grained",)),
    "fine_grained only chronological": (TIME_SERIES, {"methods.asymmetric_shapley_value.granularity": "fine_grained",
                                                      "methods.asymmetric_shapley_value.num_samples": 5,
                                                      "methods.asymmetric_shapley_value.direction": "bidirectional"},
                                        "methods.asymmetric_shapley_value.direction",
                                        ("bidirectional and fine_grained granularity are not supported together.",)),
    "num_samples only fine_grained": (TIME_SERIES, {"methods.asymmetric_shapley_value.num_samples": 5},
                                      "methods.asymmetric_shapley_value.num_samples",
                                      ("only used for fine-grained explanations",)),
    "static covariate baseline length": (TIME_SERIES, {"methods.asymmetric_shapley_value.baseline": {
        "static_covariates": {"item1": [1, 2], "item2": [1]}}},
        "methods.asymmetric_shapley_value.baseline.static_covariates.item2", ("does not match number",)),
    "static covariate baseline without columns": (TIME_SERIES, {
        "time_series_data_config.static_covariates": DELETE,
        "methods.asymmetric_shapley_value.baseline": {"static_covariates": {"item1": [1]}}},
        "methods.asymmetric_shapley_value.baseline.static_covariates", ("no static covariate columns",)),
}


def test_bases_are_valid():
    for base in (BIAS, SHAP, TIME_SERIES):
        parse_config(copy.deepcopy(base))


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_problem(case):
    base, changes, path, fragments = SCHEMA_CASES[case]
    assert_problem(edit({k: v for k, v in base.items() if v is not DELETE}, changes), path, *fragments)


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_rule_problem(case):
    base, changes, path, fragments = RULE_CASES[case]
    assert_problem(edit({k: v for k, v in base.items() if v is not DELETE}, changes), path, *fragments)


def test_all_problems_reported_at_once():
    doc = edit(BIAS, {"lable": "y", "label": DELETE, "probability_threshold": True,
                      "methods.pre_training_bias.methods": ["CI", "ZZ"],
                      "facet": [{"name_or_index": "g"}, {"value": [1]}],
                      "methods.shap": {"agg_method": "max", "baseline": [[1]], "num_clusters": 2}})
    problems = problems_of(doc)
    paths = [p.split(": ", 1)[0] for p in problems]
    for expected in ("lable", "probability_threshold", "methods.pre_training_bias.methods[1]", "facet[1].value",
                     "facet[1].name_or_index", "methods.shap.agg_method", "label", "methods.shap.num_clusters",
                     "predictor"):
        assert expected in paths, (expected, problems)
    message = str(ConfigValidationError(problems, "my.json"))
    assert message.startswith(f"{SCHEMA_ERROR} my.json has {len(problems)} problems: ")


def test_each_problem_is_one_line_starting_with_its_path():
    problems = problems_of(edit(SHAP, {"methods.shap.seed": "x", "predictor.endpoint_url": "nope"}))
    assert all("\n" not in p for p in problems)
    assert [p.split(":")[0] for p in problems] == ["methods.shap.seed", "predictor.endpoint_url"]


def test_rules_do_not_repeat_schema_problems():
    # an invalid label is reported once, by its type, not again as "required" or "not in headers"
    problems = problems_of(edit(BIAS, {"label": True}))
    assert len(problems) == 1 and problems[0].startswith("label: expected")


def test_top_level_must_be_an_object():
    problems = problems_of([BIAS])
    assert problems == ["(top level): the configuration must be a JSON object, got list"]


def test_source_is_named_in_the_message():
    with pytest.raises(ConfigError, match=r"bias\.json has 1 problem: lable"):
        parse_config(edit(BIAS, {"lable": 1}), source="bias.json")


@pytest.mark.parametrize("key, value", [
    ("label_values_or_threshold", [True]),  # booleans are label *values*, fine
    ("probability_threshold", 0),
    ("group_variable", 0),
    # the group variable may be a column of the facet dataset; without its headers nothing is checked
    ("facet_dataset_uri", "f.csv"),
])
def test_values_that_are_fine(key, value):
    parse_config(edit(BIAS, {key: value}))


def test_group_variable_in_facet_dataset():
    parse_config(edit(BIAS, {"facet_dataset_uri": "f.csv", "facet_headers": ["g", "age"], "group_variable": "age"}))
    assert_problem(edit(BIAS, {"facet_dataset_uri": "f.csv", "facet_headers": ["g"], "group_variable": "age"}),
                   "group_variable", "'age' is not in headers or facet_headers")


@pytest.mark.parametrize("changes", [
    {"predictor.content_type": "image/jpg"},  # the SDK ModelConfig lets it through
    {"predictor.endpoint_name": DELETE, "predictor.model_name": "m", "predictor.instance_type": "t",
     "predictor.initial_instance_count": 2, "predictor.endpoint_name_prefix": "a-b--c9"},
    {"predictor.endpoint_url": "https://models.internal:8443/invocations"},
    {"predictor.content_type": "application/json", "predictor.content_template": '{"instances": $records}',
     "predictor.record_template": '{"features": $features, "names": $feature_names}'},
])
def test_predictor_variants_that_are_fine(changes):
    parse_config(edit(SHAP, changes))


def test_problems_survive_json_round_trip():
    # the lead's `lucent validate` prints problems; they must be plain strings
    problems = problems_of(edit(BIAS, {"lable": 1}))
    assert json.loads(json.dumps(problems)) == problems
