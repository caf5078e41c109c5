"""The endpoint's routes, independent of the HTTP server that feeds them.

* ``POST /endpoints/{EndpointName}/invocations``: SageMaker runtime ``InvokeEndpoint``, so boto3's
  ``sagemaker-runtime`` client and the SDK's ``Predictor`` work unchanged; ``POST /invocations`` is the
  same call under the container contract's path.
* ``GET /ping``: 200 while the model container answers its own ``/ping``.
* ``GET /metrics``: Prometheus text format.

Errors take the runtime API's shapes (botocore's rest-json parser reads the code from the
``x-amzn-ErrorType`` header and ``message`` from the JSON body, and the modelled members of the
error's shape from the body), so boto3 raises ``client.exceptions.ModelError`` (424, with
``OriginalStatusCode`` and ``OriginalMessage``) and ``ValidationError`` (400) as it does against
SageMaker. Model errors use SageMaker's own wording (``Received server error (500) from primary with
message "..."``; a timeout is status 0).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import jmespath
import jmespath.exceptions
import numpy as np

from analyzer.errors import UserError, jmespath_error_text
from analyzer.explain.kernel_shap import GROUP_ROWS
from analyzer.media import JSON
from analyzer.predict import ModelTransportError
from analyzer.redact import redact
from container.endpoint.auth import AuthenticationError, SigV4Verifier
from container.endpoint.config import ENDPOINT_NAME_PATTERN, ExplainerSettings
from container.endpoint.scoring import (
    CUSTOM_ATTRIBUTES,
    TARGET_MODEL,
    ModelAnswer,
    ModelContainer,
    ModelUnreachable,
    PendingAnswer,
    RecordError,
    label_headers_from_output,
    parse_outputs,
    parse_records,
)
from container.sidecar.limits import MIB

log = logging.getLogger("lucent.endpoint")

INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
ENABLE_EXPLANATIONS = "X-Amzn-SageMaker-Enable-Explanations"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
REQUEST_ID = "x-amzn-RequestId"
ERROR_TYPE = "x-amzn-ErrorType"
CONTAINER_NAME = "primary"  # what SageMaker calls a single-container endpoint's container in its messages
_MESSAGE_EXCERPT = 1024
_INVOCATIONS = re.compile(r"/endpoints/(?P<name>[^/?]*)/invocations")
_HISTOGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Request:
    method: str
    target: str  # path and query, as received
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of the header ``name`` (any case), or None."""
        index = self.__dict__.get("_index")
        if index is None:  # built once: a request's headers are looked up a dozen times
            index = self.__dict__["_index"] = {}
            for key, value in self.headers:
                index.setdefault(key.lower(), value)
        return index.get(name.lower())


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """An error answered in the runtime API's shape: ``code`` is the error shape's name."""

    def __init__(self, status: int, code: str, message: str, **members: Any):
        super().__init__(message)
        self.status, self.code, self.members = status, code, members

    def response(self) -> Response:
        body = json.dumps({"message": str(self), **self.members}).encode()
        return Response(self.status, body, "application/json", {ERROR_TYPE: self.code})


def model_error(status: int, message: str) -> ApiError:
    """SageMaker's ModelError for a container that answered ``status`` (0: no answer) with ``message``
    (redacted: a model's exception text may quote a connection string or a key)."""
    message = redact(message)
    kind = "an unusable answer" if 200 <= status < 300 else "client error" if 400 <= status < 500 else "server error"
    return ApiError(424, "ModelError", f'Received {kind} ({status}) from {CONTAINER_NAME} with message '
                    f'"{message}". See the endpoint\'s log for more information.',
                    OriginalStatusCode=status, OriginalMessage=message)


def validation_error(message: str, status: int = 400) -> ApiError:
    return ApiError(status, "ValidationError", message)


FAILURE_LOG_SECONDS = 10.0  # failed invocations: the first one logged, then one summary line per this at most


