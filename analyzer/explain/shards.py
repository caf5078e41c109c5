"""Sharded Kernel SHAP: records cut into shards, run by worker processes, checkpointed on disk.

Why shards: the synthetic rows of all records do not fit in memory (``records x coalitions x baseline
rows``), and a long job that dies should not start over. Each shard is a fixed, contiguous range of
records (tabular: in dataset order; text: in the order of their number of players, ``run_text_shards``);
its size depends only on the work per record, never on the number of workers, so the output is
bit-identical whatever the worker count and whether the run was interrupted. A shard carries the dataset
row of each of its records (``ShardPayload``), which errors name.

Each worker process opens its own client (``ModelEndpoint`` is plain picklable data; a model folder
scored in process is loaded once in each worker) and
explains with the main process's ``KernelShapFit`` (the job's coalition design, solver and expected
value, sent once to each worker). A finished shard is written atomically to ``<checkpoint_dir>/shard-<i>.npz``, together
with the records it holds (first and stop position, a digest of their values) and the coalition seed. A
run that finds a shard file there checks it against the records that shard must hold, the arrays'
shapes and their values (finite, and each record's values adding up to its prediction minus its
reference, as the solver makes them), and skips the shard only when everything matches; a checkpoint
that is unreadable (truncated, not a zip, arrays missing, a folder or a link), made for other records or
holding values the solver cannot have written is discarded with a warning and recomputed. The
caller chooses ``checkpoint_dir`` so that it is keyed by a fingerprint of everything the values and the
shard boundaries depend on (``analyzer.explain.job``).

Worker processes exit when the job process dies (``analyzer.parent.exit_with_parent``): a job killed
with ``kill -9`` leaves no worker behind, blocked on the pool's pipe.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import pickle
import queue
import re
import shutil
import signal
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.lib.npyio import NpzFile

from analyzer.environment import positive_number
from analyzer.errors import UserError
from analyzer.output import atomic_writer
from analyzer.parent import exit_with_parent
from analyzer.predict import ModelEndpoint
from analyzer.predict.inprocess import ModelLoader, loaded_model, scoring_threads

from .kernel_shap import (
    GLOBAL_TERMS,
    Explanation,
    KernelShap,
    KernelShapFit,
    ModelCallError,
    ModelOutputError,
)
from .text_shap import TextExplanation, TextKernelShap, player_counts

if TYPE_CHECKING:
    from analyzer.engines import Engine

    from .checkpoint_store import CheckpointMirror

log = logging.getLogger(__name__)

WORKERS_ENV = "LUCENT_SHAP_WORKERS"
SHARD_ROWS_ENV = "LUCENT_SHAP_SHARD_ROWS"
# Synthetic rows per shard: big enough that per-shard overhead (a process hand-off, a checkpoint, a few
# requests) is noise, small enough that a shard's rows (a few hundred MB at most) fit in any worker.
DEFAULT_SHARD_ROWS = 1_000_000
# Rows per model call: each call is cut by the client into payload-sized requests that run concurrently.
MAX_ROWS_PER_CALL = 400_000
# Records per request when the client cuts a call: several requests per call keep all model workers busy.
RECORDS_PER_REQUEST = 50_000
# A model scored in process is loaded by every SHAP worker, and a worker costs about 2 s of CPU before it
# scores anything (a new interpreter, its imports, the model's load): with in-process scoring a worker is
# started only for this many synthetic rows of work (tabular; text rows cost far more each). Smaller jobs
# run their shards in the job's process, which has loaded the model already (measured on the 2,000 x 14
# GBC job: 5.2 s of CPU in one process, 9.5 s with two workers). ``LUCENT_SHAP_WORKERS`` overrides.
IN_PROCESS_ROWS_PER_WORKER = 4_000_000
IN_PROCESS_TEXT_ROWS_PER_WORKER = 100_000
# Text rows per model call and per shard: a synthetic text is a few hundred bytes, not a few numbers.
MAX_TEXT_ROWS_PER_CALL = 50_000
DEFAULT_TEXT_SHARD_ROWS = 200_000
MIN_TEXT_SHARD_ROWS = 20_000  # shards are not cut smaller than this to spread a job over the workers


@dataclass(frozen=True)
class ShapSettings:
    """Everything a worker needs to rebuild the job's explainer (plain data, sent to each process)."""

    endpoint: ModelEndpoint
    baseline: np.ndarray
    num_samples: int | None
    seed: int
    use_logit: bool
    features: tuple[int, ...]
    checkpoint_dir: Path
    # The main process's fit (design, solver, expected value): workers explain with the very same object
    # instead of drawing the design again and asking the model for the baseline's scores.
    fitted: KernelShapFit | None = None
    # The checkpoints' copy in the output store (checkpoint_store.py): each shard is pushed there by the
    # process that writes its checkpoint. None: the work area only.
    mirror: CheckpointMirror | None = None

    def explainer(self, model: Callable[[np.ndarray], np.ndarray], parallel_calls: int = 1) -> KernelShap:
        if self.fitted is not None:
            return KernelShap.from_fit(self.fitted, model, max_rows_per_call=MAX_ROWS_PER_CALL,
                                       parallel_calls=parallel_calls)
        return KernelShap(model, self.baseline, num_samples=self.num_samples, seed=self.seed,
                          use_logit=self.use_logit, features_to_explain=list(self.features),
                          max_rows_per_call=MAX_ROWS_PER_CALL, parallel_calls=parallel_calls)


