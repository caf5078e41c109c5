"""CSV reading: header rule, pandas-exact column typing at any chunk size, file handling, CSV errors."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import analyzer.data.csv_format as csv_format
from analyzer.bias import bias_analysis
from analyzer.config.model import AnalysisConfig, BiasMethod, Facet, Methods
from analyzer.data import Column, load_dataset
from analyzer.errors import DataError


def csv_config(**kwargs) -> AnalysisConfig:
    return AnalysisConfig(dataset_type="text/csv", methods=Methods(), **kwargs)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def assert_column_is(column: Column, expected: pd.Series) -> None:
    """The Column equals the Series pandas gives, dtype included, and its uniques follow unique()."""
    pd.testing.assert_series_equal(column.to_series(), expected.rename(column.name), check_names=True)
    expected_uniques = pd.Series(expected.dropna().unique(), dtype=expected.dtype)
    pd.testing.assert_series_equal(column.uniques, expected_uniques.reset_index(drop=True), check_names=False)


# Columns whose typing pandas decides from the whole column: each list is (name, values per row).
def typing_columns(n: int, rng: random.Random) -> dict[str, list[str]]:
    ints = [str(rng.randint(-50, 50)) for _ in range(n)]
    return {
        "int": ints,
        "int_then_text": ints[: n // 2] + ["abc"] + ints[n // 2 + 1:],  # type changes in a late chunk
        "int_one_missing": ints[:-3] + [""] + ints[-2:],
        "int_and_float_spelling": [rng.choice(["1", "1.0", "2", "2.50", "-0", "3"]) for _ in range(n)],
        "float": [f"{rng.uniform(-1e4, 1e4):.{rng.randint(0, 6)}f}" for _ in range(n)],
        "float_long_digits": [repr(rng.random() * 10 ** rng.randint(-5, 5)) for _ in range(n)],
        "float_forms": [rng.choice(["1e3", "-2.5E-3", ".5", "5.", "+7", " 3 ", "inf", "-inf", "0.1"]) for _ in range(n)],
        "na_strings": [rng.choice(["1", "NA", "nan", "null", "None", "#N/A", "", "N/A", "-nan", "2.5"]) for _ in range(n)],
        "bool": [rng.choice(["True", "False", "TRUE", "false", "true", "FALSE"]) for _ in range(n)],
        "bool_missing": [rng.choice(["True", "False", ""]) for _ in range(n - 1)] + [""],
        "bool_and_int": [rng.choice(["True", "1", "0"]) for _ in range(n)],
        "numeric_strings": [rng.choice(["007", "7", "0x10", "1,000", "1e3", "x"]) for _ in range(n)],
        "big_ints": [rng.choice(["9223372036854775807", "9223372036854775808", "18446744073709551615"]) for _ in range(n)],
        "big_mixed_sign": [rng.choice(["-1", "18446744073709551615"]) for _ in range(n)],
        "ints_16_to_19_digits": [str(rng.randint(10**15, 10**19 - 1)) for _ in range(n)],
        "ints_16_digits_missing": [rng.choice([str(rng.randint(10**15, 10**16)), ""]) for _ in range(n)],
        "strings": [rng.choice(["Male", "Female", "a \"quoted\" one", "with, comma", " spaced ", "ünïcödé"])
                    for _ in range(n)],
        "all_missing": [rng.choice(["", "NA"]) for _ in range(n)],
        "leading_zeros": [rng.choice(["001", "010", "100"]) for _ in range(n)],
        "bool_and_inf": [rng.choice(["True", "inf", "NA"]) for _ in range(n)],
        "number_like_garbage": [rng.choice(["1e", "e5", ".", "-", "+", " ", "1", "INF", "-Infinity"]) for _ in range(n)],
        "text_and_numbers": [rng.choice(["1", "2.5", "abc", "inf", "True", ""]) for _ in range(n)],
    }


def csv_text(columns: dict[str, list[str]], *, header: bool = True) -> str:
    def field(value: str) -> str:
        return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value
    rows = zip(*columns.values(), strict=True)
    lines = ([",".join(columns)] if header else []) + [",".join(field(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("chunk_rows", [500_000, 7, 1])
def test_column_typing_equals_pandas_reading_the_whole_file(tmp_path, chunk_rows, monkeypatch):
    monkeypatch.setattr(csv_format, "_BLOCK_BYTES", 256)  # many parse blocks (and some retries) too
    columns = typing_columns(120, random.Random(chunk_rows))
    path = write(tmp_path / "typing.csv", csv_text(columns))
    expected = pd.read_csv(path, low_memory=False)
    config = csv_config(facet=[Facet(name) for name in columns])

    dataset = load_dataset(config, path, need_features=True, chunk_rows=chunk_rows)

    assert dataset.n_rows == 120
    for name in columns:
        assert_column_is(dataset.facets[name], expected[name])
    pd.testing.assert_frame_equal(dataset.features, expected)
    # a few of the decisions this checks, spelled out
    assert dataset.facets["int"].dtype == np.int64
    assert dataset.facets["int_then_text"].dtype == object
    assert dataset.facets["int_then_text"].uniques.map(type).eq(str).all()
    assert dataset.facets["int_one_missing"].dtype == np.float64
    assert dataset.facets["bool"].dtype == bool
    assert dataset.facets["bool_missing"].dtype == object
    assert dataset.facets["all_missing"].dtype == np.float64 and dataset.facets["all_missing"].nunique == 0
    assert sorted(dataset.facets["int_and_float_spelling"].uniques) == [-0.0, 1.0, 2.0, 2.5, 3.0]


@pytest.mark.parametrize("kind", ["decimals", "integers"])
def test_plain_number_fast_path_matches_pandas_parser_bit_for_bit(tmp_path, kind):
    rng = random.Random(kind)

    def decimal() -> str:
        n_int, n_frac = rng.randint(1, 14), rng.randint(0, 14)
        n_frac = min(n_frac, 15 - n_int)
        digits = "".join(rng.choice("0123456789") for _ in range(n_int + n_frac))
        sign = rng.choice(["", "-"])
        return sign + digits[:n_int] + ("." + digits[n_int:] if n_frac else "")

    def integer() -> str:
        return rng.choice(["", "-"]) + str(rng.randint(0, 10 ** rng.randint(1, 18) - 1))

    text = [decimal() if kind == "decimals" else integer() for _ in range(20_000)]
    values = pa.array(text)
    missing = pc.is_in(values, value_set=csv_format.NA_STRINGS)
    assert csv_format._plain_numbers(values, missing) is not None  # the fast path is taken
    path = write(tmp_path / "numbers.csv", "x\n" + "\n".join(text) + "\n")
    dataset = load_dataset(csv_config(label="x"), path)
    expected = pd.read_csv(path)["x"]
    assert expected.dtype == (np.float64 if kind == "decimals" else np.int64)
    assert_column_is(dataset.label, expected)
    # bit for bit, except that a Column (like pd.factorize) has one zero for 0.0 and -0.0
    assert (dataset.label.to_series().to_numpy() + 0).tobytes() == (expected.to_numpy() + 0).tobytes()



@pytest.mark.parametrize("spelling", ["%.18e", "%.17g", "%r"])
def test_full_precision_numbers_beside_short_ones_and_missing_values_match_pandas_bit_for_bit(tmp_path, spelling):
    """Fields too long for the fast path's patterns (which are then not run) are typed as pandas types them."""
    rng = np.random.default_rng(len(spelling))
    long_values = [spelling % float(v) for v in rng.normal(scale=1e3, size=3_000)]
    short_values = [f"{v:.3f}" for v in rng.normal(size=3_000)]
    columns = {"long": long_values, "mixed": short_values[:-1] + [long_values[0]],
               "long_and_missing": long_values[:-2] + ["", "NA"], "integers": [str(i) for i in range(3_000)]}
    text = "long,mixed,long_and_missing,integers\n" + "\n".join(",".join(row) for row in zip(*columns.values(), strict=True)) + "\n"
    path = write(tmp_path / "numbers.csv", text)
    dataset = load_dataset(csv_config(label="integers", facet=[Facet(name) for name in list(columns)[:3]]), path)
    expected = pd.read_csv(path)
    for name in list(columns)[:3]:
        assert expected[name].dtype == np.float64
        assert_column_is(dataset.facets[name], expected[name])
        assert (dataset.facets[name].to_series().to_numpy() + 0).tobytes() == (expected[name].to_numpy() + 0).tobytes()


