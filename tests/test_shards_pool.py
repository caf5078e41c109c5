"""The SHAP pool's spawned workers end on their own once every shard is reported (``shards._run_pool`` does
not wait for their teardown): a job run as the program still leaves no process behind, and its values are
the same bytes as with one worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from container.demo import MODEL_DEMO_CONFIG, write_demo_job
from tests.conftest import JobRoot
from tests.test_report_process import _run_program


def _shap_job(root: Path) -> JobRoot:
    config = {**MODEL_DEMO_CONFIG, "methods": {"shap": {**MODEL_DEMO_CONFIG["methods"]["shap"],
                                                        "save_local_shap_values": True}}}
    return JobRoot(write_demo_job(root, n_rows=200, seed=3, config=config, with_model=True))


def test_spawned_shap_workers_leave_no_process_and_the_same_values(tmp_path) -> None:
    pool = _shap_job(tmp_path / "pool")
    # Shards of 2,000 synthetic rows (about 8 records): many shards, so the spawned worker gets some.
    code, log = _run_program(pool, tmp_path, {"LUCENT_SHAP_WORKERS": "2", "LUCENT_SHAP_SHARD_ROWS": "2000"})
    assert code == 0, log
    assert "2 worker process(es)" in log
    alone = _shap_job(tmp_path / "alone")
    code, log = _run_program(alone, tmp_path, {"LUCENT_SHAP_WORKERS": "1", "LUCENT_SHAP_SHARD_ROWS": "2000"})
    assert code == 0, log
    assert "1 worker process(es)" in log
    out = "explanations_shap/out.csv"
    assert (pool.output_dir / out).read_bytes() == (alone.output_dir / out).read_bytes()
    assert pool.analysis()["explanations"] == alone.analysis()["explanations"]


def test_shap_workers_started_with_the_model_load_run_the_shards(tmp_path) -> None:
    """The worker a 2-worker job needs is started before the job loads its model (``shards.spare_workers``)
    and runs shards: the log says so, and the values are those of one worker (the test above)."""
    job = _shap_job(tmp_path / "job")
    code, log = _run_program(job, tmp_path, {"LUCENT_SHAP_WORKERS": "2", "LUCENT_SHAP_SHARD_ROWS": "2000"})
    assert code == 0, log
    assert "SHAP: 1 of the worker processes started while the job loaded the model" in log
    assert "2 worker process(es)" in log


def test_a_job_failing_before_shap_stops_the_workers_started_for_it(tmp_path) -> None:
    """A baseline of the wrong width fails the SHAP step after the spare worker started: the job ends with
    the baseline's error (not a hang on a worker nobody took), and no process is left behind."""
    shap = {key: value for key, value in MODEL_DEMO_CONFIG["methods"]["shap"].items() if key != "num_clusters"}
    config = {**MODEL_DEMO_CONFIG, "methods": {"shap": {**shap, "baseline": [[1, 2]]}}}
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=200, seed=3, config=config, with_model=True))
    code, log = _run_program(job, tmp_path, {"LUCENT_SHAP_WORKERS": "2"})
    assert code == 1, log
    assert "baseline" in job.message and "ClientError" in job.message
    assert "started while the job loaded the model" not in log


def _demo_model(tmp_path: Path):
    from container.model_endpoint import InProcessModel

    root = write_demo_job(tmp_path / "model-job", n_rows=100, with_model=True)
    return InProcessModel(str(root / "input" / "model"), str(root / "input" / "model"))


