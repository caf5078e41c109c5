"""The Flip Test on the Spark engine (``analyzer/engines/spark_flip.py``), on ``local[2]``.

Exact path: the same job run by the local engine and by Spark writes the same analysis.json bytes (CSV
with plain, exponent and bool feature columns; Parquet; more than 15 features, where sklearn's brute-force
search needs all of d in one batch; a text feature, which FT refuses). Each Spark run must log that Spark
computed FT, so that a job quietly run by the local engine cannot pass.

Sampled path (a broadcast limit of a few bytes): the value is labelled sampled, its interval contains
the exact value the local engine computes, and a sample covering all of facet d gives the exact value.
"""

# ruff: noqa: F811 - `spark` and `no_engine_settings` are test_engine_spark's fixtures, imported
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest

from analyzer.report import views
from tests.conftest import JobRoot
from tests.test_engine_spark import MASTER, no_engine_settings, spark  # noqa: F401 - fixtures

pytest.importorskip("pyspark", reason="the Spark extra is not installed (pip install lucent[spark])")

pytestmark = pytest.mark.slow

FT_CONFIG = {
    "dataset_type": "text/csv", "label": "y", "predicted_label": "yhat", "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "grp", "value_or_threshold": [1]}, {"name_or_index": "age", "value_or_threshold": [40]}],
    "methods": {"post_training_bias": {"methods": ["DPPL", "FT"]}},
}


def ft_frame(n: int, seed: int, kind: str) -> pd.DataFrame:
    """Numeric features the model's predictions depend on (so FT is not 0), facets grp (0/1/2) and age."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.integers(18, 80, n), "grp": rng.choice([0, 1, 2], n, p=[0.5, 0.3, 0.2]),
                          "x1": rng.normal(size=n).round(3), "x2": rng.integers(0, 20, n)})
    if kind == "mixed":  # a bool column (an object matrix, as locally) and numbers in exponent form (typed on the driver)
        frame["flag"] = rng.random(n) < 0.4
        frame["e"] = [f"{v:.3e}" for v in rng.normal(scale=100, size=n)]
    if kind == "brute":  # more than 15 features: sklearn's brute-force search
        for i in range(14):
            frame[f"z{i}"] = rng.normal(size=n).round(4)
    if kind == "text":
        frame["city"] = rng.choice(["Lyon", "Oslo"], n)
    if kind == "missing":  # in d of grp = 1 only (sklearn refuses them in a task) and in a of age > 40 (on the driver)
        frame["x1"] = frame["x1"].astype(float)
        frame.loc[frame.index[(frame["grp"] == 1) & (frame["age"] <= 40)][:3], "x1"] = np.nan
    score = frame["x1"] + 0.05 * frame["x2"] - 0.5 * (frame["grp"] == 1) + rng.normal(scale=0.7, size=n)
    frame["y"] = (rng.random(n) < 0.4).astype(int)
    frame["yhat"] = (score > 0.3).astype(int)
    return frame


def write_job(job: JobRoot, frame: pd.DataFrame, layout: str = "csv", config: dict | None = None) -> None:
    """The rows as two files (so d and a rows come from several splits and tasks)."""
    config = copy.deepcopy(config or FT_CONFIG)
    cut = len(frame) // 3
    for i, part in enumerate([frame.iloc[:cut], frame.iloc[cut:]]):
        if layout == "parquet":  # numbers in exponent form are floats in Parquet
            part = part.assign(e=part["e"].astype(float)) if "e" in part else part
            part.reset_index(drop=True).to_parquet(job.data_dir / f"part-{i}.parquet", index=False)
        else:
            job.write_data(part.to_csv(index=False), f"part-{i}.csv")
    if layout == "parquet":
        config["dataset_type"] = "application/x-parquet"
    job.write_config(config)


def run_spark(job: JobRoot, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run ``job`` on Spark; the Flip Test log lines of the Spark engine."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="analyzer.engines"):
        assert job.run("--engine", "spark", "--spark-master", MASTER) == 0, job.message
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Spark: Flip Test")]


def ft_entries(analysis: dict) -> list[dict]:
    return [metric for entries in analysis["post_training_bias_metrics"]["facets"].values()
            for entry in entries for metric in entry["metrics"] if metric["name"] == "FT"]


@pytest.mark.parametrize(("kind", "layout", "n"), [("mixed", "csv", 3000), ("mixed", "parquet", 1500),
                                                   ("brute", "csv", 400), ("text", "csv", 300),
                                                   ("missing", "csv", 300)])
def test_exact_flip_test_identical_to_local(spark, job, kind, layout, n, caplog):
    write_job(job, ft_frame(n, seed=5, kind=kind), layout)
    assert job.run() == 0, job.message
    local = (job.output_dir / "analysis.json").read_bytes()
    logged = run_spark(job, caplog)
    assert (job.output_dir / "analysis.json").read_bytes() == local
    values = [m.get("value") for m in ft_entries(job.analysis())]
    assert len(values) == 2  # grp 1 and age > 40
    if kind == "text":  # refused by Clarify's check, on both engines, before any search
        assert all(m["error"] == "FlipTest does not support non-numeric columns" for m in ft_entries(job.analysis()))
        assert logged == []
    elif kind == "missing":  # sklearn's message, from a task (grp) and from the driver's fit (age), as locally
        assert all(m["value"] is None and "Input X contains NaN" in m["error"] for m in ft_entries(job.analysis()))
    else:
        assert all(isinstance(v, float) for v in values) and any(v != 0 for v in values)
        assert len(logged) == 2 and all(" exact: " in line for line in logged), logged


def test_sampled_flip_test_beyond_the_broadcast(spark, job, caplog, monkeypatch):
    config = dict(FT_CONFIG, facet=[{"name_or_index": "grp", "value_or_threshold": [0]}])
    frame = ft_frame(2000, seed=9, kind="plain")
    frame["x1"] = np.random.default_rng(1).normal(size=len(frame)).round(6)  # no distance ties
    n_d = int((frame["grp"] == 0).sum())
    write_job(job, frame, config=config)
    assert job.run() == 0, job.message
    local = job.analysis()
    [exact] = [m["value"] for m in ft_entries(local)]

    monkeypatch.setenv("LUCENT_FT_BROADCAST_MB", "0.000001")  # facet a is over the limit: sampled
    monkeypatch.setenv("LUCENT_FT_SAMPLE_ROWS", "300")
    logged = run_spark(job, caplog)
    assert len(logged) == 1 and " sampled: " in logged[0]
    sampled = job.analysis()
    [entry] = ft_entries(sampled)
    notes = entry["lucent"]
    assert notes["sampled"] is True and notes["sample_rows"] == 300 and notes["facet_d_rows"] == n_d
    low, high = notes["interval"]
    assert notes["confidence"] == 0.95 and low < entry["value"] < high and high - low < 0.5
    assert low <= exact <= high and entry["value"] != exact
    # The same data read from another folder: the same rows are drawn (the sample hashes file names, not paths).
    elsewhere = JobRoot(job.root.parent / "mounted-elsewhere")
    write_job(elsewhere, frame, config=config)
    run_spark(elsewhere, caplog)
    assert ft_entries(elsewhere.analysis()) == [entry]
    # Clarify's keys are untouched: without Lucent's note and FT's value, the documents are the same
    for document in (local, sampled):
        for metric in ft_entries(document):
            metric.pop("lucent", None)
            metric["value"] = None
    assert json.dumps(sampled) == json.dumps(local)
    reading = views.bias_table(job.analysis(), "post_training_bias_metrics", "grp").loc["FT", "What this value means"]
    assert f"Sampled: estimated from 300 of the group's {n_d} rows, 95% interval" in reading

    monkeypatch.setenv("LUCENT_FT_SAMPLE_ROWS", str(n_d + 10))  # the sample is all of d: the exact value
    run_spark(job, caplog)
    [entry] = ft_entries(job.analysis())
    assert entry["value"] == exact and entry["lucent"]["interval"] == [exact, exact]
    assert entry["lucent"]["sample_rows"] == n_d


def test_sample_interval_covers_the_population_mean_at_its_confidence():
    """No Spark: 400 seeded samples without replacement from one population of flips; the 95 % intervals
    (finite-population corrected) contain the population's mean about 95 % of the time."""
    from analyzer.engines.spark_flip import sample_interval

    rng = np.random.default_rng(7)
    population = rng.choice([-1, 0, 1], size=2000, p=[0.15, 0.75, 0.10])
    truth = population.mean()
    covered = sum(low <= truth <= high for low, high in (
        sample_interval(rng.choice(population, 300, replace=False), len(population), 0.95) for _ in range(400)))
    assert 0.91 <= covered / 400 <= 0.99
    assert sample_interval(population, len(population), 0.95) == (truth, truth)  # the sample is everything
    low, high = sample_interval(np.ones(50, dtype=np.int64), 2000, 0.95)
    assert low == high == 1.0  # no spread in the sample: no width (and never beyond [-1, 1])


