"""Captured columns held dictionary-encoded until the window's join (``HeldColumn``), then accumulated as if
only the rows kept had been added."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.data.accumulate import ColumnAccumulator


class HeldColumn:
    """A captured column's chunks held dictionary-encoded (one small integer per row) until the window's
    join says which rows stay. ``accumulator`` then gives the ``ColumnAccumulator`` that adding only those
    rows, chunk by chunk, would have built: typing sees only the values of the rows kept."""

    def __init__(self, name: str):
        self.name = name
        self._chunks: list[pa.Array | tuple[np.ndarray, pa.Array]] = []

    def add(self, values: pa.Array) -> None:
        if values.null_count:  # not from the CSV readers (their string fields are never null): kept as is
            self._chunks.append(values)
            return
        encoded = pc.dictionary_encode(values)
        indices = encoded.indices.to_numpy()
        self._chunks.append((indices.astype(np.min_scalar_type(max(len(encoded.dictionary) - 1, 0))),
                             encoded.dictionary))

    def accumulator(self, keep: np.ndarray) -> ColumnAccumulator:
        """The rows where ``keep`` (one flag per row added, in order) is true, as a ``ColumnAccumulator``."""
        accumulator = ColumnAccumulator(self.name, pa.string())
        start = 0
        for chunk in self._chunks:
            n = len(chunk) if isinstance(chunk, pa.Array) else len(chunk[0])
            mask = keep[start:start + n]
            start += n
            if not mask.any():
                continue  # as a chunk whose records all lacked ground truth: never added
            if isinstance(chunk, pa.Array):
                accumulator.add(chunk.filter(pa.array(mask)))
            else:
                accumulator.add(compacted(chunk[0][mask], chunk[1]))
        self._chunks = []
        return accumulator


def compacted(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """What ``dictionary_encode`` gives for the values ``indices`` point to in ``dictionary``: only the
    entries used, in order of first use (the order ``ColumnAccumulator`` numbers the column's values by)."""
    n = len(indices)
    first = np.full(len(dictionary), n, dtype=np.int64)
    np.minimum.at(first, indices, np.arange(n, dtype=np.int64))
    used = np.flatnonzero(first < n)
    used = used[np.argsort(first[used])]
    renumber = np.zeros(len(dictionary), dtype=np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(renumber[indices], pa.int32()), dictionary.take(pa.array(used)))
