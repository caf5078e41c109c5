"""Image request bodies (spec clarify-contract.md 5.2): JPEG / PNG bytes, one image per request, or one
``application/x-npy`` array ``(n, height, width, 3)`` uint8 carrying a batch of images. To Lucent's own
model server, coalition pictures may instead go described (``IMAGE_COALITIONS``, :class:`CoalitionRecords`).

``RequestEncoder.encode`` hands a 4-D uint8 array (images of one size) here, and ``ModelClient`` batches
the result like any other ``EncodedRecords``: JPEG and PNG requests carry one image (the docs only show
single-image requests), npy requests as many images as the payload limit allows. JPEG / PNG bodies are
encoded when a request is made, on the client's request threads (Pillow releases the GIL while it
encodes), not all up front: a record's thousands of coalition images are never held as JPEG twice.
"""

from __future__ import annotations

import io

import numpy as np

from analyzer.data.pictures import CoalitionPictures
from analyzer.media import IMAGE_COALITIONS, JPEG, JPG, NPY, PNG

from .encode import Body, EncodedRecords, SplitBody, npy_pieces

IMAGE_REQUEST_TYPES = (JPEG, JPG, PNG, NPY)
JPEG_QUALITY = 95  # Pillow's default of 75 visibly blurs segment edges; 95 keeps them (~2x the bytes)


def encode_image(image: np.ndarray, content_type: str) -> bytes:
    """One ``(height, width, channels)`` uint8 image as a JPEG or PNG file."""
    from PIL import Image

    buffer = io.BytesIO()
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    if content_type == PNG:
        picture.save(buffer, format="PNG", compress_level=1)  # speed over size: the body lives one request
    else:
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class ImageRecords(EncodedRecords):
    """A batch of same-sized images as request bodies of ``content_type``."""

    def __init__(self, images: np.ndarray, content_type: str):
        self.images = np.ascontiguousarray(images)
        self.content_type = content_type
        image_bytes = int(np.prod(self.images.shape[1:]))
        # Sizes for cutting batches: exact for npy; for JPEG / PNG only an upper bound of the raw size
        # (each request carries one image anyway).
        super().__init__(b"", np.arange(len(self.images) + 1, dtype=np.int64) * image_bytes, b"",
                         max_records=None if content_type == NPY else 1)

    @property
    def envelope_bytes(self) -> int:
        return 128 if self.content_type == NPY else 0

    def body(self, start: int, stop: int) -> Body:
        if stop <= start or (self.max_records is not None and stop - start > self.max_records):
            raise ValueError(f"cannot make one request body of images {start}:{stop}")
        if self.content_type != NPY:
            return encode_image(self.images[start], self.content_type)
        return SplitBody(*npy_pieces(self.images[start:stop]))


class CoalitionRecords(EncodedRecords):
    """Coalition pictures as ``IMAGE_COALITIONS`` bodies, for Lucent's own model server, which draws them.

    A body is four ``.npy`` arrays back to back: the image ``(height, width, channels)`` uint8, its
    segments ``(height, width)`` int32, its fill (as the image), and the request's rows of ``keep``
    ``(n, M)`` bool, where M is the number of segments. The first three are the same in every request
    (views of their memory, not copies). Requests are cut by the pictures' drawn size, as npy requests of
    them would be, so the server never draws more than its body limit: ~0.5 MB is sent for 48 pictures of
    224 x 224 that are 7.2 MB drawn.
    """

    content_type = IMAGE_COALITIONS

    def __init__(self, pictures: CoalitionPictures):
        self.pictures = pictures
        self._fixed = tuple(piece for array in (pictures.image, pictures.segments, pictures.fill)
                            for piece in npy_pieces(np.ascontiguousarray(array)))
        super().__init__(b"", np.arange(len(pictures) + 1, dtype=np.int64) * pictures.picture_bytes, b"")

    @property
    def envelope_bytes(self) -> int:
        return sum(memoryview(piece).nbytes for piece in self._fixed) + 128

    def body(self, start: int, stop: int) -> Body:
        if stop <= start:
            raise ValueError(f"cannot make one request body of pictures {start}:{stop}")
        return SplitBody(*self._fixed, *npy_pieces(np.ascontiguousarray(self.pictures.keep[start:stop], dtype=bool)))


__all__ = ["IMAGE_REQUEST_TYPES", "CoalitionRecords", "ImageRecords", "encode_image"]
