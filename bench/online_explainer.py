"""Online explainer speed: one record per call, fitted once, vs ``shap.KernelExplainer``, side by side.

Run from the repository root: ``python bench/online_explainer.py`` (needs ``shap``, a benchmark-only
dependency). Issue 12's setting: sklearn GradientBoostingClassifier (100 trees), 14 numeric features, one
baseline row (training mean), Clarify's default budget (2 * 14 + 2048 = 2,076 coalitions), both outputs of
``predict_proba``. Reports medians over many calls of: the model alone on the 2,077 rows a record costs,
``OnlineExplainer.explain`` for one record, and ``shap.KernelExplainer.shap_values`` for the same record and
budget (``l1_reg=False``: Kernel SHAP without its feature selection). Target: explain >= 20x faster.
"""

from __future__ import annotations

import os
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


def median_ms(call, repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main() -> None:
    import shap
    from sklearn.ensemble import GradientBoostingClassifier

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(2000, 14))
    y_train = (x_train[:, 0] + x_train[:, 1] * x_train[:, 2] > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x_train, y_train)
    baseline = x_train.mean(axis=0, keepdims=True)
    records = rng.normal(size=(50, 14))

    explainer = fit_online_explainer(baseline, model.predict_proba, OnlineShapSettings(seed=0))
    rows = np.repeat(records[:1], explainer.synthetic_rows_per_record, axis=0)
    reference = shap.KernelExplainer(model.predict_proba, baseline)
    cycle = iter(range(10**9))

    def one_record(i=None):
        return records[next(cycle) % len(records)][None]

    model_ms = median_ms(lambda: model.predict_proba(rows), 300)
    ours_ms = median_ms(lambda: explainer.explain(one_record()), 300)
    shap_ms = median_ms(lambda: reference.shap_values(one_record(), nsamples=2076, l1_reg=False, silent=True), 40)
    print(f"rows per record {explainer.synthetic_rows_per_record}")
    print(f"model alone       {model_ms:7.3f} ms")
    print(f"online explain    {ours_ms:7.3f} ms  (explainer overhead {ours_ms - model_ms:.3f} ms)")
    print(f"shap.KernelExpl.  {shap_ms:7.3f} ms")
    print(f"speed-up          {shap_ms / ours_ms:7.1f}x  (target >= 20x)")


if __name__ == "__main__":
    main()
