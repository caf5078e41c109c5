"""The window merge: captured traffic (written by the real capture writer's functions) + ground truth ->
the Dataset the pipeline reads. The oracle is ``load_dataset`` on the same rows written as a dataset file:
role columns, features and every bias metric must come out identical."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.bias import bias_analysis
from analyzer.config import parse_config
from analyzer.data import Column, load_dataset
from analyzer.errors import UserError
from analyzer.monitor.attributes import EndpointAttributes
from analyzer.monitor.capture import capture_line, capture_record
from analyzer.monitor.merge import MAX_EXAMPLES, merge_window
from analyzer.monitor.window import Window

START = datetime(2026, 3, 1, 10, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=1))
FEATURES = ["Account Length", "Day Calls", "Day Mins", "State"]
CSV_TYPES = ["text/csv"]
JSON_TYPES = ["application/json", "application/jsonlines"]


def churn_config(**changes) -> dict:
    """The walkthrough's bias config (seed 002): facet Account Length > 100, group Day Calls, label 0."""
    doc = {
        "dataset_type": "text/csv",
        "headers": ["Churn", *FEATURES, "predicted_label"],
        "label": "Churn",
        "label_values_or_threshold": [0],
        "facet": [{"name_or_index": "Account Length", "value_or_threshold": [100]}],
        "group_variable": "Day Calls",
        "probability_threshold": 0.8,
        "predicted_label": "predicted_label",  # the captured answers (analyzer.monitor.config)
        "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
    }
    doc.update(changes)
    return doc


def line(event_id: str, when: datetime, body: bytes | None, output: bytes | None = b"0.5\n", *,
         inference_id: str | None = None, content_type: str = "text/csv", accept: str = "text/csv",
         csv_types=CSV_TYPES, json_types=JSON_TYPES) -> str:
    return capture_line(capture_record(
        event_id=event_id, inference_time=when, inference_id=inference_id, input_body=body,
        input_content_type=content_type, output_body=output, output_content_type=accept,
        csv_types=csv_types, json_types=json_types))


def truth(event_id: str, data: str, encoding: str = "CSV") -> str:
    return json.dumps({"groundTruthData": {"data": data, "encoding": encoding},
                       "eventMetadata": {"eventId": event_id}, "eventVersion": "0"}) + "\n"


def files(lines: list[str], per_file: int = 7, prefix: str = "capture") -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{i // per_file:03d}.jsonl", "".join(lines[i:i + per_file]).encode())
            for i in range(0, len(lines), per_file)]


def traffic(n_requests: int, seed: int = 0, max_records: int = 3):
    """Churn-like requests of 1..max_records CSV records: (capture lines, truth lines, rows as dicts)."""
    rng = np.random.default_rng(seed)
    lines, truths, rows = [], [], []
    for r in range(n_requests):
        k = int(rng.integers(1, max_records + 1))
        records = [[str(int(rng.integers(1, 250))), str(int(rng.integers(60, 140))),
                    f"{rng.uniform(0, 350):.1f}", str(rng.choice(["KS", "OH", "NJ"]))] for _ in range(k)]
        scores = [float(rng.random()) for _ in range(k)]
        label = str(int(rng.random() < 0.3))
        when = START + timedelta(seconds=int(rng.integers(0, 3600)))
        event = f"event-{r}"
        inference = f"inf-{r}" if r % 2 else None  # half the callers send an InferenceId
        body = "".join(",".join(rec) + "\n" for rec in records).encode()
        output = "".join(f"{s}\n" for s in scores).encode()
        lines.append(line(event, when, body, output, inference_id=inference))
        truths.append(truth(inference or event, label))
        rows += [{"Churn": label, **dict(zip(FEATURES, rec, strict=True)), "score": s}
                 for rec, s in zip(records, scores, strict=True)]
    return lines, truths, rows


def same_column(ours: Column | None, theirs: Column | None) -> None:
    assert ours is not None and theirs is not None
    assert ours.name == theirs.name
    assert ours.dtype == theirs.dtype
    pd.testing.assert_series_equal(ours.uniques, theirs.uniques)
    np.testing.assert_array_equal(ours.codes, theirs.codes)


def oracle_csv(tmp_path: Path, rows: list[dict], threshold: float) -> Path:
    path = tmp_path / "window.csv"
    text = "".join(",".join([r["Churn"], *(r[f] for f in FEATURES), str(int(r["score"] > threshold))]) + "\n"
                   for r in rows)
    path.write_text(text)
    return path


