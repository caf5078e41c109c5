"""The model container behind the endpoint, and the records going in and out of it.

* :class:`ModelContainer`: forwards an invocation to the container's ``POST /invocations`` as it came
  (body, content type, accept, custom attributes) and returns its answer as it went.
* :func:`build_score`: the explainer's ``Score`` (feature rows -> score matrix) over the same container,
  from ``InferenceConfig``, through ``analyzer.predict``'s encoder, parser and batching client.
* :func:`parse_records` (request records and SHAP baselines -> feature rows) and
  :func:`parse_outputs` (a model answer -> one JSON value per record, what ``EnableExplanations`` and
  ``LabelIndex``/``LabelAttribute`` read).
"""

from __future__ import annotations

import ast
import csv
import http.client
import io
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jmespath
import numpy as np

from analyzer.config.model import Predictor
from analyzer.errors import DependencyError, UserError
from analyzer.media import CSV, JSON, JSON_LINES, NPY, TABULAR_TYPES, media_type
from analyzer.predict import ModelClient, RetryPolicy
from analyzer.predict.client import (
    MODEL_TIMEOUT_VARIABLE,
    AnswerLate,
    CannotConnect,
    ConnectionBroken,
    Reply,
    read_by_deadline,
)
from analyzer.predict.decode import LABELS_HINT
from analyzer.redact import redact_url
from container.endpoint.config import ExplainerSettings

log = logging.getLogger("lucent.endpoint")

Score = Callable[[np.ndarray], np.ndarray]
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
MIB = 1024 * 1024
# Lucent's built-in model server keeps a connection open only for clients that ask (container/sidecar/worker.py);
# a new connection per call would cost about as much as a small prediction. Other servers ignore it.
KEEP_ALIVE = {"Connection": "keep-alive"}


class RecordError(UserError):
    """Request records (or model outputs) that cannot be read as the config says."""


class ModelUnreachable(Exception):
    """No answer from the model container: refused, broken, or not within the timeout.

    ``timed_out`` tells the two apart: SageMaker words a timeout its own way."""

    def __init__(self, message: str, *, timed_out: bool = False, connected: bool = True):
        super().__init__(message)
        self.timed_out = timed_out
        self.connected = connected  # False: no connection could be made at all


@dataclass(frozen=True)
class ModelAnswer:
    status: int
    body: bytes
    content_type: str
    custom_attributes: str | None
    retry_after: str | None = None  # the container's Retry-After header (with a 429 or 503)


