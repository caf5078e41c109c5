"""Online explanations through the real endpoint equal exact Shapley values by enumeration.

Each test trains a small model here, serves it with the built-in model server (its default handlers, or
a ``code/inference.py`` for JSON Lines and text), puts ``lucent endpoint`` in front on 127.0.0.1 and
asks through boto3's ``sagemaker-runtime`` client. The reference is computed in the test from the
model's own function over every coalition (M <= 10): v(S) = link(mean over baseline rows of f(record on
S, baseline row elsewhere)), phi_j = sum over S without j of |S|!(M-|S|-1)!/M! (v(S+j) - v(S)).
With M <= 10 the spec's default budget covers every coalition, so the endpoint's values are exact too.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Callable, Iterator
from math import factorial
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from container.sidecar import start_model_server
from tests.test_endpoint_server import NAME, endpoint, runtime

ATOL = 1e-9
EPS = 1e-12  # below every probability these models give; the explainer's logit clips far lower


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def coalitions(n_players: int) -> list[tuple[bool, ...]]:
    return list(itertools.product((False, True), repeat=n_players))


def exact_shapley(value: Callable[[tuple[bool, ...]], np.ndarray] | dict, n_players: int) -> np.ndarray:
    """(players, outputs) Shapley values of the game ``value`` (a function of the coalition, or a dict of
    every coalition's value) by enumerating every coalition."""
    if callable(value):
        values = {mask: np.asarray(value(mask), dtype=float) for mask in coalitions(n_players)}
    else:
        values = value
    phi = np.zeros((n_players, len(values[(False,) * n_players])))
    for j in range(n_players):
        for mask, v in values.items():
            if mask[j]:
                continue
            size = sum(mask)
            weight = factorial(size) * factorial(n_players - size - 1) / factorial(n_players)
            phi[j] += weight * (values[mask[:j] + (True,) + mask[j + 1:]] - v)
    return phi


def tabular_game(predict: Callable[[np.ndarray], np.ndarray], record: np.ndarray, baseline: np.ndarray,
                 use_logit: bool) -> dict[tuple[bool, ...], np.ndarray]:
    """v(S) for every coalition S, from one call of the model's own ``predict`` on every row."""
    masks = coalitions(len(record))
    keep = np.array(masks)[:, None, :]
    rows = np.where(keep, record[None, None, :], baseline[None, :, :]).reshape(-1, len(record))
    means = predict(rows).reshape(len(masks), len(baseline), -1).mean(axis=1)
    return dict(zip(masks, logit(means) if use_logit else means, strict=True))


def attributions(entry: list[dict]) -> np.ndarray:
    """(players, outputs) from one record's ``kernel_shap`` entry (text units in order)."""
    return np.array([item["attribution"] for feature in entry for item in feature["attributions"]])


def _train(n_features: int, n_classes: int, seed: int) -> HistGradientBoostingClassifier:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, n_features))
    signal = x[:, 0] * x[:, 1] + x[:, 2] - 0.5 * x[:, 3] ** 2  # interactions: values are not additive
    labels = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1]))
    return HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, labels)


@pytest.fixture(scope="module")
def csv_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HistGradientBoostingClassifier]]:
    """A 3-class model on 6 features behind the built-in server's default (CSV/npy) handlers."""
    model = _train(6, 3, seed=1)
    folder = tmp_path_factory.mktemp("csv-model")
    joblib.dump(model, folder / "model.joblib")
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=60)
        assert server.info()["default_io"]
        yield server.url, model


JSONL_INFERENCE = '''
import json, os
import joblib
import numpy as np

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    assert content_type.startswith("application/jsonlines"), content_type
    return np.array([json.loads(line)["data"]["features"] for line in body.splitlines() if line.strip()], dtype=float)

def predict_fn(data, model):
    return model.predict_proba(data)

def output_fn(prediction, accept):
    lines = [json.dumps({"predicted_label": int(np.argmax(p)), "probabilities": [float(v) for v in p],
                         "labels": ["cat", "dog", "fish"]}) for p in prediction]
    return "\\n".join(lines), "application/jsonlines"
'''


