"""Contingency counts behind every bias metric, from one ``np.bincount`` over the rows.

A row matters to the metrics only through four small codes: its facet slot (which distinct facet
value, or which side of a split), its group slot (position of its group value in sorted order),
its label (positive or not) and its prediction (positive or not). ``ContingencyTable`` counts the
rows of every combination in one pass; the sides a / d of any sensitive group are then sums of
slices of that table, so a one-vs-all report over many facet values costs a single pass over the
data.

A row may stand for several rows (``weighted_rows``): an engine that counts elsewhere (Spark: one
GROUP BY) hands over one row per distinct combination of role values and how many rows it stands for,
and every table is then the weighted bincount of the same codes, decided by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from analyzer.bias.columns import FacetGroup
from analyzer.bias.metrics import Confusion, GroupCounts
from analyzer.data.column import MISSING, Column

# Largest table (in cells) built for a one-vs-all report; beyond it each group is counted on its own.
MAX_TABLE_CELLS = 1 << 24

_ROW_WEIGHTS: ContextVar[np.ndarray | None] = ContextVar("lucent_row_weights", default=None)


@contextmanager
def weighted_rows(weights: np.ndarray | None) -> Iterator[None]:
    """Within this block, row ``i`` of every table counts ``weights[i]`` times (None: once).

    A context rather than an argument so that the bias report (``report.py``) and the metrics stay
    the one implementation for both engines; the engine that grouped the rows sets it around them.
    """
    token = _ROW_WEIGHTS.set(None if weights is None else np.asarray(weights, dtype=np.int64))
    try:
        yield
    finally:
        _ROW_WEIGHTS.reset(token)


def count_cells(index: np.ndarray, n_cells: int) -> np.ndarray:
    """Rows per cell (``index``: each row's cell), weighted by ``weighted_rows`` when set; int64 counts."""
    weights = _ROW_WEIGHTS.get()
    if weights is None:
        return np.bincount(index, minlength=n_cells)
    if len(weights) != len(index):
        raise AssertionError(f"{len(weights)} row weights for {len(index)} rows")
    # float64 sums are exact up to 2**53 rows per cell
    return np.rint(np.bincount(index, weights=weights, minlength=n_cells)).astype(np.int64)


@dataclass(frozen=True)
class GroupSlots:
    """The group variable as per-row slots: 0 = missing, 1.. = groups in ``np.unique`` order.

    ``n_slots`` may exceed the number of groups + 1 by one empty trailing slot: ``np.unique`` of
    a float group variable with missing values returns one NaN, which Clarify weights with 0.
    """

    rows: np.ndarray
    n_slots: int

    @classmethod
    def from_column(cls, group: Column) -> GroupSlots:
        """Sort the distinct group values as ``np.unique`` does.

        Raises the ``TypeError`` of ``np.unique`` when the values cannot be ordered (for example
        strings with missing values); Clarify reports it as the error of CDDL / CDDPL.
        """
        values = np.asarray(group.uniques)
        extra_slots = 0
        if group.has_missing():
            if values.dtype.kind in "fcmM":
                extra_slots = 1
            else:
                # np.unique compares NaN with the other values, which fails for strings; the
                # message names the operand types in the order the sort met them, so sort the
                # rows themselves (rare: object groups with missing values).
                np.unique(group.to_series().to_numpy())
                extra_slots = 1
        _, inverse = np.unique(values, return_inverse=True)
        n_sorted = int(inverse.max()) + 1 if len(inverse) else 0
        lookup = np.concatenate([[0], inverse.reshape(-1) + 1]).astype(np.int32)
        return cls(lookup[group.codes + 1], 1 + n_sorted + extra_slots)


@dataclass(frozen=True)
class Split:
    """Counts of one sensitive group d against the rest a."""

    a: Confusion
    d: Confusion
    cells_d: np.ndarray  # [group slot, label, prediction] counts of d
    cells_all: np.ndarray  # same for all rows

    @property
    def overall(self) -> Confusion:
        return Confusion(*(x + y for x, y in zip(self.a, self.d, strict=True)))

    def groups(self, outcome_axis: int) -> GroupCounts:
        """Per-group counts for CDD; ``outcome_axis`` 0 = observed labels, 1 = predictions."""
        other = 2 - outcome_axis  # axis summed away in the [slot, label, prediction] arrays
        by_outcome_d = self.cells_d.sum(axis=other)  # [slot, outcome]
        by_outcome = self.cells_all.sum(axis=other)
        groups, groups_d = by_outcome[1:], by_outcome_d[1:]  # slot 0 holds rows without a group
        return GroupCounts(
            sizes=groups.sum(axis=1),
            positive=groups[:, 1],
            positive_d=groups_d[:, 1],
            negative=groups[:, 0],
            negative_d=groups_d[:, 0],
            n_positive=int(by_outcome[:, 1].sum()),
            n_negative=int(by_outcome[:, 0].sum()),
        )


class ContingencyTable:
    """Row counts indexed ``[facet slot, group slot, label, prediction]``.

    Parameters
    ----------
    facet_slots : per-row int array in ``[0, n_facet_slots)``.
    label : per-row bool array, True for a positive observed label.
    predicted : per-row bool array for predictions, or None (pre-training: all negative).
    groups : group slots, or None (one group holding every row, slot 1).
    """

    def __init__(self, facet_slots: np.ndarray, n_facet_slots: int, label: np.ndarray,
                 predicted: np.ndarray | None, groups: GroupSlots | None):
        n_group_slots = groups.n_slots if groups is not None else 2
        n_cells = n_facet_slots * n_group_slots * 4
        # Mixed-radix cell index, built in place in one array (the memory of a 10M-row job).
        index = facet_slots.astype(np.int32 if n_cells < 2**31 else np.int64)
        index *= n_group_slots
        index += groups.rows if groups is not None else 1
        index *= 2
        index += label
        index *= 2
        if predicted is not None:
            index += predicted
        counts = count_cells(index, n_cells)
        self.cells = counts.reshape(n_facet_slots, n_group_slots, 2, 2)
        self.cells_all = self.cells.sum(axis=0)

    @classmethod
    def cells_count(cls, n_facet_slots: int, groups: GroupSlots | None) -> int:
        return n_facet_slots * (groups.n_slots if groups is not None else 2) * 4

    def split(self, sensitive_slots: np.ndarray | int) -> Split:
        """Counts of d = the rows in one facet slot, or in the slots where a mask is True."""
        if isinstance(sensitive_slots, int | np.integer):
            cells_d = self.cells[sensitive_slots]
        else:
            cells_d = self.cells[np.asarray(sensitive_slots, dtype=bool)].sum(axis=0)
        cells_a = self.cells_all - cells_d
        return Split(Confusion.from_cells(cells_a.sum(axis=0)), Confusion.from_cells(cells_d.sum(axis=0)),
                     cells_d, self.cells_all)


def one_vs_all_slots(facet: Column) -> tuple[np.ndarray, int]:
    """Per-row facet slots for a one-vs-all table: 0 = missing value, 1 + code otherwise."""
    return facet.codes - MISSING, facet.nunique + 1


def one_vs_all_slot(facet_group: FacetGroup) -> np.ndarray | int:
    """Which one-vs-all slots hold d: one slot, or a mask (missing values are never in d)."""
    if facet_group.value_index is not None:
        return facet_group.value_index - MISSING
    return np.concatenate([[False], np.asarray(facet_group.sensitive, dtype=bool)])
