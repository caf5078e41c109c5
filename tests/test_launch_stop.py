"""`lucent launch`: stopped by SIGINT / SIGTERM as a job is, the options a config needs asked for by name,
no empty work folder after success, and --help that a new user can act on. Real processes, moto's S3
server on 127.0.0.1."""

# ruff: noqa: F811 - the fixtures shared with test_launcher.py are imported, then named as test arguments
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from container.demo import MODEL_DEMO_CONFIG, write_demo_job  # noqa: E402
from container.job import SUCCESS_MESSAGE  # noqa: E402
from container.launcher import main  # noqa: E402
from tests.test_job_stop import BLOCKING_SCRIPT, wait_for  # noqa: E402
from tests.test_launcher import endpoint, get_text, keys, s3  # noqa: E402, F401

POST_TRAINING = {**MODEL_DEMO_CONFIG, "methods": {"post_training_bias": {"methods": ["DPPL"]}}}


@pytest.fixture
def model_inputs(tmp_path):
    """A local config, dataset and model folder whose model blocks once LUCENT_TEST_MARKER is set."""
    root = write_demo_job(tmp_path / "job", n_rows=200, seed=5, config=POST_TRAINING, with_model=True)
    (root / "input" / "model" / "code").mkdir()
    (root / "input" / "model" / "code" / "inference.py").write_text(BLOCKING_SCRIPT)
    return root / "input"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_launch_publishes_its_message_and_keeps_the_earlier_results(s3, model_inputs, tmp_path, signum):
    s3.put_object(Bucket="jobs", Key="out/analysis.json", Body=b"old analysis.json")
    s3.put_object(Bucket="jobs", Key="out/message", Body=SUCCESS_MESSAGE.encode())
    marker = tmp_path / "reached"
    process = subprocess.Popen(
        [sys.executable, "-m", "container.cli", "launch", "--config", str(model_inputs / "config"),
         "--data", str(model_inputs / "data"), "--model", str(model_inputs / "model"), "--output", "s3://jobs/out"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "LUCENT_TEST_MARKER": str(marker)})
    try:
        wait_for(marker, process)
        assert keys(s3, "out/") == ["out/analysis.json"]  # the earlier message went when the launch started
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    expected = (f"Stopped: the job was stopped ({name}) before it finished; s3://jobs/out still holds an earlier "
                "run's results (analysis.json, ...), not this run's: this run published nothing")
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert get_text(s3, "out/message") == expected + "\n"
    assert f"message: {expected}" in stdout
    assert get_text(s3, "out/analysis.json") == "old analysis.json"


@pytest.mark.parametrize("missing", ["--model", "--data"])
def test_a_launch_without_an_input_the_config_needs_names_the_option(model_inputs, tmp_path, capsys, missing):
    arguments = {"--config": model_inputs / "config", "--data": model_inputs / "data", "--model": model_inputs / "model"}
    del arguments[missing]
    results = tmp_path / "results"
    code = main([*[str(x) for pair in arguments.items() for x in pair], "--output", str(results),
                 "--work-dir", str(tmp_path)])
    message = (results / "message").read_text()
    assert code == 1
    expected = {"--model": "ClientError: the config asks for predictions: pass --model URI (the model folder or "
                           "model.tar.gz, on S3 or local), or set predictor.endpoint_url",
                "--data": "ClientError: the config has no dataset_uri: pass --data URI"}[missing]
    assert message.startswith(expected), message
    assert "lucent-launch-" not in message  # no temporary folder the user never saw
    staged = [p.name for p in (next(tmp_path.glob("lucent-launch-*"), tmp_path) / "input").glob("*")]
    assert staged in ([], ["config"])  # the check ran before the data or the model was staged
    capsys.readouterr()


def test_a_successful_local_launch_leaves_no_empty_work_folder(tmp_path, capsys):
    config = {**MODEL_DEMO_CONFIG, "methods": {"shap": {"num_clusters": 1, "num_samples": 20, "seed": 0}}}
    inputs = write_demo_job(tmp_path / "job", n_rows=60, seed=2, config=config, with_model=True) / "input"
    results = tmp_path / "results"
    code = main(["--config", str(inputs / "config"), "--data", str(inputs / "data"), "--model", str(inputs / "model"),
                 "--output", str(results)])
    assert code == 0, (results / "message").read_text()
    assert json.loads((results / "analysis.json").read_text())["explanations"]["kernel_shap"]
    assert not (results / ".lucent-work").exists(), sorted(p.name for p in results.iterdir())
    capsys.readouterr()


def help_text(*command: str) -> str:
    completed = subprocess.run([sys.executable, "-m", "container.cli", *command, "--help"], capture_output=True,
                               text=True, timeout=60, check=True)
    return completed.stdout


def test_launch_help_has_an_example_and_what_a_new_user_needs():
    text = help_text("launch")
    assert "``" not in text
    assert "example" in text and "lucent launch --config s3://" in text
    assert "AWS_ENDPOINT_URL_S3" in text and "AWS_ENDPOINT_URL" in text
    assert "--model is needed when the config asks for predictions" in text
    assert "Stopped:" in text and "exit codes" in text


def test_run_help_names_the_folders_the_model_script_the_codes_and_the_message():
    text = help_text("run")
    for fragment in ("DIR/input/data/", "DIR/input/model/", "SAGEMAKER_PROGRAM", "built-in predict",
                     "DIR/message", "exit 0", "exit 1", "exit 2", "Stopped:", "example", "lucent run --processing-root"):
        assert fragment in text, fragment
    assert "``" not in text
