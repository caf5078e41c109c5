"""Request decoding and response encoding of the model server (no server needed)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from container.sidecar import codecs
from container.sidecar.codecs import CodecError, decode, encode

# Values whose shortest text is long or unusual: every one must survive encode -> parse exactly.
TRICKY = np.array([[0.1, 1 / 3, -0.0], [1e-300, 123456789.123456789, 2.5e17], [5.0, -7.25, 1e22]])


def test_csv_numeric_becomes_a_float_matrix_with_nan_for_blanks():
    array = decode(b"1,2.5,3\n4,,6\n-7,8e-3,9\n", "text/csv")
    assert array.dtype == np.float64 and array.shape == (3, 3)
    np.testing.assert_array_equal(array, [[1, 2.5, 3], [4, np.nan, 6], [-7, 0.008, 9]])


def test_csv_single_row_and_single_column_stay_two_dimensional():
    assert decode(b"1,2,3", "text/csv").shape == (1, 3)
    assert decode(b"1\n2\n3\n", "text/csv").shape == (3, 1)


def test_csv_with_strings_is_an_object_array_with_numeric_columns_as_floats():
    body = b'"This is, a good product",5,M\n"two\nlines",,F\n'
    array = decode(body, "text/csv; charset=utf-8")
    assert array.dtype == object and array.shape == (2, 3)
    assert array[0].tolist() == ["This is, a good product", 5.0, "M"]
    assert array[1, 0] == "two\nlines" and np.isnan(array[1, 1]) and array[1, 2] == "F"


def test_csv_ragged_rows_are_a_bad_request():
    with pytest.raises(CodecError, match="malformed text/csv") as error:
        decode(b"1,2,3\n4,5\n", "text/csv")
    assert error.value.status == 400


@pytest.mark.parametrize("body", [
    b"[[1, 2], [3, 4]]",
    b'{"instances": [[1, 2], [3, 4]], "feature_names": ["A", "B"]}',
    b'{"instances": [{"features": [1, 2]}, {"features": [3, 4]}]}',
    b'[{"A": 1, "B": 2}, {"B": 4, "A": 3}]',
    b'{"instances": [[1, 2], [3, 4]]}',
])
def test_json_record_layouts(body):
    array = decode(body, "application/json")
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, [[1, 2], [3, 4]])


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b'{"features": [1, 2, 3]}', b'{"A": 1, "B": 2, "C": 3}'])
def test_json_single_record_forms(body):
    np.testing.assert_array_equal(decode(body, "application/json"), [[1, 2, 3]])


def test_json_with_strings_and_nulls():
    array = decode(b'[["a", 1, null], ["b", 2.5, 3]]', "application/json")
    assert array.dtype == object
    assert array[0, 0] == "a" and array[1].tolist() == ["b", 2.5, 3]


@pytest.mark.parametrize("body, message", [
    (b"[[1, 2], [3]]", "record 2 has 1 values, expected 2"),
    (b"[[1, 2", "malformed application/json"),
    (b'[{"A": 1}, {"B": 2}]', "expected \\['A'\\]"),
    (b"[]", "no records"),
])
def test_json_errors_name_the_problem(body, message):
    with pytest.raises(CodecError, match=message):
        decode(body, "application/json")


@pytest.mark.parametrize("body", [
    b"[1,2]\n[3,4]",
    b"[1, 2]\r\n[3, 4]\r\n",
    b'{"features": [1, 2]}\n{"features": [3, 4]}\n',
    b"[1,2]\n\n[3,4]\n",
])
def test_jsonlines_records(body):
    np.testing.assert_array_equal(decode(body, "application/jsonlines"), [[1, 2], [3, 4]])


@pytest.mark.parametrize("line", ["[{}]", '{{"features": [{}]}}'])
def test_numeric_fast_path_gives_what_json_parsing_gives(line):
    values = ["1e-7", "-0.0", "null", "12345678901234567890", "0.30000000000000004", "-2E+3"]
    lines = [line.format(", ".join(values)), line.format(", ".join(reversed(values)))]
    parsed = [json.loads(text) for text in lines]
    expected = codecs.records_to_array(parsed)
    for body, content_type in (("\n".join(lines), "application/jsonlines"),
                               (f"[{', '.join(lines)}]", "application/json"),
                               (f'{{"instances": [{", ".join(lines)}]}}', "application/json")):
        np.testing.assert_array_equal(decode(body.encode(), content_type), expected)


def test_jsonlines_with_strings_and_bad_line():
    array = decode(b'["good product", 5]\n["bad", 1]\n', "application/jsonlines")
    assert array.tolist() == [["good product", 5.0], ["bad", 1.0]]
    with pytest.raises(CodecError, match="line 2"):
        decode(b"[1, 2]\n[3, oops]\n", "application/jsonlines")


def test_npy_round_trip_and_refuses_pickles():
    buffer = io.BytesIO()
    np.save(buffer, TRICKY)
    np.testing.assert_array_equal(decode(buffer.getvalue(), "application/x-npy"), TRICKY)
    one = io.BytesIO()
    np.save(one, np.array([1.0, 2.0]))
    assert decode(one.getvalue(), "application/x-npy").shape == (1, 2)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodecError, match="application/x-npy"):
        decode(pickled.getvalue(), "application/x-npy")


@pytest.mark.parametrize("array", [TRICKY, np.asfortranarray(TRICKY), np.arange(6, dtype=np.int32).reshape(2, 3),
                                   np.array([[1.5, np.nan]], dtype=np.float32), np.zeros((0, 4))])
def test_npy_in_a_bytearray_is_read_in_place_and_writable(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    body = bytearray(buffer.getvalue())  # how the server receives a body
    decoded = decode(body, "application/x-npy")
    np.testing.assert_array_equal(decoded, decode(bytes(body), "application/x-npy"))
    assert decoded.dtype == array.dtype and decoded.flags.writeable
    if array.size:
        assert np.shares_memory(decoded, np.frombuffer(body, dtype=np.uint8))  # the rows are not copied
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodecError, match="Object arrays cannot be loaded"):
        decode(bytearray(pickled.getvalue()), "application/x-npy")
    with pytest.raises(CodecError, match="application/x-npy"):
        decode(body[:-8], "application/x-npy")  # truncated: np.load's error


def test_unsupported_content_type_and_empty_body():
    with pytest.raises(CodecError, match="unsupported Content-Type 'image/gif'") as error:
        decode(b"GIF89a", "image/gif")
    assert error.value.status == 415
    with pytest.raises(CodecError, match="empty text/csv"):
        decode(b"\n", "text/csv")


def test_csv_output_is_one_line_per_record_and_exact():
    text = encode(TRICKY, "text/csv").decode()
    lines = text.splitlines()
    assert len(lines) == 3
    np.testing.assert_array_equal(np.array([[float(v) for v in line.split(",")] for line in lines]), TRICKY)
    assert encode(np.array([0, 1, 1]), "text/csv") == b"0\n1\n1\n"
    assert encode(np.array(["yes", "no, really"]), "text/csv") == b'yes\n"no, really"\n'


def test_json_and_jsonlines_outputs_parse_back_exactly():
    np.testing.assert_array_equal(json.loads(encode(TRICKY, "application/json")), TRICKY)
    lines = encode(TRICKY, "application/jsonlines").decode().splitlines()
    np.testing.assert_array_equal([json.loads(line) for line in lines], TRICKY)
    assert json.loads(encode(np.array([0.25, 0.75]), "application/json")) == [0.25, 0.75]
    assert encode(np.array([1, 0]), "application/jsonlines") == b"1\n0\n"
    assert json.loads(encode(np.array([], dtype=float), "application/json")) == []


def test_non_numeric_and_non_finite_outputs_fall_back_to_json_dumps():
    assert json.loads(encode(np.array(["cat", "dog"]), "application/json")) == ["cat", "dog"]
    assert encode(np.array([np.nan, 1.0]), "application/json") == b"[NaN, 1.0]"
    assert encode([[0.1, 0.9], [0.5]], "application/jsonlines") == b"[0.1, 0.9]\n[0.5]\n"


def test_prediction_containers_are_accepted():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"a": [1.5, 2.5]})
    assert encode(frame, "text/csv") == b"1.5\n2.5\n"
    assert encode(pandas.Series([3, 4]), "application/json") == b"[3,4]"
    assert encode(7, "text/csv") == b"7\n"


def test_unsupported_accept_and_unrepresentable_predictions():
    with pytest.raises(CodecError, match="unsupported Accept 'text/html'") as error:
        encode(np.array([1.0]), "text/html")
    assert error.value.status == 406
    with pytest.raises(CodecError, match="3-D") as error:
        encode(np.zeros((2, 2, 2)), "text/csv")
    assert error.value.status == 500
    with pytest.raises(CodecError, match="application/json instead"):
        encode(np.array([{"a": 1}], dtype=object), "application/x-npy")


def test_media_type_normalisation():
    assert codecs.media_type("Text/CSV; charset=utf-8") == "text/csv"
    assert codecs.media_type("application/x-jsonlines") == "application/jsonlines"
    assert codecs.media_type(None) == ""


def _csv_cell(rng: np.random.Generator) -> str:
    """A numeric CSV cell in one of the spellings clients write, or (now and then) one that is not plain."""
    value = float(rng.normal() * 10.0 ** rng.integers(-30, 30))
    digits = "".join(rng.choice(list("0123456789"), size=int(rng.integers(1, 30))))
    point = int(rng.integers(0, len(digits) + 1))
    spellings = [repr(value), f"{value:.17g}", f"{value:e}", f"{value:E}", str(int(rng.integers(-10**6, 10**6))),
                 f"+{abs(value)!r}", f"{digits[:point]}.{digits[point:]}", f"{digits}e{int(rng.integers(-330, 330))}",
                 f"-{digits}E+{int(rng.integers(0, 20))}", ".5", "5.", "-0", "0.0", "", "1e400", "4.9e-324"]
    unusual = [" 1", "1 ", "nan", "NaN", "inf", "-Infinity", '"1"', "N/A", "null", "1_0", "0x10", "abc", "1e", "+"]
    pool = unusual if rng.random() < 0.03 else spellings
    return pool[int(rng.integers(len(pool)))]


def test_small_csv_bodies_decode_exactly_as_pyarrow_reads_them():
    """Small bodies (one invocation's records) are read in Python: same array, NaN and -0.0 included,
    as pyarrow's reader gives for thousands of random bodies; anything unusual is left to pyarrow."""
    rng = np.random.default_rng(7)
    fast = 0
    for _ in range(2000):
        width, rows = int(rng.integers(1, 16)), int(rng.integers(1, 5))
        lines = [",".join(_csv_cell(rng) for _ in range(width)) for _ in range(rows)]
        if rng.random() < 0.1:
            lines.insert(int(rng.integers(len(lines) + 1)), "")  # an empty line: skipped
        if rng.random() < 0.05:
            lines[-1] += ",1"  # ragged
        body = ("\r\n" if rng.random() < 0.2 else "\n").join(lines).encode() + (b"\n" if rng.random() < 0.5 else b"")
        if not body.strip():
            continue
        fast += codecs._small_numeric_csv(body) is not None
        try:
            expected = codecs._decode_csv_with_arrow(body)
        except CodecError:
            with pytest.raises(CodecError):
                decode(body, "text/csv")
            continue
        got = decode(bytearray(body), "text/csv")
        assert got.dtype == expected.dtype and got.shape == expected.shape, body
        if got.dtype == np.float64:
            np.testing.assert_array_equal(got, expected, err_msg=repr(body))
            assert (np.signbit(got) == np.signbit(expected)).all(), body
            assert got.flags.c_contiguous
        else:
            assert got.tolist() == expected.tolist() or repr(got.tolist()) == repr(expected.tolist()), body
    assert fast > 1000  # the corpus exercises the Python reader, not only the fallback
