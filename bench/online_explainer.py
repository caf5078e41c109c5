"""Online explainer speed: one record per call, fitted once, vs ``shap.KernelExplainer``, side by side.

Run from the repository root: ``python bench/online_explainer.py`` (needs ``shap``, a benchmark-only
dependency). Issue 12's setting: sklearn GradientBoostingClassifier (100 trees), 14 numeric features, one
baseline row (training mean), Clarify's default budget (2 * 14 + 2048 = 2,076 coalitions), both outputs of
``predict_proba``. Reports medians over many calls, all measured in this one run:

- the explainer's own cost: ``OnlineExplainer.explain`` for one record with a trivial numpy model (one
  matrix product, ~10 us for the 2,077 rows), minus that model's time; target about 0.25 ms;
- the model alone on the 2,077 rows a record costs, ``OnlineExplainer.explain`` for one record with the
  model, and ``shap.KernelExplainer.shap_values`` for the same record and budget (``l1_reg=False``: Kernel
  SHAP without its feature selection). Target: explain >= 20x faster than shap.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per call, as a request is served
# bench/ itself holds a shap.py: take it off the path so that ``import shap`` finds the library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analyzer.explain.online import OnlineShapSettings, fit_online_explainer  # noqa: E402

N_FEATURES = 14


def median_ms(call, repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def page_faults_per_call(call, repeat: int = 200) -> float:
    """Minor page faults per call: fresh memory of a few hundred kB costs more than the arithmetic in it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeat):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeat


def main() -> None:
    import shap
    from sklearn.ensemble import GradientBoostingClassifier

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(2000, N_FEATURES))
    y_train = (x_train[:, 0] + x_train[:, 1] * x_train[:, 2] > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x_train, y_train)
    baseline = x_train.mean(axis=0, keepdims=True)
    records = rng.normal(size=(50, N_FEATURES))
    cycle = iter(range(10**9))

    def one_record():
        return records[next(cycle) % len(records)][None]

    # The explainer alone: a model that costs almost nothing (two outputs, like predict_proba).
    weights = rng.normal(size=(N_FEATURES, 2))

    def trivial_model(rows: np.ndarray) -> np.ndarray:
        return rows @ weights

    trivial = fit_online_explainer(baseline, trivial_model, OnlineShapSettings(seed=0))
    rows = trivial.tabular.synthetic_rows(records[:1])
    trivial_model_ms = median_ms(lambda: trivial_model(rows), 2000)
    trivial_ms = median_ms(lambda: trivial.explain(one_record()), 2000)
    faults = page_faults_per_call(lambda: trivial.explain(one_record()))

    # Interleaved, so that the machine's load drifts equally over the three: per round, the model alone on
    # one record's synthetic rows, the explainer on that record, and (every 8th round) shap on it.
    explainer = fit_online_explainer(baseline, model.predict_proba, OnlineShapSettings(seed=0))
    reference = shap.KernelExplainer(model.predict_proba, baseline)
    synthetic = [explainer.tabular.synthetic_rows(records[i:i + 1]) for i in range(len(records))]
    model_s, ours_s, shap_s = [], [], []
    for i in range(400):
        record = records[i % len(records)][None]
        started = time.perf_counter()
        model.predict_proba(synthetic[i % len(records)])
        model_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        explainer.explain(record)
        ours_s.append(time.perf_counter() - started)
        if i % 8 == 0:
            started = time.perf_counter()
            reference.shap_values(record, nsamples=2076, l1_reg=False, silent=True)
            shap_s.append(time.perf_counter() - started)
    model_ms, ours_ms, shap_ms = (float(np.median(t[1:]) * 1e3) for t in (model_s, ours_s, shap_s))

    print(f"rows per record {explainer.synthetic_rows_per_record}")
    print(f"explainer alone   {trivial_ms - trivial_model_ms:7.3f} ms  (explain {trivial_ms:.3f} ms with a numpy "
          f"model taking {trivial_model_ms:.3f} ms; {faults:.0f} page faults per call; target ~0.25 ms)")
    print(f"model alone       {model_ms:7.3f} ms  (GradientBoostingClassifier, 100 trees, predict_proba of the "
          "record's synthetic rows)")
    print(f"online explain    {ours_ms:7.3f} ms  (explainer overhead {ours_ms - model_ms:.3f} ms)")
    print(f"shap.KernelExpl.  {shap_ms:7.3f} ms")
    print(f"speed-up          {shap_ms / ours_ms:7.1f}x  (target >= 20x)")


if __name__ == "__main__":
    main()
