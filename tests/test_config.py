"""Configs written by the SageMaker SDK and the AWS docs parse unchanged, to the expected typed values.

Examples (a)-(j) are spec clarify-contract.md section 2.7; the others follow what the SDK v2
``clarify`` module generates (``_AnalysisConfigGenerator``) for its documented calls.
"""

from __future__ import annotations

import copy

import pytest

from analyzer.config import (
    POST_TRAINING_METRICS,
    PRE_TRAINING_METRICS,
    AnalysisConfig,
    BiasMethod,
    Facet,
    ImageConfig,
    PdpMethod,
    ReportMethod,
    ShapMethod,
    TextConfig,
    TimeSeriesDataConfig,
    parse_config,
)
from analyzer.config.schema import LANGUAGES

ADULT_HEADERS = ["Target", "Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status",
                 "Occupation", "Relationship", "Ethnic group", "Sex", "Capital Gain", "Capital Loss",
                 "Hours per week", "Country"]
SDK_REPORT = {"name": "report", "title": "Analysis Report"}

# (a) Bias, CSV, shadow endpoint -- aws/amazon-sagemaker-examples analysis_config/bias_analysis_config.json
EXAMPLE_A = {
    "dataset_type": "text/csv",
    "headers": ADULT_HEADERS,
    "label": "Target",
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "Sex", "value_or_threshold": [0]}],
    "group_variable": "Age",
    "probability_threshold": 0.8,
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"},
                "report": SDK_REPORT},
    "predictor": {"model_name": "DEMO-clarify-xgboost-model", "instance_type": "ml.m5.xlarge",
                  "initial_instance_count": 1, "accept_type": "text/csv", "content_type": "text/csv"},
}

# (b) SHAP, CSV -- analysis_config/explainability_analysis_config.json
EXAMPLE_B = {
    "dataset_type": "text/csv",
    "headers": ADULT_HEADERS,
    "label": "Target",
    "methods": {
        "shap": {"baseline": [[38, 2, 189794, 10, 10, 3, 6, 1, 4, 1, 1092, 88, 41, 36]], "num_samples": 15,
                 "agg_method": "mean_abs", "use_logit": False, "save_local_shap_values": True},
        "report": SDK_REPORT,
    },
    "predictor": {"model_name": "DEMO-clarify-xgboost-model", "instance_type": "ml.m5.xlarge",
                  "initial_instance_count": 1, "accept_type": "text/csv", "content_type": "text/csv"},
}

# (c) SDK-generated: JSON dataset and JSON model I/O; model_scores landed in predictor.label
EXAMPLE_C = {
    "dataset_type": "application/json", "features": "instances[*].features",
    "headers": ["Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status", "Occupation",
                "Relationship", "Ethnic group", "Sex", "Capital Gain", "Capital Loss", "Hours per week",
                "Country", "Target"],
    "label": "instances[*].label",
    "predictor": {"model_name": "DEMO-xgb-churn-pred-model-monitor-1705692267-227f", "instance_type": "ml.m5.xlarge",
                  "initial_instance_count": 1, "accept_type": "application/json",
                  "content_type": "application/json", "content_template": '{"instances":$records}',
                  "record_template": '{"features":$features}', "label": "predictions[*].score"},
    "methods": {"report": SDK_REPORT,
                "shap": {"use_logit": False, "save_local_shap_values": False,
                         "baseline": {"instances": [{"features": [39, 2, 184870, 10, 10, 3, 6, 1, 4, 1, 1597, 61,
                                                                  41, 37]}]},
                         "num_samples": 100, "agg_method": "mean_abs"}},
}

# (d) SDK unit test: bias + SHAP + PDP with an existing endpoint
EXAMPLE_D = {
    "dataset_type": "text/csv",
    "facet": [{"name_or_index": "F1"}],
    "group_variable": "F2",
    "headers": ["Label", "F1", "F2", "F3", "F4"],
    "joinsource_name_or_index": "F4",
    "label": "Label",
    "label_values_or_threshold": [1],
    "methods": {
        "pdp": {"grid_resolution": 15, "top_k_features": 10},
        "post_training_bias": {"methods": "all"},
        "pre_training_bias": {"methods": "all"},
        "report": SDK_REPORT,
        "shap": {"save_local_shap_values": True, "use_logit": False},
    },
    "predictor": {"label_headers": ["success"], "endpoint_name": "existing_endpoint_name", "probability": "pr"},
}

