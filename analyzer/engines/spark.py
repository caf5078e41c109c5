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
counts with the same code as locally, each combination weighted by its rows (``GroupedRows``). Where the
rows are (local files or a URI such as ``s3a://``), JSON Lines records and the model's predicted labels
(a ``mapInArrow`` stage before the same GROUP BY): ``spark_read.py``.

Shards. The job's shards (same boundaries, seed, design and fitted explainer as locally) become the
rows of a DataFrame, one partition per shard; ``mapInPandas`` explains each in a Python worker with
``analyzer.explain.shards`` and returns the bytes of the checkpoint the local engine would have written;
the driver writes them to the job's work area and assembles the result from the checkpoints as
locally. So the outputs are byte-identical. Speculative execution is forced off: no shard is scored
twice. A model error comes back as the shard's error message, not as a Spark stack trace.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
from analyzer.data.loader import cut_scores, locate_roles
from analyzer.data.locate import locate_column
from analyzer.errors import DataError, DependencyError, UserError

from .spark_read import (
    DTYPE_SCAN_SCHEMA,
    ERROR,
    KIND,
    MALFORMED,
    POSITION,
    PREDICTED,
    PREDICTED_DTYPE,
    DtypeScan,
    Layout,
    PartCast,
    RowStage,
    json_values,
    malformed_rows_error,
    merged_dtype,
    parquet_parts,
    predicted_values,
    read_layout,
    reading,
    stage_error,
)

if TYPE_CHECKING:
    from analyzer.explain.shards import ShapSettings, ShardTask, TextShapSettings
    from analyzer.predict import ModelEndpoint, Predictions

    from . import GroupedRows

log = logging.getLogger(__name__)

INSTALL_HINT = ("install the Spark extra with `pip install lucent[spark]` (pyspark 4) and a Java 17 runtime "
                "(for example the openjdk-17-jre-headless package; `java` on PATH or JAVA_HOME set)")
START_SECONDS_VARIABLE = "LUCENT_SPARK_START_SECONDS"
# A session that is not up by then fails the job, naming the master. Starting the JVM took 101-104 s on a
# busy 2-core machine (pyspark alone, local[2]), so the default leaves room; the variable gives more.
START_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0  # per address of the master, before the JVM is even started
DEFAULT_CONNECT_PORT = 15002
# Always set: speculation would score a shard twice (the model is called twice, and in phase 2 the
# concurrency cap would be exceeded); Arrow moves the shards and the groups; a CSV row's fields are all
# counted (with column pruning Spark tokenizes only the columns a query reads, and a row with another
# number of fields than the headers is not seen: it must be refused as locally, _count).
FORCED_CONF = {"spark.speculation": "false", "spark.sql.execution.arrow.pyspark.enabled": "true",
               "spark.sql.csv.parser.columnPruning.enabled": "false"}
# Settings only the cluster's own start can set (a Spark Connect server refuses them from a client).
STATIC_CONF = frozenset({"spark.speculation", "spark.pyspark.python", "spark.ui.enabled", "spark.driver.host",
                         "spark.ui.showConsoleProgress", "spark.executor.memory", "spark.cores.max"})
DEFAULT_CONF = {"spark.ui.showConsoleProgress": "false", "spark.sql.session.timeZone": "UTC"}
# A session on this machine (a local master) listens on loopback only: no Spark UI (it has no authentication
# and would listen on every interface), the driver and its block manager bound to 127.0.0.1. Each key only
# where the user's own Spark configuration does not set it (``SparkEngine``'s conf, spark-defaults.conf,
# PYSPARK_SUBMIT_ARGS; SPARK_LOCAL_IP or SPARK_LOCAL_HOSTNAME choose the driver's address).
LOCAL_CONF = {"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
_ADDRESS_KEYS = ("spark.driver.host", "spark.driver.bindAddress")
_ADDRESS_VARIABLES = ("SPARK_LOCAL_IP", "SPARK_LOCAL_HOSTNAME")
_GATEWAY_COMMAND = re.compile(r"spark-submit|org\.apache\.spark\.(deploy\.SparkSubmit|launcher\.Main)")
STOP_GRACE_S = 5.0  # a gateway JVM given up on: SIGTERM, then SIGKILL after this
STOP_POLL_S = 0.2  # how often the main thread looks up from a wait (a stop request is handled then)
SHARDS_PER_JOB = 64  # shards per Spark job (a wave): enough tasks to fill a cluster, bounded driver memory
_SPARK_TYPES = (media.CSV, media.JSON_LINES, media.PARQUET)
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


# Spark's master URL forms (SparkContext's own parsing, and Spark Connect's sc://): anything else fails
# inside the JVM with a message about its gateway, not about the URL.
_MASTER_FORMS = re.compile(r"local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://\S+|yarn"
                           r"|k8s://\S+|mesos://\S+|sc://\S+")


def check_master_form(master: str) -> None:
    """A user error naming ``master`` when it is not one of the master URL forms Spark accepts."""
    if not _MASTER_FORMS.fullmatch(master):
        raise UserError(f"Spark master {master!r} is not a master URL Spark accepts: use local[N] (or local[*]), "
                        "spark://HOST:PORT, yarn, k8s://URL, or sc://HOST:PORT for Spark Connect")


def check_spark_home() -> None:
    """A user error naming ``SPARK_HOME`` when it is set to a folder without Spark (pyspark starts
    ``$SPARK_HOME/bin/spark-submit`` and fails with a bare "No such file")."""
    home = os.environ.get("SPARK_HOME")
    if home and not (Path(home) / "bin" / "spark-submit").is_file():
        raise UserError(f"SPARK_HOME={home!r} has no bin/spark-submit: point it at a Spark installation, or unset "
                        "it to use the Spark that comes with pyspark")


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


def user_spark_conf() -> dict[str, str]:
    """The Spark settings configured outside Lucent for a session this process starts: spark-defaults.conf
    (in ``SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``), then ``PYSPARK_SUBMIT_ARGS``'s ``--conf key=value``
    and ``--master`` (as ``spark.master``)."""
    conf: dict[str, str] = {}
    folder = os.environ.get("SPARK_CONF_DIR") or (os.path.join(os.environ["SPARK_HOME"], "conf")
                                                  if os.environ.get("SPARK_HOME") else None)
    if folder:
        try:
            text = (Path(folder) / "spark-defaults.conf").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():  # a Java properties file: key, then '=', ':' or spaces, then value
            match = re.match(r"\s*([^#!\s=:][^\s=:]*)\s*[=:\s]?\s*(.*)$", line)
            if match:
                conf[match.group(1)] = match.group(2).strip()
    try:
        words = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError:
        words = []
    for flag, value in zip(words, [*words[1:], ""][:len(words)], strict=True):
        if flag in ("--conf", "-c") and "=" in value:
            key, _, setting = value.partition("=")
            conf[key] = setting
        elif flag.startswith("--conf=") and "=" in flag[len("--conf="):]:
            key, _, setting = flag[len("--conf="):].partition("=")
            conf[key] = setting
        elif flag == "--master" and value:
            conf["spark.master"] = value
    return conf


def start_seconds() -> float:
    """``LUCENT_SPARK_START_SECONDS``, else ``START_TIMEOUT_S``: how long a Spark session may take to start."""
    from analyzer.environment import positive_number

    return positive_number(START_SECONDS_VARIABLE, START_TIMEOUT_S, unit="seconds")


class SparkEngine:
    """Bias counts and SHAP shards on a Spark cluster (``master``: any Spark master URL or ``sc://``;
    None: Spark's own configuration, e.g. ``spark-submit --master``, else ``local[*]``)."""

    name = "spark"

    def __init__(self, master: str | None = None, conf: dict[str, str] | None = None,
                 start_timeout: float | None = None):
        self.master = master
        self.conf = dict(conf or {})
        self.start_timeout = start_timeout if start_timeout is not None else start_seconds()
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
            check_master_form(self.master)
            check_master_reachable(self.master)
        if not (self.master or "").startswith("sc://"):
            check_java()
            check_spark_home()
        builder = sql.SparkSession.builder.appName("lucent")
        if self.master and self.master.startswith("sc://"):
            builder = builder.remote(self.master)
        elif self.master:
            builder = builder.master(self.master)
        conf = self.session_conf()
        connect = bool(self.master and self.master.startswith("sc://"))
        if not connect:
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
        launch = GatewayLaunch()  # the gateway JVM this start launches, ended if the job gives up on it
        thread.start()
        log.info("Starting the Spark session on %s (waiting up to %.0f s: %s)", where, self.start_timeout,
                 START_SECONDS_VARIABLE)
        deadline = time.monotonic() + self.start_timeout
        try:  # short joins: Python runs a stop request's handler (SIGTERM, Ctrl-C) between them
            while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
                thread.join(min(left, STOP_POLL_S))
        except BaseException:  # a stop request while waiting: no JVM left starting behind
            launch.end()
            raise
        if thread.is_alive():
            ended = launch.end()
            if ended:
                log.info("Stopped the Spark gateway that was still starting (process %s)",
                         ", ".join(str(pid) for pid in ended))
            more = f"set {START_SECONDS_VARIABLE} to wait longer"
            if (self.master or "").startswith("local"):  # no master to check: this machine is slow or busy
                raise DependencyError(f"The local Spark session ({where}) did not start within "
                                      f"{self.start_timeout:.0f} s: the JVM is slow to start on a busy machine; {more}")
            raise UserError(f"The Spark session on {where} did not start within {self.start_timeout:.0f} s; check "
                            f"that the master is running and has free workers, or {more}")
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

    def session_conf(self) -> dict[str, str]:
        """The settings the session is started with: Lucent's defaults, loopback only for a local master
        (``LOCAL_CONF``, where the user's Spark configuration does not set them), the engine's ``conf``,
        the forced ones; a Connect client's without the server's static settings."""
        local: dict[str, str] = {}
        if self.local_master():
            user = user_spark_conf()
            own_address = any(os.environ.get(name) for name in _ADDRESS_VARIABLES)
            local = {key: value for key, value in LOCAL_CONF.items()
                     if key not in user and not (own_address and key in _ADDRESS_KEYS)}
        conf = {**DEFAULT_CONF, **local, **self.conf, **FORCED_CONF}
        if self.master and self.master.startswith("sc://"):  # checked on the server once started
            conf = {key: value for key, value in conf.items() if key not in STATIC_CONF}
        return conf

    def local_master(self) -> bool:
        """Whether the session's master is this machine (``local[N]``, or no master configured anywhere:
        pyspark's ``local[*]``). Under spark-submit its configuration is the user's: never."""
        if "PYSPARK_GATEWAY_PORT" in os.environ:
            return False
        master = self.master or user_spark_conf().get("spark.master") or os.environ.get("MASTER") or "local[*]"
        return master.startswith("local")

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None

    def flip_test(self, config: AnalysisConfig, dataset_path: Path | str, dataset: Any, facet: str,
                  sensitive: np.ndarray, predicted: np.ndarray) -> float:
        """The Flip Test with the rows read by Spark (``spark_flip``: exact, or sampled beyond a broadcast)."""
        from .spark_flip import spark_flip_test

        return spark_flip_test(self, config, dataset_path, dataset, facet, sensitive, predicted)

    # -- counts ----------------------------------------------------------------------------------------

    def count_table(self, config: AnalysisConfig, dataset_path: Path | str, *,
                    base_dir: Path | None = None) -> GroupedRows:
        """The role columns as distinct combinations of values with their row counts (one GROUP BY).
        ``dataset_path``: a local path, or a URI Spark reads as it is (``s3a://``, ``hdfs://``, ``file://``)."""
        del base_dir  # side datasets (the only relative paths) are refused below
        refuse_unsupported(config)
        return self._count(config, dataset_path)

    def predict_groups(self, config: AnalysisConfig, dataset: GroupedRows, endpoint: ModelEndpoint) -> Column:
        """Post-training predictions as a Spark stage: the rows ``count_table`` counted into ``dataset`` are
        read again, each task calls the model on its rows (``endpoint.client()``: the local client and
        batching), and the predicted label joins the role columns in the GROUP BY. The driver never holds
        the rows. ``dataset`` is regrouped in place (the job holds it); returns its predicted label."""
        regrouped = self._count(config, dataset.source, endpoint)
        for name in ("label", "predicted_label", "facets", "group", "weights", "n_rows"):
            setattr(dataset, name, getattr(regrouped, name))
        assert regrouped.predicted_label is not None
        return regrouped.predicted_label

    @staticmethod
    def _capped(frame: Any, stage: RowStage, endpoint: ModelEndpoint) -> Any:
        """``frame`` in as many partitions as ``predictor.max_concurrency`` allows prediction tasks at once,
        with each task's share of the cap as its client's concurrency (``spark_shards.wave_plan``): the
        model never has more requests in flight than the cap, however many cores the cluster has."""
        from .spark_shards import wave_plan

        cap = getattr(endpoint.predictor, "max_concurrency", None)
        if cap is None:
            return frame
        plan = wave_plan(cap, max(1, cap))
        stage.client_concurrency = plan.task_concurrency
        log.info("Spark: predictor.max_concurrency %d: predictions in at most %d task(s) at once, %d request(s) "
                 "in flight each", cap, plan.shards_per_wave, plan.task_concurrency)
        return frame.coalesce(plan.shards_per_wave)  # coalesce: fewer partitions, no shuffle (never more)

    def _count(self, config: AnalysisConfig, dataset_path: Path | str, endpoint: ModelEndpoint | None = None,
               ) -> GroupedRows:
        """One GROUP BY over the role columns (and the model's predicted label, with ``endpoint``)."""
        from . import GroupedRows, WeightedColumn
        from .spark_shards import interruptible

        started = time.perf_counter()
        layout = read_layout(lambda: self.session, config, dataset_path)  # no JVM yet for local files
        roles = locate_roles(config, layout, None, None)  # type: ignore[arg-type] - a Layout reads like a Table
        names = list(dict.fromkeys(ref.name for ref in (roles.label, roles.predicted_label, *roles.facets, roles.group)
                                   if ref is not None))
        excluded = {locate_column(c, layout.headers, role="excluded_columns", source=layout.source)
                    for c in config.excluded_columns or []}
        not_features = excluded | {ref.name for ref in (roles.label, roles.predicted_label, roles.joinsource)
                                   if ref is not None}
        feature_names = [h for h in layout.headers if h not in not_features]
        with reading(layout.source) if layout.uri else contextlib.nullcontext():  # Spark resolves the URI here
            # CSV rows without one field per header are refused as locally: counted in this GROUP BY
            checked = config.dataset_type == media.CSV and endpoint is None
            frame = self._read(config, layout, malformed=checked,
                               names=[*names, *(feature_names if endpoint is not None else [])])
        json_lines = config.dataset_type == media.JSON_LINES
        functions = self._sql.functions
        first = functions.struct(*POSITION)  # where a row stands: file, split, position
        aggregates = [functions.count(functions.lit(1)).alias("__rows"), functions.min(first).alias("__first")]
        extra: list[Any] = []
        if checked:  # how many, and each group's first (the driver names up to 10)
            bad = functions.col(MALFORMED).isNotNull()
            aggregates += [functions.sum(functions.when(bad, 1).otherwise(0)).alias("__bad"),
                           functions.min(functions.when(bad, functions.struct(*POSITION, MALFORMED))).alias("__first_bad")]
            # as JSON text: Arrow refuses a null struct whose fields Spark calls non-nullable
            extra = ["__bad", functions.to_json("__first_bad").alias("__first_bad")]
        if json_lines:  # a role value as its JSON text: a feature of the record, or a role's JMESPath
            slots = [f"r{i}" for i in range(len(names))]
            role_of = {column: role for role, column in layout.role_columns.items()}
            sources: dict[str, Any] = {
                slot: ("role", role_of[name]) if name in role_of else ("feature", layout.headers.index(name))
                for slot, name in zip(slots, names, strict=True)}
        else:
            slots = [f"c{layout.headers.index(name)}" for name in names]
            sources = {slot: slot for slot in slots}
        keys = list(slots)
        if json_lines or endpoint is not None:
            stage = RowStage(config.dataset_type, layout.headers, sources, feature_names, config.features,
                             {role: getattr(config, role) for role in layout.role_columns}, layout.n_features,
                             layout.source, endpoint, config.probability_threshold)
            if endpoint is not None:  # the model gets each value typed as over the whole column, as locally
                stage.feature_dtypes = self._feature_dtypes(frame, stage, layout)
                frame = self._capped(frame, stage, endpoint)
            frame = frame.mapInArrow(stage, self._stage_schema(frame, slots, json_lines, endpoint is not None))
            keys += [ERROR, KIND, *([PREDICTED] if endpoint is not None else [])]
            if endpoint is not None:
                aggregates.append(functions.collect_set(PREDICTED_DTYPE).alias("__dtypes"))
        grouped = (frame.groupBy(*keys).agg(*aggregates).orderBy("__first")
                   .select(*keys, "__rows", "__first", *(["__dtypes"] if endpoint is not None else []), *extra))
        try:
            groups = interruptible(self.session, grouped.toArrow)  # a stop request interrupts it at once
        except Exception as error:  # noqa: BLE001 - a malformed file: the reason, not the Java trace
            if layout.uri:
                with reading(layout.source):
                    raise
            raise UserError(f"Spark could not read the dataset {dataset_path}: {_first_line(error)}") from None
        if extra:
            malformed = pc.sum(groups.column("__bad")).as_py() or 0
            if malformed:
                firsts = [json.loads(row) for row in groups.column("__first_bad").to_pylist() if row is not None]
                raise malformed_rows_error(layout, int(malformed), firsts)
        if ERROR in groups.column_names:
            failed = groups.filter(pc.is_valid(groups.column(ERROR)))
            if failed.num_rows:  # the first in the data: groups are in order of first appearance
                raise stage_error(failed.column(KIND)[0].as_py(), failed.column(ERROR)[0].as_py())
        weights = groups.column("__rows").to_numpy().astype(np.int64)
        if weights.sum() == 0:
            raise no_data_rows(layout.source, layout.files)
        typed = {name: self._typed(config, groups.column(slot).combine_chunks(), name)
                 for name, slot in zip(names, slots, strict=True)}
        if json_lines:
            _check_roles_found(layout, typed, config)
        predicted = None
        if endpoint is not None:
            dtypes = sorted({dtype for row in groups.column("__dtypes").to_pylist() for dtype in row or []})
            predicted = Column.from_series(predicted_values(groups.column(PREDICTED).combine_chunks(), dtypes),
                                           "predicted_label")
        weighted = {name: WeightedColumn.weighted(column, weights) for name, column in typed.items()}

        def column(ref: Any) -> Column | None:
            return weighted[ref.name] if ref is not None else None

        dataset = GroupedRows(
            source=layout.source, n_rows=int(weights.sum()), headers=list(layout.headers),
            feature_names=feature_names, label=column(roles.label),
            predicted_label=(WeightedColumn.weighted(predicted, weights) if predicted is not None
                             else column(roles.predicted_label)),
            facets={ref.name: weighted[ref.name] for ref in roles.facets}, group=column(roles.group), weights=weights)
        if endpoint is None:  # scores read from the data are cut at probability_threshold, by the local code
            firsts = groups.column("__first")
            cut_scores(config, dataset, lambda row: f"a row of {firsts[row].as_py()['__file']}")
        where = f"{len(layout.files)} files" if layout.files else layout.source
        if endpoint is not None:
            log.info("Spark: %d predictions from the model in a Spark stage, counted in %d groups (%.1f s)",
                     dataset.n_rows, len(weights), time.perf_counter() - started)
        else:
            log.info("Spark: counted %d rows in %d groups of %s (%s) in %.1f s", dataset.n_rows, len(weights),
                     ", ".join(names), where, time.perf_counter() - started)
        return dataset

    @property
    def _sql(self) -> Any:
        return import_pyspark()

    def _read(self, config: AnalysisConfig, layout: Layout, malformed: bool = False,
              names: Sequence[str] | None = None) -> Any:
        """The dataset as a DataFrame of ``c<i>`` columns (header i; JSON Lines: ``__line``, the raw text
        lines) and where each row stands. ``layout.paths``: local files, or URIs Spark reads recursively.
        ``malformed`` (CSV): also ``MALFORMED``, the raw line of a row with another number of fields than
        ``headers`` (Spark's corrupt-record column; null for the others). Without it such a row would be
        cut or filled with nulls: it is what refuses them (``_count``). ``names`` (Parquet): the headers
        read (default: all), each typed as the local reader types it (``_parquet``)."""
        headers = layout.headers
        parts = parquet_parts(layout, headers if names is None else names) if config.dataset_type == media.PARQUET \
            else []  # (the local reader's refusals of part types, before Spark starts)
        sql, spark = self._sql, self.session
        functions, types = sql.functions, sql.types
        paths = list(layout.paths)
        # Recursive like the local reader, and no partition columns from folder names (it adds none).
        reader = spark.read.option("recursiveFileLookup", "true")
        position = [functions.col("_metadata.file_path").alias("__file"),
                    functions.col("_metadata.file_block_start").alias("__block"),
                    functions.monotonically_increasing_id().alias("__id")]
        if config.dataset_type == media.CSV:
            fields = [types.StructField(f"c{i}", types.StringType()) for i in range(len(headers))]
            if malformed:  # (asking for it also turns off Spark's column pruning: every field is counted)
                fields.append(types.StructField(MALFORMED, types.StringType()))
            raw = (reader.schema(types.StructType(fields))
                   .options(header="false", sep=",", quote='"', escape='"', multiLine="false", mode="PERMISSIVE",
                            columnNameOfCorruptRecord=MALFORMED)
                   .csv(paths))
            columns = [raw[f"c{i}"] for i in range(len(headers))] + ([raw[MALFORMED]] if malformed else [])
        elif config.dataset_type == media.JSON_LINES:
            raw = reader.text(paths)
            columns = [raw["value"].alias("__line")]
        else:
            return self._parquet(reader, layout, headers if names is None else names, parts, position)
        frame = raw.select(*columns, *position)
        if config.dataset_type == media.CSV:
            # Lucent's header rule: a record equal to the headers (spaces, case and a BOM aside) is not data.
            # Cheap tests only (no regexp per row); the first column first, so data rows stop there.
            first_field = functions.lower(functions.trim(functions.col("c0")))
            first_name = headers[0].strip().lower()
            header_row = (first_field == first_name) | (first_field == "\ufeff" + first_name)
            for i, name in enumerate(headers[1:], start=1):
                header_row = header_row & (functions.lower(functions.trim(functions.col(f"c{i}"))) == name.strip().lower())
            frame = frame.where(~functions.coalesce(header_row, functions.lit(False)))
        return frame

    def _parquet(self, reader: Any, layout: Layout, names: Sequence[str],
                 parts: list[tuple[list[str], dict[str, pa.DataType]]], position: list[Any]) -> Any:
        """Parquet parts as the local reader reads them: columns by name (``layout.file_columns``: parts may
        order them differently), and parts that type a column otherwise read in groups (Spark reads a
        group with one schema), cast to the type the local reader gives every part by its own cast
        (``parquet_parts``; ``PartCast``, a Python stage over those parts' rows only)."""
        from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type

        types = self._sql.types
        wanted = {f"c{layout.headers.index(name)}": name for name in names}  # slot -> header
        file_column = {slot: layout.file_columns[layout.headers.index(name)] for slot, name in wanted.items()}
        read = [(reader.parquet(*paths), casts) for paths, casts in parts]
        spark_type = {}  # header -> its Spark type in a group whose parts have the type it is read as
        for raw, casts in read:
            for slot, name in wanted.items():
                if name not in casts:
                    spark_type.setdefault(name, raw.schema[file_column[slot]].dataType)
        frames = []
        for raw, casts in read:
            frame = raw.select(*[raw[f"`{column.replace('`', '``')}`"].alias(slot) for slot, column in file_column.items()],
                               *position)
            if casts:
                targets, as_spark, fields = {}, {}, []
                for slot, name in wanted.items():
                    field = frame.schema[slot]
                    if name in casts:
                        target = targets[slot] = casts[name]
                        try:
                            field = types.StructField(slot, spark_type.get(name) or from_arrow_type(
                                target.value_type if pa.types.is_dictionary(target) else target))
                            as_spark[slot] = to_arrow_type(field.dataType, timezone="UTC")
                        except Exception as error:  # noqa: BLE001 - a type pyspark does not map
                            raise UserError(f"Column {name!r} of the Parquet dataset {layout.source} is read as "
                                            f"{target}, which the Spark engine cannot cast its parts to ({error}); "
                                            "write every part file with the same column types, or run with "
                                            "--engine local") from None
                    fields.append(field)
                schema = types.StructType([*fields, *(frame.schema[name] for name in POSITION)])
                frame = frame.mapInArrow(PartCast(targets, as_spark, file_column, layout.source), schema)
            frames.append(frame)
        if len(frames) > 1:
            log.info("Spark: the Parquet parts of %s read in %d groups of column types, cast to the local reader's",
                     layout.source, len(frames))
        return functools.reduce(lambda a, b: a.union(b), frames)

    def _feature_dtypes(self, frame: Any, stage: RowStage, layout: Layout) -> dict[str, str]:
        """Each feature's dtype over the whole column, merged from every batch's (a ``DtypeScan`` pass:
        only the distinct (feature, dtype, missing) triples reach the driver)."""
        try:
            rows = frame.mapInArrow(DtypeScan(stage), DTYPE_SCAN_SCHEMA).distinct().collect()
        except Exception as error:  # noqa: BLE001 - a malformed file: the reason, not the Java trace
            if layout.uri:
                with reading(layout.source):
                    raise
            raise UserError(f"Spark could not read the dataset {layout.source}: {_first_line(error)}") from None
        batches: dict[str, list[tuple[str, bool, bool]]] = {}
        for row in rows:
            batches.setdefault(row["__feature"], []).append((row["__dtype"], row["__missing"], row["__all_missing"]))
        return {name: merged_dtype(entries) for name, entries in batches.items()}

    def _stage_schema(self, frame: Any, slots: list[str], json_lines: bool, predicts: bool) -> Any:
        """The Spark schema of ``RowStage``'s output, in its order (Spark matches columns by position): the
        role slots, the prediction, the error, the position."""
        types = self._sql.types
        string = types.StringType()
        fields = [types.StructField(slot, string) if json_lines else frame.schema[slot] for slot in slots]
        names = [*([PREDICTED, PREDICTED_DTYPE] if predicts else []), ERROR, KIND]
        fields += [types.StructField(name, string) for name in names]
        fields += [frame.schema[name] for name in POSITION]
        return types.StructType(fields)

    def _typed(self, config: AnalysisConfig, values: pa.Array, name: str) -> Column:
        """A role column from its distinct values, typed as the local reader types the whole column."""
        if config.dataset_type == media.CSV:  # an empty field arrives as null; pandas reads "" as missing
            series = infer_csv_values(pc.fill_null(values.cast(pa.string()), ""))
        elif config.dataset_type == media.JSON_LINES:  # JSON values: pandas infers the dtype from them
            series = pd.Series(json_values(values))
        else:
            series = arrow_to_pandas(values, values.null_count > 0)
        return Column.from_series(pd.Series(series.to_numpy(), dtype=series.dtype, copy=False), name)

    # -- shards ----------------------------------------------------------------------------------------

    def map_shards(self, settings: ShapSettings | TextShapSettings, tasks: Iterator[ShardTask], workers: int,
                   finished: Callable[[int], None]) -> None:
        """Each shard a Spark task (one partition each); checkpoints written here as results arrive."""
        from analyzer.explain.shards import max_concurrency, write_checkpoint

        from .spark_shards import interruptible, wave_plan

        del workers  # Spark decides: one task per free executor core
        rows = [(index, first, stop, pickle.dumps(payload, protocol=5)) for index, first, stop, payload in tasks]
        plan = wave_plan(max_concurrency(settings), SHARDS_PER_JOB)
        log.info("Spark: %d SHAP shards as Spark tasks", len(rows))
        if plan.in_flight is not None:
            log.info("Spark: predictor.max_concurrency: waves of %d shard(s), %d request(s) in flight per task",
                     plan.shards_per_wave, plan.task_concurrency)
        runner = _shard_runner(settings, plan.task_concurrency)
        # Waves of shards, each one Spark job whose results are collected at its end: the tasks of a wave
        # run in parallel (toLocalIterator would run one partition at a time), and the driver holds only a
        # wave's checkpoints. Checkpoints are written, and progress counted, wave by wave; only one wave's
        # tasks are ever in flight, which is how max_concurrency holds (spark_shards.py).
        for start in range(0, len(rows), plan.shards_per_wave):
            wave = pd.DataFrame(rows[start:start + plan.shards_per_wave], columns=["shard", "first", "stop", "payload"])
            shards = (self.session.createDataFrame(wave, "shard long, first long, stop long, payload binary")
                      .repartitionByRange(len(wave), "shard"))  # one shard per task
            try:
                # in a thread of its own: a stop request interrupts the wave's Spark job at once
                results = interruptible(self.session, shards.mapInPandas(
                    runner, "shard long, checkpoint binary, error string, kind string").collect)
            except Exception as error:  # noqa: BLE001 - a lost executor beyond Spark's retries, a killed job
                raise DependencyError(f"Spark could not run the SHAP shards: {_first_line(error)}") from None
            failed = None
            for row in sorted(results, key=lambda r: r["shard"]):
                if row["error"] is None:  # the wave's other shards are kept for a rerun
                    write_checkpoint(settings, int(row["shard"]), row["checkpoint"])
                    finished(int(row["shard"]))
                elif failed is None:
                    failed = row
            if failed is not None:
                raise (UserError if failed["kind"] == "user" else DependencyError)(failed["error"])

    def map_predictions(self, endpoint: ModelEndpoint, frames: Iterator[pd.DataFrame]) -> Iterator[Predictions]:
        """PDP's frames of rows, one Spark task each (``spark_shards.spark_predictions``)."""
        from .spark_shards import spark_predictions

        return spark_predictions(self.session, endpoint, frames, _first_line)


class GatewayLaunch:
    """The Spark gateway processes a session start launches (pyspark's ``spark-submit``, which becomes the
    driver's JVM, and the launcher it runs first): children of this process that were not there when
    the start began, named by their command line. ``end`` stops them with their own children."""

    def __init__(self) -> None:
        self.before = set(_children(_process_table(), os.getpid()))

    def processes(self) -> list[int]:
        table = _process_table()
        launched = [pid for pid in _children(table, os.getpid())
                    if pid not in self.before and _GATEWAY_COMMAND.search(_command_line(pid))]
        tree = list(launched)
        for pid in tree:  # grows while walked: every descendant
            tree.extend(child for child in _children(table, pid) if child not in tree)
        return tree

    def end(self, grace: float = STOP_GRACE_S) -> list[int]:
        """SIGTERM to the launched processes (a JVM runs its shutdown hooks), SIGKILL to those still running
        after ``grace`` seconds; the processes ended."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if _running(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return pids


def _process_table() -> dict[int, int]:
    """Each process's parent (Linux's /proc; psutil where it is installed; else nothing known)."""
    proc = Path("/proc")
    if (proc / "self" / "stat").is_file():
        table = {}
        for entry in proc.iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                table[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        return table
    try:
        import psutil
    except ImportError:
        return {}
    return {process.pid: process.ppid() for process in psutil.process_iter()}


def _children(table: dict[int, int], parent: int) -> list[int]:
    return [pid for pid, ppid in table.items() if ppid == parent]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            import psutil

            return " ".join(psutil.Process(pid).cmdline())
        except Exception:  # noqa: BLE001 - gone, or no psutil: not a gateway we know of
            return ""


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, ended but not yet reaped by pyspark, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _shard_runner(settings: ShapSettings | TextShapSettings,
                  concurrency: int | None = None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task runs over its shards (pickled with ``settings`` in its closure);
    ``concurrency``: the task's model requests in flight at most (None: the client's default)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from analyzer.explain import shards

        opened = False
        try:
            for batch in batches:
                for index, first, stop, payload in zip(batch["shard"], batch["first"], batch["stop"], batch["payload"],
                                                       strict=True):
                    if not opened:
                        shards.init_worker(settings, concurrency)
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
        raise UserError(f"dataset_type: the Spark engine reads {', '.join(_SPARK_TYPES[:-1])} and {_SPARK_TYPES[-1]} "
                        f"datasets in this version, not {config.dataset_type}; run with --engine local")
    used = [key for key in _UNSUPPORTED_KEYS if getattr(config, key) is not None]
    if used:
        raise UserError(f"{', '.join(used)}: not supported by the Spark engine yet; run with --engine local")


def _check_roles_found(layout: Layout, typed: dict[str, Column], config: AnalysisConfig) -> None:
    """JSON Lines: a label / predicted label JMESPath that matches no record fails as locally."""
    from analyzer.data.json_format import ROLE_PREFIX

    for role, name in layout.role_columns.items():
        column = typed.get(name)
        if column is not None and column.nunique == 0:
            raise DataError(f"{ROLE_PREFIX[role]} The `{role}` JMESPath {getattr(config, role)!r} matches nothing "
                            f"in any record of {layout.source}.")


_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.*)$")


def _first_line(error: BaseException) -> str:
    """An error's reason without a JVM stack trace: the last Python exception line a task's traceback
    holds (``ModuleNotFoundError: No module named 'pandas'``), else the message's first non-empty line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    python = [line for line in lines if _PYTHON_ERROR.match(line) and not line.startswith(("org.", "java.", "py4j."))]
    return (python[-1] if python else lines[0] if lines else type(error).__name__)[:500]