@dataclass(frozen=True)
class TextShapSettings:
    """The text explainer's settings (``text_shap.TextKernelShap``), sent to each worker process."""

    endpoint: ModelEndpoint
    baseline: np.ndarray
    text_columns: tuple[int, ...]
    num_samples: int | None
    seed: int
    use_logit: bool
    checkpoint_dir: Path
    baseline_scores: np.ndarray | None = None  # known to the main process: workers need not ask the model
    mirror: CheckpointMirror | None = None  # as ShapSettings.mirror

    def explainer(self, model: Callable[[np.ndarray], np.ndarray]) -> TextKernelShap:
        # Texts make rows of hundreds of bytes: smaller calls keep a worker's strings in the tens of MB.
        return TextKernelShap(model, self.baseline, self.text_columns, num_samples=self.num_samples,
                              seed=self.seed, use_logit=self.use_logit, max_rows_per_call=MAX_TEXT_ROWS_PER_CALL,
                              baseline_scores=self.baseline_scores)


def configured_shard_rows(default: int = DEFAULT_SHARD_ROWS) -> int:
    """Synthetic rows per shard: ``LUCENT_SHAP_SHARD_ROWS``, else ``default``. It decides which records
    each shard holds, so the job puts it in the checkpoints' fingerprint."""
    return int(positive_number(SHARD_ROWS_ENV, default, int, "synthetic rows per shard"))


# The row-based sizes above are for records of up to this many columns. A wider record's synthetic rows
# cost that much more to build, hold and score, so its shards and its rows per worker hold as many values
# instead (1,000 features, 200 records: 67 shards of 3 records rather than one shard of all 200, which
# showed no progress for the whole step, ran on one core and held 1.9 GB).
NARROW_COLUMNS = 16


