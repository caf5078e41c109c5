"""Every sample config runs on the demo data written in its format, and all give the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from container.demo import COLUMNS, make_credit_dataset
from tests.conftest import JobRoot

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"
FEATURES = COLUMNS[:7]


def write_data(job: JobRoot, config: dict, df: pd.DataFrame) -> None:
    kind = config["dataset_type"]
    records = [{"features": row[FEATURES].tolist(), "label": int(row["approved"]),
                "predicted_label": int(row["predicted_approved"])} for _, row in df.iterrows()]
    if kind == "text/csv" and "facet_dataset_uri" in config:
        with_id = df.assign(id=[f"r{i:04d}" for i in range(len(df))])
        with_id[config["headers"]].to_csv(job.data_dir / "main.csv", index=False, header=False)
        # shuffled side files: the join must go by id, not by row order
        with_id[config["facet_headers"]].sample(frac=1, random_state=1).to_csv(
            job.config_dir / config["facet_dataset_uri"], index=False, header=False)
        with_id[config["predicted_label_headers"]].sample(frac=1, random_state=2).to_csv(
            job.config_dir / config["predicted_label_dataset_uri"], index=False, header=False)
    elif kind == "text/csv":
        df.to_csv(job.data_dir / "data.csv", index=False, header=False)
    elif kind == "application/jsonlines":
        (job.data_dir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "application/json":
        (job.data_dir / "data.json").write_text(json.dumps(records))
    elif kind == "application/x-parquet":
        df.to_parquet(job.data_dir / "data.parquet", row_group_size=100)
    else:
        raise AssertionError(kind)


def run_sample(tmp_path: Path, name: str, df: pd.DataFrame) -> dict:
    config = json.loads((SAMPLES / name).read_text())
    config["methods"].pop("report", None)  # the report has its own tests; numbers are what differ here
    job = JobRoot(tmp_path / name.removesuffix(".json"))
    job.write_config(config)
    write_data(job, config, df)
    assert job.run() == 0, job.message
    return job.analysis()


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.json")))
def test_sample_config_runs_and_matches_the_csv_job(tmp_path, name):
    df = make_credit_dataset(500, seed=11)
    expected = run_sample(tmp_path / "reference", "bias_csv.json", df)
    assert run_sample(tmp_path, name, df) == expected
