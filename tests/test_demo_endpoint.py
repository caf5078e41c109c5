"""`make demo-endpoint` (``python -m container.demo --endpoint``): the credit model behind ``lucent endpoint``,
called with boto3, one explained prediction printed, capture flushed on SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from container.demo import ENDPOINT_DEMO_NAME, ENDPOINT_DEMO_REQUESTS, FEATURES, endpoint_demo_config
from container.endpoint.config import load_endpoint_config

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"([+-]?\d+\.\d+)"


def test_the_demo_config_is_a_valid_endpoint_config(tmp_path: Path) -> None:
    path = tmp_path / "endpoint-config.json"
    path.write_text(json.dumps(endpoint_demo_config("49.27,Male,White,13.03,40.16,3834.15,45-64",
                                                    str(tmp_path / "capture"))))
    config = load_endpoint_config(path)
    assert config.variant_name == "AllTraffic"
    assert config.capture is not None and config.capture.sampling_percentage == 100
    assert config.capture.capture_input and config.capture.capture_output
    assert config.explainer is not None
    assert list(config.explainer.inference.feature_headers) == FEATURES
    assert config.explainer.inference.probability_index == 1


@pytest.mark.slow
def test_demo_endpoint_prints_an_efficient_explanation_and_captures_every_invocation(tmp_path: Path) -> None:
    root = tmp_path / "demo-endpoint"
    run = subprocess.run([sys.executable, "-m", "container.demo", "--endpoint", str(root)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr + (root / "endpoint.log").read_text()
    out = run.stdout

    invocations = int(re.search(r"Sent (\d+) invocations with boto3", out)[1])
    assert invocations == ENDPOINT_DEMO_REQUESTS + 1  # the records, and the baseline for the expected value
    assert f"{ENDPOINT_DEMO_REQUESTS} came back explained" in out

    # The printed explanation: efficiency (the attributions add up to prediction - expected value).
    inference_id = re.search(r"One explained prediction \(InferenceId (demo-\d{4})\)", out)[1]
    prediction = float(re.search(rf"^  prediction\s+{NUMBER}", out, re.M)[1])
    expected = float(re.search(rf"^  expected value\s+{NUMBER}", out, re.M)[1])
    block = out.split("attributions (Kernel SHAP, largest effect first):\n", 1)[1].split("  sum of attributions")[0]
    printed = {name: float(value) for name, value in re.findall(rf"^    (\w+)\s+{NUMBER}$", block, re.M)}
    assert sorted(printed) == sorted(FEATURES)
    assert list(printed.values()) == sorted(printed.values(), key=lambda v: -abs(v))
    assert 0 < prediction < 1 and 0 < expected < 1
    assert abs(prediction - expected) > 0.01  # the shown record has something to explain
    assert sum(printed.values()) == pytest.approx(prediction - expected, abs=1e-5)  # 6 printed decimals

    # Capture: after SIGTERM, one line per invocation, in the layout's hour folders, none left in temp files.
    capture = root / "capture" / ENDPOINT_DEMO_NAME / "AllTraffic"
    files = sorted(capture.rglob("*.jsonl"))
    assert files and not [path for path in capture.rglob("*") if path.name.startswith(".")]
    for path in files:
        assert re.fullmatch(r"\d{4}/\d\d/\d\d/\d\d/\d\d-\d\d-\d{3}-[0-9a-f-]{36}\.jsonl",
                            path.relative_to(capture).as_posix())
        assert str(path) in out
    records = [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]
    assert len(records) == invocations
    assert f"{invocations} captured lines for {invocations} invocations." in out
    ids = sorted(record["eventMetadata"]["inferenceId"] for record in records)
    assert ids == sorted([*(f"demo-{i:04d}" for i in range(ENDPOINT_DEMO_REQUESTS)), "demo-baseline"])

    # The captured output of the shown record is what the caller received: the same attributions.
    shown = next(r for r in records if r["eventMetadata"]["inferenceId"] == inference_id)
    document = json.loads(shown["captureData"]["endpointOutput"]["data"])
    captured = {f["feature_header"]: f["attributions"][0]["attribution"][0]
                for f in document["explanations"]["kernel_shap"][0]}
    assert captured == pytest.approx(printed, abs=1e-6)
    assert float(document["predictions"]["data"].split(",")[1]) == pytest.approx(prediction, abs=1e-6)
