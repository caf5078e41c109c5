"""Kernel SHAP over image segments: each SLIC superpixel is a player (see docs/images.md).

There is one Kernel SHAP in Lucent (``kernel_shap``); images reach it through a change of coordinates.
An image with ``M`` segments is the record ``[i, 1, ..., 1]`` (its index in the dataset, then one column
per segment, 1 = the segment as the image has it) and the baseline is the row ``[0, 0, ..., 0]`` (every
segment filled with the baseline fill). Only the segment columns are explained; the index column is
held at the record's value, so the empty coalition is evaluated per record: the image with every segment
filled, whose score is each image's own reference. A synthetic row ``[i, z_1, ..., z_M]`` becomes an
image in :class:`ImageScorer`: pixels of segments with ``z_j = 1`` from image ``i``, the others from its
fill. The coalition design, the solver, the standard errors, the shards and their checkpoints are the
tabular ones, unchanged.

The baseline fill (docs/images.md): every masked pixel takes the image's mean colour, or, when
``methods.shap.baseline`` names an image (Clarify's "mask image"), that image resized to the image's size.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyzer.data.images import read_image
from analyzer.data.pictures import CoalitionPictures, PreparedImage
from analyzer.errors import UserError
from analyzer.predict import ModelEndpoint
from analyzer.predict.client import ModelError
from analyzer.predict.predictions import Predictions

log = logging.getLogger(__name__)

IMAGES_PER_CHUNK = 288  # coalition images built at once (224 x 224: 43 MB), then sent to the model
# ... but at most this many bytes of pictures per buffer (two buffers take turns), and at least one picture: memory
# is bounded whatever the image size (288 pictures of 2000 x 1500 would be 2.6 GB per buffer). 224 x 224 and
# 512 x 512 chunks are still 288 pictures; larger images come in fewer at a time (docs/images.md, Memory).
PICTURE_BUFFER_BYTES = 256 * 1024 * 1024
# npy requests of at most this many images: several requests keep model workers busy. 48 rather than 32: the
# per-request costs (~1 ms on each side) shared by more pictures, 7 % less CPU on bench/image.py; 64 slows
# the demo model by a third (its cache). The scores' last bits depend on the batch (docs/images.md).
IMAGES_PER_REQUEST = 48
CACHED_IMAGES = 256  # prepared images (pixels, segments, fill) kept per process (224 x 224: 0.5 MB each)
CACHED_BYTES = 512 * 1024 * 1024  # ... and at most this many bytes of them (the last one prepared is always kept)


def segment_image(image: np.ndarray, num_segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels of ``image`` as ``(height, width)`` int32 labels ``0 .. M - 1`` (consecutive).

    scikit-image's ``slic`` with ``num_segments`` and ``segment_compactness`` as Clarify passes them; it
    returns about ``num_segments`` segments (fewer on flat images, sometimes a few more).
    """
    from skimage.segmentation import slic

    labels = slic(image, n_segments=int(num_segments), compactness=float(compactness), start_label=0,
                  channel_axis=-1)
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int32)


def mean_colour_fill(image: np.ndarray) -> np.ndarray:
    """The default baseline fill: an image of ``image``'s size in its mean colour (per channel, rounded)."""
    colour = np.rint(image.reshape(-1, image.shape[-1]).mean(axis=0)).astype(np.uint8)
    return np.broadcast_to(colour, image.shape).copy()


def mask_image_fill(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A configured mask image resized (bilinear) to an image of ``shape`` (Clarify: "resized to each input image")."""
    if mask.shape == tuple(shape):
        return mask
    from PIL import Image

    resized = Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True)
class ImageSource:
    """Where a job's images are and how each is prepared (plain data: sent to SHAP worker processes,
    which read and segment an image again rather than receive its pixels)."""

    root: Path
    names: tuple[str, ...]  # relative paths, dataset order
    num_segments: int
    compactness: float
    mask: Path | None = None  # methods.shap.baseline's mask image; None: the image's mean colour

    def path(self, index: int) -> Path:
        return self.root / self.names[index]

    def prepared(self, index: int) -> PreparedImage:
        """Image ``index``'s pixels, segments and fill (cached per process)."""
        key = (self, index)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit
        image = read_image(self.path(index))
        segments = segment_image(image, self.num_segments, self.compactness)
        fill = mask_image_fill(_mask_pixels(self.mask), image.shape) if self.mask is not None else mean_colour_fill(image)
        prepared = PreparedImage(image, segments, fill)
        with _CACHE_LOCK:
            _CACHE[key] = prepared
            while len(_CACHE) > 1 and (len(_CACHE) > CACHED_IMAGES or
                                       sum(_prepared_bytes(kept) for kept in _CACHE.values()) > CACHED_BYTES):
                _CACHE.popitem(last=False)
        return prepared


