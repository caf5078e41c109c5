"""The local engine: today's code path (the streaming readers, ``numpy.bincount``, the process pool).

It adds nothing of its own: each operation calls the one implementation the job always used, so
choosing it changes no byte of any output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analyzer.config import AnalysisConfig
from analyzer.data import Dataset, load_dataset

if TYPE_CHECKING:
    import pandas as pd

    from analyzer.explain.shards import ShapSettings, ShardTask, TextShapSettings
    from analyzer.predict import ModelEndpoint, Predictions


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

    def map_predictions(self, endpoint: ModelEndpoint, frames: Iterator[pd.DataFrame]) -> Iterator[Predictions]:
        """One client in this process, frame after frame (its requests concurrent within a frame)."""
        from analyzer.explain.pdp import predict_frames

        return predict_frames(endpoint, frames)

    def flip_test(self, config: AnalysisConfig, dataset_path: Path, dataset: Dataset, facet: str,
                  sensitive: np.ndarray, predicted: np.ndarray) -> float:
        """Today's Flip Test on the feature matrix ``load_dataset(need_features=True)`` read."""
        from analyzer.bias.flip_test import FT
        from analyzer.bias.report import FT_NO_FEATURES

        del config, dataset_path  # the rows are in ``dataset.features``
        features = dataset.features.drop(columns=[facet], errors="ignore") if dataset.features is not None else None
        if features is None:
            raise ValueError(FT_NO_FEATURES)
        return FT(features, sensitive, predicted)

    def close(self) -> None:
        """Nothing to release: the worker pool lives only while shards run."""