@pytest.fixture(scope="module")
def jsonl_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HistGradientBoostingClassifier]]:
    """A 3-class model on 5 features that reads ``{"data":{"features":[...]}}`` lines and answers
    ``{"predicted_label", "probabilities", "labels"}`` lines (its own inference.py)."""
    model = _train(5, 3, seed=2)
    folder = tmp_path_factory.mktemp("jsonl-model")
    joblib.dump(model, folder / "model.joblib")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(JSONL_INFERENCE)
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=60)
        assert not server.info()["default_io"]
        yield server.url, model


def _csv(values: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in np.atleast_2d(values))


def _shap_config(baseline: str, mime_type: str = "text/csv", **shap) -> dict:
    return {"ShapBaselineConfig": {"MimeType": mime_type, "ShapBaseline": baseline}, **shap}


@pytest.mark.parametrize("use_logit", [False, True], ids=["probabilities", "logit"])
def test_csv_multi_output_attributions_are_exact_shapley(csv_model, use_logit: bool) -> None:
    url_model, model = csv_model
    rng = np.random.default_rng(5)
    baseline, records = rng.normal(size=(2, 6)), rng.normal(size=(3, 6))
    config = {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "InferenceConfig": {"FeatureHeaders": [f"f{j}" for j in range(6)], "LabelHeaders": ["a", "b", "c"]},
        "ShapConfig": _shap_config(_csv(baseline), UseLogit=use_logit)}}}
    with endpoint(config, url_model, default_io=True) as url:
        response = runtime(url).invoke_endpoint(EndpointName=NAME, Body=_csv(records), ContentType="text/csv",
                                                Accept="text/csv")
        document = json.loads(response["Body"].read())
    assert document["label_headers"] == ["a", "b", "c"]
    predictions = np.array([[float(v) for v in line.split(",")] for line in document["predictions"]["data"].split()])
    np.testing.assert_allclose(predictions, model.predict_proba(records), rtol=1e-12)
    entries = document["explanations"]["kernel_shap"]
    assert len(entries) == 3
    expected_value = model.predict_proba(baseline).mean(axis=0)
    for record, prediction, entry in zip(records, predictions, entries, strict=True):
        assert [feature["feature_header"] for feature in entry] == [f"f{j}" for j in range(6)]
        assert all("feature_type" not in feature for feature in entry)  # only for NLP problems (spec 5)
        got = attributions(entry)
        assert got.shape == (6, 3)
        reference = exact_shapley(tabular_game(model.predict_proba, record, baseline, use_logit), 6)
        np.testing.assert_allclose(got, reference, atol=ATOL)
        link = logit if use_logit else (lambda p: p)
        np.testing.assert_allclose(got.sum(axis=0), link(prediction) - link(expected_value), atol=ATOL)
        assert all(item["lucent_stderr"] == [0.0] * 3 for feature in entry for item in feature["attributions"])


