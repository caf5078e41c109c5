"""Spark engine benchmark (issue #15, "Speed and scale"): the same ``lucent run`` on the local engine and
on Spark ``local[2]``, one run, side by side.

    python bench/spark.py                       # 100M bias rows, 200,000 SHAP records (long: an hour here)
    python bench/spark.py --rows 10000000 --records 4000

* Bias counts: a Parquet dataset of ``--rows`` generated rows (label, facet, group variable: 3 role columns,
  row groups of 1M) and every pre-training metric. The local engine streams it in chunks; Spark reads it
  itself and sends the driver one row per distinct combination. Printed: each side's wall time and rows/s,
  and the driver's own peak RSS (the ``lucent run`` process; Spark's JVM is its child and is printed
  apart). Target: the driver under 1 GiB on Spark.
* SHAP: ``--records`` records x 14 features, a GradientBoostingClassifier (100 trees) in the model folder,
  scored through the built-in model server (``predictor.lucent_scoring: "server"``), default coalitions.
  Printed: records/s on each engine and Spark's share of the local engine's throughput (target >= 80 %).

Each job is a new ``lucent run`` process, as a user runs it; both engines' outputs are compared byte for
byte (analysis.json, and out.csv for SHAP).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import TreeMemory  # noqa: E402

GIB = 1024**3
M = 14


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_bias_rows(folder: Path, rows: int, seed: int = 0) -> None:
    """``rows`` rows of (label, facet, group) as Parquet files of at most 10M rows, row groups of 1M."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    facets = pa.array(["a", "b", "c", "d", "e"])
    for part, start in enumerate(range(0, rows, 10_000_000)):
        n = min(10_000_000, rows - start)
        facet = rng.integers(0, 5, n)
        label = (rng.random(n) < 0.3 + 0.05 * facet).astype(np.int8)
        table = pa.table({"label": label, "facet": pa.DictionaryArray.from_arrays(facet.astype(np.int32), facets),
                          "group": rng.integers(0, 40, n).astype(np.int16)})
        pq.write_table(table, folder / f"part-{part:03d}.parquet", row_group_size=1_000_000)


def run_lucent(root: Path, *extra: str) -> tuple[float, int, TreeMemory]:
    lucent = Path(sys.executable).with_name("lucent")
    command = [str(lucent), "run", "--processing-root", str(root), *extra]
    with (root / "job.log").open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"lucent run {' '.join(extra)} failed (exit {code}):\n"
                         + "\n".join((root / "job.log").read_text().splitlines()[-10:]))
    return wall, process.pid, memory


def driver_and_jvm(memory: TreeMemory, pid: int) -> tuple[int, int]:
    """(the lucent process's own peak, the sum of the other processes' peaks), bytes."""
    own = memory.hwm.get(pid, ("", 0))[1]
    return own, sum(peak for other, (_, peak) in memory.hwm.items() if other != pid)


def fresh_output(root: Path) -> None:
    shutil.rmtree(root / "output", ignore_errors=True)
    (root / "output").mkdir()


def bias(tmp: Path, rows: int) -> None:
    root = tmp / "bias"
    write_started = time.perf_counter()
    write_bias_rows(root / "input" / "data", rows)
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "analysis_config.json").write_text(json.dumps({
        "dataset_type": "application/x-parquet", "label": "label", "label_values_or_threshold": [1],
        "facet": [{"name_or_index": "facet", "value_or_threshold": ["a"]}], "group_variable": "group",
        "methods": {"pre_training_bias": {"methods": "all"}}}))
    print(f"Bias counts: {rows:,} rows of 3 role columns (Parquet, generated in {time.perf_counter() - write_started:.1f} s), "
          "every pre-training metric")
    results = {}
    for name, extra in (("local engine", ()), ("Spark local[2]", ("--engine", "spark", "--spark-master", "local[2]"))):
        fresh_output(root)
        load = loadavg()
        wall, pid, memory = run_lucent(root, *extra)
        own, others = driver_and_jvm(memory, pid)
        results[name] = (root / "output" / "analysis.json").read_bytes()
        print(f"  {name:15s} {wall:8.2f} s = {rows / wall:12,.0f} rows/s; the driver's own peak RSS "
              f"{own / GIB:5.2f} GiB{' (target < 1 GiB)' if extra else ''}, its child processes {others / GIB:5.2f} GiB"
              f"  [loadavg {load}]")
    print(f"  analysis.json identical: {results['local engine'] == results['Spark local[2]']}")


def shap(tmp: Path, records: int) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier

    from bench.scale import records as make_records
    from bench.scale import train_model

    clf, baseline = train_model()
    x = make_records(records)
    root = tmp / "shap"
    for folder in ("config", "data", "model"):
        (root / "input" / folder).mkdir(parents=True)
    assert isinstance(clf, GradientBoostingClassifier)
    joblib.dump(clf, root / "input" / "model" / "model.joblib")
    np.savetxt(root / "input" / "data" / "data.csv", np.column_stack([x, np.zeros(len(x))]), delimiter=",")
    (root / "input" / "config" / "analysis_config.json").write_text(json.dumps({
        "dataset_type": "text/csv", "headers": [*(f"f{j}" for j in range(M)), "y"], "label": "y",
        "methods": {"shap": {"baseline": baseline.tolist(), "seed": 0}},
        "predictor": {"probability": 1, "lucent_scoring": "server"}}))
    print(f"\nSHAP: {records:,} records x {M} features, default coalitions, GBM (100 trees) through the built-in "
          "model server")
    rates, outputs = {}, {}
    for name, extra in (("local engine", ()), ("Spark local[2]", ("--engine", "spark", "--spark-master", "local[2]"))):
        fresh_output(root)
        load = loadavg()
        wall, _, _ = run_lucent(root, *extra)
        rates[name] = records / wall
        outputs[name] = (root / "output" / "explanations_shap" / "out.csv").read_bytes()
        print(f"  {name:15s} {wall:8.2f} s = {rates[name]:8.1f} records/s  [loadavg {load}]")
    share = rates["Spark local[2]"] / rates["local engine"]
    print(f"  Spark's throughput: {100 * share:.1f} % of the local engine's (target >= 80 %); out.csv identical: "
          f"{outputs['local engine'] == outputs['Spark local[2]']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000, help="bias rows (default 100M)")
    parser.add_argument("--records", type=int, default=200_000, help="SHAP records (default 200,000)")
    parser.add_argument("--only", choices=("bias", "shap"), action="append", help="run only these sections")
    args = parser.parse_args()
    sections = args.only or ["bias", "shap"]
    print(f"2 engines, loadavg {loadavg()}; tree {ROOT}")
    with tempfile.TemporaryDirectory(prefix="lucent-bench-spark-") as tmp:
        if "bias" in sections:
            bias(Path(tmp), args.rows)
        if "shap" in sections:
            shap(Path(tmp), args.records)


if __name__ == "__main__":
    main()
