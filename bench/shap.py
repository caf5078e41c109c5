"""Kernel SHAP benchmark: Lucent's estimator vs ``shap.KernelExplainer``, measured side by side in one run.

Run from the repository root: ``python bench/shap.py`` (needs ``shap``, a benchmark-only dependency);
``python bench/shap.py --sidecar`` runs only the section through the built-in model server.

* Speed: sklearn GradientBoostingClassifier (100 trees), M = 12 and M = 20 features, one baseline row
  (training mean), 200 records, the same coalition budget for both (Clarify's default
  ``min(2M + 2048, 2^M - 2)``), ``l1_reg=False`` for shap (its default feature selection is not Kernel
  SHAP). Wall time in-process, and the share of it spent inside the model.
* Through the built-in sidecar: the same GBM saved as a model folder, served by ``lucent serve-model``
  (one worker per core), explained by the job's sharded runner (``analyzer.explain.job.explain_shap``)
  with the requests ``lucent run`` sends its own server (npy rows, npy scores). Wall time of the SHAP step
  (server already started) against the model's own in-process ``predict_proba`` time for the same number
  of rows (target: at most 2x), and the CPU time the job process and the server's workers spent in it.
* Accuracy at M = 12: mean absolute error against exact Shapley values (all 2^12 - 2 coalitions, our
  exact mode, which the test-suite checks against brute-force enumeration).
* Accuracy at M = 20: models with closed-form SHAP values for a single baseline row: a linear model
  (phi_j = beta_j (x_j - b_j); every Kernel SHAP regression is exact on it, so this only checks plumbing)
  and a linear model plus three-way products (each product's value splits over its three features by the
  3-player Shapley formula; paired sampling is exact up to pairwise interactions, so this one is not).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.explain import KernelShap, default_num_samples  # noqa: E402
from bench.processes import children, cpu_seconds, served_endpoint  # noqa: E402

N_RECORDS = 200


class TimedModel:
    """Wraps a scoring function and accumulates the time spent inside it."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0
        self.rows = 0

    def __call__(self, rows):
        start = time.perf_counter()
        out = self.fn(rows)
        self.seconds += time.perf_counter() - start
        self.rows += len(rows)
        return out


def run_ours(fn, baseline, x, budget, seed=0):
    model = TimedModel(fn)
    start = time.perf_counter()
    values = KernelShap(model, baseline, num_samples=budget, seed=seed).explain(x).values[:, :, 0]
    return values, time.perf_counter() - start, model


def _import_shap():
    """The real ``shap`` package, not this file (a script's folder comes first on ``sys.path``)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("shap", None)
    try:
        import shap
    except ModuleNotFoundError:
        sys.exit("the benchmarks compare against the shap package: `make bench` installs it "
                 "(or pip install -e '.[bench]')")
    return shap


def run_shap(fn, baseline, x, budget):
    shap = _import_shap()
    model = TimedModel(fn)
    start = time.perf_counter()
    explainer = shap.KernelExplainer(model, baseline)
    values = np.asarray(explainer.shap_values(x, nsamples=budget, l1_reg=False, silent=True))
    return values.reshape(len(x), -1), time.perf_counter() - start, model


def gbm(m, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000 + N_RECORDS, m))
    logits = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + x[:, 3] * (x[:, 4] > 0) + 0.3 * x[:, 5:].sum(axis=1)
    y = (logits + rng.logistic(size=len(x)) > 0).astype(int)
    clf = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x[:2000], y[:2000])
    return (lambda a: clf.predict_proba(a)[:, 1]), x[:2000].mean(axis=0, keepdims=True), x[2000:]


def interaction_model(m, seed=0):
    """Linear + three-way products; returns (model, exact SHAP function for one baseline row)."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=m)
    triples = [tuple(rng.choice(m, 3, replace=False)) for _ in range(m)]
    gamma = rng.normal(size=len(triples))

    def model(a):
        a = np.asarray(a, dtype=float)
        return a @ beta + sum(g * a[:, list(t)].prod(axis=1) for g, t in zip(gamma, triples, strict=True))

    def exact(x, b):
        phi = beta * (x - b)
        for g, t in zip(gamma, triples, strict=True):
            for pos, j in enumerate(t):  # 3-player Shapley formula for the product term
                others = [k for k in range(3) if k != pos]
                for size in range(3):
                    for subset in itertools.combinations(others, size):
                        w = math.factorial(size) * math.factorial(2 - size) / 6
                        rest = np.prod([x[:, t[k]] if k in subset else np.full(len(x), b[0, t[k]]) for k in others], 0)
                        phi[:, j] += g * w * (x[:, j] - b[0, j]) * rest
        return phi

    return model, exact


def speed(m):
    fn, baseline, x = gbm(m)
    budget = default_num_samples(m)
    ours, t_ours, model_ours = run_ours(fn, baseline, x, budget)
    theirs, t_shap, model_shap = run_shap(fn, baseline, x, budget)
    print(f"\nGBM (100 trees), M = {m}, {N_RECORDS} records, 1 baseline row, budget {budget} coalitions")
    print(f"  lucent: {t_ours:7.2f} s total, {model_ours.seconds:6.2f} s in model "
          f"({100 * model_ours.seconds / t_ours:4.1f} %), {model_ours.rows:,} model rows")
    print(f"  shap  : {t_shap:7.2f} s total, {model_shap.seconds:6.2f} s in model "
          f"({100 * model_shap.seconds / t_shap:4.1f} %), {model_shap.rows:,} model rows")
    print(f"  speed-up: {t_shap / t_ours:5.1f}x total, {(t_shap - model_shap.seconds) / (t_ours - model_ours.seconds):5.1f}x "
          "outside the model")
    return fn, baseline, x, budget, ours, theirs


