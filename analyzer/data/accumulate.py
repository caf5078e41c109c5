"""Build a ``Column`` from a column read chunk by chunk, without ever holding the full column.

Each chunk (an Arrow array: raw CSV field strings, or typed Parquet values) is dictionary-encoded on
arrival, which keeps only its distinct values and one small integer per row. ``finish`` asks a
format-specific ``to_pandas`` for the pandas value of every chunk-dictionary entry, typed from all of
them at once, then factorizes those typed values into the column's uniques: two raw values can be one
pandas value (``"1"`` and ``"1.0"`` in a float column), and the codes must follow the first appearance
of the typed value.

The dtype is decided once, from the distinct values of the WHOLE column, which is what makes the result
independent of where chunk boundaries fall.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.data.column import MISSING, Column

# to_pandas(values, has_null) -> the pandas value of each Arrow value (NaN where missing), with the dtype
# pandas would give the whole column; ``values`` holds every distinct value of the column (some more
# than once), and ``has_null`` says whether the column also has Arrow nulls.
ToPandas = Callable[[pa.Array, bool], pd.Series]


class ColumnAccumulator:
    """Collects one column chunk by chunk; ``finish`` returns the ``Column``."""

    def __init__(self, name: str, value_type: pa.DataType):
        self.name = name
        self.value_type = value_type
        self._dictionaries: list[pa.Array] = []  # then, once typed, their sizes
        self._indices: list[np.ndarray | None] = []  # per chunk, positions in that chunk's dictionary, -1 = null
        self._has_null = False

    @property
    def n_chunks(self) -> int:
        return len(self._dictionaries)

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        encoded = pc.dictionary_encode(values)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        for chunk in chunks:
            indices = chunk.indices
            if indices.null_count:
                self._has_null = True
                indices = indices.fill_null(-1)
            # Chunk dictionaries are small for the usual role columns: int8 codes cost 1 byte per row.
            self._indices.append(indices.to_numpy().astype(_smallest_int(len(chunk.dictionary))))
            self._dictionaries.append(chunk.dictionary)

    def truncate(self, n_chunks: int) -> None:
        """Forget the chunks added after the first ``n_chunks`` (a file is being read again)."""
        del self._dictionaries[n_chunks:], self._indices[n_chunks:]

    def finish(self, to_pandas: ToPandas) -> Column:
        """The column as a ``Column``: typed uniques in order of first appearance, and per-row codes."""
        typed = self._typed_entries(to_pandas)
        # Factorizing the typed entries merges the values repeated across chunks (hashing typed values
        # in pandas is several times faster than hashing millions of strings in Arrow).
        entries = Column.from_series(typed, name=self.name)
        missing = np.array([MISSING], dtype=entries.codes.dtype)
        return Column(self.name, entries.uniques, self._per_row(entries.codes, missing))

    def finish_values(self, to_pandas: ToPandas) -> pd.Series:
        """The column as a plain Series (what ``finish().to_series()`` gives, without the hashing)."""
        typed = self._typed_entries(to_pandas)
        if not self._has_null and not isinstance(typed.dtype, pd.api.extensions.ExtensionDtype):
            values = typed.to_numpy()
            return pd.Series(self._per_row(values, np.empty(1, dtype=values.dtype)), name=self.name)
        # Nulls may change the dtype (int -> float64): let pandas' take fill them.
        positions = self._per_row(np.arange(len(typed)), np.array([-1]))
        values = typed.array if isinstance(typed.dtype, pd.api.extensions.ExtensionDtype) else typed.to_numpy()
        return pd.Series(pd.api.extensions.take(values, positions, allow_fill=True), name=self.name)

    def _typed_entries(self, to_pandas: ToPandas) -> pd.Series:
        """The pandas value of every chunk-dictionary entry, chunk after chunk.

        A value's first entry is its first appearance in the column, so factorizing these entries
        gives uniques in the column's order of first appearance.
        """
        entries = _concat(self._dictionaries, self.value_type)
        self._dictionaries = [len(d) for d in self._dictionaries]  # only the sizes are needed from now on
        typed = to_pandas(entries, self._has_null)
        assert len(typed) == len(entries), "to_pandas must return one value per entry"
        del entries
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed blocks otherwise
        return typed.reset_index(drop=True)

    def _per_row(self, entry_values: np.ndarray, null_value: np.ndarray) -> np.ndarray:
        """``entry_values`` spread to the rows (each row reads its entry), ``null_value[0]`` for nulls.

        Consumes the accumulated chunks, releasing each chunk's codes once copied to keep the peak low.
        """
        n_rows = sum(len(indices) for indices in self._indices)
        out = np.empty(n_rows, dtype=entry_values.dtype)
        row = entry = 0
        for chunk, (indices, n_entries) in enumerate(zip(self._indices, self._dictionaries, strict=True)):
            self._indices[chunk] = None
            lookup = np.concatenate([entry_values[entry:entry + n_entries], null_value])
            out[row:row + len(indices)] = lookup[indices]  # index -1 (null) reads the trailing null_value
            row += len(indices)
            entry += n_entries
        self._indices, self._dictionaries = [], []
        return out


def arrow_to_pandas(values: pa.Array, has_null: bool) -> pd.Series:
    """Typed values of an Arrow column as ``Table.to_pandas()`` gives the whole column (Parquet).

    The dtype depends on nulls (an int column with nulls becomes float64, a bool one object), so a
    null is appended while converting when the column has one.
    """
    if has_null:
        return pa.concat_arrays([values, pa.nulls(1, type=values.type)]).to_pandas().iloc[:-1]
    return values.to_pandas()


def _concat(arrays: list[pa.Array], value_type: pa.DataType) -> pa.Array:
    if not arrays:
        return pa.array([], type=value_type)
    if sum(a.nbytes for a in arrays) >= 2**31 - 2**24:  # 32-bit string offsets would overflow
        if pa.types.is_string(value_type):
            arrays = [a.cast(pa.large_string()) for a in arrays]
        elif pa.types.is_binary(value_type):
            arrays = [a.cast(pa.large_binary()) for a in arrays]
    return pa.concat_arrays(arrays)


def _smallest_int(n_values: int) -> type[np.signedinteger]:
    for dtype in (np.int8, np.int16, np.int32):
        if n_values <= np.iinfo(dtype).max:
            return dtype
    return np.int64
