"""The image, for real: the job in a container with mounted volumes, and model images as sidecars.

Brings up the machine's container engine with ``shared/tools/container-engine`` (skipped, with the
reason, where that tool is absent), builds the Lucent image on ``$LUCENT_BASE_IMAGE`` once for the
module, and compares every number the container writes with the same job run on the host.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from container.demo import MODEL_DEMO_CONFIG, write_demo_job
from container.engine import container_gone, remove_container
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENGINE_TOOLS = (REPO.parent / "shared" / "tools" / "container-engine", Path("/work/shared/tools/container-engine"))
IMAGE = "localhost/lucent:test"
MODEL_IMAGE = "localhost/lucent-model:test"
BROKEN_MODEL_IMAGE = "localhost/lucent-model-broken:test"
MODEL_ROLE = {"label": "lucent.role=model"}
# The model-image contract SageMaker hosting uses: the container is started with the argument `serve`.
MODEL_DOCKERFILE = f"""FROM {IMAGE}
ENTRYPOINT ["/bin/sh", "-c", "[ \\"$0\\" = serve ] && exec lucent serve-model --model-dir /opt/ml/model; exec \\"$0\\" \\"$@\\""]
"""
BROKEN_DOCKERFILE = f"""FROM {IMAGE}
ENTRYPOINT ["/bin/sh", "-c", "echo 'model weights missing' >&2; exit 3"]
"""
NO_REPORT_CONFIG = {**MODEL_DEMO_CONFIG, "methods": {k: v for k, v in MODEL_DEMO_CONFIG["methods"].items()
                                                     if k != "report"}}


@pytest.fixture(scope="session")
def engine():
    """A Docker SDK client on the machine's engine, with DOCKER_HOST exported for the code under test."""
    tool = next((path for path in ENGINE_TOOLS if path.is_file()), None)
    if tool is None:
        pytest.skip(f"no container-engine tool at {' or '.join(map(str, ENGINE_TOOLS))}")
    docker = pytest.importorskip("docker")
    subprocess.run([str(tool), "up"], check=True, capture_output=True, timeout=900)
    exported = subprocess.run([str(tool), "env"], check=True, capture_output=True, text=True).stdout
    with pytest.MonkeyPatch.context() as patch:
        for word in shlex.split(exported):  # `export A=1 B=2`, possibly over several lines
            name, equals, value = word.partition("=")
            if equals:
                patch.setenv(name, value)
        client = docker.from_env()
        yield client
        client.close()


@pytest.fixture(scope="session")  # built once per test run: test_endpoint_image.py uses it too
def image(engine) -> str:
    """The Lucent image, built from this work tree on the local base image."""
    base = os.environ.get("LUCENT_BASE_IMAGE", "python:3.11-slim")
    engine.images.build(path=str(REPO), tag=IMAGE, buildargs={"BASE_IMAGE": base}, network_mode="host", rm=True)
    return IMAGE


@pytest.fixture
def new_model_containers(engine):
    """A function listing the model containers that were not there when the test started: the engine may hold
    an earlier run's (a run stopped by the engine's own failure left three here), which are not this test's."""
    before = set(model_containers(engine))
    return lambda: [container for container in model_containers(engine) if container not in before]


