"""CSV datasets (``text/csv``): the header rule, a streaming read, and pandas' column typing.

Header rule (spec 8.6/8.7 leave it open; this is Lucent's decision, docs/data-formats.md). A field is
*typed* when pandas would read it as a number or a bool, *missing* when it is one of pandas' missing-value
strings, *text* otherwise. "Text above numbers": a field that is text in a column whose values in the
next records (up to ``HEADER_SAMPLE_RECORDS``, those with as many fields) are all typed or missing, one at least typed.

* ``headers`` absent: the first record of the first file is (a) the header row when it has text above
  numbers; else (b) data when every field is typed or missing (one at least typed): the columns are then
  named ``column_0``, ``column_1``, ... (the contract's generated names); else (c) the header row (text
  columns only: nothing tells). Names from a header row are pandas' (an empty name becomes
  ``Unnamed: <i>``, a repeated name ``name.1``, ``name.2``, ...). The decision and its reason are logged.
* Every other first record of a file (and the first file's when ``headers`` is given) is skipped when
  it equals the headers field by field (surrounding spaces ignored), or equals them ignoring case too (a
  WARNING names the file, line and names). Otherwise, with text above numbers it is a header row that
  names other columns: an error naming the file, line and differences. Otherwise it is data. So
  header-less files, files that each repeat the header row (Spark / pandas part files), and a mix of
  both all read correctly.
* A first record with a different number of fields than the headers is an error (Clarify's
  ``Headers in config do not match with the number of columns in the dataset.``).

Reading: pyarrow's streaming CSV reader parses blocks of ``_BLOCK_BYTES`` with every needed column as
raw strings; each chunk of at most ``chunk_rows`` rows goes to a ``ColumnAccumulator``, so memory
holds per-row codes and per-chunk distinct values, never a whole column of strings. pyarrow tokenizes
like pandas' C parser (quotes, doubled quotes, ``\\r``/``\\n``/``\\r\\n``, quoted newlines, UTF-8 BOM,
blank lines skipped). Measured on 10M rows x 9 columns: reading 4 columns as strings and encoding them
took 3.3 s of CPU with pyarrow against 6.5 s with ``pandas.read_csv(dtype=str, chunksize=...)``; all 9
columns 5.2 s against 42 s.

Typing: the dtype of a column is what ``pandas.read_csv(file, low_memory=False)`` gives the whole
column (int64; uint64 for very large ints; float64 when a value is missing or not integral; bool for
True/False/TRUE/false... without missing values; object, with the values kept as the strings in the
file, otherwise). To get exactly that, the distinct raw strings of the column (missing-value strings
like ``""``, ``NA``, ``nan`` included) are typed once, by pandas itself, except for two shortcuts that
give the same result faster: plain decimal numbers (an Arrow cast, see ``_plain_numbers``) and
columns that are certainly text (``_plain_strings``). ``low_memory=False`` matters only for columns
that mix numbers and text beyond ~65k rows, where default pandas returns a mix of numbers and strings
depending on its internal chunking; Lucent returns strings.

Deviations from ``pandas.read_csv`` (deliberate): rows with more or fewer fields than there are
headers are an error naming the file and line of each (the first ``_LISTED_BAD_ROWS``, then a count;
every file is read first, so one run lists them all). pandas pads short rows with NaN, and with a
surplus field on every row silently uses the first column as the index. Whitespace-only lines are skipped
as pandas does, except in single-column files where they are read as a value.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pandas._libs.parsers import STR_NA_VALUES

from analyzer.config.spec import short_repr
from analyzer.data.accumulate import ColumnAccumulator
from analyzer.data.files import is_gzip, no_data_rows, open_stream, read_error
from analyzer.data.locate import check_distinct_headers
from analyzer.data.table import TableData
from analyzer.errors import DataError
from analyzer.progress import Progress

_BLOCK_BYTES = 2 << 20  # pyarrow parse block; 2 MiB measured as fast as 16 MiB at a fraction of the RSS
_MAX_BLOCK_BYTES = 1 << 30  # a block must hold the longest row: grown up to this on "straddling" rows
_PEEK_BYTES = 1 << 16  # bytes read to find a file's first record (grown if the record is longer)
_MAX_PEEK_BYTES = 1 << 28
_HEADERS_MISMATCH = "Headers in config do not match with the number of columns in the dataset."
HEADER_SAMPLE_RECORDS = 100  # records after the first one that the header rule looks at
_LISTED_BAD_ROWS = 10  # rows with a wrong number of fields named in the error (the rest are counted)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstRecord:
    """The first non-blank record of a file, and where it ends (to skip it when it is a header row)."""

    fields: list[str]
    line: int  # 1-based line where the record starts
    end_line: int  # last line of the record (a quoted field can span lines)
    end_offset: int  # bytes from the start of the decompressed file to the end of ``end_line``
    following: tuple[list[str], ...] = ()  # up to HEADER_SAMPLE_RECORDS next records (the header rule's sample)


class CsvTable:
    """A CSV dataset (one or many files) seen as one table with ``headers``."""

    def __init__(self, files: Sequence[Path], source: str, headers: Sequence[str] | None, *,
                 chunk_rows: int, headers_key: str = "headers"):
        self.files = list(files)
        self.source = source
        self.chunk_rows = chunk_rows
        self.role_columns: dict[str, str] = {}  # CSV roles are all located through the headers
        self._first = {path: read_first_record(path) for path in self.files}
        first_file = next((path for path in self.files if self._first[path] is not None), None)
        if headers is not None:
            check_distinct_headers(headers, headers_key)
            self.headers = [str(h) for h in headers]
            header_fields = self.headers
            origin = f"`{headers_key}` in the analysis config"
        elif first_file is not None:
            first = self._first[first_file]
            is_header, why = header_row_decision(first.fields, self._sample(first))
            if is_header:
                self.headers, header_fields = pandas_header_names(first.fields), first.fields
                origin = f"the header row of {first_file}"
            else:
                self.headers = header_fields = generated_names(len(first.fields))
                origin = f"the first row of {first_file} (no header row; columns named column_0, column_1, ...)"
            logger.info("%s line %d is %s: %s (no `%s` in the analysis config; set it if this is wrong)",
                        first_file, first.line, "the header row" if is_header else "data", why, headers_key)
        else:
            raise no_data_rows(source, self.files)
        self._skip_first = {}
        for path, record in self._first.items():
            if record is None:
                continue
            if headers is None and path == first_file:
                self._skip_first[path] = is_header
            else:
                self._skip_first[path] = self._is_header_row(path, record, header_fields, origin)
            if not self._skip_first[path] and len(record.fields) != len(self.headers):
                raise DataError(
                    f"{_HEADERS_MISMATCH} {path} line {record.line} has {len(record.fields)} fields but "
                    f"{origin} names {len(self.headers)} columns. Make the headers list every column "
                    "of the file, in order."
                )

    def _sample(self, first: FirstRecord) -> list[list[str]]:
        """Up to ``HEADER_SAMPLE_RECORDS`` records after ``first``: the rest of its file's peek, then the first
        records of the next files (a repeat of ``first``, a part file's header row, left out)."""
        sample = list(first.following)
        for record in self._first.values():
            if len(sample) >= HEADER_SAMPLE_RECORDS:
                break
            if record is None or record is first:
                continue
            sample.extend(r for r in [record.fields, *record.following] if not _same_fields(r, first.fields))
        return sample[:HEADER_SAMPLE_RECORDS]

    def _is_header_row(self, path: Path, record: FirstRecord, header_fields: list[str], origin: str) -> bool:
        """Whether the first record of ``path`` is a header row to skip (the module docstring's rule);
        ``header_fields``: the headers as written in the config or the first file's header row."""
        if _same_fields(record.fields, header_fields):
            return True
        pairs = list(zip(record.fields, header_fields, strict=False))
        differing = [(j, field, name) for j, (field, name) in enumerate(pairs) if field.strip() != name.strip()]
        shown = "; ".join(f"column {j}: {short_repr(field)} for {short_repr(name)}" for j, field, name in differing[:5])
        if len(differing) > 5:
            shown += f"; and {len(differing) - 5} more"
        if len(record.fields) == len(header_fields) and all(
                field.strip().lower() == name.strip().lower() for field, name in pairs):
            logger.warning("%s line %d is read as a header row: it names the columns of %s but in other case or "
                           "spacing (%s). Use the same names to silence this warning.", path, record.line, origin, shown)
            return True
        text = _text_in_typed_columns(record.fields, record.following)
        if len(record.fields) == len(self.headers) and text:
            j = text[0]
            raise DataError(
                f"line {record.line} of {path} looks like a header row ({short_repr(record.fields[j])} in column {j} is "
                f"text, the rows below it there are numbers), but {origin} says {self.headers}: {shown}. "
                "Make the header row and the headers name the same columns, or remove one of them."
            )
        return False

    @property
    def n_files(self) -> int:
        return len(self.files)

    def read(self, columns: Sequence[str], values: Sequence[str] = (), progress: Progress | None = None) -> TableData:
        """Read ``columns`` as ``Column`` objects and ``values`` as Series, in one pass over the files.

        Rows with another number of fields than there are headers are all found (every file is read)
        and reported in one error."""
        accumulators = {name: ColumnAccumulator(name, pa.string()) for name in [*columns, *values]}
        bad_rows: list[_BadRows] = []
        n_rows = sum(self._read_file(path, accumulators, progress, bad_rows) for path in self.files)
        if bad_rows:
            raise self._bad_rows_error(bad_rows)
        return TableData(
            n_rows,
            columns={name: accumulators.pop(name).finish(infer_csv_values) for name in columns},
            values={name: accumulators.pop(name).finish_values(infer_csv_values) for name in values},
        )

    def _read_file(self, path: Path, accumulators: dict[str, ColumnAccumulator], progress: Progress | None,
                   found: list[_BadRows]) -> int:
        record = self._first[path]
        if record is None:  # empty, or only blank lines
            return 0
        skip = self._skip_first[path]
        offset, first_line = (record.end_offset, record.end_line + 1) if skip else (0, 1)
        marks = {name: acc.n_chunks for name, acc in accumulators.items()}
        block_bytes = _BLOCK_BYTES
        while True:
            bad_rows: list[pacsv.InvalidRow] = []
            shown = [0]  # rows this read has counted in ``progress`` so far
            try:
                n_rows = self._parse(path, offset, block_bytes, accumulators, bad_rows, progress, shown)
            except pa.ArrowInvalid as exc:
                for name, acc in accumulators.items():
                    acc.truncate(marks[name])
                if progress is not None and shown[0]:  # read again below (or failed): its rows do not count twice
                    progress.update(-shown[0])
                if "Empty CSV file" in str(exc):  # nothing after the header row
                    return 0
                if "straddl" in str(exc) and block_bytes < _MAX_BLOCK_BYTES:
                    block_bytes *= 8  # a row longer than a block: read the file again with bigger blocks
                    continue
                raise self._parse_error(path, offset, first_line, exc) from None
            except OSError as exc:
                raise read_error(path, exc) from exc
            if bad_rows:
                rows, total = rows_with_wrong_width(path, offset, first_line, len(self.headers), len(bad_rows))
                found.append(_BadRows(path, rows, max(total, len(bad_rows)), bad_rows[0]))
            return n_rows

    def _parse(self, path: Path, offset: int, block_bytes: int, accumulators: dict[str, ColumnAccumulator],
               bad_rows: list[pacsv.InvalidRow], progress: Progress | None = None, shown: list[int] | None = None) -> int:
        multi_column = len(self.headers) > 1

        def on_invalid_row(row: pacsv.InvalidRow) -> str:
            if multi_column and not row.text.strip(" \t"):
                return "skip"  # whitespace-only line: pandas skips those as blank lines
            bad_rows.append(row)
            return "skip"  # counted, to report every such row once the files are read

        include = list(accumulators) or self.headers[:1]  # one column at least, to count the rows
        with open_stream(path) as stream:
            stream.read(offset)  # the header row
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=self.headers, block_size=block_bytes),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid_row),
                convert_options=pacsv.ConvertOptions(
                    include_columns=include, column_types={name: pa.string() for name in include}),
            )
            n_rows = 0
            for batch in reader:
                for start in range(0, batch.num_rows, self.chunk_rows):
                    chunk = batch.slice(start, self.chunk_rows)
                    for name, acc in accumulators.items():
                        acc.add(chunk.column(name))
                n_rows += batch.num_rows
                if progress is not None:
                    progress.update(batch.num_rows)
                    if shown is not None:
                        shown[0] += batch.num_rows
        return n_rows

    def _parse_error(self, path: Path, offset: int, first_line: int, exc: Exception) -> DataError:
        if "UTF8" in str(exc) or "UTF-8" in str(exc):
            line = _first_non_utf8_line(path, offset, first_line)
            where = f"{path} line {line}" if line else str(path)
            return DataError(f"{where} is not valid UTF-8 text. Save the file as UTF-8.")
        return DataError(f"{path}: cannot parse the file as CSV ({exc}).")

    def _bad_rows_error(self, found: list[_BadRows]) -> DataError:
        """One error naming the first ``_LISTED_BAD_ROWS`` rows with a wrong number of fields, counting the rest."""
        width = len(self.headers)
        named = [f"{bad.path} line {line} has {n_fields} fields" for bad in found for line, n_fields in bad.rows]
        for bad in found:  # rows Python's csv module did not see (it tokenizes a few rare cases otherwise)
            if not bad.rows:
                row = bad.first
                named.append(f"{bad.path}: a row has {row.actual_columns} fields: {row.text[:200]!r}")
        total = sum(bad.total for bad in found)
        listed = named[:_LISTED_BAD_ROWS]
        rest = total - len(listed)
        more = f"; and {rest} more such row(s)" if rest > 0 else ""
        if total == 1:
            return DataError(f"{listed[0]}, but the dataset has {width} columns (headers: {self.headers}). "
                             "Every row needs one field per column: fix or remove that row.")
        return DataError(f"{total} rows have another number of fields than the dataset's {width} columns "
                         f"(headers: {self.headers}): {'; '.join(listed)}{more}. Every row needs one field "
                         "per column: fix or remove those rows.")


