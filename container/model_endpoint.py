"""Where a job gets its model: the endpoint that answers ``POST /invocations`` during the job.

In this order (spec clarify-contract.md sections 2.5 and 5):

1. ``predictor.endpoint_url`` (Lucent extension): a model server that is already running;
2. ``predictor.image_uri`` (Lucent extension): a model image, started as a sibling container with
   the model folder mounted at ``/opt/ml/model`` (``serve`` as SageMaker starts it), removed after;
3. otherwise the job's model folder (``<processing-root>/input/model``: a folder, or one holding
   ``model.tar.gz``), scored in process by default (``in_process_model``: each job process that
   scores loads the folder once and calls its handlers directly; no server is started), or served by
   Lucent's built-in model server, started as a child process, with ``predictor.lucent_scoring:
   "server"``.

SageMaker's ``model_name`` / ``endpoint_name`` cannot be reached from a self-hosted job; they are
accepted (SDK configs carry them) and logged. Whatever was started is stopped when the job ends,
successful or not.

A model that cannot be started or reached at the start is the user's to fix (``ModelUnavailable``,
exit 1). A built-in server that exits during the job, or a model that stops answering, is not
(``DependencyError``, exit 2): the message says how the server exited and shows its last log lines.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analyzer.config import AnalysisConfig
from analyzer.config.model import SERVER
from analyzer.environment import positive_number
from analyzer.errors import DependencyError, UserError
from analyzer.predict import ModelRefused, ModelTransportError, wait_until_healthy
from analyzer.predict.inprocess import forget_model, loaded_model
from analyzer.redact import redact_url
from container.engine import EngineUnavailable, connect_engine, discard_container

if TYPE_CHECKING:
    import numpy as np

    from container.sidecar import ModelServer
    from container.sidecar.model import ModelHandlers

log = logging.getLogger(__name__)

HEALTHY_WITHIN_SECONDS = 240  # SageMaker: /ping must pass within 4 minutes of the container start
# An endpoint that is "already running" gets less patience than one we start; overridable for slow starts
# (read when a URL is used, through the one parser of LUCENT_* numbers: a bad value is a clear error).
EXISTING_ENDPOINT_WAIT_VARIABLE = "LUCENT_ENDPOINT_WAIT_SECONDS"
EXISTING_ENDPOINT_WAIT_SECONDS = 60.0
MODEL_PORT = 8080


class ModelUnavailable(UserError):
    """The model could not be started or reached."""


@dataclass(frozen=True)
class ServedModel:
    url: str
    # The built-in server decodes requests with its default input_fn: any supported content type gives
    # the model the same array, so the job may send numeric features as application/x-npy.
    default_io: bool = False
    # ... and draws coalition pictures sent described (IMAGE_COALITIONS) itself (its /lucent/info says so).
    composes_pictures: bool = False
    # The built-in server's handle, for a caller that must notice its exit at once (`lucent endpoint`).
    server: ModelServer | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_info(cls, url: str, info: Mapping[str, object], server: ModelServer | None = None) -> ServedModel:
        """The built-in server at ``url`` as its ``/lucent/info`` answer describes it."""
        return cls(url, default_io=bool(info.get("default_io")), composes_pictures=bool(info.get("composes_pictures")),
                   server=server)


@contextlib.contextmanager
def model_endpoint(config: AnalysisConfig, model_dir: Path) -> Iterator[ServedModel]:
    """Start (or find) the model for ``config`` and yield where it is; stop it afterwards."""
    predictor = config.predictor
    if predictor is None:
        raise ModelUnavailable("predictor: this job needs a model but the config has no 'predictor' section")
    _log_sagemaker_names(config, model_dir)
    if predictor.endpoint_url:
        yield ServedModel(_existing_endpoint(predictor.endpoint_url))
    elif predictor.image_uri:
        with _model_container(predictor.image_uri, model_dir) as url:
            yield ServedModel(url)
    else:
        with _builtin_server(model_dir) as served:
            yield served


def _log_sagemaker_names(config: AnalysisConfig, model_dir: Path) -> None:
    for key in ("model_name", "endpoint_name"):
        if getattr(config.predictor, key):
            log.info("predictor.%s %r names a SageMaker resource; Lucent uses %s instead", key,
                     getattr(config.predictor, key), _describe_source(config, model_dir))


def scores_in_process(config: AnalysisConfig) -> bool:
    """The job's model folder is scored in the job's own processes: no ``endpoint_url`` or ``image_uri``
    (those are servers, always called over HTTP) and ``predictor.lucent_scoring`` is not ``"server"``."""
    predictor = config.predictor
    return predictor is not None and not predictor.endpoint_url and not predictor.image_uri and \
        predictor.lucent_scoring != SERVER


@dataclass(frozen=True)
class InProcessModel:
    """The job's model folder as a picklable handle (``analyzer.predict.ModelLoader``): worker processes
    get it inside ``ModelEndpoint`` and each loads the folder once, with the built-in server's loader and
    handler chain (``container.sidecar.model``), so the scores are the server's."""

    folder: str  # the extracted folder that is loaded
    shown: str  # the folder or tarball the user gave, for messages

    def load(self) -> LoadedFolder:
        from container.sidecar.model import ModelLoadError, load_handlers

        try:
            # One thread per call inside XGBoost / LightGBM: the client runs one batch per core instead.
            handlers = load_handlers(Path(self.folder), threads=1)
        except ModelLoadError as error:
            raise ModelUnavailable(f"model folder unloadable: {error}") from error
        except Exception as error:  # what the server reports through /ping, reported here
            log.exception("loading the model failed")
            raise ModelUnavailable(f"model folder unloadable: {type(error).__name__}: {error}") from error
        return LoadedFolder(handlers)