def test_header_row_is_read_from_the_first_file(tmp_path):
    path = write(tmp_path / "d.csv", "age,sex,approved\n30,M,1\n40,F,0\n")
    dataset = load_dataset(csv_config(label="approved", facet=[Facet("sex")]), path, need_features=True)
    assert dataset.headers == ["age", "sex", "approved"]
    assert dataset.feature_names == ["age", "sex"]
    assert dataset.label.to_series().tolist() == [1, 0]
    assert dataset.facets["sex"].to_series().tolist() == ["M", "F"]
    assert dataset.features.to_dict("list") == {"age": [30, 40], "sex": ["M", "F"]}


def test_config_headers_without_header_row(tmp_path):
    path = write(tmp_path / "d.csv", "30,M,1\n40,F,0\n")
    config = csv_config(headers=["age", "sex", "approved"], label="approved")
    dataset = load_dataset(config, path)
    assert dataset.n_rows == 2
    assert dataset.label.to_series().tolist() == [1, 0]


def test_a_header_row_equal_to_config_headers_is_skipped_in_every_file(tmp_path):
    write(tmp_path / "data" / "part-0.csv", "age,sex,approved\n30,M,1\n")
    write(tmp_path / "data" / "part-1.csv", " age , sex ,approved\n40,F,0\n")  # spaces ignored
    write(tmp_path / "data" / "part-2.csv", "50,F,1\n")  # no header row
    config = csv_config(headers=["age", "sex", "approved"], label="approved", facet=[Facet("age")])
    dataset = load_dataset(config, tmp_path / "data")
    assert dataset.n_rows == 3
    assert dataset.facets["age"].to_series().tolist() == [30, 40, 50]
    assert dataset.facets["age"].dtype == np.int64