def through_sidecar(m):
    """Wall time of the job's SHAP step on the built-in model server vs in-process predict time."""
    import json
    import tempfile

    import joblib

    from analyzer.config import parse_config
    from analyzer.data import load_dataset
    from analyzer.explain.job import explain_shap
    from analyzer.output import OutputStaging

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000 + N_RECORDS, m))
    y = (x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.3 * x[:, 5:].sum(axis=1) + rng.logistic(size=len(x)) > 0)
    clf = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x[:2000], y[:2000].astype(int))
    baseline, records = x[:2000].mean(axis=0, keepdims=True), x[2000:]
    names = [f"f{j}" for j in range(m)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        joblib.dump(clf, root / "model" / "model.joblib")
        np.savetxt(root / "data.csv", np.column_stack([records, np.zeros(len(records))]), delimiter=",")
        config = parse_config(json.loads(json.dumps({
            "dataset_type": "text/csv", "headers": [*names, "y"], "label": "y",
            "methods": {"shap": {"baseline": baseline.tolist(), "seed": 0, "save_local_shap_values": True}},
            "predictor": {"probability": 1}})))
        dataset = load_dataset(config, root / "data.csv", need_features=True)
        with served_endpoint(root / "model", config, dataset, names) as (server, endpoint), \
                OutputStaging(root / "out") as staging:
            workers = children(server.pid)
            cpu_before, workers_before = time.process_time(), cpu_seconds(workers)
            start = time.perf_counter()
            explain_shap(config, config.methods.shap, dataset, endpoint, staging, root / "work", root)
            wall = time.perf_counter() - start
            job_cpu, workers_cpu = time.process_time() - cpu_before, cpu_seconds(workers) - workers_before
    budget = default_num_samples(m)
    n_rows = N_RECORDS * (budget + 1) + 1
    # Reference: the model's own in-process time on exactly the rows the job sends (same design, seed and
    # baseline): captured from an in-process explanation, then timed on their own, with nothing else
    # running. Trees cost more on these mixed rows than on the records repeated, so those are timed too.
    captured = []

    def capture(rows):
        captured.append(np.array(rows))
        return np.zeros((len(rows), 2))

    KernelShap(capture, baseline, num_samples=budget, seed=0).explain(records)
    rows_sent = np.concatenate(captured)
    start = time.perf_counter()
    for i in range(0, len(rows_sent), 100_000):
        clf.predict_proba(rows_sent[i:i + 100_000])
    in_process = time.perf_counter() - start
    synthetic = np.repeat(records, budget + 1, axis=0)
    start = time.perf_counter()
    for i in range(0, len(synthetic), 100_000):
        clf.predict_proba(synthetic[i:i + 100_000])
    repeated = time.perf_counter() - start
    print(f"\nThrough the built-in sidecar, GBM (100 trees), M = {m}, {N_RECORDS} records, 1 baseline row, "
          f"{n_rows:,} model rows")
    print(f"  job SHAP step {wall:6.2f} s; in-process predict_proba of the same synthetic rows {in_process:6.2f} s "
          f"({len(rows_sent):,} rows); ratio {wall / in_process:4.2f} (target <= 2)")
    print(f"  (in-process predict_proba of the records repeated to as many rows: {repeated:6.2f} s, "
          f"ratio {wall / repeated:4.2f})")
    print(f"  CPU during the SHAP step: job process {job_cpu:5.2f} s, {len(workers)} model server worker(s) "
          f"{workers_cpu:5.2f} s ({os.cpu_count()} cores)")


def main():
    if "--sidecar" in sys.argv:
        through_sidecar(12)
        through_sidecar(20)
        return
    fn, baseline, x, budget, ours, theirs = speed(12)
    exact, _, _ = run_ours(fn, baseline, x, 2**12 - 2)
    err_ours, err_shap = np.abs(ours - exact).mean(), np.abs(theirs - exact).mean()
    print(f"  MAE vs exact (enumeration of 4094 coalitions): lucent {err_ours:.3e}, shap {err_shap:.3e}, "
          f"ratio shap/lucent {err_shap / err_ours:.2f}")

    speed(20)
    m = 20
    budget = default_num_samples(m)
    rng = np.random.default_rng(1)
    x, baseline = rng.normal(size=(N_RECORDS, m)), rng.normal(size=(1, m))
    beta = rng.normal(size=m)
    linear = lambda a: np.asarray(a, dtype=float) @ beta  # noqa: E731
    truth = beta * (x - baseline)
    ours = run_ours(linear, baseline, x, budget)[0]
    theirs = run_shap(linear, baseline, x, budget)[0]
    print(f"\nLinear model, M = 20, budget {budget}: MAE vs closed form: lucent {np.abs(ours - truth).mean():.1e}, "
          f"shap {np.abs(theirs - truth).mean():.1e}")
    model, exact_fn = interaction_model(m)
    truth = exact_fn(x, baseline)
    for b in (200, budget):
        errs = [np.abs(run_ours(model, baseline, x, b, seed=s)[0] - truth).mean() for s in range(3)]
        err_shap = np.mean([np.abs(run_shap(model, baseline, x, b)[0] - truth).mean() for _ in range(3)])
        print(f"Linear + 3-way products, M = 20, budget {b}: MAE vs closed form (mean of 3 runs): "
              f"lucent {np.mean(errs):.3e}, shap {err_shap:.3e}, ratio shap/lucent {err_shap / np.mean(errs):.2f}")


if __name__ == "__main__":
    main()
