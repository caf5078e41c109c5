"""How the Spark engine reads a dataset: where the rows are, their headers, JSON Lines records as
columns, and the model's predicted labels as a stage next to the GROUP BY.

Where. A local path is listed on the driver as the local reader lists it (its files go to Spark by
name). A URI with a scheme (``s3a://``, ``hdfs://``, ``file://``, ``gs://``, ...) is handed to Spark
unchanged, read recursively like a local folder, and never opened by the driver: its headers come
from Spark too (the first non-blank line of the first file in name order, or the Parquet schema).

Parquet parts. Read by name, and typed as the local reader types them: parts that type a column otherwise
are read in groups (``parquet_parts``, from ``ParquetTable.read_type``'s decision) and cast by the local
reader's cast in a stage over those parts' rows only (``PartCast``).

Rows as a stage. JSON Lines records and model predictions need Python: ``RowStage`` runs in each task
over Arrow batches (``mapInArrow``). For JSON Lines it applies the config's JMESPath to every line with
the local reader's own functions (``analyzer.data.json_format``) and returns each role value as its
JSON text, so that the driver gets back exact Python values (1 and 1.0 and "1" stay apart) and types
the distinct values as pandas types the whole column. For predictions it types each batch's feature
values with the local reader's functions, calls the model through ``ModelEndpoint.client()`` (the same
client, batching, retries and payload limits as the local engine) and returns each predicted label as
JSON text with the dtype of its batch: the driver joins the batches' dtypes as ``numpy.concatenate``
does locally. A record or model error becomes one row carrying the message (the GROUP BY keeps it),
so the job fails with that message, not with a Spark stack trace.

Executor-side code is at module level (pickled by reference: Lucent is installed where tasks run).
This module imports pyspark only inside functions the engine calls.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer import media
from analyzer.config import AnalysisConfig
from analyzer.data.accumulate import arrow_to_pandas
from analyzer.data.csv_format import (
    HEADER_SAMPLE_RECORDS,
    NA_STRINGS,
    generated_names,
    header_row_decision,
    infer_csv_values,
    pandas_header_names,
)
from analyzer.data.files import list_data_files, no_data_rows, open_stream
from analyzer.data.json_format import (
    NO_FEATURES,
    ROLE_PREFIX,
    JsonTable,
    column_names,
    compile_jmespath,
    describe_value,
    parse_json,
)
from analyzer.errors import DataError, DependencyError, UserError

log = logging.getLogger(__name__)

POSITION = ("__file", "__block", "__id")  # where a row stands: file, split, position (order of first appearance)
ERROR, KIND = "__error", "__kind"
PREDICTED, PREDICTED_DTYPE = "__pred", "__pred_dtype"
_FIRST_LINE_BYTES = 1 << 20
# What a Spark cluster needs on its classpath to read a scheme (the error names it when it is missing).
FILESYSTEM_PACKAGES = {
    "s3a": "hadoop-aws (the org.apache.hadoop:hadoop-aws jar of the cluster's Hadoop version, with the AWS SDK "
           "bundle it depends on; e.g. --packages org.apache.hadoop:hadoop-aws:<hadoop version>)",
    "gs": "the Google Cloud Storage connector (gcs-connector)",
    "abfs": "hadoop-azure", "abfss": "hadoop-azure", "wasb": "hadoop-azure", "wasbs": "hadoop-azure",
}
# Spark's error for a Parquet part that types a column otherwise than the schema it reads the parts with
_PARQUET_TYPE_MISMATCH = re.compile(r"PARQUET_COLUMN_DATA_TYPE_MISMATCH\] Encountered error while reading file (\S+?)\. "
                                    r"Data type mismatches when reading Parquet column \[?(.+?)\]?\. Expected Spark "
                                    r"type (\S+), actual Parquet type (\S+?)\.")
_MISSING_FILESYSTEM = re.compile(r"No FileSystem for scheme|ClassNotFoundException: Class \S+FileSystem not found")


def cluster_uri(dataset_path: Path | str) -> str | None:
    """``dataset_path`` when it is a URI Spark should read as it is (a scheme of two letters or more:
    one letter is a Windows drive), else None (a local path, listed on the driver)."""
    text = str(dataset_path)
    scheme = urlsplit(text).scheme if "://" in text else ""
    return text if len(scheme) > 1 else None


@dataclass(eq=False)
class Layout:
    """What the driver knows about a dataset before Spark reads it (``_locate_roles`` reads it like a
    ``Table``: ``headers``, ``role_columns``, ``source``)."""

    source: str
    paths: list[str]  # what Spark reads: the local files, or the URI
    headers: list[str]
    files: list[Path] = field(default_factory=list)  # local files (messages); [] for a URI
    role_columns: dict[str, str] = field(default_factory=dict)  # JSON Lines: label / predicted_label columns
    n_features: int = 0  # JSON Lines: feature values per record
    # Parquet: the file's column each header names (read by name: parts may order them differently, and
    # ``headers`` in the config renames them in the first file's order)
    file_columns: list[str] = field(default_factory=list)
    table: Any = None  # Parquet of local files: the local reader's ``ParquetTable`` (``parquet_parts``)

    @property
    def uri(self) -> bool:
        return not self.files


def spark_error_reason(error: BaseException) -> str:
    """The Java or Python exception line of a Spark error, without its stack trace."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        cause = line.lstrip(": ")
        if not cause.startswith("at ") and re.match(r"^[\w.$]+(Exception|Error): ", cause):
            return cause[:500]
    return (lines[0] if lines else type(error).__name__)[:500]