def test_folder_is_read_recursively_in_path_order_with_gzip_and_markers_skipped(tmp_path):
    root = tmp_path / "data"
    write(root / "b" / "part-2.csv", "id,y\n3,1\n")
    write(root / "a.csv", "id,y\n1,0\n")
    (root / "b" / "part-1.csv.gz").write_bytes(gzip.compress(b"id,y\n2,1\n"))
    write(root / "_SUCCESS", "")
    write(root / ".hidden.csv", "id,y\n99,9\n")
    write(root / "_temporary" / "part-9.csv", "id,y\n98,9\n")
    write(root / "b" / ".part-2.csv.crc", "garbage")
    write(root / "c" / "empty.csv", "")
    dataset = load_dataset(csv_config(label="y", joinsource_name_or_index="id"), root)
    assert dataset.joinsource.to_series().tolist() == [1, 2, 3]
    assert dataset.label.to_series().tolist() == [0, 1, 1]
    assert dataset.feature_names == []


def test_tokenizing_like_pandas(tmp_path):
    text = ('\ufeffname,text,y\r\n'  # BOM, CRLF
            'a,"line one\nline two",1\r\n'  # quoted newline
            '\r\n'  # blank line
            '   \r\n'  # whitespace-only line
            'b,"say ""hi""",0\r\n'
            'c,,1')  # no final newline, empty field
    path = write(tmp_path / "d.csv", text)
    config = csv_config(label="y", facet=[Facet("text")], group_variable="name")
    dataset = load_dataset(config, path)
    expected = pd.read_csv(path)
    assert dataset.headers == ["name", "text", "y"]
    assert_column_is(dataset.facets["text"], expected["text"])
    assert dataset.facets["text"].to_series().tolist()[:2] == ["line one\nline two", 'say "hi"']
    assert_column_is(dataset.group, expected["name"])
    assert dataset.label.to_series().tolist() == [1, 0, 1]


