"""Benchmark Lucent's bias metrics against smclarify 0.5 (the library Clarify vendors).

Each bench runs both implementations side by side on the same frame, checks that the results
agree (values to 1e-9, same errors), and prints the two timings and their ratio. Lucent's time
includes turning the frame's columns into ``Column`` objects, which is what the job does.

    python bench/bias.py                  # 1,000,000 rows, all benches
    python bench/bias.py --rows 100000 --only metrics one_vs_rest
    python bench/bias.py --only flip_test --repeat 3

Benches:
  metrics      all pre- and post-training metrics except FT, one facet (target >= 20x)
  one_vs_rest  pre-training metrics one-vs-rest over a 10-value facet (target >= 20x)
  flip_test    FT alone, identical value required (target >= 5x)
  end_to_end   `lucent run` on a --e2e-rows CSV (default 10M rows, ~0.5 GB) with the demo's bias config
               (pre + post "all", two facets, one-vs-rest): peak RSS (target < 1.5 GiB) and rows/s,
               against plain pandas.read_csv of the same file as the same-run reference
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.bias import bias_report, metric_names  # noqa: E402
from analyzer.bias.flip_test import FT  # noqa: E402
from analyzer.data.column import Column  # noqa: E402

POST_WITHOUT_FT = [name for name in metric_names("post_training", ["all"]) if name != "FT"]
FEATURES = ["age", "income", "hours", "education"]


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A census-like frame: string facets, 0/1 label and prediction, string groups, numeric features."""
    rng = np.random.default_rng(seed)
    label = rng.random(rows) < 0.3
    return pd.DataFrame({
        "sex": rng.choice(["Female", "Male"], rows, p=[0.4, 0.6]),
        "race": rng.choice([f"race_{i}" for i in range(10)], rows),
        "label": label.astype(np.int64),
        "pred": np.where(rng.random(rows) < 0.8, label, ~label).astype(np.int64),
        "group": rng.choice(["north", "south", "east", "west", "centre"], rows),
        "age": rng.integers(18, 90, rows),
        "income": rng.lognormal(10, 1, rows).round(0),
        "hours": rng.integers(1, 99, rows),
        "education": rng.integers(1, 17, rows),
    })


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """The function's result and its best wall time over ``repeat`` runs."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return result, best


def same_reports(ours: list[dict], theirs: list[dict]) -> bool:
    """Same entries and metrics, values within 1e-9 (relative), same errors."""
    if [e["value_or_threshold"] for e in ours] != [e["value_or_threshold"] for e in theirs]:
        return False
    for our_entry, their_entry in zip(ours, theirs, strict=True):
        for mine, other in zip(our_entry["metrics"], their_entry["metrics"], strict=True):
            if (mine["name"], mine.get("error")) != (other["name"], other.get("error")):
                return False
            a, b = mine["value"], other["value"]
            if isinstance(a, str | type(None)) or isinstance(b, str | type(None)):
                if a != b:
                    return False
            elif not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                return False
    return True


def lucent(df: pd.DataFrame, facet: str, facet_values: list | None, stage: str, methods: list[str]) -> list[dict]:
    """Lucent's report, including the Column conversion of the role columns."""
    return bias_report(
        Column.from_series(df[facet]), facet_values, Column.from_series(df["label"]), [1], stage, methods,
        Column.from_series(df["pred"]) if stage == "post_training" else None, Column.from_series(df["group"]))


def smclarify(df: pd.DataFrame, facet: str, facet_values: list | None, stage: str, methods: list[str]) -> list[dict]:
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType
    from smclarify.bias.report import bias_report as smclarify_bias_report

    frame = df[[facet, "label", "pred"]]
    return smclarify_bias_report(
        frame, FacetColumn(facet, None if facet_values is None else list(facet_values)),
        LabelColumn("label", frame["label"], [1]), StageType(stage),
        LabelColumn("pred", frame["pred"]) if stage == "post_training" else None,
        metrics=methods, group_variable=df["group"])


def report(name: str, lucent_seconds: float, smclarify_seconds: float, target: float, identical: bool) -> dict:
    ratio = smclarify_seconds / lucent_seconds
    print(f"{name:<12} lucent {lucent_seconds:8.3f} s   smclarify {smclarify_seconds:8.3f} s   "
          f"ratio {ratio:7.1f}x (target {target:g}x) {'OK' if ratio >= target else 'BELOW TARGET'}   "
          f"results {'identical' if identical else 'DIFFER'}", flush=True)
    return {"bench": name, "lucent_s": lucent_seconds, "smclarify_s": smclarify_seconds, "ratio": ratio,
            "target": target, "identical": identical}


def bench_metrics(df: pd.DataFrame, repeat: int = 1) -> dict:
    """All pre- and post-training metrics except FT, facet sex = Female."""
    def run(implementation):
        return (implementation(df, "sex", ["Female"], "pre_training", ["all"]),
                implementation(df, "sex", ["Female"], "post_training", POST_WITHOUT_FT))

    ours, lucent_seconds = timed(lambda: run(lucent), repeat)
    theirs, smclarify_seconds = timed(lambda: run(smclarify), repeat)
    identical = all(same_reports(o, t) for o, t in zip(ours, theirs, strict=True))
    return report("metrics", lucent_seconds, smclarify_seconds, 20, identical)