# (e) AWS docs: JSON dataset, all bias + SHAP + PDP
EXAMPLE_E = {
    "dataset_type": "application/json",
    "headers": ["Age", "Gender", "Income", "Occupation", "Target"],
    "label": "[*].Label",
    "features": "[*].Features",
    "probability_threshold": 0.5,
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "Gender", "value_or_threshold": [0]}],
    "methods": {
        "pre_training_bias": {"methods": "all"},
        "post_training_bias": {"methods": "all"},
        "shap": {"num_clusters": 1},
        "pdp": {"top_k_features": 2, "grid_resolution": 10},
        "report": {"name": "report"},
    },
    "predictor": {"endpoint_name": "your_endpoint", "content_template": "$records",
                  "record_template": '{"Features":$features}', "probability": "predictions[*].probability"},
}

# (f) AWS docs: JSON Lines, bias
EXAMPLE_F = {
    "dataset_type": "application/jsonlines", "headers": ["Age", "Gender", "Income", "Occupation", "Target"],
    "label": "Label", "features": "Features", "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "Gender", "value_or_threshold": [0]}],
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
    "predictor": {"endpoint_name": "your_endpoint", "content_template": '{"Features":$features}',
                  "label": "predicted_label"},
}

# (g) AWS docs: NLP (the doc's missing commas corrected)
EXAMPLE_G = {
    "dataset_type": "text/csv", "headers": ["Target", "Rating", "Comments"], "label": "Target",
    "methods": {"shap": {"text_config": {"granularity": "token", "language": "english"},
                         "baseline": [[4, "[MASK]"]]}},
    "predictor": {"model_name": "your_nlp_model", "initial_instance_count": 1, "instance_type": "ml.g4dn.xlarge"},
}

# (h) AWS docs: computer vision, object detection
EXAMPLE_H = {
    "dataset_type": "application/x-image",
    "probability_threshold": 0.5,
    "methods": {
        "shap": {"image_config": {"model_type": "OBJECT_DETECTION", "max_objects": 3, "context": 1.0,
                                  "iou_threshold": 0.5, "num_segments": 20, "segment_compactness": 10}},
        "report": {"name": "report"},
    },
    "predictor": {"model_name": "your_cv_od_model", "initial_instance_count": 1, "instance_type": "ml.p2.xlarge",
                  "label_headers": ["bird", "cat", "dog"]},
}

# (i) Time series, printed by the time_series_bring_your_own_model notebook
EXAMPLE_I = {
    "dataset_type": "application/json",
    "headers": ["item_id", "timestamp", "p_mbar", "rain_mm", "T_degC"],
    "methods": {"asymmetric_shapley_value": {"baseline": {"related_time_series": "zero", "target_time_series": "zero"},
                                             "direction": "chronological", "granularity": "fine_grained",
                                             "num_samples": 2},
                "report": SDK_REPORT},
    "predictor": {"accept_type": "application/json", "content_template": '{"instances": $record}',
                  "content_type": "application/json", "endpoint_name": "timeseries-byom-endpoint-1715382341-39c2",
                  "record_template": '{"start": $start_time, "target": $target_time_series, '
                                     '"dynamic_feat": $related_time_series}',
                  "time_series_predictor_config": {"forecast": "predictions.mean"}},
    "time_series_data_config": {"dataset_format": "timestamp_records", "item_id": "[].item_id",
                                "related_time_series": ["[].rain_mm", "[].T_degC"], "target_time_series": "[].p_mbar",
                                "timestamp": "[].timestamp"},
}