@contextlib.contextmanager
def reading(uri: str) -> Iterator[None]:
    """Spark errors about ``uri`` (a missing filesystem, a path not found, a refused connection) as a
    ``UserError`` naming the URI (and, for a missing filesystem, what the cluster needs installed)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - py4j / Spark errors: the reason, not the Java trace
        reason = spark_error_reason(error)
        scheme = urlsplit(uri).scheme
        if _MISSING_FILESYSTEM.search(str(error)):
            package = FILESYSTEM_PACKAGES.get(scheme, f"the Hadoop filesystem for {scheme}://")
            raise UserError(f"dataset_uri {uri}: this Spark cluster cannot read {scheme}:// URIs ({reason}). Put "
                            f"{package} on the cluster's classpath (driver and executors), or copy the data to "
                            "a filesystem the cluster reads") from None
        mismatch = _PARQUET_TYPE_MISMATCH.search(str(error))
        if mismatch:
            part, column, spark_type, part_type = mismatch.groups()
            raise UserError(f"dataset_uri {uri}: the Parquet part {part} has column {column!r} as {part_type}, but "
                            f"Spark reads the parts of a URI with one schema, where it is {spark_type} (another "
                            "part's type). Write every part with the same column types, or give a local path (its "
                            "parts are cast to one type, as pandas.read_parquet casts them)") from None
        raise UserError(f"dataset_uri {uri}: Spark cannot read it: {reason}") from None


def read_layout(session: Callable[[], Any], config: AnalysisConfig, dataset_path: Path | str) -> Layout:
    """Headers and files of the dataset (for a URI, through Spark: the driver opens nothing).
    ``session``: the Spark session, called only for a URI (local files: no JVM starts here, so a config
    that names no column of the data fails at once)."""
    from analyzer.data.loader import open_table

    uri = cluster_uri(dataset_path)
    if config.dataset_type == media.JSON_LINES:
        source = uri or str(dataset_path)
        files = [] if uri else list_data_files(Path(dataset_path))
        line, where = _first_spark_line(session(), uri) if uri else _first_local_line(files, source)
        return _json_layout(config, source, [uri] if uri else [str(f) for f in files], files, line, where)
    if uri is None:
        table = open_table(config, Path(dataset_path), config.headers, chunk_rows=1)  # headers only
        layout = Layout(table.source, [str(path) for path in table.files], list(table.headers), list(table.files))
        if config.dataset_type == media.PARQUET:
            layout.file_columns, layout.table = [table.file_column(h) for h in table.headers], table
        return layout
    spark = session()
    with reading(uri):
        if config.dataset_type == media.PARQUET:
            # the columns of the first file in name order, as locally (Spark's own schema is any part's)
            parts = sorted(spark.read.option("recursiveFileLookup", "true").parquet(uri).inputFiles())
            columns = list(spark.read.parquet(parts[0]).columns)
            headers = [str(h) for h in config.headers] if config.headers is not None else columns
            if len(headers) != len(columns):
                raise DataError(f"Headers in config do not match with the number of columns in the dataset. "
                                f"`headers` names {len(headers)} columns but {uri} has {len(columns)}: {columns}.")
            return Layout(uri, [uri], headers, file_columns=columns)
        if config.headers is not None:
            return Layout(uri, [uri], [str(h) for h in config.headers])
        lines, where = _first_spark_lines(spark, uri, 1 + HEADER_SAMPLE_RECORDS)
        first, *sample = csv.reader(lines)
        # The local reader's header rule, on the first file's first lines (a record spanning lines aside)
        is_header, why = header_row_decision(first, sample)
        log.info("%s is %s: %s (no `headers` in the analysis config; set it if this is wrong)", where,
                 "the header row" if is_header else "data", why)
        return Layout(uri, [uri], pandas_header_names(first) if is_header else generated_names(len(first)))


def parquet_parts(layout: Layout, names: Sequence[str]) -> list[tuple[list[str], dict[str, pa.DataType]]]:
    """The Parquet files Spark reads, in groups it can read together (``names``, the headers read, typed
    alike in a group's files: Spark reads a group with one schema, and fails on a part that types a column
    otherwise), each with the Arrow type to cast a header to where the group's differs from the one the
    local reader reads every part as (``ParquetTable.read_type``: the first part's type, or the type
    promoting all; its refusals, such as int64 and string parts, are raised here, before Spark starts).
    Below a URI the driver opens nothing: one group, no cast."""
    table = layout.table
    if table is None:
        return [(list(layout.paths), {})]
    targets = {name: table.read_type(name) for name in names}
    groups: dict[tuple[pa.DataType, ...], tuple[list[str], dict[str, pa.DataType]]] = {}
    for path in table.files:
        types = tuple(table.part_type(path, name) for name in names)
        casts = {name: targets[name] for name, part in zip(names, types, strict=True) if part != targets[name]}
        groups.setdefault(types, ([], casts))[0].append(str(path))
    return list(groups.values())


@dataclass
class PartCast:
    """A Spark stage (``mapInArrow``) over the rows of Parquet parts that type columns otherwise than the
    dataset: each such column (``slot`` -> Arrow type) cast by the local reader's own cast (``cast_part``:
    Spark's casts differ, e.g. a double 1.0 as a string is "1.0" in Spark, "1" in Arrow), then given as
    the Arrow type Spark takes for the column's Spark type (``spark``, same values). Other columns pass."""

    targets: dict[str, pa.DataType]
    spark: dict[str, pa.DataType]
    columns: dict[str, str]  # slot -> the Parquet column (messages)
    source: str

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from analyzer.data.parquet_format import cast_part

        for batch in batches:
            arrays = []
            for name, values in zip(batch.schema.names, batch.columns, strict=True):
                if name in self.targets:
                    values = cast_part(values, self.targets[name], self.source, self.columns[name])
                    if pa.types.is_dictionary(values.type):
                        values = values.dictionary_decode()
                    if values.type != self.spark[name]:
                        values = values.cast(self.spark[name])
                arrays.append(values)
            yield pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