def test_csv_window_equals_load_dataset_on_the_same_rows(tmp_path):
    lines, truths, rows = traffic(400)
    config = parse_config(churn_config())
    merged = merge_window(config, files(lines), WINDOW, EndpointAttributes(), files(truths, 50, "truth"),
                          need_features=True)
    oracle_config = config
    oracle = load_dataset(oracle_config, oracle_csv(tmp_path, rows, 0.8), need_features=True)
    dataset = merged.dataset
    assert dataset.n_rows == len(rows) == oracle.n_rows
    same_column(dataset.label, oracle.label)
    same_column(dataset.predicted_label, oracle.predicted_label)
    same_column(dataset.group, oracle.group)
    assert list(dataset.facets) == list(oracle.facets) == ["Account Length"]
    same_column(dataset.facets["Account Length"], oracle.facets["Account Length"])
    assert dataset.feature_names == oracle.feature_names == FEATURES
    pd.testing.assert_frame_equal(dataset.features, oracle.features)
    for stage in ("pre_training", "post_training"):
        assert bias_analysis(dataset, config, stage) == bias_analysis(oracle, oracle_config, stage)
    counts = merged.counts
    assert counts["merged_records"] == counts["records_in_window"] == len(rows)
    assert counts["invocations_in_window"] == counts["captured_records"] == counts["captured_lines"] == 400
    assert counts["records_without_ground_truth"] == counts["ground_truth_without_records"] == 0
    assert counts["malformed_lines"] == 0 and counts["capture_files"] == len(files(lines))


def test_small_chunks_give_the_same_dataset(tmp_path):
    lines, truths, rows = traffic(200, seed=3)
    config = parse_config(churn_config())
    whole = merge_window(config, files(lines), WINDOW, EndpointAttributes(), files(truths), need_features=True)
    pieces = merge_window(config, files(lines), WINDOW, EndpointAttributes(), files(truths), need_features=True,
                          chunk_bytes=1000)
    for name in ("label", "predicted_label", "group"):
        same_column(getattr(pieces.dataset, name), getattr(whole.dataset, name))
    pd.testing.assert_frame_equal(pieces.dataset.features, whole.dataset.features)
    assert pieces.counts == {**whole.counts, "seconds": pieces.counts["seconds"]}


def test_json_lines_window_equals_load_dataset_on_json_lines(tmp_path):
    """NB-BIAS's shape: {"features": [...]} requests, {"predicted_label", "score"} answers, JSON ground truth."""
    rng = np.random.default_rng(1)
    lines, truths, oracle_lines = [], [], []
    for r in range(150):
        k = int(rng.integers(1, 3))
        feats = [[int(rng.integers(18, 80)), int(rng.integers(0, 2)), round(float(rng.normal()), 3)] for _ in range(k)]
        answers = [{"predicted_label": int(rng.integers(0, 2)), "score": float(rng.random())} for _ in range(k)]
        label = int(rng.integers(0, 2))
        body = "".join(json.dumps({"features": f}) + "\n" for f in feats).encode()
        output = "".join(json.dumps(a) + "\n" for a in answers).encode()
        when = START + timedelta(minutes=int(rng.integers(0, 60)))
        lines.append(line(f"e{r}", when, body, output, inference_id=str(r), content_type="application/jsonlines",
                          accept="application/jsonlines"))
        truths.append(truth(str(r), json.dumps({"label": label}), "JSON"))
        oracle_lines += [json.dumps({"features": f, "label": label, "predicted_label": a["predicted_label"]}) + "\n"
                         for f, a in zip(feats, answers, strict=True)]
    doc = {"dataset_type": "application/jsonlines", "headers": ["age", "sex", "x", "Target", "predicted_label"],
           "label": "label", "features": "features", "predicted_label": "predicted_label",
           "label_values_or_threshold": [1], "facet": [{"name_or_index": "sex", "value_or_threshold": [0]}],
           "group_variable": "age",
           "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}}}
    config = parse_config(doc)
    merged = merge_window(config, files(lines), WINDOW,
                          EndpointAttributes(features_attribute="features", inference_attribute="predicted_label",
                                             probability_attribute="score"),
                          files(truths, 40, "truth"), need_features=True)
    path = tmp_path / "window.jsonl"
    path.write_text("".join(oracle_lines))
    oracle_config = config
    oracle = load_dataset(oracle_config, path, need_features=True)
    same_column(merged.dataset.label, oracle.label)
    assert merged.dataset.label.name == "Target"
    same_column(merged.dataset.facets["sex"], oracle.facets["sex"])
    same_column(merged.dataset.group, oracle.group)
    pd.testing.assert_series_equal(merged.dataset.predicted_label.to_series(),
                                   oracle.predicted_label.to_series().rename("predicted_label"))
    pd.testing.assert_frame_equal(merged.dataset.features, oracle.features)
    for stage in ("pre_training", "post_training"):
        assert bias_analysis(merged.dataset, config, stage) == bias_analysis(oracle, oracle_config, stage)


def test_join_key_is_inference_id_else_event_id_and_late_ground_truth_counts():
    when = START + timedelta(minutes=5)
    lines = [line("e1", when, b"10,100,1.0,KS", b"0.9", inference_id="i1"),  # joined on i1
             line("e2", when, b"200,90,2.0,OH", b"0.1"),  # joined on e2
             line("e3", when, b"30,80,3.0,NJ", b"0.95", inference_id="i3"),  # truth only under e3: no join
             line("e4", when, b"40,70,4.0,KS", b"0.2")]  # no ground truth at all
    truths = [truth("i1", "1"), truth("e1", "0"), truth("e2", "0"), truth("e3", "1"),
              truth("old-hour", "1"), truth("i1", "0")]  # i1 corrected later: the last label wins
    merged = merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                          files(truths, 2, "truth"))
    dataset = merged.dataset
    assert dataset.n_rows == 2
    assert dataset.label.to_series().tolist() == [0, 0]
    assert dataset.predicted_label.to_series().tolist() == [1, 0]  # 0.9 > 0.8, 0.1 <= 0.8
    assert dataset.facets["Account Length"].to_series().tolist() == [10, 200]
    counts = merged.counts
    assert counts["records_without_ground_truth"] == 2
    assert counts["ground_truth_records"] == 5 and counts["duplicate_ground_truth"] == 1
    assert counts["ground_truth_without_records"] == 3  # e1, e3, old-hour