def test_header_names_like_pandas(tmp_path):
    path = write(tmp_path / "d.csv", "a,a,,a.1,a\n1,2,3,4,5\n")
    dataset = load_dataset(csv_config(label=4), path, need_features=True)
    assert dataset.headers == list(pd.read_csv(path).columns) == ["a", "a.2", "Unnamed: 2", "a.1", "a.3"]
    assert dataset.label.name == "a.3"
    assert dataset.features.columns.tolist() == ["a", "a.2", "Unnamed: 2", "a.1"]


def test_rows_longer_than_a_parse_block(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_format, "_BLOCK_BYTES", 64)
    long_text = "x" * 5000
    path = write(tmp_path / "d.csv", "t,y\n" + "".join(f"{long_text}{i},{i % 2}\n" for i in range(5)))
    dataset = load_dataset(csv_config(label="y", facet=[Facet("t")]), path, chunk_rows=2)
    assert dataset.label.to_series().tolist() == [0, 1, 0, 1, 0]
    assert dataset.facets["t"].to_series().str.len().tolist() == [5001] * 5


def test_a_file_read_again_for_a_long_row_counts_its_rows_once(tmp_path, monkeypatch, caplog):
    """A row longer than a parse block makes the file be read again with larger blocks; the progress count
    (a 1,001-row file showed 4,000 rows) counts each row once."""
    import logging

    monkeypatch.setattr(csv_format, "_BLOCK_BYTES", 256)
    monkeypatch.setenv("LUCENT_PROGRESS_SECONDS", "1e-9")  # a line for every count
    short = "".join(f"s{i},{i % 2}\n" for i in range(300))
    path = write(tmp_path / "d.csv", "t,y\n" + short + f"{'x' * 5000},1\n" + short)
    with caplog.at_level(logging.INFO):
        dataset = load_dataset(csv_config(label="y", facet=[Facet("t")]), path)
    assert dataset.n_rows == 601
    counts = [int(r.getMessage().split(": ")[1].split(" rows")[0].replace(",", ""))
              for r in caplog.records if r.getMessage().startswith("Loading: ")]
    assert counts and counts[-1] == 601 and max(counts) <= 601, counts


# Errors ---------------------------------------------------------------------------------------------


def test_error_config_headers_do_not_match_the_columns(tmp_path):
    path = write(tmp_path / "d.csv", "1,2,3,4\n")
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(headers=["a", "b", "c"], label="c"), path)
    message = str(error.value)
    assert message.startswith("Headers in config do not match with the number of columns in the dataset.")
    assert f"{path} line 1 has 4 fields" in message and "names 3 columns" in message


def test_error_second_file_has_other_columns(tmp_path):
    write(tmp_path / "d" / "1.csv", "a,b\n1,2\n")
    second = write(tmp_path / "d" / "2.csv", "\n1,2,3\n")
    with pytest.raises(DataError, match="Headers in config do not match") as error:
        load_dataset(csv_config(label="a"), tmp_path / "d")
    assert f"{second} line 2 has 3 fields" in str(error.value)
    assert "the header row of" in str(error.value)


@pytest.mark.parametrize("bad_row", ["4,5", "4,5,6,7"])
def test_error_row_with_another_number_of_fields(tmp_path, bad_row):
    path = write(tmp_path / "d.csv", f'a,b,c\n1,"two\nlines",3\n\n{bad_row}\n7,8,9\n')
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(label="a"), path)
    assert f"{path} line 5 has {len(bad_row.split(','))} fields, but the dataset has 3 columns" in str(error.value)


def test_error_bad_row_line_counts_leading_blank_lines(tmp_path):
    path = write(tmp_path / "d.csv", "\n\n1,2,3\n4,5\n")
    with pytest.raises(DataError, match=rf"{path} line 4 has 2 fields, but the dataset has 3 columns"):
        load_dataset(csv_config(headers=["a", "b", "c"], label="a"), path)