class FailureLog:
    """WARNING lines for failed invocations (ModelError, 5xx) without a flood: during a model outage every
    request fails, and a line each (7,577 in 20 s) buried everything else. The first failure is logged;
    the next ones are counted, and logged when ``FAILURE_LOG_SECONDS`` have passed since the last line,
    with the count of those not logged meanwhile (as capture drops are summarised). :meth:`flush` logs the
    count still held (the endpoint calls it when it stops). Every failure is counted in /metrics all the same."""

    def __init__(self, interval: float = FAILURE_LOG_SECONDS, clock: Any = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._held = 0  # failures not logged since the last line

    def failed(self, message: str, *args: Any) -> None:
        now = self._clock()
        with self._lock:
            if now - self._last < self._interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        if held:
            log.warning(message + " (and %d more failed invocation(s) since the last such line, not logged)",
                        *args, held)
        else:
            log.warning(message, *args)

    def flush(self) -> None:
        with self._lock:
            held, self._held = self._held, 0
        if held:
            log.warning("%d more failed invocation(s) since the last such line (counted in /metrics, "
                        "lucent_endpoint_errors_total)", held)


class Metrics:
    """Counters and one latency histogram, rendered in the Prometheus text format (version 0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.explained_records = 0
        self._bucket_counts = [0] * (len(_HISTOGRAM_BUCKETS) + 1)
        self._latency_sum = 0.0

    def observe(self, route: str, status: int, seconds: float | None, error: str | None, explained: int) -> None:
        """Count one answer; ``seconds`` None for a request refused before it was read (not in the
        latency histogram, which is the invocations' own)."""
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
            self.explained_records += explained
            if route == "invocations" and seconds is not None:
                index = next((i for i, bound in enumerate(_HISTOGRAM_BUCKETS) if seconds <= bound),
                             len(_HISTOGRAM_BUCKETS))
                self._bucket_counts[index] += 1
                self._latency_sum += seconds

    def render(self, capture: Any | None) -> str:
        with self._lock:
            lines = ["# HELP lucent_endpoint_requests_total Requests answered, by route and HTTP status.",
                     "# TYPE lucent_endpoint_requests_total counter"]
            lines += [f'lucent_endpoint_requests_total{{route="{route}",code="{status}"}} {count}'
                      for (route, status), count in sorted(self.requests.items())]
            lines += ["# HELP lucent_endpoint_errors_total Invocations that failed, by runtime API error.",
                      "# TYPE lucent_endpoint_errors_total counter"]
            lines += [f'lucent_endpoint_errors_total{{type="{kind}"}} {count}' for kind, count in sorted(self.errors.items())]
            lines += ["# HELP lucent_endpoint_invocation_seconds Invocation latency, model and explanations included.",
                      "# TYPE lucent_endpoint_invocation_seconds histogram"]
            cumulative = 0
            for bound, count in zip((*_HISTOGRAM_BUCKETS, float("inf")), self._bucket_counts, strict=True):
                cumulative += count
                label = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'lucent_endpoint_invocation_seconds_bucket{{le="{label}"}} {cumulative}')
            lines += [f"lucent_endpoint_invocation_seconds_sum {self._latency_sum:.6f}",
                      f"lucent_endpoint_invocation_seconds_count {cumulative}",
                      "# HELP lucent_endpoint_explained_records_total Records returned with explanations.",
                      "# TYPE lucent_endpoint_explained_records_total counter",
                      f"lucent_endpoint_explained_records_total {self.explained_records}"]
        if capture is not None:
            lines += ["# HELP lucent_endpoint_captured_records_total Invocations written to capture files.",
                      "# TYPE lucent_endpoint_captured_records_total counter",
                      f"lucent_endpoint_captured_records_total {capture.captured}",
                      "# HELP lucent_endpoint_capture_dropped_records_total Sampled invocations not captured, "
                      "by reason (queue full, disk full, write error).",
                      "# TYPE lucent_endpoint_capture_dropped_records_total counter"]
            lines += [f'lucent_endpoint_capture_dropped_records_total{{reason="{reason}"}} {count}'
                      for reason, count in sorted(capture.dropped_by_reason.items())]
            lines += ["# HELP lucent_endpoint_capture_sampled_out_total Invocations not sampled for capture.",
                      "# TYPE lucent_endpoint_capture_sampled_out_total counter",
                      f"lucent_endpoint_capture_sampled_out_total {capture.sampled_out}",
                      "# TYPE lucent_endpoint_capture_queued_records gauge",
                      f"lucent_endpoint_capture_queued_records {capture.queued}"]
        return "\n".join(lines) + "\n"


@dataclass
class StartedExplanation:
    """Explanations of every record of a request, running while the model answers the request itself."""

    records: Any  # the request's feature rows
    future: Future


@dataclass(eq=False)  # compared by identity (in the queue)
class _Share:
    """One request's records waiting for (or taken into) a shared model call."""

    records: Any
    entries: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)  # set when done, or when a slot is free