def test_records_outside_the_window_are_left_out():
    lines = [line("before", START - timedelta(seconds=1), b"1,1,1,KS", b"0.9"),
             line("first", START, b"2,2,2,KS", b"0.9"),
             line("last", WINDOW.end - timedelta(seconds=1), b"3,3,3,KS", b"0.9"),
             line("end", WINDOW.end, b"4,4,4,KS", b"0.9")]
    truths = [truth(e, "1") for e in ("before", "first", "last", "end")]
    merged = merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(), files(truths))
    assert merged.dataset.facets["Account Length"].to_series().tolist() == [2, 3]
    assert merged.counts["invocations_in_window"] == 2 and merged.counts["captured_records"] == 4
    assert merged.counts["ground_truth_without_records"] == 2


def test_base64_payloads_are_decoded():
    """A content type not listed in CaptureContentTypeHeader is captured base64 (and so is its answer)."""
    when = START + timedelta(minutes=1)
    lines = [line("e1", when, b"120,99,1.5,KS\n5,98,2.5,OH\n", b"0.9\n0.3\n", csv_types=[], json_types=[]),
             line("e2", when, b"7,97,3.5,NJ", b"0.85")]
    assert json.loads(lines[0])["captureData"]["endpointInput"]["encoding"] == "BASE64"
    merged = merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                          files([truth("e1", "1"), truth("e2", "0")]))
    dataset = merged.dataset
    assert dataset.facets["Account Length"].to_series().tolist() == [120, 5, 7]
    assert dataset.label.to_series().tolist() == [1, 1, 0]  # both records of e1 take its label
    assert dataset.predicted_label.to_series().tolist() == [1, 0, 1]


def test_inference_attribute_reads_the_label_and_probability_attribute_the_score():
    when = START + timedelta(minutes=1)
    lines = [line("e1", when, b"120,99,1.5,KS", b"1,0.3"), line("e2", when, b"7,97,3.5,NJ", b"0,0.9")]
    truths = files([truth("e1", "1"), truth("e2", "0")])
    config = parse_config(churn_config())
    by_label = merge_window(config, files(lines), WINDOW, EndpointAttributes(inference_attribute="0"), truths)
    assert by_label.dataset.predicted_label.to_series().tolist() == [1, 0]
    by_score = merge_window(config, files(lines), WINDOW, EndpointAttributes(probability_attribute="1"), truths)
    assert by_score.dataset.predicted_label.to_series().tolist() == [0, 1]  # 0.3, 0.9 against 0.8
    lower = merge_window(config, files(lines), WINDOW,
                         EndpointAttributes(probability_attribute="1", probability_threshold_attribute=0.2), truths)
    assert lower.dataset.predicted_label.to_series().tolist() == [1, 1]


def test_explainability_window_has_features_only():
    lines, _, rows = traffic(30, seed=5)
    config = parse_config({"dataset_type": "text/csv", "headers": FEATURES,
                           "methods": {"shap": {"baseline": [[1, 1, 1.0, "KS"]], "num_samples": 10}},
                           "predictor": {"model_name": "m", "instance_type": "ml.m5.xlarge",
                                         "initial_instance_count": 1}})
    input_only = [json.dumps({**json.loads(raw), "captureData": {
        "endpointInput": json.loads(raw)["captureData"]["endpointInput"]}}) + "\n" for raw in lines]
    merged = merge_window(config, files(input_only), WINDOW, EndpointAttributes(), None)
    dataset = merged.dataset
    assert dataset.label is None and dataset.predicted_label is None and dataset.facets == {}
    assert dataset.feature_names == FEATURES and dataset.n_rows == len(rows)
    assert dataset.features["Account Length"].tolist() == [int(r["Account Length"]) for r in rows]
    assert dataset.features["State"].tolist() == [r["State"] for r in rows]
    assert "records_without_ground_truth" not in merged.counts


