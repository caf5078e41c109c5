"""Request serialisation (spec 5.2): every documented example, exact float round trips, batching cuts."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from analyzer.config.model import Predictor
from analyzer.errors import UserError
from analyzer.predict import RequestEncoder, serialize_records

CSV = Predictor(content_type="text/csv")


def jsonl(template: str) -> Predictor:
    return Predictor(content_type="application/jsonlines", content_template=template)


def json_predictor(content_template: str, record_template: str) -> Predictor:
    return Predictor(content_type="application/json", content_template=content_template,
                     record_template=record_template)


# -- spec 5.2 examples ------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "expected"), [
    ([[1, 2, 3, 4]], b"1,2,3,4"),
    ([[1, 2, 3, 4], [5, 6, 7, 8]], b"1,2,3,4\n5,6,7,8"),
])
def test_csv_examples(rows, expected):
    assert serialize_records(np.array(rows), list("ABCD"), CSV) == expected


def test_csv_text_example_quotes_strings():
    rows = pd.DataFrame({"review": ["This is a good product"], "rating": [5]})
    assert serialize_records(rows, ["review", "rating"], CSV) == b'"This is a good product",5'


def test_jsonlines_examples():
    rows = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert serialize_records(rows, list("ABCD"), jsonl('{"data":{"features":$features}}')) == (
        b'{"data":{"features":[1,2,3,4]}}\n{"data":{"features":[5,6,7,8]}}')
    text = pd.DataFrame({"review": ["This is a good product"], "rating": [5]})
    assert serialize_records(text, ["review", "rating"], jsonl('{"features":$features}')) == (
        b'{"features":["This is a good product",5]}')


SPEC_JSON_ROWS = np.array([[0, 1], [3, 4]])


@pytest.mark.parametrize(("content_template", "record_template", "expected"), [
    ('{"instances": $records, "feature_names": $feature_names}', "$features",
     b'{"instances": [[0, 1], [3, 4]], "feature_names": ["A", "B"]}'),
    ('{"instances": $records}', "$features", b'{"instances": [[0, 1], [3, 4]]}'),
    ("$records", "$features_kvp", b'[{"A": 0, "B": 1}, {"A": 3, "B": 4}]'),
    ("$records", '{"A": "${A}", "B": "${B}"}', b'[{"A": 0, "B": 1}, {"A": 3, "B": 4}]'),
])
def test_json_examples(content_template, record_template, expected):
    predictor = json_predictor(content_template, record_template)
    assert serialize_records(SPEC_JSON_ROWS, ["A", "B"], predictor) == expected


def test_json_single_record_template_sends_one_record_per_request():
    predictor = json_predictor("$record", "$features_kvp")
    records = RequestEncoder(predictor, ["A", "B"]).encode(SPEC_JSON_ROWS)
    assert records.max_records == 1
    assert records.body(0, 1) == b'{"A": 0, "B": 1}'
    assert records.body(1, 2) == b'{"A": 3, "B": 4}'
    assert records.cut(0, max_records=100, max_bytes=10**6) == 1
    with pytest.raises(ValueError):
        records.body(0, 2)


def test_json_example_from_the_json_notebook():
    predictor = json_predictor('{"instances":$records}', '{"features":$features}')
    body = serialize_records(SPEC_JSON_ROWS, ["A", "B"], predictor)
    assert json.loads(body) == {"instances": [{"features": [0, 1]}, {"features": [3, 4]}]}


def test_feature_names_in_a_jsonlines_template():
    body = serialize_records(SPEC_JSON_ROWS, ["A", "B"], jsonl('{"names":$feature_names,"values":$features}'))
    assert body == b'{"names":["A","B"],"values":[0,1]}\n{"names":["A","B"],"values":[3,4]}'


# -- exact values -----------------------------------------------------------------------------------

def _csv_floats(body: bytes) -> np.ndarray:
    return np.array([[float(cell) for cell in line.split(",")] for line in body.decode().split("\n")])


def test_floats_round_trip_bit_exact():
    rng = np.random.default_rng(7)
    values = rng.normal(size=(500, 6)) * 10.0 ** rng.integers(-300, 300, size=(500, 6))
    values[0, :] = [0.1, 1e20, 5e-324, 1.7976931348623157e308, -0.0, 1 / 3]
    names = [f"f{i}" for i in range(6)]
    assert np.array_equal(_csv_floats(serialize_records(values, names, CSV)), values)
    body = serialize_records(values, names, jsonl("$features"))
    assert np.array_equal(np.array([json.loads(line) for line in body.split(b"\n")]), values)
    body = serialize_records(values, names, json_predictor("$records", "$features"))
    assert np.array_equal(np.array(json.loads(body)), values)


def test_float32_columns_round_trip_at_their_precision():
    values = np.random.default_rng(3).random((50, 2)).astype(np.float32)
    frame = pd.DataFrame(values, columns=["a", "b"])
    parsed = _csv_floats(serialize_records(frame, ["a", "b"], CSV)).astype(np.float32)
    assert np.array_equal(parsed, values)


def test_integers_stay_integers_and_large_ones_stay_exact():
    frame = pd.DataFrame({"count": [1, 2**60], "ratio": [0.5, 1.25]})
    assert serialize_records(frame, ["count", "ratio"], CSV) == b"1,0.5\n1152921504606846976,1.25"
    ints = pd.DataFrame({"a": np.array([1, -2], dtype=np.int8), "b": np.array([2**63 + 1, 3], dtype=np.uint64)})
    assert serialize_records(ints, ["a", "b"], CSV) == b"1,9223372036854775809\n-2,3"


def test_missing_and_infinite_values():
    frame = pd.DataFrame({"x": [1.5, np.nan, np.inf, -np.inf], "s": ["a", None, "b", "c"]})
    assert serialize_records(frame, ["x", "s"], CSV) == b'1.5,"a"\n,\ninf,"b"\n-inf,"c"'
    body = serialize_records(frame, ["x", "s"], jsonl("$features"))
    assert body.split(b"\n") == [b'[1.5,"a"]', b"[null,null]", b'[Infinity,"b"]', b'[-Infinity,"c"]']


def test_csv_strings_are_quoted_and_escaped():
    text = ['say "hi"', "a,b", "line\nbreak", ""]
    frame = pd.DataFrame({"text": text, "n": [1, 2, 3, 4]})
    body = serialize_records(frame, ["text", "n"], CSV)
    assert list(csv.reader(io.StringIO(body.decode()))) == [[t, str(n)] for t, n in zip(text, [1, 2, 3, 4],
                                                                                            strict=True)]
    assert body.startswith(b'"say ""hi""",1\n"a,b",2')


