"""The endpoint's config file: the JSON body of SageMaker's ``CreateEndpointConfig``.

Read are ``DataCaptureConfig`` and ``ExplainerConfig`` exactly as the SDK's ``_to_request_dict()``
writes them, and ``ProductionVariants[0].VariantName``; other keys are accepted and logged once each.
The constraints are the API's (botocore's ``sagemaker`` service model: lengths, ranges, enums), declared
as one table with ``analyzer.config.spec`` so that every problem is reported at once, each naming its
field (``ExplainerConfig.ClarifyExplainerConfig.ShapConfig.NumberOfSamples: expected an integer, got
"many" (string)``). Lucent extensions: ``DestinationS3Uri`` and ``ShapBaselineUri`` may also be a local
path or ``file://`` URI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyzer.config.parser import read_json_file
from analyzer.config.spec import INVALID, Context, Enum, Obj, Typed, Where, closest, shown
from analyzer.errors import ConfigError
from analyzer.media import CSV, JSON_LINES, media_type
from container.api_spec import api_string, bounded_list, has_invalid, jmespath_expression, object_or_empty

log = logging.getLogger("lucent.endpoint")

DEFAULT_VARIANT = "AllTraffic"
DEFAULT_MAX_PAYLOAD_MB = 6
BASELINE_TYPES = (CSV, JSON_LINES)
# The API's ClarifyTextLanguage enum (the batch job's SDK list differs: ja, th, vi are not in it).
TEXT_LANGUAGES = (
    "af", "sq", "ar", "hy", "eu", "bn", "bg", "ca", "zh", "hr", "cs", "da", "nl", "en", "et", "fi",
    "fr", "de", "el", "gu", "he", "hi", "hu", "is", "id", "ga", "it", "kn", "ky", "lv", "lt", "lb",
    "mk", "ml", "mr", "ne", "nb", "fa", "pl", "pt", "ro", "ru", "sa", "sr", "tn", "si", "sk", "sl",
    "es", "sv", "tl", "ta", "tt", "te", "tr", "uk", "ur", "yo", "lij", "xx",
)
_MIME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9])*\/[a-zA-Z0-9](-*[a-zA-Z0-9+.])*"
_VARIANT_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
ENDPOINT_NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9])*"  # the runtime API's EndpointName, at most 63


_INTEGER = Typed(("integer",))
_BOOLEAN = Typed(("boolean",))
# file:///abs/path has an empty host, which the API's S3Uri pattern ((https|s3)://([^/]+)/?(.*)) refuses.
_LOCATION = api_string(1, 1024, r"(https|s3)://([^/]+)/?(.*)|file://[^?#]+|[^:]+",
                    "an s3:// URI, a file:// URI or a local path")

DATA_CAPTURE = Obj({
    "EnableCapture": _BOOLEAN,
    "InitialSamplingPercentage": Typed(("integer",), 0, 100),
    "DestinationS3Uri": Where(_LOCATION, ((lambda v: len(v) <= 512, "must have at most 512 characters"),)),
    "KmsKeyId": api_string(0, 2048, r"[a-zA-Z0-9:/_-]*"),
    "CaptureOptions": bounded_list(Obj({"CaptureMode": Enum(("Input", "Output", "InputAndOutput"), case_sensitive=True)},
                                required=("CaptureMode",)), 1, 32),
    "CaptureContentTypeHeader": Obj({
        "CsvContentTypes": bounded_list(api_string(1, 256, _MIME_PATTERN, "a media type"), 1, 10),
        "JsonContentTypes": bounded_list(api_string(1, 256, _MIME_PATTERN, "a media type"), 1, 10),
    }),
}, required=("InitialSamplingPercentage", "DestinationS3Uri", "CaptureOptions"))

INFERENCE = Obj({
    "FeatureHeaders": bounded_list(api_string(1, 64), 1, 256),
    "FeatureTypes": bounded_list(Enum(("numerical", "categorical", "text"), case_sensitive=True), 1, 256),
    "FeaturesAttribute": jmespath_expression(),
    "ContentTemplate": Where(api_string(1, 64), ((lambda v: "$features" in v,
                                               "{value!r} has no $features placeholder for the features"),)),
    "ProbabilityIndex": Typed(("integer",), 0),
    "ProbabilityAttribute": jmespath_expression(),
    "LabelIndex": Typed(("integer",), 0),
    "LabelAttribute": jmespath_expression(),
    "LabelHeaders": bounded_list(api_string(1, 64), 1, 16),
    "MaxRecordCount": Typed(("integer",), 1),
    "MaxPayloadInMB": Typed(("integer",), 1, 25),
})

SHAP = Obj({
    "ShapBaselineConfig": Obj({
        "MimeType": Where(api_string(0, 255, _MIME_PATTERN, "a media type"),
                          ((lambda v: media_type(v) in BASELINE_TYPES, f"must be one of {', '.join(BASELINE_TYPES)}"),)),
        "ShapBaseline": api_string(1, 4096, r"[\s\S]+"),
        "ShapBaselineUri": _LOCATION,
    }),
    "NumberOfSamples": Typed(("integer",), 1),
    "UseLogit": _BOOLEAN,
    "Seed": _INTEGER,
    "TextConfig": Obj({"Language": Enum(tuple(TEXT_LANGUAGES), case_sensitive=True),
                       "Granularity": Enum(("token", "sentence", "paragraph"), case_sensitive=True)},
                      required=("Language", "Granularity")),
}, required=("ShapBaselineConfig",))

EXPLAINER = Obj({
    "ClarifyExplainerConfig": Obj({
        "EnableExplanations": jmespath_expression(),
        "InferenceConfig": INFERENCE,
        "ShapConfig": SHAP,
    }, required=("ShapConfig",)),
})

VARIANT_NAME = api_string(0, 63, _VARIANT_PATTERN, "a variant name (letters, digits and hyphens)")


@dataclass(frozen=True)
class CaptureSettings:
    """``DataCaptureConfig`` once validated; ``destination`` is an s3://, file:// URI or a folder."""

    sampling_percentage: int
    destination: str
    capture_input: bool
    capture_output: bool
    csv_types: tuple[str, ...]
    json_types: tuple[str, ...]