MALFORMED = "__malformed"  # CSV: the raw line of a record without one field per header (else null)
_LISTED_ROWS = 10  # malformed rows named in the error, as the local reader's


def malformed_rows_error(layout: Layout, total: int, firsts: Sequence[dict[str, Any]]) -> DataError:
    """The local reader's error for ``total`` CSV rows without one field per header. ``firsts``: some of
    them as Spark found them (``__file``, ``__block``, ``__id`` and the raw line ``MALFORMED``). A local
    file is read again on the driver for its rows' line numbers, as the local reader counts them; a file
    below a URI is named with the line itself (Spark knows no line numbers)."""
    from analyzer.data.csv_format import rows_with_wrong_width

    width = len(layout.headers)
    local: dict[str, int] = {}
    for index, path in enumerate(layout.files):
        local.setdefault(os.path.abspath(path), index)
        local.setdefault(os.path.realpath(path), index)

    def local_index(uri: str) -> int | None:
        path = unquote(urlsplit(uri).path) if "://" in uri or uri.startswith("file:") else uri
        return local.get(os.path.abspath(path), local.get(os.path.realpath(path)))

    ordered = sorted(firsts, key=lambda row: (local_index(row["__file"]) or 0, row["__file"], row["__block"],
                                              row["__id"]))
    named: list[str] = []
    done: set[str] = set()
    for row in ordered:
        if len(named) >= _LISTED_ROWS:
            break
        index, line = local_index(row["__file"]), row[MALFORMED] or ""
        fields = len(next(csv.reader([line]), []))
        if index is None:
            named.append(f"{row['__file']}: a row has {fields} fields: {line[:200]!r}")
            continue
        path = layout.files[index]
        if str(path) in done:
            continue
        done.add(str(path))
        found, _ = rows_with_wrong_width(path, 0, 1, width, total)
        named += ([f"{path} line {number} has {count} fields" for number, count in found]
                  or [f"{path}: a row has {fields} fields: {line[:200]!r}"])
    listed = named[:_LISTED_ROWS]
    if total == 1:
        return DataError(f"{listed[0]}, but the dataset has {width} columns (headers: {layout.headers}). "
                         "Every row needs one field per column: fix or remove that row.")
    rest = total - len(listed)
    more = f"; and {rest} more such row(s)" if rest > 0 else ""
    return DataError(f"{total} rows have another number of fields than the dataset's {width} columns "
                     f"(headers: {layout.headers}): {'; '.join(listed)}{more}. Every row needs one field per "
                     "column: fix or remove those rows.")