@dataclass(frozen=True)
class _BadRows:
    """The rows of one file with a wrong number of fields: (line, fields) of the first ones, and how many."""

    path: Path
    rows: list[tuple[int, int]]
    total: int
    first: pacsv.InvalidRow  # as pyarrow saw the first one


def infer_csv_values(values: pa.Array, has_null: bool = False) -> pd.Series:
    """The value ``pandas.read_csv`` gives each raw field in ``values`` (all the distinct fields of a
    column, some possibly repeated), typed as it types the whole column; missing-value strings
    (``""``, ``NA``, ``nan``, ...) become NaN.

    pandas' typing depends only on the set of distinct fields, so parsing them alone gives exactly the
    whole-column result. Two shortcuts cover most columns: plain decimal numbers (an Arrow cast) and
    columns with a field no pandas number or bool can be (kept as strings). Anything else is written
    as a one-column CSV (every field quoted, which pandas ignores for typing) and parsed by pandas.
    """
    del has_null  # CSV columns have no nulls: missing values are strings such as "" or "NA"
    missing = pc.is_in(values, value_set=NA_STRINGS)
    for shortcut in (_plain_numbers, _plain_strings):
        typed = shortcut(values, missing)
        if typed is not None:
            return typed
    text = values.cast(pa.large_string())
    quote, nothing = pa.scalar('"', pa.large_string()), pa.scalar("", pa.large_string())
    quoted = pc.binary_join_element_wise(quote, pc.replace_substring(text, '"', '""'), quote, nothing)
    lines = pa.LargeListArray.from_arrays(pa.array([0, len(quoted)], pa.int64()), quoted)
    document = pc.binary_join(lines, pa.scalar("\n", pa.large_string()))[0].as_buffer()
    typed = pd.read_csv(pa.BufferReader(document), header=None, names=["v"], index_col=False,
                        low_memory=False, skip_blank_lines=False)["v"]
    if len(typed) != len(values):
        raise AssertionError(f"typing {len(values)} CSV values returned {len(typed)}")
    return typed