@pytest.mark.parametrize("n_features", [3, 17])  # a tree search; brute force (queried in one batch)
def test_flip_counts_of_chunks_sum_to_ft(n_features):
    """No Spark: the classifier fitted once and ``flip_counts`` over chunks of d (what each task runs) give
    ``FT``'s value; with a tree search any chunking does, with brute force the one batch of all of d."""
    from analyzer.bias import flip_test

    rng = np.random.default_rng(3)
    features = pd.DataFrame(rng.integers(0, 4, size=(900, n_features)), columns=[f"f{i}" for i in range(n_features)])
    sensitive, predicted = rng.random(900) < 0.4, rng.random(900) < 0.5
    x, from_object = flip_test.feature_matrix(features)
    knn = flip_test.fitted_classifier(x[~sensitive], predicted[~sensitive])
    x_d, model_d = x[sensitive], predicted[sensitive]
    chunks = np.array_split(np.arange(len(x_d)), 7) if flip_test.queries_are_independent(knn) else [np.arange(len(x_d))]
    assert flip_test.queries_are_independent(knn) == (n_features <= 15)
    counts = np.array([flip_test.flip_counts(knn, predicted[~sensitive], x_d[c], model_d[c], from_object) for c in chunks])
    yes, no = counts.sum(axis=0)
    assert (yes - no) / len(x_d) == flip_test.FT(features, sensitive, predicted) and yes > 0 and no > 0
