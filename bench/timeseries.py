"""Time-series explanations benchmark: asymmetric Shapley values of 100 items against the model's own time.

Run from the repository root: ``python bench/timeseries.py [--items N] [--steps T] [--server]``.

A linear autoregressive forecaster (12 lags of the target, the last value of each related series,
6-step horizon, numpy over the whole request) is written as a model folder with its ``code/inference.py``
and run by ``lucent run`` on 100 items of 48 timestamps with 2 related series (``timestamp_records``,
``{"instances": $records}``), ``timewise`` granularity, ``chronological`` direction: 49 coalition
records per item. ``--server`` scores through the built-in model server instead of in process.

Reference, measured in the same run: the model's own handler chain (``input_fn`` -> ``predict_fn`` ->
``output_fn``) called directly on the same coalition records in one request, and ``predict_fn`` alone.
Printed: the job's wall time, the explanation step's, and those references.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INFERENCE = '''
import json
import os

import numpy as np


def model_fn(model_dir):
    with open(os.path.join(model_dir, "coefficients.json")) as file:
        return {key: np.asarray(value) for key, value in json.load(file).items()}


def input_fn(body, content_type):
    return json.loads(body)["instances"]


def predict_fn(instances, coef):
    target = np.array([r["target"] for r in instances], dtype=float)
    related = np.array([r["dynamic_feat"] for r in instances], dtype=float)
    lags = coef["lags"]
    history = np.nan_to_num(target[:, -len(lags):][:, ::-1])
    drive = float(coef["intercept"]) + np.nan_to_num(related[:, :, -1]) @ coef["related"]
    out = []
    for _ in range(int(coef["horizon"])):
        y = history @ lags + drive
        out.append(y)
        history = np.concatenate([y[:, None], history[:, :-1]], axis=1)
    return np.stack(out, axis=1)


def output_fn(means, accept):
    return json.dumps({"predictions": [{"mean": m} for m in means.tolist()]})
'''
COEFFICIENTS = {"horizon": 6, "intercept": 0.5, "lags": (0.5 ** np.arange(1, 13)).tolist(), "related": [0.8, -0.3]}


def write_job(root: Path, items: int, steps: int, server: bool) -> None:

    model = root / "input" / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(INFERENCE)
    (model / "coefficients.json").write_text(json.dumps(COEFFICIENTS))
    rng = np.random.default_rng(0)
    records = []
    for item in range(items):
        level = rng.normal(100, 10)
        for t in range(steps):
            records.append({"item_id": f"item{item:03d}", "timestamp": f"2024-01-01T{t // 4:02d}:{15 * (t % 4):02d}",
                            "y": round(level + rng.normal(0, 1), 3), "rain": round(rng.uniform(0, 2), 3),
                            "temp": round(rng.normal(15, 3), 3)})
    (root / "input" / "data").mkdir(parents=True)
    (root / "input" / "data" / "series.json").write_text(json.dumps(records))
    config = {
        "dataset_type": "application/json",
        "methods": {"asymmetric_shapley_value": {"direction": "chronological", "granularity": "timewise"}},
        "predictor": {"content_template": '{"instances": $records}',
                      "record_template": '{"start": $start_time, "target": $target_time_series, '
                                         '"dynamic_feat": $related_time_series}',
                      "time_series_predictor_config": {"forecast": "predictions[*].mean"},
                      **({"lucent_scoring": "server"} if server else {})},
        "time_series_data_config": {"dataset_format": "timestamp_records", "item_id": "[*].item_id",
                                    "timestamp": "[*].timestamp", "target_time_series": "[*].y",
                                    "related_time_series": ["[*].rain", "[*].temp"]},
    }
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "analysis_config.json").write_text(json.dumps(config))


def model_reference(root: Path) -> tuple[int, float, float]:
    """(records, seconds of the handler chain on one request of them all, seconds of predict_fn alone)
    for the coalition records the job sends."""
    from analyzer.config import load_config
    from analyzer.data import load_dataset
    from analyzer.explain.asymmetric_shapley import AsymmetricShapleyExplainer

    config = load_config(root / "input" / "config" / "analysis_config.json")
    dataset = load_dataset(config, root / "input" / "data")
    explainer = AsymmetricShapleyExplainer("chronological", "timewise")
    series = [dataset.target_name, *dataset.related_names]
    frames = [explainer.records(item, explainer.plan(item, series, [])) for item in dataset.items]
    instances = [{"start": row.start_time, "target": row.target_time_series, "dynamic_feat": row.related_time_series}
                 for frame in frames for row in frame.itertuples()]
    body = json.dumps({"instances": instances})
    spec = importlib.util.spec_from_file_location("bench_ts_model", root / "input" / "model" / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    coef = module.model_fn(str(root / "input" / "model"))
    started = time.perf_counter()
    module.output_fn(module.predict_fn(module.input_fn(body, "application/json"), coef), "application/json")
    chain = time.perf_counter() - started
    parsed = module.input_fn(body, "application/json")
    started = time.perf_counter()
    module.predict_fn(parsed, coef)
    return len(instances), chain, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--server", action="store_true", help="score through the built-in model server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from container.cli import main as lucent

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "job"
        write_job(root, args.items, args.steps, args.server)
        step: dict[str, float] = {}
        import analyzer.pipeline as pipeline

        explain = pipeline.time_series_explanations

        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return explain(*a, **k)
            finally:
                step["seconds"] = time.perf_counter() - started

        pipeline.time_series_explanations = timed
        started = time.perf_counter()
        code = lucent(["run", "--processing-root", str(root), "--log-level", "WARNING"])
        job_seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"the job failed: {(root / 'message').read_text()}")
        lines = (root / "output" / "asymmetric_shapley_value" / "timewise_chronological" / "out.jsonl").read_text()
        records, chain, predict = model_reference(root)
    where = "built-in model server" if args.server else "in process"
    print(f"time series: {args.items} items x {args.steps} steps, 2 related series, timewise chronological, "
          f"model {where}")
    print(f"  lines written                     {len(lines.splitlines())}")
    print(f"  coalition records                 {records} ({records // args.items} per item)")
    print(f"  lucent run, whole job             {job_seconds:8.3f} s")
    print(f"  explanation step                  {step['seconds']:8.3f} s  ({records / step['seconds']:,.0f} records/s)")
    print(f"  model handler chain, same records {chain:8.3f} s  (input_fn + predict_fn + output_fn, one request)")
    print(f"  model predict_fn alone            {predict:8.3f} s")
    print(f"  explanation step / handler chain  {step['seconds'] / chain:8.1f}x")
    print(f"  explanation step / predict_fn     {step['seconds'] / predict:8.1f}x")


if __name__ == "__main__":
    main()
