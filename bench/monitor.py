"""Bias monitoring execution benchmark: ``merge_window`` + the bias metrics against the obvious pandas
implementation, side by side in one run (issue 13, "Speed").

    python bench/monitor.py            # 1,000,000 captured records in 10,000 capture files
    python bench/monitor.py --quick    # 100,000 records in 1,000 files

The data is the churn walkthrough's (seed 002): CSV requests of 69 features (Account Length, Day Calls,
... and one-hot state and area columns), a bare score as the answer, ground truth as CSV labels, facet
``Account Length`` threshold 100, group ``Day Calls``, label 0 positive, probability threshold 0.8. One
record per request; half the callers send an ``InferenceId``. Capture files hold one hour of traffic
(``yyyy/mm/dd/hh/MM-SS-mmm-<uuid>.jsonl``, 100 lines each, the capture writer's exact format); 2 % of
the lines are outside the window and 1 % of the records have no ground truth; ground truth files
(1,000 labels each) sit in the window's hour and the next.

Each side runs in its own child process, which reads the files from disk and computes every pre-training
metric and every post-training metric but FT (the Flip Test is a k-nearest-neighbour search, the same code
on both sides, benchmarked by bench/bias.py). Printed: each side's wall and CPU time (both measured inside
the child, imports excluded), the merge's records/s, both ratios (target >= 10x wall), each side's peak RSS
(``getrusage`` in the child; target < 1 GiB), the load average, and a verdict line against both targets.
The two sides' metrics must be equal. The machine's other jobs slow both sides: run it several times.

Reference (pandas): every line ``json.loads``-ed, ``pd.json_normalize`` per file, concatenated, filtered by
``inferenceTime``, the CSV ``data`` read by ``pd.read_csv``, ground truth likewise, ``merge`` on the join
key, the score cut at the threshold, then the same ``bias_analysis`` on ``Column.from_series`` columns.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUMERIC = ["Account Length", "VMail Message", "Day Mins", "Day Calls", "Eve Mins", "Eve Calls", "Night Mins",
           "Night Calls", "Intl Mins", "Intl Calls", "CustServ Calls"]
FEATURES = NUMERIC + [f"State_{i}" for i in range(51)] + ["Area Code_408", "Area Code_415", "Area Code_510",
                                                         "Int'l Plan_no", "Int'l Plan_yes", "VMail Plan_no",
                                                         "VMail Plan_yes"]
assert len(FEATURES) == 69
HEADERS = ["Churn", *FEATURES, "predicted_label"]
THRESHOLD = 0.8
WINDOW_START = datetime(2026, 3, 1, 10, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(hours=1)
LINES_PER_FILE = 100
LABELS_PER_FILE = 1_000
GIB = 1024 ** 3


def config_doc() -> dict:
    from analyzer.bias import metric_names

    return {
        "dataset_type": "text/csv", "headers": HEADERS, "label": "Churn", "label_values_or_threshold": [0],
        "facet": [{"name_or_index": "Account Length", "value_or_threshold": [100]}], "group_variable": "Day Calls",
        "probability_threshold": THRESHOLD, "predicted_label": "predicted_label",
        "methods": {"pre_training_bias": {"methods": "all"},
                    "post_training_bias": {"methods": [m for m in metric_names("post_training", ["all"]) if m != "FT"]}},
    }


# -- the data -------------------------------------------------------------------------------------

def _line(event_id: str, when: str, inference_id: str | None, row: str, score: str) -> str:
    """One capture line, byte for byte what ``capture_line(capture_record(...))`` writes (checked below)."""
    inference = f',"inferenceId":"{inference_id}"' if inference_id else ""
    return ('{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"' + row
            + '","encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv; charset=utf-8","mode":"OUTPUT",'
            '"data":"' + score + '\\n","encoding":"CSV"}},"eventMetadata":{"eventId":"' + event_id + '"'
            + inference + ',"inferenceTime":"' + when + '"},"eventVersion":"0"}\n')


def _check_line_format() -> None:
    from analyzer.monitor.capture import capture_line, capture_record

    when = WINDOW_START + timedelta(seconds=5)
    for inference in (None, "abc"):
        real = capture_line(capture_record(
            event_id="e", inference_time=when, inference_id=inference, input_body=b"1,2", input_content_type="text/csv",
            output_body=b"0.5\n", output_content_type="text/csv; charset=utf-8", csv_types=["text/csv"], json_types=[]))
        assert real == _line("e", "2026-03-01T10:00:05Z", inference, "1,2", "0.5"), real


def generate(folder: Path, records: int, n_files: int, seed: int = 0) -> tuple[int, int]:
    """Capture and ground truth files under ``folder``; returns (capture bytes, ground truth bytes)."""
    _check_line_format()
    rng = np.random.default_rng(seed)
    per_file = math.ceil(records / n_files)
    capture_bytes = truth_bytes = 0
    truth_lines: list[str] = []
    written = 0
    truth_files = 0

    def flush_truth(final: bool = False) -> None:
        nonlocal truth_bytes, truth_files
        while len(truth_lines) >= LABELS_PER_FILE or (final and truth_lines):
            part, truth_lines[:] = truth_lines[:LABELS_PER_FILE], truth_lines[LABELS_PER_FILE:]
            hour = WINDOW_START + timedelta(hours=truth_files % 2)  # labels arrive in this hour and the next
            path = folder / "truth" / f"{hour:%Y/%m/%d/%H}" / f"{truth_files:05d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = "".join(part).encode()
            path.write_bytes(data)
            truth_bytes += len(data)
            truth_files += 1

    for f in range(n_files):
        n = min(per_file, records - written)
        if n <= 0:
            break
        numbers = np.column_stack([
            rng.integers(1, 240, n), rng.integers(0, 50, n), rng.uniform(0, 350, n).round(1),
            rng.integers(40, 160, n), rng.uniform(0, 360, n).round(1), rng.integers(40, 170, n),
            rng.uniform(20, 400, n).round(1), rng.integers(30, 170, n), rng.uniform(0, 20, n).round(1),
            rng.integers(0, 20, n), rng.integers(0, 9, n)]).tolist()
        state = rng.integers(0, 51, n)
        area = rng.integers(0, 3, n)
        plans = rng.integers(0, 2, (n, 2))
        scores = rng.random(n)
        labels = (rng.random(n) < np.where(scores > 0.5, 0.6, 0.1)).astype(int)
        seconds = rng.integers(0, 3600, n)
        seconds[rng.random(n) < 0.02] = -60  # outside the window (a minute before it)
        seconds.sort()
        lines = []
        for i in range(n):
            one_hot = ["0"] * 58
            one_hot[state[i]] = "1"
            one_hot[51 + area[i]] = "1"
            one_hot[54 + plans[i, 0]] = "1"
            one_hot[56 + plans[i, 1]] = "1"
            values = [str(int(v)) if v == int(v) and j not in (2, 4, 6, 8) else str(v) for j, v in enumerate(numbers[i])]
            row = ",".join(values + one_hot)
            event = str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | (written + i)))
            inference = f"req-{written + i}" if (written + i) % 2 else None
            when = (WINDOW_START + timedelta(seconds=int(seconds[i]))).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(_line(event, when, inference, row, repr(float(scores[i]))))
            if rng.random() >= 0.01:  # 1 % never get a label
                truth_lines.append(f'{{"groundTruthData":{{"data":"{labels[i]}","encoding":"CSV"}},"eventMetadata":{{"eventId":"{inference or event}"}},'
                                   '"eventVersion":"0"}\n')
        minute, second = divmod(f * 3600 // n_files, 60)
        path = folder / "capture" / "bench" / "AllTraffic" / f"{WINDOW_START:%Y/%m/%d/%H}" / (
            f"{minute:02d}-{second:02d}-{f % 1000:03d}-{uuid.UUID(int=f)}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(lines).encode()
        path.write_bytes(data)
        capture_bytes += len(data)
        written += n
        flush_truth()
    flush_truth(final=True)
    return capture_bytes, truth_bytes


def _files(folder: Path):
    """(key, bytes) of every file below ``folder``, in key order (the hour folders, then the names)."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    for path in paths:
        with open(path, "rb") as handle:
            yield os.path.relpath(path, folder), handle.read()


