"""The text demo (container/demo.py, ``make demo-text``): review data, model, inference.py, config."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from analyzer.config import parse_config, unsupported_methods
from analyzer.data import load_dataset
from container.demo import (
    REVIEW_FEATURES,
    TEXT_DEMO_CONFIG,
    make_review_dataset,
    train_review_model,
    write_text_demo_job,
)
from container.sidecar import start_model_server

TOKEN = re.compile(r"\w+|[^\w\s]")


def n_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


@pytest.fixture(scope="module")
def text_demo(tmp_path_factory) -> Path:
    return write_text_demo_job(tmp_path_factory.mktemp("demo-text") / "job", n_rows=240, seed=4)


def test_review_dataset_columns_lengths_and_labels() -> None:
    data = make_review_dataset(600, seed=1)
    assert list(data.columns) == ["review_id", "review_body", "product_category", "star_rating", "label"]
    assert data["review_id"].is_unique and data["review_id"].iloc[0] == "R01-000000"
    assert set(data["product_category"]) == {"Digital_Software", "Books", "Toys", "Kitchen"}
    assert set(data["label"]) == {0, 1} and 0.25 < data["label"].mean() < 0.75
    assert (data["label"] == (data["star_rating"] >= 4)).all()
    lengths = data["review_body"].map(n_tokens)
    assert 28 <= lengths.mean() <= 36 and lengths.min() >= 16 and lengths.quantile(0.9) <= 42
    # Sentiment words follow the label, which is what the model has to learn.
    good = data["review_body"].str.contains(r"\b(?:love|excellent|perfect|Worth every penny)\b")
    assert data.loc[good, "label"].mean() > data.loc[~good, "label"].mean() + 0.2
    # Software reviews are harsher: something for the pre-training bias metrics to find.
    rates = data.groupby("product_category")["label"].mean()
    assert rates["Digital_Software"] < rates.drop("Digital_Software").min()


def test_review_dataset_is_reproducible_and_length_is_a_parameter() -> None:
    pd.testing.assert_frame_equal(make_review_dataset(50, seed=7), make_review_dataset(50, seed=7))
    assert not make_review_dataset(50, seed=7)["review_body"].equals(make_review_dataset(50, seed=8)["review_body"])
    long = make_review_dataset(200, seed=2, length=80)["review_body"].map(n_tokens)
    assert 72 <= long.mean() <= 90


def test_review_model_learns_the_sentiment_words() -> None:
    train, test = make_review_dataset(1500, seed=3), make_review_dataset(500, seed=30)
    model = train_review_model(train)
    assert list(model.named_steps) == ["encode", "classify"]
    accuracy = (model.predict(test[REVIEW_FEATURES]) == test["label"]).mean()
    assert accuracy > 0.75
    good, bad = model.predict_proba(pd.DataFrame(
        [["I love this book. The plot is excellent.", "Books"],
         ["I hate this book. The plot is terrible. Waste of money.", "Books"]], columns=REVIEW_FEATURES))[:, 1]
    assert good > 0.7 > 0.3 > bad


def test_job_folder_layout(text_demo: Path) -> None:
    assert (text_demo / "input/model/model.joblib").is_file()
    assert (text_demo / "input/model/code/inference.py").is_file()
    config = json.loads((text_demo / "input/config/analysis_config.json").read_text())
    assert config == TEXT_DEMO_CONFIG
    lines = (text_demo / "input/data/reviews.jsonl").read_text().splitlines()
    assert len(lines) == 240
    first = json.loads(lines[0])
    assert set(first) == {"review_id", "features", "label"} and len(first["features"]) == 2


def test_the_model_server_serves_the_demo_model(text_demo: Path) -> None:
    model = joblib.load(text_demo / "input/model/model.joblib")
    records = [json.loads(line) for line in (text_demo / "input/data/reviews.jsonl").read_text().splitlines()[:25]]
    # What the job sends: the content_template with the features, and masked texts too.
    records.append({"features": ["<PAD> <PAD> love <PAD> excellent", "Digital_Software"]})
    records.append({"features": ["<PAD>", "Books"]})
    body = "".join(json.dumps({"features": r["features"]}) + "\n" for r in records).encode("utf-8")
    with start_model_server(text_demo / "input/model", workers=1) as server:
        server.wait_healthy(timeout=120)
        request = urllib.request.Request(f"{server.url}/invocations", data=body, method="POST", headers={
            "Content-Type": "application/jsonlines", "Accept": "application/jsonlines"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("application/jsonlines")
            answers = [json.loads(line) for line in response.read().decode("utf-8").splitlines()]
    expected = model.predict_proba(pd.DataFrame([r["features"] for r in records], columns=REVIEW_FEATURES))[:, 1]
    assert len(answers) == len(records)
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=0, atol=1e-12)
    assert [a["predicted_label"] for a in answers] == [int(p >= 0.5) for p in expected]


def test_config_parses_with_text_config() -> None:
    config = parse_config(TEXT_DEMO_CONFIG)
    shap = config.methods.shap
    assert (shap.text_config.granularity, shap.text_config.language, shap.text_config.max_top_tokens) == (
        "token", "english", 50)
    assert shap.baseline == [{"features": ["<PAD>", "Digital_Software"]}]
    assert config.predictor.content_template == '{"features":$features}'
    assert config.predictor.probability == "probability"
    assert config.methods.pre_training_bias is not None and config.methods.report is not None


def test_dataset_loads_with_the_text_and_category_as_features(text_demo: Path) -> None:
    config = parse_config(TEXT_DEMO_CONFIG)
    dataset = load_dataset(config, text_demo / "input/data/reviews.jsonl", need_features=True)
    assert dataset.n_rows == 240
    assert dataset.feature_names == ["review_body", "product_category"]
    assert list(dataset.facets) == ["product_category"]
    assert dataset.label.name == "label" and set(dataset.label.to_series()) == {0, 1}
    first = json.loads((text_demo / "input/data/reviews.jsonl").read_text().splitlines()[0])
    assert dataset.features.iloc[0].tolist() == first["features"]


@pytest.mark.slow
def test_the_text_demo_job_runs_end_to_end(tmp_path: Path) -> None:
    from container.job import JobPaths, run_job

    if unsupported_methods(parse_config(TEXT_DEMO_CONFIG)):
        pytest.skip("methods.shap.text_config is not supported by this Lucent version yet")
    root = write_text_demo_job(tmp_path / "job", n_rows=40, seed=1)
    assert run_job(JobPaths.for_root(root)) == 0, (root / "message").read_text()
    output = root / "output"
    analysis = json.loads((output / "analysis.json").read_text())
    (label, entry), = analysis["explanations"]["kernel_shap"].items()
    tokens = list(entry["global_top_shap_text"]["review_body"])
    assert 0 < len(tokens) <= 50
    assert set(tokens[:15]) & {"love", "terrible", "excellent", "awful", "hate", "refund", "perfect", "broken"}
    lines = (output / "explanations_shap" / "out.jsonl").read_text().splitlines()
    assert len(lines) == 40
    assert {f["feature_name"] for f in json.loads(lines[0])["explanations"]} == set(REVIEW_FEATURES)
    html = (output / "report.html").read_text(encoding="utf-8")
    assert "Top tokens of review_body" in html and 'class="text-example"' in html
    assert {p.name for p in output.iterdir()} >= {"analysis.json", "report.html", "report.pdf", "report.ipynb"}
