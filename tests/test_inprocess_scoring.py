"""In-process scoring: a model folder loaded in the job's processes gives the built-in server's scores to
the bit, for every kind of model folder the server loads, and the job then starts no server at all."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest

from analyzer.config import Predictor, parse_config
from analyzer.errors import ConfigError
from analyzer.media import CSV, JSON, NPY
from analyzer.predict import InProcessClient, ModelClient, ModelEndpoint, ModelError
from analyzer.predict.inprocess import forget_model, scoring_threads
from container.demo import MODEL_DEMO_CONFIG, write_demo_job
from container.model_endpoint import InProcessModel, scores_in_process
from container.sidecar import start_model_server
from tests.conftest import JobRoot

N_FEATURES = 6
NAMES = [f"f{i}" for i in range(N_FEATURES)]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(int)
    return x, y


def _sklearn_joblib(folder: Path) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    joblib.dump(GradientBoostingClassifier(n_estimators=30, random_state=0).fit(*_data(500)), folder / "model.joblib")


def _plain_pickle(folder: Path) -> None:
    from sklearn.ensemble import RandomForestRegressor

    x, y = _data(500)
    with (folder / "model.pkl").open("wb") as handle:  # predict (no predict_proba): one score per record
        pickle.dump(RandomForestRegressor(n_estimators=20, random_state=0).fit(x, y + x[:, 4]), handle)


def _xgboost(folder: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = _data(500)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "seed": 0}, xgb.DMatrix(x, label=y), 30)
    booster.save_model(str(folder / "model.ubj"))


def _lightgbm(folder: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    x, y = _data(500)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 0}, lgb.Dataset(x, y), 30)
    booster.save_model(str(folder / "model.txt"))


INFERENCE_PY = '''
import io
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "weights.joblib"))


def input_fn(body, content_type):
    assert content_type == "text/csv", content_type
    return np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2)


def predict_fn(data, model, context):
    if np.any(data[:, 0] == 999):
        raise ValueError("feature 0 must not be 999")
    offset = float((context.custom_attributes or "offset=0").split("=")[1])
    return model.predict_proba(data)[:, 1] * 0.5 + offset


def output_fn(prediction, accept):
    return json.dumps({"scores": prediction.tolist()}), "application/json"
'''


def _inference_script(folder: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    joblib.dump(LogisticRegression().fit(*_data(500)), folder / "weights.joblib")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(textwrap.dedent(INFERENCE_PY))


NPY_BOTH_WAYS = Predictor(content_type=NPY, accept_type=NPY)  # what the job sends to default handlers
KINDS = {
    "sklearn-joblib": (_sklearn_joblib, NPY_BOTH_WAYS),
    "sklearn-joblib-csv": (_sklearn_joblib, Predictor(content_type=CSV, accept_type=CSV, probability=1)),
    "pickle": (_plain_pickle, NPY_BOTH_WAYS),
    "xgboost": (_xgboost, NPY_BOTH_WAYS),
    "lightgbm": (_lightgbm, NPY_BOTH_WAYS),
    "inference.py": (_inference_script, Predictor(content_type=CSV, accept_type=JSON, probability="scores",
                                                  custom_attributes="offset=0.25")),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_process_scores_are_the_servers_to_the_bit(tmp_path, kind):
    make, predictor = KINDS[kind]
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    rows, _ = _data(9_001, seed=1)  # more than one batch per thread: split, run side by side, reassembled
    loader = InProcessModel(str(folder), str(folder))
    try:
        with InProcessClient(loader, predictor, NAMES, max_records_per_request=2_000) as client:
            local = client.predict(rows)
            assert client.stats.requests >= 5
    finally:
        forget_model(loader)
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=120)
        with ModelClient(server.url, predictor, NAMES, max_records_per_request=2_000) as client:
            served = client.predict(rows)
    assert local.scores.shape[0] == len(rows)
    assert local.scores.dtype == served.scores.dtype
    np.testing.assert_array_equal(local.scores, served.scores)
    assert local.scores.tobytes() == served.scores.tobytes()
    assert np.ptp(local.scores) > 0.1  # a real model's varied scores, not a constant


def test_the_model_is_called_with_the_rows_as_they_are_and_loaded_once_per_process(tmp_path):
    """Default handlers and npy: no encoding; the predict function sees the client's own rows' values."""
    folder = tmp_path / "model"
    folder.mkdir()
    _sklearn_joblib(folder)
    loader = InProcessModel(str(folder), str(folder))
    endpoint = ModelEndpoint("", NPY_BOTH_WAYS, tuple(NAMES), local=loader)
    rows, _ = _data(100, seed=2)
    try:
        with endpoint.client() as first, endpoint.client(processes=2) as second:
            assert first.model is second.model  # one load per process
            first.model.invoke = None  # no request body is made: the rows go to predict_fn as they are
            assert first.concurrency == scoring_threads(1) and second.concurrency == scoring_threads(2)
            model = joblib.load(folder / "model.joblib")
            np.testing.assert_array_equal(first.predict(rows).scores, model.predict_proba(rows))
        assert pickle.loads(pickle.dumps(endpoint)) == endpoint  # workers get it as plain data
    finally:
        forget_model(loader)


def test_a_refused_record_is_named_as_the_server_path_names_it(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    _inference_script(folder)
    rows, _ = _data(50, seed=3)
    rows[37, 0] = 999
    predictor = KINDS["inference.py"][1]
    loader = InProcessModel(str(folder), "the-model-folder")
    try:
        with InProcessClient(loader, predictor, NAMES) as client, pytest.raises(ModelError) as caught:
            client.predict(rows)
    finally:
        forget_model(loader)
    assert caught.value.row == 37
    assert caught.value.reason == "predict_fn failed: ValueError: feature 0 must not be 999"
    assert "the-model-folder (in process)" in str(caught.value)


def test_xgboost_and_lightgbm_use_one_thread_per_call_in_process(tmp_path):
    """The client runs one batch per core; each booster call must not start a thread per core too."""
    pytest.importorskip("xgboost")
    pytest.importorskip("lightgbm")
    for make in (_xgboost, _lightgbm):
        folder = tmp_path / make.__name__
        folder.mkdir()
        make(folder)
        loaded = InProcessModel(str(folder), str(folder)).load()
        model = loaded.handlers.model
        if make is _xgboost:
            config = json.loads(model.booster.save_config())
            assert config["learner"]["generic_param"]["nthread"] == "1"
        else:
            assert model.threads == 1


def _config(**predictor) -> dict:
    return {"dataset_type": "text/csv", "headers": ["y", "a"], "label": "y",
            "methods": {"shap": {"baseline": [[0]]}}, "predictor": predictor}


def test_lucent_scoring_is_validated_and_decides_the_path():
    assert scores_in_process(parse_config(_config()))
    assert scores_in_process(parse_config(_config(lucent_scoring="in_process")))
    assert not scores_in_process(parse_config(_config(lucent_scoring="server")))
    assert not scores_in_process(parse_config(_config(image_uri="model:1")))  # images: always a server
    assert not scores_in_process(parse_config(_config(endpoint_url="http://h:1")))
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(lucent_scoring="servr"))
    assert "predictor.lucent_scoring" in str(caught.value) and "did you mean 'server'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(lucent_scoring="in_process", image_uri="model:1"))
    assert "predictor.lucent_scoring" in str(caught.value) and "predictor.image_uri" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(lucent_scorng="server"))
    assert "did you mean 'lucent_scoring'" in str(caught.value)


def test_a_job_scored_in_process_starts_no_server_and_matches_the_server_job(tmp_path, monkeypatch):
    """SHAP (in two worker processes that load the model themselves), PDP and post-training bias."""
    import container.sidecar

    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "2")
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", "20000")  # several shards: the worker pool runs
    results = {}
    for scoring in ("server", "in_process"):
        root = tmp_path / scoring
        config = {**MODEL_DEMO_CONFIG, "predictor": {**MODEL_DEMO_CONFIG["predictor"], "lucent_scoring": scoring}}
        write_demo_job(root, n_rows=300, seed=5, config=config, with_model=True)
        job = JobRoot(root)
        if scoring == "in_process":
            def no_server(*args, **kwargs):
                raise AssertionError("the model server must not start when scoring in process")

            monkeypatch.setattr(container.sidecar, "start_model_server", no_server)
        assert job.run() == 0, job.message
        results[scoring] = job.analysis()
    assert results["in_process"] == results["server"]
    shap = results["in_process"]["explanations"]["kernel_shap"]
    assert shap and results["in_process"]["post_training_bias_metrics"]


def _no_folder(model: Path) -> None:
    (model / "model.joblib").unlink()
    model.rmdir()


def _script(source: str):
    def write(model: Path) -> None:
        (model / "code").mkdir()
        (model / "code" / "inference.py").write_text(source)
    return write


NAN_SCORES = ("import numpy as np\n"
              "def predict_fn(data, model):\n"
              "    scores = model.predict_proba(data)\n"
              "    scores[[5, 42], 1] = np.nan\n"
              "    return scores\n")
FAULTS = {
    "no folder": (_no_folder, ("input/model", "does not exist")),
    "empty folder": (lambda model: (model / "model.joblib").unlink(), ("model folder unloadable", "empty")),
    "not a pickle": (lambda model: (model / "model.joblib").write_bytes(b"not a pickle"),
                     ("model folder unloadable: cannot load model.joblib",)),
    "script raising": (_script("def predict_fn(data, model):\n    raise RuntimeError('scaler not fitted')\n"),
                       ("(in process) failed on the record at row 0", "predict_fn failed: RuntimeError: scaler not fitted")),
    "model_fn raising": (_script("def model_fn(model_dir):\n    raise OSError('weights missing')\n"),
                         ("model folder unloadable: model_fn in inference.py failed: OSError: weights missing",)),
    "nan scores": (_script(NAN_SCORES), ("for 2 of 400 record(s), at dataset rows 5 (nan), 42 (nan)",)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_model_folder_fails_the_job_in_process_with_the_servers_reason(tmp_path, fault):
    """The user's to fix (exit 1, ClientError), no outputs, and the message the server path gives."""
    write_demo_job(tmp_path / "job", n_rows=400, seed=5, with_model=True)
    job = JobRoot(tmp_path / "job")
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"] = {"post_training_bias": {"methods": ["DPPL"]}}  # predictions only: quick
    job.write_config(config)
    setup, fragments = FAULTS[fault]
    setup(job.root / "input" / "model")
    assert job.run() == 1
    assert job.message.startswith("ClientError: "), job.message
    for fragment in fragments:
        assert fragment in job.message, (fragment, job.message)
    assert job.output_files() == []


