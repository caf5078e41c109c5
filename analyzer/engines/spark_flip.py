"""The Flip Test (FT) on Spark: the feature rows stay in the cluster, the value is the local engine's.

FT compares each row of facet d with its k nearest rows of facet a (``analyzer.bias.flip_test``). Only
the two counts F+ (model yes, neighbours no) and F- (model no, neighbours yes) leave the cluster.

* **Exact**, while facet a fits a broadcast (n_a x (8 x features + 1) bytes <= ``LUCENT_FT_BROADCAST_MB``,
  default 256): Spark reads the rows; facet a's rows come to the driver in data order, which fits
  Clarify's classifier once (``flip_test.fitted_classifier``, so its input checks raise Clarify's
  errors); the fitted classifier travels in the closure of a ``mapInArrow`` function (DataFrame API only:
  it runs over Spark Connect too), and each task runs ``flip_test.flip_counts`` on its chunks of d. A
  tree search answers each query alone, so the sums are the local counts. A brute-force search
  (more than 15 features, or a tiny a) depends on the batch: d then goes to one task, in data order.
* **Sampled**, beyond the broadcast: a uniform sample of d (the ``LUCENT_FT_SAMPLE_ROWS`` rows, default
  100,000, with the smallest seeded hash of their place in the data (the file's name, not the folder it was
  read from: the same data mounted elsewhere gives the same sample) is shipped to the
  tasks instead; each task finds each sampled row's k nearest rows in its block of facet a (a tree over
  the block, exact distances), and one aggregation keeps the k nearest of all candidates (ties broken
  by data order). So the neighbours are exact against all of a; only d is sampled. The value is the
  sample's mean flip, with a normal interval (finite-population corrected) at 95 %, written beside
  Clarify's keys as ``"lucent": {"sampled": true, ...}`` (``FlipTestValue``).

Which rows are d and which predictions are positive is decided by the bias report on the driver, per
distinct combination of role values (``GroupedRows``); the same GROUP BY as ``count_table`` gives each
combination's raw values, and a broadcast join marks every row. Feature values are typed exactly as the
local reader types them: plain decimal CSV columns by the same Arrow cast, other CSV columns from their
distinct fields typed on the driver by ``infer_csv_values`` (a column with a field that can be no
number is non-numeric without reading further), Parquet columns by ``arrow_to_pandas``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer import media
from analyzer.bias import flip_test
from analyzer.bias.metrics import divide
from analyzer.config import AnalysisConfig
from analyzer.data.accumulate import arrow_to_pandas
from analyzer.data.csv_format import (
    BOOL_WORDS,
    DECIMAL15,
    INT18,
    MAYBE_NUMBER,
    NA_STRINGS,
    infer_csv_values,
)
from analyzer.data.loader import locate_roles
from analyzer.environment import positive_number
from analyzer.errors import UserError

from .spark_read import POSITION, read_layout

if TYPE_CHECKING:
    from . import GroupedRows
    from .spark import SparkEngine

log = logging.getLogger(__name__)

BROADCAST_ENV = "LUCENT_FT_BROADCAST_MB"
DEFAULT_BROADCAST_MB = 256.0
SAMPLE_ROWS_ENV = "LUCENT_FT_SAMPLE_ROWS"
DEFAULT_SAMPLE_ROWS = 100_000
SAMPLE_SEED_ENV = "LUCENT_FT_SAMPLE_SEED"
DEFAULT_SAMPLE_SEED = 1
CONFIDENCE = 0.95
MAX_TYPED_FIELDS = 100_000  # distinct fields of an unusual CSV feature column typed on the driver
BLOCK_ROWS = 1_000_000  # facet-a rows per neighbour search in a task (the candidates it returns: sample x k)
ORDER = POSITION  # where a row stands in the data: file, split, position (engines.spark._read)


@dataclass(frozen=True)
class FeatureType:
    """How one feature column's raw values become the local reader's values in a task.

    ``kind``: "plain" (decimal CSV fields: the Arrow cast to ``dtype``), "mapped" (CSV: each distinct
    field's typed value, ``keys`` -> ``values``), "arrow" (Parquet: ``arrow_to_pandas`` with the column's
    ``has_null``), "text" (CSV strings, which FT refuses)."""

    name: str
    slot: str
    kind: str
    dtype: Any
    keys: pa.Array | None = None
    values: np.ndarray | None = None
    has_null: bool = False


def spark_flip_test(engine: SparkEngine, config: AnalysisConfig, dataset_path: Path | str, dataset: GroupedRows,
                    facet: str, sensitive: np.ndarray, predicted: np.ndarray) -> float:
    """FT of ``facet`` with the report's decisions per group row (module docstring); a ``FlipTestValue``
    labelled sampled when facet a is over the broadcast limit. Raises what ``FT`` raises locally (the
    metric's error); a failure of Spark itself as a ``RuntimeError`` with its reason, not a JVM trace."""
    from .spark import _first_line

    try:
        return _spark_flip_test(engine, config, dataset_path, dataset, facet, sensitive, predicted)
    except (ValueError, UserError):
        raise
    except Exception as error:  # noqa: BLE001 - a lost executor, a refused plan: the reason only
        raise RuntimeError(f"Spark could not compute the Flip Test: {_first_line(error)}") from None


def _spark_flip_test(engine: SparkEngine, config: AnalysisConfig, dataset_path: Path | str, dataset: GroupedRows,
                     facet: str, sensitive: np.ndarray, predicted: np.ndarray) -> float:
    started = time.perf_counter()
    weights = np.asarray(dataset.weights)
    sensitive, predicted = np.asarray(sensitive, dtype=bool), np.asarray(predicted, dtype=bool)
    n_d, n_a = int(weights[sensitive].sum()), int(weights[~sensitive].sum())
    prepared = _prepare(engine, config, dataset_path, dataset)
    marked = _marked_rows(engine, prepared, sensitive, predicted)
    types = [prepared.types[name] for name in dataset.feature_names if name != facet]
    flip_test.check_numeric(pd.DataFrame({t.name: pd.Series([], dtype=t.dtype) for t in types}))
    if not types:  # sklearn's own error for zero features, with facet a's shape
        flip_test.fitted_classifier(np.empty((n_a, 0)), np.zeros(n_a, dtype=bool))
    limit = positive_number(BROADCAST_ENV, DEFAULT_BROADCAST_MB, float, "MB") * 2**20
    size = n_a * (8 * len(types) + 1)
    if size <= limit:
        value = _exact(marked, types, n_a, n_d)
        log.info("Spark: Flip Test of facet %s exact: %d rows of facet a broadcast (%.1f MB), %d rows of d (%.1f s)",
                 facet, n_a, size / 2**20, n_d, time.perf_counter() - started)
        return value
    sample_rows = int(positive_number(SAMPLE_ROWS_ENV, DEFAULT_SAMPLE_ROWS, int, "rows"))
    seed = int(positive_number(SAMPLE_SEED_ENV, DEFAULT_SAMPLE_SEED, int))
    value = _sampled(marked, types, n_a, n_d, min(sample_rows, n_d), seed)
    log.info("Spark: Flip Test of facet %s sampled: facet a (%d rows, %.1f MB) over %s=%g; %s (%.1f s)", facet, n_a,
             size / 2**20, BROADCAST_ENV, limit / 2**20, value.lucent, time.perf_counter() - started)
    return value


# -- rows, marked ----------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """What every facet group's Flip Test of one dataset shares: the rows as Spark reads them, the raw
    role values of each group row of ``GroupedRows`` (``count_table``'s GROUP BY, same order) and the
    feature columns' types."""

    dataset: weakref.ref
    frame: Any
    slots: list[str]
    keys: dict[str, pa.Array]
    types: dict[str, FeatureType]


_prepared: dict[int, _Prepared] = {}
_prepared_lock = threading.Lock()


def _prepare(engine: SparkEngine, config: AnalysisConfig, dataset_path: Path | str, dataset: GroupedRows) -> _Prepared:
    """The shared part, once per dataset (two Spark jobs, plus one per unusual CSV feature column)."""
    with _prepared_lock:
        for key in [key for key, entry in _prepared.items() if entry.dataset() is None]:
            del _prepared[key]
        known = _prepared.get(id(dataset))
        if known is not None and known.dataset() is dataset:
            return known
    started = time.perf_counter()
    if config.dataset_type not in (media.CSV, media.PARQUET):
        raise UserError(f"The Flip Test on the Spark engine reads {media.CSV} and {media.PARQUET} datasets, not "
                        f"{config.dataset_type}; run with --engine local")
    layout = read_layout(lambda: engine.session, config, dataset_path)  # the files (or URI) count_table read
    roles = locate_roles(config, layout, None, None)  # type: ignore[arg-type] - a Layout reads like a Table
    names = list(dict.fromkeys(ref.name for ref in (roles.label, roles.predicted_label, *roles.facets, roles.group)
                               if ref is not None))
    slots = [f"c{layout.headers.index(name)}" for name in names]
    frame = engine._read(config, layout, names=[*names, *dataset.feature_names])
    functions = engine._sql.functions
    first = functions.struct(*ORDER)
    groups = (frame.groupBy(*slots)
              .agg(functions.count(functions.lit(1)).alias("__rows"), functions.min(first).alias("__first"))
              .orderBy("__first").select(*slots, "__rows")).toArrow()
    if not np.array_equal(groups.column("__rows").to_numpy(), np.asarray(dataset.weights)):
        raise UserError("The Flip Test found other rows in the dataset than the bias counts did: was it changed "
                        "while the job ran?")
    features = list(dataset.feature_names)
    types = feature_types(engine, config, frame, features, [f"c{layout.headers.index(n)}" for n in features])
    prepared = _Prepared(weakref.ref(dataset), frame, slots,
                         {f"__k{i}": groups.column(slot).combine_chunks() for i, slot in enumerate(slots)},
                         {t.name: t for t in types})
    with _prepared_lock:
        _prepared[id(dataset)] = prepared
    log.debug("Flip Test: role-value groups and %d feature types in %.1f s", len(types), time.perf_counter() - started)
    return prepared


def _marked_rows(engine: SparkEngine, prepared: _Prepared, sensitive: np.ndarray, predicted: np.ndarray) -> Any:
    """The rows with ``__d`` (the row is in facet d) and ``__p`` (its prediction is positive): the
    decisions of its combination of role values (a broadcast join on the raw values)."""
    frame, functions = prepared.frame, engine._sql.functions
    lookup = engine.session.createDataFrame(pa.table({**prepared.keys, "__d": pa.array(sensitive),
                                                      "__p": pa.array(predicted)}))
    condition = None
    for key, slot in zip(prepared.keys, prepared.slots, strict=True):
        same = frame[slot].eqNullSafe(lookup[key])
        condition = same if condition is None else condition & same
    return frame.join(functions.broadcast(lookup), condition, "inner").drop(*prepared.keys)


# -- feature typing --------------------------------------------------------------------------------------

def _java(pattern: str) -> str:
    """An RE2 pattern (Arrow) for Java (Spark's ``rlike``): end of text as ``\\z``, ``\\v`` as one character."""
    return pattern.replace("\\v", "\\x0B").removesuffix("$") + "\\z"


def feature_types(engine: SparkEngine, config: AnalysisConfig, frame: Any, names: list[str],
                  slots: list[str]) -> list[FeatureType]:
    """Each feature column's type as the local reader decides it from the whole column (one aggregation;
    the distinct fields of unusual CSV columns are typed on the driver)."""
    if not names:
        return []
    functions = engine._sql.functions
    if config.dataset_type == media.PARQUET:
        arrow = frame.select(*slots).limit(0).toArrow().schema
        nulls = frame.agg(*[functions.count(functions.when(functions.col(s).isNull(), 1)).alias(s)
                            for s in slots]).collect()[0]
        return [FeatureType(name, slot, "arrow", arrow_to_pandas(pa.nulls(0, arrow.field(slot).type),
                                                                 nulls[slot] > 0).dtype, has_null=nulls[slot] > 0)
                for name, slot in zip(names, slots, strict=True)]
    na_values = NA_STRINGS.to_pylist()
    bools = BOOL_WORDS.to_pylist()
    count = functions.count

    def when(condition: Any) -> Any:  # the rows where ``condition`` holds
        return count(functions.when(condition, 1))

    aggregates = []
    for slot in slots:
        field = functions.col(slot)
        missing = field.isNull() | field.isin(na_values)
        aggregates += [when(missing).alias(f"{slot}_missing"),
                       when(~missing & ~field.rlike(_java(DECIMAL15))).alias(f"{slot}_not_decimal"),
                       when(missing | ~field.rlike(_java(INT18))).alias(f"{slot}_not_int"),
                       when(field.contains(".")).alias(f"{slot}_dot"),
                       when(~(missing | field.isin(bools) | field.rlike("(?i)" + _java(MAYBE_NUMBER))))
                       .alias(f"{slot}_text")]
    totals = frame.agg(count(functions.lit(1)).alias("__n"), *aggregates).collect()[0]
    types = []
    for name, slot in zip(names, slots, strict=True):
        n, missing = totals["__n"], totals[f"{slot}_missing"]
        if missing < n and totals[f"{slot}_not_decimal"] == 0:  # infer_csv_values' first shortcut
            integer = missing == 0 and totals[f"{slot}_dot"] == 0
            types.append(FeatureType(name, slot, "plain", np.dtype(np.int64 if integer else np.float64)))
        elif totals[f"{slot}_not_int"] == 0:
            types.append(FeatureType(name, slot, "plain", np.dtype(np.int64)))
        elif totals[f"{slot}_text"] > 0:  # pandas keeps the column as strings: FT refuses it
            types.append(FeatureType(name, slot, "text", np.dtype(object)))
        else:
            types.append(_mapped(frame, name, slot))
    return types


def _mapped(frame: Any, name: str, slot: str) -> FeatureType:
    """A CSV column of numbers in other forms or bools: its distinct fields, typed together on the driver."""
    fields = frame.select(slot).distinct().limit(MAX_TYPED_FIELDS + 1).toArrow().column(slot).combine_chunks()
    if len(fields) > MAX_TYPED_FIELDS:
        raise UserError(f"Feature column '{name}' has more than {MAX_TYPED_FIELDS:,} distinct values that are not "
                        "plain decimal numbers: the Spark engine cannot type it for the Flip Test; run with "
                        "--engine local")
    keys = pc.fill_null(fields.cast(pa.string()), "")  # an empty field arrives as null; pandas reads "" as missing
    typed = infer_csv_values(keys)
    return FeatureType(name, slot, "mapped", typed.dtype, keys, typed.to_numpy())


def feature_frame(batch: pa.Table | pa.RecordBatch, types: list[FeatureType]) -> pd.DataFrame:
    """The rows of ``batch`` as the local reader's feature DataFrame (same dtypes, same values)."""
    columns: dict[str, Any] = {}
    for t in types:
        column = batch.column(t.slot)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if t.kind == "plain":
            missing = pc.or_(pc.is_null(column), pc.is_in(column, value_set=NA_STRINGS))
            cast = pc.if_else(missing, pa.scalar(None, column.type), column).cast(pa.from_numpy_dtype(t.dtype))
            columns[t.name] = cast.to_numpy(zero_copy_only=False)
        elif t.kind == "mapped":
            positions = pc.index_in(pc.fill_null(column.cast(pa.string()), ""), value_set=t.keys).to_numpy()
            columns[t.name] = t.values[positions]
        elif t.kind == "arrow":
            columns[t.name] = arrow_to_pandas(column, t.has_null).to_numpy()
        else:
            raise AssertionError(f"feature column {t.name} is not numeric")
    return pd.DataFrame({t.name: pd.Series(columns[t.name], dtype=t.dtype, copy=False) for t in types},
                        index=pd.RangeIndex(batch.num_rows))


# -- exact -----------------------------------------------------------------------------------------------

CountsSchema = "yes long, no long, rows long, error string"


def _exact(marked: Any, types: list[FeatureType], n_a: int, n_d: int) -> float:
    """Facet a on the driver (data order) -> Clarify's classifier, shipped to tasks that count flips in d."""
    started = time.perf_counter()
    slots = [t.slot for t in types]
    a_rows = marked.where(~marked["__d"]).select(*slots, "__p", *ORDER).orderBy(*ORDER).toArrow()
    if a_rows.num_rows != n_a:
        raise UserError(f"The Flip Test read {a_rows.num_rows} rows of facet a where the bias counts found {n_a}")
    x_a, from_object = flip_test.feature_matrix(feature_frame(a_rows, types))
    y_a = a_rows.column("__p").to_numpy(zero_copy_only=False).astype(bool)
    del a_rows
    knn = flip_test.fitted_classifier(x_a, y_a)
    del x_a  # the classifier keeps the matrix it needs (and its tree)
    log.debug("Flip Test: facet a collected and fitted in %.1f s", time.perf_counter() - started)
    d_rows = marked.where(marked["__d"]).select(*slots, "__p", *ORDER)
    one_batch = not flip_test.queries_are_independent(knn)
    if one_batch:  # brute force: Clarify's one batch of all of d, in data order
        d_rows = d_rows.repartition(1).sortWithinPartitions(*ORDER)
    results = d_rows.mapInArrow(_flip_counter(knn, y_a, types, from_object, one_batch), CountsSchema).collect()
    _raise_task_error(results)
    rows = sum(r["rows"] for r in results)
    if rows != n_d:
        raise UserError(f"The Flip Test read {rows} rows of facet d where the bias counts found {n_d}")
    return divide(sum(r["yes"] for r in results) - sum(r["no"] for r in results), n_d)


def _flip_counter(knn: Any, y_a: np.ndarray, types: list[FeatureType], from_object: bool,
                  one_batch: bool) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The task function: F+ and F- of its rows of d (``flip_test.flip_counts``), or the error's message."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if one_batch:
            held = list(batches)
            chunks: Any = [pa.Table.from_batches(held)] if held else []
        else:
            chunks = (pa.Table.from_batches([batch]) for batch in batches)
        for chunk in chunks:
            if chunk.num_rows == 0:
                continue
            try:
                x_d, _ = flip_test.feature_matrix(feature_frame(chunk, types))
                model_d = chunk.column("__p").to_numpy(zero_copy_only=False).astype(bool)
                yes, no = flip_test.flip_counts(knn, y_a, x_d, model_d, from_object)
                yield _counts(yes, no, chunk.num_rows, None)
            except Exception as error:  # noqa: BLE001 - sklearn's message is the metric's error, as locally
                yield _counts(0, 0, 0, str(error))
                return

    return count


def _counts(yes: int, no: int, rows: int, error: str | None) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"yes": [yes], "no": [no], "rows": [rows], "error": [error]},
                                      schema=pa.schema([("yes", pa.int64()), ("no", pa.int64()), ("rows", pa.int64()),
                                                        ("error", pa.string())]))