def test_jsonl_model_with_attributes_template_and_jsonl_baseline(jsonl_model) -> None:
    url_model, model = jsonl_model
    rng = np.random.default_rng(6)
    baseline, records = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))

    def line(row: np.ndarray) -> str:
        return json.dumps({"data": {"features": [float(v) for v in row]}, "id": "ignored"})

    config = {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "EnableExplanations": "predicted_label != `-1`",  # JMESPath over each parsed JSON Lines record
        "InferenceConfig": {"FeaturesAttribute": "data.features", "ContentTemplate": '{"data":{"features":$features}}',
                            "ProbabilityAttribute": "probabilities", "LabelAttribute": "labels"},
        # the baseline in the model's own input format: FeaturesAttribute reads it
        "ShapConfig": _shap_config("\n".join(line(row) for row in baseline), "application/jsonlines")}}}
    with endpoint(config, url_model) as url:
        response = runtime(url).invoke_endpoint(EndpointName=NAME, Body="\n".join(line(row) for row in records),
                                                ContentType="application/jsonlines", Accept="application/jsonlines")
        document = json.loads(response["Body"].read())
    assert response["ContentType"] == "application/json"
    assert document["predictions"]["content_type"].startswith("application/jsonlines")
    assert document["label_headers"] == ["cat", "dog", "fish"]  # from LabelAttribute in the model output
    outputs = [json.loads(text) for text in document["predictions"]["data"].splitlines()]
    np.testing.assert_allclose([o["probabilities"] for o in outputs], model.predict_proba(records), rtol=1e-12)
    expected_value = model.predict_proba(baseline).mean(axis=0)
    for record, output, entry in zip(records, outputs, document["explanations"]["kernel_shap"], strict=True):
        assert all("feature_header" not in feature for feature in entry)  # no FeatureHeaders configured
        got = attributions(entry)
        reference = exact_shapley(tabular_game(model.predict_proba, record, baseline, False), 5)
        np.testing.assert_allclose(got, reference, atol=ATOL)
        np.testing.assert_allclose(got.sum(axis=0), np.array(output["probabilities"]) - expected_value, atol=ATOL)


def test_jsonl_single_score_with_label_headers_and_logit(jsonl_model) -> None:
    """``ProbabilityAttribute`` picking one score (``probabilities[2]``), ``LabelHeaders`` from the config."""
    url_model, model = jsonl_model
    rng = np.random.default_rng(7)
    baseline, record = rng.normal(size=(1, 5)), rng.normal(size=5)
    config = {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "InferenceConfig": {"FeaturesAttribute": "data.features", "ContentTemplate": '{"data":{"features":$features}}',
                            "ProbabilityAttribute": "probabilities[2]", "LabelHeaders": ["fish"]},
        "ShapConfig": _shap_config(json.dumps({"data": {"features": baseline[0].tolist()}}), "application/jsonlines",
                                   UseLogit=True)}}}
    with endpoint(config, url_model) as url:
        body = json.dumps({"data": {"features": record.tolist()}})
        document = json.loads(runtime(url).invoke_endpoint(EndpointName=NAME, Body=body,
                                                           ContentType="application/jsonlines")["Body"].read())
    assert document["label_headers"] == ["fish"]
    (entry,) = document["explanations"]["kernel_shap"]
    got = attributions(entry)
    assert got.shape == (5, 1)

    def fish(rows: np.ndarray) -> np.ndarray:
        return model.predict_proba(rows)[:, 2:]

    np.testing.assert_allclose(got, exact_shapley(tabular_game(fish, record, baseline, True), 5), atol=ATOL)
    np.testing.assert_allclose(got.sum(), logit(fish(record[None])[0, 0]) - logit(fish(baseline)[0, 0]), atol=ATOL)


TEXT_INFERENCE = '''
import numpy as np

WEIGHTS = {"good": 1.2, "great": 1.5, "bad": -1.4, "not": -0.6}

def model_fn(model_dir):
    return None

def score(text, stars):
    words = text.lower().replace(",", " ").split()
    z = sum(WEIGHTS.get(w, 0.0) for w in words) + 0.3 * float(stars) - 0.2 * len(words) / 3
    if "not" in words and "good" in words:  # an interaction: "not ... good" is worse than its parts
        z -= 1.0
    p = 1 / (1 + np.exp(-z))
    return [p, 1 - p]

def predict_fn(data, model):
    return np.array([score(row[0], row[1]) for row in data])
'''


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Callable]]:
    folder = tmp_path_factory.mktemp("text-model")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(TEXT_INFERENCE)
    namespace: dict = {}
    exec(textwrap.dedent(TEXT_INFERENCE), namespace)  # the model's own function, for the reference
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=60)
        yield server.url, namespace["score"]