def test_sigterm_while_the_model_runs_in_process_stops_the_job(tmp_path):
    """SIGTERM raises JobStopped in the main thread, here inside predict_fn, whose stage wraps every
    error: it must stop the job, not count as the model refusing a record (which would be retried)."""
    write_demo_job(tmp_path / "job", n_rows=400, seed=5, with_model=True)
    job = JobRoot(tmp_path / "job")
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"] = {"post_training_bias": {"methods": ["DPPL"]}}
    job.write_config(config)
    # What the job's SIGTERM handler does, at the moment the model runs (a real signal's handler may run
    # a few bytecodes later, outside the stage, which would not test the stage's wrapping).
    _script("from container.job import raise_job_stopped\n"
            "def predict_fn(data, model):\n"
            "    raise_job_stopped(15, None)\n")(job.root / "input" / "model")
    assert job.run() != 0
    assert "stopped (SIGTERM)" in job.message, job.message
    assert job.output_files() == []


@pytest.mark.parametrize(("n", "size"), [(2000, 1941), (10, 3), (9, 3), (1, 100), (30_162, 1941), (7, 7)])
def test_shards_are_cut_in_equal_parts_of_at_most_the_size(n, size):
    from analyzer.explain.shards import even_bounds

    bounds = even_bounds(n, size)
    lengths = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n
    assert len(lengths) == -(-n // size)  # as few shards as the size allows
    assert lengths.max() <= size and lengths.max() - lengths.min() <= 1


def test_in_process_scoring_starts_workers_only_for_enough_rows(monkeypatch):
    from analyzer.explain.shards import IN_PROCESS_ROWS_PER_WORKER, worker_count

    monkeypatch.delenv("LUCENT_SHAP_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert worker_count(8) == 4  # a server scores: one worker per core
    assert worker_count(8, IN_PROCESS_ROWS_PER_WORKER - 1, IN_PROCESS_ROWS_PER_WORKER) == 1  # the job's process
    assert worker_count(8, 3 * IN_PROCESS_ROWS_PER_WORKER, IN_PROCESS_ROWS_PER_WORKER) == 3
    assert worker_count(2, 100 * IN_PROCESS_ROWS_PER_WORKER, IN_PROCESS_ROWS_PER_WORKER) == 2  # shards bound it
    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "3")
    assert worker_count(8, 10, IN_PROCESS_ROWS_PER_WORKER) == 3  # the setting wins


def test_shard_progress_counts_blocks_of_the_callers_size():
    """``on_done(k)`` for each block of ``size`` records the finished shards cover, in any finish order."""
    from analyzer.explain.shards import _BlockCounter, even_bounds

    bounds, size, reported = even_bounds(5000, 1941), 1941, []
    counter = _BlockCounter(bounds, size, reported.append)
    for index, covered in zip([2, 0, 1], [[], [0], [0, 1, 2]], strict=True):
        counter(index)
        assert reported == covered
    assert sum(min(size, 5000 - k * size) for k in reported) == 5000


def test_the_handle_names_the_folder_absolutely(tmp_path, monkeypatch):
    """Spark executors (other hosts, other working folders) load the model by the handle's path: a
    relative --processing-root gave them a relative one, and a multi-host job failed on its leader."""
    from sklearn.linear_model import LogisticRegression

    from container.model_endpoint import in_process_model

    folder = tmp_path / "job" / "input" / "model"
    folder.mkdir(parents=True)
    joblib.dump(LogisticRegression().fit(np.eye(3), [0, 1, 1]), folder / "model.joblib")
    monkeypatch.chdir(tmp_path)
    config = parse_config({"dataset_type": "text/csv", "label": "y", "methods": {"shap": {"baseline": [[0, 0, 0]]}},
                           "predictor": {"model_name": "m", "instance_type": "ml.m5.large", "initial_instance_count": 1}})
    with in_process_model(config, Path("job/input/model")) as (model, _):
        assert Path(model.folder).is_absolute() and Path(model.folder) == folder.resolve()
    forget_model(model)


# -- a prediction npy cannot carry (Python objects: text labels) --------------------------------------------

LABELLED_PREDICT = '''
import os
import joblib
import numpy as np

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    p = model.predict_proba(data)[:, 1]
    out = np.empty((len(p), 2), dtype=object)  # [label, score]: Python objects, which npy cannot carry
    out[:, 0] = np.where(p > 0.5, "yes", "no")
    out[:, 1] = p
    return out
'''


def _labels_model(folder: Path, with_scores: bool) -> None:
    """Default input_fn / output_fn (so the job asks npy), a prediction of Python objects: text labels only
    (a LinearSVC fitted on object labels), or [label, score] rows (code/inference.py's predict_fn)."""
    x, y = _data(300)
    if with_scores:
        _sklearn_joblib(folder)
        (folder / "code").mkdir()
        (folder / "code" / "inference.py").write_text(LABELLED_PREDICT)
    else:
        from sklearn.svm import LinearSVC

        joblib.dump(LinearSVC(random_state=0).fit(x, np.where(y == 1, "yes", "no").astype(object)),
                    folder / "model.joblib")


def _scored_both_ways(folder: Path, predictor: Predictor, rows: np.ndarray, **options):
    """(outcome, requests, the answer type the client ended with) in process, then through the built-in server;
    an outcome is the scores or the exception raised. ``options``: the clients'."""
    results = []
    loader = InProcessModel(str(folder), str(folder))
    try:
        with InProcessClient(loader, predictor, NAMES, **options) as local:
            results.append(_outcome(local, rows))
    finally:
        forget_model(loader)
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(timeout=120)
        assert server.info()["default_io"]
        with ModelClient(server.url, predictor, NAMES, **options) as served:
            results.append(_outcome(served, rows))
    return results


def _outcome(client: ModelClient, rows: np.ndarray):
    try:
        outcome = client.predict(rows).scores
    except Exception as error:  # noqa: BLE001 -- the test reads it
        outcome = error
    return outcome, client.stats.requests, client.parser.accept_type


def test_text_labels_asked_as_npy_are_told_as_labels_in_process_and_through_the_server(tmp_path):
    """npy is the client's choice: the answer npy refuses is asked as CSV once, and the parser says what it is."""
    from analyzer.predict.decode import LabelsNotScores

    _labels_model(tmp_path, with_scores=False)
    rows, _ = _data(40, seed=4)
    results = _scored_both_ways(tmp_path, NPY_BOTH_WAYS, rows)
    for outcome, _, accept in results:
        assert isinstance(outcome, LabelsNotScores), outcome
        assert outcome.label in ("yes", "no")
        assert accept == NPY  # CSV was answered but unusable: the client did not switch
    # The whole batch asked twice: npy (refused: in process no answer is counted, the server answered 500), then
    # CSV. Not halved down to a record, as a refusal otherwise is.
    assert [requests for _, requests, _ in results] == [1, 2]


def test_a_prediction_npy_cannot_carry_is_read_as_csv_in_process_and_through_the_server(tmp_path):
    """[label, score] objects with predictor.probability 1: the scores, by the same column index, and later
    batches ask CSV at once."""
    _labels_model(tmp_path, with_scores=True)
    rows, _ = _data(40, seed=5)
    expected = joblib.load(tmp_path / "model.joblib").predict_proba(rows)[:, 1:]
    predictor = Predictor(content_type=NPY, accept_type=NPY, probability=1)
    results = _scored_both_ways(tmp_path, predictor, rows, max_records_per_request=10, concurrency=1)
    for outcome, _, accept in results:
        assert isinstance(outcome, np.ndarray), outcome
        np.testing.assert_allclose(outcome, expected, rtol=1e-15)
        assert accept == CSV
    # Four batches of 10: the first asked as npy (refused: the server's 500 is counted) then CSV, the other three
    # as CSV at once.
    assert [requests for _, requests, _ in results] == [4, 5]
