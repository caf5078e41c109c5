"""Property-based tests of the four dataset readers (CSV, JSON Lines, JSON, Parquet).

Every generated dataset either loads or fails with a ``UserError`` naming what is wrong: never another
exception (a traceback in a job) and never a hang. Inputs are built from what real files hold, then
broken: quotes, delimiters and newlines inside fields, ragged rows, 5,000-digit numbers, deep nesting,
non-UTF-8 bytes, NUL characters, truncated and corrupted Parquet files. The examples that found bugs
are kept as ``@example``s and as plain tests.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analyzer.config.model import AnalysisConfig, Facet, Methods
from analyzer.data import Dataset, load_dataset
from analyzer.errors import UserError

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE_INT = "9" * 5000  # beyond Python's int_max_str_digits (4300)
DEEP = "[" * 100_000 + "]" * 100_000  # beyond the json module's recursion limit

# -- building blocks -------------------------------------------------------------------------------
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
awkward_text = st.one_of(text, st.sampled_from(["", " ", '"', '""', ",", "\n", "\r\n", "a,b", '"q"', "NA", "nan",
                                                "True", "false", "1e400", "-0", "\x00", "\ufeff", "é", "日本"]))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1, 10**30]))
csv_field = st.one_of(awkward_text, numbers.map(str), st.just(HUGE_INT), st.just("1" + "0" * 400))
json_scalar = st.one_of(st.none(), st.booleans(), numbers, awkward_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(text, inner, max_size=4)),
                          max_leaves=12)


def load(dataset_type: str, path: Path, need_features: bool, **config) -> Dataset | UserError:
    """Load, returning the UserError instead of raising it; any other exception fails the test."""
    try:
        return load_dataset(AnalysisConfig(dataset_type=dataset_type, methods=Methods(), **config), path,
                            need_features=need_features, chunk_rows=7)
    except UserError as error:
        assert str(error), "a UserError must say what is wrong"
        return error


def write(folder: Path, name: str, data: bytes, gzipped: bool) -> Path:
    path = folder / (name + ".gz" if gzipped else name)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def csv_bytes(rows: list[list[str]]) -> bytes:
    """Rows written by hand, not by the csv module: quoting is sometimes right and sometimes not."""
    def field(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') and len(value) % 3 else value
    return "".join(",".join(field(v) for v in row) + "\n" for row in rows).encode("utf-8", "surrogatepass")


# -- CSV ---------------------------------------------------------------------------------------------
csv_tables = st.integers(1, 4).flatmap(lambda width: st.lists(
    st.one_of(st.lists(csv_field, min_size=width, max_size=width),  # mostly rectangular
              st.lists(csv_field, max_size=width + 2)),  # sometimes ragged
    min_size=0, max_size=8))


@FUZZ
@given(rows=csv_tables, headers=st.one_of(st.none(), st.lists(text, min_size=1, max_size=4)),
       label=st.one_of(st.none(), st.integers(0, 5), text), facet=st.one_of(st.integers(0, 5), text),
       need_features=st.booleans(), gzipped=st.booleans(), junk=st.binary(max_size=8))
@example(rows=[["a", "b"], [HUGE_INT, "x"], ["1", "y"]], headers=None, label="a", facet="b", need_features=True,
         gzipped=False, junk=b"")
@example(rows=[["h"], ["1"]], headers=None, label=None, facet=0, need_features=False, gzipped=True,
         junk=b"\xff\xfe")
def test_csv_reader(rows, headers, label, facet, need_features, gzipped, junk):
    with tempfile.TemporaryDirectory() as folder:
        data = csv_bytes(rows) + junk
        path = write(Path(folder), "data.csv", data, gzipped)
        load("text/csv", path, need_features, headers=headers, label=label, facet=[Facet(facet)])


# -- JSON Lines ------------------------------------------------------------------------------------
records = st.fixed_dictionaries({"features": st.one_of(st.lists(json_scalar, min_size=1, max_size=3), json_value),
                                 "label": json_value})
jsonl_lines = st.lists(st.one_of(records.map(json.dumps), text, st.just(DEEP), st.just(f'{{"features": [{HUGE_INT}]}}'),
                                 st.just('{"features": [1e400], "label": 1}')), min_size=0, max_size=6)


@FUZZ
@given(lines=jsonl_lines, features=st.sampled_from(["features", "features[0:2]", "label", "[", "missing"]),
       label=st.sampled_from([None, "label", "features[0]", "label.x"]), need_features=st.booleans())
@example(lines=[DEEP], features="features", label=None, need_features=True)
@example(lines=[f'{{"features": [{HUGE_INT}], "label": 1}}'], features="features", label="label", need_features=True)
@example(lines=['{"features": [1, 2], "label": 1}', '{"features": [[1], 2], "label": 0}'], features="features",
         label="label", need_features=True)
def test_jsonlines_reader(lines, features, label, need_features):
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "data.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass"), False)
        facet = [Facet(0)]
        load("application/jsonlines", path, need_features, features=features, label=label, facet=facet)


# -- JSON --------------------------------------------------------------------------------------------
documents = st.one_of(
    st.fixed_dictionaries({"features": st.lists(st.lists(json_scalar, min_size=1, max_size=3), max_size=5),
                           "label": st.lists(json_scalar, max_size=5)}).map(json.dumps),
    json_value.map(json.dumps), text, st.just(DEEP), st.just(f'{{"features": [[{HUGE_INT}]], "label": [1]}}'))


@FUZZ
@given(document=documents, label=st.sampled_from([None, "label", "label[0]"]), need_features=st.booleans())
@example(document=DEEP, label=None, need_features=True)
@example(document=f'{{"features": [[{HUGE_INT}]], "label": [1]}}', label="label", need_features=True)
def test_json_reader(document, label, need_features):
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "data.json", document.encode("utf-8", "surrogatepass"), False)
        load("application/json", path, need_features, features="features", label=label, facet=[Facet(0)])


# -- Parquet -----------------------------------------------------------------------------------------
parquet_columns = st.sampled_from([
    pa.array([1, 2, None]), pa.array([1.5, float("nan"), float("inf")]), pa.array(["a", None, "日本"]),
    pa.array([True, False, None]), pa.array([[1], [], None]), pa.array([{"x": 1}, None, {"x": 2}]),
    pa.array(["a", "b", "a"]).dictionary_encode(), pa.array([b"\x00", b"", None]),
    pa.array([2**63 - 1, -(2**63), 0]), pa.array([1, 2, 3], pa.uint64()),
    pa.array([pd.Timestamp("2020-01-01"), None, pd.Timestamp("1970-01-01")]),
    pa.array([1, 2, 3], pa.decimal128(38, 0)),
])


@FUZZ
@given(columns=st.lists(parquet_columns, min_size=1, max_size=4), cut=st.one_of(st.none(), st.integers(0, 4000)),
       flip=st.one_of(st.none(), st.integers(0, 4000)), headers=st.one_of(st.none(), st.lists(text, max_size=4)),
       label=st.one_of(st.none(), st.integers(0, 4), st.just("c0")), need_features=st.booleans())
@example(columns=[pa.array(["a", None, "日本"])], cut=None, flip=85, headers=None, label=None,
         need_features=False)  # found by this test: invalid UTF-8 in a string page
def test_parquet_reader(columns, cut, flip, headers, label, need_features):
    table = pa.table({f"c{i}": column for i, column in enumerate(columns)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    data = bytearray(buffer.getvalue())
    if flip is not None and data:
        data[flip % len(data)] ^= 0xFF
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "data.parquet", bytes(data), False)
        load("application/x-parquet", path, need_features, headers=headers or None, label=label, facet=[Facet(0)])


# -- examples the fuzzing found, as plain tests --------------------------------------------------------


@pytest.mark.parametrize(("dataset_type", "content", "fragment"), [
    ("application/jsonlines", DEEP, "nested too deeply"),
    ("application/jsonlines", f'{{"features": [{HUGE_INT}]}}', "digits"),
    ("application/json", DEEP, "nested too deeply"),
    ("application/json", f'{{"features": [[{HUGE_INT}]]}}', "digits"),
])
def test_json_readers_name_the_file_for_deep_nesting_and_huge_integers(tmp_path, dataset_type, content, fragment):
    path = tmp_path / "data.json"
    path.write_text(content)
    error = load(dataset_type, path, True, features="features")
    assert isinstance(error, UserError)
    assert str(path) in str(error) and fragment in str(error)


def test_csv_huge_integer_is_read_as_text(tmp_path):
    # pandas types a column with a 5,000-digit number as text (object), and so does Lucent: no overflow.
    path = tmp_path / "data.csv"
    path.write_text(f"a,b\n{HUGE_INT},x\n1,y\n")
    dataset = load("text/csv", path, True, label="a", facet=[Facet("b")])
    assert isinstance(dataset, Dataset), dataset
    assert dataset.label.to_series().tolist() == [HUGE_INT, "1"]



def test_parquet_text_that_is_not_utf8(tmp_path):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"c0": pa.array(["a", None, "日本"])}), buffer, row_group_size=2)
    data = bytearray(buffer.getvalue())
    data[data.index("日本".encode())] ^= 0xFF  # the page holds the plain bytes of the strings
    path = tmp_path / "data.parquet"
    path.write_bytes(bytes(data))
    error = load("application/x-parquet", path, False, facet=[Facet(0)])
    assert isinstance(error, UserError), error
    assert "Column 'c0' of" in str(error) and str(path) in str(error)


def test_parquet_footer_metadata_that_is_not_utf8(tmp_path):
    # Found by test_parquet_reader: one flipped byte in the footer makes pyarrow raise UnicodeDecodeError.
    buffer = io.BytesIO()
    table = pa.table({"c0": pa.array([[1], [], None]), "c1": pa.array([1, 2, 3], pa.decimal128(38, 0))})
    pq.write_table(table, buffer, row_group_size=2)
    data = bytearray(buffer.getvalue())
    data[453] ^= 0xFF
    path = tmp_path / "data.parquet"
    path.write_bytes(bytes(data))
    with pytest.raises(UnicodeDecodeError):
        pq.ParquetFile(path).schema_arrow.pandas_metadata  # noqa: B018 - what pyarrow does with it
    error = load("application/x-parquet", path, False, facet=[Facet(0)])
    assert isinstance(error, UserError), error
    assert str(error).startswith(f"{path}: cannot read this file as Parquet")


def test_parquet_headers_repeating_a_name_are_refused_as_for_csv(tmp_path):
    """Found by ``test_parquet_reader``: ``headers`` ['', '0', '0'] for a Parquet file made the loader fail with
    a KeyError while it built the features (two columns looked up by one name); CSV refused it already."""
    table = pa.table({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]})
    pq.write_table(table, tmp_path / "data.parquet")
    error = load("application/x-parquet", tmp_path / "data.parquet", True, headers=["", "0", "0"], facet=[Facet(0)])
    assert isinstance(error, UserError)
    assert "`headers` in the analysis config repeats ['0']" in str(error)