def _prepared_bytes(prepared: PreparedImage) -> int:
    return int(prepared.image.nbytes + prepared.segments.nbytes + prepared.fill.nbytes)


_CACHE: OrderedDict[tuple[ImageSource, int], PreparedImage] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_MASKS: dict[Path, np.ndarray] = {}


def _mask_pixels(path: Path) -> np.ndarray:
    if path not in _MASKS:
        _MASKS[path] = read_image(path)
    return _MASKS[path]


@dataclass(frozen=True)
class ImageEndpoint:
    """A ``ModelEndpoint`` for rows in player coordinates: its scorer turns them into images of ``source``
    and asks the image model. Plain data, as ``ModelEndpoint`` is: SHAP workers open their own client."""

    model: ModelEndpoint
    source: ImageSource

    @property
    def in_process(self) -> bool:
        return self.model.in_process

    def client(self, feature_names: Sequence[str] | None = None, *, processes: int = 1, **options) -> ImageScorer:
        requested = options.get("max_records_per_request") or IMAGES_PER_REQUEST
        options["max_records_per_request"] = min(int(requested), IMAGES_PER_REQUEST)
        return ImageScorer(self.model.client(processes=processes, **options), self.source,
                           describe=self.model.describes_pictures)


class ImageScorer:
    """Scores rows ``[image index, z_1, ..., z_M]`` by composing their images, ``IMAGES_PER_CHUNK`` at a time.

    ``describe``: the model server draws the pictures itself (``ModelEndpoint.composes_pictures``, npy
    requests): each image's rows go as ``CoalitionPictures`` (the image, its segments and fill, and the
    rows' coalitions), ~15 times fewer bytes than the pictures, and the server draws the same pictures.
    """

    def __init__(self, client, source: ImageSource, *, describe: bool = False):
        self.client = client
        self.source = source
        self.describe = describe

    def __enter__(self) -> ImageScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def predict(self, rows: np.ndarray, progress: object | None = None) -> Predictions:  # noqa: ARG002
        """Scores of the pictures of ``rows``. The next chunk of pictures is composed on a second thread
        while the model scores this one (numpy releases the GIL), so neither waits for the other.
        ``progress`` (the ``Scorer`` protocol's) is not advanced: the SHAP step counts images itself.

        Two buffers take turns: chunk i + 1 is composed into the one chunk i - 1 used, whose requests
        have all been answered by then (``client.predict`` returned), while chunk i's are in flight. A
        chunk is at most ``IMAGES_PER_CHUNK`` pictures and ``PICTURE_BUFFER_BYTES`` of them (at least one)."""
        rows = np.asarray(rows, dtype=float)
        if not len(rows):
            raise ValueError("no rows to score")
        indices = np.unique(rows[:, 0].astype(np.int64)).tolist()
        if self.describe and all(self._fits_described(index) for index in indices):
            # nothing drawn here: each image's rows go at once, the client spreads its requests
            return Predictions.concat([self._scored(self._described(rows, index, first, stop), first)
                                       for index, first, stop in self._chunks(rows, lambda _: len(rows))])
        chunks = list(self._chunks(rows, self._chunk_size))
        parts = []
        buffers: list[np.ndarray | None] = [None, None]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-compose") as pool:
            pending = pool.submit(self._compose, rows, *chunks[0], buffers, 0)
            for i, (_, first, _) in enumerate(chunks):
                images = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._compose, rows, *chunks[i + 1], buffers, (i + 1) % 2)
                parts.append(self._scored(images, first))
        return Predictions.concat(parts)

    def _scored(self, pictures: np.ndarray | CoalitionPictures, first: int) -> Predictions:
        """The model's scores of ``pictures``, the pictures of rows from ``first`` on (named in its errors)."""
        try:
            return self.client.predict(pictures)
        except ModelError as error:
            if error.row is None:
                raise
            raise ModelError(str(error), row=first + error.row, reason=error.reason) from None

    @staticmethod
    def _chunks(rows: np.ndarray, size: Callable[[int], int]) -> Iterator[tuple[int, int, int]]:
        """``(image index, first row, stop)``: runs of rows made from one image (synthetic rows come record
        by record, then the records), cut into chunks of ``size(image index)``."""
        indices = rows[:, 0].astype(np.int64)
        starts = np.flatnonzero(np.diff(indices, prepend=-1))
        stops = np.append(starts[1:], len(rows))
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            index = int(indices[start])
            step = max(1, int(size(index)))
            for first in range(start, stop, step):
                yield index, first, min(stop, first + step)

    def _chunk_size(self, index: int) -> int:
        """Pictures of image ``index`` composed at once: ``IMAGES_PER_CHUNK``, fewer when they would take more
        than ``PICTURE_BUFFER_BYTES``, at least one."""
        picture_bytes = max(1, self.source.prepared(index).image.nbytes)
        return max(1, min(IMAGES_PER_CHUNK, PICTURE_BUFFER_BYTES // picture_bytes))

    def _fits_described(self, index: int) -> bool:
        """Whether image ``index``'s pictures can go described: a described body carries the image, its
        segments and its fill whatever the number of pictures (2000 x 1500: 30 MB), so a large image's body
        may not fit the payload limit that one drawn picture fits (the server would refuse it)."""
        limit = getattr(self.client, "max_payload_bytes", None)
        if limit is None:
            return True
        prepared = self.source.prepared(index)
        described = _prepared_bytes(prepared) + 4 * 128 + prepared.n_segments  # four npy headers, one row of keep
        return described <= limit

    def _prepared(self, rows: np.ndarray, index: int) -> PreparedImage:
        prepared = self.source.prepared(index)
        if rows.shape[1] - 1 != prepared.n_segments:
            raise ValueError(f"rows have {rows.shape[1] - 1} segments but image {self.source.names[index]} has "
                             f"{prepared.n_segments}")
        return prepared

    def _described(self, rows: np.ndarray, index: int, first: int, stop: int) -> CoalitionPictures:
        """The pictures of ``rows[first:stop]`` (all of image ``index``) as the server is to draw them."""
        prepared = self._prepared(rows, index)
        return CoalitionPictures(prepared.image, prepared.segments, prepared.fill, rows[first:stop, 1:] > 0.5)

    def _compose(self, rows: np.ndarray, index: int, first: int, stop: int, buffers: list[np.ndarray | None],
                 turn: int) -> np.ndarray:
        """The pictures of ``rows[first:stop]`` (all of image ``index``), in ``buffers[turn]`` (made, or made
        again, to hold one chunk of this image's pictures: ``_chunk_size``)."""
        prepared = self._prepared(rows, index)
        buffer = buffers[turn]
        if buffer is None or buffer.shape[1:] != prepared.image.shape or len(buffer) < stop - first:
            buffers[turn] = buffer = None  # the old buffer is freed before the new one is made
            buffer = buffers[turn] = np.empty((max(self._chunk_size(index), stop - first), *prepared.image.shape),
                                              np.uint8)
        return prepared.compose(rows[first:stop, 1:] > 0.5, out=buffer[:stop - first])


def score_filled(endpoint: ModelEndpoint, source: ImageSource, indices: Sequence[int]) -> Predictions:
    """The model's scores of images ``indices`` with every segment filled (their references), in order."""
    with endpoint.client() as client:
        parts = []
        for i in indices:
            try:
                parts.append(client.predict(source.prepared(i).filled()))
            except UserError as error:
                raise UserError(f"methods.shap: image {source.names[i]}, every segment filled: {error}") from None
    return Predictions.concat(parts)


__all__ = ["ImageEndpoint", "ImageScorer", "ImageSource", "mask_image_fill",
           "mean_colour_fill", "score_filled", "segment_image"]
