"""Engines: where the job's two heavy operations run, chosen by configuration only.

The pipeline needs exactly two things that grow with the data:

* ``count_table``: the contingency counts every bias metric except the Flip Test is computed from.
  The bias report (``analyzer.bias.report``) decides positive / sensitive per distinct value and
  counts rows per cell. An engine hands it the role columns as a ``Dataset``: the local engine one
  row per data row (today's reader, then ``numpy.bincount``); the Spark engine one row per distinct
  combination of role values, with how many rows each stands for (``GroupedRows``, one GROUP BY on
  the cluster), counted by the same code under ``weighted_rows``.
* ``map_shards``: run the fixed SHAP shards (``analyzer.explain.shards``) and checkpoint each result;
  the job assembles them from the checkpoints, so the numbers cannot depend on the engine;
  ``map_predictions``: the model's scores for frames of rows (PDP's grids), averaged on the driver.

An engine whose rows stay where it counts them may also offer ``predict_groups(config, dataset,
endpoint) -> Column`` (Spark does; the pipeline looks for it): post-training predictions made next to
the counts (a stage calling the model through ``endpoint.client()``), the predicted label joining the
role columns, ``dataset`` (a ``GroupedRows``) regrouped in place.

The engine is chosen, in this order, by ``LUCENT_ENGINE`` (what ``lucent run --engine`` sets), the
Lucent key ``"lucent": {"engine": ...}`` of ``analysis_config.json``, and ``SPARK_REMOTE`` (a Spark
Connect URL implies Spark); else the local engine. The Spark master comes from ``--spark-master`` /
``LUCENT_SPARK_MASTER``, ``"lucent": {"spark_master": ...}``, ``SPARK_REMOTE``, or Spark's own
configuration (``spark-submit``, ``spark-defaults.conf``). Nothing outside ``analyzer.engines.spark``
imports pyspark. See docs/spark.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from analyzer.bias.counts import weighted_rows
from analyzer.config import AnalysisConfig
from analyzer.data import Column, Dataset
from analyzer.data.column import MISSING
from analyzer.environment import environment_set
from analyzer.errors import UserError

from .local import LocalEngine

if TYPE_CHECKING:
    import pandas as pd

    from analyzer.explain.shards import ShapSettings, ShardTask, TextShapSettings
    from analyzer.predict import ModelEndpoint, Predictions

ENGINE_ENV = "LUCENT_ENGINE"
SPARK_MASTER_ENV = "LUCENT_SPARK_MASTER"
SPARK_REMOTE_ENV = "SPARK_REMOTE"
LUCENT_KEY = "lucent"  # Lucent's own top-level key in analysis_config.json; SDK configs never have it
ENGINES = ("local", "spark")


class Engine(Protocol):
    """What the pipeline asks of an engine (see the module docstring)."""

    name: str

    def count_table(self, config: AnalysisConfig, dataset_path: Path, *, base_dir: Path | None = None) -> Dataset:
        """The role columns (label, predicted label, facets, group) that the bias counts are made from,
        without the feature matrix; a ``GroupedRows`` when rows were grouped by the engine."""
        ...

    def map_shards(self, settings: ShapSettings | TextShapSettings, tasks: Iterator[ShardTask], workers: int,
                   finished: Callable[[int], None]) -> None:
        """Explain each shard of ``tasks`` and write its checkpoint (``shards.write_checkpoint``), calling
        ``finished(index)`` in this process as each is written. ``workers``: this machine's processes."""
        ...

    def map_predictions(self, endpoint: ModelEndpoint, frames: Iterator[pd.DataFrame]) -> Iterator[Predictions]:
        """The model's predictions for each frame of feature rows, in order, under
        ``predictor.max_concurrency`` (PDP's grids: ``analyzer.explain.pdp``). ``frames`` is read lazily."""
        ...

    def flip_test(self, config: AnalysisConfig, dataset_path: Path, dataset: Dataset, facet: str,
                  sensitive: np.ndarray, predicted: np.ndarray) -> float:
        """The Flip Test of facet ``facet`` (its feature column left out) where ``sensitive`` / ``predicted``
        are the bias report's decisions per row of ``dataset`` (a ``GroupedRows``: per combination). Local:
        ``analyzer.bias.flip_test.FT`` on the loaded features; Spark: exact while facet a fits a broadcast,
        else on a sample of d (a ``FlipTestValue`` with its interval). docs/spark.md, "Flip Test"."""
        ...

    def close(self) -> None:
        """Release what the engine holds (a Spark session); it may be used again afterwards."""
        ...


