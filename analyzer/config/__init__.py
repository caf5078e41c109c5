"""``analysis_config.json``: find it, read it, validate it, and say what Lucent can run.

>>> from analyzer.config import find_config_file, load_config, unsupported_methods
>>> config = load_config(find_config_file(Path("/opt/ml/processing/input/config")))  # doctest: +SKIP
>>> unsupported_methods(config)  # doctest: +SKIP
[]
"""

from analyzer.config.model import (
    DATASET_TYPES,
    POST_TRAINING_METRICS,
    PRE_TRAINING_METRICS,
    AnalysisConfig,
    AsymmetricShapleyValueMethod,
    BiasMethod,
    Facet,
    ImageConfig,
    Locator,
    Methods,
    PdpMethod,
    Predictor,
    ReportMethod,
    Scalar,
    SegmentConfig,
    ShapMethod,
    TextConfig,
    TimeSeriesDataConfig,
)
from analyzer.config.parser import (
    CONFIG_FILE_NAME,
    ConfigValidationError,
    find_config_file,
    load_config,
    parse_config,
)
from analyzer.config.support import unsupported_methods

__all__ = [
    "CONFIG_FILE_NAME",
    "DATASET_TYPES",
    "POST_TRAINING_METRICS",
    "PRE_TRAINING_METRICS",
    "AnalysisConfig",
    "AsymmetricShapleyValueMethod",
    "BiasMethod",
    "ConfigValidationError",
    "Facet",
    "ImageConfig",
    "Locator",
    "Methods",
    "PdpMethod",
    "Predictor",
    "ReportMethod",
    "Scalar",
    "SegmentConfig",
    "ShapMethod",
    "TextConfig",
    "TimeSeriesDataConfig",
    "find_config_file",
    "load_config",
    "parse_config",
    "unsupported_methods",
]
