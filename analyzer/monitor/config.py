"""The analysis config of a monitoring execution, from the config file a job definition names.

The SageMaker SDK writes monitoring configs without the keys a processing job needs
(spec model-monitor.md 4.1): a bias config is ``BiasAnalysisConfig._to_dict()``, the bias settings plus
``headers`` and ``label``, with no ``methods`` and no ``dataset_type``; an explainability config has
``methods.shap``, ``predictor`` and ``headers``. What a monitoring execution computes is fixed by its
type, so the missing keys are filled here and the rest of the config is validated as any other:

* bias: every pre-training and post-training metric (``"all"``), unless the file lists its own;
* explainability: the file's ``methods.shap``;
* both: a report (Clarify's monitors always write ``report.html``, ``.ipynb`` and ``.pdf``), and
  ``dataset_type`` = the captured requests' content type (what the endpoint's model reads, and so what
  synthetic rows must be sent as), unless the file gives one;
* bias: ``predicted_label`` names the captured predictions, so no model is called;
* ``probability_threshold`` = the job definition's ``ProbabilityThresholdAttribute`` when given;
* ``features`` = the job definition's ``FeaturesAttribute`` for a JSON ``dataset_type`` when the file has
  none: the SDK keeps the features' JMESPath in ``EndpointInput`` (spec 3, 4.1), not in the config;
* explainability: ``predictor.probability`` = ``ProbabilityAttribute``, else ``InferenceAttribute``, when
  the predictor has neither ``label`` nor ``probability``: the SDK puts ``model_scores`` (the scores to
  explain) in ``EndpointInput`` (spec 4.1), and Kernel SHAP must read the same scores out of the model's
  answers (a digit string is a CSV column index, anything else a JMESPath).

A problem with a key filled in from the job definition names the job definition's field and file
(``ModelExplainabilityJobInput.EndpointInput.ProbabilityAttribute (job definition job.json): ...``), not the
config key the user never wrote (``attribute_keys``).
"""

from __future__ import annotations

import copy
from typing import Any

from analyzer.config import AnalysisConfig
from analyzer.config.parser import ConfigValidationError, parse_config
from analyzer.errors import ConfigError
from analyzer.media import CSV, media_type
from analyzer.monitor.attributes import BIAS, EXPLAINABILITY, EndpointAttributes

CAPTURED_PREDICTION = "predicted_label"  # the merged Dataset's predicted label column
REPORT_TITLES = {BIAS: "Model Bias Monitoring Report", EXPLAINABILITY: "Model Explainability Monitoring Report"}


def monitoring_config(doc: Any, kind: str, attributes: EndpointAttributes, *, input_content_type: str | None = None,
                      source: str = "the monitoring analysis config") -> AnalysisConfig:
    """``doc`` (the parsed ``ConfigUri`` file) completed for a ``kind`` execution and validated.

    ``input_content_type``: the captured requests' content type, the default ``dataset_type``.
    Raises ``ConfigError`` naming every problem, as ``lucent run`` does.
    """
    if kind not in REPORT_TITLES:
        raise ValueError(f"unknown monitoring type {kind!r}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the configuration must be a JSON object, got {type(doc).__name__}")
    tree = copy.deepcopy(doc)
    if "dataset_type" not in tree:
        tree["dataset_type"] = media_type(input_content_type) if input_content_type else CSV
    if "features" not in tree and attributes.features_attribute is not None and tree["dataset_type"] != CSV:
        tree["features"] = attributes.features_attribute
    methods = tree.setdefault("methods", {})
    if isinstance(methods, dict):
        if kind == BIAS and not {"pre_training_bias", "post_training_bias"} & set(methods):
            methods["pre_training_bias"] = {"methods": "all"}
            methods["post_training_bias"] = {"methods": "all"}
        if "predicted_label" not in tree and "predictor" not in tree:
            # The predicted labels come from the captured responses (the merge), not from a model call:
            # one more column of the window's table, after the headers.
            tree["predicted_label"] = _free_name(CAPTURED_PREDICTION, tree.get("headers"))
            if isinstance(tree.get("headers"), list):
                tree["headers"] = [*tree["headers"], tree["predicted_label"]]
        methods.setdefault("report", {"name": "report", "title": REPORT_TITLES[kind]})
    predictor = tree.get("predictor")
    if kind == EXPLAINABILITY and isinstance(predictor, dict) and not {"label", "probability"} & set(predictor):
        scores = attributes.probability_attribute or attributes.inference_attribute
        if scores is not None:
            predictor["probability"] = int(scores) if scores.isdigit() else scores
    if attributes.probability_threshold_attribute is not None:
        tree["probability_threshold"] = attributes.probability_threshold_attribute
    try:
        return parse_config(tree, source=source)
    except ConfigError as error:
        keys = attribute_keys(doc, kind, attributes, input_content_type=input_content_type)
        problems = [_named(problem, keys, attributes) for problem in error.problems]
        if problems == error.problems:
            raise
        if isinstance(error, ConfigValidationError):
            raise ConfigValidationError(problems, source) from None
        raise ConfigError(problems) from None


def attribute_keys(doc: Any, kind: str, attributes: EndpointAttributes, *,
                   input_content_type: str | None = None) -> dict[str, str]:
    """The config keys ``monitoring_config`` fills in from the job definition's ``EndpointInput`` attributes
    (``predictor.probability`` -> ``ProbabilityAttribute``): messages about them name the attribute."""
    if not isinstance(doc, dict):
        return {}
    keys = {}
    dataset_type = doc["dataset_type"] if "dataset_type" in doc else (
        media_type(input_content_type) if input_content_type else CSV)
    if "features" not in doc and attributes.features_attribute is not None and dataset_type != CSV:
        keys["features"] = "FeaturesAttribute"
    predictor = doc.get("predictor")
    if kind == EXPLAINABILITY and isinstance(predictor, dict) and not {"label", "probability"} & set(predictor):
        if attributes.probability_attribute is not None:
            keys["predictor.probability"] = "ProbabilityAttribute"
        elif attributes.inference_attribute is not None:
            keys["predictor.probability"] = "InferenceAttribute"
    if attributes.probability_threshold_attribute is not None:
        keys["probability_threshold"] = "ProbabilityThresholdAttribute"
    return keys


def _named(problem: str, keys: dict[str, str], attributes: EndpointAttributes) -> str:
    """A config problem with the filled-in keys named as the job definition's attributes. ``features`` is
    a common word: only a problem about that key (its path first) is renamed."""
    if "features" in keys and (problem == "features" or problem.startswith(("features:", "features "))):
        problem = attributes.named("features", {"features": keys["features"]}) + problem[len("features"):]
    return attributes.named(problem, {key: name for key, name in keys.items() if key != "features"})


def _free_name(name: str, headers: Any) -> str:
    """``name``, or ``name_1``, ``name_2``, ... when a header already has it."""
    taken = set(headers) if isinstance(headers, list) else set()
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate
