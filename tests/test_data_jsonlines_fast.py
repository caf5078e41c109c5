"""The JSON Lines reader's fast path (analyzer/data/json_format.py) against the reference it shortcuts.

* ``records_search`` looks a plain key or a chain of keys up directly: it must give what
  ``jmespath.search`` gives, object for object, on every JSON value (keys with dots, quotes, spaces or
  nothing in a quoted identifier, missing keys, nulls, arrays where an object is expected).
* ``JsonTable`` reads chunks of lines at once and reads a chunk line by line (the reference code) when
  anything in it is wrong: on any file both must give the same table, the same warning and the same error.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import jmespath
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import analyzer.data.json_format as json_format
from analyzer.config.model import AnalysisConfig, Methods
from analyzer.data.json_format import JsonTable, key_path, records_search
from analyzer.errors import DataError

# Records as JSON Lines files hold them, and the awkward ones.
TRICKY_RECORDS = [
    {"features": [1, 2.5, "x"], "label": 0},
    {"features": None, "label": None},
    {},
    {"label": [1, 2], "features": [[1, 2], [3]]},
    {"a": {"b": 1, "b.c": 2, 'q"uote': 3, "": 4, "sp ace": 5}, "a.b": 6, 'a"b': 7, "": {"": 8}},
    {"a": {"b": {"c": None}}, "ü": {"日本": 9}},
    {"a": {"b": None}},
    {"a": None},
    {"a": [{"b": 1}, {"b": 2}]},
    {"a": "text"},
    {"a": 1.5},
    {"a": True},
    {"a": {"b": []}},
    {"a": {"b": {}}},
    {"1": {"2": 10}},
    [1, 2, 3],
    [{"a": 1}],
    "a string",
    "",
    12,
    0,
    -3.5,
    True,
    False,
    None,
]

# Expressions the shortcut takes, with the keys it looks up.
SHORTCUT = {
    "features": ("features",),
    "label": ("label",),
    "a.b": ("a", "b"),
    "a.b.c": ("a", "b", "c"),
    '"a.b"': ("a.b",),
    '"a\\"b"': ('a"b',),
    'a."b.c"': ("a", "b.c"),
    'a."q\\"uote"': ("a", 'q"uote'),
    '""': ("",),
    '"".""': ("", ""),
    'a.""': ("a", ""),
    'a."sp ace"': ("a", "sp ace"),
    '"ü"."日本"': ("ü", "日本"),
    '"1"."2"': ("1", "2"),
    "missing": ("missing",),
    "missing.deeper": ("missing", "deeper"),
}
# Expressions that go through jmespath itself.
NOT_SHORTCUT = ["a[0]", "a[*].b", "a.b[0]", "@", "a | b", "`1`", "a || label", "{x: a}", "[a, label]",
                "not_null(a, label)", "a.*", "features[0:2]", "a[?b == `1`]", "*.b", "!a", "a.b.c[0]", "label.x[0]"]


def identical(got: list, expected: list) -> bool:
    """The very same objects: a lookup returns what is in the record (``1 == True`` would hide a wrong value)."""
    return len(got) == len(expected) and all(g is e for g, e in zip(got, expected, strict=True))


def same_json(got: list, expected: list) -> bool:
    """Values of the same types with the same JSON text (jmespath makes new lists and objects)."""
    return [(type(g), json.dumps(g)) for g in got] == [(type(e), json.dumps(e)) for e in expected]


@pytest.mark.parametrize(("expression", "keys"), list(SHORTCUT.items()))
def test_shortcut_gives_what_jmespath_gives(expression, keys):
    compiled = jmespath.compile(expression)
    assert key_path(compiled) == keys
    expected = [compiled.search(record) for record in TRICKY_RECORDS]
    assert identical(records_search(compiled)(TRICKY_RECORDS), expected)
    assert records_search(compiled)([]) == []


def test_shortcut_values_on_tricky_records():
    """What the lookups find, spelled out: the values themselves, None for a missing key, a null, or a
    step through anything but an object (a list is not projected: ``a.b`` on ``{"a": [{"b": 1}]}`` is None)."""
    records = TRICKY_RECORDS
    search = {expression: records_search(jmespath.compile(expression)) for expression in SHORTCUT}
    assert search['"a.b"'](records[4:5]) == [6]
    assert search["a.b"](records[4:5]) == [1]
    assert search['a."b.c"'](records[4:5]) == [2]
    assert search['a."q\\"uote"'](records[4:5]) == [3]
    assert search['a.""'](records[4:5]) == [4]
    assert search['"".""'](records[4:5]) == [8]
    assert search['"a\\"b"'](records[4:5]) == [7]
    assert search['"ü"."日本"'](records[5:6]) == [9]
    assert search['"1"."2"'](records[14:15]) == [10]
    assert search["a.b.c"](records[5:9]) == [None, None, None, None]  # null, null parent, null grandparent, array
    assert search["a.b"](records[8:12]) == [None] * 4  # an array, a string, a number, a bool: no keys
    assert search["a.b"](records[12:14]) == [[], {}]
    assert search["features"](records[:4]) == [[1, 2.5, "x"], None, None, [[1, 2], [3]]]
    assert search["label"](records[15:]) == [None] * (len(records) - 15)  # not objects at all


@pytest.mark.parametrize("expression", NOT_SHORTCUT)
def test_other_expressions_go_through_jmespath(expression):
    compiled = jmespath.compile(expression)
    assert key_path(compiled) is None
    assert same_json(records_search(compiled)(TRICKY_RECORDS), [compiled.search(r) for r in TRICKY_RECORDS])


KEY_CHARS = st.sampled_from(["a", "b", ".", '"', "\\", " ", "ü", "[", "*", "@", "0", "\n", "'", "`"])
keys = st.one_of(st.sampled_from(["a", "b", "label", "a.b", "", 'a"b']), st.text(KEY_CHARS, max_size=4))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=3))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=10)


def identifier(key: str) -> str:
    """``key`` as a JMESPath identifier: bare when it can be, else quoted (a JSON string)."""
    bare = key.isidentifier() and key.isascii() and key not in ("true", "false", "null")
    return key if bare else json.dumps(key, ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(path=st.lists(keys, min_size=1, max_size=3), records=st.lists(values, max_size=6), data=st.data())
def test_shortcut_agrees_with_jmespath_on_generated_records(path, records, data):
    # also records that have the looked-up keys, at every depth
    nested = data.draw(values)
    for key in reversed(path):
        nested = {key: nested, **data.draw(st.dictionaries(keys, values, max_size=2))}
    records = [*records, nested]
    compiled = jmespath.compile(".".join(identifier(key) for key in path))
    assert key_path(compiled) == tuple(path)
    assert identical(records_search(compiled)(records), [compiled.search(r) for r in records])


# -- the reader: chunks against line by line --------------------------------------------------------------


def read(path: Path, config: AnalysisConfig, *, one_by_one: bool) -> tuple[str, object, list[str]]:
    """("table", (headers, role columns, every column), warnings) or ("error", message, warnings)."""
    handler = _Records()
    logger = logging.getLogger(json_format.__name__)
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(json_format, "_CHUNK_LINES", 3)  # chunk boundaries everywhere in small files
            if one_by_one:
                patch.setattr(JsonTable, "_add_lines", lambda *args: False)
            table = JsonTable([path], str(path), config, json_lines=True)
        data = table.read([], values=table.headers)
        return "table", (table.headers, table.role_columns, data.n_rows, data.values), handler.messages
    except DataError as error:
        return "error", str(error), handler.messages
    except jmespath.exceptions.JMESPathError as error:  # a JMESPath function failing on a record
        return "jmespath", str(error), handler.messages
    finally:
        logger.removeHandler(handler)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def assert_same_reading(lines: list[str], **config: object) -> tuple[str, object, list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8")
        cfg = AnalysisConfig(dataset_type="application/jsonlines", methods=Methods(), **config)
        fast, reference = read(path, cfg, one_by_one=False), read(path, cfg, one_by_one=True)
    assert fast[0] == reference[0] and fast[2] == reference[2]
    if fast[0] != "table":
        assert fast[1] == reference[1]
    else:
        (headers, roles, n_rows, columns), (ref_headers, ref_roles, ref_n_rows, ref_columns) = fast[1], reference[1]
        assert (headers, roles, n_rows) == (ref_headers, ref_roles, ref_n_rows)
        for name in headers:
            pd.testing.assert_series_equal(columns[name], ref_columns[name])
    return fast


def good(i: int, **more: object) -> str:
    return json.dumps({"features": [i, i * 0.5, f"s{i % 3}"], "label": i % 2, "p": {"q": i % 3}, **more})


def test_reader_chunks_give_the_line_by_line_table():
    lines = [good(i) for i in range(10)]
    lines[4] = "   "  # blank lines (skipped), in the middle of a chunk and a whole chunk of them
    lines[6:9] = ["", "\t", ""]
    lines[2] = " " + lines[2] + " \r"  # spaces around a record, a CRLF line
    lines[5] = json.dumps({"features": [5, 2.5, "s2"], "p": {"q": 2}})  # no label, after a blank line
    lines[9] = json.dumps({"features": [9, None, None], "p": {"q": None}})  # no label, no predicted label
    kind, (headers, roles, n_rows, columns), warnings = assert_same_reading(
        lines, features="features", label="label", predicted_label="p.q")
    assert kind == "table" and n_rows == 6
    assert headers == ["column_0", "column_1", "column_2", "label", "predicted_label"]
    assert roles == {"label": "label", "predicted_label": "predicted_label"}
    assert columns["column_0"].tolist() == [0, 1, 2, 3, 5, 9]
    assert columns["column_1"].tolist()[:5] == [0.0, 0.5, 1.0, 1.5, 2.5] and pd.isna(columns["column_1"].iloc[5])
    assert columns["label"].tolist()[:4] == [0, 1, 0, 1] and columns["label"].iloc[4:].isna().all()
    assert columns["predicted_label"].tolist()[:5] == [0, 1, 2, 0, 2]
    assert len(warnings) == 2
    assert warnings[0].startswith("2 record(s)") and "data.jsonl line 6, " in warnings[0]
    assert "data.jsonl line 10" in warnings[0] and "data.jsonl line 10" in warnings[1]


@pytest.mark.parametrize(("bad", "found"), [
    ("{not json}", "line 5 is not valid JSON"),
    ('{"features": [1, 2]} {"x": 1}', "line 5 is not valid JSON (Extra data"),
    ('{"features": [1, 2, 3, 4], "label": 1}', "line 5 has 4 feature values but"),
    ('{"features": "abc", "label": 1}', 'gives a str ("abc") on'),
    ('{"features": [1, 2, 3], "label": [1]}', "gives a list on"),
    ('{"features": [1, 2, 3], "label": {"a": 1}}', "gives a dict on"),
    ('{"features": [1, [2], 3], "label": 1}', "Feature 'column_1' is a list on"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"features": [' + "9" * 5000 + ", 1, 2]}", "a number has too many digits"),
    ("\ufeff" + good(4), "line 5 is not valid JSON (Unexpected UTF-8 BOM"),
])
def test_reader_chunks_raise_the_line_by_line_error(bad, found):
    lines = ["", *(good(i) for i in range(1, 8))]  # the first record on line 2, after a blank line
    lines[4] = bad  # the first line of the second chunk (3 lines each): good lines after it
    kind, message, _ = assert_same_reading(lines, features="features", label="label")
    assert kind == "error" and found in message and "line 5" in message
    lines[4], lines[5] = good(4), bad  # its middle line: good lines before it too
    kind, message, _ = assert_same_reading(lines, features="features", label="label")
    assert kind == "error" and found.replace("line 5", "line 6") in message and "line 6" in message
    if "feature values but" in found:
        assert message.endswith("data.jsonl line 2 has 3. Every record needs the same features.")


def test_reader_chunks_keep_the_first_of_two_errors_in_a_chunk():
    """The first bad line's error, whatever the kind of the later one (features checked before roles)."""
    lines = [good(0), good(1), good(2), good(3, label=[1]), '{"features": 1}', good(5)]
    kind, message, _ = assert_same_reading(lines, features="features", label="label")
    assert kind == "error" and message.startswith("Headers must contain label.") and "line 4" in message
    lines[3], lines[4] = lines[4], lines[3]
    kind, message, _ = assert_same_reading(lines, features="features", label="label")
    assert kind == "error" and message.startswith("Data must contain features.") and "line 4" in message