def bench_one_vs_rest(df: pd.DataFrame, repeat: int = 1) -> dict:
    """Pre-training metrics for each of the 10 values of facet race against the rest."""
    ours, lucent_seconds = timed(lambda: lucent(df, "race", None, "pre_training", ["all"]), repeat)
    theirs, smclarify_seconds = timed(lambda: smclarify(df, "race", None, "pre_training", ["all"]), repeat)
    return report("one_vs_rest", lucent_seconds, smclarify_seconds, 20, same_reports(ours, theirs))


def bench_flip_test(df: pd.DataFrame, repeat: int = 1) -> dict:
    """FT of sex = Female on four numeric features (a KD-tree search, hardly any duplicate row)."""
    from smclarify.bias.metrics import FT as smclarify_FT

    def ours() -> float:
        sex, predicted = Column.from_series(df["sex"]), Column.from_series(df["pred"])
        sensitive = sex.row_mask(sex.uniques.to_numpy() == "Female")
        return FT(df[FEATURES], sensitive, predicted.row_mask(predicted.uniques.to_numpy() == 1))

    value, lucent_seconds = timed(ours, repeat)
    reference, smclarify_seconds = timed(
        lambda: smclarify_FT(df[FEATURES], df["sex"] == "Female", df["pred"] == 1), repeat)
    print(f"             FT lucent {value!r} smclarify {reference!r}")
    return report("flip_test", lucent_seconds, smclarify_seconds, 5, value == reference)


def write_demo_csv(path: Path, rows: int, chunk: int = 1_000_000) -> None:
    """The demo's credit table, generated and appended chunk by chunk (bounded memory)."""
    from container.demo import make_credit_dataset

    with path.open("w") as handle:
        for start in range(0, rows, chunk):
            make_credit_dataset(min(chunk, rows - start), seed=start).to_csv(handle, index=False, header=False)


def run_measured(command: list[str]) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak RSS (bytes) of one child process."""
    import os
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss * 1024


def bench_end_to_end(rows: int) -> dict:
    import json
    import tempfile

    from container.demo import COLUMNS, DEMO_CONFIG

    with tempfile.TemporaryDirectory(prefix="lucent-bench-") as folder:
        root = Path(folder)
        (root / "input" / "config").mkdir(parents=True)
        (root / "input" / "data").mkdir(parents=True)
        config = dict(DEMO_CONFIG, methods={"pre_training_bias": {"methods": "all"},
                                            "post_training_bias": {"methods": "all"}})
        (root / "input" / "config" / "analysis_config.json").write_text(json.dumps(config))
        data = root / "input" / "data" / "credit.csv"
        write_demo_csv(data, rows)
        size = data.stat().st_size
        code, seconds, peak = run_measured([sys.executable, "-m", "container.cli", "run", "--processing-root",
                                            str(root)])
        if code != 0:
            raise SystemExit(f"lucent run failed ({code}): {(root / 'message').read_text()}")
        reader = ("import pandas, sys; pandas.read_csv(sys.argv[1], header=None, names=sys.argv[2].split(','))")
        _, pandas_seconds, pandas_peak = run_measured([sys.executable, "-c", reader, str(data), ",".join(COLUMNS)])
    gib = 1024 ** 3
    print(f"end_to_end   {rows:,} rows, {size / 1e9:.2f} GB CSV: lucent run {seconds:.1f} s = {rows / seconds:,.0f} "
          f"rows/s, peak RSS {peak / gib:.2f} GiB (target < 1.5 GiB) "
          f"{'OK' if peak < 1.5 * gib else 'ABOVE TARGET'}", flush=True)
    print(f"             reference pandas.read_csv alone: {pandas_seconds:.1f} s, peak RSS {pandas_peak / gib:.2f} GiB; "
          f"lucent run / read_csv: time {seconds / pandas_seconds:.2f}x, memory {peak / pandas_peak:.2f}x", flush=True)
    return {"bench": "end_to_end", "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_bytes": peak, "identical": True}


BENCHES: dict[str, Callable[[pd.DataFrame, int], dict]] = {
    "metrics": bench_metrics,
    "one_vs_rest": bench_one_vs_rest,
    "flip_test": bench_flip_test,
}
ALL_BENCHES = [*BENCHES, "end_to_end"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=ALL_BENCHES, default=ALL_BENCHES)
    parser.add_argument("--e2e-rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per timing, best counts (the FT search time varies by ~30%% on shared VMs)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # both libraries log every failed metric and column typing
    in_memory = [name for name in args.only if name in BENCHES]
    results = []
    if in_memory:
        df = make_frame(args.rows, args.seed)
        print(f"bias bench: {args.rows:,} rows", flush=True)
        results = [BENCHES[name](df, args.repeat) for name in in_memory]
        del df
    if "end_to_end" in args.only:
        results.append(bench_end_to_end(args.e2e_rows))
    failed = [r["bench"] for r in results if not r["identical"]]
    if failed:
        raise SystemExit(f"results differ from smclarify in: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
