"""The Spark engine: bias counts as one GROUP BY, SHAP shards as Spark tasks. The only module that
imports pyspark (lazily: the extra ``lucent[spark]`` is optional).

DataFrame API only (SQL aggregations, ``mapInPandas``, ``toArrow``, ``toLocalIterator``): no RDD and
no ``sparkContext``, so that the same code runs over Spark Connect (``sc://``).

Counts. Spark reads the files itself, so the driver never holds the rows. Each row keeps only its role
columns (CSV: the raw fields as strings, exactly what Lucent's own reader types) and where it stands
in the data (file, split, position). One GROUP BY returns each distinct combination of role values,
its number of rows and its first row; sorted by first row, the combinations give every ``Column`` the
order of first appearance the local reader gives it. The driver types the distinct values with the
local reader's own functions (``infer_csv_values``, ``arrow_to_pandas``) and the bias report decides and
counts with the same code as locally, each combination weighted by its rows (``GroupedRows``).

Shards. The job's shards (same boundaries, seed, design and fitted explainer as locally) become the
rows of a DataFrame, one partition per shard; ``mapInPandas`` explains each in a Python worker with
``analyzer.explain.shards`` and returns the bytes of the checkpoint the local engine would have written;
the driver writes them to the job's work area and assembles the result from the checkpoints as
locally. So the outputs are byte-identical. Speculative execution is forced off: no shard is scored
twice. A model error comes back as the shard's error message, not as a Spark stack trace.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer import media
from analyzer.config import AnalysisConfig
from analyzer.data import Column
from analyzer.data.accumulate import arrow_to_pandas
from analyzer.data.csv_format import infer_csv_values
from analyzer.data.files import no_data_rows
from analyzer.data.loader import _locate_roles, _open_table
from analyzer.data.locate import locate_column
from analyzer.errors import DependencyError, UserError

if TYPE_CHECKING:
    from analyzer.explain.shards import ShapSettings, ShardTask, TextShapSettings

    from . import GroupedRows

log = logging.getLogger(__name__)

INSTALL_HINT = ("install the Spark extra with `pip install lucent[spark]` (pyspark 4) and a Java 17 runtime "
                "(for example the openjdk-17-jre-headless package; `java` on PATH or JAVA_HOME set)")
START_TIMEOUT_S = 60.0  # a session that is not up by then fails the job, naming the master
CONNECT_TIMEOUT_S = 10.0  # per address of the master, before the JVM is even started
DEFAULT_CONNECT_PORT = 15002
# Always set: speculation would score a shard twice (the model is called twice, and in phase 2 the
# concurrency cap would be exceeded); Arrow moves the shards and the groups.
FORCED_CONF = {"spark.speculation": "false", "spark.sql.execution.arrow.pyspark.enabled": "true"}
# Settings only the cluster's own start can set (a Spark Connect server refuses them from a client).
STATIC_CONF = frozenset({"spark.speculation", "spark.pyspark.python", "spark.ui.enabled", "spark.driver.host",
                         "spark.ui.showConsoleProgress", "spark.executor.memory", "spark.cores.max"})
DEFAULT_CONF = {"spark.ui.showConsoleProgress": "false", "spark.sql.session.timeZone": "UTC"}
SHARDS_PER_JOB = 64  # shards per Spark job (a wave): enough tasks to fill a cluster, bounded driver memory
_SPARK_TYPES = (media.CSV, media.PARQUET)
_UNSUPPORTED_KEYS = ("facet_dataset_uri", "predicted_label_dataset_uri", "time_series_data_config", "segment_config")


def import_pyspark() -> Any:
    """``pyspark.sql``, or a ``UserError`` saying how to install the extra."""
    try:
        import pyspark.sql
    except ImportError as error:
        raise UserError(f"The Spark engine needs pyspark, which cannot be imported ({error}): {INSTALL_HINT}; "
                        "or run with --engine local") from None
    return pyspark.sql


def check_java() -> None:
    """A classic (non-Connect) session starts a JVM: fail with the install hint when there is no Java."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return
    if shutil.which("java") is None:
        raise UserError(f"The Spark engine needs a Java runtime, and none was found: {INSTALL_HINT}")


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The host:port pairs a ``spark://`` (several for a HA master) or ``sc://`` URL names; [] for others
    (``local[*]``, ``yarn``, ``k8s://``: the cluster manager is reached by Spark itself)."""
    if master.startswith("spark://"):
        pairs = []
        for part in master[len("spark://"):].split(","):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"Spark master {master!r} is not spark://host:port")
            pairs.append((host.strip("[]"), int(port)))
        return pairs
    if master.startswith("sc://"):
        parts = urlsplit(master.split(";")[0])
        return [(parts.hostname or "localhost", parts.port or DEFAULT_CONNECT_PORT)]
    return []


