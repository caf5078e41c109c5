"""``load_dataset``: read the dataset (and the facet / predicted label datasets) into a ``Dataset``.

Steps: open the main dataset as a table (format readers: ``csv_format``, ``json_format``,
``parquet_format``); locate every role in its headers (``locate``); read the role columns, plus the
feature columns when ``need_features``, in one pass; read the side datasets and align them with the
main rows (``join``).

Where each role is looked up:

* label, excluded columns, joinsource: the main dataset (for JSON formats the label is a JMESPath).
* predicted label: the predicted label dataset when ``predicted_label_dataset_uri`` is set (column
  ``predicted_label`` by default), else the main dataset.
* facets: the facet dataset when ``facet_dataset_uri`` is set, else the main dataset.
* group variable: the main dataset; a name found only in the facet dataset is taken from there.
  (For facets and the group variable, an index always refers to the first dataset listed.)

Features are the main headers minus the label, predicted label, excluded columns and joinsource; a
facet that is a main-dataset column stays a feature, as in Clarify.

Side datasets without ``joinsource_name_or_index`` are aligned by row order, which is refused when any
dataset is split across files (spec 2.1). Predicted labels read from the data that are scores are cut at
``probability_threshold`` as a model's scores are (``cut_scores``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analyzer import media
from analyzer.config.model import AnalysisConfig, Locator
from analyzer.data.column import MISSING, Column
from analyzer.data.csv_format import CsvTable
from analyzer.data.dataset import Dataset
from analyzer.data.files import list_data_files, no_data_rows, resolve_local_path
from analyzer.data.join import rows_by_id, rows_by_order, take_rows
from analyzer.data.json_format import JsonTable
from analyzer.data.locate import locate_column
from analyzer.data.parquet_format import ParquetTable
from analyzer.data.table import Table, TableData
from analyzer.errors import DataError
from analyzer.progress import progress

logger = logging.getLogger(__name__)

_SUPPORTED_TYPES = (media.CSV, media.JSON_LINES, media.JSON, media.PARQUET)


@dataclass(frozen=True)
class _Ref:
    """A role column: which table, which header."""

    table: Table
    name: str


@dataclass
class _Roles:
    """Where each role of the config is."""

    label: _Ref | None = None
    predicted_label: _Ref | None = None
    facets: list[_Ref] = field(default_factory=list)
    group: _Ref | None = None
    joinsource: _Ref | None = None  # in the main table; side tables have a column of the same name

    def names_in(self, table: Table) -> list[str]:
        """The headers of ``table`` that hold a role, without repeats."""
        refs = [self.label, self.predicted_label, *self.facets, self.group, self.joinsource]
        names = [ref.name for ref in refs if ref is not None and ref.table is table]
        if self.joinsource is not None and table is not self.joinsource.table:
            names.append(self.joinsource.name)
        return list(dict.fromkeys(names))


def load_dataset(config: AnalysisConfig, dataset_path: Path, *, need_features: bool = False,
                 chunk_rows: int = 500_000, base_dir: Path | None = None) -> Dataset:
    """Read the dataset at ``dataset_path`` (a file or a folder) as ``config`` describes it.

    Role columns (label, predicted label, facets, group variable, joinsource) are returned as compact
    ``Column`` objects; the feature DataFrame is built only when ``need_features`` is true. CSV and
    Parquet are streamed ``chunk_rows`` rows at a time. Relative side-dataset paths
    (``facet_dataset_uri``, ``predicted_label_dataset_uri``) are taken from ``base_dir``, the config
    file's folder (default: the current folder). Raises ``DataError`` for any problem with the data,
    naming the file, line and column.
    """
    start = time.perf_counter()
    dataset_path = Path(dataset_path)
    if config.time_series_data_config is not None:  # items, not rows: analyzer/data/time_series.py
        from analyzer.data.time_series import load_time_series

        return load_time_series(config, dataset_path)
    logger.info("Dataset type: %s uri: %s", config.dataset_type, dataset_path)
    logger.info("Loading dataset...")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    main = open_table(config, dataset_path, config.headers, chunk_rows=chunk_rows)
    facet_table = _open_side_table(config.facet_dataset_uri, config.facet_headers, "facet_dataset_uri",
                                   chunk_rows=chunk_rows, base_dir=base_dir)
    prediction_table = _open_side_table(config.predicted_label_dataset_uri, config.predicted_label_headers,
                                        "predicted_label_dataset_uri", chunk_rows=chunk_rows, base_dir=base_dir)
    _require_joinsource_for_split(config, main, {"facet_dataset_uri": facet_table,
                                                 "predicted_label_dataset_uri": prediction_table})

    roles = locate_roles(config, main, facet_table, prediction_table)
    excluded = {locate_column(c, main.headers, role="excluded_columns", source=main.source)
                for c in config.excluded_columns or []}
    not_features = excluded | {ref.name for ref in (roles.label, roles.predicted_label, roles.joinsource)
                               if ref is not None and ref.table is main}
    feature_names = [h for h in main.headers if h not in not_features]

    main_roles = roles.names_in(main)
    with progress("Loading", total=None, unit="rows") as bar:
        main_data = main.read(main_roles, [n for n in feature_names if n not in main_roles] if need_features else [],
                              progress=bar)
    if main_data.n_rows == 0:
        raise no_data_rows(main.source, main.files)
    data = {id(main): main_data}
    for table in (facet_table, prediction_table):
        if table is not None:
            data[id(table)] = _align(table.read(roles.names_in(table)), table, main, main_data,
                                     roles.joinsource.name if roles.joinsource else None)

    def column(ref: _Ref | None) -> Column | None:
        return data[id(ref.table)].columns[ref.name] if ref is not None else None

    dataset = Dataset(
        source=str(dataset_path),
        n_rows=main_data.n_rows,
        headers=list(main.headers),
        feature_names=feature_names,
        label=column(roles.label),
        predicted_label=column(roles.predicted_label),
        facets={ref.name: column(ref) for ref in roles.facets},
        group=column(roles.group),
        joinsource=column(roles.joinsource),
    )
    cut_scores(config, dataset)
    if need_features:
        features = {}
        for name in feature_names:
            features[name] = (main_data.columns[name].to_series() if name in main_data.columns
                              else main_data.values.pop(name))  # pop: the DataFrame takes over the array
        dataset.features = pd.DataFrame(features, index=pd.RangeIndex(main_data.n_rows), copy=False)
    logger.info("Loaded dataset: %d rows, %d columns (%d files) in %.1f s",
                main_data.n_rows, len(main.headers), main.n_files, time.perf_counter() - start)
    _log_dtypes(dataset)
    return dataset


def locate_roles(config: AnalysisConfig, main: Table, facet_table: Table | None,
                 prediction_table: Table | None) -> _Roles:
    """Which table and header holds each role (both engines: the Spark engine passes its ``Layout``, which
    reads like a ``Table``)."""
    roles = _Roles()
    if config.label is not None:
        roles.label = _Ref(main, _locate_main_role(main, "label", config.label))
    if prediction_table is not None:
        locator = config.predicted_label if config.predicted_label is not None else "predicted_label"
        roles.predicted_label = _Ref(prediction_table, locate_column(
            locator, prediction_table.headers, role="predicted_label", source=prediction_table.source))
    elif config.predicted_label is not None:
        roles.predicted_label = _Ref(main, _locate_main_role(main, "predicted_label", config.predicted_label))
    facet_tables = [t for t in (facet_table, main) if t is not None]
    roles.facets = [_locate_in(facet.name_or_index, facet_tables, "facet") for facet in config.facet]
    if config.group_variable is not None:
        group_tables = [t for t in (main, facet_table) if t is not None]
        roles.group = _locate_in(config.group_variable, group_tables, "group_variable")
    if config.joinsource_name_or_index is not None:
        roles.joinsource = _Ref(main, locate_column(config.joinsource_name_or_index, main.headers,
                                                    role="joinsource_name_or_index", source=main.source))
        for table in (facet_table, prediction_table):  # side datasets name the id column like the main one
            if table is not None:
                locate_column(roles.joinsource.name, table.headers, role="joinsource_name_or_index",
                              source=table.source)
    return roles


def open_table(config: AnalysisConfig, path: Path, headers: Sequence[str] | None, *, chunk_rows: int) -> Table:
    """The dataset at ``path`` (a file or a folder) as a ``Table`` of ``config.dataset_type``: its files and
    headers, nothing read yet but what decides the headers (the Spark engine's layout of a local path)."""
    files = list_data_files(path)
    source = str(path)
    dataset_type = config.dataset_type
    if dataset_type == media.CSV:
        return CsvTable(files, source, headers, chunk_rows=chunk_rows)
    if dataset_type == media.PARQUET:
        return ParquetTable(files, source, headers, chunk_rows=chunk_rows)
    if dataset_type in media.JSON_TYPES:
        return JsonTable(files, source, config, json_lines=dataset_type == media.JSON_LINES)
    raise DataError(f"dataset_type {dataset_type!r} is not supported by the data loader yet; "
                    f"supported: {', '.join(_SUPPORTED_TYPES)}.")


def _open_side_table(uri: str | None, headers: Sequence[str] | None, key: str, *, chunk_rows: int,
                     base_dir: Path | None) -> Table | None:
    """A facet or predicted label dataset: always CSV (Clarify accepts side datasets for CSV only)."""
    if uri is None:
        return None
    path = resolve_local_path(uri, base_dir=base_dir, key=key)
    return CsvTable(list_data_files(path), f"{path} (`{key}`)", headers, chunk_rows=chunk_rows,
                    headers_key=key.replace("dataset_uri", "headers"))


def _require_joinsource_for_split(config: AnalysisConfig, main: Table, sides: dict[str, Table | None]) -> None:
    """Without ``joinsource_name_or_index``, side datasets are paired with the main rows by position; when any
    of the datasets is split across files, that order is the order of the file paths (``preds_1``,
    ``preds_10``, ``preds_2``, ...), not necessarily the order the rows were written in, and the numbers
    would silently be wrong. Clarify requires the joinsource then (spec 2.1: "Required when multiple input
    datasets and any is split across files"): an error before anything is read."""
    given = {key: table for key, table in sides.items() if table is not None}
    if config.joinsource_name_or_index is not None or not given:
        return
    split = [(key, table, files) for key, table in (("dataset_uri", main), *given.items())
             if len(files := _data_files(table)) > 1]
    if not split:
        return
    key, table, files = split[0]
    shown = ", ".join(file.name for file in files[:4]) + (", ..." if len(files) > 4 else "")
    others = [side.source for side in given.values()] if key == "dataset_uri" else [f"the dataset {main.source}"]
    header_keys = ["headers", *(k.replace("dataset_uri", "headers") for k in given)]
    raise DataError(
        f"{'The dataset ' if key == 'dataset_uri' else ''}{table.source} is split across {len(files)} files "
        f"({shown}) and `joinsource_name_or_index` is not set: its rows would be paired with those of "
        f"{' and '.join(others)} by position, in the order of the file paths, which need not be the order the "
        "rows were written in. When several datasets are given and any is split across files, "
        "`joinsource_name_or_index` is required (as in Clarify): add an identifier column to every dataset "
        f"(and to {' / '.join(f'`{k}`' for k in header_keys)} when given) and set `joinsource_name_or_index` "
        "to its name, or make each dataset one file.")


def _data_files(table: Table) -> list[Path]:
    """The table's files that hold something (an empty part file adds no row and cannot shift any)."""
    return [file for file in table.files if file.stat().st_size > 0]


def _locate_main_role(main: Table, role: str, locator: Locator) -> str:
    if role in main.role_columns:  # JSON formats: the JMESPath already made the column
        return main.role_columns[role]
    return locate_column(locator, main.headers, role=role, source=main.source)


def _locate_in(locator: Locator, tables: list[Table], role: str) -> _Ref:
    """The first table with a header named ``locator``; an index (or an unknown name) means tables[0]."""
    if isinstance(locator, str):
        for table in tables:
            if locator in table.headers:
                return _Ref(table, locator)
    return _Ref(tables[0], locate_column(locator, tables[0].headers, role=role, source=tables[0].source))


def _align(side: TableData, side_table: Table, main_table: Table, main: TableData,
           joinsource: str | None) -> TableData:
    """The side dataset's columns with their rows in main-dataset order."""
    if joinsource is None:
        rows_by_order(main.n_rows, side.n_rows, main_source=main_table.source, side_source=side_table.source)
        return side
    rows = rows_by_id(main.columns[joinsource], side.columns[joinsource],
                      main_source=main_table.source, side_source=side_table.source)
    return TableData(main.n_rows, {name: take_rows(column, rows) for name, column in side.columns.items()})


def cut_scores(config: AnalysisConfig, dataset: Dataset,
               row_name: Callable[[int], str] = lambda row: f"data row {row + 1}") -> None:
    """Predicted labels read from the data that are scores become labels as the model's scores do:
    ``1 if score > probability_threshold else 0`` (spec 2.1; example (j) gives ``probability_threshold`` with
    a predicted label dataset and no model), by the same function (``predicted_labels_for_bias``).

    Scores are told from labels as Clarify's typing would clash on them: the column is float with a value
    that is not a whole number, and the label column is categorical (Clarify: "Predicted Label Column series
    datatype is not the same as Label Column series"). Float labels, or whole numbers read as floats
    because a value is missing, are left as they are; a missing score stays a missing predicted label.

    Both engines call it on the dataset they read (Spark's ``GroupedRows``: one row per combination of role
    values; its column keeps its class and weights). ``row_name(i)``: how an error names row ``i`` of
    ``dataset``."""
    predicted, label = dataset.predicted_label, dataset.label
    if predicted is None or label is None or not pd.api.types.is_float_dtype(predicted.dtype):
        return
    scores = predicted.uniques.to_numpy(dtype=np.float64)
    finite = np.isfinite(scores)
    if np.array_equal(scores[finite], np.round(scores[finite])):
        return
    from analyzer.bias.columns import DataType, classify
    from analyzer.predict.predictions import Predictions, predicted_labels_for_bias

    if classify(label, list(config.label_values_or_threshold or [])) is not DataType.CATEGORICAL:
        return
    if not finite.all():
        row = int(np.flatnonzero(np.isin(predicted.codes, np.flatnonzero(~finite)))[0])
        raise DataError(f"Predicted label column {predicted.name!r} holds scores, cut at probability_threshold "
                        f"{config.probability_threshold}, but {row_name(row)} has {scores[~finite][0]}; give every "
                        "row a finite score.")
    logger.info("Predicted label column %r holds scores (e.g. %s) and the label %r is categorical: the scores are "
                "cut at probability_threshold %s, as a model's are", predicted.name, scores[~np.equal(scores, np.round(
                    scores))][0], label.name, config.probability_threshold)
    labels = predicted_labels_for_bias(Predictions(len(scores), probability=scores), config.probability_threshold,
                                       name=predicted.name)
    # uniques are in order of first appearance, so factorizing their labels keeps that order
    code_of_unique, uniques = pd.factorize(labels, sort=False)
    codes = np.append(code_of_unique, MISSING).astype(predicted.codes.dtype)[predicted.codes]
    dataset.predicted_label = dataclasses.replace(predicted, uniques=pd.Series(uniques, dtype=labels.dtype),
                                                  codes=codes)


def _log_dtypes(dataset: Dataset) -> None:
    roles = [("label", dataset.label), ("predicted_label", dataset.predicted_label),
             *(("facet", c) for c in dataset.facets.values()), ("group_variable", dataset.group),
             ("joinsource", dataset.joinsource)]
    described = [f"{role} {c.name!r}: {c.dtype} ({c.nunique} distinct{', with missing' if c.has_missing() else ''})"
                 for role, c in roles if c is not None]
    if described:
        logger.info("Role columns: %s", "; ".join(described))
