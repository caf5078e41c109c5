"""Which script serves a model folder (SAGEMAKER_PROGRAM, code/inference.py, or the only script in code/),
and the cheap folder checks `lucent validate` runs with the same discovery."""

from __future__ import annotations

import json
import logging

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from container.demo import write_demo_job
from container.sidecar.model import load_handlers, model_folder_problem
from tests.conftest import JobRoot

# The script of seed 001's SKLearnModel(entry_point="predictor.py"): a model_fn and a predict_fn that
# answer differently from the bare model file (a constant shift), so the test sees which one ran.
PREDICTOR = """\
import os, joblib
def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
def predict_fn(data, model):
    return model.predict(data) + 1000.0
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    joblib.dump(LinearRegression().fit(x, x @ [1.0, 2.0, 3.0]), tmp_path / "model.joblib")
    (tmp_path / "code").mkdir()
    return tmp_path


ROWS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_the_only_script_in_code_is_the_entry_point(folder, caplog):
    (folder / "code" / "predictor.py").write_text(PREDICTOR)
    with caplog.at_level(logging.INFO, logger="lucent.sidecar"):
        handlers = load_handlers(folder)
    np.testing.assert_allclose(json.loads(handlers.score(ROWS, "application/json")), [1001.0, 1002.0])
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "predictor.py" in r.getMessage()]
    assert info and "SAGEMAKER_PROGRAM" in info[0], caplog.text


def test_several_scripts_and_no_inference_py_warn_and_serve_the_model_file(folder, caplog):
    (folder / "code" / "predictor.py").write_text(PREDICTOR)
    (folder / "code" / "train.py").write_text("raise SystemExit('a training script must not be imported')\n")
    with caplog.at_level(logging.INFO, logger="lucent.sidecar"):
        handlers = load_handlers(folder)
    np.testing.assert_allclose(json.loads(handlers.score(ROWS, "application/json")), [1.0, 2.0], atol=1e-9)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    for fragment in ("predictor.py, train.py", "SAGEMAKER_PROGRAM", "the built-in predict (model.predict / predict_proba)"):
        assert fragment in warnings[0], warnings[0]
    assert "predict_fn" not in warnings[0]


def test_inference_py_and_sagemaker_program_come_first(folder, monkeypatch):
    (folder / "code" / "predictor.py").write_text(PREDICTOR)
    (folder / "code" / "inference.py").write_text(PREDICTOR.replace("+ 1000.0", "+ 2000.0"))
    assert json.loads(load_handlers(folder).score(ROWS, "application/json")) == pytest.approx([2001.0, 2002.0])
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "predictor.py")
    assert json.loads(load_handlers(folder).score(ROWS, "application/json")) == pytest.approx([1001.0, 1002.0])


def test_model_folder_problems_are_found_without_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    assert model_folder_problem(tmp_path / "absent") == f"model folder {tmp_path / 'absent'} does not exist"
    (tmp_path / "empty").mkdir()
    assert model_folder_problem(tmp_path / "empty").startswith(f"model folder {tmp_path / 'empty'} is empty: expected ")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my model")
    (notes / "config.json").write_text("{}")
    assert model_folder_problem(notes).startswith(f"no model file found in {notes}, which holds README.md, "
                                                  "config.json: expected ")
    (notes / "a.joblib").write_bytes(b"not even a pickle: not opened")
    assert model_folder_problem(notes) is None
    (notes / "b.pkl").write_bytes(b"")
    assert model_folder_problem(notes).startswith(f"several model files in {notes}: a.joblib, b.pkl")
    (notes / "code").mkdir()
    (notes / "code" / "predictor.py").write_text(PREDICTOR)
    assert model_folder_problem(notes) is None  # its model_fn decides
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "serve.py")
    assert model_folder_problem(notes) == f"SAGEMAKER_PROGRAM=serve.py but {notes / 'code' / 'serve.py'} does not exist"
    (tmp_path / "tarball").mkdir()
    (tmp_path / "tarball" / "model.tar.gz").write_bytes(b"not opened by the check")
    assert model_folder_problem(tmp_path / "tarball") is None


@pytest.fixture
def model_job(tmp_path) -> JobRoot:
    return JobRoot(write_demo_job(tmp_path / "job", n_rows=60, seed=3, with_model=True))


@pytest.mark.parametrize("layout", ["absent", "empty", "notes"])
def test_validate_reports_a_model_folder_that_cannot_work(model_job, capsys, layout):
    model = model_job.root / "input" / "model"
    for path in model.iterdir():
        path.unlink()
    if layout == "absent":
        model.rmdir()
    elif layout == "notes":
        (model / "README.txt").write_text("the model is elsewhere")
        (model / "config.json").write_text("{}")
    assert model_job.run(command="validate") == 1
    out = capsys.readouterr().out
    assert "OK: the job would start" not in out
    expected = {"absent": f"model folder {model} does not exist", "empty": f"model folder {model} is empty",
                "notes": f"no model file found in {model}, which holds README.txt, config.json"}[layout]
    assert f"  - the model: {expected}" in out, out


def test_endpoint_name_is_named_in_validate_and_run(model_job, capsys):
    config = json.loads((model_job.config_dir / "analysis_config.json").read_text())
    config["predictor"] = {**config["predictor"], "endpoint_name": "my-prod-endpoint"}
    model_job.write_config(config)
    for path in (model_job.root / "input" / "model").iterdir():
        path.unlink()
    (model_job.root / "input" / "model").rmdir()
    expected = ("predictor.endpoint_name 'my-prod-endpoint' names a SageMaker endpoint, which cannot be called here: "
                "set predictor.endpoint_url")
    assert model_job.run(command="validate") == 1
    assert f"  - {expected}" in capsys.readouterr().out
    assert model_job.run() == 1
    assert model_job.message.startswith(f"ClientError: {expected}"), model_job.message


def test_validate_names_the_key_of_an_s3_path_under_run(model_job, capsys):
    config = json.loads((model_job.config_dir / "analysis_config.json").read_text())
    config["methods"]["shap"] = {"baseline": "s3://bucket/abalone/baseline.csv", "num_samples": 20}
    model_job.write_config(config)
    expected = ("methods.shap.baseline: s3://bucket/abalone/baseline.csv: S3 URIs are read by `lucent launch`, which "
                "downloads them")
    assert model_job.run(command="validate") == 1
    out = capsys.readouterr().out
    assert out.count("s3://bucket/abalone/baseline.csv") == 1 and f"  - {expected}" in out, out
    assert "not available yet" not in out
    assert model_job.run() == 1
    assert model_job.message.startswith(f"ClientError: {expected}"), model_job.message