@dataclass
class GroupedRows(Dataset):
    """Role columns with one row per distinct combination of role values, in order of first appearance
    in the data (so ``Column.uniques`` keep Clarify's order), and ``weights[i]``: the data rows row ``i``
    stands for. ``n_rows`` is the number of data rows. Its columns are ``WeightedColumn``s."""

    weights: np.ndarray | None = None
    # The engine's Flip Test of these rows, (facet, sensitive, predicted) -> FT, when the feature rows stay
    # in the engine (Spark); the bias report calls it through ``analyzer.bias.flip_test.DeferredFeatures``.
    flip_test: Callable[[str, np.ndarray, np.ndarray], float] | None = None


@dataclass(frozen=True, eq=False)
class WeightedColumn(Column):
    """A role column of ``GroupedRows``: row ``i`` stands for ``weights[i]`` data rows, so ``count`` (the
    non-missing data rows, which Clarify's column typing divides the distinct values by) is weighted."""

    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def weighted(cls, column: Column, weights: np.ndarray) -> WeightedColumn:
        return cls(column.name, column.uniques, column.codes, np.asarray(weights, dtype=np.int64))

    @property
    def count(self) -> int:
        return int(self.weights[self.codes != MISSING].sum())


def row_weights(dataset: Dataset) -> np.ndarray | None:
    """The rows each row of ``dataset`` stands for (``GroupedRows``), or None: one each."""
    return dataset.weights if isinstance(dataset, GroupedRows) else None


@contextmanager
def counted_rows(dataset: Dataset) -> Iterator[None]:
    """Count ``dataset``'s rows with their weights in the bias tables built inside this block."""
    with weighted_rows(row_weights(dataset)):
        yield


@dataclass(frozen=True)
class EngineChoice:
    """The engine a job runs on and where that was decided (named in errors)."""

    name: str
    master: str | None = None
    source: str = "default"


def engine_choice(config: AnalysisConfig | None = None) -> EngineChoice:
    """The engine configured by the environment and ``config``'s ``"lucent"`` key (module docstring)."""
    lucent: Any = (config.raw.get(LUCENT_KEY) if config is not None else None) or {}
    if not isinstance(lucent, dict):
        raise UserError(f"'{LUCENT_KEY}' in the analysis config must be an object such as "
                        '{"engine": "spark"}, got ' + repr(lucent))
    remote = os.environ.get(SPARK_REMOTE_ENV) or None
    if os.environ.get(ENGINE_ENV):
        name, source = os.environ[ENGINE_ENV], ENGINE_ENV
    elif lucent.get("engine") is not None:
        name, source = lucent["engine"], f"{LUCENT_KEY}.engine"
    elif remote:
        name, source = "spark", SPARK_REMOTE_ENV
    else:
        return EngineChoice("local")
    name = str(name).strip().lower()
    if name not in ENGINES:
        raise UserError(f"{source}: unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    master = os.environ.get(SPARK_MASTER_ENV) or lucent.get("spark_master") or remote
    if master is not None and not isinstance(master, str):
        raise UserError(f"{LUCENT_KEY}.spark_master must be a string such as \"spark://host:7077\", got {master!r}")
    return EngineChoice(name, master if name == "spark" else None, source)


_engines: dict[EngineChoice, Engine] = {}
_engines_lock = threading.Lock()


def job_engine(config: AnalysisConfig | None = None) -> Engine:
    """The engine for a job with ``config`` (one per process and choice: a Spark session is reused)."""
    choice = engine_choice(config)
    key = EngineChoice(choice.name, choice.master)
    with _engines_lock:
        if key not in _engines:
            if choice.name == "local":
                _engines[key] = LocalEngine()
            else:
                from .spark import SparkEngine

                _engines[key] = SparkEngine(choice.master)
        return _engines[key]


def close_engines() -> None:
    """Close every engine this process opened (tests; a job process just exits)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.close()


def adopt_engine(engine: Engine, master: str | None) -> None:
    """Make ``engine`` the one jobs with this Spark master use (a test's module-wide session)."""
    with _engines_lock:
        _engines[EngineChoice(engine.name, master)] = engine


def engine_arguments(engine: str | None, spark_master: str | None) -> AbstractContextManager[None]:
    """``lucent run --engine X --spark-master M``: the same settings as ``LUCENT_ENGINE`` /
    ``LUCENT_SPARK_MASTER``, for the duration of the run (restored after: tests call ``main`` often)."""
    return environment_set({ENGINE_ENV: engine, SPARK_MASTER_ENV: spark_master})


__all__ = ["ENGINES", "Engine", "EngineChoice", "GroupedRows", "LocalEngine", "WeightedColumn", "counted_rows", "engine_arguments",
           "engine_choice", "job_engine", "row_weights"]