def test_booleans_categoricals_and_mixed_objects():
    frame = pd.DataFrame({
        "flag": [True, False],
        "colour": pd.Categorical(["red", None]),
        "mixed": pd.Series([1, "x"], dtype=object),
    })
    names = ["flag", "colour", "mixed"]
    assert serialize_records(frame, names, CSV) == b'True,"red",1\nFalse,,"x"'
    assert serialize_records(frame, names, jsonl("$features")) == b'[true,"red",1]\n[false,null,"x"]'


def test_kvp_and_named_placeholders_with_text():
    frame = pd.DataFrame({"name": ['Ann "A"'], "age": [41]})
    kvp = serialize_records(frame, ["name", "age"], json_predictor("$records", "$features_kvp"))
    assert json.loads(kvp) == [{"name": 'Ann "A"', "age": 41}]
    named = serialize_records(frame, ["name", "age"], jsonl('{"who": "${name}", "years": ${age}}'))
    assert json.loads(named) == {"who": 'Ann "A"', "years": 41}


def test_numeric_fast_path_matches_the_general_path():
    values = np.random.default_rng(5).normal(size=(200, 3))
    names = ["a", "b", "c"]
    fast = serialize_records(values, names, jsonl('{"f":$features}'))
    general = serialize_records(values, names, jsonl('{"f":[${a},${b},${c}]}'))  # per-column path
    assert fast == general


