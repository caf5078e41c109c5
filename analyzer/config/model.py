"""Typed view of ``analysis_config.json`` (spec clarify-contract.md section 2).

Field names follow the JSON keys. ``Locator`` is a column name, a 0-based column index, or (for JSON
and JSON Lines datasets) a JMESPath expression, exactly as the config gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from analyzer.bias_registry import POST_TRAINING, PRE_TRAINING, registered_names
from analyzer.media import DATASET_TYPES  # noqa: F401  (part of this module's interface)

Locator = str | int
Scalar = int | float | str | bool

# Metric names a bias method may list, in output (alphabetical) order.
PRE_TRAINING_METRICS = tuple(sorted(registered_names(PRE_TRAINING)))
POST_TRAINING_METRICS = tuple(sorted(registered_names(POST_TRAINING)))


@dataclass(frozen=True)
class Facet:
    name_or_index: Locator
    value_or_threshold: list[Scalar] | None = None  # None or [] -> one group per distinct value


@dataclass(frozen=True)
class BiasMethod:
    """``methods.pre_training_bias`` / ``methods.post_training_bias``."""

    methods: list[str]  # "all" is expanded to every registered metric, in alphabetical order


@dataclass(frozen=True)
class TextConfig:
    granularity: Literal["token", "sentence", "paragraph"]
    language: str  # normalised to the lower-case language name, e.g. "english"
    max_top_tokens: int = 50
    text_features: list[Locator] | None = None  # Lucent extension; None: detected (docs/text-explanations.md)


@dataclass(frozen=True)
class ImageConfig:
    model_type: str | None = None
    num_segments: int = 20
    segment_compactness: float = 5
    feature_extraction_method: str = "segmentation"
    max_objects: int = 3
    iou_threshold: float = 0.5
    context: float = 1.0
    debug: dict[str, Any] | None = None


@dataclass(frozen=True)
class ShapMethod:
    baseline: str | list[Any] | dict[str, Any] | None = None  # URI/path, inline rows, or JSON document
    num_clusters: int | None = None
    num_samples: int | None = None
    agg_method: Literal["mean_abs", "median", "mean_sq"] = "mean_abs"
    use_logit: bool = False
    save_local_shap_values: bool = True
    seed: int | None = None
    features_to_explain: list[Locator] | None = None
    text_config: TextConfig | None = None
    image_config: ImageConfig | None = None


@dataclass(frozen=True)
class PdpMethod:
    grid_resolution: int = 20
    features: list[Locator] | None = None
    top_k_features: int = 10


@dataclass(frozen=True)
class ReportMethod:
    name: str = "report"
    title: str = "Analysis Report"


@dataclass(frozen=True)
class AsymmetricShapleyValueMethod:
    direction: str = "chronological"
    granularity: str = "timewise"
    num_samples: int | None = None
    baseline: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class Methods:
    pre_training_bias: BiasMethod | None = None
    post_training_bias: BiasMethod | None = None
    shap: ShapMethod | None = None
    pdp: PdpMethod | None = None
    report: ReportMethod | None = None
    asymmetric_shapley_value: AsymmetricShapleyValueMethod | None = None


IN_PROCESS, SERVER = "in_process", "server"
SCORING_MODES = (IN_PROCESS, SERVER)  # predictor.lucent_scoring


@dataclass(frozen=True)
class Predictor:
    # Where the model is (Lucent extensions first: endpoint_url, image_uri).
    endpoint_url: str | None = None
    image_uri: str | None = None
    # How a model folder is scored (Lucent extension): "in_process" (the default: each job process loads
    # the folder and calls it) or "server" (the built-in model server, over HTTP). Images and URLs are
    # always servers. None: the default.
    lucent_scoring: str | None = None
    # Lucent extension: the most model requests in flight at once, over every worker and Spark task.
    max_concurrency: int | None = None
    model_name: str | None = None
    endpoint_name: str | None = None
    endpoint_name_prefix: str | None = None
    instance_type: str | None = None
    initial_instance_count: int | None = None
    accelerator_type: str | None = None
    target_model: str | None = None
    custom_attributes: str | None = None
    # Request / response format.
    content_type: str | None = None  # defaults resolved by the parser: dataset_type for tabular data
    accept_type: str | None = None  # defaults to content_type
    content_template: str | dict[str, str] | None = None
    record_template: str | None = None
    label: Locator | None = None
    probability: Locator | None = None
    label_headers: list[Scalar] | None = None
    time_series_predictor_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class TimeSeriesDataConfig:
    target_time_series: Locator
    item_id: Locator
    timestamp: Locator
    related_time_series: list[Locator] | None = None
    static_covariates: list[Locator] | None = None
    dataset_format: str | None = None


@dataclass(frozen=True)
class SegmentConfig:
    name_or_index: Locator
    segments: list[list[Scalar]]
    config_name: str | None = None
    display_aliases: list[str] | None = None


@dataclass(frozen=True)
class AnalysisConfig:
    dataset_type: str
    methods: Methods
    version: str = "1.0"
    dataset_uri: str | None = None
    headers: list[str] | None = None
    label: Locator | None = None
    predicted_label: Locator | None = None
    features: str | None = None
    label_values_or_threshold: list[Scalar] | None = None
    probability_threshold: float = 0.5
    facet: list[Facet] = field(default_factory=list)
    group_variable: Locator | None = None
    facet_dataset_uri: str | None = None
    facet_headers: list[str] | None = None
    predicted_label_dataset_uri: str | None = None
    predicted_label_headers: list[str] | None = None
    excluded_columns: list[Locator] | None = None
    joinsource_name_or_index: Locator | None = None
    segment_config: list[SegmentConfig] | None = None
    time_series_data_config: TimeSeriesDataConfig | None = None
    predictor: Predictor | None = None
    lucent: dict[str, Any] | None = None  # Lucent's settings ("engine", "spark_master"): analyzer.engines
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the JSON as read