def test_reader_chunks_compare_widths_with_the_first_record_of_the_table():
    """A whole chunk of 4 values after one of 3: the first record of the table, not of the chunk, counts."""
    lines = [good(0), good(1), good(2), *(json.dumps({"features": [1, 2, 3, 4]}) for _ in range(3))]
    kind, message, _ = assert_same_reading(lines, features="features")
    assert kind == "error" and message.startswith("Data must contain features.")
    assert "data.jsonl line 4 has 4 feature values but" in message and "data.jsonl line 1 has 3" in message


def test_reader_jmespath_failure_comes_where_the_line_by_line_reading_raises_it():
    """A JMESPath function failing on a record (jmespath's own error) is raised after the error of an
    earlier line of the same chunk, and as jmespath raises it when it comes first."""
    lines = [good(0), '{"features": "abc", "label": 1}', '{"features": [1, 2, 3], "label": "x"}']
    kind, message, _ = assert_same_reading(lines, features="features", label="abs(label)")
    assert kind == "error" and message.startswith("Data must contain features.") and "line 2" in message
    kind, message, _ = assert_same_reading([good(0), lines[2]], features="features", label="abs(label)")
    assert kind == "jmespath" and "abs()" in message


jsonl_lines = st.lists(st.one_of(
    st.builds(lambda i, more: good(i, **more), st.integers(0, 9),
              st.dictionaries(st.sampled_from(["label", "features", "p"]), values, max_size=1)),
    values.map(json.dumps), st.sampled_from(["", " ", "\r", "{", "nan", "[1, 2]", '"x"', "\ufeff{}"]),
    st.builds(lambda i: " " + good(i) + "\r", st.integers(0, 9))), max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=jsonl_lines, features=st.sampled_from(["features", "p", "features[0:2]", "p.q"]),
       label=st.sampled_from([None, "label", "p.q", "features[0]", '"label"']),
       predicted=st.sampled_from([None, "p.q", "label"]))
