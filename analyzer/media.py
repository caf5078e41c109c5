"""Media types and the request-template grammar, declared once.

Config validation (``analyzer.config``), the request encoder and response parser
(``analyzer.predict``) and Lucent's built-in model server (``container.sidecar``) all name the same
media types and read the same ``content_template`` / ``record_template`` placeholders (spec
clarify-contract.md 2 and 5.2). They take both from here, so a type or a placeholder that one of
them accepts is one the others know. Standard library only: the model server imports it too.
"""

from __future__ import annotations

import re
from typing import NamedTuple

CSV = "text/csv"
JSON_LINES = "application/jsonlines"
JSON = "application/json"
NPY = "application/x-npy"  # between Lucent and its own model server only (not a dataset type)
PARQUET = "application/x-parquet"
IMAGE = "application/x-image"
CAPTURE_JSON = "application/sagemakercapturejson"  # Model Monitor capture data
JPEG = "image/jpeg"
PNG = "image/png"
JPG = "image/jpg"  # not a registered type, but the SDK's ModelConfig lets it through
# Coalition pictures described, not drawn (an image, its segments and fill, which segments each picture
# keeps): between a Lucent job and Lucent's own model server only, which draws them (docs/images.md).
IMAGE_COALITIONS = "application/x-lucent-image-coalitions"

DATASET_TYPES = (CSV, JSON_LINES, JSON, CAPTURE_JSON, PARQUET, IMAGE)  # config dataset_type
TABULAR_TYPES = (CSV, JSON_LINES, JSON)  # tabular datasets a model takes as they are; model responses
JSON_TYPES = (JSON, JSON_LINES)  # locators in them are JMESPath expressions
MODEL_CONTENT_TYPES = (*TABULAR_TYPES, JPEG, PNG, NPY, JPG)  # config predictor.content_type
REQUEST_TYPES = (*TABULAR_TYPES, NPY)  # tabular request bodies Lucent writes and its model server reads

# Spellings seen in the wild for JSON Lines; Clarify itself sends application/jsonlines.
ALIASES = {"application/x-jsonlines": JSON_LINES, "application/jsonl": JSON_LINES,
           "application/x-ndjson": JSON_LINES}


def media_type(header: str | None) -> str:
    """The bare, lower-case media type of a Content-Type / Accept value or a config type (parameters
    dropped, JSON Lines aliases mapped): ``"Text/CSV; charset=utf-8"`` -> ``"text/csv"``."""
    mime = (header or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(mime, mime)


# -- request templates --------------------------------------------------------------------------
# Placeholders a record (content_template of application/jsonlines, record_template of
# application/json) holds, besides "${feature name}" (one feature's value):
FEATURES = "features"  # the record's values as a JSON array
FEATURES_KVP = "features_kvp"  # the record as {"feature name": value, ...}
FEATURE_NAMES = "feature_names"  # the feature names as a JSON array
# Where the records go in the content_template of application/json:
RECORDS = "records"  # all records of the request, as a JSON array
RECORD = "record"  # one record: a request carries a single record
# Time-series explanations (asymmetric Shapley values) only:
TIME_SERIES_PLACEHOLDERS = ("start_time", "target_time_series", "related_time_series", "static_covariates")
PLACEHOLDER_NAMES = (FEATURES, FEATURES_KVP, FEATURE_NAMES, RECORDS, RECORD, *TIME_SERIES_PLACEHOLDERS)

# "${name}" (a JSON string in the template: the value replaces the quotes too), bare ${name}, or
# $placeholder as a whole word, like string.Template identifiers ($featuresX is not $features).
_PLACEHOLDER = re.compile(r'"\$\{(?P<quoted>[^}]*)\}"|\$\{(?P<bare>[^}]*)\}|\$(?P<name>'
                          + "|".join(sorted(PLACEHOLDER_NAMES, key=len, reverse=True)) + r")\b")


class Placeholder(NamedTuple):
    """One placeholder of a template: a ``name`` of ``PLACEHOLDER_NAMES``, or the ``feature`` that a
    ``"${feature name}"`` names; ``start`` / ``end`` delimit it in the template."""

    name: str | None
    feature: str | None
    start: int
    end: int


def placeholders(template: str) -> list[Placeholder]:
    """The placeholders of ``template`` in order; text between them is literal."""
    found = []
    for match in _PLACEHOLDER.finditer(template):
        feature = match.group("quoted") if match.group("quoted") is not None else match.group("bare")
        found.append(Placeholder(match.group("name"), feature, match.start(), match.end()))
    return found
