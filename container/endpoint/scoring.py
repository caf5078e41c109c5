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
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jmespath
import numpy as np
import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from analyzer.config.model import Predictor
from analyzer.errors import UserError
from analyzer.media import CSV, JSON, JSON_LINES, NPY, TABULAR_TYPES, media_type
from analyzer.predict import ModelClient, RetryPolicy
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

    def __init__(self, message: str, *, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class ModelAnswer:
    status: int
    body: bytes
    content_type: str
    custom_attributes: str | None


class ModelContainer:
    """The container's ``/ping`` and ``/invocations``; thread-safe, keep-alive connections."""

    def __init__(self, url: str, timeout: float, max_connections: int = 64):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = urllib3.PoolManager(num_pools=2, maxsize=max_connections, retries=False)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               extra_headers: dict[str, str] | None = None) -> ModelAnswer:
        headers = {"Content-Type": content_type or CSV, **KEEP_ALIVE, **(extra_headers or {})}
        if accept:
            headers["Accept"] = accept
        timeout = urllib3.Timeout(connect=min(10.0, self.timeout), read=self.timeout)
        for attempt in (1, 2):
            try:
                response = self._http.request("POST", f"{self.url}/invocations", body=body, headers=headers,
                                              timeout=timeout)
                break
            except ReadTimeoutError:
                raise ModelUnreachable(f"no answer within {self.timeout:g} s", timed_out=True) from None
            except ProtocolError as error:
                # A kept-alive connection the container closed while it sat in the pool (idle timeout, or
                # evicted for a newer one): once is expected, and the request goes again on a new connection.
                if attempt == 2:
                    raise ModelUnreachable(f"the model container at {redact_url(self.url)} dropped the "
                                           f"connection twice: {type(error).__name__}") from None
                log.debug("model container connection dropped (%s); retrying once", type(error).__name__)
            except HTTPError as error:
                raise ModelUnreachable(f"cannot reach the model container at {redact_url(self.url)}: "
                                       f"{type(error).__name__}") from None
        return ModelAnswer(response.status, response.data, response.headers.get("Content-Type", ""),
                           response.headers.get(CUSTOM_ATTRIBUTES))

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            return self._http.request("GET", f"{self.url}/ping", headers=KEEP_ALIVE, timeout=timeout).status == 200
        except HTTPError:
            return False

    def close(self) -> None:
        self._http.clear()


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
                               "concurrency": concurrency,
                               # An online request cannot wait minutes: one quick retry of what retrying fixes.
                               "retry": RetryPolicy(attempts=2, backoff_seconds=0.1, max_elapsed_seconds=timeout)}
    if inference.max_record_count is not None:
        options["max_records_per_request"] = inference.max_record_count
    client = ModelClient(url, predictor, list(feature_names), **options)
    client.headers.update(KEEP_ALIVE)

    def score(rows: np.ndarray) -> np.ndarray:
        return client.predict(rows).scores

    return score, client


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
    strings even when they look like numbers."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    kind = media_type(content_type)
    if kind == CSV:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    elif kind == JSON_LINES:
        locator = jmespath.compile(features_attribute) if features_attribute else None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{what}: line {number} is not JSON: {error}") from None
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
            outputs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise RecordError(f"the model's JSON Lines answer is not JSON: {error}") from None
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