# (j) Separate facet and predicted-label datasets, no predictor: what the SDK generates for
# DataConfig(predicted_label_dataset_uri=..., facet_dataset_uri=...), BiasConfig(...),
# ModelPredictedLabelConfig(probability_threshold=0.8) in bias_detection_with_predicted_label_and_facet_datasets.
EXAMPLE_J = {
    "dataset_type": "text/csv",
    "headers": ["Target", "Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status",
                "Occupation", "Relationship", "Capital Gain", "Capital Loss", "Hours per week", "Country"],
    "label": "Target",
    "predicted_label_dataset_uri": "s3://bucket/prefix/predicted_labels.csv",
    "predicted_label_headers": ["Predicted_label"],
    "predicted_label": "Predicted_label",
    "facet_dataset_uri": "s3://bucket/prefix/facets.csv",
    "facet_headers": ["Ethnic group", "Sex"],
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "Sex", "value_or_threshold": [0]}],
    "group_variable": "Age",
    "probability_threshold": 0.8,
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"},
                "report": SDK_REPORT},
}

SPEC_EXAMPLES = {"a": EXAMPLE_A, "b": EXAMPLE_B, "c": EXAMPLE_C, "d": EXAMPLE_D, "e": EXAMPLE_E, "f": EXAMPLE_F,
                 "g": EXAMPLE_G, "h": EXAMPLE_H, "i": EXAMPLE_I, "j": EXAMPLE_J}

# ---- SDK unit-test style configs (sagemaker-python-sdk tests/unit/test_clarify.py shapes) ----------
SDK_HEADERS = ["Label", "F1", "F2", "F3", "F4"]
SDK_DATA = {"dataset_type": "text/csv", "headers": SDK_HEADERS, "label": "Label"}
SDK_BIAS = {"label_values_or_threshold": [1], "facet": [{"name_or_index": "F1"}], "group_variable": "F2"}
SDK_MODEL = {"model_name": "xgboost-model", "instance_type": "ml.c5.xlarge", "initial_instance_count": 1}
SDK_BASELINE = [[0.26124998927116394, 0.2824999988079071, 0.06875000149011612, 0.1]]