def _ended(process, timeout: float = 30.0) -> bool:
    """Whether ``process`` (a pool's worker) has ended within ``timeout``. Not ``join`` then ``is_alive``
    alone: the pool's own thread waits for its processes too, and when it reaps one first, this thread's
    ``waitpid`` fails (ECHILD) and ``is_alive`` says True until that thread has stored the exit code."""
    deadline = time.monotonic() + timeout
    process.join(timeout=timeout)
    while process.exitcode is None and Path(f"/proc/{process.pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a condition with a deadline: the other thread stores the code any moment
    return True


def _pids(executor) -> list[int]:
    """The pool's processes once each has started (the pool spawns them as tasks arrive)."""
    return sorted(process.pid for process in executor._processes.values())


def test_spare_workers_of_another_size_are_stopped_not_used(tmp_path) -> None:
    from analyzer.explain import shards

    loader = _demo_model(tmp_path)
    with shards.spare_workers(loader, 3):
        (_, executor), = shards._spare
        processes = list(executor._processes.values())
        assert len(processes) == 2
        assert shards._take_spare(1) is None  # a job that runs 2 workers: these 2 spares are not its pool
        for process in processes:
            assert _ended(process)
        assert shards._spare == []


def test_spare_workers_not_taken_are_stopped_when_the_job_ends(tmp_path) -> None:
    from analyzer.explain import shards

    loader = _demo_model(tmp_path)
    with shards.spare_workers(loader, 2):
        (_, executor), = shards._spare
        processes = list(executor._processes.values())
        assert len(processes) == 1 and processes[0].is_alive()
    assert _ended(processes[0])
    assert shards._spare == []
    with shards.spare_workers(loader, 1):  # a job of one worker: nothing started
        assert shards._spare == []


@pytest.mark.parametrize("shap", [
    {},  # the default budget, a computed baseline of one row
    {"num_samples": 255},  # an odd budget: pairs of coalitions, 254
    {"num_samples": 100, "baseline": "rows"},  # two baseline rows given
    {"num_samples": 64, "num_clusters": 3},
    {"num_samples": 64, "features_to_explain": [0, 2]},
], ids=["default", "odd", "baseline-rows", "clusters", "some-features"])
def test_the_workers_started_early_are_the_workers_the_shap_step_plans(tmp_path, monkeypatch, shap) -> None:
    """``expected_shap_workers`` (before the model is loaded) counts shards and rows as the SHAP step does
    once the explainer exists: both calls of ``planned_workers`` get the same numbers."""
    from analyzer.explain import job as explain_job
    from analyzer.explain import shards
    from container.job import JobPaths, run_job

    calls = []

    def spy(n_shards: int, rows: int, rows_per_worker: int | None, cap: int | None) -> int:
        calls.append((n_shards, rows, rows_per_worker, cap))
        return 1  # no pool: the job runs in this process

    monkeypatch.setattr(explain_job, "planned_workers", spy)
    monkeypatch.setattr(shards, "planned_workers", spy)
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", "5000")
    monkeypatch.delenv("LUCENT_SHAP_WORKERS", raising=False)
    base = {key: value for key, value in MODEL_DEMO_CONFIG["methods"]["shap"].items()
            if key not in ("num_clusters", "num_samples")}
    root = write_demo_job(tmp_path / "job", n_rows=150, seed=3, config=MODEL_DEMO_CONFIG, with_model=True)
    data = pd.read_csv(next((root / "input" / "data").iterdir()), header=None,
                       names=MODEL_DEMO_CONFIG["headers"]).drop(columns=[MODEL_DEMO_CONFIG["label"]])
    if shap.get("baseline") == "rows":
        shap = {**shap, "baseline": data.head(2).to_numpy().tolist()}
    if "features_to_explain" in shap:
        shap = {**shap, "features_to_explain": [data.columns[i] for i in shap["features_to_explain"]]}
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps({**MODEL_DEMO_CONFIG, "methods": {"shap": {**base, **shap}}}))
    assert run_job(JobPaths.for_root(root)) == 0, (root / "message").read_text()
    assert len(calls) == 2, calls
    assert calls[0] == calls[1]
    assert calls[0][1] > 0


