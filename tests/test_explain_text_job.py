"""methods.shap with text_config as a job: out.jsonl, global_top_shap_text, exactness and bad input.

The model is a small in-test JSON Lines endpoint (``predictor.endpoint_url``) wrapping the bag-of-words
model of test_explain_text.py, the shape of the text-SHAP lab: records ``{"features": [text, category]}``
in, ``{"predicted_label": ..., "probability": ...}`` out.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from analyzer.explain.text_units import split_text
from tests.conftest import JobRoot, http_server, run_crashing_after_shards
from tests.test_explain_text import brute_force, word_model

REVIEWS = [
    ("I love this dress, it fits great", "A", 1),
    ("Bad fabric and not great at all", "B", 0),
    ("Love it", "A", 1),
    ("The dress is not bad but the fit is strange", "B", 0),
    ("Great great great", "A", 1),
    ("It arrived late. Bad packaging, nice dress though.", "B", 0),
]


class _TextModel(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.requests += 1
        if self.headers["Content-Type"].startswith("text/csv"):
            rows = np.array(list(csv.reader(io.StringIO(body))), dtype=object)
        else:
            rows = np.array([json.loads(line)["features"] for line in body.splitlines() if line.strip()],
                            dtype=object)
        too_long = [i for i, row in enumerate(rows) if len(row[0]) > self.server.max_chars]
        if too_long:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(f"input of {len(rows[too_long[0]][0])} characters exceeds the maximum".encode())
            return
        scores = word_model(rows)[:, 0]
        if self.headers["Accept"] == "text/csv":
            out = "".join(f"{float(p)!r}\n" for p in scores)
        else:
            out = "".join(json.dumps({"predicted_label": int(p > 0.5), "probability": p}) + "\n" for p in scores)
        self.send_response(200)
        self.send_header("Content-Type", "application/jsonlines")
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def text_endpoint():
    with http_server(_TextModel, max_chars=10_000, requests=0) as server:
        yield server


def text_job(job: JobRoot, server, reviews=REVIEWS, text_config=None, **shap) -> None:
    lines = [json.dumps({"id": f"r{i}", "features": [text, cat], "label": y}) for i, (text, cat, y) in enumerate(reviews)]
    job.write_data("\n".join(lines) + "\n", name="reviews.jsonl")
    job.write_config({
        "dataset_type": "application/jsonlines", "headers": ["review_body", "product_category", "label"],
        "features": "features", "label": "label",
        "methods": {"shap": {"baseline": [{"features": ["<PAD>", "B"]}], "seed": 5,
                             "text_config": text_config or {"granularity": "token", "language": "english"},
                             **shap}},
        "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}",
                      "content_type": "application/jsonlines", "accept_type": "application/jsonlines",
                      "content_template": '{"features":$features}', "probability": "probability"},
    })


def read_jsonl(job: JobRoot) -> list[dict]:
    text = (job.output_dir / "explanations_shap" / "out.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("granularity", ["token", "sentence"])
def test_text_job_outputs_are_exact_and_shaped_like_clarify(job, text_endpoint, granularity):
    text_job(job, text_endpoint, text_config={"granularity": granularity, "language": "en", "max_top_tokens": 5})
    assert job.run() == 0, job.message
    lines = read_jsonl(job)
    assert len(lines) == len(REVIEWS)
    baseline = np.array([["<PAD>", "B"]], dtype=object)
    for line, (text, cat, _) in zip(lines, REVIEWS, strict=True):
        assert set(line) == {"explanations"}
        body, category = line["explanations"]
        assert (body["feature_name"], body["data_type"]) == ("review_body", "free_text")
        assert (category["feature_name"], category["data_type"]) == ("product_category", "categorical")
        assert list(category["attributions"][0]) == ["attribution", "lucent_stderr"]
        errors = [a["lucent_stderr"][0] for a in body["attributions"] + category["attributions"]]
        assert all(e == 0 for e in errors) if len(errors) <= 11 else all(e >= 0 for e in errors)  # <= 11: exact
        units = split_text(text, "en", granularity)
        assert [a["description"] for a in body["attributions"]] == [
            {"partial_text": u.text, "start_idx": u.start} for u in units]
        for a in body["attributions"]:  # offsets point into the record's text
            start = a["description"]["start_idx"]
            assert text[start:start + len(a["description"]["partial_text"])] == a["description"]["partial_text"]
        expected, _ = brute_force(word_model, np.array([text, cat], dtype=object), units, 0, baseline)
        got = [a["attribution"][0] for a in body["attributions"]] + [category["attributions"][0]["attribution"][0]]
        np.testing.assert_allclose(got, expected[:, 0], atol=1e-9)

    kernel = job.analysis()["explanations"]["kernel_shap"]
    assert list(kernel) == ["label0"]
    entry = kernel["label0"]
    assert set(entry) == {"global_shap_values", "expected_value", "global_top_shap_text"}
    assert entry["expected_value"] == pytest.approx(word_model(baseline)[0, 0])
    assert list(entry["global_shap_values"]) == ["review_body", "product_category"]
    top = entry["global_top_shap_text"]["review_body"]
    assert len(top) == 5 and list(top.values()) == sorted(top.values(), reverse=True)
    # mean |attribution| over every occurrence of the (case-folded) unit
    occurrences: dict[str, list[float]] = {}
    for line in lines:
        for a in line["explanations"][0]["attributions"]:
            occurrences.setdefault(a["description"]["partial_text"].casefold(), []).append(a["attribution"][0])
    best = sorted(((float(np.mean(np.abs(v))), k) for k, v in occurrences.items()), key=lambda t: (-t[0], t[1]))[:5]
    assert [(k, pytest.approx(v)) for v, k in best] == list(top.items())
    totals = [sum(a["attribution"][0] for a in line["explanations"][0]["attributions"]) for line in lines]
    assert entry["global_shap_values"]["review_body"] == pytest.approx(np.mean(np.abs(totals)))
    assert (job.output_dir / "explanations_shap" / "baseline.csv").read_text().splitlines() == [
        "review_body,product_category", "<PAD>,B"]


def test_joinsource_value_and_default_pad_baseline(job, text_endpoint):
    text_job(job, text_endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    del config["methods"]["shap"]["baseline"]
    config["joinsource_name_or_index"] = "id"  # a JSON Lines joinsource is one of the `features` values
    config["headers"] = ["id", "review_body", "product_category", "label"]
    job.write_config(config)
    lines = [json.dumps({"features": [f"r{i}", t, c], "label": y}) for i, (t, c, y) in enumerate(REVIEWS)]
    job.write_data("\n".join(lines) + "\n", name="reviews.jsonl")
    assert job.run() == 0, job.message
    assert [line.get("join_source_value") for line in read_jsonl(job)] == [f"r{i}" for i in range(len(REVIEWS))]
    baseline = (job.output_dir / "explanations_shap" / "baseline.csv").read_text().splitlines()
    assert baseline[1].startswith("<PAD>,")


@pytest.mark.parametrize("change, message", [
    ({"text_config": {"granularity": "token", "language": "klingon"}}, "methods.shap.text_config.language"),
    ({"text_config": {"granularity": "word", "language": "en"}}, "methods.shap.text_config.granularity"),
    ({"features_to_explain": ["product_category"]}, "`features_to_explain` is not supported for datasets"),
])
def test_bad_text_configs(job, text_endpoint, change, message):
    text_job(job, text_endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"]["shap"].update(change)
    job.write_config(config)
    assert job.run() == 1
    assert message in job.message
    assert job.output_files() == []


@pytest.mark.parametrize("reviews, message", [
    ([*REVIEWS[:2], ("   ", "A", 1)], "text feature 'review_body' is empty at dataset row 2"),
    ([*REVIEWS[:3], (42, "A", 1)], "text feature 'review_body' at dataset row 3 holds 42 (int), not a string"),
    ([*REVIEWS[:1], (None, "A", 1)], "text feature 'review_body' at dataset row 1 holds None"),
])
def test_bad_texts(job, text_endpoint, reviews, message):
    text_job(job, text_endpoint, reviews=reviews, text_config={"granularity": "token", "language": "en",
                                                               "text_features": ["review_body"]})
    assert job.run() == 1
    assert message in job.message, job.message
    assert job.output_files() == []


def test_text_longer_than_the_model_accepts_names_the_record(job, text_endpoint):
    text_endpoint.max_chars = 200  # every other review stays far below, even with its words replaced by <PAD>
    long_review = ("It fits. " * 30).strip()
    text_job(job, text_endpoint, reviews=[*REVIEWS, (long_review, "A", 1), REVIEWS[0]])
    assert job.run() == 1
    assert "dataset row 6" in job.message and "exceeds the maximum" in job.message, job.message
    assert job.output_files() == []


def test_no_feature_looks_like_text(job, text_endpoint):
    text_job(job, text_endpoint, reviews=[("ok", "A", 1), ("meh", "B", 0), ("good", "A", 1)])
    assert job.run() == 1
    assert "no feature looks like free text" in job.message and "text_features" in job.message


def test_pdp_gives_text_features_clarify_s_error_entry(job, text_endpoint):
    text_job(job, text_endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"]["pdp"] = {"grid_resolution": 5, "top_k_features": 2}
    job.write_config(config)
    assert job.run() == 0, job.message
    pdp = {entry["feature_name"]: entry for entry in job.analysis()["explanations"]["pdp"]}
    assert pdp["review_body"] == {"feature_name": "review_body", "data_type": "free_text",
                                  "error": "Detected data type is not supported for PDP. PDP can only be "
                                           "computed for numerical or categorical columns"}
    category = pdp["product_category"]
    assert category["data_type"] == "categorical" and sorted(category["feature_values"]) == ["A", "B"]
    for value, prediction in zip(category["feature_values"], category["model_predictions"][0], strict=True):
        rows = np.array([[text, value] for text, _, _ in REVIEWS], dtype=object)
        assert prediction == pytest.approx(word_model(rows)[:, 0].mean())


@pytest.mark.slow
def test_text_shards_two_workers_and_a_resumed_run_give_identical_outputs(job, text_endpoint, monkeypatch, caplog):
    from analyzer.explain import shards

    reviews = [(f"{text} number {i}", cat, y) for i in range(4) for text, cat, y in REVIEWS]
    text_job(job, text_endpoint, reviews=reviews, num_samples=40)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "150")  # a few records per shard
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    monkeypatch.setenv("LUCENT_PROGRESS_SECONDS", "1e-9")  # a progress line per shard
    with caplog.at_level(logging.INFO, logger="analyzer.progress"):
        assert job.run() == 0, job.message
    lines = [r.getMessage() for r in caplog.records if r.name == "analyzer.progress" and "Text SHAP" in r.getMessage()]
    assert len(lines) > 2 and lines[-1].startswith(f"Text SHAP: {len(reviews)} of {len(reviews)} records (100%), ")
    reference = [read_jsonl(job), job.analysis()]
    assert any(a["attribution"][0] != 0 for a in reference[0][0]["explanations"][0]["attributions"])
    # Sampled (40 coalitions for 8+ players): every value has a positive standard error.
    assert all(a["lucent_stderr"][0] > 0 for a in reference[0][0]["explanations"][0]["attributions"])

    monkeypatch.setenv(shards.WORKERS_ENV, "2")
    assert job.run() == 0, job.message
    assert [read_jsonl(job), job.analysis()] == reference

    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    checkpoints = list((job.output_dir / ".lucent-work" / "shap").glob("*/shard-*.npz"))
    assert len(checkpoints) == 3
    assert job.run() == 0, job.message
    assert [read_jsonl(job), job.analysis()] == reference
    assert not (job.output_dir / ".lucent-work").exists()


def test_csv_dataset_like_the_nlp_docs_example(job, text_endpoint):
    """Config (g) of the contract: CSV with a text column, a [MASK] baseline, sentence units here."""
    reviews = [('Loved it, "truly" great. It fits!', 4), ("Not great, sadly. Bad seams, bad fit.", 2),
               ("Great dress.\n\nWould love another.", 5)]
    with io.StringIO() as handle:
        csv.writer(handle).writerows([(text, rating, int(rating > 3)) for text, rating in reviews])
        job.write_data(handle.getvalue())
    job.write_config({"dataset_type": "text/csv", "headers": ["Comments", "Rating", "Target"], "label": "Target",
                      "methods": {"shap": {"text_config": {"granularity": "sentence", "language": "english"},
                                           "baseline": [["[MASK]", 4]]}},
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{text_endpoint.server_port}"}})
    assert job.run() == 0, job.message
    lines = read_jsonl(job)
    baseline = np.array([["[MASK]", "4"]], dtype=object)  # a CSV request carries text: "4", as the model reads it
    for line, (text, rating) in zip(lines, reviews, strict=True):
        comments, rating_entry = line["explanations"]
        assert rating_entry["data_type"] == "numerical"
        units = split_text(text, "en", "sentence")
        assert [a["description"]["partial_text"] for a in comments["attributions"]] == [u.text for u in units]
        expected, _ = brute_force(word_model, np.array([text, str(rating)], dtype=object), units, 0, baseline)
        got = [a["attribution"][0] for a in comments["attributions"]] + [rating_entry["attributions"][0]["attribution"][0]]
        np.testing.assert_allclose(got, expected[:, 0], atol=1e-9)


def test_validate_reports_text_problems_without_running_the_model(job, text_endpoint, capsys):
    text_job(job, text_endpoint, reviews=[*REVIEWS[:2], ("   ", "A", 1)])
    assert job.run(command="validate") == 1
    assert "text feature 'review_body' is empty at dataset row 2" in capsys.readouterr().out
    assert text_endpoint.requests == 0
    text_job(job, text_endpoint)
    assert job.run(command="validate") == 0, job.message
    assert text_endpoint.requests == 0


def test_an_empty_csv_text_cell_is_named_as_empty(job, text_endpoint):
    rows = [("Loved it, truly great. It fits!", 4, 1), ("", 2, 0), ("Not great, sadly.", 2, 0), ("", 5, 1)]
    with io.StringIO() as handle:
        csv.writer(handle).writerows(rows)
        job.write_data(handle.getvalue())
    job.write_config({"dataset_type": "text/csv", "headers": ["Comments", "Rating", "Target"], "label": "Target",
                      "methods": {"shap": {"text_config": {"granularity": "token", "language": "english",
                                                           "text_features": ["Comments"]},
                                           "baseline": [["[MASK]", 4]]}},
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{text_endpoint.server_port}"}})
    assert job.run() == 1
    assert "text feature 'Comments' is empty at dataset row 1 and 1 more row(s)" in job.message, job.message
    assert "holds nan" not in job.message, job.message
    assert text_endpoint.requests == 0


def test_a_record_with_more_units_than_the_sample_budget_is_warned_about(job, text_endpoint, caplog):
    long_review = " ".join(f"word{i}" for i in range(60))  # 60 tokens + 1 category: 61 players
    text_job(job, text_endpoint, reviews=[*REVIEWS[:2], (long_review, "A", 1)], num_samples=20)
    m = len(split_text(long_review, "en", "token")) + 1
    assert m == 61
    with caplog.at_level(logging.WARNING):
        assert job.run() == 0, job.message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "num_samples" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"dataset row 2 has {m} players" in warnings[0] and "only 20 coalitions" in warnings[0], warnings
    assert "(1 record(s) alike)" in warnings[0]