def _raise_task_error(results: list[Any]) -> None:
    errors = sorted(r["error"] for r in results if r["error"] is not None)
    if errors:
        raise ValueError(errors[0])


# -- sampled ---------------------------------------------------------------------------------------------

def _sampled(marked: Any, types: list[FeatureType], n_a: int, n_d: int, n_sample: int,
             seed: int) -> flip_test.FlipTestValue:
    """FT of a uniform sample of d, each sampled row's neighbours found in all of facet a (module docstring)."""
    functions = _functions()
    slots = [t.slot for t in types]
    # The file by its name: its folder is where this run mounted the data (a temporary folder, a container's
    # /opt/ml/processing/input), which must not change which rows are drawn.
    place = [functions.element_at(functions.split("__file", "/"), -1), *(functions.col(c) for c in ORDER[1:])]
    rank = functions.xxhash64(*place, functions.lit(seed))
    sample = (marked.where(marked["__d"]).select(*slots, "__p", *ORDER).withColumn("__h", rank)
              .orderBy("__h", *ORDER).limit(n_sample).toArrow())
    x_s, _ = flip_test.feature_matrix(feature_frame(sample, types))
    model_s = sample.column("__p").to_numpy(zero_copy_only=False).astype(bool)
    k = flip_test.n_neighbors_for(n_a)
    a_rows = marked.where(~marked["__d"]).select(*slots, "__p", *ORDER)
    candidate = "query int, dist double, __file string, __block long, __id long, y boolean, error string"
    candidates = a_rows.mapInArrow(_nearest_in_block(x_s, k, types), candidate)
    found = functions.when(functions.col("error").isNull(), functions.struct("dist", *ORDER, "y"))
    nearest = functions.slice(functions.array_sort(functions.collect_list(found)), 1, k)  # nulls are skipped
    votes = (candidates.groupBy("query").agg(nearest.alias("nearest"), functions.max("error").alias("error"))
             .select("query", functions.size(functions.filter("nearest", lambda c: c["y"])).alias("votes"), "error")
             .toArrow())
    _raise_task_error(votes.select(["error"]).to_pylist())
    neighbours = np.zeros(n_sample, dtype=bool)
    neighbours[votes.column("query").to_numpy()] = votes.column("votes").to_numpy() * 2 > k
    if len(votes) != n_sample:
        raise UserError(f"The Flip Test found neighbours for {len(votes)} of {n_sample} sampled rows")
    flips = (model_s & ~neighbours).astype(np.int64) - (~model_s & neighbours).astype(np.int64)
    value = divide(int(flips.sum()), n_sample)
    low, high = sample_interval(flips, n_d, CONFIDENCE)
    return flip_test.FlipTestValue(value, {"sampled": True, "sample_rows": n_sample, "facet_d_rows": n_d,
                                           "seed": seed, "interval": [low, high], "confidence": CONFIDENCE})