# -- the two sides (each in a child process) ---------------------------------------------------------

def run_lucent(folder: Path) -> dict:
    from analyzer.bias import bias_analysis
    from analyzer.config import parse_config
    from analyzer.monitor.attributes import EndpointAttributes
    from analyzer.monitor.merge import merge_window
    from analyzer.monitor.window import Window

    config = parse_config(config_doc())
    started, cpu = time.perf_counter(), time.process_time()
    merged = merge_window(config, _files(folder / "capture"), Window(WINDOW_START, WINDOW_END), EndpointAttributes(),
                          _files(folder / "truth"))
    merge_seconds = time.perf_counter() - started
    results = {stage: bias_analysis(merged.dataset, config, stage) for stage in ("pre_training", "post_training")}
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "merge_seconds": merge_seconds, "rows": merged.dataset.n_rows,
            "counts": merged.counts, "results": results}


def run_pandas(folder: Path) -> dict:
    import pandas as pd

    from analyzer.bias import bias_analysis
    from analyzer.config import parse_config
    from analyzer.data import Column, Dataset

    config = parse_config(config_doc())
    started, cpu = time.perf_counter(), time.process_time()
    frames = []
    for _, data in _files(folder / "capture"):
        records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        frames.append(pd.json_normalize(records))
    capture = pd.concat(frames, ignore_index=True)
    del frames
    times = pd.to_datetime(capture["eventMetadata.inferenceTime"], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    capture = capture[(times >= WINDOW_START) & (times < WINDOW_END)]
    key = capture.get("eventMetadata.inferenceId", pd.Series(index=capture.index, dtype=object))
    capture = capture.assign(key=key.fillna(capture["eventMetadata.eventId"]))
    truth = pd.concat([pd.json_normalize([json.loads(line) for line in data.decode().splitlines() if line.strip()])
                       for _, data in _files(folder / "truth")], ignore_index=True)
    truth = truth.drop_duplicates("eventMetadata.eventId", keep="last")
    merged = capture.merge(truth, left_on="key", right_on="eventMetadata.eventId", how="inner")
    features = pd.read_csv(io.StringIO("\n".join(merged["captureData.endpointInput.data"])), header=None,
                           names=FEATURES)
    label = pd.read_csv(io.StringIO("\n".join(merged["groundTruthData.data"])), header=None, names=["Churn"])["Churn"]
    score = merged["captureData.endpointOutput.data"].str.strip().astype(float)
    dataset = Dataset(
        source="pandas", n_rows=len(merged), headers=HEADERS, feature_names=FEATURES,
        label=Column.from_series(label, "Churn"),
        predicted_label=Column.from_series(pd.Series((score > THRESHOLD).astype(np.int64).to_numpy()), "predicted_label"),
        facets={"Account Length": Column.from_series(features["Account Length"], "Account Length")},
        group=Column.from_series(features["Day Calls"], "Day Calls"))
    results = {stage: bias_analysis(dataset, config, stage) for stage in ("pre_training", "post_training")}
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "rows": len(merged),
            "results": results}


