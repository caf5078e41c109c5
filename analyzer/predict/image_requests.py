"""Image request bodies (spec clarify-contract.md 5.2): JPEG / PNG bytes, one image per request, or one
``application/x-npy`` array ``(n, height, width, 3)`` uint8 carrying a batch of images.

``RequestEncoder.encode`` hands a 4-D uint8 array (images of one size) here, and ``ModelClient`` batches
the result like any other ``EncodedRecords``: JPEG and PNG requests carry one image (the docs only show
single-image requests), npy requests as many images as the payload limit allows. JPEG / PNG bodies are
encoded when a request is made, on the client's request threads (Pillow releases the GIL while it
encodes), not all up front: a record's thousands of coalition images are never held as JPEG twice.
"""

from __future__ import annotations

import io

import numpy as np

from analyzer.media import JPEG, JPG, NPY, PNG

from .encode import Body, EncodedRecords, SplitBody

IMAGE_REQUEST_TYPES = (JPEG, JPG, PNG, NPY)
JPEG_QUALITY = 95  # Pillow's default of 75 visibly blurs segment edges; 95 keeps them (~2x the bytes)


def is_image_batch(rows: object) -> bool:
    """Whether ``rows`` is a batch of RGB images: a 4-D uint8 array ``(n, height, width, channels)``."""
    return isinstance(rows, np.ndarray) and rows.ndim == 4 and rows.dtype == np.uint8


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
        batch = self.images[start:stop]
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(batch.dtype),
                                                      "fortran_order": False, "shape": batch.shape})
        return SplitBody(header.getvalue(), memoryview(batch).cast("B"))


__all__ = ["IMAGE_REQUEST_TYPES", "ImageRecords", "encode_image", "is_image_batch"]
