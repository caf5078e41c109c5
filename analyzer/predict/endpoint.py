"""``ModelEndpoint``: how to reach the job's model, as plain picklable data.

The job starts (or finds) the model once; analyses that fan out to worker processes (sharded SHAP)
pass this object to each worker, which opens its own ``ModelClient`` with ``client()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from analyzer.config import Predictor
from analyzer.predict.client import MAX_PAYLOAD_BYTES, ModelClient, model_timeout_seconds


@dataclass(frozen=True)
class ModelEndpoint:
    url: str  # base URL; requests go to <url>/invocations
    predictor: Predictor
    feature_names: tuple[str, ...]
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    # Read once where the job creates the endpoint (a bad value fails the job there), then carried to
    # the worker processes with the rest.
    timeout: float = field(default_factory=model_timeout_seconds)

    def client(self, feature_names: Sequence[str] | None = None, **options) -> ModelClient:
        """A new client (its own connections and threads); close it, or use it in a ``with`` block."""
        options = {"max_payload_bytes": self.max_payload_bytes, "timeout": self.timeout, **options}
        return ModelClient(self.url, self.predictor, list(feature_names or self.feature_names), **options)