NA_STRINGS = pa.array(sorted(STR_NA_VALUES))  # pandas' default na_values (keep_default_na=True)
INT18 = r"^-?[0-9]{1,18}$"  # an integer of at most 18 digits: int64 for pandas, exact in an Arrow cast
_INT18_LONGEST = 19  # bytes: a sign and 18 digits
# A decimal with at most 15 digits in all: d{1,15}, or i digits, a point and 1..15-i digits.
DECIMAL15 = "^-?(?:[0-9]{1,15}|" + "|".join(f"[0-9]{{{i}}}\\.[0-9]{{1,{15 - i}}}" for i in range(1, 15)) + ")$"
_DECIMAL15_LONGEST = 17  # bytes: a sign, 15 digits and a point
# Everything pandas' C parser might read as a number (a superset: int, float with exponent, inf,
# surrounding whitespace), and its default bool words.
MAYBE_NUMBER = r"^[\t\n\v\f\r ]*[+-]?(?:inf|infinity|[0-9]*\.?[0-9]*(?:e[+-]?[0-9]*)?)[\t\n\v\f\r ]*$"
BOOL_WORDS = pa.array(["True", "TRUE", "true", "False", "FALSE", "false"])


def _plain_numbers(values: pa.Array, missing: pa.BooleanArray) -> pd.Series | None:
    """The typed values when every field is missing or a plain decimal number, else None.

    Exact by construction: pandas reads such a column as int64 (no missing value, integers of at
    most 18 digits) or float64. For a decimal of at most 15 digits its parser (precise_xstrtod) builds
    the digits as an exact integer and does one correctly rounded division by an exact power of ten:
    the correctly rounded value, which is what Arrow's cast returns too.
    """
    n_missing = pc.sum(missing).as_py() or 0
    if n_missing == len(values):
        return None
    # A field longer than a pattern's longest match fails it: the pattern is not run (full-precision floats,
    # such as numpy's and pandas' CSV writers make, would otherwise go through both for nothing).
    longest = pc.max(pc.if_else(missing, 0, pc.binary_length(values))).as_py()
    if longest <= _DECIMAL15_LONGEST and pc.all(pc.or_(missing, pc.match_substring_regex(values, DECIMAL15))).as_py():
        if n_missing == 0 and not pc.any(pc.match_substring(values, ".")).as_py():
            return values.cast(pa.int64()).to_pandas()
        return pc.if_else(missing, pa.scalar(None, values.type), values).cast(pa.float64()).to_pandas()
    if n_missing == 0 and longest <= _INT18_LONGEST and pc.all(pc.match_substring_regex(values, INT18)).as_py():
        return values.cast(pa.int64()).to_pandas()  # integers of 16 to 18 digits
    return None