class ModelContainer:
    """The container's ``/ping`` and ``/invocations``; thread-safe, keep-alive connections.

    An invocation is two steps, :meth:`send` and :meth:`PendingAnswer.answer`, so that the caller can do
    other work while the container answers (the endpoint explains the request meanwhile, in the same
    thread: no hand-off between threads on the way). ``http.client`` connections kept here rather than
    urllib3's pool: a request sent now and its answer read later is what that takes.
    """

    def __init__(self, url: str, timeout: float, max_connections: int = 64):
        self.url = url.rstrip("/")
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/")
        self._max_idle = max(1, max_connections)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(self, body: bytes, content_type: str | None, accept: str | None,
             extra_headers: dict[str, str] | None = None) -> PendingAnswer:
        """Send an invocation now; its answer is read by :meth:`PendingAnswer.answer`."""
        headers = {"Content-Type": content_type or CSV, **KEEP_ALIVE, **(extra_headers or {})}
        if accept:
            headers["Accept"] = accept
        return self.post(body, headers, time.monotonic() + self.timeout)

    def post(self, body: Any, headers: dict[str, str], deadline: float) -> PendingAnswer:
        """:meth:`send` with the headers as given and its own deadline (monotonic)."""
        pending = PendingAnswer(self, f"{self._path}/invocations", body, headers, deadline)
        pending.send()
        return pending

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               extra_headers: dict[str, str] | None = None) -> ModelAnswer:
        return self.send(body, content_type, accept, extra_headers).answer()

    def ping(self, timeout: float = 2.0) -> bool:
        connection = None
        try:
            connection = self._new_connection(timeout)
            connection.sock.settimeout(timeout)
            connection.request("GET", f"{self._path}/ping", headers=KEEP_ALIVE)
            response = connection.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            if connection is not None:
                connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _idle_connection(self) -> http.client.HTTPConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=max(0.001, min(10.0, timeout)))
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait on small requests
        return connection

    def _keep(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection that has something to read: the server closed it (end of input) or
    sent what no request asked for. Either way it cannot carry a request."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class PendingAnswer:
    """An invocation sent to the container, its answer not read yet."""

    def __init__(self, container: ModelContainer, path: str, body: bytes, headers: dict[str, str], deadline: float):
        self._container = container
        self._path, self._body, self._headers = path, body, headers
        self._deadline = deadline
        self._connection: http.client.HTTPConnection | None = None

    def send(self) -> None:
        """Send on a kept-alive connection, or a new one. A kept-alive connection the container closed
        while it sat idle (idle timeout, evicted for a newer one, its worker gone) is readable: the end
        of input, or bytes no request asked for. It is checked for that before it is reused (a poll that
        does not wait), and dropped: the request goes on a new connection. Once a request has been
        written it is never sent again (:meth:`answer`): a connection that drops before the answer is
        what a worker dying mid-predict looks like, and SageMaker sends an invocation once."""
        while (connection := self._container._idle_connection()) is not None:
            if _closed_by_peer(connection):
                connection.close()
                continue
            try:
                connection.request("POST", self._path, body=self._body, headers=self._headers)
            except (OSError, http.client.HTTPException) as error:
                # Not all of it was written (the write failed): the container cannot have run it.
                connection.close()
                log.debug("model container connection dropped while sending (%s); on a new one",
                          type(error).__name__)
                break
            self._connection = connection
            return
        self._send_new()

    def answer(self) -> ModelAnswer:
        """The container's answer (its whole body), within the timeout counted from :meth:`send`."""
        connection = self._connection
        assert connection is not None and connection.sock is not None
        response = None
        try:
            connection.sock.settimeout(max(self._left(), 0.001))  # an answer already here is read at once
            response = connection.getresponse()
            body = read_by_deadline(response.read1, connection.sock, self._deadline)
            if response.length:  # the connection ended before the Content-Length's bytes came
                raise http.client.IncompleteRead(body, response.length)
            response.close()  # read to its end: closing it frees the connection (not its socket) for reuse
        except (OSError, http.client.HTTPException) as error:
            raise self._lost(connection, error) from None
        if response.will_close:
            connection.close()
        else:
            self._container._keep(connection)
        headers = response.headers
        return ModelAnswer(response.status, body, headers.get("Content-Type", ""), headers.get(CUSTOM_ATTRIBUTES),
                           headers.get("Retry-After"))

    def close(self) -> None:
        """Give up on the answer (its connection is closed, not kept)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _send_new(self) -> None:
        container = self._container
        try:
            connection = container._new_connection(self._left())
        except (OSError, http.client.HTTPException) as error:
            raise ModelUnreachable(f"cannot reach the model container at {redact_url(container.url)}: "
                                   f"{type(error).__name__}", connected=False) from None
        try:
            connection.sock.settimeout(max(self._left(), 0.001))
            connection.request("POST", self._path, body=self._body, headers=self._headers)
        except (OSError, http.client.HTTPException) as error:
            raise self._lost(connection, error) from None
        self._connection = connection

    def _left(self) -> float:
        return self._deadline - time.monotonic()

    def _lost(self, connection: http.client.HTTPConnection, error: Exception) -> ModelUnreachable:
        """The error for a request whose connection failed (closed here): its timeout, or a dropped connection."""
        connection.close()
        if isinstance(error, TimeoutError):
            return ModelUnreachable(f"no answer within {self._container.timeout:g} s", timed_out=True)
        return ModelUnreachable(f"the model container at {redact_url(self._container.url)} dropped the "
                                f"connection: {type(error).__name__}")


class ContainerClient(ModelClient):
    """The explainer's :class:`ModelClient` (batching, encoding, parsing, retries) sending its requests
    over keep-alive ``http.client`` connections to the container, as the callers' own invocations go.

    Why not urllib3's pool, as the batch job's client: an explained request's synthetic-rows call is on
    its critical path, and urllib3 spent about 2.4x the CPU of ``http.client`` per request there (27 % of
    the endpoint's CPU for a single-record explained request, against 11 % for the caller's own call)."""

    def __init__(self, url: str, *args: Any, **kwargs: Any):
        super().__init__(url, *args, **kwargs)
        self._container = ModelContainer(url, self.timeout, max_connections=self.concurrency)

    def close(self) -> None:
        super().close()
        self._container.close()

    def _exchange(self, body: Any, headers: dict[str, str], timeout: float, deadline: float) -> Reply:
        try:
            answer = self._container.post(body, {**headers, **KEEP_ALIVE}, deadline).answer()
        except ModelUnreachable as error:
            if error.timed_out:
                raise AnswerLate from None
            raise (ConnectionBroken if error.connected else CannotConnect)(str(error)) from None
        return Reply(answer.status, answer.body, answer.retry_after)


# The explainer's synthetic-rows calls: a call the container answered 429 or 503 (it refused the request before
# running it: busy, starting) is sent once more, after the answer's Retry-After (at most 2 s) or 0.2-0.3 s. Nothing
# else is sent twice: a call that crashed a worker must not crash another (a connection dropped once the request
# was written), a refusal (any other status) would come again, and an online request cannot wait.
EXPLAINER_RETRY = RetryPolicy(attempts=2, busy_only=True, backoff_seconds=0.25, max_backoff_seconds=2.0)


def build_score(url: str, settings: ExplainerSettings, feature_names: Sequence[str], response_type: str,
                timeout: float, concurrency: int = 16, *, default_io: bool = False,
                numeric: bool = False) -> tuple[Score, ModelClient]:
    """The explainer's ``Score`` over the container: rows encoded as the baseline's media type
    (``ContentTemplate`` for JSON Lines), answers read with ``ProbabilityIndex``/``ProbabilityAttribute``
    (the whole output when neither is set), at most ``MaxRecordCount`` records and ``MaxPayloadInMB`` per
    request. Returns the client too, for the caller to close.

    ``default_io``: the container is Lucent's built-in server with its default input_fn/output_fn, which
    give the model the same array whatever the request's type and return the model's own numbers. Then
    ``numeric`` rows go as npy, and a CSV answer (read by column index) comes back as npy: the same
    numbers without formatting and parsing some 10^4 values per explained record (as the batch job's
    ``container.job.request_format`` does)."""
    inference = settings.inference
    probability = (inference.probability_index if inference.probability_index is not None
                   else inference.probability_attribute)
    content_type, accept_type = settings.baseline_mime_type, response_type
    if default_io and numeric:
        content_type = NPY
    if default_io and response_type == CSV and inference.probability_attribute is None:
        accept_type = NPY
    if (content_type, accept_type) != (settings.baseline_mime_type, response_type):
        log.info("The built-in model server uses its default handlers: the explainer sends %s and reads %s "
                 "(the same numbers, faster)", content_type, accept_type)
    predictor = Predictor(content_type=content_type, accept_type=accept_type,
                          content_template=inference.content_template, probability=probability)
    options: dict[str, Any] = {"max_payload_bytes": inference.max_payload_mb * MIB, "timeout": timeout,
                               "concurrency": concurrency, "retry": EXPLAINER_RETRY}
    if inference.max_record_count is not None:
        options["max_records_per_request"] = inference.max_record_count
    # spread=False: concurrent requests' explanations already run as calls side by side, one per model server
    # worker (app._SharedCalls); cutting each call into more requests only added HTTP round trips (39 % more
    # explained records/s without them, 8 clients sending 10 records per request).
    # online=True: a call the model refuses fails the request's explanation at once (no halving search for
    # the record, which online only costs time), and changes nothing for later calls: after a request the
    # model refused (an inf), every later request's synthetic rows still go in one call.
    client = ContainerClient(url, predictor, list(feature_names), spread=False, online=True, **options)

    def score(rows: np.ndarray) -> np.ndarray:
        try:
            return client.predict(rows).scores
        except (UserError, DependencyError) as error:  # worded for the batch job's settings
            error.args = (endpoint_wording(str(error), inference),)
            raise

    return score, client


def endpoint_wording(message: str, inference: Any) -> str:
    """``message`` from ``analyzer.predict`` (which names the batch job's settings) with the endpoint's:
    ``InferenceConfig`` fields for ``predictor.*``, ``--model-timeout`` for the job's timeout variable."""
    probability = ("InferenceConfig.ProbabilityAttribute" if inference.probability_attribute is not None
                   else "InferenceConfig.ProbabilityIndex")
    label = "InferenceConfig.LabelAttribute" if inference.label_attribute is not None else "InferenceConfig.LabelIndex"
    for old, new in ((LABELS_HINT, "; the explainer needs a score: if the model answers labels beside scores, set "
                                   "InferenceConfig.ProbabilityIndex (CSV) or ProbabilityAttribute (JSON) to the score"),
                     (f"Set {MODEL_TIMEOUT_VARIABLE} to wait longer", "Start the endpoint with a larger --model-timeout "
                                                                      "to wait longer"),
                     ("predictor.probability", probability), ("predictor.label", label)):
        message = message.replace(old, new)
    return message


def response_type_for(answer: ModelAnswer) -> str:
    """The media type the explainer reads the container's answers in (its Content-Type)."""
    kind = media_type(answer.content_type) or CSV
    if kind not in TABULAR_TYPES:
        raise UserError(f"the model container answered in {answer.content_type!r}; the explainer reads "
                        f"{', '.join(TABULAR_TYPES)}")
    return kind


def parse_records(body: bytes | str, content_type: str, *, features_attribute: str | None = None,
                  feature_types: Sequence[str] | None = None, what: str = "the request") -> np.ndarray:
    """Feature rows of a CSV or JSON Lines body: float when every value is a number, else object
    (text and categorical values kept as strings). ``feature_types`` keeps non-numerical columns as
    strings even when they look like numbers.

    ``RecordError`` for anything the body's own content decides (a record's request is then a
    ValidationError, never an internal error): bad JSON, a line nested more than 64 levels deep (a record
    needs two or three; Python's parser would hit its recursion limit, and so would whatever walks the
    document after it), a number with more digits than Python reads, a CSV field over the csv module's
    size limit."""
    max_nesting = 64

    def nested_deeper(document: Any) -> bool:
        """Arrays or objects nested more than ``max_nesting`` levels deep (walked without recursion)."""
        stack = [(document, 1)]
        while stack:
            value, depth = stack.pop()
            if isinstance(value, list | dict):
                if depth > max_nesting:
                    return True
                stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value)
                             if isinstance(child, list | dict))
        return False

    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    kind = media_type(content_type)
    if kind == CSV:
        reader = csv.reader(io.StringIO(text))
        try:
            rows = [row for row in reader if row]
        except csv.Error as error:  # a field over csv.field_size_limit() (128 KiB), ...
            raise RecordError(f"{what}: CSV line {reader.line_num} cannot be read: {error}") from None
    elif kind == JSON_LINES:
        locator = jmespath.compile(features_attribute) if features_attribute else None
        rows = []
        # Split on "\n" only (a "\r" before it is JSON whitespace): str.splitlines would also split inside a
        # string holding U+2028 or U+0085, which JSON allows unescaped.
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            too_deep = (f"{what}: line {number} is nested too deeply (more than {max_nesting} levels of "
                        "arrays and objects); a record is a list of feature values, or an object holding one")
            try:
                document = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{what}: line {number} is not JSON: {error}") from None
            except RecursionError:
                raise RecordError(too_deep) from None
            except ValueError as error:  # int_max_str_digits: "Exceeds the limit (4300 digits) for integer ..."
                raise RecordError(f"{what}: line {number} has a number with too many digits to read ({error})") from None
            # Only a line with that many brackets can be that deep: counting them is cheap, walking is not.
            if line.count("[") + line.count("{") > max_nesting and nested_deeper(document):
                raise RecordError(too_deep)
            values = locator.search(document) if locator is not None else document
            if values is None and isinstance(document, list):  # a bare feature list needs no attribute
                values = document
            if not isinstance(values, list):
                where = f"FeaturesAttribute {features_attribute!r}" if locator else "the line (no FeaturesAttribute)"
                raise RecordError(f"{what}: line {number}: {where} gives no list of features")
            rows.append(values)
    else:
        raise RecordError(f"{what}: content type {content_type!r} cannot be explained; use {CSV} or {JSON_LINES}")
    if not rows:
        raise RecordError(f"{what} has no records")
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise RecordError(f"{what}: record {number} has {len(row)} features, record 1 has {width}")
    if feature_types is not None and len(feature_types) != width:
        raise RecordError(f"{what}: records have {width} features but FeatureTypes lists {len(feature_types)}")
    numeric = [feature_types is None or feature_types[j] == "numerical" for j in range(width)]
    converted = [[_number(value) if numeric[j] else _text(value) for j, value in enumerate(row)] for row in rows]
    if all(isinstance(value, float) for row in converted for value in row):
        return np.array(converted, dtype=np.float64).reshape(len(rows), width)
    matrix = np.empty((len(rows), width), dtype=object)
    matrix[:] = converted
    return matrix


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value)


