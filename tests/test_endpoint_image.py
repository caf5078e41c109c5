"""``lucent endpoint`` and the image, for real: the endpoint inside the Lucent image (``docker run ...
lucent endpoint``), and the endpoint on the host in front of a model image (``--image``).

Reuses tests/test_container.py's engine and image fixtures (the image build is cached by the engine,
so a second module costs seconds, not the first build's minutes).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import urllib3
from sklearn.linear_model import LogisticRegression

from container.engine import remove_container
from tests import test_container
from tests.test_container import MODEL_DOCKERFILE, MODEL_IMAGE, build_from_text
from tests.test_endpoint_server import NAME, runtime

pytestmark = pytest.mark.slow
engine, image = test_container.engine, test_container.image  # module fixtures: the engine, the built image
new_model_containers = test_container.new_model_containers
REPO = Path(__file__).resolve().parents[1]
CONFIG = {"ProductionVariants": [{"VariantName": "Blue", "ModelName": "m"}],
          "ExplainerConfig": {"ClarifyExplainerConfig": {
              "InferenceConfig": {"FeatureHeaders": ["a", "b", "c", "d"], "LabelHeaders": ["no", "yes"]},
              "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": "0,0,0,0"}}}}}
RECORD = np.array([0.5, 1.0, -2.0, 3.0])


def _model_folder(folder: Path) -> LogisticRegression:
    features = np.random.default_rng(3).normal(size=(200, 4))
    model = LogisticRegression().fit(features, (features[:, 0] - features[:, 2] > 0).astype(int))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    joblib.dump(model, folder / "model.joblib")
    (folder / "model.joblib").chmod(0o644)
    return model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_explained(url: str, model: LogisticRegression) -> None:
    response = runtime(url).invoke_endpoint(EndpointName=NAME, Body=",".join(map(str, RECORD)), ContentType="text/csv",
                                            Accept="text/csv")
    assert response["InvokedProductionVariant"] == "Blue"
    document = json.loads(response["Body"].read())
    prediction = [float(v) for v in document["predictions"]["data"].split(",")]
    np.testing.assert_allclose(prediction, model.predict_proba(RECORD[None])[0], rtol=1e-6)  # the image's sklearn
    (entry,) = document["explanations"]["kernel_shap"]
    assert [feature["feature_header"] for feature in entry] == ["a", "b", "c", "d"]
    total = np.sum([feature["attributions"][0]["attribution"] for feature in entry], axis=0)
    np.testing.assert_allclose(total, np.array(prediction) - model.predict_proba(np.zeros((1, 4)))[0], atol=1e-6)


def test_the_image_runs_the_endpoint(engine, image, tmp_path: Path) -> None:
    model = _model_folder(tmp_path / "model")
    (tmp_path / "config").mkdir(mode=0o755)
    (tmp_path / "config" / "endpoint-config.json").write_text(json.dumps(CONFIG))
    port = _free_port()
    container = engine.containers.run(
        image, entrypoint=["lucent"], detach=True,
        command=["endpoint", "--config", "/opt/ml/config/endpoint-config.json", "--endpoint-name", NAME,
                 "--model-dir", "/opt/ml/model", "--port", "8080"],  # host: LUCENT_HOST=0.0.0.0 from the image
        volumes={str(tmp_path / "model"): {"bind": "/opt/ml/model", "mode": "ro"},
                 str(tmp_path / "config"): {"bind": "/opt/ml/config", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while b"in service at http://0.0.0.0:8080" not in container.logs():
            container.reload()
            assert container.status != "exited", container.logs().decode()[-2000:]
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.2)
        _check_explained(url, model)
        assert urllib3.PoolManager().request("GET", f"{url}/ping").status == 200
        container.stop(timeout=30)  # SIGTERM: drain, flush, stop the model server, exit 0
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()[-2000:]
    finally:
        remove_container(container)


def test_the_endpoint_in_front_of_a_model_image(engine, image, tmp_path: Path, new_model_containers) -> None:
    model = _model_folder(tmp_path / "model")
    model_image = build_from_text(engine, MODEL_DOCKERFILE, MODEL_IMAGE, tmp_path / "model-image")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "endpoint", "--config", str(tmp_path / "config.json"),
                                "--endpoint-name", NAME, "--image", model_image, "--model-dir", str(tmp_path / "model"),
                                "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        url = None
        for line in process.stderr:  # ends if the process exits
            if found := re.search(r"in service at (http://\S+)", line):
                url = found.group(1)
                break
        assert url is not None, "the endpoint did not start"
        _check_explained(url, model)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert new_model_containers() == [], "the model container must be removed when the endpoint stops"
