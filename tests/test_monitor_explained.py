"""Bias monitoring on the capture of an endpoint with ``ExplainerConfig``.

Such an endpoint answers (and so captures) the explanation document of online-explainability.md 5, not
the model's answer: the merge reads the model's answer it carries (``predictions.data`` in
``predictions.content_type``), so ``ProbabilityAttribute`` / ``InferenceAttribute`` /
``ProbabilityThresholdAttribute`` apply as for an endpoint without explanations.

The end-to-end test runs the real endpoint (``open_endpoint``, the code of ``lucent endpoint``) over the
built-in model server, with and without explanations, sends the same records with boto3, and monitors
both captures: the bias metrics must be equal. A window must be over before it is analysed, so, as in
``make demo-monitor``, the captured lines are filed under the test's hour (inference times shifted, the
payloads kept byte for byte).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import joblib
import pytest

from analyzer.config import parse_config
from analyzer.errors import UserError
from analyzer.monitor.attributes import EndpointAttributes
from analyzer.monitor.capture import read_capture_lines
from analyzer.monitor.merge import merge_window
from analyzer.monitor.payloads import explanation_answer
from container.cli import main as lucent
from container.monitor.demo import (
    ENDPOINT,
    FEATURES,
    LABEL,
    bias_config,
    endpoint_config,
    file_under_hours,
    job_definition,
    make_churn_data,
    send_traffic,
    train_model,
    write_ground_truth,
)
from container.sidecar import start_model_server
from tests.test_endpoint_server import endpoint
from tests.test_monitor_merge import WINDOW, churn_config, files, line, truth
from tests.test_monitor_run import HOUR, SCHEDULE, T, metric_values

N_RECORDS = 150


@pytest.fixture(scope="module")
def churn_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's churn model behind the built-in model server (default handlers: CSV in, "p0,p1" out)."""
    folder = tmp_path_factory.mktemp("churn-model")
    joblib.dump(train_model(make_churn_data(1500, seed=1)), folder / "model.joblib")
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=60)
        yield server.url


def explainer_config(baseline: list[float]) -> dict:
    return {"ClarifyExplainerConfig": {
        "InferenceConfig": {"FeatureHeaders": FEATURES, "ProbabilityIndex": 1, "LabelHeaders": ["stay", "churn"]},
        "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv",
                                              "ShapBaseline": ",".join(f"{v:g}" for v in baseline)},
                       "NumberOfSamples": 8, "Seed": 1}}}


def monitored_window(root: Path, records, model_url: str, *, explained: bool, json_capture: bool) -> dict:
    """Capture of ``records`` sent to a real endpoint, filed under HOUR; the bias monitor's analysis.json."""
    document = endpoint_config(root / "capture")  # CsvContentTypes only: a JSON answer is captured base64
    if json_capture:
        document["DataCaptureConfig"]["CaptureContentTypeHeader"]["JsonContentTypes"] = ["application/json"]
    if explained:
        document["ExplainerConfig"] = explainer_config([float(v) for v in records[FEATURES].mean()])
    with endpoint(document, model_url, ENDPOINT, default_io=True) as url:
        assert send_traffic(url, records, 0) == len(records)
    assert file_under_hours(root / "capture", {str(i): HOUR for i in range(len(records))}) == {HOUR: len(records)}
    captured = [record for path in sorted((root / "capture").rglob("*.jsonl"))
                for record in read_capture_lines(path.read_text(encoding="utf-8"), str(path))]
    outputs = [record["captureData"]["endpointOutput"] for record in captured]
    assert len(outputs) == len(records)
    if explained:  # what the caller received: the explanation document, as JSON text or base64
        assert {part["encoding"] for part in outputs} == {"JSON" if json_capture else "BASE64"}
        document = json.loads(outputs[0]["data"] if json_capture else base64.b64decode(outputs[0]["data"]))
        assert document["version"] == "1.0" and len(document["explanations"]["kernel_shap"]) == 1
        assert document["predictions"]["content_type"].startswith("text/csv")
    else:
        assert {part["encoding"] for part in outputs} == {"CSV"}
    write_ground_truth(root / "ground-truth", HOUR, records[LABEL], 0)
    config = root / "monitor-config.json"
    config.write_text(json.dumps(bias_config()), encoding="utf-8")
    body = job_definition("bias", root, config, root / "none.json")  # ProbabilityAttribute "1", threshold 0.8
    del body["ModelBiasBaselineConfig"]
    definition = root / "job-definition.json"
    definition.write_text(json.dumps(body), encoding="utf-8")
    code = lucent(["monitor", "--job-definition", str(definition), "--capture-uri", str(root / "capture"),
                   "--now", T.isoformat(), "--schedule-name", SCHEDULE, "--processing-root", str(root / "work")])
    assert code == 0, (root / "work" / "message").read_text()
    folder = root / "monitoring" / ENDPOINT / SCHEDULE / f"{T:%Y/%m/%d/%H}"
    return json.loads((folder / "analysis.json").read_text(encoding="utf-8"))


