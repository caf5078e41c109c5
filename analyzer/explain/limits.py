"""Limits checked before any model call: explanations that cannot fit in memory, and impossible baselines.

A ``num_samples`` or ``grid_resolution`` too large for the machine would otherwise end in an
out-of-memory kill or a ``MemoryError`` traceback hours into a job; here it is refused up front (by
``lucent run`` and ``lucent validate`` alike) with the estimate in the message.

The estimates are of the dominant allocations, measured with ``tracemalloc`` (docs/kernel-shap.md,
"Limits"):

* Kernel SHAP, per process (each worker explains its records with its own copy): the coalition design
  and its solve operators, about ``C x M x (24 + 24 k)`` bytes for ``C`` coalitions, ``M`` players and
  ``k`` model outputs (masks, the float copies the solve multiplies, the per-pair terms behind the
  standard errors and their running sum), plus the synthetic rows of at least one record,
  ``C x b`` rows of ``P`` columns (built, then copied into the model call).
* Partial dependence: every grid value's copy of the record sample, ``grid x records x P`` values,
  held as a frame, as rows for the model client and as encoded requests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from analyzer.config.model import PdpMethod, ShapMethod
from analyzer.data import Dataset
from analyzer.errors import UserError

from .design import design_coalitions
from .pdp import MAX_RECORDS as PDP_MAX_RECORDS
from .pdp import grid_points

# cgroup v2, then v1: a container's memory limit, which is lower than the machine's memory.
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
PY_STRING_BYTES = 57  # a Python str's own size before its characters (49) plus the pointer to it


def memory_limit_bytes() -> int:
    """The memory this job may use: the machine's physical memory, or the container's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMIT_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def coalitions(num_samples: int | None, n_players: int) -> int:
    """Coalitions a design of ``n_players`` evaluates (``design.make_design``: complementary pairs, capped
    at all ``2**M - 2``)."""
    return design_coalitions(n_players, num_samples)


def shap_bytes(n_coalitions: int, n_players: int, n_columns: int, n_baseline: int, n_outputs: int = 1,
               row_extra_bytes: int = 0) -> int:
    """Peak bytes of one process explaining records with this design (module docstring).

    ``row_extra_bytes``: what one synthetic row holds beyond its ``n_columns`` 8-byte cells (the new
    strings of a text row).
    """
    design = n_players * (24 + 24 * n_outputs)
    rows = n_baseline * (16 * n_columns + 8 * n_outputs + row_extra_bytes)
    return n_coalitions * (design + rows)


def check_shap_memory(shap: ShapMethod, *, n_players: int, n_columns: int, n_baseline: int, n_outputs: int = 1,
                      row_extra_bytes: int = 0, players: str = "features") -> None:
    """Refuse ``methods.shap`` when one process's estimate exceeds the memory (UserError with both numbers).

    ``n_players``: explained features (tabular) or the most players of any record (text).
    """
    n_coalitions = coalitions(shap.num_samples, n_players)
    need = shap_bytes(n_coalitions, n_players, n_columns, n_baseline, n_outputs, row_extra_bytes)
    have = memory_limit_bytes()
    if need <= have:
        return
    per_coalition = max(1, need // max(1, n_coalitions))
    budget = ("" if shap.num_samples is not None
              else f" (the default budget 2 x {n_players} + 2048; set a smaller methods.shap.num_samples)")
    raise UserError(
        f"methods.shap.num_samples: {n_coalitions:,} coalitions x {n_players:,} {players} x {n_baseline} baseline "
        f"row(s) would need ~{_size(need)} for the coalition design and one record's synthetic rows{budget}; "
        f"this machine has {_size(have)}. At most ~{have // per_coalition:,} coalitions fit")


def check_num_clusters(shap: ShapMethod, dataset: Dataset) -> None:
    """``num_clusters`` cannot exceed the rows the baseline is clustered from."""
    if shap.baseline is None and shap.num_clusters is not None and shap.num_clusters > dataset.n_rows:
        raise UserError(f"methods.shap.num_clusters: {shap.num_clusters:,} clusters asked for, but the dataset has "
                        f"only {dataset.n_rows:,} rows to cluster; use at most {dataset.n_rows:,}")


def check_pdp_memory(pdp: PdpMethod, dataset: Dataset, columns: Sequence[int] | None = None) -> None:
    """Refuse ``methods.pdp`` when the grid's rows for one feature cannot fit in memory.

    ``columns``: the features PDP computes a grid for (free-text ones left out: they get none); None: not
    known yet (SHAP's top features): a grid of ``grid_resolution`` values, and PDP checks again with them.
    A categorical feature's grid has one value per distinct value, not ``grid_resolution``.
    """
    features = dataset.features
    n_columns = len(dataset.feature_names)
    records = min(dataset.n_rows, PDP_MAX_RECORDS)
    if columns is not None and not columns:
        return  # every feature is free text: no grid at all
    grid, feature = pdp.grid_resolution, None
    if columns and features is not None:
        grid, j = max((grid_points(features.iloc[:, j], pdp.grid_resolution), j) for j in columns)
        feature = dataset.feature_names[j] if features.iloc[:, j].dtype.kind not in "biuf" else None
    need = 3 * 8 * grid * records * n_columns
    have = memory_limit_bytes()
    if need > have:
        fit = max(1, have // (3 * 8 * records * max(1, n_columns)))
        if feature is not None:
            raise UserError(
                f"methods.pdp.features: {feature!r} has {grid:,} distinct values (one grid value each) x {records:,} "
                f"records x {n_columns} features would need ~{_size(need)} for its model rows; this machine has "
                f"{_size(have)}. At most ~{fit:,} grid values fit: leave it out of methods.pdp.features")
        raise UserError(
            f"methods.pdp.grid_resolution: {grid:,} grid values x {records:,} records x "
            f"{n_columns} features would need ~{_size(need)} for one feature's model rows; this machine has "
            f"{_size(have)}. At most ~{fit:,} grid values fit")


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


__all__ = ["check_num_clusters", "check_pdp_memory", "check_shap_memory", "coalitions", "memory_limit_bytes",
           "shap_bytes"]
