"""In-process scoring: the model folder loaded in this process and called directly, no server, no HTTP.

The seam is the one httpx cuts at its transports: ``ModelClient`` owns batching (windows, equal parts,
concurrency, halving a refused batch down to the record that fails, input order) and hands each batch to
``_answer``. ``ModelClient`` answers it with an HTTP request; ``InProcessClient`` answers it by calling
the loaded model, so every analysis gets the same ``predict(rows) -> Predictions`` whichever it uses.

Layering: ``analyzer`` must not import ``container``, where the model folder is loaded and the SageMaker
handler chain lives (shared with the built-in server, so both have one implementation of loading and of
handler semantics). The job passes a ``ModelLoader`` (a picklable handle holding the folder's path and
defined by ``container``) inside ``ModelEndpoint``; this module only knows the two small protocols below.
Each process loads the model once (``loaded_model`` caches it) the first time it opens a client.

With the server's default handlers and numeric rows (the request format is then npy both ways), the
model gets the rows as they are (no encoding) and its prediction array is read as the npy answer would
be; otherwise the request body is encoded and run through the user's handlers exactly as the server runs
it. Either way the scores are the server's to the bit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from analyzer.config.model import Predictor
from analyzer.predict.client import ModelClient, _Aborted, _Batch, _Patience, _Refused
from analyzer.predict.decode import ResponseParser
from analyzer.predict.encode import NpyRecords, SplitBody
from analyzer.predict.predictions import Predictions

CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"


class ModelRefused(Exception):
    """The loaded model (or its handlers) failed on a batch: what the server answers with a 4xx/5xx.
    The message is the server's plain-text answer (the stage that failed and why)."""


class LoadedModel(Protocol):
    """A model folder loaded in this process, with the server's handler semantics."""

    default_io: bool  # the default input_fn and output_fn: rows may be passed as arrays
    source: str  # what was loaded, for logs

    def score(self, rows: np.ndarray, accept: str, headers: Mapping[str, str]) -> np.ndarray | bytes:
        """``predict_fn`` on rows the default input_fn would have decoded, then the default output_fn:
        for npy, the array its body holds; for other types, the body. Raises ``ModelRefused``."""
        ...

    def invoke(self, body: bytearray, content_type: str, accept: str, headers: Mapping[str, str]) -> bytes:
        """One request through the whole handler chain, as the server runs it; the answer's body.
        Raises ``ModelRefused``."""
        ...


@runtime_checkable
class ModelLoader(Protocol):
    """Picklable, hashable handle on a model folder; ``load`` runs once per process."""

    @property
    def shown(self) -> str:
        """The model's name in messages (its folder)."""
        ...

    def load(self) -> LoadedModel: ...


_loaded: dict[ModelLoader, LoadedModel] = {}
_loading = threading.Lock()


def loaded_model(loader: ModelLoader) -> LoadedModel:
    """The model of ``loader``, loaded the first time this process asks for it."""
    with _loading:
        model = _loaded.get(loader)
        if model is None:
            model = _loaded[loader] = loader.load()
        return model


def forget_model(loader: ModelLoader) -> None:
    """Drop this process's copy (the job is done with it, or its folder is about to be removed)."""
    with _loading:
        _loaded.pop(loader, None)


def scoring_threads(processes: int = 1) -> int:
    """Threads one process gets for scoring when ``processes`` processes score at once: its share of the
    cores this process may run on. The model's own threads are held to one per scoring thread (see
    ``InProcessClient``), so ``processes x scoring_threads`` keeps every core busy and none oversubscribed."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


class InProcessClient(ModelClient):
    """``ModelClient`` whose batches are scored by the model loaded in this process.

    ``processes``: how many processes score at the same time (the SHAP workers); this client runs
    ``scoring_threads(processes)`` batches at once, each on one thread, with the model's OpenMP/BLAS
    threads held to one in each. Retries, timeouts and payload limits do not apply: there is no
    transport to fail. A batch the model refuses is halved down to the record that fails, as with the
    server, and that record is named in the ``ModelError``. A prediction the server would refuse to
    write as npy (text: predicted labels) is asked as CSV, as from the server (``ModelClient``), and the
    parser says what it is.
    """

    def __init__(self, loader: ModelLoader, predictor: Predictor, feature_names: Sequence[str], *,
                 processes: int = 1, **options):
        options.setdefault("concurrency", scoring_threads(processes))
        super().__init__("http://in-process", predictor, feature_names, **options)
        self.model = loaded_model(loader)
        self.shown_url = f"{loader.shown} (in process)"
        self.content_type = self.headers["Content-Type"]
        # What the server's handlers see of a request: its headers, lower-case (Content-Type is not one).
        self.request_headers = {name.lower(): value for name, value in self.headers.items()
                                if name != "Content-Type"}

    def _thread_started(self) -> None:
        # One OpenMP thread per scoring thread (OpenMP's limit is per thread: set it in each). XGBoost and
        # LightGBM models are loaded with one thread already.
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="openmp")

    def _answer(self, batch: _Batch, abort: threading.Event, patience: _Patience,
                parser: ResponseParser) -> Predictions:
        if abort.is_set():
            raise _Aborted
        records = batch.records
        accept, headers = parser.accept_type, self.request_headers
        if headers.get("accept") != accept:  # asked in another type than the client's (ModelClient._answer_as_csv)
            headers = {**headers, "accept": accept}
        try:
            if self.model.default_io and isinstance(records, NpyRecords):
                answer = self.model.score(records.matrix[batch.start:batch.stop], accept, headers)
            else:
                body = records.body(batch.start, batch.stop)
                # A bytearray, as the server receives it (its default input_fn reads npy bodies in place).
                # .pieces, not the body: join() would pre-allocate len(body) slots, its size in bytes.
                data = bytearray().join(body.pieces) if isinstance(body, SplitBody) else bytearray(body)
                answer = self.model.invoke(data, self.content_type, accept, headers)
        except ModelRefused as refusal:
            raise _Refused(str(refusal)) from None
        with self._lock:
            self.stats.requests += 1
            self.stats.records += len(batch)
        if isinstance(answer, np.ndarray):
            return parser.parse_array(answer, len(batch), batch.first_row)
        return parser.parse(answer, len(batch), batch.first_row)


__all__ = ["InProcessClient", "LoadedModel", "ModelLoader", "ModelRefused", "forget_model",
           "loaded_model", "scoring_threads"]
