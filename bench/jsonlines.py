"""JSON Lines reading benchmark: the local reader (``analyzer.data.json_format.JsonTable``) against a plain
``json.loads`` loop over the same file, measured side by side in one run.

    python bench/jsonlines.py                # 200,000 lines per variant
    python bench/jsonlines.py --lines 50000 --repeat 5

Variants (what the SageMaker SDK writes for a JSON Lines dataset, one record per line, 14 numbers each):

* ``label``: ``{"features": [...], "label": 0}`` read with ``features="features"``, ``label="label"``;
* ``predicted``: ``{"features": [...], "label": 0, "predicted_label": 1}`` with ``headers`` naming the
  features, a facet (feature ``f0``) and ``predicted_label="predicted_label"``;
* ``nested``: ``{"data": {"features": [...]}, "label": 0, "prediction": {"label": 1, "score": 0.73}}``
  read with ``features="data.features"``, ``predicted_label="prediction.label"``.

Timed: the reader opening the file (``JsonTable(...)``: it parses the whole file into the table) and
reading the label / predicted label / facet columns (``table.read``); the reference reads the same
bytes, decodes them and runs ``json.loads`` on every non-blank line. Each side runs ``--repeat`` times,
alternating, and the best CPU time of each is kept (the machine is shared: CPU time moves less than wall
time; both are printed). Printed per variant: rows/s of each side and the ratio reader / reference.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.config.model import AnalysisConfig, Facet, Methods  # noqa: E402
from analyzer.data.json_format import JsonTable  # noqa: E402

N_FEATURES = 14


def features(rng: random.Random) -> list[float | int]:
    """14 numbers as a tabular dataset has them: small ints and floats with a few decimals."""
    return [rng.randint(0, 100) if j % 2 == 0 else round(rng.uniform(-5, 5), 4) for j in range(N_FEATURES)]


def record(variant: str, rng: random.Random) -> dict:
    label = rng.randint(0, 1)
    if variant == "label":
        return {"features": features(rng), "label": label}
    if variant == "predicted":
        return {"features": features(rng), "label": label, "predicted_label": rng.randint(0, 1)}
    score = round(rng.random(), 4)
    return {"data": {"features": features(rng)}, "label": label, "prediction": {"label": int(score > 0.5),
                                                                                 "score": score}}


def config(variant: str) -> tuple[AnalysisConfig, list[str]]:
    """The analysis config of ``variant`` and the columns read from the table."""
    names = [f"f{j}" for j in range(N_FEATURES)]
    if variant == "label":
        return AnalysisConfig(dataset_type="application/jsonlines", methods=Methods(), features="features",
                              label="label"), ["label"]
    if variant == "predicted":
        return AnalysisConfig(dataset_type="application/jsonlines", methods=Methods(), features="features",
                              label="label", predicted_label="predicted_label", headers=[*names, "target"],
                              facet=[Facet("f0")]), ["target", "predicted_label", "f0"]
    return AnalysisConfig(dataset_type="application/jsonlines", methods=Methods(), features="data.features",
                          label="label", predicted_label="prediction.label"), ["label", "predicted_label"]


def write(path: Path, variant: str, n_lines: int) -> None:
    rng = random.Random(7)
    with path.open("w") as f:
        for _ in range(n_lines):
            f.write(json.dumps(record(variant, rng)) + "\n")


def reader(path: Path, cfg: AnalysisConfig, columns: list[str]) -> int:
    table = JsonTable([path], str(path), cfg, json_lines=True)
    return table.read(columns).n_rows


def reference(path: Path) -> int:
    text = path.read_bytes().decode("utf-8-sig")
    records = [json.loads(line) for line in text.split("\n") if line.strip()]
    return len(records)


def timed(run, *args) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    n = run(*args)
    return time.process_time() - cpu, time.perf_counter() - wall, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", choices=["label", "predicted", "nested"], action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variant or ["label", "predicted", "nested"]:
            path = Path(tmp) / f"{variant}.jsonl"
            write(path, variant, args.lines)
            cfg, columns = config(variant)
            best = {"reader": (float("inf"), float("inf")), "json.loads": (float("inf"), float("inf"))}
            for _ in range(args.repeat):
                for name, run, run_args in (("reader", reader, (path, cfg, columns)), ("json.loads", reference, (path,))):
                    cpu, wall, n = timed(run, *run_args)
                    if n != args.lines:
                        raise AssertionError(f"{name} read {n} rows of {args.lines}")
                    best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
            (reader_cpu, reader_wall), (ref_cpu, ref_wall) = best["reader"], best["json.loads"]
            print(f"{variant:>9} {args.lines} lines ({path.stat().st_size / 1e6:.1f} MB): "
                  f"reader {args.lines / reader_cpu:,.0f} rows/s ({reader_cpu:.3f} s CPU, {reader_wall:.3f} s wall), "
                  f"json.loads loop {args.lines / ref_cpu:,.0f} rows/s ({ref_cpu:.3f} s CPU, {ref_wall:.3f} s wall): "
                  f"reader / json.loads = {reader_cpu / ref_cpu:.2f}x CPU ({reader_wall / ref_wall:.2f}x wall)")


if __name__ == "__main__":
    main()