def _first_local_line(files: list[Path], source: str) -> tuple[str, str]:
    """The first non-blank line of the first local file that has one (JSON Lines: the feature count)."""
    for path in files:
        with open_stream(path) as stream:
            data = b""
            while True:
                chunk = stream.read(_FIRST_LINE_BYTES)
                data += chunk
                lines = data.split(b"\n")
                complete = lines if not chunk else lines[:-1]
                for number, line in enumerate(complete, start=1):
                    text = line.decode("utf-8-sig" if number == 1 else "utf-8", errors="replace")
                    if text.strip():
                        return text, f"{path} line {number}"
                if not chunk:
                    break
    raise no_data_rows(source, files)


def _first_spark_line(spark: Any, uri: str) -> tuple[str, str]:
    """The first non-blank line of the first file (in name order) below ``uri``, read by Spark."""
    lines, where = _first_spark_lines(spark, uri, 1)
    return lines[0], where


def _first_spark_lines(spark: Any, uri: str, n: int) -> tuple[list[str], str]:
    """The first ``n`` non-blank lines of the first file (in name order) below ``uri`` that has one,
    read by Spark, and where they start."""
    from pyspark.sql import functions

    with reading(uri):
        files = sorted(spark.read.option("recursiveFileLookup", "true").text(uri).inputFiles())
        for name in files:
            rows = (spark.read.text(name).where(functions.length(functions.trim("value")) > 0)
                    .limit(n).collect())  # one file, its splits in order: its first such lines
            if rows:
                lines = [row["value"] for row in rows]
                lines[0] = lines[0].lstrip("\ufeff")
                return lines, f"{name} (first record)"
    raise DataError(f"The dataset {uri} has no data rows (files read: {', '.join(files[:3]) or 'none'}).")


