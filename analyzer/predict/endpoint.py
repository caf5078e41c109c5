"""``ModelEndpoint``: how to reach the job's model, as plain picklable data.

The job starts (or finds, or loads) the model once; analyses that fan out to worker processes (sharded
SHAP) pass this object to each worker, which opens its own client with ``client()``. Which client that
is -- HTTP to a model server, or the model folder loaded in the process (``local``) -- is decided here,
once: the analyses only see the ``Scorer`` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from analyzer.config import Predictor
from analyzer.media import NPY
from analyzer.predict.client import MAX_PAYLOAD_BYTES, ModelClient, model_timeout_seconds
from analyzer.predict.encode import Rows
from analyzer.predict.inprocess import InProcessClient, ModelLoader
from analyzer.predict.predictions import Predictions
from analyzer.progress import Progress


class Scorer(Protocol):
    """What the analyses call: predictions for feature rows, in input order. ``ModelClient`` (a model
    server over HTTP) and ``InProcessClient`` (the model loaded in this process) both are one."""

    def predict(self, rows: Rows, progress: Progress | None = None) -> Predictions: ...

    def close(self) -> None: ...

    def __enter__(self) -> Scorer: ...

    def __exit__(self, *exc_info: object) -> None: ...


@dataclass(frozen=True)
class ModelEndpoint:
    url: str  # base URL; requests go to <url>/invocations (unused when ``local`` is set)
    predictor: Predictor
    feature_names: tuple[str, ...]
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    # Read once where the job creates the endpoint (a bad value fails the job there), then carried to
    # the worker processes with the rest.
    timeout: float = field(default_factory=model_timeout_seconds)
    # The model folder, scored in each process that opens a client (loaded once per process); None: the
    # model is a server at ``url``.
    local: ModelLoader | None = None
    # The server draws coalition pictures sent described (``CoalitionPictures``; Lucent's built-in server
    # with the default input_fn): image explanations send those instead of the pictures.
    composes_pictures: bool = False

    @property
    def in_process(self) -> bool:
        return self.local is not None

    @property
    def describes_pictures(self) -> bool:
        """Image explanations send their coalition pictures described (``CoalitionPictures``), not drawn:
        the server draws them, and would have been sent them as npy."""
        return self.composes_pictures and self.predictor.content_type == NPY

    def client(self, feature_names: Sequence[str] | None = None, *, processes: int = 1, **options) -> Scorer:
        """A new client (its own connections and threads); close it, or use it in a ``with`` block.

        ``processes``: how many processes on this machine score at the same time (the SHAP workers). An
        in-process client then uses its share of the cores; a server client ignores it (the server has
        its own workers).
        """
        options = {"max_payload_bytes": self.max_payload_bytes, "timeout": self.timeout, **options}
        names = list(feature_names or self.feature_names)
        if self.local is not None:
            return InProcessClient(self.local, self.predictor, names, processes=processes, **options)
        return ModelClient(self.url, self.predictor, names, **options)
