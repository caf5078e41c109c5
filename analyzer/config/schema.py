"""The ``analysis_config.json`` schema as a table (spec clarify-contract.md section 2).

It mirrors the SageMaker Python SDK's ``ANALYSIS_CONFIG_SCHEMA_V1_0`` (what clients send and what
the Clarify container checks), with three deliberate differences:

* booleans are not accepted where an integer is expected (``True`` is an int only in Python);
* a few keys the SDK schema marks required have documented defaults and may be omitted:
  ``methods.pdp.grid_resolution`` (20, the container default) and ``methods.report.name``
  (``"report"``);
* Lucent extension keys ``predictor.endpoint_url``, ``predictor.image_uri``,
  ``predictor.lucent_scoring`` and ``predictor.max_concurrency``, and the ``lucent`` object.

Rules that involve more than one key live in ``analyzer.config.rules``.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from analyzer.config.model import (
    DATASET_TYPES,
    IN_PROCESS,
    POST_TRAINING_METRICS,
    PRE_TRAINING_METRICS,
    SCORING_MODES,
    AsymmetricShapleyValueMethod,
    BiasMethod,
    Facet,
    ImageConfig,
    Methods,
    PdpMethod,
    Predictor,
    ReportMethod,
    SegmentConfig,
    ShapMethod,
    TextConfig,
    TimeSeriesDataConfig,
)
from analyzer.config.spec import (
    Either,
    Enum,
    ListOf,
    MapOf,
    Obj,
    Spec,
    Then,
    Typed,
    Where,
)
from analyzer.media import MODEL_CONTENT_TYPES, TABULAR_TYPES

SUPPORTED_VERSION = "1.0"

# SDK TextConfig._SUPPORTED_LANGUAGES: 62 languages plus "multi-language", each as name and ISO code.
LANGUAGES: tuple[tuple[str, str], ...] = (
    ("chinese", "zh"), ("danish", "da"), ("dutch", "nl"), ("english", "en"), ("french", "fr"),
    ("german", "de"), ("greek", "el"), ("italian", "it"), ("japanese", "ja"), ("lithuanian", "lt"),
    ("multi-language", "xx"), ("norwegian bokmål", "nb"), ("polish", "pl"), ("portuguese", "pt"),
    ("romanian", "ro"), ("russian", "ru"), ("spanish", "es"), ("afrikaans", "af"), ("albanian", "sq"),
    ("arabic", "ar"), ("armenian", "hy"), ("basque", "eu"), ("bengali", "bn"), ("bulgarian", "bg"),
    ("catalan", "ca"), ("croatian", "hr"), ("czech", "cs"), ("estonian", "et"), ("finnish", "fi"),
    ("gujarati", "gu"), ("hebrew", "he"), ("hindi", "hi"), ("hungarian", "hu"), ("icelandic", "is"),
    ("indonesian", "id"), ("irish", "ga"), ("kannada", "kn"), ("kyrgyz", "ky"), ("latvian", "lv"),
    ("ligurian", "lij"), ("luxembourgish", "lb"), ("macedonian", "mk"), ("malayalam", "ml"),
    ("marathi", "mr"), ("nepali", "ne"), ("persian", "fa"), ("sanskrit", "sa"), ("serbian", "sr"),
    ("setswana", "tn"), ("sinhala", "si"), ("slovak", "sk"), ("slovenian", "sl"), ("swedish", "sv"),
    ("tagalog", "tl"), ("tamil", "ta"), ("tatar", "tt"), ("telugu", "te"), ("thai", "th"),
    ("turkish", "tr"), ("ukrainian", "uk"), ("urdu", "ur"), ("vietnamese", "vi"), ("yoruba", "yo"),
)

MODEL_ACCEPT_TYPES = TABULAR_TYPES
AGG_METHODS = ("mean_abs", "median", "mean_sq")
ASV_DIRECTIONS = ("chronological", "anti_chronological", "bidirectional")
ASV_GRANULARITIES = ("timewise", "fine_grained")
# The SDK pattern, anchored at both ends: a prefix must itself be a valid endpoint-name start.
ENDPOINT_NAME_PREFIX = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
ENDPOINT_NAME_PREFIX_MAX = 23

# -- building blocks ----------------------------------------------------------------------------
STRING = Typed(("string",))
BOOLEAN = Typed(("boolean",))
COUNT = Typed(("integer",), minimum=1)  # num_samples, num_clusters, instance counts ...
NUMBER = Typed(("number",), as_float=True)
FRACTION = Typed(("number",), minimum=0, maximum=1, as_float=True)
LOCATOR = Typed(("string", "integer"), minimum=0)  # column name, 0-based index or JMESPath
LOCATORS = ListOf(LOCATOR, min_items=1)
STRINGS = ListOf(STRING)
VALUES = ListOf(Typed(("number", "string", "boolean")), min_items=1)  # label / facet values
ANY_OBJECT = Typed(("object",))


def _metric_selection(registered: tuple[str, ...]) -> Spec:
    """``"all"`` or a list of exact metric names -> sorted unique names (Clarify outputs metrics
    alphabetically, so the order of the list does not matter)."""
    every = Then(Where(STRING, ((lambda v: v.lower() == "all",
                                 'expected "all" or a list of metric names, got {value!r}'),)),
                 lambda _: sorted(registered))
    chosen = Then(ListOf(Enum(registered, case_sensitive=True), min_items=1), lambda v: sorted(set(v)))
    return Either((every, chosen))


def _parsed_url(value: str) -> SplitResult | None:
    """``value`` split into URL parts, or None when it is not a URL (``urlsplit`` raises ValueError for
    a bad IPv6 host or port, for instance)."""
    try:
        parsed = urlsplit(value)
        parsed.port  # noqa: B018 -- parses the port, raising ValueError for one out of range
    except ValueError:
        return None
    return parsed


def _http_url(value: str) -> bool:
    parsed = _parsed_url(value)
    return parsed is not None and parsed.scheme.lower() in ("http", "https") and bool(parsed.hostname)


def _base_url(value: str) -> bool:
    parsed = _parsed_url(value)
    return parsed is not None and not parsed.query and not parsed.fragment and "?" not in value and "#" not in value


# A URL's problems are stated without the URL: it may hold a password (user:password@) or a token.
ENDPOINT_URL = Where(STRING, (
    (_http_url, "must be an http:// or https:// URL with a host and a valid port (value not shown: it may "
                "hold a password)"),
    (_base_url, "must not have a query string or fragment: the job sends GET <endpoint_url>/ping and POST "
                "<endpoint_url>/invocations (value not shown: it may hold a token)"),
))


def _visible_ascii(value: str) -> bool:
    return all(32 <= ord(c) < 127 or c == "\t" for c in value)


def _file_stem(value: str) -> bool:
    return bool(value) and value not in (".", "..") and not re.search(r"[/\\\x00]", value)


# -- the schema ---------------------------------------------------------------------------------
FACET = Obj({"name_or_index": LOCATOR, "value_or_threshold": ListOf(Typed(("number", "string", "boolean")))},
            required=("name_or_index",), model=Facet)

SEGMENT = Obj({
    "config_name": STRING,
    "name_or_index": LOCATOR,
    "segments": ListOf(ListOf(Typed(("string", "integer")), min_items=1), min_items=1),
    "display_aliases": STRINGS,
}, required=("name_or_index", "segments"), model=SegmentConfig)

# All strings or all ints, like target_time_series: checked by the time-series rule.
_TS_LOCATORS = ListOf(Where(LOCATOR, ((lambda v: v != "", "must not be an empty string"),)))
TIME_SERIES_DATA = Obj({
    "target_time_series": LOCATOR,
    "item_id": LOCATOR,
    "timestamp": LOCATOR,
    "related_time_series": _TS_LOCATORS,
    "static_covariates": _TS_LOCATORS,
    "dataset_format": Enum(("columns", "item_records", "timestamp_records")),
}, required=("target_time_series", "item_id", "timestamp"), model=TimeSeriesDataConfig)

TEXT_CONFIG = Obj({
    "granularity": Enum(("token", "sentence", "paragraph")),
    "language": Enum(tuple(name for name, _ in LANGUAGES), aliases={code: name for name, code in LANGUAGES}),
    "max_top_tokens": COUNT,
    "text_features": LOCATORS,  # Lucent extension: which features are text (default: detected)
}, required=("granularity", "language"), model=TextConfig)

IMAGE_CONFIG = Obj({
    "model_type": Enum(("IMAGE_CLASSIFICATION", "OBJECT_DETECTION")),
    "num_segments": COUNT,
    # SLIC divides by it: one bound, > 0 (a minimum of 0 said ">= 0" for -1 while 0 was refused too)
    "segment_compactness": Where(Typed(("number",), as_float=True),
                                 ((lambda v: v > 0, "must be > 0 (SLIC divides by it), got {value!r}"),)),
    "feature_extraction_method": STRING,
    "max_objects": COUNT,
    "iou_threshold": FRACTION,
    "context": FRACTION,
    "debug": Obj({"image_names": STRINGS, "class_ids": ListOf(Typed(("integer",), minimum=0)),
                  "sample_from": Typed(("integer",), minimum=0), "sample_to": Typed(("integer",), minimum=0)}),
}, model=ImageConfig)

_CSV_ROW = ListOf(Typed(("number", "string", "null")))
SHAP = Obj({
    # URI / path of a baseline file, inline rows (CSV lists or JSON Lines objects), or a JSON document.
    "baseline": Either((STRING, ListOf(Either((_CSV_ROW, ANY_OBJECT)), min_items=1), ANY_OBJECT)),
    "num_clusters": COUNT,
    "num_samples": COUNT,
    "agg_method": Enum(AGG_METHODS),
    "use_logit": BOOLEAN,
    "save_local_shap_values": BOOLEAN,
    # numpy's and scikit-learn's seeds (np.random.RandomState, KMeans random_state): 0 to 2**32 - 1.
    "seed": Typed(("integer",), minimum=0, maximum=2**32 - 1),
    "features_to_explain": LOCATORS,
    "text_config": TEXT_CONFIG,
    "image_config": IMAGE_CONFIG,
}, model=ShapMethod)

PDP = Obj({"grid_resolution": COUNT, "features": LOCATORS, "top_k_features": COUNT}, model=PdpMethod)

REPORT = Obj({"name": Where(STRING, ((_file_stem, "must be a file name (no '/'), got {value!r}"),)),
              "title": STRING}, model=ReportMethod)

_TEMPORAL_BASELINE = Enum(("zero", "mean"))
ASYMMETRIC_SHAPLEY_VALUE = Obj({
    "direction": Enum(ASV_DIRECTIONS),
    "granularity": Enum(ASV_GRANULARITIES),
    "num_samples": COUNT,
    "baseline": Either((STRING, Obj({
        "target_time_series": _TEMPORAL_BASELINE,
        "related_time_series": _TEMPORAL_BASELINE,
        "static_covariates": MapOf(ListOf(Typed(("number", "string")))),
    }))),
}, required=("direction", "granularity"), model=AsymmetricShapleyValueMethod)

METHODS = Obj({
    "pre_training_bias": Obj({"methods": _metric_selection(PRE_TRAINING_METRICS)}, required=("methods",),
                             model=BiasMethod),
    "post_training_bias": Obj({"methods": _metric_selection(POST_TRAINING_METRICS)}, required=("methods",),
                              model=BiasMethod),
    "shap": SHAP,
    "pdp": PDP,
    "report": REPORT,
    "asymmetric_shapley_value": ASYMMETRIC_SHAPLEY_VALUE,
}, model=Methods)

PREDICTOR = Obj({
    # Lucent extensions: where a self-hosted job reaches the model.
    "endpoint_url": ENDPOINT_URL,
    "image_uri": Where(STRING, ((bool, "must not be empty"),)),
    "lucent_scoring": Enum(SCORING_MODES, aliases={"in-process": IN_PROCESS, "inprocess": IN_PROCESS}),
    # Lucent extension: the most model requests in flight at once over all workers and Spark tasks.
    "max_concurrency": COUNT,
    # SageMaker: existing endpoint, or a model deployed to a shadow endpoint.
    "endpoint_name": STRING,
    "endpoint_name_prefix": Where(STRING, (
        (lambda v: len(v) <= ENDPOINT_NAME_PREFIX_MAX,
         f"must be at most {ENDPOINT_NAME_PREFIX_MAX} characters, got {{value!r}}"),
        (lambda v: ENDPOINT_NAME_PREFIX.fullmatch(v) is not None,
         "Invalid endpoint_name_prefix {value!r}. Please follow pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9])."),
    )),
    "model_name": STRING,
    "target_model": STRING,
    "instance_type": STRING,
    "initial_instance_count": COUNT,
    "accelerator_type": STRING,
    "custom_attributes": Where(STRING, (
        (lambda v: len(v) <= 1024, "must be at most 1024 characters"),
        (_visible_ascii, "must be visible US-ASCII characters only"),
    )),
    # Request and response format.
    "content_type": Enum(MODEL_CONTENT_TYPES),
    "accept_type": Enum(MODEL_ACCEPT_TYPES),
    "content_template": Either((STRING, MapOf(STRING))),
    "record_template": STRING,
    "label": LOCATOR,
    "probability": LOCATOR,
    "label_headers": ListOf(Typed(("string", "integer")), min_items=1),
    "time_series_predictor_config": Obj({"forecast": STRING}, required=("forecast",)),
}, model=Predictor)

# Lucent's own settings, under a key the SageMaker SDK never writes (SDK-written configs stay untouched):
# where the heavy work runs (analyzer/engines, docs/spark.md).
# checkpoint_uri: where SHAP checkpoints are kept for a rerun (analyzer/explain/checkpoint_store.py);
# local_shap_output: out.csv as one file (Clarify's single instance) or a folder of part files (its Spark mode).
LUCENT = Obj({"engine": Enum(("local", "spark")), "spark_master": STRING,
              "checkpoint_uri": Where(STRING, ((lambda v: bool(v.strip()), "must be an s3:// URI or a path, got {value!r}"),)),
              "local_shap_output": Enum(("file", "parts"))})

ANALYSIS_CONFIG = Obj({
    "version": Where(STRING, ((lambda v: v == SUPPORTED_VERSION,
                               f'{{value!r}} is not supported; the only version is "{SUPPORTED_VERSION}"'),)),
    "dataset_type": Enum(DATASET_TYPES),
    "dataset_uri": STRING,
    "headers": ListOf(STRING, min_items=1),
    "label": LOCATOR,
    "predicted_label": LOCATOR,
    "features": STRING,
    "label_values_or_threshold": VALUES,
    "probability_threshold": NUMBER,
    "facet": ListOf(FACET, min_items=1),
    "group_variable": LOCATOR,
    "facet_dataset_uri": STRING,
    "facet_headers": ListOf(STRING, min_items=1),
    "predicted_label_dataset_uri": STRING,
    "predicted_label_headers": ListOf(STRING, min_items=1),
    "excluded_columns": LOCATORS,
    "joinsource_name_or_index": LOCATOR,
    "segment_config": ListOf(SEGMENT, min_items=1),
    "time_series_data_config": TIME_SERIES_DATA,
    "methods": METHODS,
    "predictor": PREDICTOR,
    "lucent": LUCENT,
}, required=("dataset_type", "methods"))

KEY_HOMES = ANALYSIS_CONFIG.key_homes()