class _SharedCalls:
    """Explanations of requests in flight at the same time share model calls (micro-batching).

    Why: every model call has a fixed cost (two HTTP hops, the model server's request handling, thread
    wake-ups) of the order of the model's own time for one record's 2,000-odd synthetic rows, so under
    concurrent load one call for several records is most of the gain. Nothing waits for company: a
    request that finds a free slot (at most ``slots`` calls run at once) calls the model at once with
    its own records and those of every request queued meanwhile; the others wait for a slot, so a
    request alone in flight is never delayed. The entries are those of explaining each request alone:
    each record's synthetic rows and solve are its own (scores of a row do not depend on the rows beside
    it), as for a multi-record request. A shared call that fails is repeated request by request, so
    that each gets its own answer (one request's unusable records must not fail another's), except when
    the model gave no answer at all, which no retry would change.

    Each waiting request sleeps on its own event: a finished call wakes its own requests and the first
    one queued (for the freed slot), not every request in flight (``notify_all`` woke them all to go
    back to sleep: 9 % of the endpoint's time under 8 clients).
    """

    def __init__(self, explain: Any, slots: int, max_records: int):
        self._explain = explain  # records -> entries (the fitted explainer's explain)
        self._slots = max(1, slots)
        self._max_records = max(1, max_records)
        self._queue: list[_Share] = []
        self._running = 0
        self._lock = threading.Lock()

    def explain(self, records: Any) -> list[Any]:
        share = _Share(records)
        with self._lock:
            self._queue.append(share)
        while True:
            with self._lock:
                if share.done:
                    return self._result(share)
                if self._running < self._slots and self._queue and self._queue[0] is share:
                    batch = [self._queue.pop(0)]
                    count = len(share.records)
                    while self._queue and count + len(self._queue[0].records) <= self._max_records:
                        batch.append(self._queue.pop(0))
                        count += len(batch[-1].records)
                    self._running += 1
                    if self._queue and self._running < self._slots:  # another slot is free for the next one
                        self._queue[0].wake.set()
                    break
                share.wake.clear()
            share.wake.wait()
        try:
            self._run(batch)
        finally:
            with self._lock:
                self._running -= 1
                for item in batch:
                    item.done = True
                    item.wake.set()
                if self._queue:  # the slot is free: the first request queued takes it
                    self._queue[0].wake.set()
        return self._result(share)

    def _run(self, batch: list[_Share]) -> None:
        if len(batch) > 1:
            try:
                entries = self._explain(np.concatenate([item.records for item in batch]))
            except ModelTransportError as error:  # no answer: the same for each request alone
                for item in batch:
                    item.error = error
                return
            except Exception:  # noqa: BLE001 -- each request gets its own outcome below
                pass
            else:
                start = 0
                for item in batch:
                    item.entries = entries[start:start + len(item.records)]
                    start += len(item.records)
                return
        for item in batch:
            try:
                item.entries = self._explain(item.records)
            except Exception as error:  # noqa: BLE001 -- handed to the request's own thread
                item.error = error

    @staticmethod
    def _result(share: _Share) -> list[Any]:
        if share.error is not None:
            raise share.error
        assert share.entries is not None
        return share.entries