SDK_CONFIGS = {
    "pre_training_bias": {**SDK_DATA, **SDK_BIAS, "methods": {"report": SDK_REPORT,
                                                              "pre_training_bias": {"methods": "all"}}},
    "post_training_bias": {**SDK_DATA, **SDK_BIAS, "methods": {"report": SDK_REPORT,
                                                               "post_training_bias": {"methods": ["DPPL", "DI"]}},
                           "predictor": {**SDK_MODEL, "label": "label", "probability": "pr",
                                         "label_headers": ["success"]},
                           "probability_threshold": 0.2},
    "shap_baseline_list": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "baseline": SDK_BASELINE, "num_samples": 100, "agg_method": "mean_sq", "use_logit": True,
        "save_local_shap_values": True, "seed": 123}}, "predictor": SDK_MODEL},
    "shap_s3_baseline": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "baseline": "s3://bucket/baseline.csv", "num_samples": 100, "agg_method": "median",
        "use_logit": False, "save_local_shap_values": True}}, "predictor": SDK_MODEL},
    "shap_num_clusters": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "num_clusters": 2, "use_logit": False, "save_local_shap_values": True}}, "predictor": SDK_MODEL},
    "pdp_and_shap": {**SDK_DATA, "methods": {"report": SDK_REPORT,
                                             "shap": {"use_logit": False, "save_local_shap_values": True},
                                             "pdp": {"grid_resolution": 15, "top_k_features": 10,
                                                     "features": ["F1"]}}, "predictor": SDK_MODEL},
    "pdp_only": {**SDK_DATA, "methods": {"report": SDK_REPORT, "pdp": {"grid_resolution": 15, "top_k_features": 10,
                                                                       "features": ["F1", 2]}},
                 "predictor": SDK_MODEL},
    "text_config": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "baseline": [[1, "<UNK>", 2, 3]], "use_logit": False, "save_local_shap_values": True,
        "text_config": {"granularity": "sentence", "language": "german"}}}, "predictor": SDK_MODEL},
    "json_dataset": {"dataset_type": "application/json", "features": "[*].[F1,F2,F3]", "label": "[*].Label",
                     "headers": ["F1", "F2", "F3", "Label"], **SDK_BIAS,
                     "methods": {"report": SDK_REPORT, "pre_training_bias": {"methods": "all"}}},
    "jsonlines_model": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "baseline": SDK_BASELINE, "use_logit": False, "save_local_shap_values": True}},
        "predictor": {**SDK_MODEL, "content_type": "application/jsonlines", "accept_type": "application/jsonlines",
                      "content_template": '{"instances":$features}', "custom_attributes": "c000b4f9-df62",
                      "accelerator_type": "ml.eia1.medium", "target_model": "target_model_name",
                      "endpoint_name_prefix": "my-endpoint"}},
    "model_scores_in_predictor_label": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {
        "baseline": SDK_BASELINE, "use_logit": False, "save_local_shap_values": True}},
        "predictor": {**SDK_MODEL, "label": 1}},
    "endpoint_name": {**SDK_DATA, **SDK_BIAS, "methods": {"report": SDK_REPORT,
                                                          "post_training_bias": {"methods": "all"}},
                      "predictor": {"endpoint_name": "existing_endpoint_name", "label_headers": ["no", "yes"]}},
    "predicted_label_and_excluded": {**SDK_DATA, "headers": [*SDK_HEADERS, "Predicted Label"], **SDK_BIAS,
                                     "predicted_label": "Predicted Label", "excluded_columns": ["F4"],
                                     "segment_config": [{"config_name": "c1", "display_aliases": ["a1"],
                                                         "name_or_index": "F1", "segments": [[0]]}],
                                     "methods": {"post_training_bias": {"methods": "all"}}},
    "parquet": {"dataset_type": "application/x-parquet", "label": "Label", **SDK_BIAS,
                "methods": {"report": SDK_REPORT, "post_training_bias": {"methods": "all"}},
                "predictor": {**SDK_MODEL, "content_type": "text/csv"}},
    "json_model_kvp": {**SDK_DATA, "methods": {"report": SDK_REPORT, "shap": {"baseline": SDK_BASELINE}},
                       "predictor": {"endpoint_name": "e", "content_type": "application/json",
                                     "content_template": "$records", "record_template": "$features_kvp"}},
    "json_model_named_placeholders": {
        **SDK_DATA, "methods": {"shap": {"baseline": SDK_BASELINE}},
        "predictor": {"endpoint_name": "e", "content_type": "application/json", "content_template": "$record",
                      "record_template": '{"F1": "${F1}", "F2": "${F2}", "F3": "${F3}", "F4": "${F4}"}'}},
    "time_series_int_locators": {
        "dataset_type": "application/json",
        "time_series_data_config": {"target_time_series": 1, "item_id": 2, "timestamp": 3,
                                    "related_time_series": [4, 5], "static_covariates": [6]},
        "methods": {"asymmetric_shapley_value": {"direction": "bidirectional", "granularity": "timewise",
                                                 "baseline": {"target_time_series": "mean",
                                                              "static_covariates": {"item1": [1], "item2": [0]}}}},
        "predictor": {"endpoint_name": "e", "content_type": "application/jsonlines",
                      "content_template": '{"x": $features}', "time_series_predictor_config": {"forecast": "f"}}},
}


@pytest.mark.parametrize("name", sorted(SPEC_EXAMPLES))
def test_spec_examples_parse(name):
    doc = SPEC_EXAMPLES[name]
    config = parse_config(copy.deepcopy(doc))
    assert isinstance(config, AnalysisConfig)
    assert config.raw == doc
    assert config.version == "1.0"


@pytest.mark.parametrize("name", sorted(SDK_CONFIGS))
def test_sdk_style_configs_parse(name):
    config = parse_config(copy.deepcopy(SDK_CONFIGS[name]))
    assert config.raw == SDK_CONFIGS[name]


