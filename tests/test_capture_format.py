"""The capture record and key (spec model-monitor.md 2.2, 2.3) against SageMaker's real captured lines."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from analyzer.errors import DataError, UserError
from analyzer.monitor.capture import (
    capture_key,
    capture_line,
    capture_record,
    inference_hour,
    parse_inference_time,
    payload_bytes,
    read_capture_lines,
)

# NB-FA cell 47 (spec 2.3), verbatim: JSON Lines model captured with json_content_types=["application/jsonlines"].
NB_FA_LINES = [
    r'{"captureData":{"endpointInput":{"observedContentType":"application/jsonlines","mode":"INPUT","data":"{\"features\":[28,2,133937,9,13,2,0,0,4,1,15024,0,55,37]}","encoding":"JSON"},"endpointOutput":{"observedContentType":"application/jsonlines","mode":"OUTPUT","data":"{\"predicted_label\":1,\"score\":0.989977359771728}\n","encoding":"JSON"}},"eventMetadata":{"eventId":"40394cfe-37c3-4abb-b22c-dd7accbe9608","inferenceTime":"2023-01-19T05:31:46Z"},"eventVersion":"0"}',  # noqa: E501
    r'{"captureData":{"endpointInput":{"observedContentType":"application/jsonlines","mode":"INPUT","data":"{\"features\":[28,2,133937,9,13,2,0,0,4,1,15024,0,55,37]}\n{\"features\":[43,2,72338,12,14,2,12,0,1,1,0,0,40,37]}","encoding":"JSON"},"endpointOutput":{"observedContentType":"application/jsonlines","mode":"OUTPUT","data":"{\"predicted_label\":1,\"score\":0.989977359771728}\n{\"predicted_label\":1,\"score\":0.504138827323913}\n","encoding":"JSON"}},"eventMetadata":{"eventId":"32aaea1b-1a60-4870-b81d-40271f950c4a","inferenceTime":"2023-01-19T05:31:46Z"},"eventVersion":"0"}',  # noqa: E501
]
# The developer guide's CSV capture (spec 2.3), its display line breaks removed: "text/csv" listed, the
# response observed as "text/csv; charset=utf-8" and still stored as CSV text.
DG_CSV_LINE = (
    r'{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT",'
    r'"data":"69,0,153.7,109,194.0,105,256.1,114,14.1,6,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,1,0,1,0\n",'  # noqa: E501
    r'"encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv; charset=utf-8","mode":"OUTPUT","data":"0.0254181120544672","encoding":"CSV"}},'  # noqa: E501
    r'"eventMetadata":{"eventId":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee","inferenceTime":"2022-02-14T17:25:49Z"},"eventVersion":"0"}'  # noqa: E501
)
# The bias-monitor lab's first captured line (seed 002), verbatim.
LAB_LINE = r'{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"105,0,193.7,108,183.2,124,293.7,72,10.8,5,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,1,0,1,0","encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv; charset=utf-8","mode":"OUTPUT","data":"0\n","encoding":"CSV"}},"eventMetadata":{"eventId":"a51e65b5-ee06-4084-8d43-132030dd68f0","inferenceTime":"2021-12-08T06:34:31Z"},"eventVersion":"0"}'  # noqa: E501

SDK_CSV = ["text/csv"]
SDK_JSON = ["application/json"]


def rebuild(line: str, csv_types: list[str], json_types: list[str]) -> str:
    """The line capture_record + capture_line make from the parts the real line holds."""
    real = json.loads(line)
    parts = real["captureData"]
    metadata = real["eventMetadata"]
    return capture_line(capture_record(
        event_id=metadata["eventId"], inference_id=metadata.get("inferenceId"),
        inference_time=parse_inference_time(metadata["inferenceTime"]),
        input_body=parts["endpointInput"]["data"].encode(),
        input_content_type=parts["endpointInput"]["observedContentType"],
        output_body=parts["endpointOutput"]["data"].encode(),
        output_content_type=parts["endpointOutput"]["observedContentType"],
        csv_types=csv_types, json_types=json_types))


@pytest.mark.parametrize("line", NB_FA_LINES)
def test_json_lines_capture_is_byte_identical_to_sagemakers(line):
    assert rebuild(line, SDK_CSV, ["application/jsonlines"]) == line + "\n"


@pytest.mark.parametrize("line", [DG_CSV_LINE, LAB_LINE])
def test_csv_capture_is_byte_identical_to_sagemakers_with_charset_parameter(line):
    assert rebuild(line, SDK_CSV, SDK_JSON) == line + "\n"


def test_key_order_with_inference_id_and_custom_attributes():
    record = capture_record(event_id="e-1", inference_time=datetime(2023, 1, 19, 6, 4, 56, 999_999, tzinfo=UTC),
                            inference_id="95", input_body=b"1,2", input_content_type="text/csv",
                            output_body=b"0.9", output_content_type="text/csv", csv_types=SDK_CSV,
                            json_types=SDK_JSON, custom_attributes="accept_eula=true")
    assert capture_line(record) == (
        '{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"1,2",'
        '"encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv","mode":"OUTPUT","data":"0.9",'
        '"encoding":"CSV"}},"eventMetadata":{"eventId":"e-1","inferenceId":"95","inferenceTime":'
        '"2023-01-19T06:04:56Z","customAttributes":["accept_eula=true"]},"eventVersion":"0"}\n')


def test_only_the_captured_side_appears():
    record = capture_record(event_id="e", inference_time=datetime(2023, 1, 1, tzinfo=UTC), inference_id=None,
                            input_body=None, input_content_type="text/csv", output_body=b"1",
                            output_content_type="text/csv", csv_types=SDK_CSV, json_types=SDK_JSON)
    assert list(record["captureData"]) == ["endpointOutput"]
    assert list(record["eventMetadata"]) == ["eventId", "inferenceTime"]


def test_unlisted_types_are_base64_and_round_trip():
    png = bytes(range(256)) + b"\x89PNG\r\n"
    record = capture_record(event_id="e", inference_time=datetime(2023, 1, 1, tzinfo=UTC), inference_id=None,
                            input_body=png, input_content_type="image/png", output_body=b'{"a":1}',
                            output_content_type="application/json", csv_types=SDK_CSV, json_types=[])
    inputs, outputs = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
    assert inputs == {"observedContentType": "image/png", "mode": "INPUT",
                      "data": base64.b64encode(png).decode(), "encoding": "BASE64"}
    assert outputs["encoding"] == "BASE64" and outputs["data"] == "eyJhIjoxfQ=="
    [back] = read_capture_lines(capture_line(record))
    assert payload_bytes(back["captureData"]["endpointInput"]) == png
    assert payload_bytes(back["captureData"]["endpointOutput"]) == b'{"a":1}'


def test_listed_type_that_is_not_utf8_falls_back_to_base64():
    record = capture_record(event_id="e", inference_time=datetime(2023, 1, 1, tzinfo=UTC), inference_id=None,
                            input_body=b"1,\xff", input_content_type="text/csv", output_body=None,
                            output_content_type=None, csv_types=SDK_CSV, json_types=SDK_JSON)
    assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert payload_bytes(record["captureData"]["endpointInput"]) == b"1,\xff"


def test_media_types_compare_without_parameters_case_or_json_lines_aliases():
    def encoding(observed, csv_types=(), json_types=()):
        record = capture_record(event_id="e", inference_time=datetime(2023, 1, 1, tzinfo=UTC), inference_id=None,
                                input_body=b"x", input_content_type=observed, output_body=None,
                                output_content_type=None, csv_types=csv_types, json_types=json_types)
        return record["captureData"]["endpointInput"]["encoding"]

    assert encoding("Text/CSV; charset=UTF-8", csv_types=["text/csv"]) == "CSV"
    assert encoding("text/csv", csv_types=["text/csv; header=present"]) == "CSV"
    assert encoding("application/x-ndjson", json_types=["application/jsonlines"]) == "JSON"
    assert encoding("application/json", csv_types=["text/csv"]) == "BASE64"
    assert encoding(None, csv_types=["text/csv"], json_types=["application/json"]) == "BASE64"


def test_inference_time_is_utc_to_the_second():
    eastern = timezone(timedelta(hours=-5))
    for when in (datetime(2023, 1, 19, 0, 31, 46, 585_000, tzinfo=eastern), datetime(2023, 1, 19, 5, 31, 46, 1)):
        record = capture_record(event_id="e", inference_time=when, inference_id=None, input_body=b"",
                                input_content_type="text/csv", output_body=None, output_content_type=None,
                                csv_types=SDK_CSV, json_types=[])
        assert record["eventMetadata"]["inferenceTime"] == "2023-01-19T05:31:46Z"
        assert inference_hour(when) == datetime(2023, 1, 19, 5, tzinfo=UTC)


def test_key_matches_the_real_object_key():
    real = ("DEMO-ll-adult-pred-model-monitor-1674106124-9611/AllTraffic/2023/01/19/05/"
            "31-46-585-9ee7358c-33e7-467d-9133-624e448e6552.jsonl")
    when = datetime(2023, 1, 19, 5, 31, 46, 585_432, tzinfo=UTC)
    assert capture_key("DEMO-ll-adult-pred-model-monitor-1674106124-9611", "AllTraffic", when,
                       "9ee7358c-33e7-467d-9133-624e448e6552") == real
    # the hour folder is the UTC hour even for a local-time datetime
    local = when.astimezone(timezone(timedelta(hours=9, minutes=30)))
    assert capture_key("e", "v", local, "u").startswith("e/v/2023/01/19/05/31-46-585-u")


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", "-a", "a-", "a_b", "a.b", "a" * 64, "é", "a\nb", " a"])
def test_names_that_could_leave_the_destination_are_refused(name):
    when = datetime(2023, 1, 1, tzinfo=UTC)
    with pytest.raises(UserError, match="endpoint name"):
        capture_key(name, "AllTraffic", when, "u")
    with pytest.raises(UserError, match="variant name"):
        capture_key("ep", name, when, "u")


def test_longest_valid_names_are_accepted():
    name = "a" + "-" * 5 + "b" * 62
    assert capture_key(name, "A1", datetime(2023, 1, 1, tzinfo=UTC), "u").startswith(f"{name}/A1/")
    with pytest.raises(ValueError, match="file id"):
        capture_key("ep", "v", datetime(2023, 1, 1, tzinfo=UTC), "../x")


def test_reader_parses_real_lines_and_skips_blank_ones():
    text = "\n".join([*NB_FA_LINES, "", DG_CSV_LINE, LAB_LINE]) + "\n"
    records = read_capture_lines(text)
    assert [r["eventMetadata"]["eventId"] for r in records] == [
        "40394cfe-37c3-4abb-b22c-dd7accbe9608", "32aaea1b-1a60-4870-b81d-40271f950c4a",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "a51e65b5-ee06-4084-8d43-132030dd68f0"]
    assert payload_bytes(records[1]["captureData"]["endpointOutput"]) == (
        b'{"predicted_label":1,"score":0.989977359771728}\n{"predicted_label":1,"score":0.504138827323913}\n')


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "line 2: not JSON"),
    ("[1]", "line 2: not a JSON object"),
    ('{"eventMetadata":{}}', "line 2: no captureData object"),
    ('{"captureData":{"endpointInput":{"mode":"OUTPUT","encoding":"CSV","data":"","observedContentType":""}},'
     '"eventMetadata":{"eventId":"e","inferenceTime":"t"}}', "captureData.endpointInput.mode"),
    ('{"captureData":{"endpointOutput":{"mode":"OUTPUT","encoding":"GZIP","data":"","observedContentType":""}},'
     '"eventMetadata":{"eventId":"e","inferenceTime":"t"}}', "captureData.endpointOutput.encoding"),
    ('{"captureData":{},"eventMetadata":{"inferenceTime":"t"}}', "eventMetadata.eventId"),
])
def test_reader_names_the_line_and_field_of_a_bad_record(line, problem):
    with pytest.raises(DataError, match=problem) as raised:
        read_capture_lines(LAB_LINE + "\n" + line, source="s3://b/k.jsonl")
    assert "s3://b/k.jsonl" in str(raised.value)


def test_reader_keeps_line_separators_inside_strings():
    record = capture_record(event_id="e", inference_time=datetime(2023, 1, 1, tzinfo=UTC), inference_id="i\u2028d",
                            input_body="a\u2028b\u0085c".encode(), input_content_type="application/json",
                            output_body=None, output_content_type=None, csv_types=[], json_types=SDK_JSON)
    [back] = read_capture_lines(capture_line(record) * 1)
    assert back == record


CONTENT_TYPES = ["text/csv", "text/csv; charset=utf-8", "application/json", "application/jsonlines",
                 "image/png", "application/octet-stream", "application/x-npy", None]


@settings(max_examples=300, deadline=None)
@given(inputs=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)),
       outputs=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=100).map(str.encode)),
       input_type=st.sampled_from(CONTENT_TYPES), output_type=st.sampled_from(CONTENT_TYPES),
       inference_id=st.one_of(st.none(), st.text(min_size=1, max_size=64)),
       seconds=st.integers(0, 4_000_000_000))
@example(inputs=b"\xed\xa0\x80", outputs=None, input_type="text/csv", output_type=None, inference_id=None, seconds=0)
def test_every_body_round_trips_through_a_line(inputs, outputs, input_type, output_type, inference_id, seconds):
    when = datetime.fromtimestamp(seconds, UTC)
    record = capture_record(event_id="e", inference_time=when, inference_id=inference_id, input_body=inputs,
                            input_content_type=input_type, output_body=outputs, output_content_type=output_type,
                            csv_types=SDK_CSV, json_types=["application/json", "application/jsonlines"])
    line = capture_line(record)
    assert line.count("\n") == 1 and line.endswith("\n")
    [back] = read_capture_lines(line)
    assert back == record
    assert payload_bytes(back["captureData"]["endpointInput"]) == inputs
    if outputs is not None:
        assert payload_bytes(back["captureData"]["endpointOutput"]) == outputs
    assert parse_inference_time(back["eventMetadata"]["inferenceTime"]) == when