def test_malformed_lines_under_one_percent_are_skipped_and_listed():
    lines, truths, rows = traffic(1000, seed=7, max_records=1)
    bad = {3: "{not json\n", 500: json.dumps({"captureData": {}, "eventMetadata": {"eventId": "x"}}) + "\n"}
    for index, text in bad.items():
        lines[index] = text
    per_file = 100
    merged = merge_window(parse_config(churn_config()), files(lines, per_file), WINDOW, EndpointAttributes(),
                          files(truths))
    counts = merged.counts
    assert counts["malformed_lines"] == 2 and counts["captured_lines"] == 1000
    assert counts["malformed_examples"] == [
        "capture/000.jsonl line 4: not JSON (Expecting property name enclosed in double quotes)",
        "capture/005.jsonl line 1: eventMetadata.inferenceTime: expected a string"]
    assert merged.dataset.n_rows == 998


def test_malformed_lines_over_one_percent_fail_with_examples():
    lines, truths, _ = traffic(200, seed=8, max_records=1)
    for i in range(0, 200, 50):  # 4 of 200 = 2 %
        lines[i] = "garbage\n"
    with pytest.raises(UserError) as error:
        merge_window(parse_config(churn_config()), files(lines, 100), WINDOW, EndpointAttributes(), files(truths))
    message = str(error.value)
    assert "4 of the 200 capture lines read are malformed" in message
    assert "capture/000.jsonl line 1: not JSON" in message and "capture/001.jsonl line 51: not JSON" in message


def test_examples_are_capped():
    lines, truths, _ = traffic(2000, seed=9, max_records=1)
    for i in range(15):
        lines[i * 100] = "{}\n"
    merged = merge_window(parse_config(churn_config()), files(lines, 500), WINDOW, EndpointAttributes(),
                          files(truths))
    assert merged.counts["malformed_lines"] == 15
    assert len(merged.counts["malformed_examples"]) == MAX_EXAMPLES


def test_a_response_with_the_wrong_number_of_records_is_malformed():
    when = START + timedelta(minutes=1)
    lines = [line(f"e{i}", when, b"1,2,3,KS", b"0.9") for i in range(199)]
    lines.append(line("two", when, b"1,2,3,KS\n4,5,6,OH", b"0.9"))
    merged = merge_window(parse_config(churn_config()), files(lines, 200), WINDOW, EndpointAttributes(),
                          files([truth(f"e{i}", "1") for i in range(199)] + [truth("two", "0")]))
    assert merged.counts["malformed_examples"] == [
        "capture/000.jsonl line 200: captured output holds 1 record(s) for the request's 2"]
    assert merged.dataset.n_rows == 199


def test_feature_count_mismatch_names_the_file_line_and_both_counts():
    when = START + timedelta(minutes=1)
    lines = [line("e1", when, b"1,2,3,KS", b"0.9"), line("e2", when, b"1,2,3,KS\n1,2,3", b"0.9\n0.1")]
    with pytest.raises(UserError) as error:
        merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                     files([truth("e1", "1"), truth("e2", "1")]))
    assert str(error.value).startswith("capture/000.jsonl line 2 (record 2 of 2) has 3 feature value(s), but the "
                                       "window's records have 4")
    with pytest.raises(UserError) as error:  # the first record already disagrees with `headers`
        merge_window(parse_config(churn_config(headers=["Churn", "Account Length", "Day Calls", "predicted_label"])),
                     files(lines), WINDOW,
                     EndpointAttributes(), files([truth("e1", "1")]))
    assert str(error.value).startswith("capture/000.jsonl line 1 has 4 feature value(s), but `headers` in the "
                                       "analysis config names 2 feature(s) (4 headers minus the label 'Churn' minus the predicted label "
                                       "'predicted_label')")


def test_empty_window_and_window_without_ground_truth_fail():
    config = parse_config(churn_config())
    outside = [line("e1", START - timedelta(hours=2), b"1,2,3,KS", b"0.9")]
    with pytest.raises(UserError, match=r"No captured records in the window \[2026-03-01T10:00:00Z, "
                                        r"2026-03-01T11:00:00Z\) \(1 capture file\(s\), 1 line\(s\) read, 0 "):
        merge_window(config, files(outside), WINDOW, EndpointAttributes(), files([truth("e1", "1")]))
    with pytest.raises(UserError, match="No captured records in the window"):
        merge_window(config, [], WINDOW, EndpointAttributes(), [])
    inside = [line("e1", START, b"1,2,3,KS", b"0.9")]
    with pytest.raises(UserError, match=r"None of the 1 captured record\(s\) in the window .* has ground truth "
                                        r"\(1 ground truth record\(s\) from 1 file"):
        merge_window(config, files(inside), WINDOW, EndpointAttributes(), files([truth("other", "1")]))


