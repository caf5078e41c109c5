"""Boolean numpy masks of pyarrow arrays (null read as false), shared by the window merge's steps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def valid_mask(array: pa.Array) -> np.ndarray:
    return array.is_valid().to_numpy(zero_copy_only=False)


def true_mask(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)