@dataclass(frozen=True)
class InferenceSettings:
    """``ClarifyInferenceConfig``: how the explainer talks to the model container."""

    feature_headers: tuple[str, ...] | None = None
    feature_types: tuple[str, ...] | None = None
    features_attribute: str | None = None
    content_template: str | None = None
    probability_index: int | None = None
    probability_attribute: str | None = None
    label_index: int | None = None
    label_attribute: str | None = None
    label_headers: tuple[str, ...] | None = None
    max_record_count: int | None = None
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB


@dataclass(frozen=True)
class ExplainerSettings:
    """``ClarifyExplainerConfig``; exactly one of ``baseline`` (inline) and ``baseline_uri`` is set."""

    baseline_mime_type: str
    baseline: str | None
    baseline_uri: str | None
    inference: InferenceSettings
    enable_explanations: str | None = None  # None: every record is explained
    num_samples: int | None = None
    seed: int | None = None
    use_logit: bool = False
    text_language: str | None = None
    text_granularity: str | None = None


@dataclass(frozen=True)
class EndpointConfig:
    variant_name: str = DEFAULT_VARIANT
    capture: CaptureSettings | None = None
    explainer: ExplainerSettings | None = None


def load_endpoint_config(path: Path) -> EndpointConfig:
    """Read and validate ``path``; ``ConfigError`` lists every problem, each naming its field."""
    document = read_json_file(path, "endpoint config (--config)")
    return parse_endpoint_config(document)


