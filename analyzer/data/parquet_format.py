"""Parquet datasets (``application/x-parquet``): only the needed columns, one row group at a time.

Headers are the file's column names (without the index columns pandas stores), or ``headers`` from
the config, which then renames the columns in the first file's order and must count as many. Every file
of a folder must have the same columns, in any order (they are read by name). Column dtypes are those of
``pandas.read_parquet`` on the whole dataset: the Arrow type decides (int64, float64, bool, object
strings, category for dictionary columns), with pyarrow's promotion when there are nulls (int -> float64,
bool -> object). Parts that type a column differently are read as pandas reads the folder: cast to the
first file's type (an int64 part and a double part of whole numbers and nulls give int64 values, float64
with the nulls); when a part's values do not fit that type (1.5 into int64, where pandas fails), cast to
the type promoting all parts (double).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analyzer.data.accumulate import ColumnAccumulator, ToPandas, arrow_to_pandas
from analyzer.data.locate import check_distinct_headers
from analyzer.data.table import TableData
from analyzer.errors import DataError
from analyzer.progress import Progress

logger = logging.getLogger(__name__)

_HEADERS_MISMATCH = "Headers in config do not match with the number of columns in the dataset."
# What pyarrow raises on a damaged file: I/O and Arrow errors, and ValueError (UnicodeDecodeError, bad JSON)
# for metadata that is not valid UTF-8 or JSON.
_CORRUPT = (OSError, ValueError, pa.ArrowException)


class ParquetTable:
    """A Parquet dataset (one or many files) seen as one table with ``headers``."""

    def __init__(self, files: Sequence[Path], source: str, headers: Sequence[str] | None, *, chunk_rows: int):
        self.files = list(files)
        self.source = source
        self.chunk_rows = chunk_rows
        self.role_columns: dict[str, str] = {}
        self._schemas = {path: _schema(path) for path in self.files}
        first = self.files[0]
        self._file_columns = _data_columns(self._schemas[first])
        for path, schema in self._schemas.items():
            _check_same_columns(path, _data_columns(schema), first, self._file_columns)
        self._targets: dict[str, pa.DataType] = {}  # file column -> the type every part is read as
        if headers is None:
            self.headers = list(self._file_columns)
        elif len(headers) != len(self._file_columns):
            raise DataError(
                f"{_HEADERS_MISMATCH} `headers` in the analysis config names {len(headers)} columns but "
                f"{first} has {len(self._file_columns)}: {self._file_columns}. Remove `headers` to use "
                "the Parquet column names, or list every column."
            )
        else:
            check_distinct_headers(headers)
            self.headers = [str(h) for h in headers]
        self._file_column_of = dict(zip(self.headers, self._file_columns, strict=True))

    @property
    def n_files(self) -> int:
        return len(self.files)

    def read(self, columns: Sequence[str], values: Sequence[str] = (), progress: Progress | None = None) -> TableData:
        """Read ``columns`` as ``Column`` objects and ``values`` as Series, one row group at a time."""
        names = [*columns, *values]
        types = {name: self.read_type(name) for name in names}
        accumulators = {name: ColumnAccumulator(name, _value_type(types[name])) for name in names}
        categories: dict[str, list[pa.Array]] = {n: [] for n, t in types.items() if _is_dictionary(t)}
        file_columns = [self._file_column_of[name] for name in names] or self._file_columns[:1]
        n_rows = 0
        for path in self.files:
            try:
                for batch in _open(path).iter_batches(batch_size=self.chunk_rows, columns=file_columns):
                    for name, acc in accumulators.items():
                        array = cast_part(batch.column(self._file_column_of[name]), types[name], path,
                                          self._file_column_of[name])
                        if name in categories:
                            categories[name].append(array.dictionary)
                            array = array.dictionary_decode()
                        acc.add(array)
                    n_rows += batch.num_rows
                    if progress is not None:
                        progress.update(batch.num_rows)
            except _CORRUPT as exc:
                raise _unreadable(path, exc) from exc
        data = TableData(n_rows)
        for name, acc in accumulators.items():
            to_pandas = (_categorical(categories[name], types[name].ordered)
                         if name in categories else arrow_to_pandas)
            try:
                if name in values:
                    data.values[name] = acc.finish_values(to_pandas)
                else:
                    data.columns[name] = acc.finish(to_pandas)
            except pa.ArrowException as exc:  # e.g. a string column with bytes that are not UTF-8
                raise DataError(f"Column {name!r} of {self.source} cannot be converted ({exc}). Check that "
                                "the Parquet files are not corrupt and that text columns hold UTF-8.") from exc
        return data


    def file_column(self, header: str) -> str:
        """The Parquet column that ``header`` names (``headers`` in the config renames them, in the first
        file's order)."""
        return self._file_column_of[header]

    def part_type(self, path: Path, header: str) -> pa.DataType:
        """The Arrow type of ``header``'s column in the part file ``path`` (one of ``files``)."""
        return self._schemas[path].field(self._file_column_of[header]).type

    def read_type(self, header: str) -> pa.DataType:
        """The Arrow type every part's column ``header`` is read as: the type all parts have; when they
        differ, the first part's type, which ``pandas.read_parquet`` on the folder casts the others to (an int64
        part and a double one holding only whole numbers and nulls read as int64, i.e. float64 with nulls), or,
        when a part's values do not fit it (1.5 in an int64 column: pandas fails), the type promoting all of
        them. Every part's values fit the type returned (else a ``DataError`` naming the part), so a cast to it
        loses nothing (the Spark engine casts its parts to it)."""
        column = self._file_column_of[header]
        if column in self._targets:
            return self._targets[column]
        first = self.files[0]
        first_type = self._schemas[first].field(column).type
        others = [path for path in self.files[1:] if self._schemas[path].field(column).type != first_type]
        target = first_type
        for path in others:
            try:
                pq.read_table(path, columns=[column]).column(column).cast(first_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                target = self._promoted_type(column)
                self._check_fit(column, target)
                break
            except _CORRUPT as exc:
                raise _unreadable(path, exc) from exc
        if others:
            logger.info("Parquet column %r of %s is %s in %s but %s in %s: read as %s", column, self.source,
                        first_type, first, self._schemas[others[0]].field(column).type, others[0], target)
        self._targets[column] = target
        return target

    def _check_fit(self, column: str, target: pa.DataType) -> None:
        """Every part's ``column`` casts to ``target`` (``cast_part``'s error otherwise: 2**53 + 1 in an int64 part
        does not fit a double). Only the parts of another type are read."""
        for path in self.files:
            if self._schemas[path].field(column).type != target:
                try:
                    values = pq.read_table(path, columns=[column]).column(column)
                except _CORRUPT as exc:
                    raise _unreadable(path, exc) from exc
                cast_part(values, target, path, column)

    def _promoted_type(self, column: str) -> pa.DataType:
        fields = [self._schemas[path].field(column) for path in self.files]
        try:
            return pa.unify_schemas([pa.schema([f.remove_metadata()]) for f in fields],
                                    promote_options="permissive").field(column).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
        first, other = next((self.files[0], path) for path, f in zip(self.files, fields, strict=True)
                            if f.type != fields[0].type)
        raise DataError(
            f"Column {column!r} of the Parquet dataset {self.source} is {fields[0].type} in {first} but "
            f"{self._schemas[other].field(column).type} in {other}, and no type holds both. Write every part "
            "file with the same column types.")


def _categorical(dictionaries: list[pa.Array], ordered: bool) -> ToPandas:
    """Values as pandas categories: the union of the row groups' dictionaries, unused ones included."""
    def to_pandas(distinct: pa.Array, has_null: bool) -> pd.Series:
        del has_null  # a missing value is NaN in any categorical
        categories = pc.unique(pa.concat_arrays(dictionaries)).to_pandas() if dictionaries else []
        return pd.Series(pd.Categorical(distinct.to_pandas(), categories=categories, ordered=ordered))
    return to_pandas


def _check_same_columns(path: Path, columns: list[str], first: Path, first_columns: list[str]) -> None:
    """Every part names the same columns (in any order: they are read by name, as pandas does)."""
    if sorted(columns) == sorted(first_columns):
        return
    missing = [c for c in first_columns if c not in columns]
    extra = [c for c in columns if c not in first_columns]
    differences = "; ".join(([f"it lacks {missing}"] if missing else []) + ([f"it also has {extra}"] if extra else [])
                            or [f"the names repeat differently ({columns})"])
    raise DataError(
        f"{path} does not have the columns of {first}: {differences} ({first} has {first_columns}). All files of "
        "a Parquet dataset need the same columns (their order may differ); rewrite or remove that part file.")


def cast_part(values: pa.Array, target: pa.DataType, path: Path | str, column: str) -> pa.Array:
    """``values`` (a part's column) as ``target`` (safe cast: no truncation, no overflow). The Spark engine
    casts its parts with it too (``analyzer.engines.spark_read.PartCast``)."""
    if values.type == target:
        return values
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(f"{path}: column {column!r} is {values.type} there and cannot be read as {target}, the "
                        f"type of the dataset's column ({exc}). Write every part file with the same column "
                        "types.") from None


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except _CORRUPT as exc:
        raise _unreadable(path, exc) from exc


def _schema(path: Path) -> pa.Schema:
    """The file's schema, with its pandas metadata (JSON in the footer) checked to be readable."""
    schema = _open(path).schema_arrow
    try:
        _data_columns(schema)
    except _CORRUPT as exc:
        raise _unreadable(path, exc) from exc
    return schema


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: cannot read this file as Parquet ({exc}). Check that every file of the dataset is a "
        "complete Parquet file (dataset_type application/x-parquet)."
    )


def _data_columns(schema: pa.Schema) -> list[str]:
    """Column names, without the index columns pandas adds (``pd.read_parquet`` makes them the index)."""
    index_columns = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    return [name for name in schema.names if name not in index_columns]


def _is_dictionary(arrow_type: pa.DataType) -> bool:
    return pa.types.is_dictionary(arrow_type)


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if _is_dictionary(arrow_type) else arrow_type
