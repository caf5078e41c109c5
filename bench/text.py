"""Text explanations benchmark: 1,000 reviews through the job's SHAP step, time in the model.

Run from the repository root: ``python bench/text.py [--records N] [--length TOKENS] [--scoring S]``.

The demo's review model (TF-IDF + one-hot category -> logistic regression, ``container.demo``) is saved
as a model folder with its JSON Lines ``inference.py``. The job's SHAP step
(``analyzer.explain.job.explain_shap``: token granularity, default sample count, ``<PAD>`` baseline,
worker processes, checkpoints, out.jsonl) explains every review, with the model scored as ``lucent run``
scores it by default (``--scoring in-process``: the folder loaded in the job's processes, through its
handlers) or through the built-in server (``--scoring server``: one gunicorn worker per core).

Reference, measured in the same run: the model's own ``predict_proba`` over the step's synthetic rows
themselves (each record's texts with some tokens replaced by ``<PAD>``, built by the same explainer, timed
around the model's call alone). Not the records' texts repeated: the same few texts scored again and
again stay in the CPU's caches, and cost the model about two thirds of what as many distinct texts do.
Printed: records/s; the floor (the reference's CPU time divided by the cores: the step cannot be faster
unless the model is) and the step's wall time against it; and the model's share of the CPU time: the
reference's CPU time against all the CPU the step used (job process, its SHAP worker processes, the
server's workers). Target: the non-model share under half.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import children, cpu_seconds, served_endpoint  # noqa: E402


def main() -> None:
    import joblib

    from analyzer.config import parse_config
    from analyzer.data import load_dataset
    from analyzer.explain.job import explain_shap
    from analyzer.explain.text_units import split_texts
    from analyzer.output import OutputStaging
    from container.demo import (
        REVIEW_FEATURES,
        REVIEW_INFERENCE_SCRIPT,
        TEXT_DEMO_CONFIG,
        make_review_dataset,
        train_review_model,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--length", type=int, default=80, help="tokens per review, about")
    parser.add_argument("--scoring", choices=("in-process", "server"), default="in-process",
                        help="how the job's SHAP step scores the model (default: as lucent run does)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    train = make_review_dataset(4000, seed=1, length=args.length)
    model = train_review_model(train)
    data = make_review_dataset(args.records, seed=2, length=args.length)
    units = split_texts(data["review_body"], "en", "token")
    tokens = [len(u) for u in units]
    config = parse_config(json.loads(json.dumps({
        **TEXT_DEMO_CONFIG, "methods": {"shap": {**TEXT_DEMO_CONFIG["methods"]["shap"]}}})))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model" / "code").mkdir(parents=True)
        joblib.dump(model, root / "model" / "model.joblib")
        (root / "model" / "code" / "inference.py").write_text(REVIEW_INFERENCE_SCRIPT)
        with (root / "reviews.jsonl").open("w") as handle:
            for body, category, label in data[[*REVIEW_FEATURES, "label"]].itertuples(index=False):
                handle.write(json.dumps({"features": [body, category], "label": int(label)}) + "\n")
        dataset = load_dataset(config, root / "reviews.jsonl", need_features=True)
        with _scored(args.scoring, root / "model", config, dataset) as (server_workers, endpoint), \
                OutputStaging(root / "out") as staging:
            before = _own_cpu(), cpu_seconds(server_workers)
            start = time.perf_counter()
            explain_shap(config, config.methods.shap, dataset, endpoint, staging, root / "work", root)
            wall = time.perf_counter() - start
            job_cpu, server_cpu = _own_cpu() - before[0], cpu_seconds(server_workers) - before[1]
            lines = (staging.staging_dir / "explanations_shap" / "out.jsonl").read_text().count("\n")
        assert lines == args.records, lines

    n_rows, in_process, model_cpu = _model_on_synthetic_rows(model, dataset, config)
    cores = len(os.sched_getaffinity(0))
    total_cpu = job_cpu + server_cpu
    share = model_cpu / total_cpu
    floor = model_cpu / cores
    where = "in the job's processes" if args.scoring == "in-process" else "through the built-in server"
    print(f"Text SHAP, the model scored {where}: {args.records} reviews, {np.mean(tokens):.1f} tokens on average "
          f"({min(tokens)} to {max(tokens)}), token granularity, default num_samples, 1 baseline row")
    print(f"  synthetic rows sent to the model: {n_rows:,}")
    print(f"  job SHAP step: {wall:7.2f} s = {args.records / wall:6.2f} records/s, {n_rows / wall:,.0f} rows/s")
    print(f"  CPU during the step: job process and its SHAP workers {job_cpu:7.2f} s, {len(server_workers)} model "
          f"server workers {server_cpu:7.2f} s, total {total_cpu:7.2f} s")
    print(f"  model's own predict_proba on the step's synthetic rows: {in_process:7.2f} s ({model_cpu:7.2f} s CPU); "
          f"/ {cores} cores = {floor:7.2f} s, the step's floor: the step took {wall / floor:4.2f}x that")
    print(f"  model share of the CPU time: {100 * share:5.1f} %; non-model share: {100 * (1 - share):5.1f} % "
          f"(target < 50 %)")


@contextlib.contextmanager
def _scored(scoring: str, model_dir: Path, config, dataset) -> Iterator[tuple[list[int], object]]:
    """``(server worker pids, endpoint)``: the model as the job scores it (``container.job.open_model``,
    in process) or the built-in server with every worker loaded."""
    from container.demo import REVIEW_FEATURES

    if scoring == "server":
        with served_endpoint(model_dir, config, dataset, REVIEW_FEATURES) as (server, endpoint):
            yield children(server.pid), endpoint
        return
    from container.job import open_model

    with contextlib.ExitStack() as scope:
        endpoint, _ = open_model(config, dataset, model_dir, scope)
        yield [], endpoint


def _model_on_synthetic_rows(model, dataset, config, records_per_call: int = 20) -> tuple[int, float, float]:
    """``(rows, wall s, CPU s)`` of the model's own ``predict_proba`` over the synthetic rows the SHAP step
    scores: the text explainer builds them (a few records at a time, as the step does) and hands them to a
    function that times the model's call alone, on a DataFrame as the demo's ``input_fn`` makes one."""
    from analyzer.explain.job import _text_inputs
    from analyzer.explain.text_shap import TextKernelShap
    from container.demo import REVIEW_FEATURES

    shap = config.methods.shap
    text = _text_inputs(shap, dataset)
    baseline = np.array([row["features"] for row in shap.baseline], dtype=object)
    timed = {"rows": 0, "wall": 0.0, "cpu": 0.0}

    def score(rows: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(list(rows), columns=REVIEW_FEATURES)
        start, cpu = time.perf_counter(), time.process_time()
        scores = model.predict_proba(frame)[:, 1]
        timed["wall"] += time.perf_counter() - start
        timed["cpu"] += time.process_time() - cpu
        timed["rows"] += len(rows)
        return scores

    explainer = TextKernelShap(score, baseline, text.columns, seed=shap.seed)
    records = dataset.features.to_numpy(dtype=object)
    for first in range(0, len(records), records_per_call):
        explainer.explain(records[first:first + records_per_call], text.units[first:first + records_per_call])
    return timed["rows"], timed["wall"], timed["cpu"]


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (the SHAP worker processes)."""
    own, children_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children_usage.ru_utime + children_usage.ru_stime


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