def test_example_a_bias_csv_shadow_endpoint():
    config = parse_config(EXAMPLE_A)
    assert config.dataset_type == "text/csv"
    assert config.headers == ADULT_HEADERS
    assert config.label == "Target"
    assert config.label_values_or_threshold == [1]
    assert config.facet == [Facet("Sex", [0])]
    assert config.group_variable == "Age"
    assert config.probability_threshold == 0.8
    assert config.methods.pre_training_bias == BiasMethod(list(PRE_TRAINING_METRICS))
    assert config.methods.post_training_bias == BiasMethod(list(POST_TRAINING_METRICS))
    assert config.methods.report == ReportMethod("report", "Analysis Report")
    assert config.methods.shap is None and config.methods.pdp is None
    predictor = config.predictor
    assert (predictor.model_name, predictor.instance_type, predictor.initial_instance_count) == (
        "DEMO-clarify-xgboost-model", "ml.m5.xlarge", 1)
    assert (predictor.content_type, predictor.accept_type) == ("text/csv", "text/csv")
    assert predictor.endpoint_name is None and predictor.endpoint_url is None


def test_example_b_shap_csv():
    shap = parse_config(EXAMPLE_B).methods.shap
    assert shap == ShapMethod(baseline=[[38, 2, 189794, 10, 10, 3, 6, 1, 4, 1, 1092, 88, 41, 36]], num_samples=15,
                              agg_method="mean_abs", use_logit=False, save_local_shap_values=True)
    assert shap.num_clusters is None and shap.seed is None


def test_example_c_json_dataset_and_model():
    config = parse_config(EXAMPLE_C)
    assert config.features == "instances[*].features"
    assert config.label == "instances[*].label"
    assert config.methods.shap.baseline == {"instances": [{"features": [39, 2, 184870, 10, 10, 3, 6, 1, 4, 1,
                                                                         1597, 61, 41, 37]}]}
    assert config.methods.shap.save_local_shap_values is False
    assert config.predictor.content_template == '{"instances":$records}'
    assert config.predictor.record_template == '{"features":$features}'
    assert config.predictor.label == "predictions[*].score"  # the SDK's model_scores


def test_example_d_defaults_for_sdk_bias_and_explainability():
    config = parse_config(EXAMPLE_D)
    assert config.methods.pdp == PdpMethod(grid_resolution=15, features=None, top_k_features=10)
    assert config.methods.shap == ShapMethod()  # SDK defaults equal Clarify defaults
    assert config.methods.shap.agg_method == "mean_abs"
    assert config.joinsource_name_or_index == "F4"
    assert config.facet == [Facet("F1", None)]
    assert config.predictor.endpoint_name == "existing_endpoint_name"
    assert config.predictor.probability == "pr"
    assert config.predictor.label_headers == ["success"]
    # content/accept types default to the dataset format
    assert (config.predictor.content_type, config.predictor.accept_type) == ("text/csv", "text/csv")


def test_example_e_json_dataset_defaults():
    config = parse_config(EXAMPLE_E)
    assert config.methods.shap.num_clusters == 1
    assert config.methods.pdp == PdpMethod(grid_resolution=10, top_k_features=2)
    assert config.methods.report == ReportMethod("report", "Analysis Report")
    assert (config.predictor.content_type, config.predictor.accept_type) == ("application/json", "application/json")
    assert config.probability_threshold == 0.5


def test_example_f_jsonlines():
    config = parse_config(EXAMPLE_F)
    assert config.features == "Features"
    assert config.predictor.content_type == "application/jsonlines"
    assert config.predictor.accept_type == "application/jsonlines"
    assert config.predictor.label == "predicted_label"


def test_example_g_text_config_defaults():
    shap = parse_config(EXAMPLE_G).methods.shap
    assert shap.text_config == TextConfig(granularity="token", language="english", max_top_tokens=50)
    assert shap.baseline == [[4, "[MASK]"]]


def test_example_h_images_get_image_content_types():
    config = parse_config(EXAMPLE_H)
    assert config.methods.shap.image_config == ImageConfig(
        model_type="OBJECT_DETECTION", num_segments=20, segment_compactness=10.0, max_objects=3,
        iou_threshold=0.5, context=1.0)
    assert (config.predictor.content_type, config.predictor.accept_type) == ("image/jpeg", "application/json")
    assert config.predictor.label_headers == ["bird", "cat", "dog"]