def test_the_pool_is_stopped_once_every_shard_is_reported(tmp_path, monkeypatch) -> None:
    """The spawned workers are stopped, not left to their interpreters' teardown (0.3-0.7 s with a model
    loaded, which a job ending then waits for): each ends by SIGKILL, not with a clean exit of its own."""
    import signal
    from concurrent.futures import ProcessPoolExecutor

    from analyzer.explain import shards
    from container.job import JobPaths, run_job

    pools = []

    class RecordedPool(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(shards, "ProcessPoolExecutor", RecordedPool)
    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "2")
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", "2000")
    job = _shap_job(tmp_path / "job")
    processes = []
    original = shards._stop_pool

    def stop(executor) -> None:
        processes.extend(executor._processes.values())
        original(executor)

    monkeypatch.setattr(shards, "_stop_pool", stop)
    assert run_job(JobPaths.for_root(job.root)) == 0, job.message
    assert len(pools) == 1 and processes
    for process in processes:
        assert _ended(process)
        assert process.exitcode in (-signal.SIGKILL, None)  # None: reaped by the pool's thread, gone


def _text_job(root: Path, n_rows: int = 24) -> JobRoot:
    from container.demo import TEXT_DEMO_CONFIG, write_text_demo_job

    config = {**TEXT_DEMO_CONFIG, "methods": {"shap": {**TEXT_DEMO_CONFIG["methods"]["shap"], "num_samples": 64}}}
    return JobRoot(write_text_demo_job(root, n_rows=n_rows, seed=5, length=12, config=config))


def test_a_text_job_starts_its_shap_workers_while_it_loads_the_model(tmp_path) -> None:
    """A text job's worker is started before the model is loaded and spaCy splits the texts (its units are
    guessed without spaCy, ``_expected_text_workers``), runs shards, and the values are one worker's."""
    pool = _text_job(tmp_path / "pool")
    # Shards of about 1,000 synthetic rows (a few records): several shards for the two workers.
    code, log = _run_program(pool, tmp_path, {"LUCENT_SHAP_WORKERS": "2", "LUCENT_SHAP_SHARD_ROWS": "1000"})
    assert code == 0, log
    assert "SHAP: 1 of the worker processes started while the job loaded the model" in log
    assert "2 worker process(es)" in log
    alone = _text_job(tmp_path / "alone")
    code, log = _run_program(alone, tmp_path, {"LUCENT_SHAP_WORKERS": "1", "LUCENT_SHAP_SHARD_ROWS": "1000"})
    assert code == 0, log
    assert "started while the job loaded the model" not in log
    out = "explanations_shap/out.jsonl"
    assert (pool.output_dir / out).read_bytes() == (alone.output_dir / out).read_bytes()


@pytest.mark.parametrize("shard_rows", ["1000", "200000"], ids=["several-shards", "one-shard"])
def test_the_text_workers_guessed_early_are_the_workers_the_text_step_plans(tmp_path, monkeypatch, shard_rows) -> None:
    """The guess made before spaCy (``expected_shap_workers`` of a text job) plans the shards and workers the
    text SHAP step plans with the real units; its row count is within a few percent of the step's."""
    from analyzer.explain import job as explain_job
    from analyzer.explain import shards
    from container.job import JobPaths, run_job

    calls = []

    def spy(n_shards: int, rows: int, rows_per_worker: int | None, cap: int | None) -> int:
        calls.append((n_shards, rows, rows_per_worker, cap))
        return 1

    monkeypatch.setattr(explain_job, "planned_workers", spy)
    monkeypatch.setattr(shards, "planned_workers", spy)
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", shard_rows)
    job = _text_job(tmp_path / "job", n_rows=40)
    assert run_job(JobPaths.for_root(job.root)) == 0, job.message
    assert len(calls) == 2, calls
    (guessed_shards, guessed_rows, *guessed_rest), (shards_, rows, *rest) = calls
    assert (guessed_shards, guessed_rest) == (shards_, rest)
    assert shards_ > 1 if shard_rows == "1000" else shards_ == 1
    assert abs(guessed_rows - rows) <= 0.05 * rows, (guessed_rows, rows)