def _plain_strings(values: pa.Array, missing: pa.BooleanArray) -> pd.Series | None:
    """The fields as strings (NaN where missing) when one of them can be neither a number nor a bool
    for pandas, which then reads the column as object without converting any value; else None."""
    could_be_typed = pc.or_(pc.or_(missing, pc.is_in(values, value_set=BOOL_WORDS)),
                            pc.match_substring_regex(values, MAYBE_NUMBER, ignore_case=True))
    if pc.all(could_be_typed).as_py():
        return None
    strings = values.to_numpy(zero_copy_only=False)  # one str object per entry: entries are distinct per chunk
    strings[missing.to_numpy(zero_copy_only=False)] = np.nan
    return pd.Series(strings, dtype=object, copy=False)


def pandas_header_names(fields: Sequence[str]) -> list[str]:
    """Column names as ``pandas.read_csv`` makes them from a header row: an empty name becomes
    ``Unnamed: <i>``, a repeated one ``name.1``, ``name.2``... skipping names already in the row
    (pandas' C parser, ``TextReader._get_header``)."""
    header = [field if field != "" else f"Unnamed: {i}" for i, field in enumerate(fields)]
    unnamed = {header[i] for i, field in enumerate(fields) if field == ""}
    # named columns are deduplicated first, so that they keep their names
    order = [i for i, h in enumerate(header) if h not in unnamed] + [i for i, h in enumerate(header) if h in unnamed]
    counts: dict[str, int] = {}
    for i in order:
        name = original = header[i]
        count = counts.get(name, 0)
        while count > 0:
            counts[original] = count + 1
            name = f"{original}.{count}"
            count = count + 1 if name in header else counts.get(name, 0)
        header[i] = name
        counts[name] = count + 1
    return header


