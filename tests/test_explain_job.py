"""methods.shap / methods.pdp as a job: outputs, accuracy, sharding, checkpoints and bad input.

Most tests talk to a small in-test model endpoint (``predictor.endpoint_url``: a linear model with a
categorical term and two outputs), which answers in microseconds and records the size of every
request. The end-to-end ones (``slow``) go through the built-in model server on a real model folder.
"""

from __future__ import annotations

import itertools
import json
import math

import joblib
import numpy as np
import pandas as pd
import pytest

from analyzer.explain import shards
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, csv_scoring_model, http_server, run_crashing_after_shards

FEATURES = ["x0", "x1", "x2", "x3", "color"]
HEADERS = ["id", *FEATURES, "y"]
BETA = np.array([1.5, -2.0, 0.5, 3.0])


def score(frame: pd.DataFrame) -> np.ndarray:
    """The endpoint's model: two outputs, an interaction so that the baseline choice matters."""
    x = frame.iloc[:, :4].to_numpy(dtype=float)
    red = (frame.iloc[:, 4].astype(str) == "red").to_numpy()
    first = x @ BETA + 2.0 * red + 0.7 * x[:, 0] * x[:, 2]
    return np.column_stack([first, np.tanh(first) + x[:, 3] * red])


def brute_force_shap(model, x: pd.Series, baseline: pd.DataFrame) -> np.ndarray:
    """Shapley values by enumerating every coalition: ``(M, k)``; v(S) = mean over baseline rows."""
    m = len(x)

    def value(subset: tuple[int, ...]) -> np.ndarray:
        rows = baseline.copy()
        for j in subset:
            rows.iloc[:, j] = x.iloc[j]
        return model(rows).mean(axis=0)

    values = {s: value(s) for r in range(m + 1) for s in itertools.combinations(range(m), r)}
    phi = np.zeros((m, len(values[()])))
    for j in range(m):
        for subset, v in values.items():
            if j in subset:
                continue
            with_j = tuple(sorted((*subset, j)))
            weight = math.factorial(len(subset)) * math.factorial(m - len(subset) - 1) / math.factorial(m)
            phi[j] += weight * (values[with_j] - v)
    return phi


_Model = csv_scoring_model(score)


@pytest.fixture
def endpoint():
    with http_server(_Model, request_rows=[]) as server:
        yield server