def test_an_explaining_endpoints_capture_gives_the_metrics_of_a_plain_one(tmp_path: Path, churn_model: str) -> None:
    records = make_churn_data(N_RECORDS, seed=2)
    plain = monitored_window(tmp_path / "plain", records, churn_model, explained=False, json_capture=True)
    expected = metric_values(plain)
    assert len(expected) == 21
    predicted = {m["name"]: m["value"] for m in plain["post_training_bias_metrics"]["facets"]["Account Length"][0]
                 ["metrics"]}
    assert predicted["DPPL"] != 0  # the predicted labels matter to the metrics compared
    counts = plain["lucent"]["monitor"]
    assert counts["merged_records"] == N_RECORDS and counts["explanation_documents"] == 0
    # JSON text capture (the SDK's default JsonContentTypes); base64 capture: test_multi_record_csv_answers_...
    explained = monitored_window(tmp_path / "explained", records, churn_model, explained=True, json_capture=True)
    assert metric_values(explained) == expected
    counts = explained["lucent"]["monitor"]
    assert counts["merged_records"] == N_RECORDS and counts["explanation_documents"] == N_RECORDS
    assert counts["malformed_lines"] == 0


# -- the merge on explanation documents ---------------------------------------------------------------

WHEN = WINDOW.start + timedelta(minutes=3)


def explained(answer: str, content_type: str = "text/csv") -> bytes:
    """An explanation document carrying the model's ``answer`` (online-explainability.md 5)."""
    return json.dumps({"version": "1.0", "predictions": {"content_type": content_type, "data": answer},
                       "label_headers": ["stay", "churn"], "explanations": {}}).encode()


def test_multi_record_csv_answers_inside_explanation_documents() -> None:
    config = parse_config(churn_config())
    answers = ["0.7,0.3\n0.05,0.95\n", "0.1,0.9\n"]
    bodies = [b"120,99,1.5,KS\n7,97,3.5,NJ", b"5,90,2.0,OH"]
    truths = files([truth("e0", "1"), truth("e1", "0")])
    plain = [line(f"e{i}", WHEN, body, answer.encode()) for i, (body, answer) in enumerate(zip(bodies, answers,
                                                                                                strict=True))]
    wrapped = [line(f"e{i}", WHEN, body, explained(answer), accept="application/json")
               for i, (body, answer) in enumerate(zip(bodies, answers, strict=True))]
    attributes = EndpointAttributes(probability_attribute="1")
    ours = merge_window(config, files(wrapped), WINDOW, attributes, truths)
    theirs = merge_window(config, files(plain), WINDOW, attributes, truths)
    assert ours.dataset.predicted_label.to_series().tolist() == [0, 1, 1]  # 0.3, 0.95, 0.9 against 0.8
    assert theirs.dataset.predicted_label.to_series().tolist() == [0, 1, 1]
    assert ours.counts["explanation_documents"] == 2 and theirs.counts["explanation_documents"] == 0
    # Base64 capture (application/json not in JsonContentTypes): the same.
    encoded = [line(f"e{i}", WHEN, body, explained(answer), accept="application/json", json_types=[])
               for i, (body, answer) in enumerate(zip(bodies, answers, strict=True))]
    assert json.loads(encoded[0])["captureData"]["endpointOutput"]["encoding"] == "BASE64"
    again = merge_window(config, files(encoded), WINDOW, attributes, truths)
    assert again.dataset.predicted_label.to_series().tolist() == [0, 1, 1]