def read_first_record(path: Path) -> FirstRecord | None:
    """The first non-blank record of a CSV file, or None for a file without one."""
    size = _PEEK_BYTES
    while True:
        try:
            with open_stream(path) as stream:
                data = stream.read(size)
        except OSError as exc:
            raise read_error(path, exc) from exc
        at_eof = len(data) < size
        lines = data.splitlines(keepends=True)  # splits on \n, \r\n and \r, like the CSV readers
        if not at_eof:
            lines = lines[:-1]  # the last line may be cut short
        record = _parse_first_record(path, lines, at_eof)
        if record is not False:
            return record
        if size >= _MAX_PEEK_BYTES:
            raise DataError(f"{path}: the first record is longer than {_MAX_PEEK_BYTES} bytes; is this a CSV file?")
        size *= 4


def _parse_first_record(path: Path, lines: list[bytes], at_eof: bool) -> FirstRecord | None | bool:
    """The first record in ``lines`` (with the next ones, up to ``HEADER_SAMPLE_RECORDS``, as its ``following``);
    None if there is none; False (only before the end of the file) if more lines are needed to know."""
    texts = []
    for i, line in enumerate(lines):
        try:
            texts.append(line.decode("utf-8-sig" if i == 0 else "utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{path} line {i + 1} is not valid UTF-8 text. Save the file as UTF-8.") from None
    reader = csv.reader(texts)
    consumed = 0
    try:
        for fields in reader:
            start, consumed = consumed + 1, reader.line_num
            if _is_blank(fields):
                continue
            if consumed == len(lines) and not at_eof:
                return False  # a quoted field may go on in the lines not read yet
            end_offset = sum(len(line) for line in lines[:consumed])
            return FirstRecord(fields, start, consumed, end_offset, _following(reader, len(lines), at_eof))
    except csv.Error as exc:
        if at_eof:
            raise DataError(f"{path} line {consumed + 1}: cannot parse the first record as CSV ({exc}).") from None
        return False
    return None if at_eof else False


def _following(reader: Iterator[list[str]], n_lines: int, at_eof: bool) -> tuple[list[str], ...]:
    """The next non-blank records of ``reader`` (a sample: a record that may be cut short is left out)."""
    records: list[list[str]] = []
    try:
        for fields in reader:
            if len(records) >= HEADER_SAMPLE_RECORDS:
                break
            if not at_eof and reader.line_num >= n_lines:  # type: ignore[attr-defined]
                break  # the last line read: a quoted field may go on after it
            if not _is_blank(fields):
                records.append(fields)
    except csv.Error:
        pass  # the reader reports this row when it gets there
    return tuple(records)


# The header rule's view of a field: a number (as pandas reads it) or a bool word is "typed"; a missing
# value string is neither typed nor text; anything else is text.
_NUMBER_FIELD = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf(?:inity)?", re.IGNORECASE)
_BOOL_FIELDS = frozenset(["True", "TRUE", "true", "False", "FALSE", "false"])
_MISSING_FIELDS = frozenset(STR_NA_VALUES)


def _is_typed(field: str) -> bool:
    return field.strip() in _BOOL_FIELDS or _NUMBER_FIELD.fullmatch(field.strip()) is not None


def _is_text(field: str) -> bool:
    return field not in _MISSING_FIELDS and not _is_typed(field)


def _text_in_typed_columns(fields: Sequence[str], sample: Sequence[Sequence[str]]) -> list[int]:
    """The columns where ``fields`` has text while every sampled value (of the records with as many
    fields) is a number, a bool or missing, one at least not missing: signs that ``fields`` is a header."""
    rows = [row for row in sample if len(row) == len(fields)]
    found = []
    for j, field in enumerate(fields):
        if not _is_text(field):
            continue
        values = [row[j] for row in rows if row[j] not in _MISSING_FIELDS]
        if values and all(_is_typed(value) for value in values):
            found.append(j)
    return found


def generated_names(n_columns: int) -> list[str]:
    """Column names for a dataset without a header row and without ``headers``: the contract's ``column_<i>``."""
    return [f"column_{i}" for i in range(n_columns)]


def header_row_decision(fields: Sequence[str], sample: Sequence[Sequence[str]]) -> tuple[bool, str]:
    """Whether ``fields``, the first record of a dataset without ``headers``, is its header row, and why;
    ``sample``: the records after it (up to ``HEADER_SAMPLE_RECORDS``).

    (a) a field that is text in a column whose sampled values are numbers: a header row; then 0, 1, 2, ...
    (the header row pandas writes for unnamed columns): a header row; (b) else, every field a number (or
    bool, or missing): data; (c) else (text columns only): a header row, as pandas reads it.
    """
    text = _text_in_typed_columns(fields, sample)
    if text:
        j = text[0]
        return True, f"{short_repr(fields[j])} (column {j}) is text and the next rows there are numbers"
    if [field.strip() for field in fields] == [str(j) for j in range(len(fields))]:
        # pandas writes a frame without column names (DataFrame(array).to_csv()) with this header row
        return True, "it reads 0, 1, 2, ...: pandas' names for unnamed columns"
    if any(_is_typed(f) for f in fields) and not any(_is_text(f) for f in fields):
        return False, "every field of it is a number"
    return True, "it has text fields and no column shows numbers below text to tell a header from data"


def _is_blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip(" \t"))