def test_quoted_csv_fields_and_crlf_bodies():
    when = START + timedelta(minutes=1)
    lines = [line("e1", when, b'150,99,1.5,"New, York"\r\n7,97,3.5,NJ\r\n', b"0.9\r\n0.1\r\n")]
    merged = merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                          files([truth("e1", "1")]), need_features=True)
    assert merged.dataset.features["State"].tolist() == ["New, York", "NJ"]
    assert merged.dataset.predicted_label.to_series().tolist() == [1, 0]


def test_a_request_in_another_format_is_a_malformed_line():
    """One caller's request in another Content-Type is skipped and counted, not the end of the window; the
    window's format is its lines' most common, whichever comes first; more than 1 % of strays fails."""
    when = START + timedelta(minutes=1)
    stray = line("j0", when, b'{"features": [1, 2, 3, "KS"]}', b"0.9", content_type="application/jsonlines")
    lines = [stray, *(line(f"e{i}", when, b"1,2,3,KS", b"0.9") for i in range(299))]
    truths = [truth("j0", "1"), *(truth(f"e{i}", "1") for i in range(299))]
    config = parse_config(churn_config())
    merged = merge_window(config, files(lines, 300), WINDOW, EndpointAttributes(), files(truths, 300, "truth"))
    assert merged.counts["malformed_lines"] == 1
    assert merged.counts["malformed_examples"] == [
        "capture/000.jsonl line 1: captured requests in application/jsonlines; the window's requests are "
        "text/csv (as capture/000.jsonl line 2), and a monitor reads one format"]
    assert len(merged.dataset.label.to_series()) == 299
    with pytest.raises(UserError, match=r"captured requests in application/jsonlines; the window's requests are "
                                        r"text/csv \(as capture/000.jsonl line 1\)"):
        merge_window(config, files(lines[1:] + [stray] * 5, 400), WINDOW, EndpointAttributes(),
                     files(truths, 300, "truth"))


def test_malformed_ground_truth_is_counted():
    lines = [line(f"e{i}", START, b"1,2,3,KS", b"0.9") for i in range(300)]
    truths = [truth(f"e{i}", "1") for i in range(300)]
    truths[7] = truth("e7", "1,0")
    merged = merge_window(parse_config(churn_config()), files(lines, 300), WINDOW, EndpointAttributes(),
                          files(truths, 300, "truth"))
    assert merged.counts["malformed_ground_truth_lines"] == 1
    assert merged.counts["malformed_ground_truth_examples"] == [
        "truth/000.jsonl line 8: groundTruthData.data holds 2 CSV fields on a line; it must hold only the label (one "
        "per line for a request of several records)"]
    assert merged.counts["records_without_ground_truth"] == 1


def test_a_malformed_line_sends_its_chunk_through_python_with_the_same_result():
    """pyarrow refuses a chunk with a bad line; the line-by-line reading must give the same records."""
    lines, truths, rows = traffic(300, seed=11)
    config = parse_config(churn_config())
    clean = merge_window(config, files(lines), WINDOW, EndpointAttributes(), files(truths), need_features=True)
    dirty = merge_window(config, files([*lines[:150], '{"captureData": 5}\n', *lines[150:]]), WINDOW,
                         EndpointAttributes(), files(truths), need_features=True)
    assert dirty.counts["malformed_lines"] == 1 and dirty.counts["malformed_examples"] == [
        "capture/021.jsonl line 4: no captureData object"]
    for name in ("label", "predicted_label", "group"):
        same_column(getattr(dirty.dataset, name), getattr(clean.dataset, name))
    pd.testing.assert_frame_equal(dirty.dataset.features, clean.dataset.features)


def test_excluded_features_leave_the_model_features_only():
    lines, truths, _ = traffic(20, seed=12)
    config = parse_config(churn_config(excluded_columns=["State"]))
    merged = merge_window(config, files(lines), WINDOW, EndpointAttributes(exclude_features_attribute="2"),
                          files(truths), need_features=True)
    assert merged.dataset.feature_names == ["Account Length", "Day Calls"]
    assert list(merged.dataset.features.columns) == ["Account Length", "Day Calls"]