def test_json_and_json_lines_answers_inside_explanation_documents() -> None:
    config = parse_config(churn_config())
    truths = files([truth("e0", "1"), truth("e1", "0")])
    json_answers = [json.dumps({"predictions": [{"score": 0.9, "label": 1}, {"score": 0.2, "label": 0}]}),
                    json.dumps({"predictions": [{"score": 0.85, "label": 1}]})]
    jsonl_answers = ['{"score": 0.9, "label": 1}\n{"score": 0.2, "label": 0}\n', '{"score": 0.85, "label": 1}']
    bodies = [b"120,99,1.5,KS\n7,97,3.5,NJ", b"5,90,2.0,OH"]
    for answers, content_type, score, label in (
            (json_answers, "application/json", "predictions[*].score", "predictions[*].label"),
            (jsonl_answers, "application/jsonlines", "score", "label")):
        wrapped = [line(f"e{i}", WHEN, body, explained(answer, content_type), accept="application/json")
                   for i, (body, answer) in enumerate(zip(bodies, answers, strict=True))]
        by_score = merge_window(config, files(wrapped), WINDOW, EndpointAttributes(probability_attribute=score),
                                truths)
        assert by_score.dataset.predicted_label.to_series().tolist() == [1, 0, 1]  # against 0.8
        by_label = merge_window(config, files(wrapped), WINDOW, EndpointAttributes(inference_attribute=label),
                                truths)
        assert by_label.dataset.predicted_label.to_series().tolist() == [1, 0, 1]
        higher = merge_window(config, files(wrapped), WINDOW,
                              EndpointAttributes(probability_attribute=score, probability_threshold_attribute=0.86),
                              truths)
        assert higher.dataset.predicted_label.to_series().tolist() == [1, 0, 0]


def test_what_is_and_is_not_an_explanation_document() -> None:
    assert explanation_answer(json.loads(explained("0.3"))) == ("text/csv", "0.3")
    assert explanation_answer({"predictions": {"content_type": "text/csv", "data": "1"}}) is None  # no version
    assert explanation_answer({"version": "1.0", "predictions": [0.3]}) is None
    assert explanation_answer({"version": "1.0", "predictions": {"content_type": "text/csv", "data": 0.3}}) is None
    assert explanation_answer([1, 2]) is None
    # A model whose own JSON answer has "predictions" (and no "version") is read as it is.
    config = parse_config(churn_config())
    own = json.dumps({"predictions": [{"score": 0.9}]}).encode()
    merged = merge_window(config, files([line("e0", WHEN, b"120,99,1.5,KS", own, accept="application/json")]), WINDOW,
                          EndpointAttributes(probability_attribute="predictions[*].score"), files([truth("e0", "1")]))
    assert merged.dataset.predicted_label.to_series().tolist() == [1]
    assert merged.counts["explanation_documents"] == 0


def test_an_answer_in_another_format_is_a_malformed_line() -> None:
    config = parse_config(churn_config())
    good = [line(f"e{i}", WHEN, b"120,99,1.5,KS", explained("0.1,0.9"), accept="application/json")
            for i in range(150)]
    odd = line("odd", WHEN, b"5,90,2.0,OH", explained("AAAA", "application/x-npy"), accept="application/json")
    truths = files([truth(f"e{i}", "1") for i in range(150)] + [truth("odd", "0")])
    merged = merge_window(config, files([*good, odd]), WINDOW, EndpointAttributes(probability_attribute="1"), truths)
    assert merged.counts["malformed_lines"] == 1 and merged.dataset.n_rows == 150
    assert "predictions.content_type 'application/x-npy'" in merged.counts["malformed_examples"][0]


def test_an_attribute_the_explained_answer_cannot_take_says_so() -> None:
    config = parse_config(churn_config())
    lines = [line("e0", WHEN, b"120,99,1.5,KS", explained("0.1,0.9"), accept="application/json")]
    attributes = EndpointAttributes(probability_attribute="predictions.data", path="ModelBiasJobInput.EndpointInput",
                                    source="job definition bias.json")
    with pytest.raises(UserError) as raised:
        merge_window(config, files(lines), WINDOW, attributes, files([truth("e0", "1")]))
    message = str(raised.value)
    assert message.startswith("ModelBiasJobInput.EndpointInput.ProbabilityAttribute (job definition bias.json) must "
                              "be a 0-based column index for text/csv model output, got 'predictions.data'")
    assert "explanation documents (an endpoint with ExplainerConfig)" in message and "predictor." not in message

