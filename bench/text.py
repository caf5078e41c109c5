"""Text explanations benchmark: 1,000 reviews through the built-in model server, time in the model.

Run from the repository root: ``python bench/text.py [--records N] [--length TOKENS]``.

The demo's review model (TF-IDF + one-hot category -> logistic regression, ``container.demo``) is saved
as a model folder with its JSON Lines ``inference.py`` and served by the built-in server (one gunicorn
worker per core). The job's SHAP step (``analyzer.explain.job.explain_shap``: token granularity,
default sample count, ``<PAD>`` baseline, worker processes, checkpoints, out.jsonl) explains every
review. Reference, measured in the same run: the model's own in-process ``predict_proba`` over the same
number of rows (the records' texts, repeated; a synthetic text is the record with some tokens replaced
by ``<PAD>``, so it costs the model the same).

Printed: records/s, and the model's share of the CPU time: the reference's CPU time against all the CPU
the step used (job process, its SHAP worker processes, the server's workers). CPU rather than wall time
because the server's workers run the model in parallel, which would hide the rest's cost in a wall-time
share. Target: the non-model share under half.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
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
    from analyzer.explain.text_job import synthetic_rows
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
        with served_endpoint(root / "model", config, dataset, REVIEW_FEATURES) as (server, endpoint), \
                OutputStaging(root / "out") as staging:
            server_workers = children(server.pid)
            before = _own_cpu(), cpu_seconds(server_workers)
            start = time.perf_counter()
            explain_shap(config, config.methods.shap, dataset, endpoint, staging, root / "work", root)
            wall = time.perf_counter() - start
            job_cpu, server_cpu = _own_cpu() - before[0], cpu_seconds(server_workers) - before[1]
            lines = (staging.staging_dir / "explanations_shap" / "out.jsonl").read_text().count("\n")
        assert lines == args.records, lines

    # The same number of rows through the model in-process: every record's text once per synthetic row.
    n_rows = sum(synthetic_rows([u], len(REVIEW_FEATURES), None, 1) for u in units)
    frame = data[REVIEW_FEATURES]
    start, cpu_start = time.perf_counter(), time.process_time()
    done = 0
    while done < n_rows:
        take = min(50_000, n_rows - done)
        index = np.arange(done, done + take) % len(frame)
        model.predict_proba(frame.iloc[index])
        done += take
    in_process, model_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    total_cpu = job_cpu + server_cpu
    share = model_cpu / total_cpu
    print(f"Text SHAP through the built-in sidecar: {args.records} reviews, {np.mean(tokens):.1f} tokens on average "
          f"({min(tokens)} to {max(tokens)}), token granularity, default num_samples, 1 baseline row")
    print(f"  synthetic rows sent to the model: {n_rows:,}")
    print(f"  job SHAP step: {wall:7.2f} s = {args.records / wall:6.2f} records/s, {n_rows / wall:,.0f} rows/s")
    print(f"  CPU during the step: job process and its SHAP workers {job_cpu:7.2f} s, {len(server_workers)} model "
          f"server workers {server_cpu:7.2f} s, total {total_cpu:7.2f} s")
    print(f"  model in-process predict_proba, same rows: {in_process:7.2f} s ({model_cpu:7.2f} s CPU)")
    print(f"  model share of the CPU time: {100 * share:5.1f} %; non-model share: {100 * (1 - share):5.1f} % "
          f"(target < 50 %)")


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (the SHAP worker processes)."""
    own, children_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children_usage.ru_utime + children_usage.ru_stime


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
