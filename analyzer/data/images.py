"""Image datasets (``dataset_type: application/x-image``): a folder of image files, or one image file.

Clarify reads every file under the dataset prefix (spec clarify-contract.md 1.2); the launcher has already
downloaded an S3 prefix into the dataset folder. Each image file is one record: the ``Dataset`` has one
feature, ``image``, holding the file's path relative to the dataset folder, in sorted order, so that
records, outputs and checkpoints keep one order whatever the file system lists first.

Files are decoded with Pillow to RGB (grey and palette images are converted, an alpha channel dropped:
the model gets what a JPEG can carry). Anything that is not a readable JPEG or PNG is an error naming the
file: a job never skips an input silently.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from analyzer.data.dataset import Dataset
from analyzer.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_COLUMN = "image"  # the one feature of an image dataset: the file's path relative to the dataset
# Largest image Lucent decodes (pixels): Pillow's own decompression-bomb limit, stated here so the error
# names the file and the limit instead of a Pillow warning.
MAX_PIXELS = 89_478_485


def list_image_files(path: Path) -> list[Path]:
    """The image files of a dataset: ``path`` itself, or every file under the folder (recursively, sorted,
    hidden files and folders skipped). A file that is not ``.jpg`` / ``.jpeg`` / ``.png`` is an error."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        raise DataError(f"image dataset {path} does not exist")
    if not files:
        raise DataError(f"image dataset {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    for file in files:
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"image dataset file {file} is not an image file: application/x-image datasets hold "
                            f"{', '.join(IMAGE_SUFFIXES)} files only")
    return files


def check_pixels(picture: Any, what: str) -> None:
    """Refuse a picture larger than ``MAX_PIXELS`` from its header, before anything is decoded.

    Pillow only warns (``DecompressionBombWarning``) between its limit and twice it, and would decode such
    a picture: a few kilobytes of PNG could claim gigabytes of pixels. ``what`` names the file or body.
    """
    if picture.width * picture.height > MAX_PIXELS:
        raise DataError(f"{what} has {picture.width} x {picture.height} pixels, more than Lucent decodes "
                        f"({MAX_PIXELS:,})")


@contextmanager
def open_picture(source: Path | IO[bytes], what: str) -> Iterator[Any]:
    """``PIL.Image.open(source)`` with its size checked (``check_pixels``) before the caller decodes it."""
    from PIL import Image

    with warnings.catch_warnings():  # Pillow's own warning for a picture check_pixels refuses by name
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            picture = Image.open(source)
        except Image.DecompressionBombError:  # Pillow refuses past twice its limit, before we can look
            raise DataError(f"{what} has more pixels than Lucent decodes ({MAX_PIXELS:,}; Pillow refused to open "
                            "it as a decompression bomb)") from None
    with picture:
        check_pixels(picture, what)
        yield picture


def to_rgb(picture: Any, what: str) -> np.ndarray:
    """A decoded picture as ``(height, width, 3)`` uint8 RGB, deep pictures scaled to 8 bits.

    ``convert("RGB")`` clips a 16-bit grey picture (Pillow modes ``I;16*`` and ``I``, which is what a 16-bit
    grey PNG gives) at 255, so nearly every pixel would turn white: such a picture is scaled instead,
    value // 256 (65535 -> 255), values of an ``I`` picture first clipped to 0..65535 (Lucent's choice:
    JPEG and PNG hold at most 16 bits). A floating-point picture (mode ``F``, no JPEG or PNG gives one)
    has no agreed scale: refused, naming ``what``.
    """
    mode = picture.mode
    if mode == "F":
        raise DataError(f"{what} holds floating-point pixels (mode F), which Lucent cannot scale to 8 bits")
    if mode == "I" or mode.startswith("I;16"):
        deep = np.asarray(picture).astype(np.int64)
        grey = (np.clip(deep, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as ``(height, width, 3)`` uint8 RGB; ``DataError`` naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with strict_decoding(), open_picture(path, f"image {path}") as opened:
            if opened.format not in ("JPEG", "PNG"):
                raise DataError(f"image {path} is {opened.format or 'an unknown format'}, not JPEG or PNG")
            return to_rgb(opened, f"image {path}")
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Pillow raising on a truncated file while the block runs.

    WeasyPrint (the PDF report) sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` for the whole process
    when it is imported, after which Pillow fills the missing part of a truncated JPEG with grey silently.
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def image_dataset(dataset_path: Path) -> Dataset:
    """The ``Dataset`` of an image folder: one record per file, feature ``image`` = its relative path.

    Every file is decoded here (``load``: ``verify`` alone does not decode JPEG data, so a truncated JPEG
    would pass it), so that an unreadable one fails ``lucent validate`` and the job before any model call.
    """
    dataset_path = Path(dataset_path)
    files = list_image_files(dataset_path)
    root = dataset_path if dataset_path.is_dir() else dataset_path.parent
    from PIL import UnidentifiedImageError

    for file in files:
        try:
            with strict_decoding(), open_picture(file, f"image {file}") as opened:
                opened.verify()  # PNG chunk checksums
            with strict_decoding(), open_picture(file, f"image {file}") as opened:
                opened.load()  # the pixel data itself: a truncated JPEG fails here
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise DataError(f"cannot read image {file}: {error}") from None
    names = [os.fspath(file.relative_to(root)) for file in files]
    log.info("Image dataset %s: %d image(s)", dataset_path, len(names))
    return Dataset(source=str(dataset_path), n_rows=len(names), headers=[IMAGE_COLUMN], feature_names=[IMAGE_COLUMN],
                   features=pd.DataFrame({IMAGE_COLUMN: pd.Series(names, dtype=object)}))


def image_root(dataset: Dataset) -> Path:
    """The folder the dataset's relative image paths are taken from."""
    source = Path(dataset.source)
    return source if source.is_dir() else source.parent


__all__ = ["IMAGE_COLUMN", "IMAGE_SUFFIXES", "MAX_PIXELS", "check_pixels", "image_dataset", "open_picture", "image_root", "list_image_files", "read_image", "to_rgb"]
