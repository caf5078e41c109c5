"""How the Spark engine runs the SHAP shards under ``predictor.max_concurrency``, and PDP's predictions
as Spark tasks. No pyspark import here: the session comes from ``analyzer.engines.spark``.

The shards run as waves, one Spark job each, collected before the next starts: at most one wave's tasks
are in flight at any time (speculation is forced off, and a failed task is retried only after it
failed). So the driver caps the model requests in flight by capping two numbers, both decided here,
before any task starts:

* a wave holds ``ceil(max_concurrency / TASK_CONCURRENCY)`` shards (at most ``shards_per_job``): the cap
  is spread over as many tasks (executor cores) as gives each a few requests;
* each task's client has at most ``max_concurrency // shards_per_wave`` requests in flight (a task's
  calls are cut into that many concurrent requests).

``tasks x task_concurrency <= max_concurrency``, whatever the cluster's size. Without the key, waves
hold ``shards_per_job`` shards and each task's client has its default concurrency (twice the
executor's cores).

PDP: each feature's frame of ``grid x records`` rows is one task (waves of ``FRAMES_PER_JOB``, under the
same plan), scored by ``analyzer.explain.pdp.predict_frames`` in the task; the predictions come back
to the driver, which averages them as locally.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from analyzer.errors import DependencyError, UserError

if TYPE_CHECKING:
    from analyzer.predict import ModelEndpoint, Predictions

log = logging.getLogger(__name__)

# Requests one task keeps in flight under a cap: a few, so that a shard's calls still overlap, while the
# cap is spread over as many tasks (executor cores) as it allows.
TASK_CONCURRENCY = 4
# PDP frames per Spark job: a frame is up to 2,000 records x the grid (40,000 rows at the default 20), so
# the driver holds a few hundred MB at most.
FRAMES_PER_JOB = 8


T = TypeVar("T")


def interruptible(session: Any, action: Callable[[], T]) -> T:
    """``action()`` (a Spark action such as ``DataFrame.collect``) run in a thread of its own while this
    thread waits for it in short joins: a stop request (SIGTERM's ``JobStopped``, Ctrl-C) is raised here at
    once, and the session's running Spark jobs are interrupted (``interruptAll``: a job runs one action at
    a time; ``interruptTag`` found no job of a tag added in the thread, on classic pyspark 4.3) before it
    propagates. Python runs signal handlers in the main thread only, between bytecodes: a JVM call that
    blocks it would hold a stop back for a whole wave. The action's own errors are raised here as they are."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = action()
        except BaseException as error:  # noqa: BLE001 - raised in the calling thread below
            result["error"] = error

    thread = threading.Thread(target=run, name="lucent-spark-action", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)  # Python runs a stop request's handler between joins
    except BaseException:
        try:
            interrupted = session.interruptAll()
            log.info("Spark: stopping, %d running operation(s) interrupted", len(interrupted))
        except Exception as error:  # noqa: BLE001 - stopping anyway: the session may be gone already
            log.info("Spark: stopping; could not interrupt the running jobs: %s", error)
        raise
    if "error" in result:
        raise result["error"]
    return result["value"]


@dataclass(frozen=True)
class WavePlan:
    """Shards per Spark job, and each task's client concurrency (None: the client's default)."""

    shards_per_wave: int
    task_concurrency: int | None

    @property
    def in_flight(self) -> int | None:
        """The most model requests in flight at once under this plan (None: not capped)."""
        return None if self.task_concurrency is None else self.shards_per_wave * self.task_concurrency


def wave_plan(max_concurrency: int | None, shards_per_job: int) -> WavePlan:
    """The waves and per-task concurrency for ``max_concurrency`` (module docstring)."""
    if max_concurrency is None:
        return WavePlan(shards_per_job, None)
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    tasks = max(1, min(shards_per_job, -(-max_concurrency // TASK_CONCURRENCY)))
    return WavePlan(tasks, max(1, max_concurrency // tasks))


def spark_predictions(session: Any, endpoint: ModelEndpoint, frames: Iterator[pd.DataFrame],
                      first_line: Callable[[BaseException], str]) -> Iterator[Predictions]:
    """Each frame's predictions, in order, one Spark task per frame (module docstring). ``first_line``:
    a Spark error's reason without the JVM trace."""
    plan = wave_plan(getattr(endpoint.predictor, "max_concurrency", None), FRAMES_PER_JOB)
    runner = _prediction_runner(endpoint, plan.task_concurrency)
    frames = iter(frames)
    done = 0
    while wave := list(itertools.islice(frames, plan.shards_per_wave)):
        rows = pd.DataFrame({"frame": list(range(done, done + len(wave))),
                             "rows": [pickle.dumps(frame, protocol=5) for frame in wave]})
        log.info("Spark: %d PDP prediction frame(s) as Spark tasks", len(wave))
        tasks = session.createDataFrame(rows, "frame long, rows binary").repartitionByRange(len(wave), "frame")
        try:
            results = interruptible(session, tasks.mapInPandas(
                runner, "frame long, predictions binary, error string, kind string").collect)
        except Exception as error:  # noqa: BLE001 - a lost executor beyond Spark's retries, a killed job
            raise DependencyError(f"Spark could not run the PDP predictions: {first_line(error)}") from None
        done += len(wave)
        for row in sorted(results, key=lambda r: r["frame"]):
            if row["error"] is not None:
                raise (UserError if row["kind"] == "user" else DependencyError)(row["error"])
            yield pickle.loads(row["predictions"])


def _prediction_runner(endpoint: ModelEndpoint,
                       concurrency: int | None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task runs over its frames (pickled with ``endpoint`` in its closure)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from analyzer.explain.pdp import predict_frames

        for batch in batches:
            for index, rows in zip(batch["frame"], batch["rows"], strict=True):
                data, error, kind = None, None, None
                try:
                    [predictions] = list(predict_frames(endpoint, [pickle.loads(rows)], concurrency))
                    data = pickle.dumps(predictions, protocol=5)
                except UserError as failure:
                    error, kind = str(failure), "user"
                except DependencyError as failure:
                    error, kind = str(failure), "dependency"
                yield pd.DataFrame({"frame": [int(index)], "predictions": [data], "error": [error], "kind": [kind]})

    return run


__all__ = ["FRAMES_PER_JOB", "TASK_CONCURRENCY", "WavePlan", "spark_predictions", "wave_plan"]