def check_master_reachable(master: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, naming the URL, when no address of the master accepts a connection (Spark itself would
    retry for minutes and then print a Java stack trace)."""
    addresses = master_addresses(master)
    reasons = []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as error:
            reasons.append(f"{host}:{port}: {error.strerror or error}")
    if addresses:
        raise UserError(f"The Spark master {master} cannot be reached ({'; '.join(reasons)}). Check --spark-master "
                        "(LUCENT_SPARK_MASTER, SPARK_REMOTE or lucent.spark_master) and that the master is running")


class SparkEngine:
    """Bias counts and SHAP shards on a Spark cluster (``master``: any Spark master URL or ``sc://``;
    None: Spark's own configuration, e.g. ``spark-submit --master``, else ``local[*]``)."""

    name = "spark"

    def __init__(self, master: str | None = None, conf: dict[str, str] | None = None,
                 start_timeout: float = START_TIMEOUT_S):
        self.master = master
        self.conf = dict(conf or {})
        self.start_timeout = start_timeout
        self._session: Any = None

    # -- session ---------------------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        """The ``SparkSession``, started on first use."""
        if self._session is None:
            self._session = self._start()
        return self._session

    def _start(self) -> Any:
        sql = import_pyspark()
        where = self.master or "Spark's configured master"
        if self.master:
            check_master_reachable(self.master)
        if not (self.master or "").startswith("sc://"):
            check_java()
        builder = sql.SparkSession.builder.appName("lucent")
        if self.master and self.master.startswith("sc://"):
            builder = builder.remote(self.master)
        elif self.master:
            builder = builder.master(self.master)
        conf = {**DEFAULT_CONF, **self.conf, **FORCED_CONF}
        connect = bool(self.master and self.master.startswith("sc://"))
        if connect:  # a Connect client cannot set the server's static settings: they are checked once started
            conf = {key: value for key, value in conf.items() if key not in STATIC_CONF}
        else:
            # pyspark marks a process that once opened a Connect session (an environment variable that
            # outlives it), and would then send a classic master to Connect too: this session is classic.
            for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
                os.environ.pop(name, None)
        if not connect and "PYSPARK_PYTHON" not in os.environ and "spark.pyspark.python" not in conf:
            # The tasks' Python: this interpreter, where Lucent is installed. pyspark reads the variable
            # when the context starts and sends it with every Python function.
            os.environ["PYSPARK_PYTHON"] = sys.executable
            conf["spark.pyspark.python"] = sys.executable
        for key, value in conf.items():
            builder = builder.config(key, value)
        started = time.perf_counter()
        result: dict[str, Any] = {}

        def start() -> None:
            try:
                result["session"] = builder.getOrCreate()
            except Exception as error:  # noqa: BLE001 - reported below without the Java stack trace
                result["error"] = error

        thread = threading.Thread(target=start, name="lucent-spark-start", daemon=True)
        thread.start()
        thread.join(self.start_timeout)
        if thread.is_alive():
            raise UserError(f"The Spark session on {where} did not start within {self.start_timeout:.0f} s; check "
                            "that the master is running and has free workers")
        if "error" in result:
            raise UserError(f"Cannot start Spark on {where}: {_first_line(result['error'])}") from None
        session = result["session"]
        if connect and session.conf.get("spark.speculation", "false").lower() == "true":
            session.stop()
            raise UserError(f"The Spark Connect server {where} runs with spark.speculation=true: a SHAP shard could "
                            "be scored twice. Start it with spark.speculation=false")
        log.info("Spark %s session on %s started in %.1f s", session.version, self.master or session.conf.get(
            "spark.master", "?"), time.perf_counter() - started)
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None

    # -- counts ----------------------------------------------------------------------------------------

    def count_table(self, config: AnalysisConfig, dataset_path: Path, *, base_dir: Path | None = None) -> GroupedRows:
        """The role columns as distinct combinations of values with their row counts (one GROUP BY)."""
        from . import GroupedRows, WeightedColumn

        del base_dir  # side datasets (the only relative paths) are refused below
        started = time.perf_counter()
        refuse_unsupported(config)
        table = _open_table(config, Path(dataset_path), config.headers, chunk_rows=1)  # headers only
        roles = _locate_roles(config, table, None, None)
        names = list(dict.fromkeys(ref.name for ref in (roles.label, roles.predicted_label, *roles.facets, roles.group)
                                   if ref is not None))
        frame = self._read(config, table.files, table.headers)
        slots = [f"c{table.headers.index(name)}" for name in names]
        functions = self._sql.functions
        first = functions.struct("__file", "__block", "__id")  # where a row stands: file, split, position
        grouped = (frame.groupBy(*slots)
                   .agg(functions.count(functions.lit(1)).alias("__rows"), functions.min(first).alias("__first"))
                   .orderBy("__first").select(*slots, "__rows"))
        try:
            groups = grouped.toArrow()
        except Exception as error:  # noqa: BLE001 - a malformed file: the reason, not the Java trace
            raise UserError(f"Spark could not read the dataset {dataset_path}: {_first_line(error)}") from None
        weights = groups.column("__rows").to_numpy().astype(np.int64)
        if weights.sum() == 0:
            raise no_data_rows(table.source, table.files)
        typed = {name: WeightedColumn.weighted(self._typed(config, groups.column(slot).combine_chunks(), name), weights)
                 for name, slot in zip(names, slots, strict=True)}

        def column(ref: Any) -> Column | None:
            return typed[ref.name] if ref is not None else None

        excluded = {locate_column(c, table.headers, role="excluded_columns", source=table.source)
                    for c in config.excluded_columns or []}
        not_features = excluded | {ref.name for ref in (roles.label, roles.predicted_label, roles.joinsource)
                                   if ref is not None}
        dataset = GroupedRows(
            source=table.source, n_rows=int(weights.sum()), headers=list(table.headers),
            feature_names=[h for h in table.headers if h not in not_features], label=column(roles.label),
            predicted_label=column(roles.predicted_label), facets={ref.name: typed[ref.name] for ref in roles.facets},
            group=column(roles.group), weights=weights)
        log.info("Spark: counted %d rows in %d groups of %s (%d files) in %.1f s", dataset.n_rows, len(weights),
                 ", ".join(names), len(table.files), time.perf_counter() - started)
        return dataset

    @property
    def _sql(self) -> Any:
        return import_pyspark()

    def _read(self, config: AnalysisConfig, files: list[Path], headers: list[str]) -> Any:
        """The dataset as a DataFrame of ``c<i>`` columns (header i) and where each row stands."""
        sql, spark = self._sql, self.session
        functions, types = sql.functions, sql.types
        paths = [str(path) for path in files]
        if config.dataset_type == media.CSV:
            schema = types.StructType([types.StructField(f"c{i}", types.StringType()) for i in range(len(headers))])
            raw = (spark.read.schema(schema)
                   .options(header="false", sep=",", quote='"', escape='"', multiLine="false", mode="PERMISSIVE")
                   .csv(paths))
            columns = [raw[f"c{i}"] for i in range(len(headers))]
        else:
            raw = spark.read.parquet(*paths)
            columns = [raw[f"`{name.replace('`', '``')}`"].alias(f"c{i}") for i, name in enumerate(raw.columns)]
        frame = raw.select(*columns, functions.col("_metadata.file_path").alias("__file"),
                           functions.col("_metadata.file_block_start").alias("__block"),
                           functions.monotonically_increasing_id().alias("__id"))
        if config.dataset_type == media.CSV:
            # Lucent's header rule: a record equal to the headers (spaces and a BOM aside) is not data.
            # Cheap tests only (no regexp per row); the first column first, so data rows stop there.
            first_field = functions.trim(functions.col("c0"))
            header_row = (first_field == headers[0].strip()) | (first_field == "\ufeff" + headers[0].strip())
            for i, name in enumerate(headers[1:], start=1):
                header_row = header_row & (functions.trim(functions.col(f"c{i}")) == name.strip())
            frame = frame.where(~functions.coalesce(header_row, functions.lit(False)))
        return frame

    def _typed(self, config: AnalysisConfig, values: pa.Array, name: str) -> Column:
        """A role column from its distinct values, typed as the local reader types the whole column."""
        if config.dataset_type == media.CSV:  # an empty field arrives as null; pandas reads "" as missing
            series = infer_csv_values(pc.fill_null(values.cast(pa.string()), ""))
        else:
            series = arrow_to_pandas(values, values.null_count > 0)
        return Column.from_series(pd.Series(series.to_numpy(), dtype=series.dtype, copy=False), name)

    # -- shards ----------------------------------------------------------------------------------------

    def map_shards(self, settings: ShapSettings | TextShapSettings, tasks: Iterator[ShardTask], workers: int,
                   finished: Callable[[int], None]) -> None:
        """Each shard a Spark task (one partition each); checkpoints written here as results arrive."""
        from analyzer.explain.shards import write_checkpoint

        del workers  # Spark decides: one task per free executor core
        rows = [(index, first, stop, pickle.dumps(payload, protocol=5)) for index, first, stop, payload in tasks]
        log.info("Spark: %d SHAP shards as Spark tasks", len(rows))
        runner = _shard_runner(settings)
        # Waves of shards, each one Spark job whose results are collected at its end: the tasks of a wave
        # run in parallel (toLocalIterator would run one partition at a time), and the driver holds only a
        # wave's checkpoints. Checkpoints are written, and progress counted, wave by wave.
        for start in range(0, len(rows), SHARDS_PER_JOB):
            wave = pd.DataFrame(rows[start:start + SHARDS_PER_JOB], columns=["shard", "first", "stop", "payload"])
            shards = (self.session.createDataFrame(wave, "shard long, first long, stop long, payload binary")
                      .repartitionByRange(len(wave), "shard"))  # one shard per task
            try:
                results = shards.mapInPandas(runner, "shard long, checkpoint binary, error string, kind string").collect()
            except Exception as error:  # noqa: BLE001 - a lost executor beyond Spark's retries, a killed job
                raise DependencyError(f"Spark could not run the SHAP shards: {_first_line(error)}") from None
            for row in sorted(results, key=lambda r: r["shard"]):
                if row["error"] is not None:
                    raise (UserError if row["kind"] == "user" else DependencyError)(row["error"])
            for row in sorted(results, key=lambda r: r["shard"]):
                write_checkpoint(settings, int(row["shard"]), row["checkpoint"])
                finished(int(row["shard"]))


def _shard_runner(settings: ShapSettings | TextShapSettings) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task runs over its shards (pickled with ``settings`` in its closure)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from analyzer.explain import shards

        opened = False
        try:
            for batch in batches:
                for index, first, stop, payload in zip(batch["shard"], batch["first"], batch["stop"], batch["payload"],
                                                       strict=True):
                    if not opened:
                        shards.init_worker(settings)
                        opened = True
                    data, error, kind = None, None, None
                    try:
                        data = shards.shard_checkpoint(int(first), int(stop), pickle.loads(payload))
                    except UserError as failure:
                        error, kind = str(failure), "user"
                    except DependencyError as failure:
                        error, kind = str(failure), "dependency"
                    yield pd.DataFrame({"shard": [int(index)], "checkpoint": [data], "error": [error], "kind": [kind]})
        finally:
            if opened:
                shards.close_worker()

    return run


def refuse_unsupported(config: AnalysisConfig) -> None:
    """What the Spark reader does not do yet, named by its config key (the local engine does it)."""
    if config.dataset_type not in _SPARK_TYPES:
        raise UserError(f"dataset_type: the Spark engine reads {' and '.join(_SPARK_TYPES)} datasets in this "
                        f"version, not {config.dataset_type}; run with --engine local")
    used = [key for key in _UNSUPPORTED_KEYS if getattr(config, key) is not None]
    if used:
        raise UserError(f"{', '.join(used)}: not supported by the Spark engine yet; run with --engine local")


_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.*)$")


def _first_line(error: BaseException) -> str:
    """An error's reason without a JVM stack trace: the last Python exception line a task's traceback
    holds (``ModuleNotFoundError: No module named 'pandas'``), else the message's first non-empty line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    python = [line for line in lines if _PYTHON_ERROR.match(line) and not line.startswith(("org.", "java.", "py4j."))]
    return (python[-1] if python else lines[0] if lines else type(error).__name__)[:500]
