"""The interface between the format readers (CSV, JSON, Parquet) and the loader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from analyzer.data.column import Column
from analyzer.progress import Progress


@dataclass
class TableData:
    """What one pass over a table returns."""

    n_rows: int
    columns: dict[str, Column] = field(default_factory=dict)  # role columns, as compact Columns
    values: dict[str, pd.Series] = field(default_factory=dict)  # feature-only columns, as plain Series


class Table(Protocol):
    """A dataset in any format, seen as a table: ``headers`` name its columns."""

    source: str  # what the messages call the dataset (a path, and the config key for side datasets)
    files: list[Path]  # the data files, in reading order
    headers: list[str]
    role_columns: dict[str, str]  # role -> header, for roles the format locates itself (JSON label)

    @property
    def n_files(self) -> int: ...

    def read(self, columns: Sequence[str], values: Sequence[str] = (), progress: Progress | None = None) -> TableData:
        """Read ``columns`` as ``Column`` objects and ``values`` as Series (header names, disjoint);
        ``progress`` counts the rows as they are read (formats read at opening count nothing)."""
        ...