def test_application_json_requests_of_several_records():
    when = START + timedelta(minutes=2)
    body = json.dumps({"instances": [[150, 99, 1.5, "KS"], [7, 97, 3.5, "NJ"]]}).encode()
    output = json.dumps({"predictions": [{"score": 0.9}, {"score": 0.2}]}).encode()
    lines = [line("e1", when, body, output, content_type="application/json", accept="application/json"),
             line("e2", when, json.dumps({"instances": [5, 6, 7.5, "OH"]}).encode(),
                  json.dumps({"predictions": [{"score": 0.95}]}).encode(),
                  content_type="application/json", accept="application/json")]
    config = parse_config(churn_config(dataset_type="application/json", features="instances"))
    merged = merge_window(config, files(lines), WINDOW,
                          EndpointAttributes(features_attribute="instances", probability_attribute="predictions[*].score"),
                          files([truth("e1", "1"), truth("e2", "0")]), need_features=True)
    dataset = merged.dataset
    assert dataset.features["Account Length"].tolist() == [150, 7, 5]
    assert dataset.features["Day Mins"].tolist() == [1.5, 3.5, 7.5]
    assert dataset.predicted_label.to_series().tolist() == [1, 0, 1]
    assert dataset.label.to_series().tolist() == [1, 1, 0]


def test_blank_lines_in_payloads_are_not_records():
    when = START + timedelta(minutes=3)
    lines = [line("e1", when, b"150,99,1.5,KS\n\n7,97,3.5,NJ\n", b"0.9\n\n0.1\n"),
             line("e2", when, b"\n5,6,7.5,OH", b"0.95")]
    merged = merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                          files([truth("e1", "1"), truth("e2", "0")]), need_features=True)
    assert merged.dataset.features["Account Length"].tolist() == [150, 7, 5]
    assert merged.dataset.predicted_label.to_series().tolist() == [1, 0, 1]
    assert merged.counts["records_in_window"] == 3 and merged.counts["malformed_lines"] == 0


def test_line_numbers_count_blank_lines_of_the_file():
    when = START + timedelta(minutes=3)
    good = [line(f"e{i}", when, b"1,2,3,KS", b"0.9") for i in range(150)]
    bad = json.loads(line("bad", when, b"1,2,3,KS", b"0.9"))
    bad["captureData"]["endpointInput"].update(encoding="BASE64", data="!!not base64!!")
    text = "".join(good[:2]) + "\n   \n" + json.dumps(bad) + "\n" + "".join(good[2:])
    merged = merge_window(parse_config(churn_config()), [("hour/a.jsonl", text.encode())], WINDOW,
                          EndpointAttributes(), files([truth(f"e{i}", "1") for i in range(150)]))
    assert merged.counts["malformed_examples"] == [
        "hour/a.jsonl line 5: captured INPUT: data is not base64 (Only base64 data is allowed)"]
    assert merged.counts["captured_lines"] == 151 and merged.dataset.n_rows == 150


def test_a_failed_merge_stops_its_reader_thread():
    lines, truths, _ = traffic(50, seed=13)
    truths = ["not json\n"] * 10 + truths
    with pytest.raises(UserError, match="10 of the 60 ground truth lines read are malformed"):
        merge_window(parse_config(churn_config()), files(lines, 1), WINDOW, EndpointAttributes(), files(truths),
                     chunk_bytes=1)
    readers = [t for t in threading.enumerate() if t.name == "lucent-capture-reader"]
    for reader in readers:
        reader.join(timeout=10)
    assert not any(reader.is_alive() for reader in readers)


def test_an_error_while_reading_the_capture_files_reaches_the_caller():
    def broken():
        yield "capture/a.jsonl", line("e1", START, b"1,2,3,KS", b"0.9").encode()
        raise UserError("capture/b.jsonl: access denied")

    with pytest.raises(UserError, match="capture/b.jsonl: access denied"):
        merge_window(parse_config(churn_config()), broken(), WINDOW, EndpointAttributes(), [], chunk_bytes=1)


def test_record_counts_match_a_brute_force_count():
    """The per-text line count (numpy over the data buffer) against str.count, slices and empties included."""
    import random

    import pyarrow as pa

    from analyzer.monitor.records import record_counts

    rng = random.Random(1)
    for trial in range(300):
        texts = ["".join(rng.choice(["a", "\n", ",", "é", ""]) for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(0, 8))]
        array = pa.array(texts)
        if len(texts) > 2 and trial % 3 == 0:
            array, texts = array.slice(1), texts[1:]
        expected = [t.count("\n") + (1 if t and not t.endswith("\n") else 0) for t in texts]
        assert record_counts(array).tolist() == expected


@pytest.mark.parametrize(("text", "blank"), [
    ("", True), ("0.9\n", False), ("0.9", False), ("a\n\nb", True), ("\na", True), ("a\n  ", True),
    ("a\r\n", False), ("a\r\n\r\n", True), ("a\nb\n", False), ("  ", True)])
