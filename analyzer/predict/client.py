"""HTTP client for a model's ``POST /invocations`` (spec 5.1), batched, concurrent and fault tolerant.

``ModelClient.predict(rows)`` serialises rows window by window, cuts them into requests bounded by
record count and payload size, keeps several requests in flight on a thread pool and returns the
predictions in input order. Model failures are handled the way Clarify users expect:

* a batch the model refuses (HTTP 413, any other 4xx/5xx, or a connection dropped twice, for more than
  one record) is re-sent as two halves, down to one record per request, and later batches start at
  the smaller size (log ``Fallback to per-record prediction because of model error.``);
* connection failures, HTTP 429/503 and, for single records, 5xx answers are retried with exponential
  backoff (or after the answer's ``Retry-After``, within the backoff's cap), bounded in count and time
  (``RetryPolicy``); ``RetryPolicy(busy_only=True)`` retries 429/503 alone, the answers of a model that
  refused the request before running it (``lucent endpoint``'s explainer: nothing it sent is sent again);
* an answer asked as ``application/x-npy`` (Lucent's own choice for its model server, never the user's)
  that the model refuses is asked once more as CSV: npy carries numbers only, and a prediction holding
  text (predicted labels) can only come as text. The parser then says what it is (``LabelsNotScores``);
* the job waits at most ``timeout`` seconds (``LUCENT_MODEL_TIMEOUT_SECONDS``, default 10 minutes) for
  the model to answer any part of a batch, retries and smaller batches included. The limit covers the
  whole answer, body included: a model that sends its answer a byte at a time is cut off at the same
  deadline. A request that gets no answer in that time is neither retried nor split: a model that does not answer a batch would not
  answer its halves either, and waiting again is how a hung model used to take 16 minutes to fail.

Two kinds of failure, for the job's exit code: a ``UserError`` when the model answered but refused a
record (``ModelError``) or gave an answer that cannot be used (the parser's errors); a
``ModelTransportError`` (a ``DependencyError``) when no answer came: connection refused or broken,
or no answer in time.

urllib3 rather than requests or httpx: its ``PoolManager`` is a thread-safe keep-alive connection
pool with per-request timeouts and little else, and it sends ``memoryview`` bodies as they are, so a
request body is a zero-copy view of the serialised window. requests only wraps it; httpx would bring
an async stack this thread-pool client does not use.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from itertools import chain
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ReadTimeoutError

from analyzer.config.model import Predictor
from analyzer.environment import positive_number
from analyzer.errors import DependencyError, UserError
from analyzer.media import CSV, NPY
from analyzer.predict.decode import ResponseParser, excerpt
from analyzer.predict.encode import Body, EncodedRecords, RequestEncoder, Rows, SplitBody
from analyzer.predict.predictions import Predictions
from analyzer.progress import Progress
from analyzer.redact import redact_url

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker InvokeEndpoint's request limit
MAX_RECORDS_PER_REQUEST = 100_000
MODEL_TIMEOUT_VARIABLE = "LUCENT_MODEL_TIMEOUT_SECONDS"
DEFAULT_MODEL_TIMEOUT_SECONDS = 600.0  # how long the job waits for the model to answer a batch
CONNECT_TIMEOUT_SECONDS = 30.0  # to open a connection, within the time left for the batch
_WINDOW_CELLS = 2_000_000  # rows are serialised this many values at a time (about 40 MB of text)
# A window is cut into one request per concurrent slot at least, unless requests would get smaller than
# this: a call of 20,000 rows then keeps every model worker busy instead of one.
_MIN_RECORDS_TO_SPLIT = 4_000
_BUSY_STATUSES = (429, 503)  # throttling: the same batch will do once the model has capacity
_READ_CHUNK_BYTES = 1024 * 1024  # a response body is read at most this much at a time, the deadline checked between


def model_route(endpoint_url: str, route: str) -> str:
    """The URL of ``route`` (``"ping"`` or ``"invocations"``) on the model at ``endpoint_url``.

    ``endpoint_url`` is a base: scheme, host, port and an optional path prefix
    (``http://gateway/models/a`` -> ``http://gateway/models/a/invocations``). A query string or
    fragment is dropped (config validation refuses them: the model's routes are fixed, and a query
    would put whatever it carries, such as tokens, into every log line that names the URL).
    """
    parts = urlsplit(endpoint_url)
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{route}", "", ""))


# What ``ModelClient._exchange`` raises, whichever HTTP stack carries the request:
class AnswerLate(Exception):
    """The model's answer did not arrive in full before the deadline."""


class CannotConnect(Exception):
    """No connection to the model (refused, unknown host, timed out); the message is the reason."""


class ConnectionBroken(Exception):
    """The connection broke before a whole answer came (reset, closed); the message is the reason."""


class Reply(NamedTuple):
    """What ``ModelClient._exchange`` returns: the model's whole answer."""

    status: int
    body: bytes
    retry_after: str | None = None  # the answer's Retry-After header, as sent


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (RFC 9110: a number of seconds, or an HTTP date); None
    when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if date.tzinfo is None:  # an HTTP date is GMT
            return None
        return max(0.0, date.timestamp() - time.time())  # a date past is now
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def read_by_deadline(read1: Callable[[int], bytes], sock: socket.socket | None, deadline: float) -> bytes:
    """A whole response body by ``deadline`` (monotonic), from any HTTP response's ``read1``.

    A socket timeout bounds each read, not the answer: a server that sends one byte every few seconds
    would never time out. Each read here returns what has arrived, waits at most until the deadline
    (``sock``'s timeout is set before each read), and the deadline is checked between reads. Raises
    ``TimeoutError`` when the deadline passes first (the caller closes the connection)."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the answer did not arrive in full before the deadline")
        if sock is not None:  # the next read waits no longer than the time left
            sock.settimeout(remaining)
        chunk = read1(_READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_body(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """:func:`read_by_deadline` for a urllib3 response opened with ``preload_content=False``. Raises
    ``AnswerLate`` when the deadline passes first; the connection is then closed, not reused."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    try:
        data = read_by_deadline(response.read1, sock, deadline)
    except (TimeoutError, ReadTimeoutError):
        response.close()
        raise AnswerLate from None
    except BaseException:
        response.close()
        raise
    response.release_conn()
    return data


class ModelError(UserError):
    """The model answered, but not usably: it refused a record that cannot be split further.

    ``row`` (index into the rows of the ``predict`` call) and ``reason`` are set when the model refused
    one record, so that callers that built the rows can name the record they came from.
    """

    def __init__(self, message: str, *, row: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.row = row
        self.reason = reason


class ModelTransportError(DependencyError):
    """No answer came from the model: connection refused or broken, or nothing within the timeout.

    Not the user's input's fault, so it carries no ``row`` (callers map a ``row`` to a refused record).
    ``status``: the HTTP status of the last answer when the model kept answering 429/503 (busy), else 0.
    """

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


def model_timeout_seconds() -> float:
    """How long the job waits for the model to answer a batch: ``LUCENT_MODEL_TIMEOUT_SECONDS`` when
    set, else 10 minutes."""
    return positive_number(MODEL_TIMEOUT_VARIABLE, DEFAULT_MODEL_TIMEOUT_SECONDS, float, "seconds")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one request before giving up on it."""

    attempts: int = 5  # tries per request, the first one included
    backoff_seconds: float = 0.5  # wait before the first retry; doubles with every retry
    max_backoff_seconds: float = 10.0  # and no longer than this, whatever a Retry-After says
    max_elapsed_seconds: float = 300.0  # no retry starts later than this after the first try
    # Retry only HTTP 429 and 503: the model refused the request before running it. A request that may have
    # run (a connection dropped after it was written, any other status) or could not be sent is not retried.
    busy_only: bool = False

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Wait before retry number ``retry`` (1-based), with +-20% jitter so parallel retries spread;
        ``retry_after`` (the model's ``Retry-After``, seconds) instead when given, within the same cap."""
        if retry_after is not None:
            return min(self.max_backoff_seconds, retry_after)
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (retry - 1))
        return base * random.uniform(0.8, 1.2)


@dataclass
class ClientStats:
    requests: int = 0
    records: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0  # wall time spent in predict()


@dataclass(frozen=True)
class _Batch:
    records: EncodedRecords
    start: int
    stop: int
    row0: int  # input row of records[0]

    @property
    def first_row(self) -> int:
        return self.row0 + self.start

    def __len__(self) -> int:
        return self.stop - self.start

    def halves(self) -> list[_Batch]:
        return self.pieces((len(self) + 1) // 2)

    def pieces(self, size: int) -> list[_Batch]:
        return [_Batch(self.records, start, min(start + size, self.stop), self.row0)
                for start in range(self.start, self.stop, size)]


class _Refused(Exception):
    """The model failed this batch in a way that a smaller batch may not. ``status``: the HTTP status it
    answered, 0 when the connection dropped, None when there is no HTTP (in process)."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class _Aborted(Exception):
    """Another batch failed: stop working on this one."""


class _Patience:
    """The time the model has left to answer some part of one batch; every answer renews it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.renew()

    def renew(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class ModelClient:
    """Gets predictions for feature rows from a model server speaking the SageMaker protocol.

    ``feature_names`` name the columns of the rows passed to ``predict`` (for templates). ``timeout``:
    seconds to wait for the model to answer some part of a batch (default ``model_timeout_seconds()``).
    ``spread``: cut a call's rows into at least as many requests as run at once (``concurrency``), so that
    one call keeps every worker of the model server busy; False for a caller that runs calls side by side
    itself (the endpoint's shared calls), for which the extra requests are only overhead: a call is then
    cut by ``max_records_per_request`` and ``max_payload_bytes`` alone.
    ``online``: a client serving online requests (``lucent endpoint``'s explainer), where each call must
    fare as if it were the first: a batch the model refuses fails the call at once (no halving search for
    the refused record, and later calls keep their full size), and ``close`` logs no batch-job summary.
    Use as a context manager, or call ``close()``, to release connections and threads.
    """

    def __init__(self, endpoint_url: str, predictor: Predictor, feature_names: Sequence[str], *,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES, max_records_per_request: int = MAX_RECORDS_PER_REQUEST,
                 concurrency: int | None = None, timeout: float | None = None,
                 retry: RetryPolicy | None = None, spread: bool = True, online: bool = False):
        self.url = model_route(endpoint_url, "invocations")
        self.shown_url = redact_url(self.url)  # for messages and logs: no password from the URL
        self.predictor = predictor
        self.encoder = RequestEncoder(predictor, feature_names)
        self.parser = ResponseParser(predictor, predictor.accept_type or predictor.content_type)
        self.headers = {"Content-Type": predictor.content_type or CSV, "Accept": self.parser.accept_type}
        if predictor.custom_attributes:
            self.headers["X-Amzn-SageMaker-Custom-Attributes"] = predictor.custom_attributes
        if predictor.target_model:
            self.headers["X-Amzn-SageMaker-Target-Model"] = predictor.target_model
        self.max_payload_bytes = max_payload_bytes
        self.spread = spread
        self.online = online
        self.concurrency = max(1, concurrency or 2 * (os.cpu_count() or 1))
        if predictor.max_concurrency:  # the user's cap on in-flight requests (shared out among workers by the caller)
            self.concurrency = min(self.concurrency, predictor.max_concurrency)
        self.timeout = model_timeout_seconds() if timeout is None else timeout
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self._records_cap = max(1, max_records_per_request)
        self._http = urllib3.PoolManager(num_pools=2, maxsize=self.concurrency, retries=False)
        # Requests in flight, whichever thread sends them: calls can run side by side (SHAP's groups), and
        # ``concurrency`` (predictor.max_concurrency's share) bounds them all together.
        self._in_flight = threading.BoundedSemaphore(self.concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._npy_doubted = False  # an npy answer was refused and asked again as CSV

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release threads and connections; log the request summary Clarify prints."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._http.clear()
        if self.stats.requests and not self.online:
            seconds = max(self.stats.seconds, 1e-9)
            log.info("Model endpoint delivered %.5f requests per second and a total of %d requests over %.0f "
                     "seconds", self.stats.requests / seconds, self.stats.requests, seconds)

    def predict(self, rows: Rows, progress: Progress | None = None) -> Predictions:
        """Predictions for every row (columns in ``feature_names`` order), in input order.

        ``progress``: counts the rows as their batches are answered (a step the user waits for, such as
        the post-training predictions; SHAP counts its shards instead)."""
        started = time.perf_counter()
        try:
            parts = self._predict_batches(self._batches(rows), len(rows), progress)
        finally:
            self.stats.seconds += time.perf_counter() - started
        if not parts:
            return Predictions(0, label_headers=self.parser.label_headers)
        return Predictions.concat(parts)

    def _predict_batches(self, batches: Iterator[_Batch], n_rows: int,
                         progress: Progress | None) -> list[Predictions]:
        first = next(batches, None)
        second = next(batches, None)
        if first is None:
            return []
        if second is None:
            parts = self._run(first, threading.Event())  # one request: no thread hand-off
            if progress is not None:
                progress.update(n_rows)
            return parts
        with self._lock:  # calls can come from several threads (SHAP's groups side by side)
            executor = self._executor = self._executor or ThreadPoolExecutor(
                self.concurrency, thread_name_prefix="predict", initializer=self._thread_started)
        abort = threading.Event()  # set when one batch fails: the others stop retrying and splitting
        results: dict[int, list[Predictions]] = {}
        pending: dict[Future[list[Predictions]], int] = {}

        def collect(return_when: str) -> None:
            done, _ = wait(pending, return_when=return_when)
            for future in done:
                first_row = pending.pop(future)
                results[first_row] = future.result()
                if progress is not None:
                    progress.update(sum(len(part) for part in results[first_row]))

        try:
            for batch in chain((first, second), batches):
                if len(pending) >= 2 * self.concurrency:  # bounded: serialised windows are not all kept
                    collect(FIRST_COMPLETED)
                pending[executor.submit(self._run, batch, abort)] = batch.first_row
            while pending:
                collect(ALL_COMPLETED)
        except BaseException:
            abort.set()
            for future in pending:
                future.cancel()
            raise
        return [part for first_row in sorted(results) for part in results[first_row]]

    def _batches(self, rows: Rows) -> Iterator[_Batch]:
        """Requests to send, serialising one window of rows at a time."""
        n_rows, n_columns = len(rows), max(1, len(self.encoder.feature_names))
        # npy request bodies are views of the rows, not serialised copies: no need to go window by window
        window = n_rows if self.encoder.content_type == NPY else max(1, _WINDOW_CELLS // n_columns)
        for row0 in range(0, n_rows, window):
            chunk = rows.iloc[row0:row0 + window] if hasattr(rows, "iloc") else rows[row0:row0 + window]
            records = self.encoder.encode(chunk)
            even = self._even_size(len(records))
            start = 0
            while start < len(records):
                cap = min(self._records_cap, even)
                stop = records.cut(start, cap, self.max_payload_bytes)
                if stop < min(len(records), start + min(cap, records.max_records or cap)):
                    self._log_once("payload", logging.INFO, "Prediction batch size is reduced to %d to fit max "
                                   "payload size limit.", stop - start)
                yield _Batch(records, start, stop, row0)
                start = stop

    def _even_size(self, n: int) -> int:
        """Records per request for a window of ``n``: equal parts within the record cap, and at least as
        many parts as requests run concurrently while parts keep ``_MIN_RECORDS_TO_SPLIT`` records.

        Equal parts finish together (a short last request would leave the model's other workers idle);
        enough parts keep every model worker busy on a window that fits in one request.
        """
        spread = min(self.concurrency, n // _MIN_RECORDS_TO_SPLIT) if self.spread else 1
        parts = max(-(-n // self._records_cap), spread, 1)
        return max(1, -(-n // parts))

    def _run(self, batch: _Batch, abort: threading.Event, patience: _Patience | None = None) -> list[Predictions]:
        """Predictions for one batch, re-sending it in halves if the model refuses it. ``patience`` is
        shared by the pieces of one batch: the model must answer one of them every ``timeout`` s."""
        patience = patience or _Patience(self.timeout)
        cap = self._records_cap
        if len(batch) > cap:  # cut before the model refused a smaller batch: do not try it whole
            return [part for piece in batch.pieces(cap) for part in self._run(piece, abort, patience)]
        parser = self.parser
        try:
            with self._in_flight:
                return [self._answer(batch, abort, patience, parser)]
        except _Refused as refusal:
            if (answer := self._answer_as_csv(batch, abort, patience, parser, refusal)) is not None:
                return [answer]
            if self.online and len(batch) > 1:  # the call fails; it changes nothing for later calls
                raise ModelError(f"The model at {self.shown_url} failed on {_rows(batch)}: {refusal}",
                                 reason=str(refusal)) from None
            if len(batch) == 1:
                raise ModelError(f"The model at {self.shown_url} failed on the record at row {batch.first_row}: "
                                 f"{refusal}", row=batch.first_row, reason=str(refusal)) from None
            self._log_once("fallback", logging.WARNING, "Fallback to per-record prediction because of model "
                           "error. %s for %d records (rows %d to %d); re-sending smaller batches, down to one "
                           "record per request.", refusal, len(batch), batch.first_row,
                           batch.first_row + len(batch) - 1)
            halves = batch.halves()
            with self._lock:  # later batches start at the smaller size
                if len(halves[0]) < self._records_cap:
                    self._records_cap = len(halves[0])
                    log.info("Prediction batch size is reduced to %d after a model error.", self._records_cap)
            return [part for half in halves for part in self._run(half, abort, patience)]

    def _answer(self, batch: _Batch, abort: threading.Event, patience: _Patience,
                parser: ResponseParser) -> Predictions:
        """The model's predictions for one batch, its answer asked in ``parser.accept_type`` and read by
        ``parser``: the seam between batching (splitting, ordering, concurrency, finding the refused record)
        and how a batch reaches the model. Raises ``_Refused`` when a smaller batch may fare better. Here:
        one HTTP request; ``InProcessClient`` calls the model in this process instead."""
        body = self._post(batch.records.body(batch.start, batch.stop), batch, abort, patience, parser.accept_type)
        return parser.parse(body, len(batch), batch.first_row)

    def _answer_as_csv(self, batch: _Batch, abort: threading.Event, patience: _Patience,
                       refused: ResponseParser, refusal: _Refused) -> Predictions | None:
        """The batch's predictions asked as CSV after the model refused them as npy (``refused``'s type),
        or None (the model refuses it as CSV too, or it is not an npy refusal to doubt).

        npy is Lucent's choice for its own model server, never a config value, and carries numbers only:
        the server's default output_fn refuses to write a prediction holding text (predicted labels) as
        npy, with a 500 (in process: a refusal). CSV is read by the same column indexes
        (``predictor.label`` / ``probability``), so its answer is what the npy one would have been; the
        parser then reads it, and says so if the scores are labels (``LabelsNotScores``). Asked once per
        client (a model that refuses a record refuses it in any type): when CSV is answered, later batches
        ask CSV at once. Not online: nothing is sent twice."""
        if refused.accept_type != NPY or self.online or refusal.status not in (None, 500):
            return None
        with self._lock:
            if self.parser is not refused:  # another batch found CSV answered already
                parser = self.parser
            elif self._npy_doubted:
                return None
            else:
                self._npy_doubted = True
                parser = ResponseParser(self.predictor, CSV)
        try:
            with self._in_flight:
                answer = self._answer(batch, abort, patience, parser)
        except _Refused:
            return None
        with self._lock:
            if self.parser is refused:
                self.parser = parser
                self.headers = {**self.headers, "Accept": CSV}
                log.info("The model's predictions cannot come as %s (it carries numbers only): asking for %s",
                         NPY, CSV)
        return answer

    def _thread_started(self) -> None:
        """Runs in each of the client's threads when it starts (the in-process client caps the model's
        own threads there)."""

    def _post(self, body: Body, batch: _Batch, abort: threading.Event, patience: _Patience, accept: str) -> bytes:
        """The response body of one request, asked as ``accept``; retries what retrying can fix (what
        ``self.retry`` allows), raises ``_Refused`` when a smaller batch may fare better and
        ``ModelTransportError`` when no answer came."""
        multiple = len(batch) > 1
        headers = self.headers
        if accept != headers["Accept"]:
            headers = {**headers, "Accept": accept}
        if batch.records.content_type:  # records of their own kind (coalition pictures described)
            headers = {**headers, "Content-Type": batch.records.content_type}
        if isinstance(body, SplitBody):  # sent piece by piece: urllib3 would otherwise send it chunked
            headers = {**headers, "Content-Length": str(len(body))}
        retry_deadline = time.monotonic() + self.retry.max_elapsed_seconds
        reason = ""
        for attempt in range(1, self.retry.attempts + 1):
            if abort.is_set():
                raise _Aborted
            remaining = patience.remaining()
            if remaining <= 0:
                raise self._no_answer(batch, reason)
            no_answer = split_now = busy = False
            retry_after = None
            try:
                status, data, retry_after = self._exchange(body, headers, remaining, patience.deadline)
            except AnswerLate:  # no answer (or not all of it) in time: the same as no answer
                # The whole wait is spent. Not split: a model that does not answer a batch in time would
                # not answer its halves either, and the halves would wait as long again, level by level.
                raise self._no_answer(batch, reason) from None
            except CannotConnect as error:  # refused, unknown host, connect timeout
                reason, no_answer = f"cannot connect ({error})", True
            except ConnectionBroken as error:  # connection reset or closed mid-request
                reason, no_answer = f"connection failed ({error})", True
                # Once may be a keep-alive connection the server closed; twice, this batch may be what
                # crashes the model's worker: smaller batches find the record.
                split_now = multiple and attempt > 1
            else:
                with self._lock:
                    self.stats.requests += 1
                    self.stats.records += len(batch)
                    self.stats.bytes_sent += len(body)
                if 200 <= status < 300:
                    patience.renew()
                    return data
                reason = f"HTTP {status}: {excerpt(data)}"
                if status in _BUSY_STATUSES:
                    # the same batch will do once the model has capacity; a smaller one no sooner
                    no_answer = busy = True
                elif status < 500:
                    raise _Refused(reason, status)  # a client error will not go away by itself
                else:
                    split_now = multiple
            if split_now:
                raise _Refused(reason, 0 if no_answer else status)
            wait_seconds = self.retry.delay(attempt, retry_after_seconds(retry_after) if busy else None)
            resume_at = time.monotonic() + wait_seconds
            if resume_at >= patience.deadline:
                raise self._no_answer(batch, reason)
            final = attempt == self.retry.attempts or (self.retry.busy_only and not busy)
            if final or resume_at > retry_deadline:
                if no_answer:
                    raise ModelTransportError(f"The model at {self.shown_url} gave no answer for {_rows(batch)} "
                                              f"after {attempt} attempt(s): {reason}", status if busy else 0)
                raise _Refused(f"{reason} (after {attempt} attempts)", status)
            log.debug("Retrying %s in %.1f s: %s", _rows(batch), wait_seconds, reason)
            if abort.wait(wait_seconds):
                raise _Aborted
        raise AssertionError("unreachable")

    def _exchange(self, body: Body, headers: dict[str, str], timeout: float, deadline: float) -> Reply:
        """One POST of ``body`` to the model and its whole answer (a ``Reply``), by ``deadline``: how a
        request travels, apart from what its answer means (``_post``). Raises ``AnswerLate`` when no complete
        answer came in time, ``CannotConnect`` and ``ConnectionBroken`` with the reason otherwise.
        Here urllib3's pool; the endpoint sends over keep-alive ``http.client`` connections instead
        (``container.endpoint.scoring.ContainerClient``)."""
        try:
            response = self._http.request(
                "POST", self.url, body=body, headers=headers, preload_content=False,
                timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_SECONDS, timeout), read=timeout))
            return Reply(response.status, read_body(response, deadline), response.headers.get("Retry-After"))
        except ConnectTimeoutError as error:  # includes NewConnectionError (refused, unknown host)
            raise CannotConnect(_reason(error)) from None
        except ReadTimeoutError:
            raise AnswerLate from None
        except HTTPError as error:
            raise ConnectionBroken(_reason(error)) from None

    def _no_answer(self, batch: _Batch, reason: str) -> ModelTransportError:
        last = f"; last attempt: {reason}" if reason else ""
        return ModelTransportError(
            f"The model at {self.shown_url} did not answer within {self.timeout:g} s ({_rows(batch)}{last}). "
            f"Set {MODEL_TIMEOUT_VARIABLE} to wait longer for a slow model")

    def _log_once(self, key: str, level: int, message: str, *args: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.log(level, message, *args)


def wait_until_healthy(endpoint_url: str, timeout: float = 240.0, interval: float = 0.5) -> float:
    """Poll ``GET <endpoint_url>/ping`` until it answers 200; returns the seconds waited.

    Raises ``ModelTransportError`` after ``timeout`` seconds (SageMaker allows a container 4 minutes).
    """
    url = model_route(endpoint_url, "ping")
    http = urllib3.PoolManager(retries=False)
    started = time.monotonic()
    last = "no answer"
    try:
        while True:
            remaining = timeout - (time.monotonic() - started)
            attempt_seconds = max(0.1, min(2.0, remaining))
            try:
                response = http.request("GET", url, timeout=urllib3.Timeout(total=attempt_seconds),
                                        preload_content=False)
                read_body(response, time.monotonic() + attempt_seconds)  # a trickled answer is no answer
                if response.status == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status}"
            except AnswerLate:
                last = f"no complete answer within {attempt_seconds:g} s"
            except HTTPError as error:
                last = _reason(error)
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise ModelTransportError(f"The model at {redact_url(endpoint_url)} did not become healthy within "
                                          f"{timeout:g} s (GET /ping: {last})")
            time.sleep(min(interval, remaining))
    finally:
        http.clear()


def _rows(batch: _Batch) -> str:
    last = batch.first_row + len(batch) - 1
    return f"row {last}" if len(batch) == 1 else f"rows {batch.first_row} to {last}"


def _reason(error: BaseException) -> str:
    """The innermost useful message of a urllib3 error (which nests the socket error)."""
    while error.__context__ is not None and not str(error):
        error = error.__context__
    return str(error) or type(error).__name__