def test_error_bad_row_in_gzip_file_after_header(tmp_path):
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n1,2\n3\n"))
    with pytest.raises(DataError, match=r"d\.csv\.gz line 3 has 1 fields"):
        load_dataset(csv_config(label="a"), path)


def test_error_not_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,2\n3,\xff\xfe\n")
    with pytest.raises(DataError, match=rf"{path} line 3 is not valid UTF-8"):
        load_dataset(csv_config(label="a"), path)


def test_error_not_utf8_in_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,\xff\n1,2\n")
    with pytest.raises(DataError, match=rf"{path} line 1 is not valid UTF-8"):
        load_dataset(csv_config(label="a"), path)


def test_error_corrupt_gzip(tmp_path):
    rng = np.random.default_rng(0)
    data = b"a,b\n" + b"".join(b"%d,%d\n" % tuple(pair) for pair in rng.integers(0, 10**9, (20000, 2)))
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(data)[:-4000])
    with pytest.raises(DataError, match="cannot decompress this .gz file") as error:
        load_dataset(csv_config(label="a"), path)
    assert str(path) in str(error.value)


def test_error_not_gzip_at_all(tmp_path):
    path = write(tmp_path / "d.csv.gz", "a,b\n1,2\n")
    with pytest.raises(DataError, match=rf"{path}: cannot decompress"):
        load_dataset(csv_config(label="a"), path)


@pytest.mark.parametrize("text", ["", "\n\n", "a,b\n"])
def test_error_no_data_rows(tmp_path, text):
    path = write(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=rf"The dataset {path} has no data rows \(files read: {path}\)"):
        load_dataset(csv_config(label="a"), path)


def test_error_no_data_rows_with_config_headers(tmp_path):
    path = write(tmp_path / "d.csv", "a,b\n")  # only the header row
    with pytest.raises(DataError, match="has no data rows"):
        load_dataset(csv_config(headers=["a", "b"], label="a"), path)


def test_error_duplicate_config_headers(tmp_path):
    path = write(tmp_path / "d.csv", "1,2\n")
    with pytest.raises(DataError, match=r"`headers` in the analysis config repeats \['a'\]"):
        load_dataset(csv_config(headers=["a", "a"], label="a"), path)


# Header rule without `headers`, and header rows that differ from `headers` ----------------------------


def numeric_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"approved": rng.integers(0, 2, n), "age": rng.integers(18, 90, n),
                         "income": rng.normal(50, 15, n).round(2), "gender": rng.integers(0, 2, n),
                         "debt": rng.random(n).round(3)})


def bias_config(**kwargs) -> AnalysisConfig:
    return AnalysisConfig(dataset_type="text/csv", label_values_or_threshold=[1],
                          methods=Methods(pre_training_bias=BiasMethod(["CI", "DPL"])), **kwargs)


@pytest.mark.parametrize(("label", "facet"), [(0, 3), ("column_0", "column_3")])
def test_headerless_numeric_csv_keeps_its_first_row_and_gets_generated_names(tmp_path, caplog, label, facet):
    frame = numeric_frame(400, seed=1)
    path = write(tmp_path / "d.csv", frame.to_csv(header=False, index=False))
    expected = pd.read_csv(path, header=None)  # every row is data
    config = bias_config(label=label, facet=[Facet(facet, [1])])

    with caplog.at_level("INFO", logger="analyzer.data.csv_format"):
        dataset = load_dataset(config, path, need_features=True)

    assert dataset.n_rows == len(expected) == 400
    assert dataset.headers == [f"column_{i}" for i in range(5)]
    assert dataset.label.name == "column_0"
    assert dataset.label.to_series().tolist() == expected[0].tolist()
    assert dataset.facets["column_3"].to_series().tolist() == expected[3].tolist()
    assert dataset.features["column_2"].tolist() == expected[2].tolist()
    assert f"{path} line 1 is data: every field of it is a number" in caplog.text
    # the bias numbers are those of all 400 rows: CI = (n_a - n_d) / n, DPL = q_a - q_d
    d = expected[3] == 1
    metrics = {m["name"]: m["value"] for m in bias_analysis(dataset, config, "pre_training")["facets"]["column_3"][0]["metrics"]}
    assert metrics["CI"] == pytest.approx(((~d).sum() - d.sum()) / len(expected))
    assert metrics["DPL"] == pytest.approx(expected[0][~d].mean() - expected[0][d].mean())