def test_blank_line_detection(text, blank):
    import pyarrow as pa

    from analyzer.monitor.window_builder import has_blank_line

    assert has_blank_line(pa.array(["x", text])) is blank


def test_a_bias_window_needs_the_captured_output():
    when = START + timedelta(minutes=4)
    lines = [line(f"e{i}", when, b"1,2,3,KS", b"0.9") for i in range(199)] + [line("in-only", when, b"1,2,3,KS", None)]
    merged = merge_window(parse_config(churn_config()), files(lines, 200), WINDOW, EndpointAttributes(),
                          files([truth(f"e{i}", "1") for i in range(199)] + [truth("in-only", "1")]))
    assert merged.counts["malformed_examples"] == [
        "capture/000.jsonl line 200: no captureData.endpointOutput (the endpoint's CaptureOptions must include "
        "Output for this monitor)"]
    assert merged.dataset.n_rows == 199


def test_records_without_ground_truth_leave_no_trace_in_the_columns(tmp_path):
    """The join waits for the last chunk, so every record is held until then: the records it drops must
    not reach the typing (a text value would make Account Length a text column) nor the order of first
    appearance (the dropped request's Day Calls comes first)."""
    lines, truths, rows = traffic(120, seed=21)
    when = START + timedelta(minutes=1)
    orphans = [line(f"orphan-{i}", when, f"n/a,{70 + i},1.0,KS".encode(), b"0.9") for i in range(3)]
    lines = orphans[:1] + lines[:60] + orphans[1:] + lines[60:]
    config = parse_config(churn_config())
    oracle = load_dataset(config, oracle_csv(tmp_path, rows, 0.8), need_features=True)
    for chunk_bytes in (1, 3000, 1 << 20):
        merged = merge_window(config, files(lines, 5), WINDOW, EndpointAttributes(), files(truths, 9, "truth"),
                              need_features=True, chunk_bytes=chunk_bytes)
        dataset = merged.dataset
        assert merged.counts["records_without_ground_truth"] == 3
        assert dataset.n_rows == oracle.n_rows == len(rows)
        same_column(dataset.facets["Account Length"], oracle.facets["Account Length"])
        same_column(dataset.group, oracle.group)
        same_column(dataset.label, oracle.label)
        same_column(dataset.predicted_label, oracle.predicted_label)
        pd.testing.assert_frame_equal(dataset.features, oracle.features)


