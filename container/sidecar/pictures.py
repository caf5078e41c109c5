"""The model server's side of ``IMAGE_COALITIONS`` requests: coalition pictures it draws itself.

An image explanation scores ~2,000 pictures per image that differ only in which segments show the
image and which its fill. Sent drawn (npy), a batch of 48 pictures of 224 x 224 is 7.2 MB that the job
copies into its socket and the server out of it: about a third of all the CPU the job and the server
spent (bench/image.py). Described (``analyzer.predict.image_requests.CoalitionRecords``: the image, its
segments and fill, and which segments each picture keeps) the body is ~0.5 MB, and the server draws the
pictures with the job's own code (``analyzer.data.pictures.PreparedImage``), so the model gets the
array an npy body of them would have held, byte for byte.

Only for a model with the default input handling (``ModelHandlers.default_io``): a user's ``input_fn``
reads the bodies it was written for. The server advertises it in ``/lucent/info`` (``composes_pictures``).

The body is hostile input like any other: exactly four arrays, their types and shapes checked, every
segment number within the coalitions' width, and no more drawn bytes than the server's body limit
(an npy body of the same pictures could not be larger).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from analyzer.data.pictures import PreparedImage
from analyzer.media import IMAGE_COALITIONS

from .codecs import CodecError, npy_header

_ARRAYS = ("image", "segments", "fill", "keep")
_DTYPES = {"image": np.dtype(np.uint8), "segments": np.dtype(np.int32), "fill": np.dtype(np.uint8),
           "keep": np.dtype(bool)}
_PREPARED_KEPT = 4  # images whose tiles a worker keeps: requests come image by image, a few in flight


class PictureComposer:
    """Draws the pictures of ``IMAGE_COALITIONS`` bodies; one per worker process (not thread-safe: a
    worker runs one request at a time).

    Keeps the last few images prepared (their tiles take ~10 ms to make and serve every request of that
    image: ~40 of them), recognised by comparing their bytes, never by a digest a client could collide,
    and one buffer the pictures are drawn into, reused while nothing else holds it.
    """

    def __init__(self) -> None:
        self._prepared: list[PreparedImage] = []
        self._buffer: np.ndarray | None = None

    def pictures(self, body: bytes | bytearray, max_bytes: int) -> np.ndarray:
        """The ``(n, height, width, channels)`` uint8 pictures ``body`` describes; CodecError (400, or
        413 past ``max_bytes`` of pictures) says what is wrong with it."""
        image, segments, fill, keep = _read(body)
        drawn = len(keep) * image.nbytes
        if drawn > max_bytes:
            raise CodecError(f"the {len(keep):,} pictures of this {IMAGE_COALITIONS} body are {drawn:,} bytes "
                             f"drawn, over the server's limit of {max_bytes:,}", status=413)
        prepared = self._prepared_for(image, segments, fill)
        return prepared.compose(keep, out=self._out((len(keep), *image.shape)))

    def _prepared_for(self, image: np.ndarray, segments: np.ndarray, fill: np.ndarray) -> PreparedImage:
        for i, kept in enumerate(self._prepared):
            if (kept.image.shape == image.shape and np.array_equal(kept.image, image)
                    and np.array_equal(kept.segments, segments) and np.array_equal(kept.fill, fill)):
                if i:
                    self._prepared.insert(0, self._prepared.pop(i))
                return kept
        # Copies: the arrays are views of the request's body buffer, which the worker reuses.
        prepared = PreparedImage(image.copy(), segments.copy(), fill.copy())
        self._prepared.insert(0, prepared)
        del self._prepared[_PREPARED_KEPT:]
        return prepared

    def _out(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous uint8 array of ``shape`` in the reused buffer (grown when too small), unless
        something still holds the buffer (a model that kept its input): then a new one."""
        size = math.prod(shape)
        # Only this object's reference and getrefcount's argument: no view of the buffer is alive.
        if self._buffer is None or self._buffer.size < size or sys.getrefcount(self._buffer) > 2:
            self._buffer = np.empty(size, dtype=np.uint8)
        return self._buffer[:size].reshape(shape)



def _read(body: bytes | bytearray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays of a body (views of its memory), checked."""
    arrays, offset = [], 0
    for name in _ARRAYS:
        try:
            shape, fortran_order, dtype, start = npy_header(body, offset)
        except ValueError as exc:
            raise CodecError(f"{IMAGE_COALITIONS} body: the {name} array at byte {offset}: {exc}") from None
        if dtype != _DTYPES[name] or fortran_order:
            raise CodecError(f"{IMAGE_COALITIONS} body: the {name} array must be C-ordered "
                             f"{_DTYPES[name]}, got {'Fortran-ordered ' if fortran_order else ''}{dtype}")
        count = math.prod(shape)
        end = start + count * dtype.itemsize
        if end > len(body):
            raise CodecError(f"{IMAGE_COALITIONS} body: the {name} array {shape} needs {end - start:,} "
                             f"bytes, {len(body) - start:,} are left")
        arrays.append(np.frombuffer(body, dtype=dtype, count=count, offset=start).reshape(shape))
        offset = end
    if offset != len(body):
        raise CodecError(f"{IMAGE_COALITIONS} body: {len(body) - offset:,} bytes after its four arrays")
    image, segments, fill, keep = arrays
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or image.size == 0:
        raise CodecError(f"{IMAGE_COALITIONS} body: the image must be (height, width, channels) with 1 to 4 "
                         f"channels, got {image.shape}")
    if fill.shape != image.shape or segments.shape != image.shape[:2]:
        raise CodecError(f"{IMAGE_COALITIONS} body: image {image.shape}, segments {segments.shape} and fill "
                         f"{fill.shape} must be the same picture")
    if keep.ndim != 2 or keep.shape[0] == 0:
        raise CodecError(f"{IMAGE_COALITIONS} body: keep must be (pictures, segments) with at least one "
                         f"picture, got {keep.shape}")
    if int(segments.min()) != 0 or int(segments.max()) != keep.shape[1] - 1:
        raise CodecError(f"{IMAGE_COALITIONS} body: segments must be numbered 0 to {keep.shape[1] - 1} (one "
                         f"per column of keep), got {int(segments.min())} to {int(segments.max())}")
    # A bool byte other than 0 or 1 (numpy does not check them) would index past the tile tables.
    return image, segments, fill, keep.view(np.uint8) != 0


__all__ = ["PictureComposer"]