def wide_rows(rows: int, n_columns: int) -> int:
    """As many synthetic rows of ``n_columns``-column records as hold the values of ``rows`` narrow ones."""
    return max(1, rows * NARROW_COLUMNS // max(NARROW_COLUMNS, n_columns))


def tabular_shard_rows(n_columns: int) -> int:
    """Synthetic rows per tabular shard: ``LUCENT_SHAP_SHARD_ROWS`` when set, else ``DEFAULT_SHARD_ROWS`` for
    narrow records and fewer for wide ones (``wide_rows``). Part of the checkpoints' fingerprint."""
    if os.environ.get(SHARD_ROWS_ENV, "").strip():
        return configured_shard_rows()
    return wide_rows(DEFAULT_SHARD_ROWS, n_columns)


def shard_size(records_per_row_cost: int, shard_rows: int | None = None) -> int:
    """Records per shard for a record costing ``records_per_row_cost`` synthetic rows."""
    rows = shard_rows or configured_shard_rows()
    return max(1, rows // max(1, records_per_row_cost))


def worker_count(n_shards: int, rows: int | None = None, rows_per_worker: int | None = None) -> int:
    """One worker per core (``LUCENT_SHAP_WORKERS`` overrides), never more than there are shards. With
    ``rows_per_worker`` (the model is scored in process), by default no more workers than ``rows`` (the
    synthetic rows to score) has that many rows for: each worker loads the model again."""
    default = os.cpu_count() or 1
    if rows is not None and rows_per_worker:
        default = max(1, min(default, rows // rows_per_worker))
    wanted = int(positive_number(WORKERS_ENV, default, int, "worker processes"))
    return max(1, min(wanted, n_shards))


def planned_workers(n_shards: int, rows: int, rows_per_worker: int | None, cap: int | None) -> int:
    """The worker processes for ``n_shards`` shards of ``rows`` synthetic rows in all (0: no shard to run):
    ``worker_count``, held to ``cap`` (``predictor.max_concurrency``: each worker has a request in flight)."""
    if n_shards == 0:
        return 0
    workers = worker_count(n_shards, rows, rows_per_worker)
    return workers if cap is None else min(workers, cap)


def shard_path(checkpoint_dir: Path, index: int) -> Path:
    return checkpoint_dir / f"shard-{index:06d}.npz"


def run_shards(settings: ShapSettings, records: np.ndarray, size: int, explainer: KernelShap,
               on_done: Callable[[int], None] | None = None, engine: Engine | None = None) -> Explanation:
    """Explain ``records`` shard by shard (``size`` records each) and return all of them, in order.

    ``explainer`` is the main process's explainer: its design and expected value assemble the result
    from the checkpoints. ``on_done(k)`` is called in the main process for each block ``k`` of ``size``
    records (the last one shorter) as the records done pass its end, so that a caller counts
    ``min(size, n - k * size)`` records for it, whatever the actual cut (``even_bounds``).
    ``engine`` runs the shards not checkpointed yet (``analyzer.engines``; None: this machine's processes).
    """
    bounds = even_bounds(len(records), size)
    rows = np.full(len(records), (len(explainer.design.masks) + 1) * len(explainer.baseline))
    parts = _run(settings, bounds, lambda a, b: ShardPayload((records[a:b],), range(a, b)), rows, explainer,
                 None if on_done is None else _BlockCounter(bounds, size, on_done),
                 wide_rows(IN_PROCESS_ROWS_PER_WORKER, records.shape[1]), engine)
    return Explanation.concat(parts)  # one pass: each shard's global terms are folded in as it is loaded


class _BlockCounter:
    """Turns "shard i is done" into ``on_done(k)`` for each block of ``size`` records now covered by
    the records done (shards finish in any order: counted by how many records are done)."""

    def __init__(self, bounds: list[int], size: int, on_done: Callable[[int], None]):
        self.bounds, self.size, self.on_done = bounds, max(1, size), on_done
        self.records = self.blocks = 0

    def __call__(self, index: int) -> None:
        self.records += self.bounds[index + 1] - self.bounds[index]
        n = self.bounds[-1]
        while self.blocks * self.size < n and min(n, (self.blocks + 1) * self.size) <= self.records:
            self.on_done(self.blocks)
            self.blocks += 1


def even_bounds(n: int, size: int) -> list[int]:
    """Shard boundaries for ``n`` records: at most ``size`` per shard, as few shards as that allows, in
    parts as equal as can be (1,000 + 1,000, not 1,941 + 59). A job whose workers score in process has
    only each worker's share of the cores, so a short last shard would leave cores idle while one worker
    does nearly all the work. The cut depends on ``n`` and ``size`` alone, never on the workers."""
    if n == 0:
        return [0]
    parts = -(-n // max(1, size))
    return [i * n // parts for i in range(parts)] + [n]


def run_text_shards(settings: TextShapSettings, records: np.ndarray, units: Sequence, rows: np.ndarray,
                    explainer: TextKernelShap, shard_rows: int | None = None,
                    engine: Engine | None = None,
                    on_records: Callable[[int], None] | None = None) -> TextExplanation:
    """Text records (``units[i]``: record i's units per text column) explained shard by shard; the result
    is in dataset order.

    The records are explained in the order of their number of players (a stable sort: ties keep dataset
    order), and records cost different numbers of synthetic rows (``rows``), so a shard is a run of
    consecutive records of that order worth about ``shard_rows`` rows: it holds records of one or a few
    player counts, whose coalition design and solver each worker builds about once (in dataset order,
    reviews of mixed lengths made every shard build dozens). A record's values depend on its number of
    players and its own values, not on the records beside it (save the last bits of a model whose scores
    depend on the rows scored with them, as a BLAS product over the call can). The order and the cut depend
    on the data alone, never on the workers. ``on_records(n)`` is called in this process as each shard's
    ``n`` records are done.
    """
    order = np.argsort(player_counts(units, records.shape[1]), kind="stable")
    costs = np.asarray(rows)[order]
    bounds = text_shard_bounds(costs, shard_rows)

    def payload(a: int, b: int) -> ShardPayload:
        picked = order[a:b]
        return ShardPayload((records[picked], [units[i] for i in picked]), picked)

    done = None if on_records is None else (lambda i: on_records(bounds[i + 1] - bounds[i]))
    parts = _run(settings, bounds, payload, costs, explainer, done, IN_PROCESS_TEXT_ROWS_PER_WORKER, engine)
    explained = TextExplanation.concat(list(parts))
    return explained.take(np.argsort(order))  # back in dataset order


def text_shard_bounds(rows: np.ndarray, shard_rows: int | None = None) -> list[int]:
    """The text shards' boundaries (positions; ``[0, 0]`` for no record) over ``rows``, the synthetic rows of
    each record in the order they are explained (ascending player count, ``run_text_shards``; a record's
    rows never decrease with its player count, so that is also ``np.sort`` of them): a shard is a run of
    consecutive records worth about ``shard_rows`` rows (``LUCENT_SHAP_SHARD_ROWS``, else
    ``DEFAULT_TEXT_SHARD_ROWS``). The data's cut alone, never the workers'."""
    limit = shard_rows or configured_shard_rows(DEFAULT_TEXT_SHARD_ROWS)
    # At least ~16 shards when the job is large enough (shards of 20,000 rows or more): text records cost
    # very different numbers of rows, and with 4 shards for 2 workers one worker ran the last one alone
    # for a third of the job. Still the data's cut alone (the rows), never the workers'.
    limit = min(limit, max(MIN_TEXT_SHARD_ROWS, int(np.sum(rows)) // 16))
    if len(rows) == 0:
        return [0, 0]
    bounds = [0]
    total = 0
    for i, cost in enumerate(rows):
        if total and total + cost > limit:
            bounds.append(i)
            total = 0
        total += cost
    return [*bounds, len(rows)]


def _run(settings: ShapSettings | TextShapSettings, bounds: list[int], payload: Callable[[int, int], ShardPayload],
         rows: np.ndarray, explainer: KernelShap | TextKernelShap, on_done: Callable[[int], None] | None,
         in_process_rows_per_worker: int,
         engine: Engine | None = None) -> Iterator[Explanation] | Iterator[TextExplanation]:
    """Run the shards ``bounds[i]:bounds[i + 1]`` not checkpointed yet; return every shard's result, in
    order, loaded one at a time from its checkpoint (so that the caller can fold them as they come).
    ``payload(a, b)``: the records at positions ``a:b`` (``rows``: the synthetic rows of each position)."""
    n_shards = len(bounds) - 1 if bounds[-1] > 0 else 0
    if settings.mirror is not None:  # the store holds every shard done (pulled already: job.py)
        settings.mirror.push_missing()
    checkpoints = _Checkpoints(settings, bounds, payload, explainer)
    todo = [i for i in range(n_shards) if not checkpoints.usable(i)]
    if len(todo) < n_shards:
        log.info("SHAP: resuming, %d of %d shards already done (checkpoints in %s)", n_shards - len(todo),
                 n_shards, settings.checkpoint_dir)
    in_process = bool(getattr(settings.endpoint, "in_process", False))
    rows_todo = int(sum(rows[bounds[i]:bounds[i + 1]].sum() for i in todo))
    workers = planned_workers(len(todo), rows_todo, in_process_rows_per_worker if in_process else None,
                              max_concurrency(settings))
    progress = _Progress([int(rows[bounds[i]:bounds[i + 1]].sum()) for i in range(n_shards)],
                         np.diff(bounds).tolist(), todo)
    log.info("SHAP: %d records in %d shards of up to %d records, %d worker process(es)", bounds[-1], n_shards,
             max(np.diff(bounds), default=0), workers)

    def shard(i: int) -> ShardTask:
        return i, bounds[i], bounds[i + 1], payload(bounds[i], bounds[i + 1])

    def finished(i: int) -> None:
        if settings.mirror is not None:  # in the store before the shard counts as done
            settings.mirror.push(shard_path(settings.checkpoint_dir, i))
        progress.advance(i)
        if on_done is not None:
            on_done(i)

    if todo:
        tasks = (shard(i) for i in todo)
        if engine is None:
            run_local_shards(settings, tasks, workers, finished)
        else:
            engine.map_shards(settings, tasks, workers, finished)
    if n_shards == 0:
        return iter([explainer.explain(*payload(0, 0).arguments)])
    return (checkpoints.load(i) for i in range(n_shards))


@dataclass(frozen=True)
class ShardPayload:
    """What one shard explains: ``explainer.explain(*arguments)``, whose first argument holds the records;
    ``dataset_rows``: the dataset row (0-based) of each record, the row that errors name. Tabular shards
    hold records ``first:stop`` (``dataset_rows`` is that range), text shards the records at positions
    ``first:stop`` of the order of their number of players (``run_text_shards``)."""

    arguments: tuple
    dataset_rows: Sequence[int]

    @property
    def records(self) -> np.ndarray:
        return self.arguments[0]


ShardTask = tuple[int, int, int, ShardPayload]  # shard index, first and stop position, its records


def max_concurrency(settings: ShapSettings | TextShapSettings) -> int | None:
    """``predictor.max_concurrency``: the most model requests the job may have in flight at once, over
    all its workers (None: not capped)."""
    endpoint = settings.endpoint  # images: a scorer of pictures around the ModelEndpoint (``model``)
    predictor = getattr(endpoint, "predictor", None) or getattr(getattr(endpoint, "model", None), "predictor", None)
    cap = getattr(predictor, "max_concurrency", None)
    return int(cap) if cap else None


def worker_concurrency(settings: ShapSettings | TextShapSettings, workers: int) -> int | None:
    """Requests one of ``workers`` workers may have in flight under ``max_concurrency`` (None: the
    client's default)."""
    cap = max_concurrency(settings)
    return None if cap is None else max(1, cap // max(1, workers))


def run_local_shards(settings: ShapSettings | TextShapSettings, tasks: Iterator[ShardTask], workers: int,
                     finished: Callable[[int], None]) -> None:
    """This machine's way to run shards (``analyzer.engines.LocalEngine``): in this process when
    ``workers`` is 1 (the model is loaded here already), else in a pool of ``workers`` processes. Each
    shard is checkpointed, then ``finished(index)`` is called in this process."""
    if workers <= 1:
        _release_spare()  # started for a bigger job: stopped, not kept idle beside this one
        _init_worker(settings, concurrency=worker_concurrency(settings, 1))
        try:
            for task in tasks:
                finished(_run_shard(*task))
        finally:
            _close_worker()
    else:
        _run_pool(settings, tasks, workers, finished)


def _run_pool(settings: ShapSettings | TextShapSettings, shards: Iterator[ShardTask], workers: int,
              finished: Callable[[int], None]) -> None:
    """Run ``shards`` on ``workers`` processes, this one included.

    This process is one of the workers: its model is loaded (or its client open) already, so only
    ``workers - 1`` are spawned (each costs its imports and a model load, ~2 s of CPU and ~250 MiB), and it
    explains shards from its first second while they start. The spawned ones are fed from their futures'
    callbacks (one shard running and one queued each), so they never wait for this process to finish a
    shard; everything finished is reported through ``finished`` on this thread.
    """
    # spawn, not fork: the job process runs threads (HTTP clients, the model server's watcher), and a
    # forked child of a threaded process can deadlock on a lock held by a thread that does not exist in it.
    # The workers are told this process's id: they exit when it dies (a kill -9 runs no cleanup here).
    spawned = workers - 1
    run_shard: Callable[..., int] = _run_shard
    executor = _take_spare(spawned)
    if executor is None:
        executor = ProcessPoolExecutor(spawned, mp_context=get_context("spawn"), initializer=_init_worker,
                                       initargs=(settings, os.getpid(), workers, worker_concurrency(settings, workers)))
    else:  # started before the explainer existed: each shard carries the settings, set up once per worker
        log.info("SHAP: %d of the worker processes started while the job loaded the model", spawned)
        run_shard = functools.partial(_run_shard_set_up, _Setup.of(settings, workers,
                                                                   worker_concurrency(settings, workers)))
    lock = threading.Lock()
    results: queue.SimpleQueue[Future[int]] = queue.SimpleQueue()
    stop = threading.Event()
    in_flight = [0]  # submitted to the pool and not yet reported

    def take() -> ShardTask | None:
        with lock:  # the generator is shared with the pool's feeding thread
            return None if stop.is_set() else next(shards, None)

    def feed() -> None:
        task = take()
        if task is None:
            return
        with lock:
            in_flight[0] += 1
        try:
            future = executor.submit(run_shard, *task)
        except RuntimeError:  # the pool is shutting down: the job failed or stopped meanwhile
            with lock:
                in_flight[0] -= 1
            return
        future.add_done_callback(done)

    def done(future: Future[int]) -> None:
        results.put(future)
        if not future.cancelled() and future.exception() is None:
            feed()

    def report(block: bool) -> None:
        while in_flight[0] and (block or not results.empty()):
            future = results.get()
            with lock:
                in_flight[0] -= 1
            finished(future.result())  # re-raises a worker's error (UserError for bad model output)

    here = False
    try:
        for _ in range(2 * spawned):
            feed()
        while (task := take()) is not None:
            if not here:
                _init_worker(settings, workers=workers, concurrency=worker_concurrency(settings, workers))
                here = True
            finished(_run_shard(*task))
            report(block=False)
        report(block=True)
        # Every shard is done, checkpointed and reported: the spawned workers have nothing left to do but their
        # interpreters' teardown (0.3-0.7 s with a model loaded), which a job ending now would wait for in
        # concurrent.futures' exit hook. Stopped instead.
        _stop_pool(executor)
    except BaseException:
        # A failed or stopped job must not wait for the other shards: stop the workers we started.
        stop.set()
        _stop_pool(executor)
        raise
    finally:
        if here:
            _close_worker()


# -- worker side -------------------------------------------------------------------------------------

_worker: dict = {}  # per-process state: the settings, the model client and the explainer


def _init_worker(settings: ShapSettings | TextShapSettings, parent_pid: int | None = None, workers: int = 1,
                 concurrency: int | None = None) -> None:
    from threadpoolctl import threadpool_limits

    if parent_pid is not None:  # a worker process: it must not outlive the job (SIGKILL: nothing to clean up,
        exit_with_parent(parent_pid, death_signal=signal.SIGKILL)  # checkpoints are written atomically)
    # One BLAS thread per worker: there is one worker per core already.
    _worker["limits"] = threadpool_limits(limits=1)
    # A model scored in process runs in these workers: each gets its share of the cores (one scoring
    # thread per core in all, the model's own threads held to one each), so that a job with fewer shards
    # than cores still keeps every core busy, and one with more does not oversubscribe them.
    # ``concurrency``: this worker's share of predictor.max_concurrency (None: the client's default).
    capped = {} if concurrency is None else {"concurrency": concurrency}
    if isinstance(settings, ShapSettings):
        # Requests are cut by the records and payload caps alone, never by how many run at once (which
        # depends on the worker count and the cores): a model whose last bits depend on the rows scored
        # beside a row (BLAS products) then gives the same values with 1 or N workers, on any machine,
        # and a run resumed with other workers matches. The cores stay busy with groups side by side.
        client = settings.endpoint.client(max_records_per_request=RECORDS_PER_REQUEST, processes=workers,
                                          spread=False, **capped)
        explainer = settings.explainer(lambda rows: client.predict(rows).scores,
                                       parallel_calls=min(getattr(client, "concurrency", 1), scoring_threads(workers)))
    else:
        client = settings.endpoint.client(max_records_per_request=RECORDS_PER_REQUEST, processes=workers, **capped)
        explainer = settings.explainer(lambda rows: client.predict(rows).scores)
    _worker.update(settings=settings, client=client, explainer=explainer)


def _close_worker() -> None:
    client = _worker.pop("client", None)
    if client is not None:
        client.close()
    limits = _worker.pop("limits", None)
    if limits is not None:
        limits.unregister()
    _worker.clear()


@dataclass(frozen=True)
class _Setup:
    """What ``_init_worker`` gets, pickled once by the job: sent with every shard to workers started before
    the explainer existed (``spare_workers``), and unpickled by each worker the first time it sees it."""

    token: str
    arguments: bytes  # pickle of (settings, workers, concurrency)

    @classmethod
    def of(cls, settings: ShapSettings | TextShapSettings, workers: int, concurrency: int | None) -> _Setup:
        return cls(uuid.uuid4().hex, pickle.dumps((settings, workers, concurrency), pickle.HIGHEST_PROTOCOL))


def _run_shard_set_up(setup: _Setup, index: int, first: int, stop: int, payload: ShardPayload) -> int:
    """``_run_shard`` in a spare worker, set up for ``setup`` first if it is not yet."""
    if _worker.get("setup") != setup.token:
        _close_worker()
        settings, workers, concurrency = pickle.loads(setup.arguments)
        _init_worker(settings, workers=workers, concurrency=concurrency)
        _worker["setup"] = setup.token
    return _run_shard(index, first, stop, payload)


def _warm_worker(loader: ModelLoader, parent_pid: int) -> None:
    """A spare worker's start: the model's imports and load, the bulk of a worker's first seconds."""
    exit_with_parent(parent_pid, death_signal=signal.SIGKILL)
    loaded_model(loader)


def _started() -> int:
    return os.getpid()


_spare: list[tuple[int, ProcessPoolExecutor]] = []  # this process's spare workers: (how many, their pool)
_spare_lock = threading.Lock()


@contextmanager
def spare_workers(loader: ModelLoader, workers: int) -> Iterator[None]:
    """Start the ``workers - 1`` SHAP worker processes a job of ``workers`` will spawn, now.

    A job scoring its model in process reads its data and loads the model on one core before SHAP
    starts; a worker started only then spends its first ~2 s (a new interpreter, imports, the model's
    load) while the job already explains. Started here, the workers load the model (``loader``) on the
    idle cores meanwhile; the SHAP step takes them if it runs that many workers (``_run_pool``), and
    whatever was not taken is stopped when the block ends.
    """
    spawned = workers - 1
    if spawned < 1:
        yield
        return
    executor = ProcessPoolExecutor(spawned, mp_context=get_context("spawn"), initializer=_warm_worker,
                                   initargs=(loader, os.getpid()))
    for _ in range(spawned):  # a process pool spawns its processes as tasks arrive
        executor.submit(_started)
    with _spare_lock:
        _spare.append((spawned, executor))
    try:
        yield
    finally:
        with _spare_lock:
            unused = [entry for entry in _spare if entry[1] is executor]
            for entry in unused:
                _spare.remove(entry)
        if unused:
            _stop_pool(executor)


def _take_spare(spawned: int) -> ProcessPoolExecutor | None:
    """The spare workers if there are exactly ``spawned`` of them (None otherwise: those are stopped, not to
    hold memory and cores beside a pool of another size)."""
    with _spare_lock:
        if _spare and _spare[-1][0] == spawned:
            return _spare.pop()[1]
    _release_spare()
    return None


def _release_spare() -> None:
    """Stop the spare workers, if any (a job that runs no pool, or a pool of another size)."""
    with _spare_lock:
        found = _spare.pop() if _spare else None
    if found is not None:
        _stop_pool(found[1])


def _stop_pool(executor: ProcessPoolExecutor) -> None:
    """Stop a pool's processes now (a failed job, or workers no longer wanted): nothing of theirs is kept.

    SIGKILL, not SIGTERM: a SIGTERM can be caught, ignored or lost while a worker is still being spawned, and
    one worker did outlive it once under load (tests/test_shards_pool.py, in a run of the suite on two
    workers); SIGKILL cannot be. Nothing is lost: checkpoints are written whole or not at all."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)


def init_worker(settings: ShapSettings | TextShapSettings, concurrency: int | None = None) -> None:
    """Set up this process to explain shards with ``settings`` (another engine's task: one worker),
    with at most ``concurrency`` model requests in flight (None: the client's default)."""
    _init_worker(settings, concurrency=concurrency)


def close_worker() -> None:
    """Close what ``init_worker`` opened (the model client)."""
    _close_worker()


def _run_shard(index: int, first: int, stop: int, payload: ShardPayload) -> int:
    """Explain one shard (``explainer.explain(*payload.arguments)``) and checkpoint it; returns ``index``."""
    settings: ShapSettings | TextShapSettings = _worker["settings"]
    explanation = _explain_shard(payload)
    _save(shard_path(settings.checkpoint_dir, index), explanation,
          _ShardKey(first, stop, records_digest(payload.records), settings.seed))
    return index


def shard_checkpoint(first: int, stop: int, payload: ShardPayload) -> bytes:
    """Explain one shard in a process set up by ``init_worker`` and return its checkpoint file's bytes,
    for an engine whose workers cannot write the job's work area (the job writes them: ``write_checkpoint``)."""
    settings: ShapSettings | TextShapSettings = _worker["settings"]
    buffer = io.BytesIO()
    _write_npz(buffer, _explain_shard(payload), _ShardKey(first, stop, records_digest(payload.records), settings.seed))
    return buffer.getvalue()


def write_checkpoint(settings: ShapSettings | TextShapSettings, index: int, data: bytes) -> None:
    """Write shard ``index``'s checkpoint bytes (``shard_checkpoint``) atomically, as ``_run_shard`` does."""
    with atomic_writer(shard_path(settings.checkpoint_dir, index), "wb") as handle:
        handle.write(data)


def _explain_shard(payload: ShardPayload) -> Explanation | TextExplanation:
    """``explainer.explain(*payload.arguments)`` in this worker, with the model's failures as ``UserError``
    naming the records' dataset rows (``payload.dataset_rows``)."""
    explainer: KernelShap | TextKernelShap = _worker["explainer"]
    try:
        return explainer.explain(*payload.arguments)
    except ModelOutputError as error:
        rows = ", ".join(str(payload.dataset_rows[r]) for r in error.records[:5]) + (", ..." if len(error.records) > 5 else "")
        raise UserError(f"methods.shap: {_renumber(str(error), payload.dataset_rows)} (dataset rows {rows}). Kernel SHAP needs a "
                        "finite score for every synthetic row: make the model handle the baseline values "
                        "mixed into each record") from None
    except ModelCallError as error:
        what = ("a synthetic row made from it (some features or text units replaced by the baseline's)"
                if error.synthetic else "the record itself")
        raise UserError(f"methods.shap: the model failed on dataset row {payload.dataset_rows[error.record or 0]} (0-based), on {what}: "
                        f"{error.reason}") from None
    except ValueError as error:  # wrong output shape, scores outside [0, 1] with use_logit
        raise UserError(f"methods.shap: {error}") from None


def _renumber(message: str, dataset_rows: Sequence[int]) -> str:
    """The explainer numbers records within the shard; name their dataset rows instead."""
    return re.sub(r"for record (\d+)", lambda m: f"for dataset row {dataset_rows[int(m.group(1))]} (0-based)", message)


def records_digest(records: np.ndarray) -> str:
    """A digest of a shard's records (shape, type and values): a checkpoint must match its records."""
    digest = hashlib.sha256(f"{records.shape} {records.dtype.kind}".encode())
    if records.dtype.kind in "biuf":
        digest.update(np.ascontiguousarray(records, dtype=float).tobytes())
    elif records.size:
        digest.update(pd.util.hash_pandas_object(pd.DataFrame(records), index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class _ShardKey:
    """What a checkpoint must have been made for: the records at positions ``first:stop`` (``ShardPayload``),
    with these values, this seed."""

    first: int
    stop: int
    records: str  # records_digest of the shard's records
    seed: int


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, incomplete, or made for other records."""


def _save(path: Path, explanation: Explanation | TextExplanation, key: _ShardKey) -> None:
    """Write the shard's results atomically: a checkpoint is either complete or absent."""
    with atomic_writer(path, "wb") as handle:
        _write_npz(handle, explanation, key)


def _write_npz(handle, explanation: Explanation | TextExplanation, key: _ShardKey) -> None:  # noqa: ANN001
    arrays = dict(values=explanation.values, stderr=explanation.stderr, reference=explanation.reference,
                  prediction=explanation.prediction, lucent_first=np.int64(key.first), lucent_stop=np.int64(key.stop),
                  lucent_records=np.str_(key.records), lucent_seed=np.str_(str(key.seed)))
    if isinstance(explanation, TextExplanation):
        arrays["offsets"] = explanation.offsets
    else:
        arrays.update({f"terms_{key}": value for key, value in explanation.global_terms.items()})
    np.savez(handle, **arrays)


class _Checkpoints:
    """The job's shard checkpoints, each checked against the records its shard must hold."""

    def __init__(self, settings: ShapSettings | TextShapSettings, bounds: list[int],
                 payload: Callable[[int, int], ShardPayload], explainer: KernelShap | TextKernelShap):
        self.settings, self.bounds, self.payload, self.explainer = settings, bounds, payload, explainer
        # Half-written files of a run that was killed while writing (atomic_writer's temporary names).
        for leftover in settings.checkpoint_dir.glob(".shard-*.tmp"):
            discard_entry(leftover)

    def usable(self, index: int) -> bool:
        """Whether shard ``index`` has a checkpoint made for its records; a bad one is removed."""
        path = shard_path(self.settings.checkpoint_dir, index)
        if not os.path.lexists(path):  # lexists: a dangling link is an entry to discard, not "no checkpoint"
            return False
        try:
            self._read(index)
        except CheckpointError as error:
            log.warning("SHAP: discarding checkpoint %s (%s); that shard is computed again", path, error)
            discard_entry(path)
            return False
        return True

    def load(self, index: int) -> Explanation | TextExplanation:
        try:
            return self._read(index)
        except CheckpointError as error:  # it was checked, or written by this run: the disk lost it
            raise RuntimeError(f"SHAP checkpoint {shard_path(self.settings.checkpoint_dir, index)} "
                               f"became unusable during the run: {error}") from None

    def _read(self, index: int) -> Explanation | TextExplanation:
        first, stop = self.bounds[index], self.bounds[index + 1]
        payload = self.payload(first, stop)
        key = _ShardKey(first, stop, records_digest(payload.records), self.settings.seed)
        arrays = _read_arrays(shard_path(self.settings.checkpoint_dir, index))
        return _explanation(arrays, key, payload, self.explainer)


def discard_entry(path: Path) -> None:
    """Remove whatever is at ``path`` in the work area: a file, a link (the link itself, never what it
    points to) or a folder (its links are removed, not followed). An entry that cannot be removed is
    logged; the shard's new checkpoint then fails to be written with a clear error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        log.warning("SHAP: could not remove %s: %s", path, error)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    # Only a regular file Lucent wrote: a folder cannot be loaded, and a link could lead anywhere.
    if path.is_symlink() or not path.is_file():
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise CheckpointError(f"{kind}, not a checkpoint file")
    try:
        with path.open("rb") as head:  # np.load takes anything else for a pickle, and says so
            if head.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise CheckpointError("not an .npz archive (it does not start as a zip file)")
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, NpzFile):
            raise CheckpointError("not an .npz archive")
        with data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise CheckpointError(f"unreadable: {type(error).__name__}: {error}") from None


def _explanation(arrays: dict[str, np.ndarray], key: _ShardKey, payload: ShardPayload,
                 explainer: KernelShap | TextKernelShap) -> Explanation | TextExplanation:
    """The shard's explanation from its checkpoint's arrays, after checking them against ``key``."""

    def array(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in arrays:
            raise CheckpointError(f"no {name!r} array")
        value = arrays[name]
        if value.shape != shape:
            raise CheckpointError(f"{name!r} has shape {value.shape}, expected {shape}")
        if value.dtype.kind not in "iuf" and not name.startswith("lucent_"):
            raise CheckpointError(f"{name!r} holds {value.dtype}, not numbers")
        return value

    try:
        made_for = (int(array("lucent_first", ())), int(array("lucent_stop", ())))
        records, seed = str(array("lucent_records", ())), str(array("lucent_seed", ()))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"unreadable record range: {error}") from None
    if made_for != (key.first, key.stop):
        raise CheckpointError(f"it holds records {made_for[0]}:{made_for[1]}, the shard is {key.first}:{key.stop}")
    if records != key.records:
        raise CheckpointError(f"it was made from other values of records {key.first}:{key.stop}")
    if seed != str(key.seed):
        raise CheckpointError("it was made with another coalition seed")
    n, k = key.stop - key.first, len(explainer.expected_value)
    if isinstance(explainer, TextKernelShap):
        records_in, units = payload.arguments
        offsets = np.concatenate([[0], np.cumsum(player_counts(units, records_in.shape[1]))])
        if not np.array_equal(array("offsets", offsets.shape), offsets):
            raise CheckpointError("its records have other numbers of text units")
        players = int(offsets[-1])
        text = TextExplanation(values=array("values", (players, k)), stderr=array("stderr", (players, k)),
                               offsets=arrays["offsets"], expected_value=explainer.expected_value,
                               reference=array("reference", (n, k)), prediction=array("prediction", (n, k)))
        totals = np.add.reduceat(text.values, offsets[:-1], axis=0) if n else np.zeros((0, k))
        magnitudes = np.add.reduceat(np.abs(text.values), offsets[:-1], axis=0) if n else np.zeros((0, k))
        _check_values(text.values, text.stderr, text.reference, text.prediction, totals, magnitudes)
        return text
    m = len(explainer.features)
    terms_shape = explainer.solver.terms_shape(k)
    tabular = Explanation(
        values=array("values", (n, m, k)), stderr=array("stderr", (n, m, k)), expected_value=explainer.expected_value,
        reference=array("reference", (n, k)), prediction=array("prediction", (n, k)), features=explainer.features,
        design=explainer.design, global_terms={name: array(f"terms_{name}", terms_shape) for name in GLOBAL_TERMS})
    _check_values(tabular.values, tabular.stderr, tabular.reference, tabular.prediction, tabular.values.sum(axis=1),
                  np.abs(tabular.values).sum(axis=1))
    return tabular


def _check_values(values: np.ndarray, stderr: np.ndarray, reference: np.ndarray, prediction: np.ndarray,
                  totals: np.ndarray, magnitudes: np.ndarray) -> None:
    """The checks every shard the solver wrote passes: finite values, scores and references; standard
    errors finite and >= 0, or NaN (a stratum with a single drawn pair has no variance estimate); and
    efficiency, each record's values (``totals``: summed per record and output) adding up to its
    prediction minus its reference, which the solver enforces to the last rounding. The tolerance grows
    with the sizes involved (``magnitudes``: per record and output, the sum of the values' absolute
    values), far below any real change of the values."""
    for name, array in (("values", values), ("reference", reference), ("prediction", prediction)):
        if not np.all(np.isfinite(array)):
            raise CheckpointError(f"{name!r} holds {int(np.sum(~np.isfinite(array)))} value(s) that are not finite")
    if np.any(np.isinf(stderr)) or np.any(stderr < 0):
        raise CheckpointError("'stderr' holds infinite or negative standard errors")
    delta = prediction - reference
    error = np.abs(totals - delta)
    tolerance = 1e-6 * (1 + np.abs(delta)) + 1e-10 * magnitudes  # summation rounding: < players x 1e-16
    if np.any(error > tolerance):
        record = int(np.argwhere(error > tolerance)[0][0])
        raise CheckpointError(f"the values of its record {record} (counted from the shard's first) add up to {totals[record].tolist()}, not to its "
                              f"prediction minus its reference {delta[record].tolist()}")


class _Progress:
    """Counts shards done: a DEBUG line per shard (synthetic rows per second, time left), an INFO line at
    the end (the user-facing progress, every few seconds, is ``analyzer.progress`` in the caller)."""

    def __init__(self, shard_rows: list[int], shard_records: list[int], todo: list[int]):
        self.shard_rows, self.shard_records = shard_rows, shard_records
        self.todo, self.done = len(todo), 0
        self.records_left = sum(shard_records[i] for i in todo)
        self.rows_left = sum(shard_rows[i] for i in todo)
        self.records_done = self.rows_done = 0
        self.started = time.perf_counter()

    def advance(self, index: int) -> None:
        self.done += 1
        self.records_done += self.shard_records[index]
        self.rows_done += self.shard_rows[index]
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.rows_done / elapsed
        eta = (self.rows_left - self.rows_done) / rate if rate else float("inf")
        log.debug("SHAP: %d of %d shards done (%d of %d records), %.0f synthetic rows/s, ETA %.0f s", self.done,
                  self.todo, self.records_done, self.records_left, rate, eta)
        if self.done == self.todo:
            log.info("SHAP: %d shard(s) done, %d records, %.0f synthetic rows/s", self.done, self.records_done, rate)
