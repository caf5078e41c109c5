"""Captured payloads: base64 decoded to text, each line's format (CSV, JSON Lines or JSON), and the model's
answer inside an explanation document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.errors import DataError
from analyzer.media import CSV, JSON, JSON_LINES, media_type
from analyzer.monitor.arrow_masks import true_mask
from analyzer.monitor.capture import BASE64_ENCODING, CSV_ENCODING, JSON_ENCODING, payload_bytes
from analyzer.monitor.jsonl_chunks import MalformedLines


def decoded_payloads(data: pa.Array, encoding: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
             malformed: MalformedLines, what: str) -> pa.Array:
    """``data`` with base64 payloads decoded to text (``payload_bytes``, for the few lines that need it)."""
    coded = np.flatnonzero(true_mask(pc.equal(encoding, BASE64_ENCODING)) & keep)
    if not len(coded):
        return data
    texts = []
    for i in coded.tolist():
        text = ""
        try:
            text = payload_bytes({"encoding": BASE64_ENCODING, "data": data[i].as_py(), "mode": what}).decode("utf-8")
        except DataError as error:
            keep[i] = False
            malformed.add(origin(i), str(error))
        except UnicodeDecodeError:
            keep[i] = False
            malformed.add(origin(i), f"captured {what}: the decoded payload is not UTF-8 text")
        texts.append(text)
    mask = np.zeros(len(data), dtype=bool)
    mask[coded] = True
    return pc.replace_with_mask(data, pa.array(mask), pa.array(texts, pa.string()))


def payload_kinds(encoding: pa.Array, content_type: pa.Array, keep: np.ndarray, origin: Callable[[int], str],
           malformed: MalformedLines, what: str) -> np.ndarray:
    """Per line, the payload's format (index into ``KIND_LIST``), -1 for lines not kept."""
    pairs = pc.binary_join_element_wise(pc.fill_null(encoding, ""), pc.fill_null(content_type, ""), "|")
    encoded = pairs.dictionary_encode()
    lookup = []
    for pair in encoded.dictionary.to_pylist():
        coding, observed = pair.split("|", 1)
        kind = media_type(observed)
        if coding == CSV_ENCODING:
            kind = CSV
        elif coding == JSON_ENCODING and kind not in (JSON, JSON_LINES):
            kind = JSON_LINES
        lookup.append(KIND_LIST.index(kind) if kind in KIND_LIST else -2)
    kinds = np.array(lookup + [-1], dtype=np.int64)[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
    for i in np.flatnonzero((kinds == -2) & keep).tolist():
        keep[i] = False
        malformed.add(origin(i), f"captured {what} of type {content_type[i].as_py()!r}: neither CSV nor JSON")
    kinds[~keep] = -1
    return kinds


KIND_LIST = (CSV, JSON_LINES, JSON)


def explanation_answer(document: Any) -> tuple[str, str] | None:
    """``(predictions.content_type, predictions.data)`` when ``document`` is an explanation document
    (``{"version": ..., "predictions": {"content_type": ..., "data": ...}, "explanations": ...}``, what an
    endpoint with ``ExplainerConfig`` answers: online-explainability.md 5), else None."""
    if not isinstance(document, dict) or "version" not in document:
        return None
    predictions = document.get("predictions")
    if not isinstance(predictions, dict):
        return None
    content_type, data = predictions.get("content_type"), predictions.get("data")
    if isinstance(content_type, str) and isinstance(data, str):
        return content_type, data
    return None