def shared_call_records(settings: ExplainerSettings, rows_per_record: int, n_features: int) -> int:
    """Records one shared call takes at most: its synthetic rows in one model request where they fit
    (``MaxRecordCount``, and ``MaxPayloadInMB`` for rows sent as npy, 8 bytes a value), within
    ``GROUP_ROWS``. A call the client had to cut would send its requests through a thread hand-off,
    while the calls side by side already keep the model server's workers busy."""
    inference = settings.inference
    rows = min(GROUP_ROWS, inference.max_payload_mb * MIB // (8 * max(1, n_features) + 16))  # +16: slack
    if inference.max_record_count is not None:
        rows = min(rows, inference.max_record_count)
    return max(1, rows // rows_per_record)


class Explanations:
    """Online explanations for one endpoint: the fitted explainer plus what the response needs.

    ``shared_calls``: model calls for synthetic rows in flight at once, each shared by the requests that
    queued for it (:class:`_SharedCalls`); default one per core, 0 for no sharing."""

    def __init__(self, settings: ExplainerSettings, explainer: Any, shared_calls: int | None = None):
        self.settings = settings
        self.explainer = explainer
        self.feature_headers = settings.inference.feature_headers
        # One shared call per core keeps a model server with a worker per core busy.
        tabular = getattr(explainer, "tabular", None)
        self._shared: _SharedCalls | None = None
        if tabular is not None and shared_calls != 0:
            self._shared = _SharedCalls(explainer.explain, shared_calls or os.cpu_count() or 1,
                                        shared_call_records(settings, tabular.rows_per_record, tabular.baseline.shape[1]))

    def start(self, body: bytes, content_type: str, header_expression: str | None) -> StartedExplanation | None:
        """Explain the request's records now, before the model's answer is read, when that answer cannot
        switch them off (no ``EnableExplanations`` expression, or `` `true` ``): the caller has sent its
        own model call first, so that the synthetic rows' call runs beside it. None otherwise, or when the
        body cannot be read (:meth:`respond` then reports it, after the model's answer, as it always has).
        The outcome (entries or the error) waits in the returned future for :meth:`respond`: a failing
        model call for the request itself still wins over it."""
        expression = header_expression if header_expression is not None else self.settings.enable_explanations
        if expression is not None and expression.strip() != "`true`":
            return None
        try:
            records = self._records(body, content_type)
        except ApiError:
            return None
        future: Future = Future()
        try:
            future.set_result(self._explain(records))
        except ApiError as error:
            future.set_exception(error)
        return StartedExplanation(records, future)

    def _records(self, body: bytes, content_type: str) -> Any:
        inference = self.settings.inference
        try:
            return parse_records(body, content_type, features_attribute=inference.features_attribute,
                                 feature_types=inference.feature_types)
        except (RecordError, UnicodeDecodeError) as error:
            raise validation_error(f"the request body cannot be explained: {error}") from None

    def _explain(self, records: Any) -> list[Any]:
        shared = self._shared
        try:
            if shared is not None and getattr(records, "dtype", None) == np.float64 and records.ndim == 2:
                return list(shared.explain(records))
            return list(self.explainer.explain(records))
        except ModelTransportError as error:
            # a container that kept answering 503/429 is named by that status, as the caller's own call would be
            raise model_error(error.status, f"the model container gave no answer for the synthetic records: {error}") from None
        except ValueError as error:  # records that do not fit the fitted explainer (width, text cells)
            raise validation_error(f"the request's records cannot be explained: {error}") from None
        except UserError as error:  # the container refused synthetic records, or answered unusably
            raise model_error(200, f"explaining the request failed: {error}") from None

    def respond(self, body: bytes, content_type: str, answer_body: bytes, answer_type: str,
                header_expression: str | None, started: StartedExplanation | None = None) -> tuple[bytes, int]:
        """The spec section 5 document for one invocation, and the number of records explained.
        ``started``: what :meth:`start` returned for this request (the same document, sooner)."""
        from analyzer.explain.online import enable_explanations, response_document

        inference = self.settings.inference
        records = started.records if started is not None else self._records(body, content_type)
        try:
            outputs = parse_outputs(answer_body, answer_type, len(records))
        except RecordError as error:
            raise model_error(200, str(error)) from None
        expression = header_expression if header_expression is not None else self.settings.enable_explanations
        if expression is None:
            enabled = [True] * len(records)
        else:
            try:
                enabled = enable_explanations(expression, outputs)
            except ValueError as error:  # its message names the expression already
                raise validation_error(str(error)) from None
        chosen = [index for index, on in enumerate(enabled) if on]
        explained: list[Any] = [None] * len(records)
        if chosen:
            # started: every record was chosen (start() only runs when nothing can switch one off)
            entries = started.future.result() if started is not None else self._explain(records[chosen])
            for index, entry in zip(chosen, entries, strict=True):
                explained[index] = entry
        label_headers = list(inference.label_headers) if inference.label_headers is not None else None
        if label_headers is None and outputs:
            label_headers = label_headers_from_output(outputs[0], inference.label_index, inference.label_attribute)
        document = response_document(answer_body, answer_type, explained, self.feature_headers, label_headers)
        return json.dumps(document).encode(), len(chosen)


class EndpointApp:
    """Routes requests to the model container, the explainer and the capture writer."""

    def __init__(self, endpoint_name: str, variant: str, model: ModelContainer, *,
                 explanations: Explanations | None = None, capture: Any | None = None,
                 verifier: SigV4Verifier | None = None):
        self.endpoint_name = endpoint_name
        self.variant = variant
        self.model = model
        self.explanations = explanations
        self.capture = capture
        self.verifier = verifier
        self.metrics = Metrics()
        self.failures = FailureLog()
        self._in_flight = 0  # invocations being answered
        self._in_flight_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        outcome: dict[str, Any] = {"route": "other", "error": None, "explained": 0}
        response = self._route(request, outcome)
        response.headers.setdefault(REQUEST_ID, request_id())
        self.metrics.observe(outcome["route"], response.status, time.perf_counter() - started, outcome["error"],
                             outcome["explained"])
        return response

    def refused(self, error: ApiError, method: str, target: str) -> Response:
        """The answer to a request the HTTP server refuses before it reaches :meth:`handle` (body too
        large or badly framed, headers too large or too slow, too many connections): the same shape and
        request id as the app's own errors, and counted in the metrics."""
        response = error.response()
        response.headers.setdefault(REQUEST_ID, request_id())
        self.metrics.observe(_route_name(method, target.split("?", 1)[0]), error.status, None, error.code, 0)
        return response

    def _route(self, request: Request, outcome: dict[str, Any]) -> Response:
        try:
            path = request.path
            if path == "/ping" and request.method in ("GET", "HEAD"):
                outcome["route"] = "ping"  # unauthenticated: health checks carry no data
                return Response(200, b"") if self.model.ping() else Response(503, b"model container not healthy\n")
            self._authenticate(request)
            if path == "/metrics" and request.method == "GET":
                outcome["route"] = "metrics"
                text = self.metrics.render(self.capture)
                return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            match = _INVOCATIONS.fullmatch(path)
            if not match and path != "/invocations":
                raise validation_error(f"no route {request.method} {path[:200]}", 404)
            outcome["route"] = "invocations"
            if request.method != "POST":
                raise validation_error(f"{request.method} is not supported here: invocations are POST", 405)
            if match:
                self._check_endpoint_name(match["name"])
            response, outcome["explained"] = self._invoke(request)
            return response
        except ApiError as error:
            outcome["error"] = error.code
            if error.status >= 500 or error.code == "ModelError":
                self.failures.failed("%s %s: %s %s", request.method, outcome["route"], error.code, error)
            return error.response()
        except Exception:  # a bug: answered as the API's InternalFailure, logged with its traceback
            outcome["error"] = "InternalFailure"
            log.exception("internal error on %s %s", request.method, outcome["route"])
            return ApiError(500, "InternalFailure", "internal error; see the endpoint's log").response()

    def _authenticate(self, request: Request) -> None:
        if self.verifier is None:
            return
        try:
            self.verifier.verify(request.method, request.target, request.headers, request.body)
        except AuthenticationError as error:
            log.info("refused an unauthenticated %s request (%s): %s", request.method, error.code, error)
            raise ApiError(403, error.code, error.message) from None

    def _check_endpoint_name(self, name: str) -> None:
        from urllib.parse import unquote

        name = unquote(name)
        if name != self.endpoint_name:
            shown = name if len(name) <= 63 and re.fullmatch(ENDPOINT_NAME_PATTERN, name) else "(invalid name)"
            raise validation_error(f"Endpoint {shown} not found: this server is endpoint {self.endpoint_name}")

    def _invoke(self, request: Request) -> tuple[Response, int]:
        inference_id = request.header(INFERENCE_ID)
        if inference_id is not None and not (0 < len(inference_id) <= 64 and inference_id.isprintable()
                                             and not inference_id[0].isspace()):
            raise validation_error(f"{INFERENCE_ID}: must be 1 to 64 printable characters")
        expression = request.header(ENABLE_EXPLANATIONS)
        if expression is not None:
            _check_expression(expression)
        for name in ("Content-Type", "Accept"):  # forwarded to the model container
            _check_media_header(name, request.header(name))
        custom_attributes = request.header(CUSTOM_ATTRIBUTES)
        if custom_attributes is not None and len(custom_attributes) > 1024:
            raise validation_error(f"{CUSTOM_ATTRIBUTES}: must be at most 1024 characters")
        content_type = request.header("Content-Type") or "application/octet-stream"
        forwarded = {name: value for name, value in ((CUSTOM_ATTRIBUTES, custom_attributes),
                                                     (TARGET_MODEL, request.header(TARGET_MODEL)),
                                                     (INFERENCE_ID, inference_id)) if value is not None}
        inference_time = datetime.now(UTC)
        with self._in_flight_lock:
            self._in_flight += 1
            alone = self._in_flight == 1
        # The request's own model call is sent first and its answer read last: an invocation alone in flight
        # is explained meanwhile, in this thread, so that its synthetic rows' call runs beside it. With
        # others in flight, their calls keep the model server's workers and the cores busy, and the overlap
        # only adds work: the answer is read first (and explanations of concurrent requests share calls).
        try:
            pending = self._send_model(request, content_type, forwarded)
            started = None
            if self.explanations is not None and alone:
                try:
                    started = self.explanations.start(request.body, content_type, expression)
                except BaseException:
                    pending.close()  # its answer will not be read: the connection cannot be reused
                    raise
            answer = self._model_answer(pending)
            body, response_type, explained = answer.body, answer.content_type or "application/octet-stream", 0
            if self.explanations is not None:
                body, explained = self.explanations.respond(request.body, content_type, answer.body,
                                                            answer.content_type, expression, started)
                response_type = JSON
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
        if self.capture is not None:
            self.capture.submit(input_body=request.body, input_content_type=content_type, output_body=body,
                                output_content_type=response_type, inference_id=inference_id,
                                inference_time=inference_time, custom_attributes=custom_attributes)
        headers = {INVOKED_VARIANT: self.variant}
        if answer.custom_attributes is not None:
            headers[CUSTOM_ATTRIBUTES] = answer.custom_attributes
        return Response(200, body, response_type, headers), explained

    def _send_model(self, request: Request, content_type: str, forwarded: dict[str, str]) -> PendingAnswer:
        """The request as it came, sent to the container; ModelError when it cannot be sent."""
        try:
            return self.model.send(request.body, content_type, request.header("Accept"), forwarded)
        except ModelUnreachable as error:
            raise _unreachable(error) from None

    def _model_answer(self, pending: PendingAnswer) -> ModelAnswer:
        """The container's successful answer; ModelError otherwise."""
        try:
            answer = pending.answer()
        except ModelUnreachable as error:
            raise _unreachable(error) from None
        if not 200 <= answer.status < 300:
            text = answer.body[:_MESSAGE_EXCERPT].decode("utf-8", errors="replace").strip()
            raise model_error(answer.status, text)
        return answer


def _unreachable(error: ModelUnreachable) -> ApiError:
    if error.timed_out:
        return model_error(0, f"Your invocation timed out while waiting for a response from container "
                              f"{CONTAINER_NAME} ({error}).")
    return model_error(0, str(error))


def _route_name(method: str, path: str) -> str:
    """The metrics' route label of a request refused before routing."""
    if path in ("/ping", "/metrics") and method in ("GET", "HEAD"):
        return path[1:]
    return "invocations" if path == "/invocations" or _INVOCATIONS.fullmatch(path) else "other"


_MEDIA_HEADER = re.compile(r"[\x20-\x7e]{0,1024}")


def _check_media_header(name: str, value: str | None) -> None:
    """SageMaker's ``ContentType`` and ``Accept``: at most 1,024 printable ASCII characters. Refused
    here rather than forwarded: the model server would answer a mangled header with its own error."""
    if value is not None and not _MEDIA_HEADER.fullmatch(value):
        what = f"{len(value):,} characters" if len(value) > 1024 else "a character that is not printable ASCII"
        # The value itself is not echoed: it may be anything.
        raise validation_error(f"{name}: must be at most 1024 printable ASCII characters, got {what}")


@lru_cache(maxsize=256)
def _check_expression(expression: str) -> None:
    if not 0 < len(expression) <= 64:
        raise validation_error(f"{ENABLE_EXPLANATIONS}: must be 1 to 64 characters")
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as error:
        raise validation_error(f"{ENABLE_EXPLANATIONS}: {expression!r} is not a valid JMESPath expression: "
                               f"{jmespath_error_text(error)}") from None


def request_id() -> str:
    return str(uuid.uuid4())


__all__: Sequence[str] = ("ApiError", "EndpointApp", "Explanations", "Metrics", "Request", "Response",
                          "StartedExplanation", "request_id")
