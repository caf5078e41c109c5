"""SHAP checkpoints are kept per model: a rerun after the model changed recomputes every shard.

The reviewer's case: a job crashes after a few shards, then ``code/inference.py`` is added to the model
folder with a ``predict_fn`` that changes the scores of some records but not of the baseline rows (so the
baseline scores, the only model output the fingerprint saw, stay the same). The rerun must explain every
record with the new model. ``container.model_identity`` names the model by its files, URL or image.
"""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from analyzer.config import load_config
from analyzer.explain import shards
from container.model_identity import files_digest, model_identity
from tests import test_explain_job as tabular
from tests.conftest import JobRoot, run_crashing_after_shards

NUM_SAMPLES = 14
BASELINE = [[0.0] * 6]
# Scores change only for records with a large f0: the baseline row (f0 = 0) scores as before.
CHANGED_MODEL = """
import numpy as np

def predict_fn(data, model):
    data = np.asarray(data, dtype=float)
    return model.predict(data) + 5.0 * (data[:, 0] > 1.0)
"""


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(4 * ((NUM_SAMPLES + 2) * len(BASELINE) + 1)))  # 4 records


def model_job(job: JobRoot) -> pd.DataFrame:
    data = tabular.linear_data(n=20)
    data.loc[:7, "f0"] = 2.0  # the first two shards' records are scored differently by the changed model
    tabular.model_folder_job(job, data, {"baseline": BASELINE, "num_samples": NUM_SAMPLES, "seed": 1})
    return data


def assert_explains(job: JobRoot, scores: np.ndarray) -> None:
    """Efficiency, record by record: the values add up to the model's score minus the expected value."""
    local = tabular.read_local(job).to_numpy()
    expected = job.analysis()["explanations"]["kernel_shap"]["label0"]["expected_value"]
    np.testing.assert_allclose(local.sum(axis=1) + expected, scores, atol=1e-8)


@pytest.mark.slow  # three runs through the built-in model server: ~6 s
def test_a_model_changed_between_crash_and_rerun_recomputes_every_shard(job, monkeypatch, caplog):
    data = model_job(job)
    assert run_crashing_after_shards(job, monkeypatch, 2) == 2
    (job.root / "input" / "model" / "code").mkdir()
    (job.root / "input" / "model" / "code" / "inference.py").write_text(CHANGED_MODEL)
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming" not in caplog.text
    assert "Removing stale SHAP checkpoints" in caplog.text
    model = joblib.load(job.root / "input" / "model" / "model.joblib")
    features = data.drop(columns="y").to_numpy()
    assert_explains(job, model.predict(features) + 5.0 * (features[:, 0] > 1.0))


@pytest.mark.slow  # two runs through the built-in model server
def test_an_unchanged_model_resumes(job, monkeypatch, caplog):
    data = model_job(job)
    assert run_crashing_after_shards(job, monkeypatch, 2) == 2
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming, 2 of 5 shards already done" in caplog.text
    model = joblib.load(job.root / "input" / "model" / "model.joblib")
    assert_explains(job, model.predict(data.drop(columns="y").to_numpy()))


# -- the identity itself -------------------------------------------------------------------------------

def test_files_digest_changes_with_any_file_and_only_then(tmp_path):
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"weights v1")
    (model / "code" / "inference.py").write_text("def predict_fn(data, model): ...")
    first = files_digest(model)
    assert files_digest(model) == first
    (model / "model.joblib").write_bytes(b"weights v2")  # same size, other content
    second = files_digest(model)
    assert second != first
    (model / "model.joblib").rename(model / "other.joblib")
    assert files_digest(model) not in (first, second)
    (model / "other.joblib").rename(model / "model.joblib")
    assert files_digest(model) == second
    (model / "code" / "requirements.txt").write_text("")  # a new empty file counts too
    assert files_digest(model) != second


def test_files_digest_of_a_tarball_and_of_odd_entries(tmp_path):
    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"\x1f\x8b tarball v1")
    first = files_digest(tarball)
    tarball.write_bytes(b"\x1f\x8b tarball v2")
    assert files_digest(tarball) != first
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").write_bytes(b"w")
    (model / "loop").symlink_to(model, target_is_directory=True)  # a link back up: read once, no endless walk
    (model / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(model / "pipe")  # never opened: reading a pipe would block
    before = files_digest(model)
    (model / "weights").write_bytes(b"x")
    assert files_digest(model) != before


def _config(tmp_path: Path, predictor: dict):
    import json

    path = tmp_path / "analysis_config.json"
    path.write_text(json.dumps({"dataset_type": "text/csv", "methods": {"shap": {"baseline": [[0]]}},
                                "predictor": predictor}))
    return load_config(path)


def test_endpoint_identity_is_the_url_without_its_password(tmp_path):
    one = model_identity(_config(tmp_path, {"endpoint_url": "http://user:s3cret@127.0.0.1:8080/a"}), tmp_path)
    assert "s3cret" not in one and "127.0.0.1:8080/a" in one
    assert one == model_identity(_config(tmp_path, {"endpoint_url": "http://user:other@127.0.0.1:8080/a"}), tmp_path)
    assert one != model_identity(_config(tmp_path, {"endpoint_url": "http://user:s3cret@127.0.0.1:8081/a"}), tmp_path)


def test_builtin_server_identity_follows_the_model_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"v1")
    config = _config(tmp_path, {})
    first = model_identity(config, model)
    (model / "model.joblib").write_bytes(b"v2")
    assert model_identity(config, model) != first
