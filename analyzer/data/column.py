"""``Column``: a dataset column held as its distinct values plus one integer code per row.

Every bias metric depends on a row only through the values of a few columns (facet, label,
predicted label, group), so a column is stored once per distinct value and once per row as a small
integer. Deciding "is this value positive / sensitive" then costs one comparison per distinct value,
and every count is a ``np.bincount`` over codes. This is what keeps a 10M-row job in a few hundred MB.

``uniques`` carries the dtype pandas would give the whole column (the column-typing rules of
Clarify are stated in pandas dtypes), so ``to_series()`` rebuilds exactly the Series that reading the
full column into pandas would have produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MISSING = -1  # code of a missing value (NaN / None / empty cell)


@dataclass(frozen=True, eq=False)
class Column:
    """A column as ``uniques`` (typed, no missing values, order of first appearance) and ``codes``.

    ``codes[i]`` is the position in ``uniques`` of row ``i``'s value, or ``MISSING``.
    Invariant: codes are assigned in order of first appearance, so ``uniques`` lists the values
    in the order ``Series.unique()`` would.
    """

    name: str
    uniques: pd.Series
    codes: np.ndarray

    @classmethod
    def from_series(cls, series: pd.Series, name: str | None = None) -> Column:
        """Build a column from a pandas Series (any index; row order is kept)."""
        codes, uniques = pd.factorize(series, use_na_sentinel=True, sort=False)
        if isinstance(series.dtype, pd.CategoricalDtype):
            uniques = pd.Series(pd.Categorical(uniques, categories=series.cat.categories))
        else:
            uniques = pd.Series(uniques, dtype=series.dtype if len(uniques) else series.dtype)
        return cls(str(series.name if name is None else name), uniques.reset_index(drop=True),
                   codes.astype(np.int32 if len(uniques) < 2**31 else np.int64))

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def dtype(self):
        return self.uniques.dtype

    @property
    def count(self) -> int:
        """Number of non-missing rows (``Series.count()``)."""
        return int(np.count_nonzero(self.codes != MISSING))

    @property
    def nunique(self) -> int:
        """Number of distinct non-missing values (``Series.nunique()``)."""
        return len(self.uniques)

    def has_missing(self) -> bool:
        return bool(np.any(self.codes == MISSING))

    def missing_position(self) -> int | None:
        """Where NaN would stand in ``Series.unique()`` (order of first appearance), or None."""
        missing_rows = np.flatnonzero(self.codes == MISSING)
        if len(missing_rows) == 0:
            return None
        before = self.codes[: missing_rows[0]]
        return int(before.max()) + 1 if len(before) else 0

    def row_mask(self, unique_mask: np.ndarray) -> np.ndarray:
        """Per-row booleans from per-unique booleans; missing rows are False."""
        unique_mask = np.asarray(unique_mask, dtype=bool)
        lookup = np.append(unique_mask, False)  # index -1 (MISSING) reads the trailing False
        return lookup[self.codes]

    def take(self, rows: np.ndarray) -> Column:
        """The column restricted to ``rows`` (positions), keeping all uniques."""
        return Column(self.name, self.uniques, self.codes[rows])

    def to_series(self) -> pd.Series:
        """The full pandas Series (missing rows as NaN, dtype as pandas would infer for the column)."""
        if not self.has_missing():
            values = self.uniques.take(self.codes)
            return pd.Series(values.to_numpy() if not isinstance(self.dtype, pd.CategoricalDtype)
                             else values.array, name=self.name, dtype=self.dtype)
        if len(self.uniques) == 0:  # every row missing (what the concat below gives, without its FutureWarning)
            return pd.Series(np.full(len(self.codes), np.nan), name=self.name)
        with_nan = pd.concat([self.uniques, pd.Series([np.nan])], ignore_index=True)
        out = with_nan.take(np.where(self.codes == MISSING, len(self.uniques), self.codes))
        return out.reset_index(drop=True).rename(self.name)