def run_child(side: str, folder: Path) -> dict:
    """One side in a fresh process: its result document, with its wall time and peak RSS (bytes, as the
    child measured it with ``getrusage``: nothing of this process counts)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", side, "--folder", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{side} failed:\n{err.decode()[-3000:]}")
    result = json.loads(out)
    result["wall"] = time.perf_counter() - started
    result["peak_rss"] = result.pop("maxrss")
    return result


def _child_main(side: str, folder: Path) -> None:
    import logging
    import resource

    logging.disable(logging.WARNING)
    result = (run_lucent if side == "lucent" else run_pandas)(folder)
    result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result, default=str))


def same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12 * max(1.0, abs(a))
    return a == b


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=None, help="captured records (default 1,000,000)")
    parser.add_argument("--files", type=int, default=None, help="capture files (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 records in 1,000 files")
    parser.add_argument("--data", type=Path, help="keep the generated files in this folder and reuse them on the "
                                                  "next run with the same sizes (default: a temporary folder)")
    parser.add_argument("--child", choices=["lucent", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(args.child, args.folder)
        return {}
    records = args.records or (100_000 if args.quick else 1_000_000)
    n_files = args.files or (1_000 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="lucent-bench-monitor-") as tmp:
        folder = args.data or Path(tmp)
        marker = folder / "generated.json"
        sizes = {"records": records, "files": n_files}
        started = time.perf_counter()
        if marker.exists() and json.loads(marker.read_text())["sizes"] == sizes:
            capture_bytes, truth_bytes = json.loads(marker.read_text())["bytes"]
        else:
            for old in ("capture", "truth"):
                shutil.rmtree(folder / old, ignore_errors=True)
            capture_bytes, truth_bytes = generate(folder, records, n_files)
            marker.write_text(json.dumps({"sizes": sizes, "bytes": [capture_bytes, truth_bytes]}))
        print(f"monitor bench: {records:,} captured records in {n_files:,} files ({capture_bytes / 1e6:,.0f} MB), "
              f"ground truth {truth_bytes / 1e6:,.0f} MB; ready in {time.perf_counter() - started:.1f} s",
              flush=True)
        # Both sides read the same files: read them once first, so that neither pays for a cold page cache
        # (whichever ran first would).
        for path in sorted(folder.rglob("*.jsonl")):
            path.read_bytes()
        lucent = run_child("lucent", folder)
        reference = run_child("pandas", folder)
    identical = lucent["rows"] == reference["rows"] and same(lucent["results"], reference["results"])
    ratio = reference["seconds"] / lucent["seconds"]
    cpu_ratio = reference["cpu_seconds"] / lucent["cpu_seconds"]
    counts = lucent["counts"]
    print(f"lucent   merge_window {lucent['merge_seconds']:.2f} s = {counts['records_in_window'] / lucent['merge_seconds']:,.0f} "
          f"records/s; + bias metrics: {lucent['seconds']:.2f} s ({lucent['cpu_seconds']:.2f} CPU-s); peak RSS {lucent['peak_rss'] / GIB:.2f} GiB "
          f"(target < 1 GiB) {'OK' if lucent['peak_rss'] < GIB else 'ABOVE TARGET'}", flush=True)
    print(f"pandas   json.loads + json_normalize + merge + metrics: {reference['seconds']:.2f} s "
          f"({reference['cpu_seconds']:.2f} CPU-s); peak RSS "
          f"{reference['peak_rss'] / GIB:.2f} GiB", flush=True)
    print(f"ratio    {ratio:.1f}x wall time (target >= 10x) {'OK' if ratio >= 10 else 'BELOW TARGET'}, "
          f"{cpu_ratio:.1f}x CPU time; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; merged "
          f"{lucent['rows']:,} rows ({counts['records_without_ground_truth']:,} without ground truth, "
          f"{counts['invocations_in_window']:,} of {counts['captured_lines']:,} lines in the window); "
          f"metrics {'identical' if identical else 'DIFFER'}", flush=True)
    fast, small = ratio >= 10, lucent["peak_rss"] < GIB
    print(f"verdict  {'MET' if fast and small else 'NOT MET'}: {ratio:.1f}x wall "
          f"({'>=' if fast else '<'} 10x), peak RSS {lucent['peak_rss'] / GIB:.2f} GiB ({'<' if small else '>='} 1 GiB); "
          f"load average {os.getloadavg()[0]:.1f} at the end (other jobs on the cores slow "
          "both sides; compare runs at similar loads)", flush=True)
    if not identical:
        raise SystemExit("the two implementations disagree")
    return {"lucent": lucent, "pandas": reference, "ratio": ratio, "cpu_ratio": cpu_ratio}


if __name__ == "__main__":
    main()