def _functions() -> Any:
    from .spark import import_pyspark

    return import_pyspark().functions


def sample_interval(flips: np.ndarray, population: int, confidence: float) -> tuple[float, float]:
    """The normal interval of the mean of ``flips`` (each -1, 0 or +1), a sample without replacement of
    ``population`` rows (finite-population corrected: zero width when the sample is all of them)."""
    n = len(flips)
    mean = float(flips.mean())
    if n < 2 or n >= population:
        return mean, mean
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(flips.std(ddof=1)) / math.sqrt(n) * math.sqrt((population - n) / (population - 1))
    return max(-1.0, mean - half), min(1.0, mean + half)


def _nearest_in_block(x_s: np.ndarray, k: int, types: list[FeatureType]
                      ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The task function: for each sampled row, its k nearest rows in each block of the task's facet-a rows
    (exact distances from a tree: the same value for a pair in every task), with where they stand."""

    def nearest(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from sklearn.neighbors import NearestNeighbors

        pending: list[pa.RecordBatch] = []
        held = 0

        def search(block: pa.Table) -> list[pa.RecordBatch]:
            x_a, _ = flip_test.feature_matrix(feature_frame(block, types))
            algorithm = "kd_tree" if x_a.shape[1] <= 15 else "ball_tree"
            found = min(k, block.num_rows)
            search = NearestNeighbors(n_neighbors=found, algorithm=algorithm, leaf_size=30, p=2).fit(x_a)
            distances, rows = search.kneighbors(x_s, return_distance=True)
            rows = rows.ravel()
            take = pa.array(rows)
            return pa.table({
                "query": np.repeat(np.arange(len(x_s), dtype=np.int32), found), "dist": distances.ravel(),
                "__file": block.column("__file").take(take), "__block": block.column("__block").take(take),
                "__id": block.column("__id").take(take), "y": block.column("__p").take(take),
                "error": pa.nulls(len(rows), pa.string())}).to_batches()

        try:
            for batch in batches:
                pending.append(batch)
                held += batch.num_rows
                if held >= BLOCK_ROWS:
                    yield from search(pa.Table.from_batches(pending))
                    pending, held = [], 0
            if held:
                yield from search(pa.Table.from_batches(pending))
        except Exception as error:  # noqa: BLE001 - sklearn's message is the metric's error, as locally
            yield pa.RecordBatch.from_pydict({"query": pa.array([0], pa.int32()), "dist": [0.0],
                                              "__file": [""], "__block": [0], "__id": [0], "y": [False],
                                              "error": [str(error)]})

    return nearest