def parse_endpoint_config(document: Any) -> EndpointConfig:
    """The settings of a ``CreateEndpointConfig`` body; ``ConfigError`` lists every problem at once."""
    if not isinstance(document, dict):
        raise ConfigError(f"(top level): expected a JSON object (a CreateEndpointConfig body), got {shown(document)}")
    ctx = Context()
    for key in document:
        if key in _UNUSED_KEYS:
            log.info("Config key %s is not used by a self-hosted endpoint; ignored", key)
        elif key not in _READ_KEYS:
            ctx.problems.append(_unknown_key(str(key)))
    variant = _variant_name(document.get("ProductionVariants"), ctx)
    capture = explainer = None
    if document.get("DataCaptureConfig") is not None:
        checked = DATA_CAPTURE.check(document["DataCaptureConfig"], "DataCaptureConfig", ctx)
        if checked is not INVALID and not has_invalid(checked):
            capture = _capture_settings(checked)
    if document.get("ExplainerConfig") is not None:
        checked = EXPLAINER.check(document["ExplainerConfig"], "ExplainerConfig", ctx)
        if isinstance(checked, dict):  # cross-field rules run even when some field is invalid
            explainer = _explainer_settings(checked, ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return EndpointConfig(variant, capture, explainer)


# CreateEndpointConfig's request keys (the API reference): those read, and those a self-hosted endpoint has no
# use for (logged, ignored). Any other key is refused, as SageMaker refuses it: silently ignoring a misplaced
# section (the SDK's ExplainerConfig._to_request_dict() is the value of ExplainerConfig, not the body) would
# serve an endpoint without explanations or capture.
_READ_KEYS = ("DataCaptureConfig", "ExplainerConfig", "ProductionVariants")
_UNUSED_KEYS = ("EndpointConfigName", "Tags", "KmsKeyId", "AsyncInferenceConfig", "ShadowProductionVariants",
                "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation")


def _unknown_key(key: str) -> str:
    for section, spec in (("ExplainerConfig", EXPLAINER), ("DataCaptureConfig", DATA_CAPTURE)):
        if key in spec.fields:
            return (f"{key}: not a CreateEndpointConfig key; it belongs inside {section} "
                    f"({{\"{section}\": {{\"{key}\": ...}}}})")
    close = closest(key, (*_READ_KEYS, *_UNUSED_KEYS))
    hint = f"did you mean {close}?" if close else f"the keys read are {', '.join(_READ_KEYS)}"
    return f"{key}: not a CreateEndpointConfig key ({hint})"


def _variant_name(variants: Any, ctx: Context) -> str:
    if variants is None:
        return DEFAULT_VARIANT
    if not isinstance(variants, list) or not variants:
        ctx.add("ProductionVariants", f"expected a list of at least one variant, got {shown(variants)}")
        return DEFAULT_VARIANT
    for index in range(1, len(variants)):
        log.info("ProductionVariants[%d] ignored: a self-hosted endpoint serves one variant", index)
    first = variants[0]
    if not isinstance(first, dict):
        ctx.add("ProductionVariants[0]", f"expected an object, got {shown(first)}")
        return DEFAULT_VARIANT
    for key in first:
        if key != "VariantName":
            log.info("ProductionVariants[0].%s is not used by a self-hosted endpoint; ignored", key)
    if "VariantName" not in first:
        return DEFAULT_VARIANT
    name = VARIANT_NAME.check(first["VariantName"], "ProductionVariants[0].VariantName", ctx)
    return DEFAULT_VARIANT if name is INVALID else name


def _capture_settings(checked: dict) -> CaptureSettings | None:
    if not checked.get("EnableCapture", True):
        log.info("DataCaptureConfig.EnableCapture is false: nothing is captured")
        return None
    if checked.get("KmsKeyId"):
        log.warning("DataCaptureConfig.KmsKeyId is ignored: capture files are written unencrypted by Lucent "
                    "(use the destination's own encryption, e.g. S3 default bucket encryption)")
    modes = {option["CaptureMode"] for option in checked["CaptureOptions"]}
    headers = checked.get("CaptureContentTypeHeader", {})
    return CaptureSettings(
        sampling_percentage=checked["InitialSamplingPercentage"],
        destination=checked["DestinationS3Uri"],
        capture_input=bool(modes & {"Input", "InputAndOutput"}),
        capture_output=bool(modes & {"Output", "InputAndOutput"}),
        csv_types=tuple(headers.get("CsvContentTypes", ())),
        json_types=tuple(headers.get("JsonContentTypes", ())))


def _explainer_settings(checked: dict, ctx: Context) -> ExplainerSettings | None:
    clarify = checked.get("ClarifyExplainerConfig")
    if clarify is None:
        log.info("ExplainerConfig has no ClarifyExplainerConfig: no explanations")
        return None
    if not isinstance(clarify, dict):
        return None
    path = "ExplainerConfig.ClarifyExplainerConfig"
    shap, inference = object_or_empty(clarify.get("ShapConfig")), object_or_empty(clarify.get("InferenceConfig"))
    baseline = object_or_empty(shap.get("ShapBaselineConfig"))
    baseline_path = f"{path}.ShapConfig.ShapBaselineConfig"
    if "ShapBaseline" in baseline and "ShapBaselineUri" in baseline:
        ctx.add(baseline_path, "ShapBaseline and ShapBaselineUri are mutually exclusive: give one of them")
    elif isinstance(shap.get("ShapBaselineConfig"), dict) and "ShapBaseline" not in baseline \
            and "ShapBaselineUri" not in baseline:  # a missing ShapBaselineConfig is reported by the spec
        ctx.add(baseline_path, "one of ShapBaseline (inline) and ShapBaselineUri is required")
    mime_type = baseline.get("MimeType")
    mime_type = media_type(mime_type) if isinstance(mime_type, str) and mime_type else CSV
    if mime_type == JSON_LINES and "ContentTemplate" not in inference:
        ctx.add(f"{path}.InferenceConfig.ContentTemplate", "required when ShapBaselineConfig.MimeType is "
                f"{JSON_LINES}: the template of a JSON Lines model request, e.g. '{{\"features\":$features}}'")
    for index_key, attribute_key in (("ProbabilityIndex", "ProbabilityAttribute"), ("LabelIndex", "LabelAttribute")):
        if index_key in inference and attribute_key in inference:
            ctx.add(f"{path}.InferenceConfig", f"{index_key} (CSV output) and {attribute_key} (JSON Lines output) "
                    "are mutually exclusive")
    headers, types = inference.get("FeatureHeaders"), inference.get("FeatureTypes")
    if isinstance(headers, list) and isinstance(types, list) and len(headers) != len(types):
        ctx.add(f"{path}.InferenceConfig.FeatureTypes", f"has {len(types)} entries but FeatureHeaders has "
                f"{len(headers)}")
    text = shap.get("TextConfig")
    if isinstance(types, list) and "text" in types and text is None:
        ctx.add(f"{path}.ShapConfig.TextConfig", "required when FeatureTypes has a 'text' feature")
    if ctx.problems or has_invalid(checked):
        return None
    return ExplainerSettings(
        baseline_mime_type=mime_type, baseline=baseline.get("ShapBaseline"),
        baseline_uri=baseline.get("ShapBaselineUri"),
        inference=InferenceSettings(
            feature_headers=tuple(headers) if headers is not None else None,
            feature_types=tuple(types) if types is not None else None,
            features_attribute=inference.get("FeaturesAttribute"),
            content_template=inference.get("ContentTemplate"),
            probability_index=inference.get("ProbabilityIndex"),
            probability_attribute=inference.get("ProbabilityAttribute"),
            label_index=inference.get("LabelIndex"),
            label_attribute=inference.get("LabelAttribute"),
            label_headers=tuple(inference["LabelHeaders"]) if "LabelHeaders" in inference else None,
            max_record_count=inference.get("MaxRecordCount"),
            max_payload_mb=inference.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)),
        enable_explanations=clarify.get("EnableExplanations"),
        num_samples=shap.get("NumberOfSamples"), seed=shap.get("Seed"), use_logit=shap.get("UseLogit", False),
        text_language=text["Language"] if text else None, text_granularity=text["Granularity"] if text else None)


