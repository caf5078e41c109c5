"""The SHAP pool's spawned workers end on their own once every shard is reported (``shards._run_pool`` does
not wait for their teardown): a job run as the program still leaves no process behind, and its values are
the same bytes as with one worker."""

from __future__ import annotations

from pathlib import Path

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