def make_data(n: int = 30, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(np.round(rng.normal(size=(n, 4)), 3), columns=FEATURES[:4])
    data.insert(0, "id", [f"r{i}" for i in range(n)])
    data["color"] = rng.choice(["red", "blue", "green"], n)
    data["y"] = rng.integers(0, 2, n)
    return data


BASELINE = [[0.0, 0.5, -0.5, 0.2, "blue"], [1.0, -1.0, 0.0, 0.0, "red"]]


def shap_job(job: JobRoot, server, data: pd.DataFrame | None = None, **shap) -> pd.DataFrame:
    data = make_data() if data is None else data
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({
        "dataset_type": "text/csv", "headers": HEADERS, "label": "y", "joinsource_name_or_index": "id",
        "methods": {"shap": {"baseline": BASELINE, "seed": 3, **shap}},
        "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "label_headers": ["a", "b"]},
    })
    return data


def read_local(job: JobRoot, name: str = "out.csv") -> pd.DataFrame:
    return pd.read_csv(job.output_dir / "explanations_shap" / name)


def test_exact_values_categorical_and_two_outputs(job, endpoint):
    data = shap_job(job, endpoint)
    assert job.run() == 0, job.message
    kernel = job.analysis()["explanations"]["kernel_shap"]
    assert list(kernel) == ["a", "b"]
    assert list(kernel["a"]) == ["global_shap_values", "expected_value", "lucent_global_shap_stderr"]
    assert list(kernel["a"]["global_shap_values"]) == FEATURES

    local = read_local(job)
    assert list(local.columns) == ["id", *(f"{f}_{k}" for k in "ab" for f in FEATURES)]
    assert local["id"].tolist() == data["id"].tolist()
    baseline = pd.DataFrame(BASELINE, columns=FEATURES)
    values = local.iloc[:, 1:].to_numpy().reshape(len(data), 2, len(FEATURES)).transpose(0, 2, 1)
    for i in (0, 7, 29):
        expected = brute_force_shap(score, data[FEATURES].iloc[i], baseline)
        np.testing.assert_allclose(values[i], expected, atol=1e-8)
    # Efficiency: row sum + expected value = the model's score for the record.
    expected_value = np.array([kernel[k]["expected_value"] for k in "ab"])
    np.testing.assert_allclose(expected_value, score(baseline).mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(values.sum(axis=1) + expected_value, score(data[FEATURES]), atol=1e-9)
    np.testing.assert_allclose([kernel["a"]["global_shap_values"][f] for f in FEATURES],
                               np.abs(values[:, :, 0]).mean(axis=0), atol=1e-12)
    assert (read_local(job, "out_stderr.csv").iloc[:, 1:].to_numpy() == 0).all()  # exact mode
    assert pd.read_csv(job.output_dir / "explanations_shap" / "baseline.csv").values.tolist() == BASELINE
    assert not (job.output_dir / ".lucent-work").exists()


def test_baseline_file_relative_to_config_and_features_to_explain(job, endpoint):
    data = shap_job(job, endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    (job.config_dir / "base.csv").write_text(pd.DataFrame(BASELINE).to_csv(index=False, header=False))
    config["methods"]["shap"].update(baseline="base.csv", features_to_explain=["x0", 4], save_local_shap_values=True)
    config["methods"]["shap"]["agg_method"] = "median"
    job.write_config(config)
    assert job.run() == 0, job.message
    kernel = job.analysis()["explanations"]["kernel_shap"]
    assert list(kernel["a"]["global_shap_values"]) == ["x0", "x3"]  # index 4 of the headers is x3
    local = read_local(job)
    assert list(local.columns) == ["id", "x0_a", "x3_a", "x0_b", "x3_b"]
    # The other features keep the record's values: the game is on {x0, x3} only.
    i = 4
    x = data[FEATURES].iloc[i]

    def two_player(rows: pd.DataFrame) -> np.ndarray:
        full = pd.DataFrame([x.tolist()] * len(rows), columns=FEATURES)
        full["x0"], full["x3"] = rows.iloc[:, 0].to_numpy(), rows.iloc[:, 1].to_numpy()
        return score(full)

    expected = brute_force_shap(two_player, x[["x0", "x3"]], pd.DataFrame(BASELINE, columns=FEATURES)[["x0", "x3"]])
    np.testing.assert_allclose(local.loc[i, ["x0_a", "x3_a"]].to_numpy(dtype=float), expected[:, 0], atol=1e-8)
    assert kernel["a"]["global_shap_values"]["x0"] == pytest.approx(np.median(local["x0_a"]))


def test_sampled_values_same_seed_same_output_and_shards_are_bounded(job, endpoint, monkeypatch, tmp_path):
    data = make_data(n=12, seed=4)
    shap_job(job, endpoint, data, num_samples=14)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "100")  # 3 records per shard: at most (14 + 2) x 2 + 1 rows each
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    assert job.run() == 0, job.message
    first = read_local(job)
    assert (read_local(job, "out_stderr.csv").iloc[:, 1:].to_numpy() > 0).any()
    # Shards are explained independently: no request holds more rows than one shard's synthetic rows.
    assert max(endpoint.request_rows) <= 100
    assert job.run() == 0, job.message
    pd.testing.assert_frame_equal(read_local(job), first)


@pytest.mark.slow
def test_two_workers_and_a_resumed_run_give_identical_outputs(job, endpoint, monkeypatch, caplog):
    data = make_data(n=20, seed=5)
    shap_job(job, endpoint, data, num_samples=14)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "70")  # 10 shards of 2 records
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    assert job.run() == 0, job.message
    reference = [read_local(job), read_local(job, "out_stderr.csv"), job.analysis()]

    monkeypatch.setenv(shards.WORKERS_ENV, "2")
    assert job.run() == 0, job.message
    assert [read_local(job), read_local(job, "out_stderr.csv"), job.analysis()][2] == reference[2]
    pd.testing.assert_frame_equal(read_local(job), reference[0])

    # Interrupted after 3 shards (the main process dies between checkpoints), then run again.
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    for path in job.output_dir.iterdir():
        path.unlink() if path.is_file() else None
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    done = sorted((job.output_dir / ".lucent-work" / "shap").glob("*/shard-*.npz"))
    assert len(done) == 3
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming, 3 of 10 shards already done" in caplog.text
    pd.testing.assert_frame_equal(read_local(job), reference[0])
    pd.testing.assert_frame_equal(read_local(job, "out_stderr.csv"), reference[1])
    assert job.analysis() == reference[2]
    assert not (job.output_dir / ".lucent-work").exists()


def test_stale_checkpoints_are_not_reused(job, endpoint, monkeypatch):
    shap_job(job, endpoint, num_samples=14)
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    stale = job.output_dir / ".lucent-work" / "shap" / "0123456789abcdef01234567"
    stale.mkdir(parents=True)
    (stale / "shard-000000.npz").write_bytes(b"from another config")
    assert job.run() == 0, job.message
    assert not (job.output_dir / ".lucent-work").exists()


def test_pdp_numeric_and_categorical(job, endpoint):
    data = shap_job(job, endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"]["pdp"] = {"grid_resolution": 4, "top_k_features": 2}
    job.write_config(config)
    assert job.run() == 0, job.message
    explanations = job.analysis()["explanations"]
    glob = explanations["kernel_shap"]
    weight = {f: abs(glob["a"]["global_shap_values"][f]) + abs(glob["b"]["global_shap_values"][f]) for f in FEATURES}
    top = sorted(FEATURES, key=lambda f: -weight[f])[:2]
    pdp = explanations["pdp"]
    assert [e["feature_name"] for e in pdp] == top

    config["methods"]["pdp"] = {"grid_resolution": 4, "features": ["x0", "color"]}
    job.write_config(config)
    assert job.run() == 0, job.message
    numeric, categorical = job.analysis()["explanations"]["pdp"]
    x0 = data["x0"]
    edges = np.linspace(x0.min(), x0.max(), 5)
    assert numeric["data_type"] == "numerical" and numeric["label_headers"] == ["a", "b"]
    np.testing.assert_allclose(numeric["feature_values"], (edges[:-1] + edges[1:]) / 2)
    np.testing.assert_allclose(numeric["data_distribution"], np.histogram(x0, edges)[0] / len(data))
    for k, v in enumerate(numeric["feature_values"]):
        rows = data[FEATURES].assign(x0=v)
        np.testing.assert_allclose([numeric["model_predictions"][c][k] for c in (0, 1)],
                                   score(rows).mean(axis=0), atol=1e-9)
    assert categorical["data_type"] == "categorical"
    assert sorted(categorical["feature_values"]) == sorted(data["color"].unique())
    assert sum(categorical["data_distribution"]) == pytest.approx(1.0)


# ---- bad input: exit 1, the reason in the message file, nothing in the output folder -----------------

def assert_user_error(job: JobRoot, *fragments: str) -> None:
    assert job.run() == 1, job.message
    assert job.message.startswith("ClientError: ")
    for fragment in fragments:
        assert fragment in job.message, (fragment, job.message)
    assert job.output_files() == []


@pytest.mark.parametrize("change, fragments", [
    ({"baseline": [[0.0, 1.0, 2.0]]}, ["methods.shap.baseline", "row 0 has 3 values", "5 feature columns"]),
    ({"baseline": [[0.0, 1.0, 2.0, 3.0, "red", 1]]}, ["row 0 has 6 values", "label column 'y'"]),
    ({"num_samples": 0}, ["methods.shap.num_samples"]),
    ({"features_to_explain": ["x9"]}, ["methods.shap.features_to_explain", "x9"]),
    ({"features_to_explain": ["y"]}, ["methods.shap.features_to_explain", "label"]),
    ({"features_to_explain": [6]}, ["methods.shap.features_to_explain", "'y' is the label column"]),
    ({"features_to_explain": [0]}, ["methods.shap.features_to_explain", "'id' is the joinsource column"]),
])
def test_bad_shap_input(job, endpoint, change, fragments):
    shap_job(job, endpoint, **change)
    assert_user_error(job, *fragments)


def test_baseline_file_with_the_label_column(job, endpoint):
    shap_job(job, endpoint, baseline="base.csv")
    (job.config_dir / "base.csv").write_text("0,1,2,3,red,1\n")
    assert_user_error(job, "methods.shap.baseline", "has 6 values", "label column 'y'")


# ---- through the built-in model server -------------------------------------------------------------

def model_folder_job(job: JobRoot, data: pd.DataFrame, shap: dict, inference: str | None = None) -> None:
    from sklearn.linear_model import LinearRegression

    features = [c for c in data.columns if c != "y"]
    model_dir = job.root / "input" / "model"
    model_dir.mkdir(parents=True)
    joblib.dump(LinearRegression().fit(data[features].to_numpy(), data["y"].to_numpy()), model_dir / "model.joblib")
    if inference is not None:
        (model_dir / "code").mkdir()
        (model_dir / "code" / "inference.py").write_text(inference)
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
                      "methods": {"shap": shap}, "predictor": {}})


