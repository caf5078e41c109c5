"""Coalition pictures: an image whose segments each show either the image or its fill.

Image explanations (``analyzer.explain.image_shap``) score thousands of such pictures per image, one per
coalition of segments. :class:`PreparedImage` holds what they are made from (the pixels, the segment of
every pixel, the fill) and composes them; :class:`CoalitionPictures` describes a batch of them without
drawing it (the image and which segments each picture keeps), for a model server that composes them
itself (Lucent's built-in server: ``analyzer.media.IMAGE_COALITIONS``, docs/images.md). Both sides
compose with this module, so the server's pictures are the job's, byte for byte.

numpy only: the model server imports it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np


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
        with _VISIBLE_LOCK:
            cached = self._visible.get(key)
        if cached is None:
            cached = PreparedImage(np.where(visible[..., None], self.image, self.fill), self.segments, self.fill)
            with _VISIBLE_LOCK:
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



_VISIBLE_LOCK = threading.Lock()


@dataclass(frozen=True)
class CoalitionPictures:
    """The pictures ``PreparedImage(image, segments, fill).compose(keep)`` makes, described rather than drawn.

    ``keep`` ``(n, M)`` bool: per picture, the segments that show the image (the others show the fill).
    A slice of it (``pictures[a:b]``) describes those pictures of the batch. What a request body of
    ``IMAGE_COALITIONS`` carries: ~0.5 MB for an image of 224 x 224, however many pictures (48 of them
    drawn are 7.2 MB)."""

    image: np.ndarray  # (height, width, channels) uint8
    segments: np.ndarray  # (height, width) int32, 0 .. M - 1
    fill: np.ndarray  # (height, width, channels) uint8
    keep: np.ndarray  # (n, M) bool

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, rows: slice) -> CoalitionPictures:
        return replace(self, keep=self.keep[rows])

    @property
    def picture_bytes(self) -> int:
        """Bytes of one drawn picture."""
        return int(self.image.nbytes)


__all__ = ["TILE_MAX_SEGMENTS", "TILE_PIXELS", "TILE_TABLE_BYTES", "CoalitionPictures", "PreparedImage", "compose"]