@example(lines=[good(0), good(1)], features="features", label="label", predicted="p.q")
def test_reader_chunks_agree_with_line_by_line_on_generated_files(lines, features, label, predicted):
    assert_same_reading(lines, features=features, label=label, predicted_label=predicted)


# -- JSON documents: the rows of a document are added at once, their origins kept as a run ------------------


def test_json_documents_name_their_records(tmp_path, caplog):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"features": [[1, 2], [3, 4]], "label": [0, None]}))
    (folder / "b.json").write_text(json.dumps({"features": [[5, 6], [7, 8], [9, 0]], "label": [1, 0, None]}))
    cfg = AnalysisConfig(dataset_type="application/json", methods=Methods(), features="features", label="label")
    files = sorted(folder.iterdir())
    with caplog.at_level(logging.WARNING, logger=json_format.__name__):
        table = JsonTable(files, str(folder), cfg, json_lines=False)
    assert table.read([], values=["column_0"]).values["column_0"].tolist() == [1, 3, 5, 7, 9]
    assert f"on {files[0]} record 1, {files[1]} record 2." in caplog.text
    (folder / "b.json").write_text(json.dumps({"features": [[5, 6], [7, 8, 9]], "label": [1, 0]}))
    with pytest.raises(DataError) as error:
        JsonTable(files, str(folder), cfg, json_lines=False)
    assert str(error.value) == (f"Data must contain features. {files[1]} record 1 has 3 feature values but "
                                f"{files[0]} record 0 has 2. Every record needs the same features.")