def linear_data(n: int = 40, m: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    data = pd.DataFrame(np.round(rng.normal(size=(n, m)), 4), columns=[f"f{j}" for j in range(m)])
    data["y"] = data.to_numpy() @ np.arange(1, m + 1) + rng.normal(size=n)
    return data


@pytest.mark.slow
def test_builtin_model_server_exact_values(job):
    data = linear_data()
    model_folder_job(job, data, {"num_clusters": 1, "seed": 0})
    assert job.run() == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    model = joblib.load(job.root / "input" / "model" / "model.joblib")
    features = data.drop(columns="y")
    baseline = pd.read_csv(job.output_dir / "explanations_shap" / "baseline.csv")
    np.testing.assert_allclose(baseline.to_numpy()[0], features.mean().to_numpy(), atol=1e-12)
    local = read_local(job).to_numpy()
    entry = job.analysis()["explanations"]["kernel_shap"]["label0"]
    for i in range(0, 40, 13):
        expected = brute_force_shap(lambda rows: model.predict(rows.to_numpy())[:, None], features.iloc[i], baseline)
        np.testing.assert_allclose(local[i], expected[:, 0], atol=1e-8)
    np.testing.assert_allclose(local.sum(axis=1) + entry["expected_value"], model.predict(features.to_numpy()),
                               atol=1e-8)


NAN_SCRIPT = """
import numpy as np

def predict_fn(data, model):
    scores = model.predict(data)
    scores[np.asarray(data)[:, 0] > 2.5] = np.nan   # only records with a large f0 fail
    return scores
"""


@pytest.mark.slow
def test_model_returning_nan_for_some_synthetic_rows(job):
    data = linear_data(n=20)
    data.loc[11, "f0"] = 3.0
    model_folder_job(job, data, {"baseline": [[0.0] * 6]}, inference=NAN_SCRIPT)
    assert_user_error(job, "methods.shap", "NaN", "dataset row 11")


@pytest.mark.parametrize("with_nan", [False, True])
def test_local_values_are_written_byte_for_byte_as_pandas_writes_them(tmp_path, with_nan):
    """out.csv of floats takes a faster writer than pandas; the bytes must be the same (shortest
    round-trip repr, -0.0, infinities, header quoting), and NaN (pandas: an empty field) keeps pandas."""
    from analyzer.explain.job import write_local, write_table

    rng = np.random.default_rng(3)
    values = rng.normal(size=(500, 3, 2)) * 10.0 ** rng.integers(-20, 20, size=(500, 3, 2))
    values[0, :, 0] = [0.0, -0.0, np.inf]
    values[1, :, 1] = [-np.inf, 5e-324, 1e16]
    if with_nan:
        values[2, 1, 0] = np.nan
    names, keys = ["a", 'b,"quoted"', "c d"], ["label0", "label1"]
    write_local(tmp_path / "out.csv", values, names, keys, None)
    flat = values.transpose(0, 2, 1).reshape(len(values), -1)
    write_table(tmp_path / "pandas.csv", pd.DataFrame(flat, columns=[f"{n}_{k}" for k in keys for n in names]))
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    back = pd.read_csv(tmp_path / "out.csv", float_precision="round_trip").to_numpy()
    np.testing.assert_array_equal(back, flat)


def test_outputs_named_by_predicted_values_have_one_name_in_shap_and_pdp(job, endpoint):
    """Scores located by ``predictor.label`` without label_headers are named by a predicted value (spec
    4.3); SHAP's baseline and PDP's grids predict different values, and analysis.json still names the
    output once."""
    shap_job(job, endpoint)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["predictor"] = {"endpoint_url": config["predictor"]["endpoint_url"], "label": 0}
    config["methods"]["pdp"] = {"grid_resolution": 3, "features": ["x0", "x3"]}
    job.write_config(config)
    assert job.run() == 0, job.message
    explanations = job.analysis()["explanations"]
    (key,) = explanations["kernel_shap"]
    baseline = pd.DataFrame(BASELINE[:1], columns=FEATURES)
    assert float(key) == pytest.approx(score(baseline)[0, 0])  # the first baseline row's prediction
    assert [entry["label_headers"] for entry in explanations["pdp"]] == [[key], [key]]

    del config["methods"]["shap"]  # PDP alone: the first feature's first prediction, for every feature
    job.write_config(config)
    assert job.run() == 0, job.message
    headers = [entry["label_headers"] for entry in job.analysis()["explanations"]["pdp"]]
    assert headers[0] == headers[1] and headers[0] != [key]


BASELINE_REFUSED = """
import numpy as np

def predict_fn(data, model):
    if (np.asarray(data)[:, 0] == 99.0).any():
        raise ValueError("cannot score f0 = 99")
    return model.predict(data)
"""


@pytest.mark.slow
def test_a_baseline_row_the_model_refuses_is_named_as_the_baselines(job):
    model_folder_job(job, linear_data(n=10), {"baseline": [[0.0] * 6, [99.0] + [0.0] * 5]}, inference=BASELINE_REFUSED)
    assert_user_error(job, "methods.shap.baseline: scoring the baseline rows failed",
                      "numbered within the baseline", "row 1", "cannot score f0 = 99")


BATCH_SENSITIVE = """
def predict_fn(data, model):
    # The last bits of a row's score depend on how many rows came with it, as BLAS products' can.
    return model.predict(data) + 1e-9 * len(data)
"""


@pytest.mark.slow
def test_worker_count_does_not_change_how_rows_are_cut_into_model_calls(job, monkeypatch):
    """1 or N workers (and so any core count: a resumed run on another machine) give the same bytes, even
    for a model whose scores depend on the rows scored together: requests are cut by the caps alone."""
    model_folder_job(job, linear_data(n=400), {"baseline": [[0.0] * 6]}, inference=BATCH_SENSITIVE)
    # 2 shards of 200 records, 63 rows each (exact: 62 coalitions and the record): 12,600-row calls, which
    # two scoring threads (one worker on two cores) used to cut in two, and one thread (two workers) not
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(63 * 200))
    outputs = []
    for workers in ("1", "2"):
        monkeypatch.setenv(shards.WORKERS_ENV, workers)
        assert job.run() == 0, job.message
        outputs.append([(job.output_dir / "explanations_shap" / name).read_bytes()
                        for name in ("out.csv", "out_stderr.csv")])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("values", [[10.0, 20.0, 1e308], [-1e308, 0.0, 1e308], [-1.7e308, 1.7e308]])
def test_pdp_grid_of_values_near_the_float_limit_is_finite(values):
    """A span or a sum of two edges past 1.8e308 overflowed to inf: the model was then asked about a grid
    row that no record holds, and the error named a row the dataset does not have."""
    from analyzer.explain.pdp import feature_grid

    grid, shares, kind = feature_grid(pd.Series(values, name="amount"), 4)
    assert kind == "numerical" and np.isfinite(grid).all()
    assert min(values) < grid[0] < grid[-1] < max(values) and np.all(np.diff(grid) > 0)
    assert sum(shares) == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(grid), (max(values) / 4 - min(values) / 4), rtol=1e-12)