def _json_layout(config: AnalysisConfig, source: str, paths: list[str], files: list[Path], line: str,
                 where: str) -> Layout:
    """The JSON Lines table's headers, named from the first record as ``JsonTable`` names them."""
    features = compile_jmespath("features", config.features) if config.features else None
    if features is None:
        JsonTable([], source, config, json_lines=True)  # raises the local reader's "features required"
    roles = {role: compile_jmespath(role, getattr(config, role)) for role in ("label", "predicted_label")
             if getattr(config, role) is not None}
    row = _json_record(line, where, features, roles)[0]
    feature_names, role_columns = column_names(len(row), list(roles), config.headers, source, where)
    return Layout(source, paths, feature_names + list(role_columns.values()), files, role_columns, len(row))


def _json_record(line: str, where: str, features: Any, roles: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """One JSON Lines record's feature values and role values, checked as ``JsonTable`` checks them."""
    try:
        record = parse_json(line.lstrip("\ufeff"), where)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno}). Each line of a "
                        "JSON Lines file must hold one JSON record.") from None
    row = features.search(record)
    if not isinstance(row, list):
        raise DataError(f"{NO_FEATURES} The `features` JMESPath {features.expression!r} gives {describe_value(row)} "
                        f"on {where}; it must select a list of feature values.")
    values = {}
    for role, expression in roles.items():
        value = expression.search(record)
        if isinstance(value, list | dict):
            raise DataError(f"{ROLE_PREFIX[role]} The `{role}` JMESPath {expression.expression!r} "
                            f"gives a {type(value).__name__} on {where}; it must select one value.")
        values[role] = value
    return row, values


def json_text(value: Any) -> str | None:
    """A value as the JSON text the driver reads back exactly (None: missing)."""
    if value is None:
        return None
    return json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o), allow_nan=True)


def json_values(texts: pa.Array) -> list[Any]:
    """The values ``json_text`` wrote (null: None)."""
    return [None if text is None else json.loads(text) for text in texts.to_pylist()]


def predicted_values(texts: pa.Array, dtypes: Sequence[str]) -> pd.Series:
    """Predicted labels from their JSON texts, with the dtype ``numpy.concatenate`` gives the batches'
    arrays locally (their dtypes are ``dtypes``)."""
    dtype = np.result_type(*(np.dtype(d) for d in dtypes)) if dtypes else np.dtype(object)
    return pd.Series(np.array(json_values(texts), dtype=dtype))


