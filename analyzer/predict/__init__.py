"""Predictor client: feature rows -> model requests -> ``Predictions`` (spec section 5).

``ModelClient`` talks to a model server's ``/invocations`` (batched, concurrent, retrying);
``InProcessClient`` scores a model folder loaded in this process, behind the same interface (``Scorer``);
``serialize_records`` / ``parse_response`` are its request and response formats on their own;
``predicted_labels_for_bias`` applies Clarify's predicted-label rules for post-training bias.
"""

from analyzer.predict.client import (
    ClientStats,
    ModelClient,
    ModelError,
    ModelTransportError,
    RetryPolicy,
    model_timeout_seconds,
    wait_until_healthy,
)
from analyzer.predict.decode import ResponseParser, parse_response
from analyzer.predict.encode import EncodedRecords, RequestEncoder, serialize_records
from analyzer.predict.endpoint import ModelEndpoint, Scorer
from analyzer.predict.inprocess import InProcessClient, LoadedModel, ModelLoader, ModelRefused
from analyzer.predict.predictions import Predictions, predicted_labels_for_bias

__all__ = [
    "ClientStats",
    "EncodedRecords",
    "InProcessClient",
    "LoadedModel",
    "ModelClient",
    "ModelEndpoint",
    "ModelError",
    "ModelLoader",
    "ModelRefused",
    "ModelTransportError",
    "Predictions",
    "RequestEncoder",
    "ResponseParser",
    "RetryPolicy",
    "Scorer",
    "parse_response",
    "model_timeout_seconds",
    "predicted_labels_for_bias",
    "serialize_records",
    "wait_until_healthy",
]