def test_example_i_time_series():
    config = parse_config(EXAMPLE_I)
    assert config.time_series_data_config == TimeSeriesDataConfig(
        target_time_series="[].p_mbar", item_id="[].item_id", timestamp="[].timestamp",
        related_time_series=["[].rain_mm", "[].T_degC"], dataset_format="timestamp_records")
    asv = config.methods.asymmetric_shapley_value
    assert (asv.direction, asv.granularity, asv.num_samples) == ("chronological", "fine_grained", 2)
    assert asv.baseline == {"related_time_series": "zero", "target_time_series": "zero"}
    assert config.predictor.time_series_predictor_config == {"forecast": "predictions.mean"}


def test_example_j_separate_datasets_without_predictor():
    config = parse_config(EXAMPLE_J)
    assert config.predictor is None
    assert config.predicted_label == "Predicted_label"
    assert config.predicted_label_headers == ["Predicted_label"]
    assert config.facet_headers == ["Ethnic group", "Sex"]
    assert config.facet_dataset_uri == "s3://bucket/prefix/facets.csv"


def test_sdk_post_training_metric_subset_is_sorted():
    config = parse_config(SDK_CONFIGS["post_training_bias"])
    assert config.methods.post_training_bias.methods == ["DI", "DPPL"]
    assert config.probability_threshold == 0.2


def test_sdk_shap_baseline_seed_and_agg_method():
    shap = parse_config(SDK_CONFIGS["shap_baseline_list"]).methods.shap
    assert (shap.seed, shap.agg_method, shap.use_logit, shap.num_samples) == (123, "mean_sq", True, 100)
    assert parse_config(SDK_CONFIGS["shap_s3_baseline"]).methods.shap.baseline == "s3://bucket/baseline.csv"


def test_sdk_model_scores_index_in_predictor_label():
    assert parse_config(SDK_CONFIGS["model_scores_in_predictor_label"]).predictor.label == 1


def test_sdk_parquet_with_explicit_content_type():
    predictor = parse_config(SDK_CONFIGS["parquet"]).predictor
    assert (predictor.content_type, predictor.accept_type) == ("text/csv", "text/csv")


def test_sdk_segment_config_and_excluded_columns():
    config = parse_config(SDK_CONFIGS["predicted_label_and_excluded"])
    assert config.excluded_columns == ["F4"]
    (segment,) = config.segment_config
    assert (segment.name_or_index, segment.segments, segment.config_name, segment.display_aliases) == (
        "F1", [[0]], "c1", ["a1"])


# ---- normalisation --------------------------------------------------------------------------------
def minimal(**changes) -> dict:
    doc = {"dataset_type": "text/csv", "label": "y", "label_values_or_threshold": [1],
           "facet": [{"name_or_index": "g"}], "methods": {"pre_training_bias": {"methods": "all"}}}
    doc.update(changes)
    return doc


def test_minimal_config_defaults():
    config = parse_config(minimal())
    assert config.version == "1.0"
    assert config.probability_threshold == 0.5
    assert config.methods.report is None
    assert config.predictor is None
    assert config.headers is None


@pytest.mark.parametrize("selection, expected", [
    ("all", list(PRE_TRAINING_METRICS)),
    ("ALL", list(PRE_TRAINING_METRICS)),
    (["KL", "CI", "KL", "DPL"], ["CI", "DPL", "KL"]),
])
def test_metric_selection(selection, expected):
    config = parse_config(minimal(methods={"pre_training_bias": {"methods": selection}}))
    assert config.methods.pre_training_bias.methods == expected


def test_all_is_alphabetical_for_both_stages():
    config = parse_config(minimal(predicted_label="p", methods={"pre_training_bias": {"methods": "all"},
                                                                "post_training_bias": {"methods": "all"}}))
    for method in (config.methods.pre_training_bias, config.methods.post_training_bias):
        assert method.methods == sorted(method.methods)
    assert len(config.methods.post_training_bias.methods) == 13
    assert len(config.methods.pre_training_bias.methods) == 8