def test_header_row_is_found_by_a_text_field_above_numbers_and_logged(tmp_path, caplog):
    frame = numeric_frame(50, seed=2).assign(city=["x", "y"] * 25, flag=["True", "False"] * 25)
    path = write(tmp_path / "d.csv", frame.to_csv(index=False))
    with caplog.at_level("INFO", logger="analyzer.data.csv_format"):
        dataset = load_dataset(csv_config(label="approved", facet=[Facet("flag")]), path)
    assert dataset.headers == list(pd.read_csv(path).columns)
    assert dataset.n_rows == 50
    assert dataset.facets["flag"].dtype == bool
    assert f"{path} line 1 is the header row: 'approved' (column 0) is text and the next rows there are numbers" \
        in caplog.text


def test_text_only_csv_without_headers_reads_its_first_row_as_header(tmp_path, caplog):
    path = write(tmp_path / "d.csv", "name,city\nann,paris\nbob,rome\n")
    with caplog.at_level("INFO", logger="analyzer.data.csv_format"):
        dataset = load_dataset(csv_config(label="name"), path)
    assert dataset.headers == ["name", "city"] and dataset.n_rows == 2
    assert "is the header row: it has text fields" in caplog.text


def test_headerless_parts_and_gz_parts_each_with_or_without_a_repeated_header(tmp_path):
    frame = numeric_frame(90, seed=3)
    root = tmp_path / "data"
    parts = [frame.iloc[:30], frame.iloc[30:60], frame.iloc[60:]]
    # headerless parts: the first part's first row is data
    write(root / "part-0.csv", parts[0].to_csv(header=False, index=False))
    (root / "part-1.csv.gz").write_bytes(gzip.compress(parts[1].to_csv(header=False, index=False).encode()))
    write(root / "part-2.csv", parts[2].to_csv(header=False, index=False))
    dataset = load_dataset(csv_config(label=0, facet=[Facet(1)]), root)
    assert dataset.n_rows == len(frame)
    assert dataset.facets["column_1"].to_series().tolist() == frame["age"].tolist()
    # parts that all repeat the header row (Spark / pandas part files), one of them compressed
    root = tmp_path / "with_headers"
    write(root / "part-0.csv", parts[0].to_csv(index=False))
    (root / "part-1.csv.gz").write_bytes(gzip.compress(parts[1].to_csv(index=False).encode()))
    write(root / "part-2.csv", parts[2].to_csv(index=False))
    dataset = load_dataset(csv_config(label="approved", facet=[Facet("age")]), root)
    assert dataset.headers == list(frame.columns) and dataset.n_rows == len(frame)
    assert dataset.facets["age"].to_series().tolist() == frame["age"].tolist()


@pytest.mark.parametrize("header_row", ["approved,age,income,gender,Debt", " APPROVED ,age,income,Gender,debt"])
def test_header_row_differing_from_config_headers_in_case_or_spaces_is_skipped_with_a_warning(
        tmp_path, caplog, header_row):
    frame = numeric_frame(60, seed=4)
    first = write(tmp_path / "data" / "part-0.csv", header_row + "\n" + frame.iloc[:30].to_csv(header=False, index=False))
    write(tmp_path / "data" / "part-1.csv", header_row + "\n" + frame.iloc[30:].to_csv(header=False, index=False))
    config = csv_config(headers=list(frame.columns), label="approved", facet=[Facet("debt")])
    with caplog.at_level("WARNING", logger="analyzer.data.csv_format"):
        dataset = load_dataset(config, tmp_path / "data")
    assert dataset.n_rows == len(frame)
    assert dataset.label.dtype == np.int64 and dataset.facets["debt"].dtype == np.float64
    assert dataset.facets["debt"].to_series().tolist() == frame["debt"].tolist()
    differing = [(j, f) for j, (f, h) in enumerate(zip(header_row.split(","), frame.columns, strict=True)) if f.strip() != h]
    assert f"{first} line 1 is read as a header row" in caplog.text
    for j, field in differing:
        assert f"column {j}: {field!r} for {frame.columns[j]!r}" in caplog.text


def test_header_row_naming_other_columns_than_config_headers_is_an_error(tmp_path):
    frame = numeric_frame(20, seed=5)
    path = write(tmp_path / "d.csv", "approved,age,income,gender,loan\n" + frame.to_csv(header=False, index=False))
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(headers=list(frame.columns), label="approved"), path)
    message = str(error.value)
    assert f"line 1 of {path} looks like a header row ('approved' in column 0 is text" in message
    assert "column 4: 'loan' for 'debt'" in message and "`headers` in the analysis config says" in message


def test_with_config_headers_a_first_row_is_data_unless_it_has_text_above_numbers(tmp_path):
    path = write(tmp_path / "d.csv", "sex,age\nM,30\nF,40\n")  # 'sex' is a value of a text column, 'age' is text
    with pytest.raises(DataError, match="looks like a header row"):  # ... above numbers: a header
        load_dataset(csv_config(headers=["s", "a"], label="a"), path)
    path = write(tmp_path / "e.csv", "M,30\nF,40\n")
    dataset = load_dataset(csv_config(headers=["s", "a"], label="a"), path)
    assert dataset.n_rows == 2 and dataset.label.to_series().tolist() == [30, 40]


def test_every_row_with_a_wrong_number_of_fields_is_reported_at_once(tmp_path):
    rng = random.Random(6)
    bad_lines: list[tuple[Path, int, int]] = []
    for part in range(2):
        lines = ["a,b,c"]
        for _ in range(200):
            width = rng.choice([3] * 12 + [2, 4])
            lines.append(",".join(str(rng.randint(0, 9)) for _ in range(width)))
        path = write(tmp_path / "d" / f"part-{part}.csv", "\n".join(lines) + "\n")
        bad_lines += [(path, i + 1, len(line.split(","))) for i, line in enumerate(lines) if len(line.split(",")) != 3]
    assert len(bad_lines) > 12
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(label="a"), tmp_path / "d")
    message = str(error.value)
    assert message.startswith(f"{len(bad_lines)} rows have another number of fields than the dataset's 3 columns")
    for path, line, n_fields in bad_lines[:10]:
        assert f"{path} line {line} has {n_fields} fields;" in message
    assert f"{bad_lines[10][0]} line {bad_lines[10][1]} " not in message
    assert f"and {len(bad_lines) - 10} more such row(s)" in message


def test_parts_repeating_a_header_row_with_empty_and_repeated_names(tmp_path):
    """Part files are compared with the header row as written, not with the names pandas makes of it."""
    write(tmp_path / "d" / "part-0.csv", "a,a,,y\n1,2,3,0\n")
    write(tmp_path / "d" / "part-1.csv", "a,a,,y\n5,6,7,1\n")
    dataset = load_dataset(csv_config(label="y", facet=[Facet("a.1")]), tmp_path / "d")
    assert dataset.headers == ["a", "a.1", "Unnamed: 2", "y"]
    assert dataset.n_rows == 2 and dataset.facets["a.1"].to_series().tolist() == [2, 6]


def test_pandas_header_row_of_unnamed_columns_is_a_header(tmp_path: Path) -> None:
    """DataFrame(array).to_csv(index=False) writes 0,1,2,... as the header row: the names, not a data row."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.integers(0, 5, size=(40, 4)))
    frame.to_csv(tmp_path / "d.csv", index=False)
    dataset = load_dataset(csv_config(label="3", facet=[Facet("0")]), tmp_path / "d.csv")
    assert dataset.headers == ["0", "1", "2", "3"]
    assert dataset.n_rows == 40
    assert dataset.facets["0"].to_series().tolist() == frame[0].tolist()