def test_npy_bodies_of_frames_with_missing_values():
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [4, 5, 6]})  # to_numpy() is column-major here
    records = RequestEncoder(Predictor(content_type="application/x-npy"), ["a", "b"]).encode(frame)
    np.testing.assert_array_equal(np.load(io.BytesIO(bytes(records.body(1, 3)))), frame.to_numpy(float)[1:3])


def test_npy_body_is_a_loadable_array():
    values = np.arange(6, dtype=np.float64).reshape(3, 2)
    records = RequestEncoder(Predictor(content_type="application/x-npy"), ["a", "b"]).encode(values)
    body = records.body(1, 3)
    expected = io.BytesIO()
    np.save(expected, values[1:3], allow_pickle=False)
    assert bytes(body) == expected.getvalue()  # header and rows, sent as two pieces
    assert records.size(1, 3) == len(body)


# -- batching cuts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("predictor", [CSV, jsonl('{"x":$features}'),
                                       json_predictor('{"instances": $records}', "$features_kvp")])
def test_cut_respects_payload_and_record_limits(predictor):
    values = np.random.default_rng(1).normal(size=(300, 4))
    records = RequestEncoder(predictor, list("abcd")).encode(values)
    start = 0
    while start < len(records):
        stop = records.cut(start, max_records=50, max_bytes=2_000)
        assert 1 <= stop - start <= 50
        assert records.size(start, stop) == len(records.body(start, stop)) <= 2_000
        if stop < len(records) and stop - start < 50:
            assert records.size(start, stop + 1) > 2_000  # as large as the payload allows
        start = stop


def test_a_record_larger_than_the_payload_limit_is_sent_alone():
    records = RequestEncoder(CSV, ["a"]).encode(np.array([[1.0], [2.0]]))
    assert records.cut(0, max_records=10, max_bytes=1) == 1


# -- template errors (SDK wording) ------------------------------------------------------------------

@pytest.mark.parametrize(("predictor", "message"), [
    (Predictor(content_type="application/jsonlines"),
     "content_template field is required for content_type application/jsonlines"),
    (jsonl('{"x": 1}'), 'Invalid content_template {"x": 1}. Please include a placeholder $features.'),
    (Predictor(content_type="application/json", content_template="$records"),
     "content_template and record_template are required for content_type application/json"),
    (json_predictor('{"x": 1}', "$features"),
     'Invalid content_template {"x": 1}. Please include either placeholder $records or $record.'),
    (json_predictor("$records", '{"a": 1}'), "Please include a placeholder $features"),
    (json_predictor("$records", '{"a": "${nope}"}'), "${nope} does not name a feature"),
    (jsonl("$records"), "$records is only allowed in content_template of content_type application/json"),
    (Predictor(content_type="image/gif"), "not supported for tabular data"),
])
def test_template_errors(predictor, message):
    with pytest.raises(UserError) as error:
        RequestEncoder(predictor, ["a", "b"])
    assert message in str(error.value)


def test_npy_needs_numeric_features():
    encoder = RequestEncoder(Predictor(content_type="application/x-npy"), ["a"])
    with pytest.raises(UserError, match="numeric"):
        encoder.encode(pd.DataFrame({"a": ["x"]}))


def test_npy_sends_booleans_as_the_numbers_a_json_decoder_makes_of_them():
    """A job picks npy for a model folder's default handlers when the features are numbers or booleans;
    the model must get the array it would get from the configured JSON Lines (true -> 1.0)."""
    from container.sidecar.codecs import _decode_jsonlines

    frame = pd.DataFrame({"member": [True, False, True], "x": [-0.3, 1.5, 2.0]})
    records = RequestEncoder(Predictor(content_type="application/x-npy"), ["member", "x"]).encode(frame)
    sent = np.load(io.BytesIO(bytes(records.body(0, 3))))
    lines = RequestEncoder(jsonl('{"features":$features}'), ["member", "x"]).encode(frame)
    decoded = _decode_jsonlines(bytes(lines.body(0, 3)))
    assert sent.dtype == np.float64
    np.testing.assert_array_equal(sent, decoded)
    np.testing.assert_array_equal(sent, [[1.0, -0.3], [0.0, 1.5], [1.0, 2.0]])