def test_a_held_chunk_is_cut_to_what_dictionary_encode_gives_for_the_rows_kept():
    """``compacted`` against ``dictionary_encode`` of the kept values themselves (brute force)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from analyzer.monitor.held_columns import compacted

    rng = np.random.default_rng(5)
    for _ in range(200):
        values = pa.array([str(v) for v in rng.integers(0, int(rng.integers(1, 12)), int(rng.integers(1, 40)))])
        encoded = pc.dictionary_encode(values)
        keep = rng.random(len(values)) < rng.random()
        if not keep.any():
            continue
        ours = compacted(encoded.indices.to_numpy().astype(np.uint8)[keep], encoded.dictionary)
        expected = pc.dictionary_encode(values.filter(pa.array(keep)))
        assert ours.dictionary.equals(expected.dictionary)
        assert ours.indices.equals(expected.indices)


def test_ground_truth_problems_are_reported_before_the_captures_own():
    """The ground truth is read on its own thread while the capture is merged; its errors still come
    first, as when it was read before the capture."""
    when = START + timedelta(minutes=1)
    lines = [line("e1", when, b"1,2,3,KS", b"0.9"), line("e2", when, b"1,2,3", b"0.9")]  # 4 then 3 values
    bad_truth = [truth("e1", "1"), "not json\n"]
    with pytest.raises(UserError, match="1 of the 2 ground truth lines read are malformed"):
        merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(), files(bad_truth))
    with pytest.raises(UserError, match="has 3 feature value"):  # the capture's own, once the truth is fine
        merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                     files([truth("e1", "1")]))

    def unreadable():
        yield "truth/a.jsonl", truth("e1", "1").encode()
        raise UserError("truth/b.jsonl: access denied")

    with pytest.raises(UserError, match="truth/b.jsonl: access denied"):
        merge_window(parse_config(churn_config()), files(lines[:1]), WINDOW, EndpointAttributes(), unreadable(),
                     chunk_bytes=1)


def test_an_interrupted_merge_stops_the_ground_truth_reader():
    """A merge that ends without waiting for the ground truth (an interrupt) asks its reader to stop: it
    reads no chunk after that, and its thread ends."""
    released = threading.Event()
    served = []

    def slow_truth():
        for i in range(50):
            if i == 1:
                assert released.wait(timeout=30)
            served.append(i)
            yield f"truth/{i:03d}.jsonl", truth(f"e{i}", "1").encode()

    def interrupted():
        yield "capture/a.jsonl", line("e0", START, b"1,2,3,KS", b"0.9").encode()
        raise KeyboardInterrupt

    before = {t for t in threading.enumerate() if t.name == "lucent-ground-truth-reader"}
    with pytest.raises(KeyboardInterrupt):
        merge_window(parse_config(churn_config()), interrupted(), WINDOW, EndpointAttributes(), slow_truth(),
                     chunk_bytes=1)
    readers = [t for t in threading.enumerate() if t.name == "lucent-ground-truth-reader" and t not in before]
    released.set()
    for reader in readers:
        reader.join(timeout=30)
    assert readers and not any(reader.is_alive() for reader in readers)
    assert len(served) < 5  # stopped at the next chunk, not read to the end


def test_json_records_without_ground_truth_leave_no_trace():
    """The JSON paths hold rows and parsed answers until the join, too: a request without ground truth
    between two that have it changes nothing (its text value would make Account Length a text column)."""
    when = START + timedelta(minutes=2)
    json_types = {"content_type": "application/json", "accept": "application/json"}
    lines = [line("e1", when, json.dumps({"instances": [[150, 99, 1.5, "KS"], [7, 97, 3.5, "NJ"]]}).encode(),
                  json.dumps({"predictions": [{"score": 0.9}, {"score": 0.2}]}).encode(), **json_types),
             line("orphan", when, json.dumps({"instances": [["n/a", 98, 2.5, "OH"], [9, 96, 0.5, "KS"]]}).encode(),
                  json.dumps({"predictions": [{"score": 0.99}, {"score": 0.98}]}).encode(), **json_types),
             line("e2", when, json.dumps({"instances": [5, 6, 7.5, "OH"]}).encode(),
                  json.dumps({"predictions": [{"score": 0.95}]}).encode(), **json_types)]
    config = parse_config(churn_config(dataset_type="application/json", features="instances"))
    for chunk_bytes in (1, 1 << 20):
        merged = merge_window(config, files(lines, 1), WINDOW,
                              EndpointAttributes(features_attribute="instances",
                                                 probability_attribute="predictions[*].score"),
                              files([truth("e1", "1"), truth("e2", "0")]), need_features=True, chunk_bytes=chunk_bytes)
        dataset = merged.dataset
        assert merged.counts["records_without_ground_truth"] == 2
        assert dataset.features["Account Length"].tolist() == [150, 7, 5]
        assert dataset.facets["Account Length"].dtype == np.int64
        assert dataset.predicted_label.to_series().tolist() == [1, 0, 1]
        assert dataset.label.to_series().tolist() == [1, 1, 0]


def test_a_line_longer_than_any_invocation_is_a_malformed_line():
    """A capture line over MAX_LINE_BYTES (a hostile or corrupt file) is named and skipped, not parsed: a
    1 GB line once took pyarrow's block size past int32 (an internal error) and 4 GB of memory."""
    from analyzer.monitor.merge import MAX_LINE_BYTES

    when = START + timedelta(minutes=1)
    lines = [line(f"e{i}", when, b"1,2,3,KS", b"0.9") for i in range(200)]
    huge = line("big", when, b"1," * (MAX_LINE_BYTES // 2 + 10) + b"1", b"0.9")
    assert len(huge) > MAX_LINE_BYTES
    merged = merge_window(parse_config(churn_config()), files([*lines[:100], huge, *lines[100:]], 300), WINDOW,
                          EndpointAttributes(), files([truth(f"e{i}", "1") for i in range(200)], 300, "truth"))
    assert merged.counts["malformed_lines"] == 1
    assert merged.counts["malformed_examples"] == [
        f"capture/000.jsonl line 101: a line of {len(huge) - 1:,} bytes, over the {MAX_LINE_BYTES:,} that one "
        "invocation's capture can take"]
    assert len(merged.dataset.label.to_series()) == 200


def test_reading_many_files_shows_progress(monkeypatch, caplog):
    """A day of hourly capture from S3 is thousands of files and tens of seconds of reading: a line every
    LUCENT_PROGRESS_SECONDS says how far it got (every file's here: the interval is made tiny)."""
    import logging

    monkeypatch.setenv("LUCENT_PROGRESS_SECONDS", "1e-9")
    lines, truths, _ = traffic(60, seed=4)
    capture, truth = files(lines, 3), files(truths, 5, "truth")
    with caplog.at_level(logging.INFO):
        merged = merge_window(parse_config(churn_config()), capture, WINDOW, EndpointAttributes(), truth)
    said = [r.getMessage() for r in caplog.records]
    assert f"Reading capture files: {len(capture)} files" in " | ".join(said)
    assert f"Reading ground truth files: {len(truth)} files" in " | ".join(said)
    assert merged.counts["capture_files"] == len(capture)