@pytest.mark.parametrize("use_logit", [False, True], ids=["probabilities", "logit"])
def test_text_units_are_exact_shapley_with_partial_text_and_start_idx(text_model, use_logit: bool) -> None:
    url_model, score = text_model
    text, stars = "this is good, not bad", 4.0
    config = {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "InferenceConfig": {"FeatureHeaders": ["review", "stars"], "FeatureTypes": ["text", "numerical"],
                            "LabelHeaders": ["positive", "negative"]},
        "ShapConfig": _shap_config('"<PAD>",1', TextConfig={"Language": "en", "Granularity": "token"},
                                   UseLogit=use_logit)}}}
    with endpoint(config, url_model) as url:
        body = f'"{text}",{stars:g}'
        document = json.loads(runtime(url).invoke_endpoint(EndpointName=NAME, Body=body, ContentType="text/csv",
                                                           Accept="text/csv")["Body"].read())
    (entry,) = document["explanations"]["kernel_shap"]
    review, stars_feature = entry
    assert (review["feature_header"], review["feature_type"]) == ("review", "text")
    assert (stars_feature["feature_header"], stars_feature["feature_type"]) == ("stars", "numerical")
    units = [(item["description"]["partial_text"], item["description"]["start_idx"]) for item in review["attributions"]]
    assert units == [("this", 0), ("is", 5), ("good", 8), (",", 12), ("not", 14), ("bad", 18)]
    assert all(text[start:start + len(unit)] == unit for unit, start in units)

    def value(mask: tuple[bool, ...]) -> np.ndarray:
        # masked units become the baseline's "<PAD>", the text's own spacing kept; stars -> baseline 1
        pieces, position = [], 0
        for (unit, start), kept in zip(units, mask[:-1], strict=True):
            pieces += [text[position:start], unit if kept else "<PAD>"]
            position = start + len(unit)
        p = np.array(score("".join(pieces) + text[position:], stars if mask[-1] else 1.0))
        return logit(p) if use_logit else p

    got = attributions(entry)
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got, exact_shapley(value, 7), atol=ATOL)
    # Text: the values add up to f(record) - f(record with every unit and feature masked) (text_shap).
    np.testing.assert_allclose(got.sum(axis=0), value((True,) * 7) - value((False,) * 7), atol=ATOL)
    prediction = [float(v) for v in document["predictions"]["data"].split(",")]
    np.testing.assert_allclose(prediction, score(text, stars), rtol=1e-12)


def test_jsonl_baseline_from_a_file_with_bare_lists(jsonl_model, tmp_path: Path) -> None:
    """A JSON Lines baseline of bare feature lists is read too (no attribute needed), from a local path."""
    url_model, model = jsonl_model
    baseline = np.zeros((1, 5))
    (tmp_path / "baseline.jsonl").write_text(json.dumps(baseline[0].tolist()) + "\n")
    config = {"ExplainerConfig": {"ClarifyExplainerConfig": {
        "InferenceConfig": {"FeaturesAttribute": "data.features", "ContentTemplate": '{"data":{"features":$features}}',
                            "ProbabilityAttribute": "probabilities"},
        "ShapConfig": {"ShapBaselineConfig": {"MimeType": "application/jsonlines",
                                              "ShapBaselineUri": str(tmp_path / "baseline.jsonl")}}}}}
    record = np.linspace(-1, 1, 5)
    with endpoint(config, url_model) as url:
        body = json.dumps({"data": {"features": record.tolist()}})
        document = json.loads(runtime(url).invoke_endpoint(EndpointName=NAME, Body=body,
                                                           ContentType="application/jsonlines")["Body"].read())
    got = attributions(document["explanations"]["kernel_shap"][0])
    np.testing.assert_allclose(got, exact_shapley(tabular_game(model.predict_proba, record, baseline, False), 5),
                               atol=ATOL)
