"""SHAP on more records than fit in memory at once, and baselines given as JSON for JSON datasets.

* Streaming: the sharded runner holds one shard's synthetic rows at a time. Measured with tracemalloc
  (numpy registers its buffers with it) around ``run_shards``, with the model scored in this process
  so that only the runner's own memory is counted.
* ``methods.shap.baseline`` as JSON Lines row objects (``[{"features": [...]}, ...]``) for an
  ``application/jsonlines`` dataset, and as a JSON document for an ``application/json`` dataset, end
  to end through ``lucent run``: the values must be the exact Shapley values for that baseline.
"""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from analyzer.explain import KernelShap, shards
from analyzer.predict import Predictions
from tests import test_explain_job
from tests.conftest import http_server
from tests.test_explain_job import BASELINE, FEATURES, brute_force_shap, make_data, score

# ---- streaming by shard ----------------------------------------------------------------------------

M, BASELINE_ROWS, NUM_SAMPLES, RECORDS = 8, 4, 200, 3_000
SHARD_ROWS = 20_000  # LUCENT_SHAP_SHARD_ROWS: about 24 records, 19,200 synthetic rows (1.2 MB) per shard
BETA = np.linspace(-1.0, 1.0, M)


def linear_model(rows: np.ndarray) -> np.ndarray:
    """Linear with one interaction, so that sampled coalitions matter."""
    return rows @ BETA + 0.5 * rows[:, 0] * rows[:, 1]


class _InProcessClient:
    def __init__(self, model):
        self.model = model

    def predict(self, rows: np.ndarray) -> Predictions:
        return Predictions(len(rows), probability=self.model(rows))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class InProcessEndpoint:
    """Stands in for ``ModelEndpoint``: the worker's client scores rows in this process, without HTTP
    (a server in this process would add its own request buffers to the measured peak)."""

    model: object

    def client(self, feature_names=None, **options) -> _InProcessClient:
        return _InProcessClient(self.model)