def parse_outputs(body: bytes, content_type: str, n_records: int) -> list[Any]:
    """One JSON value per record of a model answer (spec 2.4): a CSV line becomes the list of its
    values (numbers as numbers), a JSON Lines line its document; ``RecordError`` when the count
    differs from ``n_records``."""
    kind = media_type(content_type) or CSV
    text = body.decode("utf-8", errors="replace")
    if kind == CSV:
        lines = [row for row in csv.reader(io.StringIO(text)) if row]
        if len(lines) == 1 and n_records > 1 and len(lines[0]) == n_records:  # "0.6,0.3" for two records
            outputs: list[Any] = [[_csv_value(cell)] for cell in lines[0]]
        else:
            outputs = [[_csv_value(cell) for cell in row] for row in lines]
    elif kind == JSON_LINES:
        try:
            outputs = [json.loads(line) for line in text.split("\n") if line.strip()]
        except json.JSONDecodeError as error:
            raise RecordError(f"the model's JSON Lines answer is not JSON: {error}") from None
        except (RecursionError, ValueError) as error:  # nested too deeply; a number of thousands of digits
            raise RecordError(f"the model's JSON Lines answer cannot be read: {type(error).__name__}") from None
    elif kind == JSON:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(f"the model's JSON answer is not JSON: {error}") from None
        outputs = document if isinstance(document, list) and len(document) == n_records else [document]
    else:
        raise RecordError(f"the model answered in {content_type!r}, which the explainer cannot read")
    if len(outputs) != n_records:
        raise RecordError(f"the model returned {len(outputs)} record(s) for the {n_records} record(s) of the request")
    return outputs


def _csv_value(cell: str) -> Any:
    """A CSV cell as JSON sees it: a number, a list written as text (Autopilot's "[0.1, 0.9]"), or a string."""
    try:
        return json.loads(cell) if cell.strip()[:1] not in ("", "'") else cell
    except json.JSONDecodeError:
        pass
    if cell.strip().startswith("["):
        try:
            return ast.literal_eval(cell.strip())
        except (ValueError, SyntaxError):
            pass
    return cell


def label_headers_from_output(output: Any, label_index: int | None, label_attribute: str | None) -> list[str] | None:
    """The label headers ``LabelIndex``/``LabelAttribute`` locate in one record's parsed output."""
    if label_index is not None:
        found = output[label_index] if isinstance(output, list) and label_index < len(output) else None
    elif label_attribute is not None:
        found = jmespath.search(label_attribute, output)
    else:
        return None
    if found is None:
        return None
    return [str(value) for value in found] if isinstance(found, list) else [str(found)]
