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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from analyzer.data.images import read_image
from analyzer.errors import UserError
from analyzer.predict import ModelEndpoint
from analyzer.predict.client import ModelError
from analyzer.predict.predictions import Predictions

log = logging.getLogger(__name__)

IMAGES_PER_CHUNK = 288  # coalition images built at once (224 x 224: 43 MB), then sent to the model
# npy requests of at most this many images: several requests keep model workers busy. 48 rather than 32: the
# per-request costs (~1 ms on each side) shared by more pictures, 7 % less CPU on bench/image.py; 64 slows
# the demo model by a third (its cache). The scores' last bits depend on the batch (docs/images.md).
IMAGES_PER_REQUEST = 48
CACHED_IMAGES = 256  # prepared images (pixels, segments, fill) kept per process (224 x 224: 0.5 MB each)


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


def compose(image: np.ndarray, segments: np.ndarray, fill: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Coalition images ``(n, height, width, 3)``: where ``keep[c, segments]`` the image's pixel, else the fill's.

    ``keep``: ``(n, M)`` truthy per coalition and segment.
    """
    return PreparedImage(image, segments, fill).compose(keep)


# Composing by tiles (PreparedImage.compose): a picture is cut into tiles of TILE_PIXELS consecutive pixels
# (row-major, so a tile may run on into the next row); a tile crossing k segments has 2 ** k possible contents,
# all made once per image. A coalition picture is then one index per tile and a gather of whole tiles (memcpy).
TILE_PIXELS = (224, 160, 128, 112, 98, 96, 64, 56, 49, 48, 32, 28, 16, 14, 8, 7, 4, 2, 1)  # largest that fits first
TILE_MAX_SEGMENTS = 6  # segments one tile may cross (64 contents)
TILE_TABLE_BYTES = 4 * 1024 * 1024  # all the tiles' contents of one image; about the size of a core's cache


@dataclass(frozen=True)
class _Tiles:
    """Every possible content of every tile of one image, and how a coalition picks one per tile."""

    pixels: int  # per tile
    table: np.ndarray  # (contents, pixels * channels) uint8: tile t's content number code is row offsets[t] + code
    offsets: np.ndarray  # (tiles,) intp
    slot_segments: np.ndarray  # (slots, tiles) intp: the segment whose bit is ``1 << slot`` in a tile's code
    crossing: tuple[np.ndarray, ...]  # per slot: the tiles that have it (slot 0: all)

    def codes(self, keep: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out`` ``(n, tiles)`` intp: each coalition's table row for each tile."""
        # A column of zeros after the segments: slot_segments names it where a tile has fewer slots.
        kept = np.zeros((len(keep), keep.shape[1] + 1), dtype=np.uint8)
        kept[:, :-1] = keep
        code = np.take(kept, self.slot_segments[0], axis=1)
        for slot in range(1, len(self.slot_segments)):
            tiles = self.crossing[slot]
            code[:, tiles] |= np.take(kept, self.slot_segments[slot, tiles], axis=1) << slot
        return np.add(code, self.offsets, out=out)


def _tile_layout(segments: np.ndarray, channels: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """For the largest tile size in ``TILE_PIXELS`` that divides the picture and crosses at most
    ``TILE_MAX_SEGMENTS`` segments per tile: ``(pixels, keys, rank, slot, counts)``, where ``keys`` are the
    sorted distinct ``tile * M + segment`` pairs, ``rank`` their segment's rank in the tile (its slot),
    ``slot[p]`` pixel p's slot and ``counts`` the segments per tile; None if no size fits within
    ``TILE_TABLE_BYTES``."""
    n_pixels = segments.size
    m = int(segments.max()) + 1
    flat = segments.ravel().astype(np.int64)
    for pixels in TILE_PIXELS:
        if n_pixels % pixels:
            continue
        tiles = n_pixels // pixels
        keys, inverse = np.unique(np.repeat(np.arange(tiles, dtype=np.int64) * m, pixels) + flat, return_inverse=True)
        starts = np.searchsorted(keys, np.arange(tiles + 1, dtype=np.int64) * m)
        counts = np.diff(starts)
        if counts.max() > TILE_MAX_SEGMENTS or int((1 << counts).sum()) * pixels * channels > TILE_TABLE_BYTES:
            continue
        rank = np.arange(len(keys)) - starts[keys // m]
        return pixels, keys, rank, rank[inverse.ravel()], counts
    return None


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
            while len(_CACHE) > CACHED_IMAGES:
                _CACHE.popitem(last=False)
        return prepared


_BYTE_MASK = np.array([0, 255], dtype=np.uint8)  # a kept segment's bytes pass the mask, a filled one's do not
_VISIBLE_CACHED = 4  # per image: the visible areas (object detection: one per object) whose pictures are kept


@dataclass(frozen=True)
class PreparedImage:
    image: np.ndarray  # (height, width, 3) uint8
    segments: np.ndarray  # (height, width) int32, 0 .. n_segments - 1
    fill: np.ndarray  # (height, width, 3) uint8: what a masked pixel becomes

    @property
    def n_segments(self) -> int:
        return int(self.segments.max()) + 1

    @cached_property
    def _byte_segments(self) -> np.ndarray:
        """The segment of every byte of the image (pixels x channels, flat)."""
        return np.repeat(self.segments.ravel(), self.image.shape[-1])

    @cached_property
    def _difference(self) -> np.ndarray:
        return (self.image ^ self.fill).ravel()

    @cached_property
    def _tiles(self) -> _Tiles | None:
        """The image's tiles (see ``TILE_PIXELS``), or None when they would not pay (more than
        ``TILE_TABLE_BYTES`` of contents even for single pixels: images of several megapixels)."""
        layout = _tile_layout(self.segments, self.image.shape[-1])
        if layout is None:
            return None
        pixels, keys, rank, slot, counts = layout
        m, channels = self.n_segments, self.image.shape[-1]
        n_tiles = len(counts)
        offsets = np.zeros(n_tiles, dtype=np.intp)
        np.cumsum(1 << counts[:-1], out=offsets[1:])
        slot_segments = np.full((int(counts.max()), n_tiles), m, dtype=np.intp)
        key_tiles = keys // m
        slot_segments[rank, key_tiles] = keys % m
        table = np.empty((int((1 << counts).sum()), pixels * channels), dtype=np.uint8)
        byte_slot = np.repeat(slot.astype(np.uint8), channels).reshape(n_tiles, pixels * channels)
        image = self.image.reshape(n_tiles, pixels * channels)
        fill = self.fill.reshape(n_tiles, pixels * channels)
        for k in np.unique(counts).tolist():  # tiles crossing k segments: their 2 ** k contents at once
            tiles = np.flatnonzero(counts == k)
            code = np.arange(1 << k, dtype=np.uint8)
            kept = ((code[None, :, None] >> byte_slot[tiles][:, None, :]) & 1).view(bool)  # (tiles, code, byte)
            table[(offsets[tiles][:, None] + code).ravel()] = np.where(
                kept, image[tiles][:, None], fill[tiles][:, None]).reshape(-1, pixels * channels)
        crossing = tuple(np.flatnonzero(counts > s) for s in range(len(slot_segments)))
        return _Tiles(pixels, table, offsets, slot_segments, crossing)

    def compose(self, keep: np.ndarray, visible: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The coalition images of ``keep`` ``(n, M)``: segment j of picture c from the image where
        ``keep[c, j]``, else from the fill; with ``visible`` (``(height, width)`` bool), pixels outside
        it are filled in every picture. ``out``: a C-contiguous ``(n, height, width, 3)`` uint8 array to
        write them into (a caller composing chunk after chunk reuses its memory: new pages cost page
        faults and zeroing, a fifth of the composing); None: a new array.

        Tiles (``_Tiles``): one index per tile and picture, then a gather of whole tiles, ~10 us per
        224 x 224 picture against ~120 us for a byte mask gathered per byte (``_compose_bytes``, kept
        for tiles that would not pay).
        """
        keep = np.ascontiguousarray(keep, dtype=bool)
        shape = (len(keep), *self.image.shape)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags["C_CONTIGUOUS"]:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
        if visible is not None:
            return self._with_visible(np.asarray(visible, dtype=bool)).compose(keep, out=out)
        tiles = self._tiles
        if tiles is None:
            return self._compose_bytes(keep, out)
        codes = tiles.codes(keep, np.empty((len(keep), len(tiles.offsets)), dtype=np.intp))
        # mode="wrap" (codes are in range by construction): with the default "raise", np.take writes to a
        # temporary and copies it into out.
        np.take(tiles.table, codes, axis=0, out=out.reshape(len(keep), *codes.shape[1:], tiles.table.shape[1]), mode="wrap")
        return out

    def _compose_bytes(self, keep: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``fill ^ ((image ^ fill) & mask)`` on flat bytes, the mask (0 or 255 per byte) gathered from the
        coalitions: for images whose tiles would not pay."""
        # np.take, not [:, index]: fancy indexing after a slice returns a column-major array here.
        flat = out.reshape(len(keep), self.image.size)
        np.take(_BYTE_MASK[keep.view(np.uint8)], self._byte_segments, axis=1, out=flat, mode="wrap")
        np.bitwise_and(flat, self._difference, out=flat)
        np.bitwise_xor(flat, self.fill.ravel(), out=flat)
        return out

    def _with_visible(self, visible: np.ndarray) -> PreparedImage:
        """This image with the pixels outside ``visible`` taken from the fill (its tiles made once per
        ``visible``: object detection composes every chunk of an object's coalitions with the same one)."""
        key = visible.tobytes()
        with _CACHE_LOCK:
            cached = self._visible.get(key)
        if cached is None:
            cached = PreparedImage(np.where(visible[..., None], self.image, self.fill), self.segments, self.fill)
            with _CACHE_LOCK:
                self._visible[key] = cached
                while len(self._visible) > _VISIBLE_CACHED:
                    self._visible.pop(next(iter(self._visible)))
        return cached

    @cached_property
    def _visible(self) -> dict[bytes, PreparedImage]:
        return {}

    def filled(self) -> np.ndarray:
        """The image with every segment masked (the empty coalition), as a batch of one."""
        return self.fill[None]


_CACHE: OrderedDict[tuple[ImageSource, int], PreparedImage] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_MASKS: dict[Path, np.ndarray] = {}


def _mask_pixels(path: Path) -> np.ndarray:
    if path not in _MASKS:
        _MASKS[path] = read_image(path)
    return _MASKS[path]


def player_records(indices: Sequence[int], n_segments: int) -> np.ndarray:
    """The records of images ``indices`` in player coordinates: ``[index, 1, ..., 1]``."""
    records = np.ones((len(indices), 1 + n_segments))
    records[:, 0] = indices
    return records


def player_baseline(n_segments: int) -> np.ndarray:
    """The one baseline row in player coordinates: every segment filled (the index column is not explained)."""
    return np.zeros((1, 1 + n_segments))


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
        return ImageScorer(self.model.client(processes=processes, **options), self.source)


class ImageScorer:
    """Scores rows ``[image index, z_1, ..., z_M]`` by composing their images, ``IMAGES_PER_CHUNK`` at a time."""

    def __init__(self, client, source: ImageSource):
        self.client = client
        self.source = source

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
        have all been answered by then (``client.predict`` returned), while chunk i's are in flight."""
        rows = np.asarray(rows, dtype=float)
        chunks = list(self._chunks(rows))
        if not chunks:
            raise ValueError("no rows to score")
        parts = []
        buffers: list[np.ndarray | None] = [None, None]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-compose") as pool:
            pending = pool.submit(self._compose, rows, *chunks[0], buffers, 0)
            for i, (_, first, _) in enumerate(chunks):
                images = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._compose, rows, *chunks[i + 1], buffers, (i + 1) % 2)
                try:
                    parts.append(self.client.predict(images))
                except ModelError as error:
                    if error.row is None:
                        raise
                    raise ModelError(str(error), row=first + error.row, reason=error.reason) from None
        return Predictions.concat(parts)

    def _chunks(self, rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """``(image index, first row, stop)``: runs of rows made from one image (synthetic rows come record
        by record, then the records), cut into chunks of ``IMAGES_PER_CHUNK``."""
        indices = rows[:, 0].astype(np.int64)
        starts = np.flatnonzero(np.diff(indices, prepend=-1))
        stops = np.append(starts[1:], len(rows))
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            for first in range(start, stop, IMAGES_PER_CHUNK):
                yield int(indices[start]), first, min(stop, first + IMAGES_PER_CHUNK)

    def _compose(self, rows: np.ndarray, index: int, first: int, stop: int, buffers: list[np.ndarray | None],
                 turn: int) -> np.ndarray:
        """The pictures of ``rows[first:stop]`` (all of image ``index``), in ``buffers[turn]`` (made or
        grown to hold ``IMAGES_PER_CHUNK`` pictures of this size)."""
        prepared = self.source.prepared(index)
        if rows.shape[1] - 1 != prepared.n_segments:
            raise ValueError(f"rows have {rows.shape[1] - 1} segments but image {self.source.names[index]} has "
                             f"{prepared.n_segments}")
        buffer = buffers[turn]
        if buffer is None or buffer.shape[1:] != prepared.image.shape or len(buffer) < stop - first:
            buffer = buffers[turn] = np.empty((max(IMAGES_PER_CHUNK, stop - first), *prepared.image.shape), np.uint8)
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


__all__ = ["ImageEndpoint", "ImageScorer", "ImageSource", "PreparedImage", "compose", "mask_image_fill",
           "mean_colour_fill", "player_baseline", "player_records", "score_filled", "segment_image"]
