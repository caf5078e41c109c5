"""SHAP shards on Spark, phase 2 (issue #15 item 5): checkpoints kept in an S3 store (moto's server on
loopback) that a rerun on a new driver resumes from, ``predictor.max_concurrency`` seen by a real model
server counting the requests it holds at once, ``out.csv`` as Clarify's folder of part files, and the
``median`` aggregation, each compared byte for byte with the local engine's run of the same job.

The model is a linear function behind a real HTTP server on 127.0.0.1 that counts the rows it scores
(so a shard scored twice shows) and the most requests it ever held at once.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import numpy as np
import pandas as pd
import pytest

from analyzer.config import ConfigValidationError, parse_config
from analyzer.engines import ENGINE_ENV, SPARK_MASTER_ENV
from analyzer.engines.spark_shards import TASK_CONCURRENCY, wave_plan
from analyzer.explain import shards
from analyzer.explain.checkpoint_store import CheckpointMirror, FolderStore, checkpoint_uri
from container.job import SUCCESS_MESSAGE
from tests.conftest import (
    JobRoot,
    csv_scoring_model,
    http_server,
    moto_s3,
    run_crashing_after_shards,
    use_test_credentials,
)
from tests.test_engine_spark import MASTER, no_engine_settings, spark  # noqa: F401 - the module's fixtures

WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0, 0.25, -1.5])
SHAP_FILES = ["analysis.json", "explanations_shap/out.csv", "explanations_shap/out_stderr.csv",
              "explanations_shap/baseline.csv"]


@contextmanager
def in_flight(server, frame: pd.DataFrame) -> Iterator[None]:
    """Counts rows and requests in flight; each request is held until more than ``server.hold_above`` are in
    flight or ``server.hold_s`` pass, so that requests a client sends at once overlap here (a cap that does
    not hold shows as a peak above it)."""
    with server.state:
        server.active += 1
        server.peak = max(server.peak, server.active)
        server.rows += len(frame)
        server.state.notify_all()
        server.state.wait_for(lambda: server.active > server.hold_above, timeout=server.hold_s)
    try:
        yield
    finally:
        with server.state:
            server.active -= 1


# ``POST``: CSV rows -> ``rows @ WEIGHTS + 0.1``, counted by ``in_flight``.
Model = csv_scoring_model(lambda frame: frame.to_numpy(dtype=float) @ WEIGHTS + 0.1, around=in_flight)


def reset(server, hold_above: int = 1_000, hold_s: float = 0.0) -> None:
    with server.state:
        server.active = server.peak = server.rows = 0
        server.hold_above, server.hold_s = hold_above, hold_s


@pytest.fixture
def model():
    with http_server(Model, state=threading.Condition(), request_rows=[]) as server:
        reset(server)
        yield server


def shap_job(job: JobRoot, server, n: int, shap: dict, predictor: dict | None = None,
             lucent: dict | None = None, pdp: dict | None = None) -> None:
    rng = np.random.default_rng(5)
    data = pd.DataFrame(np.round(rng.normal(size=(n, len(WEIGHTS))), 4), columns=[f"f{j}" for j in range(len(WEIGHTS))])
    data["y"] = data.to_numpy() @ WEIGHTS
    job.write_data(data.to_csv(index=False))
    config = {"dataset_type": "text/csv", "label": "y", "methods": {"shap": shap, **({"pdp": pdp} if pdp else {})},
              "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", **(predictor or {})}}
    if lucent:
        config["lucent"] = lucent
    job.write_config(config)


def on_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_ENV, "spark")
    monkeypatch.setenv(SPARK_MASTER_ENV, MASTER)


def outputs(job: JobRoot, files: list[str] = SHAP_FILES) -> dict[str, bytes]:
    return {name: (job.output_dir / name).read_bytes() for name in files}


# -- 1. checkpoints in the output store ------------------------------------------------------------------

SMALL_SHAP = {"baseline": [[0.0] * 6, [0.5] * 6], "num_samples": 20, "seed": 11}


def test_rerun_after_a_lost_driver_resumes_from_the_s3_checkpoints(spark, job, model, monkeypatch):  # noqa: F811
    import boto3

    with moto_s3() as url:
        use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=url)
        s3 = boto3.session.Session().client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="ckpt")
        shap_job(job, model, 30, SMALL_SHAP, lucent={"checkpoint_uri": "s3://ckpt/runs/a"})
        monkeypatch.setenv(shards.SHARD_ROWS_ENV, "250")  # (20 + 2) x 2 + 1 = 45 rows per record: 6 shards of 5
        monkeypatch.setenv(shards.WORKERS_ENV, "1")  # the local reference in this process: no pool to start

        def stored() -> list[str]:
            return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="ckpt").get("Contents", []))

        assert job.run() == 0, job.message  # the local engine, through the same store: the reference
        reference, full_rows = outputs(job), model.rows
        assert stored() == [] and not (job.output_dir / ".lucent-work").exists()

        on_spark(monkeypatch)
        reset(model)
        assert run_crashing_after_shards(job, monkeypatch, shards=3) != 0  # the driver dies after 3 shards
        kept = stored()
        assert [key.rsplit("/", 1)[1] for key in kept] == [f"shard-{i:06d}.npz" for i in range(3)]
        assert all(key.startswith("runs/a/shap/") for key in kept)
        shards.discard_entry(job.output_dir / ".lucent-work")  # a new driver: nothing local

        reset(model)
        assert job.run() == 0, job.message
        assert job.message == SUCCESS_MESSAGE
        baseline_rows = 2  # the baseline's scores, asked once per run
        assert model.rows - baseline_rows == (full_rows - baseline_rows) // 2  # 3 of the 6 shards scored again
        assert outputs(job) == reference
        assert stored() == [] and not (job.output_dir / ".lucent-work").exists()


def test_folder_store_mirror_round_trip(tmp_path):
    fingerprint, old = "5d41402abc4b2a76b9719d91", "7e240de74fb1ed08fa08d38c"  # as a job makes them
    store = FolderStore(tmp_path / "store")
    local = tmp_path / "work" / fingerprint
    local.mkdir(parents=True)
    (local / "shard-000000.npz").write_bytes(b"zero")
    (local / ".shard-000001.npz.x.tmp").write_bytes(b"half-written")
    store.write(f"shap/{old}/shard-000000.npz", b"stale")
    mirror = CheckpointMirror(store, fingerprint, local)
    mirror.push_missing()
    assert store.names(f"shap/{fingerprint}") == [f"shap/{fingerprint}/shard-000000.npz"]  # not the half-written
    assert (store.root / "shap" / old / "shard-000000.npz").exists()
    store.write(f"shap/{fingerprint}/shard-000002.npz", b"two")
    assert mirror.pull() == 1
    assert store.names("shap") == [f"shap/{fingerprint}/shard-000000.npz",
                                   f"shap/{fingerprint}/shard-000002.npz"]  # the stale one is gone
    assert (local / "shard-000002.npz").read_bytes() == b"two"
    assert checkpoint_uri({"checkpoint_uri": "s3://b/c"}, "s3://out/x/") == "s3://b/c"
    assert checkpoint_uri(None, "s3://out/x/") == "s3://out/x/.lucent-work"
    assert checkpoint_uri({}, None) is None


# -- 2. max_concurrency -------------------------------------------------------------------------------

# 48 records x 200 coalitions x 10 baseline rows, in 3 shards: each shard's model call is cut by the
# client into several requests sent at once (the uncapped run's peak shows it).
WIDE_SHAP = {"num_clusters": 10, "num_samples": 200, "seed": 3}


def test_max_concurrency_caps_requests_across_spark_tasks(spark, job, model, monkeypatch):  # noqa: F811
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "15000")
    on_spark(monkeypatch)
    shap_job(job, model, 48, WIDE_SHAP)
    reset(model, hold_above=2, hold_s=2.0)
    assert job.run() == 0, job.message
    uncapped, reference = model.peak, outputs(job)
    # two tasks at once, each with its calls in flight (a call is cut by the record and payload caps alone,
    # so that the values do not depend on how many requests run at once): the cap below has work to do
    assert uncapped >= 2

    shap_job(job, model, 48, WIDE_SHAP, predictor={"max_concurrency": 1})
    reset(model, hold_above=1, hold_s=0.3)
    assert job.run() == 0, job.message
    assert model.peak == 1  # the cap is used, and never exceeded
    assert outputs(job) == reference  # max_concurrency changes no value

    monkeypatch.delenv(ENGINE_ENV)  # the local engine: the cap holds across its worker processes too
    reset(model, hold_above=1, hold_s=0.3)
    assert job.run() == 0, job.message
    assert model.peak == 1
    assert outputs(job) == reference


def test_max_concurrency_caps_the_prediction_stage_of_post_training_bias(spark, job, model, monkeypatch,  # noqa: F811
                                                                           caplog):
    rng = np.random.default_rng(8)
    data = pd.DataFrame(np.round(rng.normal(size=(3000, 5)), 3), columns=[f"f{j}" for j in range(5)])
    data["g"] = rng.integers(0, 2, len(data))
    data["y"] = rng.integers(0, 2, len(data))
    for i in range(6):  # six files: Spark reads them in more than one task
        job.write_data(data.iloc[i::6].to_csv(index=False), f"part-{i}.csv")

    def run(predictor: dict) -> dict:
        job.write_config({"dataset_type": "text/csv", "label": "y", "label_values_or_threshold": [1],
                          "facet": [{"name_or_index": "g", "value_or_threshold": [1]}],
                          # no FT: the Flip Test reads the features on the driver, which then predicts too
                          "methods": {"post_training_bias": {"methods": ["DPPL", "DI", "DCA", "AD", "TE"]}},
                          "predictor": {"endpoint_url": f"http://127.0.0.1:{model.server_port}",
                                        "content_type": "text/csv", "accept_type": "text/csv", **predictor}})
        assert job.run("--engine", "spark", "--spark-master", MASTER) == 0, job.message
        return job.analysis()["post_training_bias_metrics"]

    reset(model, hold_above=1, hold_s=2.0)  # a request waits for company: tasks that overlap show it
    uncapped = run({})
    assert model.peak == 2 and model.rows == len(data)  # two tasks, each with a request in flight
    reset(model, hold_above=1, hold_s=0.3)
    with caplog.at_level("INFO", logger="analyzer.engines.spark"):
        capped = run({"max_concurrency": 1})
    assert model.peak == 1 and model.rows == len(data)  # one task, one request at a time
    assert capped == uncapped
    assert any("predictions in at most 1 task(s) at once, 1 request(s) in flight each" in r.getMessage()
               for r in caplog.records)


def test_wave_plan_never_exceeds_the_cap():
    assert wave_plan(None, 64).task_concurrency is None and wave_plan(None, 64).shards_per_wave == 64
    for cap in range(1, 300):
        for per_job in (1, 2, 64):
            plan = wave_plan(cap, per_job)
            assert 1 <= plan.shards_per_wave <= per_job and plan.task_concurrency >= 1
            assert plan.in_flight <= cap, (cap, per_job, plan)
            if cap >= TASK_CONCURRENCY * per_job:
                assert plan.shards_per_wave == per_job  # a large cap fills every wave
    assert wave_plan(10, 64).in_flight >= 8  # the cap is used, not just respected


@pytest.mark.parametrize(("value", "fragment"), [(0, "must be >= 1, got 0"), ("4", "expected an integer"),
                                                  (True, "expected an integer, got true"), (2.5, "expected an integer")])
def test_bad_max_concurrency_names_the_key(value, fragment):
    config = {"dataset_type": "text/csv", "label": "y", "methods": {"shap": {"num_clusters": 1}},
              "predictor": {"endpoint_url": "http://127.0.0.1:1", "max_concurrency": value}}
    with pytest.raises(ConfigValidationError) as error:
        parse_config(config)
    assert "predictor.max_concurrency" in str(error.value) and fragment in str(error.value)


def test_good_lucent_keys_parse_and_bad_ones_name_the_key():
    base = {"dataset_type": "text/csv", "label": "y", "methods": {"shap": {"num_clusters": 1}},
            "predictor": {"endpoint_url": "http://127.0.0.1:1", "max_concurrency": 8}}
    config = parse_config({**base, "lucent": {"local_shap_output": "Parts", "checkpoint_uri": "s3://b/p"}})
    assert config.predictor.max_concurrency == 8
    with pytest.raises(ConfigValidationError) as error:
        parse_config({**base, "lucent": {"local_shap_output": "folder", "checkpoint_uri": ""}})
    assert "lucent.local_shap_output: 'folder' is not one of file, parts" in str(error.value)
    assert "lucent.checkpoint_uri" in str(error.value)


# -- 3, 4 and 5. out.csv as part files; PDP's predictions as Spark tasks; median ---------------------

def concatenated(folder) -> bytes:
    parts = sorted(folder.glob("part-*.csv"))
    texts = [part.read_bytes() for part in parts]
    header = texts[0].split(b"\n", 1)[0] + b"\n"
    assert all(text.startswith(header) for text in texts)
    return header + b"".join(text[len(header):] for text in texts)


def test_median_pdp_and_part_files_on_spark(spark, job, model, monkeypatch, caplog):  # noqa: F811
    shap = {**SMALL_SHAP, "agg_method": "median"}
    pdp = {"features": ["f3", "f0", "f5"], "grid_resolution": 7}
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "250")  # 6 shards of 5 records
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    shap_job(job, model, 30, shap, pdp=pdp)
    assert job.run() == 0, job.message
    reference = outputs(job)
    rows_local = model.rows

    on_spark(monkeypatch)
    shap_job(job, model, 30, shap, lucent={"local_shap_output": "parts"}, pdp=pdp)
    reset(model)
    with caplog.at_level(logging.INFO, logger="analyzer.engines.spark_shards"):
        assert job.run() == 0, job.message
    assert "Spark: 3 PDP prediction frame(s) as Spark tasks" in caplog.text
    # the median is exact, and PDP's means of the same scores are the same bytes
    assert (job.output_dir / "analysis.json").read_bytes() == reference["analysis.json"]
    assert model.rows == rows_local  # nothing scored twice
    entries = job.analysis()["explanations"]["pdp"]
    assert [e["feature_name"] for e in entries] == ["f3", "f0", "f5"]
    features = pd.read_csv(job.data_dir / "data.csv").drop(columns="y")
    mean_score = (features.to_numpy() @ WEIGHTS + 0.1).mean()
    for entry in entries:  # linear model: the curve is the mean score moved by (v - mean x_j) w_j
        j = int(entry["feature_name"][1:])
        expected = [mean_score + (v - features.iloc[:, j].mean()) * WEIGHTS[j] for v in entry["feature_values"]]
        assert len(expected) == 7
        np.testing.assert_allclose(entry["model_predictions"][0], expected, rtol=1e-12, atol=1e-12)
    for name in ("out.csv", "out_stderr.csv"):
        folder = job.output_dir / "explanations_shap" / name
        assert folder.is_dir()  # the file of the previous run replaced by Clarify's folder
        assert [p.name for p in sorted(folder.iterdir())] == [f"part-{k:05d}-c000.csv" for k in range(6)]
        assert concatenated(folder) == reference[f"explanations_shap/{name}"]
    local = pd.read_csv(job.output_dir / "explanations_shap" / "out.csv" / "part-00000-c000.csv")
    assert len(local) == 5
    everything = pd.read_csv(StringIO(reference["explanations_shap/out.csv"].decode()), float_precision="round_trip")
    glob = job.analysis()["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    assert [glob[c.removesuffix("_label0")] for c in everything.columns] == everything.median().tolist()

    monkeypatch.delenv(ENGINE_ENV)
    shap_job(job, model, 30, shap, pdp=pdp)  # back to one file, in the same output folder
    assert job.run() == 0, job.message
    assert outputs(job) == reference


PLAIN = {"dataset_type": "text/csv", "label": "y", "methods": {"shap": {"num_clusters": 1}},
         "predictor": {"endpoint_url": "http://127.0.0.1:1"}}


def test_s3_store_round_trip_and_a_missing_bucket_named(monkeypatch):
    import boto3

    from container.checkpoint_store import S3Store, open_checkpoint_store
    from container.storage import Location, StorageError

    with moto_s3() as url:
        use_test_credentials(monkeypatch, AWS_ENDPOINT_URL=url)
        boto3.session.Session().client("s3", endpoint_url=url).create_bucket(Bucket="bkt")
        config = parse_config({**PLAIN, "lucent": {"checkpoint_uri": "s3://bkt/p/"}})
        store = open_checkpoint_store(config, None)
        assert isinstance(store, S3Store)
        fingerprint = "5d41402abc4b2a76b9719d91"  # as a job makes it
        store.write(f"shap/{fingerprint}/shard-000001.npz", b"one")
        store.write(f"shap/{fingerprint}/shard-000000.npz", b"zero")
        store.write("shapx/other", b"not a checkpoint")
        assert store.names("shap") == [f"shap/{fingerprint}/shard-000000.npz", f"shap/{fingerprint}/shard-000001.npz"]
        assert store.read(f"shap/{fingerprint}/shard-000001.npz") == b"one"
        # the client is remade
        assert pickle.loads(pickle.dumps(store)).names(f"shap/{fingerprint}") == store.names(f"shap/{fingerprint}")
        store.remove(store.names("shap"))
        assert store.names("shap") == [] and store.names("shapx") == ["shapx/other"]
        with pytest.raises(StorageError, match=r"SHAP checkpoints: listing s3://missing/q/shap/: NoSuchBucket"):
            S3Store(Location("s3://missing/q")).names("shap")
    plain = parse_config(PLAIN)
    assert open_checkpoint_store(plain, None) is None
    assert open_checkpoint_store(plain, "s3://o/out/").location.uri == "s3://o/out/.lucent-work"
    with pytest.raises(StorageError, match="lucent.checkpoint_uri"):
        open_checkpoint_store(parse_config({**plain.raw, "lucent": {"checkpoint_uri": "s3:/b/k"}}), None)
