"""Aligning the rows of a side dataset (facet or predicted label dataset) with the main dataset.

With ``joinsource_name_or_index`` the rows are matched on that column's values, which must be present
and distinct in every dataset: a main row without a partner is an error, a side row without one is
ignored (logged). Without it, the datasets are aligned by row order and must have as many rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from analyzer.data.column import MISSING, Column
from analyzer.errors import DataError

logger = logging.getLogger(__name__)


def rows_by_order(main_rows: int, side_rows: int, *, main_source: str, side_source: str) -> None:
    """Check that a side dataset joined by row order has as many rows as the main dataset."""
    if main_rows != side_rows:
        raise DataError(
            f"{side_source} has {side_rows} rows but the dataset {main_source} has {main_rows}. Without "
            "`joinsource_name_or_index` the datasets are matched by row order and need the same number "
            "of rows; add an identifier column to both and set `joinsource_name_or_index`."
        )


def rows_by_id(main_ids: Column, side_ids: Column, *, main_source: str, side_source: str) -> np.ndarray:
    """For each main row, the position of the side row with the same joinsource value."""
    for ids, source in ((main_ids, main_source), (side_ids, side_source)):
        _check_ids(ids, source)
    side_row_of_unique = np.empty(side_ids.nunique, dtype=np.int64)
    side_row_of_unique[side_ids.codes] = np.arange(len(side_ids))
    side_unique_of_main_unique = pd.Index(side_ids.uniques).get_indexer(main_ids.uniques)
    unmatched = np.flatnonzero(side_unique_of_main_unique < 0)
    if len(unmatched):
        raise DataError(
            f"{len(unmatched)} of the {main_ids.nunique} joinsource values of {main_source} (column "
            f"{main_ids.name!r}) are not in {side_source}, e.g. {_plain(main_ids.uniques.iloc[unmatched[0]])!r}. "
            "Every row of the dataset needs a row with the same identifier in the side dataset."
        )
    extra = side_ids.nunique - main_ids.nunique
    if extra:
        logger.warning("%d rows of %s have a joinsource value that is not in %s; they are ignored.",
                       extra, side_source, main_source)
    return side_row_of_unique[side_unique_of_main_unique[main_ids.codes]]


def take_rows(column: Column, rows: np.ndarray) -> Column:
    """The column's values at ``rows``, with uniques and codes renumbered in the new first-appearance order."""
    taken = column.codes[rows]
    present = taken != MISSING
    old_codes, first_seen = np.unique(taken[present], return_index=True)
    in_order = old_codes[np.argsort(first_seen)]  # old codes in order of first appearance in ``taken``
    new_code_of_old = np.full(column.nunique + 1, MISSING, dtype=column.codes.dtype)
    new_code_of_old[in_order] = np.arange(len(in_order), dtype=column.codes.dtype)
    codes = new_code_of_old[taken]  # MISSING (-1) reads the trailing MISSING entry
    uniques = column.uniques.take(in_order).reset_index(drop=True)
    return Column(column.name, uniques, codes)


def _check_ids(ids: Column, source: str) -> None:
    missing = np.flatnonzero(ids.codes == MISSING)
    if len(missing):
        raise DataError(
            f"{len(missing)} rows of {source} have no joinsource value (column {ids.name!r}), the first "
            f"is data row {missing[0] + 1}. Every row needs an identifier."
        )
    counts = np.bincount(ids.codes, minlength=ids.nunique)
    duplicated = np.flatnonzero(counts > 1)
    if len(duplicated):
        raise DataError(
            f"{len(duplicated)} joinsource values of {source} (column {ids.name!r}) appear on more than one "
            f"row, e.g. {_plain(ids.uniques.iloc[duplicated[0]])!r} ({counts[duplicated[0]]} rows). The joinsource "
            "column must identify each row."
        )


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (``1``, not ``np.int64(1)``) for messages."""
    return value.item() if isinstance(value, np.generic) else value