class LoadedFolder:
    """A loaded model folder behind ``analyzer.predict.LoadedModel``: the server's handler semantics,
    its failures raised as ``ModelRefused`` with the text the server would answer."""

    def __init__(self, handlers: ModelHandlers):
        self.handlers = handlers
        self.default_io = handlers.default_io
        self.source = handlers.source

    def score(self, rows: np.ndarray, accept: str, headers: Mapping[str, str]) -> np.ndarray | bytes:
        with _refusals():
            return self.handlers.score(rows, accept, self._context(headers))

    def invoke(self, body: bytearray, content_type: str, accept: str, headers: Mapping[str, str]) -> bytes:
        with _refusals():
            return self.handlers.invoke(body, content_type, accept, self._context(headers))[0]

    def _context(self, headers: Mapping[str, str]):
        from container.sidecar.app import CUSTOM_ATTRIBUTES_HEADER, TARGET_MODEL_HEADER
        from container.sidecar.model import InvocationContext

        return InvocationContext(custom_attributes=headers.get(CUSTOM_ATTRIBUTES_HEADER.lower()),
                                 target_model=headers.get(TARGET_MODEL_HEADER.lower()), headers=dict(headers),
                                 model_dir=str(self.handlers.model_dir))


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A handler failure (the server's 4xx/5xx answer) -> ``ModelRefused``. A stop request (SIGTERM's
    ``JobStopped``, a ``BaseException``) passes through the handler stages untouched and stops the job."""
    from container.sidecar.model import InvocationError

    try:
        yield
    except InvocationError as error:
        raise ModelRefused(str(error)) from None


@contextlib.contextmanager
def in_process_model(config: AnalysisConfig, model_dir: Path,
                     before_load: Callable[[InProcessModel], None] | None = None,
                     ) -> Iterator[tuple[InProcessModel, bool]]:
    """Load the job's model folder in this process (a tarball is extracted first, removed afterwards);
    yields the handle worker processes load it with and whether its handlers are the defaults. An
    unloadable folder fails here, before any work, as it does when the server would not start.
    ``before_load(handle)`` runs once the folder is ready, before this process loads it (to start the
    worker processes that load it too, meanwhile)."""
    from container.sidecar.model import ModelLoadError, prepare_model_dir

    _log_sagemaker_names(config, model_dir)
    source = model_source(model_dir)
    started = time.perf_counter()
    try:
        folder, extracted = prepare_model_dir(source)
    except ModelLoadError as error:
        raise ModelUnavailable(f"model folder unloadable: {error}") from error
    # Absolute: a Spark executor (another host, another working folder) loads the folder by this path
    model = InProcessModel(str(Path(folder).resolve()), str(source))
    try:
        if before_load is not None:
            before_load(model)
        loaded = loaded_model(model)
        log.info("Scoring the model in process (no model server): %s, loaded in %.1f seconds", loaded.source,
                 time.perf_counter() - started)
        yield model, loaded.default_io
    finally:
        forget_model(model)
        if extracted is not None:
            extracted.cleanup()


def _describe_source(config: AnalysisConfig, model_dir: Path) -> str:
    if config.predictor.endpoint_url:
        return f"the endpoint at {redact_url(config.predictor.endpoint_url)}"
    if config.predictor.image_uri:
        return f"the model image {config.predictor.image_uri}"
    if scores_in_process(config):
        return f"the model folder {model_dir}, in process"
    return f"the built-in model server on {model_dir}"


def _existing_endpoint(url: str, setting: str = "predictor.endpoint_url") -> str:
    """``url`` once its ``GET /ping`` answers 200; ``ModelUnavailable`` naming ``setting`` (the config key or
    the option that gave the URL) when it does not within ``$LUCENT_ENDPOINT_WAIT_SECONDS`` (default 60)."""
    patience = positive_number(EXISTING_ENDPOINT_WAIT_VARIABLE, EXISTING_ENDPOINT_WAIT_SECONDS, unit="seconds")
    log.info("Using the model endpoint at %s", redact_url(url))
    try:
        waited = wait_until_healthy(url, timeout=patience)
    except ModelTransportError as error:
        raise ModelUnavailable(f"{setting}: {error}") from error
    log.info("Endpoint is in service after %.0f seconds", waited)
    return url


def model_source(model_dir: Path) -> Path:
    """The folder or ``model.tar.gz`` to serve, with a clear error when there is nothing to serve."""
    if not model_dir.exists():
        raise ModelUnavailable(f"no model: {model_dir} does not exist. Put the model folder (or model.tar.gz) "
                               "there, or set predictor.endpoint_url / predictor.image_uri")
    tarball = model_dir / "model.tar.gz"
    if tarball.is_file():
        return tarball
    if not any(model_dir.iterdir()):
        raise ModelUnavailable(f"model folder unloadable: {model_dir} is empty")
    return model_dir


@contextlib.contextmanager
def _builtin_server(model_dir: Path, during: str = "the job") -> Iterator[ServedModel]:
    from container.sidecar import ModelLoadError, ModelServerError, start_model_server

    source = model_source(model_dir)
    log.info("Starting the built-in model server on %s", source)
    started = time.perf_counter()
    try:
        server = start_model_server(source)
    except ModelServerError as error:
        raise ModelUnavailable(f"model folder unloadable: {error}") from error
    try:
        try:
            server.wait_healthy(timeout=HEALTHY_WITHIN_SECONDS)
        except ModelLoadError as error:
            raise ModelUnavailable(f"model folder unloadable: {error}") from error
        except ModelServerError as error:  # its message has the exit code and the log's last lines
            raise ModelUnavailable(f"the built-in model server did not start: {error}") from error
        log.info("Model server ready at %s after %.1f seconds", server.url, time.perf_counter() - started)
        try:
            yield ServedModel.from_info(server.url, server.info(), server)
        except ModelTransportError as error:  # read the log before stop() removes it
            raise _server_failure(server, error, during) from error
        if not server.is_alive():
            raise _server_failure(server, None, during)
    finally:
        server.stop()
        log.info("Stopped the built-in model server")


@contextlib.contextmanager
def _model_container(image: str, model_dir: Path, setting: str = "predictor.image_uri") -> Iterator[str]:
    """Run ``image`` with ``serve`` like SageMaker hosting does, the model mounted read-only; ``setting``
    names where the image came from in messages."""
    import docker.errors

    try:
        client = connect_engine(setting)
    except EngineUnavailable as error:
        raise ModelUnavailable(str(error)) from error
    volumes = {}
    if model_dir.exists():
        volumes[str(model_dir.resolve())] = {"bind": "/opt/ml/model", "mode": "ro"}
    port = _free_port()
    log.info("Starting model image %s (model %s) on port %d", image, model_dir if volumes else "none", port)
    try:
        container = client.containers.run(image, command=["serve"], detach=True, volumes=volumes,
                                          ports={f"{MODEL_PORT}/tcp": ("127.0.0.1", port)},
                                          labels={"lucent.role": "model"})
    except docker.errors.ImageNotFound as error:
        raise ModelUnavailable(f"{setting}: image {image!r} not found: {error.explanation}") from error
    except docker.errors.APIError as error:
        raise ModelUnavailable(f"{setting}: could not start {image!r}: {error.explanation}") from error
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_container(container, url, setting)
        yield url
    finally:
        if discard_container(container, "model"):
            log.info("Removed the model container %s", container.short_id)


def _wait_for_container(container, url: str, setting: str = "predictor.image_uri") -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_SECONDS
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=20).decode("utf-8", "replace")
            code = container.attrs.get("State", {}).get("ExitCode")
            raise ModelUnavailable(f"{setting}: the model container exited (code {code}) before it "
                                   f"answered /ping. Its last lines:\n{logs}")
        try:
            wait_until_healthy(url, timeout=2, interval=0.2)
            log.info("Model container %s is healthy at %s", container.short_id, url)
            return
        except ModelTransportError:
            if time.monotonic() > deadline:
                raise ModelUnavailable(f"{setting}: the model container did not answer /ping within "
                                       f"{HEALTHY_WITHIN_SECONDS} s") from None


def _server_failure(server: ModelServer, error: ModelTransportError | None, during: str = "the job") -> DependencyError:
    """Why the job (``during``) lost its built-in model server: how the server exited (if it did), what
    the client saw, and the server's last log lines."""
    status = server.exit_status()
    if status is None:
        what = f"{error}"  # the server runs, but a request failed (a worker crashed or hung)
    else:
        how = f"was killed by signal {-status} ({_signal_name(-status)})" if status < 0 else \
            f"exited with code {status}"
        what = f"the built-in model server {how} during {during}" + (f" ({error})" if error else "")
    tail = server.log_tail()
    return DependencyError(f"{what}. The model server's last log lines:\n{tail}" if tail else what)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
