"""Throughput of the predictor client + built-in model server against in-process predict_proba.

Target (issue: model sidecar): the sidecar path reaches at least 50% of the in-process throughput of
the same fitted HistGradientBoostingClassifier on the same 1M x 20 rows, measured in the same run.

    .venv/bin/python bench/predict.py [--rows 1000000] [--repeats 2]

Prints rows/s for each path and the ratio to in-process. "csv" sends text/csv as configured;
"job" is what `lucent run` sends to its own server (application/x-npy when the server decodes
requests with its default handler and the features are numeric: the model sees the same array).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from analyzer.config import Predictor
from analyzer.predict import ModelEndpoint
from container.job import LOCAL_MAX_PAYLOAD_BYTES
from container.sidecar import start_model_server


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.features))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=args.rows) > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(X[:100_000], y[:100_000])
    expected = model.predict_proba(X)
    print(f"rows: {args.rows:,} x {args.features} features, HistGradientBoostingClassifier(max_iter=100); "
          f"best of {args.repeats}, the paths interleaved so machine load hits them alike")

    names = tuple(f"f{i}" for i in range(args.features))
    paths = {"in-process predict_proba": None, "client + built-in sidecar, text/csv": "text/csv",
             "client + built-in sidecar, as `lucent run` sends (application/x-npy)": "application/x-npy"}
    best = dict.fromkeys(paths, float("inf"))
    with tempfile.TemporaryDirectory() as folder:
        joblib.dump(model, Path(folder) / "model.joblib")
        with start_model_server(folder) as server:
            server.wait_healthy(timeout=120)
            for _ in range(args.repeats):
                for name, content_type in paths.items():
                    if content_type is None:
                        seconds, _ = timed(lambda: model.predict_proba(X))
                    else:
                        endpoint = ModelEndpoint(server.url, Predictor(content_type=content_type,
                                                                       accept_type="text/csv"),
                                                 names, max_payload_bytes=LOCAL_MAX_PAYLOAD_BYTES)
                        with endpoint.client() as client:
                            seconds, predictions = timed(lambda client=client: client.predict(X))
                        assert np.allclose(predictions.scores, expected, rtol=0, atol=1e-12), "scores differ"
                    best[name] = min(best[name], seconds)
    reference = best["in-process predict_proba"]
    for name, seconds in best.items():
        ratio = reference / seconds
        verdict = "" if name.startswith("in-process") else \
            f", {ratio:.0%} of in-process ({'meets' if ratio >= 0.5 else 'misses'} the 50% target)"
        print(f"{name}: {seconds:.2f} s = {args.rows / seconds:,.0f} rows/s{verdict}")


if __name__ == "__main__":
    main()