@dataclass
class RowStage:
    """What each Spark task runs over its Arrow batches (``mapInArrow``): JSON Lines records into role
    slots, and / or the model's predicted label of every row. Picklable: the endpoint travels with it.

    ``slots``: output role slot -> its source (CSV / Parquet: an input column ``c<i>``, passed through;
    JSON Lines: ``("feature", j)`` or ``("role", name)``, written as JSON text)."""

    dataset_type: str
    headers: list[str]
    slots: dict[str, Any]
    feature_names: list[str] = field(default_factory=list)
    features: str | None = None  # JSON Lines: the JMESPath expressions
    roles: dict[str, str] = field(default_factory=dict)
    n_features: int = 0
    source: str = ""
    endpoint: Any = None  # analyzer.predict.ModelEndpoint: predict when set
    probability_threshold: float = 0.5
    # Each feature's dtype over the whole column (``merged_dtype`` of a ``DtypeScan``): a batch's values are
    # converted to it, so the model gets the values the local reader would send. Empty: as typed per batch.
    feature_dtypes: dict[str, str] = field(default_factory=dict)
    # Model requests one task keeps in flight (``predictor.max_concurrency`` shared out among the stage's
    # tasks: ``spark_shards.wave_plan``); None: the client's default.
    client_concurrency: int | None = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        client = None
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                try:
                    if self.endpoint is not None and client is None:
                        options = {} if self.client_concurrency is None else {"concurrency": self.client_concurrency}
                        client = self.endpoint.client(**options)
                    yield self._rows(batch, client)
                except (UserError, DependencyError) as error:
                    yield self._error_row(batch, error)
                    return  # the job fails with this message: no need to score the rest of this task
        finally:
            if client is not None:
                client.close()

    def _rows(self, batch: pa.RecordBatch, client: Any) -> pa.RecordBatch:
        json_lines = self.dataset_type == media.JSON_LINES
        columns: dict[str, pa.Array] = {}
        if json_lines:
            records, frame = self._json_records(batch)
            for slot, (kind, key) in self.slots.items():
                columns[slot] = pa.array([json_text(row[key] if kind == "feature" else roles[key])
                                          for row, roles in records], pa.string())
            n_rows = len(records)
            keep = pc.invert(pc.equal(pc.utf8_trim_whitespace(batch.column("__line")), ""))
            positions = [pc.filter(batch.column(name), keep) for name in POSITION]
        else:
            columns = {slot: batch.column(slot) for slot in self.slots}
            frame = self._features(batch) if client is not None else None
            n_rows = batch.num_rows
            positions = [batch.column(name) for name in POSITION]
        if client is not None:
            assert frame is not None
            labels = np.asarray(client.predict(frame).predicted_labels(self.probability_threshold))
            columns[PREDICTED] = pa.array([json_text(v) for v in labels.tolist()], pa.string())
            columns[PREDICTED_DTYPE] = pa.array([labels.dtype.str] * n_rows, pa.string())
        columns[ERROR] = pa.nulls(n_rows, pa.string())
        columns[KIND] = pa.nulls(n_rows, pa.string())
        columns.update(zip(POSITION, positions, strict=True))
        return pa.RecordBatch.from_pydict(columns)

    def _json_records(self, batch: pa.RecordBatch) -> tuple[list[tuple[list[Any], dict[str, Any]]], pd.DataFrame | None]:
        features = compile_jmespath("features", self.features)
        roles = {role: compile_jmespath(role, expression) for role, expression in self.roles.items()}
        records = []
        for line, path in zip(batch.column("__line").to_pylist(), batch.column("__file").to_pylist(), strict=True):
            if not line.strip():
                continue
            where = f"{path} record {line.strip()[:60]!r}"
            row, values = _json_record(line, where, features, roles)
            if len(row) != self.n_features:
                raise DataError(f"{NO_FEATURES} {where} has {len(row)} feature values but the first record has "
                                f"{self.n_features}. Every record needs the same features.")
            nested = next((v for v in row if isinstance(v, list | dict)), None)
            if nested is not None:
                raise DataError(f"{NO_FEATURES} A feature is a {type(nested).__name__} on {where}; `features` must "
                                "select a flat list of values.")
            records.append((row, values))
        frame = None
        if self.endpoint is not None:  # typed as JsonTable types its columns (pandas, from the values)
            rows = [row for row, _ in records]
            frame = pd.DataFrame(rows, columns=self.headers[:self.n_features])[self.feature_names]
            for name in self.feature_names:
                j = self.headers.index(name)
                frame[name] = _coerce(frame[name], self.feature_dtypes.get(name),
                                      lambda j=j: pd.Series([row[j] for row in rows], dtype=object))
        return records, frame

    def _features(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """The batch's feature rows, typed by the local reader's functions (CSV: pandas' typing of the
        raw fields; Parquet: Arrow's conversion)."""
        typed = {}
        for name in self.feature_names:
            values = batch.column(f"c{self.headers.index(name)}")
            if self.dataset_type == media.CSV:  # an empty field arrives as null; pandas reads "" as missing
                fields = pc.fill_null(values.cast(pa.string()), "")
                series = infer_csv_values(fields)
                as_text = functools.partial(_csv_strings, fields)  # an object column keeps the fields as text
            else:
                series = arrow_to_pandas(values, values.null_count > 0)
                as_text = functools.partial(series.astype, object)
            typed[name] = _coerce(series.reset_index(drop=True), self.feature_dtypes.get(name), as_text)
        return pd.DataFrame(typed, index=pd.RangeIndex(batch.num_rows))

    def feature_frame(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """The batch's feature rows as the model gets them."""
        if self.dataset_type == media.JSON_LINES:
            frame = self._json_records(batch)[1]
            assert frame is not None
            return frame
        return self._features(batch)

    def _error_row(self, batch: pa.RecordBatch, error: BaseException) -> pa.RecordBatch:
        kind = "dependency" if isinstance(error, DependencyError) else "data" if isinstance(error, DataError) else "user"
        columns: dict[str, pa.Array] = {}
        for slot in self.slots:
            columns[slot] = pa.nulls(1, pa.string() if self.dataset_type == media.JSON_LINES
                                     else batch.schema.field(slot).type)
        if self.endpoint is not None:
            columns[PREDICTED] = pa.nulls(1, pa.string())
            columns[PREDICTED_DTYPE] = pa.nulls(1, pa.string())
        columns[ERROR] = pa.array([str(error)], pa.string())
        columns[KIND] = pa.array([kind], pa.string())
        for name in POSITION:
            columns[name] = batch.column(name).slice(0, 1)
        return pa.RecordBatch.from_pydict(columns)


def stage_error(kind: str, message: str) -> Exception:
    """The exception a stage's error row stands for."""
    return DependencyError(message) if kind == "dependency" else DataError(message) if kind == "data" else UserError(message)


@dataclass
class DtypeScan:
    """A pass before the predictions (``mapInArrow``): each batch's dtype of every feature, as the local
    reader's functions type that batch, with whether it has missing values or only those. The driver
    merges them (``merged_dtype``) into the dtype the local reader gives the whole column."""

    stage: RowStage

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            try:
                frame = self.stage.feature_frame(batch)
            except UserError:  # a bad record: the prediction pass reports it, naming it
                continue
            names = list(frame.columns)
            missing = [frame[name].isna() for name in names]
            yield pa.RecordBatch.from_pydict({
                "__feature": pa.array(names, pa.string()),
                "__dtype": pa.array([str(frame[name].dtype) for name in names], pa.string()),
                "__missing": pa.array([bool(m.any()) for m in missing], pa.bool_()),
                "__all_missing": pa.array([bool(m.all()) for m in missing], pa.bool_())})


DTYPE_SCAN_SCHEMA = "__feature string, __dtype string, __missing boolean, __all_missing boolean"


def merged_dtype(batches: Sequence[tuple[str, bool, bool]]) -> str:
    """The dtype pandas gives a whole column from its batches' (dtype, has missing, only missing): ints
    and floats make float64, as do ints with a missing value; bools with a missing value, and any other
    mix, make object (the values as read); batches of missing values only do not count."""
    kinds = {dtype for dtype, _, only_missing in batches if not only_missing}
    missing = any(has_missing for _, has_missing, _ in batches)
    if not kinds:
        return batches[0][0]
    if kinds <= {"int64", "float64"}:
        return "float64" if "float64" in kinds or missing else "int64"
    if len(kinds) == 1:
        kind = next(iter(kinds))
        return "object" if kind == "bool" and missing else kind
    return "object"


def _coerce(series: pd.Series, dtype: str | None, as_text: Any) -> pd.Series:
    """``series`` (typed over one batch) in the whole column's ``dtype``; ``as_text()``: its values as an
    object column holds them (a CSV column's raw fields, a JSON column's values)."""
    if dtype is None or str(series.dtype) == dtype:
        return series
    if dtype == "object":
        return as_text()
    return series.astype(dtype)


def _csv_strings(fields: pa.Array) -> pd.Series:
    """A CSV column read as text: the fields as in the file, NaN where pandas sees a missing value."""
    strings = fields.to_numpy(zero_copy_only=False).astype(object)
    strings[pc.is_in(fields, value_set=NA_STRINGS).to_numpy(zero_copy_only=False)] = np.nan
    return pd.Series(strings, dtype=object)