def test_enums_are_case_insensitive_and_normalised():
    config = parse_config({
        "dataset_type": "Text/CSV", "label": "y",
        "methods": {"shap": {"agg_method": "MEAN_SQ", "text_config": {"granularity": "Sentence",
                                                                      "language": "EN"}}},
        "predictor": {"endpoint_name": "e", "content_type": "Application/JSONLines", "accept_type": "TEXT/CSV",
                      "content_template": "$features"},
    })
    assert config.dataset_type == "text/csv"
    assert config.methods.shap.agg_method == "mean_sq"
    assert config.methods.shap.text_config == TextConfig("sentence", "english", 50)
    assert (config.predictor.content_type, config.predictor.accept_type) == ("application/jsonlines", "text/csv")


@pytest.mark.parametrize("given, name", [
    ("english", "english"), ("EN", "english"), ("Norwegian Bokmål", "norwegian bokmål"), ("NB", "norwegian bokmål"),
    ("xx", "multi-language"), ("Multi-Language", "multi-language"), ("lij", "ligurian"), ("zh", "chinese"),
])
def test_language_normalised_to_name(given, name):
    doc = {**EXAMPLE_G, "methods": {"shap": {"text_config": {"granularity": "token", "language": given}}}}
    assert parse_config(doc).methods.shap.text_config.language == name


def test_all_63_languages_accepted_by_name_and_code():
    assert len(LANGUAGES) == 63
    assert len({name for name, _ in LANGUAGES}) == len({code for _, code in LANGUAGES}) == 63
    for name, code in LANGUAGES:
        for given in (name, code, name.upper()):
            doc = {**EXAMPLE_G, "methods": {"shap": {"text_config": {"granularity": "token", "language": given}}}}
            assert parse_config(doc).methods.shap.text_config.language == name


def test_integer_probability_threshold_becomes_float():
    config = parse_config(minimal(probability_threshold=1))
    assert config.probability_threshold == 1.0 and isinstance(config.probability_threshold, float)


def test_null_optional_keys_are_absent():
    # SDK versions of 2020 wrote "seed": null when no seed was given
    doc = {**SDK_CONFIGS["shap_baseline_list"]}
    doc["methods"] = {"shap": {**doc["methods"]["shap"], "seed": None}}
    assert parse_config(doc).methods.shap.seed is None


def test_boolean_facet_and_label_values_are_values():
    config = parse_config(minimal(label_values_or_threshold=[True], facet=[{"name_or_index": "g",
                                                                             "value_or_threshold": [False]}]))
    assert config.label_values_or_threshold == [True]
    assert config.facet[0].value_or_threshold == [False]


def test_lucent_predictor_extensions():
    url = parse_config(minimal(methods={"post_training_bias": {"methods": "all"}},
                               predictor={"endpoint_url": "http://localhost:8080/invocations"}))
    assert url.predictor.endpoint_url == "http://localhost:8080/invocations"
    image = parse_config(minimal(methods={"post_training_bias": {"methods": "all"}},
                                 predictor={"image_uri": "my-model:latest"}))
    assert image.predictor.image_uri == "my-model:latest"
    assert image.predictor.content_type == "text/csv"


def test_pdp_grid_resolution_defaults_to_container_value():
    config = parse_config({**SDK_DATA, "methods": {"pdp": {"features": ["F1"]}}, "predictor": SDK_MODEL})
    assert config.methods.pdp == PdpMethod(grid_resolution=20, features=["F1"], top_k_features=10)


def test_report_name_defaults():
    config = parse_config(minimal(methods={"pre_training_bias": {"methods": "all"}, "report": {}}))
    assert config.methods.report == ReportMethod("report", "Analysis Report")


def test_raw_is_an_independent_copy():
    doc = minimal()
    config = parse_config(doc)
    doc["label"] = "changed"
    assert config.raw["label"] == "y"