def _same_fields(fields: Sequence[str], header_fields: Sequence[str]) -> bool:
    return len(fields) == len(header_fields) and all(
        f.strip() == h.strip() for f, h in zip(fields, header_fields, strict=True))


@contextlib.contextmanager
def _binary_file(path: Path, offset: int) -> Iterator[IO[bytes]]:
    """A Python binary file positioned ``offset`` bytes into the decompressed content (error reports)."""
    with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as f:  # noqa: SIM115
        f.read(offset)
        yield f


def _first_non_utf8_line(path: Path, offset: int, first_line: int) -> int | None:
    try:
        with _binary_file(path, offset) as f:
            for line_number, line in enumerate(f, start=first_line):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return line_number
    except (OSError, EOFError):
        pass
    return None


def rows_with_wrong_width(path: Path, offset: int, first_line: int, width: int,
                          expected: int) -> tuple[list[tuple[int, int]], int]:
    """(line, number of fields) of the first ``_LISTED_BAD_ROWS`` records without ``width`` fields, found
    with Python's csv module (which counts lines), and how many there are; reading stops after the
    ``expected``-th (what pyarrow counted), so a bad row near the start of a big file is found fast."""
    rows: list[tuple[int, int]] = []
    total = 0
    try:
        with _binary_file(path, offset) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            reader = csv.reader(text)
            consumed = 0
            for fields in reader:
                start, consumed = consumed + 1, reader.line_num
                if not fields or (width > 1 and _is_blank(fields)):
                    continue
                if len(fields) != width:
                    total += 1
                    if len(rows) < _LISTED_BAD_ROWS:
                        rows.append((first_line + start - 1, len(fields)))
                    if total >= expected:
                        break
    except (OSError, EOFError, UnicodeDecodeError, csv.Error):
        pass
    return rows, total
