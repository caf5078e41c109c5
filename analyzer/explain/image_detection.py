"""Object detection explanations (``image_config.model_type: OBJECT_DETECTION``, docs/images.md).

The model answers one picture per request with its detections, ``[class, confidence, xmin, ymin, xmax,
ymax]`` (corners as fractions of the width and height), the whole JSON body or ``predictor.probability``'s
JMESPath over it (spec clarify-contract.md 5.3, the "Object Detection Inference Format"). On each original
image the detections at or above ``probability_threshold`` are ranked by confidence and the top
``max_objects`` are explained, each on its own.

An object's score for a picture is the highest confidence among the picture's detections of the same
class whose box overlaps the object's by at least ``iou_threshold`` (intersection over union), 0 when none
does. Players are the image's segments, as for classification; ``context`` decides what the model sees
around the box: pixels outside the box widened by ``context`` times its distance to each image edge are
always filled (1: the whole image, 0: only the box). Rows in player coordinates are
``[image index, object index, z_1, ..., z_M]``; only the ``z`` columns are explained, so each object has
its own reference (every segment filled).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analyzer.errors import UserError
from analyzer.media import JSON
from analyzer.predict import ModelEndpoint
from analyzer.predict.predictions import Predictions

from . import image_shap
from .image_shap import IMAGES_PER_CHUNK, ImageSource


@dataclass(frozen=True)
class DetectedObject:
    """One detection of an original image that is explained."""

    image: int  # index of the image in the dataset
    class_index: int
    confidence: float
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as fractions of width / height


class DetectionParser:
    """Reads one picture's answer as its detections ``(D, 6)``: stands in for ``ResponseParser`` in the
    clients an object-detection job opens (one picture per request)."""

    accept_type = JSON
    label_headers = None

    def __init__(self, probability: str | int | None):
        import jmespath

        self.locator = None if probability is None else jmespath.compile(str(probability))
        self.key = "predictor.probability" if probability is not None else "the model's answer"

    def parse(self, body: bytes, n_records: int, first_row: int = 0) -> Predictions:
        if n_records != 1:
            raise ValueError(f"object detection answers carry one picture, this request carried {n_records}")
        try:
            document = json.loads(body)
        except ValueError as error:
            raise UserError(f"the model's answer for picture {first_row} is not JSON: {error}") from None
        return self._one(document if self.locator is None else self.locator.search(document), first_row)

    def parse_array(self, array: np.ndarray, n_records: int, first_row: int = 0) -> Predictions:
        return self._one(array.tolist(), first_row)

    def _one(self, detections: object, first_row: int) -> Predictions:
        value = np.empty(1, dtype=object)
        value[0] = detection_array(detections, self.key, first_row)
        return Predictions(1, probability=value, first_row=first_row)


def detection_array(detections: object, key: str, first_row: int = 0) -> np.ndarray:
    """``(D, 6)`` float detections; a batch of one picture (``[[[...], ...]]``) is unwrapped."""
    try:
        array = np.asarray(detections if detections is not None else [], dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{key}: the detections for picture {first_row} are not lists of 6 numbers "
                        "[class, confidence, xmin, ymin, xmax, ymax]") from None
    if array.ndim == 3 and len(array) == 1:
        array = array[0]
    if array.size == 0:
        return np.zeros((0, 6))
    if array.ndim != 2 or array.shape[1] != 6:
        raise UserError(f"{key}: the detections for picture {first_row} have shape {array.shape}; expected lists of "
                        "6 numbers [class, confidence, xmin, ymin, xmax, ymax]")
    return array


BOX_TOLERANCE = 0.01  # corners may stray this far outside [0, 1] (a regressed box's rounding) before refused


def check_detections(detections: np.ndarray, headers: Sequence[str], what: str) -> None:
    """Refuse an original image's detections that Lucent would misread, naming ``what`` and the detection.

    Corners must be fractions of the width and height (the inference format): boxes in pixels would be
    explained as boxes covering the whole image. A class index must be an index into
    ``predictor.label_headers`` when those are given, as a tabular model's labels must match them.
    """
    for row in np.asarray(detections, dtype=float).reshape(-1, 6):
        shown = "[" + ", ".join(f"{v:g}" for v in row) + "]"
        corners = row[2:6]
        if not np.all((corners >= -BOX_TOLERANCE) & (corners <= 1 + BOX_TOLERANCE)):
            raise UserError(f"{what}: detection {shown} has box corners outside [0, 1]; the corners xmin, ymin, "
                            "xmax, ymax must be fractions of the image's width and height, not pixels")
        if headers and not (row[0] == int(row[0]) and 0 <= row[0] < len(headers)):
            raise UserError(f"{what}: detection {shown} has class index {row[0]:g}, which is not an index into "
                            f"predictor.label_headers ({len(headers)} entries: {list(headers)})")


def iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of ``box`` with each row of ``boxes`` (corners xmin, ymin, xmax, ymax)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_score(detections: np.ndarray, obj: DetectedObject, iou_threshold: float) -> float:
    """The object's score in a picture: the best confidence of a same-class detection overlapping it enough."""
    same = detections[detections[:, 0] == obj.class_index]
    if len(same) == 0:
        return 0.0
    overlapping = iou(obj.box, same[:, 2:6]) >= iou_threshold
    return float(same[overlapping, 1].max()) if overlapping.any() else 0.0