def build_from_text(engine, dockerfile: str, tag: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(dockerfile)
    engine.images.build(path=str(folder), tag=tag, rm=True)
    return tag


def model_containers(engine) -> list[str]:
    """The model containers that exist now. One whose removal completes while the list is read is not one:
    the engine lists it and then answers "no such container" (podman: 500, Docker: 404) when it is inspected
    (seen once, right after another test's container was removed)."""
    from docker.errors import APIError

    found = []
    for entry in engine.api.containers(all=True, filters=MODEL_ROLE):
        try:
            found.append(engine.containers.get(entry["Id"]).short_id)
        except APIError as error:
            if not container_gone(error):
                raise
    return found


def assert_same_numbers(actual, expected, where: str = "analysis") -> None:
    """Same structure, same strings, numbers equal to 1e-12 (NaN equal to NaN)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_numbers(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_numbers(a, e, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, int | float), where
        assert (math.isnan(actual) and math.isnan(expected)) or math.isclose(actual, expected, rel_tol=1e-12,
                                                                               abs_tol=1e-12), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def host_job(tmp_path_factory) -> JobRoot:
    """The full demo job (model through the built-in sidecar, report included) run on the host."""
    root = write_demo_job(tmp_path_factory.mktemp("host") / "job", n_rows=400, seed=11, with_model=True)
    job = JobRoot(root)
    assert job.run() == 0, job.message
    return job


def run_in_container(engine, image: str, job_root: Path, output: Path, message_dir: Path) -> tuple[int, str]:
    """``docker run`` as docs/running.md shows it: inputs read-only, output and message writable."""
    for folder in (output, message_dir):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # the image runs as the unprivileged user `lucent` (uid 1000)
    inputs = job_root / "input"
    volumes = {str(inputs / name): {"bind": f"/opt/ml/processing/input/{name}", "mode": "ro"}
               for name in ("config", "data", "model")}
    volumes[str(output)] = {"bind": "/opt/ml/processing/output", "mode": "rw"}
    volumes[str(message_dir)] = {"bind": "/opt/ml/output", "mode": "rw"}
    container = engine.containers.run(image, detach=True, volumes=volumes)
    try:
        code = container.wait(timeout=600)["StatusCode"]
        return code, container.logs().decode("utf-8", "replace")
    finally:
        remove_container(container)


def test_demo_job_in_the_container_matches_the_host(engine, image, host_job, tmp_path):
    output, message_dir = tmp_path / "output", tmp_path / "message"
    code, logs = run_in_container(engine, image, host_job.root, output, message_dir)
    assert code == 0, logs
    assert (message_dir / "message").read_text().strip() == SUCCESS_MESSAGE
    assert "Scoring the model in process" in logs  # predictions came from the model folder inside the container
    assert JobRoot(tmp_path).output_files() == host_job.output_files()  # SHAP's files too, when configured
    assert (output / "report.pdf").read_bytes()[:5] == b"%PDF-"  # Pango is in the image
    analysis = json.loads((output / "analysis.json").read_text())
    assert_same_numbers(analysis, host_job.analysis())


def test_bad_config_in_the_container_exits_1_with_a_client_error(engine, image, tmp_path):
    job = JobRoot(tmp_path / "job")
    job.write_config({"dataset_type": "text/csv"})
    job.write_data("1,2\n")
    (job.root / "input" / "model").mkdir()
    code, logs = run_in_container(engine, image, job.root, tmp_path / "output", tmp_path / "message")
    assert code == 1, logs
    assert (tmp_path / "message" / "message").read_text().startswith("ClientError: ")
    assert list((tmp_path / "output").iterdir()) == []


def with_model_image(job: JobRoot, image_uri: str) -> None:
    config = json.loads(json.dumps(NO_REPORT_CONFIG))
    config["predictor"]["image_uri"] = image_uri
    job.write_config(config)


@pytest.fixture
def image_job(host_job, tmp_path) -> JobRoot:
    """The host job's inputs, copied, with no report (the comparison is on analysis.json)."""
    shutil.copytree(host_job.root / "input", tmp_path / "job" / "input")
    return JobRoot(tmp_path / "job")


def test_model_image_as_sidecar_matches_the_builtin_server(engine, image, host_job, image_job, tmp_path,
                                                           new_model_containers):
    model_image = build_from_text(engine, MODEL_DOCKERFILE, MODEL_IMAGE, tmp_path / "model-image")
    with_model_image(image_job, model_image)
    assert image_job.run() == 0, image_job.message
    assert_same_numbers(image_job.analysis(), host_job.analysis())
    assert new_model_containers() == [], "the model container must be removed after the job"


def test_model_image_that_does_not_exist(engine, image_job, new_model_containers):
    with_model_image(image_job, "localhost/lucent-no-such-model:missing")
    assert image_job.run() == 1
    assert image_job.message.startswith("ClientError: predictor.image_uri: ")
    assert "lucent-no-such-model" in image_job.message
    assert image_job.output_files() == []
    assert new_model_containers() == []


def test_model_image_that_exits_at_once(engine, image, image_job, tmp_path, new_model_containers):
    broken = build_from_text(engine, BROKEN_DOCKERFILE, BROKEN_MODEL_IMAGE, tmp_path / "broken-image")
    with_model_image(image_job, broken)
    assert image_job.run() == 1
    assert "exited (code 3)" in image_job.message, image_job.message
    assert "model weights missing" in image_job.message
    assert image_job.output_files() == []
    assert new_model_containers() == []


def test_launch_with_image_runs_the_job_in_the_container(image, host_job, tmp_path):
    from container.launcher import main as launch

    inputs = host_job.root / "input"
    code = launch(["--config", str(inputs / "config"), "--data", str(inputs / "data"), "--model", str(inputs / "model"),
                   "--output", str(tmp_path / "results"), "--image", image])
    assert code == 0, (tmp_path / "results" / "message").read_text()
    assert_same_numbers(json.loads((tmp_path / "results" / "analysis.json").read_text()), host_job.analysis())
    assert (tmp_path / "results" / "analysis.json").stat().st_uid == os.getuid()  # the results are the caller's
