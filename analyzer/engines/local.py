"""The local engine: today's code path (the streaming readers, ``numpy.bincount``, the process pool).

It adds nothing of its own: each operation calls the one implementation the job always used, so
choosing it changes no byte of any output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from analyzer.config import AnalysisConfig
from analyzer.data import Dataset, load_dataset

if TYPE_CHECKING:
    from analyzer.explain.shards import ShapSettings, ShardTask, TextShapSettings


class LocalEngine:
    """Rows read on this machine; shards in this process or a pool of worker processes."""

    name = "local"

    def count_table(self, config: AnalysisConfig, dataset_path: Path, *, base_dir: Path | None = None) -> Dataset:
        """The role columns, one row per data row: ``load_dataset`` without the feature matrix."""
        return load_dataset(config, dataset_path, base_dir=base_dir)

    def map_shards(self, settings: ShapSettings | TextShapSettings, tasks: Iterator[ShardTask], workers: int,
                   finished: Callable[[int], None]) -> None:
        from analyzer.explain.shards import run_local_shards  # explain imports engines: no import cycle

        run_local_shards(settings, tasks, workers, finished)

    def close(self) -> None:
        """Nothing to release: the worker pool lives only while shards run."""