def test_shap_streams_by_shard_instead_of_building_every_synthetic_row(monkeypatch, tmp_path):
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(SHARD_ROWS))
    monkeypatch.setenv(shards.WORKERS_ENV, "1")  # in this process, where tracemalloc sees it
    rng = np.random.default_rng(3)
    records = rng.normal(size=(RECORDS, M))
    baseline = rng.normal(size=(BASELINE_ROWS, M))
    explainer = KernelShap(linear_model, baseline, num_samples=NUM_SAMPLES, seed=0)
    rows_per_record = len(explainer.design.masks) * BASELINE_ROWS
    settings = shards.ShapSettings(endpoint=InProcessEndpoint(linear_model), baseline=baseline,
                                   num_samples=NUM_SAMPLES, seed=0, use_logit=False, features=tuple(range(M)),
                                   checkpoint_dir=tmp_path / "checkpoints")
    size = shards.shard_size((len(explainer.design.masks) + 2) * BASELINE_ROWS + 1)  # as the job computes it
    assert 10 <= size < 50

    tracemalloc.start()
    try:
        local = shards.run_shards(settings, records, size, explainer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    row_bytes = M * 8
    all_at_once = RECORDS * rows_per_record * row_bytes  # every synthetic row of the job: ~150 MB
    one_call = shards.MAX_ROWS_PER_CALL * row_bytes  # what one unsharded model call holds: ~26 MB
    # A shard's rows a few times over (rows, scores, the model's temporaries) plus the results: ~7 MB.
    # Measured: 2.5 MB; 33 MB with every record in one shard (the explainer's calls of 400,000 rows).
    bound = 4 * SHARD_ROWS * row_bytes + 10 * local.values.nbytes
    assert peak < bound, f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    assert bound < one_call / 2 and bound < all_at_once / 20
    assert len(list((tmp_path / "checkpoints").glob("shard-*.npz"))) == -(-RECORDS // size)

    # Streaming changes nothing: the same values as explaining every record in one go.
    whole = KernelShap(linear_model, baseline, num_samples=NUM_SAMPLES, seed=0).explain(records)
    np.testing.assert_allclose(local.values, whole.values, rtol=0, atol=1e-12)
    # The model's own rounding differs with the rows it gets per call (a 2-D product), and a standard error
    # whose true value is 0 (this model's pairs all have the same effect on most features) comes out of a
    # difference of raw moments: it is exact to ~sqrt(machine epsilon) of the pair effects, not to 1e-12.
    np.testing.assert_allclose(local.stderr, whole.stderr, rtol=1e-9, atol=1e-8 * np.abs(whole.values).max())


# ---- JSON baselines for JSON datasets --------------------------------------------------------------

@pytest.fixture
def endpoint():
    """The model of ``test_explain_job``: CSV requests, two outputs, a categorical term."""
    with http_server(test_explain_job._Model, request_rows=[]) as server:
        yield server


def _json_job(job, server, dataset_type: str, baseline, **extra) -> None:
    job.write_config({
        "dataset_type": dataset_type, "headers": [*FEATURES, "y"], **extra,
        "methods": {"shap": {"baseline": baseline, "seed": 3}},
        # The in-test model reads CSV requests and answers CSV, whatever the dataset's format.
        "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "content_type": "text/csv",
                      "accept_type": "text/csv", "label_headers": ["a", "b"]},
    })


def _assert_exact_for_baseline(job, data: pd.DataFrame) -> None:
    assert job.run() == 0, job.message
    baseline = pd.DataFrame(BASELINE, columns=FEATURES)
    assert pd.read_csv(job.output_dir / "explanations_shap" / "baseline.csv").values.tolist() == BASELINE
    kernel = job.analysis()["explanations"]["kernel_shap"]
    np.testing.assert_allclose([kernel[k]["expected_value"] for k in "ab"], score(baseline).mean(axis=0), atol=1e-12)
    exact = np.array([brute_force_shap(score, data[FEATURES].iloc[i], baseline) for i in range(len(data))])
    for c, key in enumerate("ab"):  # global values: mean |phi| of the exact values (M = 5: exact mode)
        np.testing.assert_allclose([kernel[key]["global_shap_values"][f] for f in FEATURES],
                                   np.abs(exact[:, :, c]).mean(axis=0), atol=1e-8)


def _records(data: pd.DataFrame) -> list[dict]:
    return [{"features": row[FEATURES].tolist(), "label": int(row["y"])} for _, row in data.iterrows()]


def test_json_lines_baseline_rows_for_a_json_lines_dataset(job, endpoint):
    data = make_data(n=12, seed=8)
    job.write_data("".join(json.dumps(r) + "\n" for r in _records(data)), name="data.jsonl")
    _json_job(job, endpoint, "application/jsonlines", [{"features": row} for row in BASELINE],
              features="features", label="label")
    _assert_exact_for_baseline(job, data)


def test_json_document_baseline_for_a_json_dataset(job, endpoint):
    data = make_data(n=12, seed=9)
    job.write_data(json.dumps({"instances": _records(data)}), name="data.json")
    _json_job(job, endpoint, "application/json", {"instances": [{"features": row} for row in BASELINE]},
              features="instances[*].features", label="instances[*].label")
    _assert_exact_for_baseline(job, data)


@pytest.mark.parametrize("dataset_type", ["application/jsonlines", "application/json"])
def test_json_baseline_rows_must_hold_the_features_only(job, endpoint, dataset_type):
    data = make_data(n=6, seed=10)
    rows = [{"features": [*row, 1]} for row in BASELINE]  # the label value left in
    if dataset_type == "application/json":
        job.write_data(json.dumps({"instances": _records(data)}), name="data.json")
        _json_job(job, endpoint, dataset_type, {"instances": rows}, features="instances[*].features",
                  label="instances[*].label")
    else:
        job.write_data("".join(json.dumps(r) + "\n" for r in _records(data)), name="data.jsonl")
        _json_job(job, endpoint, dataset_type, rows, features="features", label="label")
    assert job.run() == 1, job.message
    assert "methods.shap.baseline" in job.message and "has 6 values" in job.message, job.message
    assert "label column 'y'" in job.message, job.message