def top_objects(image: int, detections: np.ndarray, threshold: float, max_objects: int) -> list[DetectedObject]:
    """The detections to explain: confidence >= ``threshold``, the ``max_objects`` most confident."""
    kept = detections[detections[:, 1] >= threshold]
    order = np.argsort(-kept[:, 1], kind="stable")[:max_objects]
    return [DetectedObject(image, int(kept[i, 0]), float(kept[i, 1]), tuple(float(v) for v in kept[i, 2:6]))
            for i in order]


def context_mask(shape: tuple[int, ...], box: Sequence[float], context: float) -> np.ndarray:
    """``(height, width)`` True where the model sees the picture: the box widened by ``context`` times its
    distance to each edge (1: everything, 0: the box only)."""
    height, width = shape[:2]
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    x0, y0 = x0 * (1 - context), y0 * (1 - context)
    x1, y1 = x1 + context * (width - x1), y1 + context * (height - y1)
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5  # pixel centres
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


@dataclass(frozen=True)
class DetectionEndpoint:
    """The ``ModelEndpoint`` of an object-detection job's rows ``[image, object, z...]`` (plain data)."""

    model: ModelEndpoint
    source: ImageSource
    objects: tuple[DetectedObject, ...]
    iou_threshold: float
    context: float

    @property
    def in_process(self) -> bool:
        return self.model.in_process

    def client(self, feature_names: Sequence[str] | None = None, *, processes: int = 1, **options) -> DetectionScorer:
        options["max_records_per_request"] = 1  # one picture, one list of detections
        client = self.model.client(processes=processes, **options)
        client.parser = DetectionParser(self.model.predictor.probability)
        return DetectionScorer(client, self)


class DetectionScorer:
    """Scores rows ``[image, object, z_1, ..., z_M]``: each row's picture, its detections, the object's match."""

    def __init__(self, client, endpoint: DetectionEndpoint):
        self.client, self.endpoint = client, endpoint

    def __enter__(self) -> DetectionScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def detections(self, pictures: np.ndarray) -> list[np.ndarray]:
        """Each picture's detections ``(D, 6)``."""
        return list(self.client.predict(pictures).probability)

    def predict(self, rows: np.ndarray, progress: object | None = None) -> Predictions:  # noqa: ARG002
        rows = np.asarray(rows, dtype=float)
        scores = np.zeros(len(rows))
        for first in range(0, len(rows), IMAGES_PER_CHUNK):
            chunk = rows[first:first + IMAGES_PER_CHUNK]
            keys = chunk[:, :2].astype(np.int64)
            starts = np.flatnonzero((np.diff(keys, axis=0, prepend=-1) != 0).any(axis=1))
            stops = np.append(starts[1:], len(chunk))
            for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
                image, index = int(keys[start, 0]), int(keys[start, 1])
                obj = self.endpoint.objects[index]
                prepared = self.endpoint.source.prepared(image)
                visible = context_mask(prepared.image.shape, obj.box, self.endpoint.context)
                # at most PICTURE_BUFFER_BYTES of pictures at once, as for classification (docs/images.md, Memory)
                step = max(1, min(IMAGES_PER_CHUNK, image_shap.PICTURE_BUFFER_BYTES // max(1, prepared.image.nbytes)))
                for part in range(start, stop, step):
                    pictures = prepared.compose(chunk[part:min(stop, part + step), 2:] > 0.5, visible)
                    for j, found in enumerate(self.detections(pictures)):
                        scores[first + part + j] = match_score(found, obj, self.endpoint.iou_threshold)
        return Predictions(len(rows), probability=scores[:, None])


__all__ = ["DetectedObject", "DetectionEndpoint", "DetectionParser", "DetectionScorer", "context_mask",
           "detection_array", "iou", "match_score", "top_objects"]
