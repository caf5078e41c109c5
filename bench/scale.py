"""Scale benchmark (issue #14): whole ``lucent run`` jobs against the model's own time, one run, side by side.

Run from the repository root: ``python bench/scale.py [--quick]`` (needs ``shap``, a benchmark-only
dependency). Every job is run as a user runs it: ``lucent run`` in a new process on a processing root
(config, data, a model folder with a scikit-learn ``GradientBoostingClassifier``, 100 trees, saved as
``model.joblib``), so the figures are those of whatever the source tree holds, imports, model server and
reports included. ``--quick``: the same lines on small jobs (under 2 minutes), to see that it all runs
(no git HEAD runs unless ``--head``). ``--head``: the tabular jobs also run on a copy of git HEAD.

* Adult-sized: 30,162 records x 14 numeric features, the default coalition budget, one baseline row
  (training mean). Reference: the model's own ``predict_proba`` time for the rows the job scores, on
  all the cores: the synthetic rows of a sample of records (built by the same design, seed and baseline)
  timed in process, per row, times the rows of the whole job, divided by the cores (the model's
  predict is single-threaded), measured just before and just after each run (``--repeat`` runs, 3 by
  default; the median ratio is the line's figure). Target: the whole job at most 1.3x that. Peak memory of the job's
  process tree (the job, its SHAP workers, the model server and its workers, anything else it starts),
  sampled from /proc: target under 1 GiB.
* 2,000 records x 14 features, 512 coalitions: the whole job against ``shap.KernelExplainer`` with
  ``l1_reg=False`` in process on the same records, budget and baseline (target: at least 5x faster),
  at equal or better error: both against exact Shapley values (all 2^14 - 2 coalitions, Lucent's exact
  mode, checked against brute-force enumeration by the test suite) on the first records.
* Text: ``bench/text.py`` records/s (the SHAP step through the built-in server, as that script sets
  it up) and a whole ``lucent run`` of the text demo's job (reviews of about 80 tokens), each on this
  tree and on git HEAD (a copy from ``git archive``, run with the same venv). Target: at least 2x.
* Both tabular jobs again with ``predictor.lucent_scoring: "server"`` (the built-in model server over
  HTTP instead of in-process scoring), when the config knows that key: what in-process scoring saves.

The machine's load average is printed with each line: on a shared machine the wall times move with it,
so the CPU seconds of the job's processes (from ``getrusage`` of the waited-for children) are printed
too, against the model's own CPU time: a ratio that other work on the machine changes much less.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyzer.explain import KernelShap, default_num_samples  # noqa: E402
from bench.processes import TreeMemory  # noqa: E402
from bench.shap import run_ours, run_shap  # noqa: E402

GIB = 1024**3
M = 14
ADULT_RECORDS = 30_162


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cores() -> int:
    return len(os.sched_getaffinity(0))


def train_model(m: int = M, seed: int = 0):
    """GBM (100 trees) on a synthetic task with interactions; returns (classifier, baseline row, records
    generator). The records are drawn from the training distribution."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, m))
    logits = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + x[:, 3] * (x[:, 4] > 0) + 0.3 * x[:, 5:].sum(axis=1)
    y = (logits + rng.logistic(size=len(x)) > 0).astype(int)
    clf = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x, y)
    return clf, x.mean(axis=0, keepdims=True)


def records(n: int, m: int = M, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, m))


def job_config(baseline: np.ndarray, num_samples: int | None, scoring: str | None) -> dict:
    """What a user writes for these jobs: SHAP (local values saved) and the report."""
    shap = {"baseline": baseline.tolist(), "seed": 0, "save_local_shap_values": True}
    if num_samples is not None:
        shap["num_samples"] = num_samples
    predictor = {"probability": 1}
    if scoring is not None:
        predictor["lucent_scoring"] = scoring
    return {"dataset_type": "text/csv", "headers": [*(f"f{j}" for j in range(M)), "y"], "label": "y",
            "methods": {"shap": shap, "report": {"name": "report"}}, "predictor": predictor}


def scoring_key_known(baseline: np.ndarray) -> str | None:
    """None when this tree's config accepts ``predictor.lucent_scoring``, else the validation message."""
    from analyzer.config import parse_config

    try:
        parse_config(json.loads(json.dumps(job_config(baseline, None, "server"))))
    except Exception as error:  # noqa: BLE001 - whatever the tree raises for an unknown key
        return str(error).splitlines()[0]
    return None


# The job's log lines that end each step of a run, in order (INFO, the default level): ``JobRun.phases``.
MILESTONES = (("imports", "Starting Lucent"), ("data", "Dataset ready"), ("model", "Scoring the model in process"),
              ("SHAP", "Kernel SHAP of"), ("analysis.json", "analysis.json"), ("report", "Report written"),
              ("finish", "exit_message:"))


class JobRun:
    """One ``lucent run`` on a new processing root: wall time, exit code, the process tree's memory."""

    def __init__(self, root: Path, code: int, wall: float, cpu: float, memory: TreeMemory, load: str,
                 started: float = 0.0):
        self.root, self.code, self.wall, self.cpu, self.memory, self.load = root, code, wall, cpu, memory, load
        self.started = started  # time.time() when the process was started

    def phases(self) -> str:
        """Where the wall time went, from the job's log: seconds from the process's start to its first line
        (interpreter and imports), then to each milestone (``MILESTONES``; a step the job did not log is
        counted in the next one), then to the process's end (its exit)."""
        from datetime import datetime

        times = {}
        for line in (self.root / "job.log").read_text(errors="replace").splitlines():
            for label, text in MILESTONES:
                if label not in times and text in line and line[:4].isdigit():
                    with contextlib.suppress(ValueError):  # a line that only looks like a log line
                        times[label] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        parts, previous = [], self.started
        for label, _ in MILESTONES:
            if label in times:
                parts.append(f"{label} {times[label] - previous:.2f}")
                previous = times[label]
        parts.append(f"exit {self.started + self.wall - previous:.2f}")
        return ", ".join(parts)

    def local_values(self) -> np.ndarray:
        """out.csv's SHAP values, (records, features), in feature order."""
        import pandas as pd

        frame = pd.read_csv(self.root / "output" / "explanations_shap" / "out.csv")
        columns = [c for c in frame.columns if re.match(r"f\d+_", c)]
        assert len(columns) == M, frame.columns
        return frame[columns].to_numpy()

    def check(self) -> None:
        if self.code != 0:
            message = (self.root / "message").read_text() if (self.root / "message").exists() else ""
            raise JobFailed(f"lucent run on {self.root.name} failed (exit {self.code}): {message.strip()} "
                            f"(log: the last lines of {self.root / 'job.log'} follow)\n"
                            + "\n".join((self.root / "job.log").read_text().splitlines()[-8:]))


class JobFailed(Exception):
    """A job of the bench did not complete: its line is skipped, the others still run (the tree may be
    half-way through someone's change)."""


def run_job(root: Path, clf, baseline: np.ndarray, x: np.ndarray, num_samples: int | None,
            scoring: str | None = None, tree: Path = ROOT) -> JobRun:
    """Lay out a processing root and run ``lucent run`` on it as a user would (a new process)."""
    import joblib

    for folder in ("config", "data", "model"):
        (root / "input" / folder).mkdir(parents=True)
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps(job_config(baseline, num_samples, scoring)))
    np.savetxt(root / "input" / "data" / "data.csv", np.column_stack([x, np.zeros(len(x))]), delimiter=",")
    joblib.dump(clf, root / "input" / "model" / "model.joblib")
    return run_lucent(root, tree)


def run_lucent(root: Path, tree: Path = ROOT) -> JobRun:
    """``lucent run`` on a processing root, with the venv's entry point; ``tree``: the source tree it
    imports (another copy, such as git HEAD's, comes first on PYTHONPATH)."""
    lucent = Path(sys.executable).with_name("lucent")
    command = [str(lucent) if lucent.exists() else shutil.which("lucent") or "lucent",
               "run", "--processing-root", str(root)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    load = loadavg()
    cpu = children_cpu()
    with (root / "job.log").open("wb") as log:
        started = time.time()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
        wall = time.perf_counter() - start
    return JobRun(root, code, wall, children_cpu() - cpu, memory, load, started)


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children and the descendants they waited for
    (the job, its SHAP workers, the model server and its workers, the report process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_memory(memory: TreeMemory, indent: str = "    ") -> None:
    print(f"{indent}peak RSS of the process tree {memory.peak_rss / GIB:5.2f} GiB (sum of RSS at one sample; "
          f"PSS {memory.peak_pss / GIB:5.2f} GiB), target < 1 GiB; {memory.samples} samples")
    print(f"{indent}at that peak, by process:")
    for label, rss in sorted(memory.at_peak.values(), key=lambda item: -item[1]):
        print(f"{indent}  {rss / 2**20:7.0f} MiB  {label}")
    hwm: dict[str, list[int]] = {}
    for label, peak in memory.hwm.values():
        hwm.setdefault(label, []).append(peak)
    print(f"{indent}each process's own peak (VmHWM), by kind:")
    for label, peaks in sorted(hwm.items(), key=lambda item: -max(item[1])):
        print(f"{indent}  {len(peaks):2d} x {label}: max {max(peaks) / 2**20:6.0f} MiB, "
              f"sum {sum(peaks) / 2**20:6.0f} MiB")
    if memory.timeline:
        end = memory.timeline[-1][0]
        print(f"{indent}over the run (MiB; the highest sample of each tenth of {end:.0f} s):")
        for tenth in range(10):
            part = [sample for t, sample in memory.timeline if tenth * end / 10 <= t <= (tenth + 1) * end / 10]
            if part:
                top = max(part, key=lambda sample: sum(sample.values()))
                kinds = ", ".join(f"{label} {rss / 2**20:.0f}" for label, rss in sorted(top.items()))
                print(f"{indent}  {tenth * 10:3d}%: {sum(top.values()) / 2**20:5.0f}  ({kinds})")


def model_floor(clf, baseline: np.ndarray, x: np.ndarray, num_samples: int | None, sample: int):
    """The model's own predict_proba time for the rows a job on ``x`` scores, divided by the cores.

    Returns (seconds on all cores, rows, wall and CPU seconds per row on one core).
    """
    captured = []

    def capture(rows):
        captured.append(np.array(rows))
        return np.zeros((len(rows), 2))

    KernelShap(capture, baseline, num_samples=num_samples, seed=0).explain(x[:sample])
    rows = np.concatenate(captured)
    walls, cpus = [], []
    for _ in range(3):  # the fastest of 3: the least disturbed by other work on a shared machine
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(rows), 100_000):
            clf.predict_proba(rows[i:i + 100_000])
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    per_row, cpu_per_row = min(walls) / len(rows), min(cpus) / len(rows)
    n_rows = round(len(rows) / sample * len(x))
    return per_row * n_rows / cores(), n_rows, per_row, cpu_per_row


def adult(tmp: Path, clf, baseline, n: int, quick: bool, scoring_error: str | None,
          head: Path | None, repeat: int = 3) -> None:
    x = records(n)
    budget = default_num_samples(M)
    print(f"\nAdult-sized job: {n:,} records x {M} features, default samples ({budget} coalitions), "
          f"1 baseline row, GBM (100 trees), SHAP + report; {repeat} run(s), each between two references")
    # The reference is measured just before and just after each run: this machine's speed drifts by up to
    # 2x within minutes (the model's own time per row moved 0.65 -> 0.86 us across one 45 s job), and a
    # reference taken at another speed than the job's makes the ratio meaningless. Several runs, each
    # against its own references, and their median: one slow or fast minute does not decide the line.
    sample = 50 if quick else 300
    references = [model_floor(clf, baseline, x, None, sample)]
    jobs = []
    for i in range(repeat):
        job = run_job(tmp / f"adult-{i}", clf, baseline, x, None)
        job.check()
        jobs.append(job)
        references.append(model_floor(clf, baseline, x, None, sample))
    n_rows = references[0][1]
    lines = []
    for i, job in enumerate(jobs):
        before, after = references[i], references[i + 1]
        floor, per_row, cpu_per_row = ((before[k] + after[k]) / 2 for k in (0, 2, 3))
        drift = abs(after[2] - before[2]) / min(after[2], before[2])
        lines.append((job.wall / floor, job.cpu / (cpu_per_row * n_rows), job, floor, per_row, cpu_per_row, drift))
        print(f"  run {i + 1}: lucent run {job.wall:7.2f} s  [loadavg {job.load}]; the model's own predict_proba "
              f"{per_row * 1e6:.3f} us/row ({before[2] * 1e6:.3f} before, {after[2] * 1e6:.3f} after"
              + (f", moved {drift:.0%}: unreliable" if drift > 0.15 else "") + f") x {n_rows:,} rows / {cores()} cores "
              f"= {floor:6.2f} s: ratio {job.wall / floor:5.2f}x; CPU {job.cpu:7.2f} s against the model's "
              f"{cpu_per_row * n_rows:6.2f} s: {lines[-1][1]:5.2f}x")
        print(f"    seconds to the end of each step: {job.phases()}")
    ordered = sorted(lines, key=lambda line: line[0])
    ratio, cpu_ratio, job, floor, per_row, cpu_per_row, _ = ordered[len(ordered) // 2]
    steady = [line for line in lines if line[6] <= 0.15]
    print(f"  ratio, median of {len(lines)} run(s): {ratio:5.2f}x (target <= 1.3x); CPU {cpu_ratio:5.2f}x "
          f"(less sensitive to other work on the machine)"
          + (f"; of the {len(steady)} run(s) whose references agree within 15 %: median "
             f"{sorted(line[0] for line in steady)[len(steady) // 2]:5.2f}x" if steady and len(steady) < len(lines)
             else ""))
    print_memory(job.memory)
    if scoring_error is None:
        try_line(lambda: adult_server(tmp, clf, baseline, x, job, floor))
    if head is not None:
        try_line(lambda: adult_head(tmp, clf, baseline, x, job, floor, head))


def adult_server(tmp: Path, clf, baseline, x, job: JobRun, floor: float) -> None:
    server = run_job(tmp / "adult-server", clf, baseline, x, None, scoring="server")
    server.check()
    print(f"  with predictor.lucent_scoring \"server\": {server.wall:7.2f} s, ratio {server.wall / floor:5.2f}x; "
          f"in-process saves {server.wall - job.wall:6.2f} s ({100 * (1 - job.wall / server.wall):4.1f} %), "
          f"CPU {server.cpu:7.2f} s against {job.cpu:7.2f} s  [loadavg {server.load}]")
    print_memory(server.memory)


def adult_head(tmp: Path, clf, baseline, x, job: JobRun, floor: float, head: Path) -> None:
    before = run_job(tmp / "adult-head", clf, baseline, x, None, tree=head)
    before.check()
    print(f"  git HEAD: {before.wall:7.2f} s, ratio {before.wall / floor:5.2f}x; now {before.wall / job.wall:4.2f}x "
          f"faster; CPU {before.cpu:7.2f} s  [loadavg {before.load}]")
    print_memory(before.memory)


def small(tmp: Path, clf, baseline, n: int, quick: bool, scoring_error: str | None,
          head: Path | None) -> None:
    x = records(n, seed=2)
    budget = 512
    n_exact = 10 if quick else 40
    fn = lambda a: clf.predict_proba(a)[:, 1]  # noqa: E731
    print(f"\n{n:,} records x {M} features, {budget} coalitions, 1 baseline row, GBM (100 trees)")
    job = run_job(tmp / "small", clf, baseline, x, budget)
    job.check()
    shap_load = loadavg()
    theirs, t_shap, model_shap = run_shap(fn, baseline, x, budget)
    exact, _, _ = run_ours(fn, baseline, x[:n_exact], 2**M - 2)
    ours = job.local_values()[:n_exact]
    err_ours, err_shap = np.abs(ours - exact).mean(), np.abs(theirs[:n_exact] - exact).mean()
    print(f"  lucent run (whole job): {job.wall:7.2f} s, CPU of its processes {job.cpu:6.2f} s  [loadavg {job.load}]")
    print(f"    seconds to the end of each step: {job.phases()}")
    print(f"  shap.KernelExplainer(l1_reg=False) in process: {t_shap:7.2f} s ({model_shap.seconds:6.2f} s in the "
          f"model, {model_shap.rows:,} rows; one process, so its wall time is about its CPU time)  "
          f"[loadavg {shap_load}]")
    print(f"  speed-up {t_shap / job.wall:5.2f}x (target >= 5x)")
    print(f"  MAE vs exact Shapley values (all {2**M - 2:,} coalitions) on {n_exact} records: lucent {err_ours:.3e}, "
          f"shap {err_shap:.3e} (shap/lucent {err_shap / err_ours:4.2f}, target >= 1)")
    print_memory(job.memory)
    if scoring_error is None:
        try_line(lambda: small_server(tmp, clf, baseline, x, budget, job, t_shap))
    if head is not None:
        try_line(lambda: small_head(tmp, clf, baseline, x, budget, job, t_shap, head))


def small_server(tmp: Path, clf, baseline, x, budget: int, job: JobRun, t_shap: float) -> None:
    server = run_job(tmp / "small-server", clf, baseline, x, budget, scoring="server")
    server.check()
    same = np.abs(server.local_values() - job.local_values()).max()
    print(f"  with predictor.lucent_scoring \"server\": {server.wall:7.2f} s, speed-up vs shap "
          f"{t_shap / server.wall:5.2f}x; in-process saves {server.wall - job.wall:6.2f} s "
          f"({100 * (1 - job.wall / server.wall):4.1f} %), CPU {server.cpu:6.2f} s; max |difference| of the SHAP "
          f"values {same:.1e}  [loadavg {server.load}]")


def small_head(tmp: Path, clf, baseline, x, budget: int, job: JobRun, t_shap: float, head: Path) -> None:
    before = run_job(tmp / "small-head", clf, baseline, x, budget, tree=head)
    before.check()
    print(f"  git HEAD: {before.wall:7.2f} s, CPU {before.cpu:6.2f} s, speed-up vs shap {t_shap / before.wall:5.2f}x; "
          f"now {before.wall / job.wall:4.2f}x faster; max |difference| of the SHAP values "
          f"{np.abs(before.local_values() - job.local_values()).max():.1e}  [loadavg {before.load}]")


def try_line(line) -> None:
    """Run one bench line; a job that fails is printed and skipped."""
    try:
        line()
    except JobFailed as error:
        print(f"  FAILED: {error}")


def head_copy(tmp: Path, rev: str = "HEAD") -> Path:
    """A copy of the files of git ``rev`` (``git archive``: the repository's state is not touched)."""
    head = tmp / "lucent-head"
    if not head.exists():
        head.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(head)], input=archive, check=True)
    return head


def text(tmp: Path, quick: bool, head: Path | None, label: str = "git HEAD") -> None:
    """bench/text.py (the SHAP step through the built-in server), then a whole ``lucent run`` text job,
    each on a copy of git HEAD (unless ``head`` is None) and on this tree, same venv."""
    from container.demo import write_text_demo_job

    trees = ([(label, head)] if head is not None else []) + [("this tree", ROOT)]
    arguments = ["--records", "40" if quick else "300"]
    rates = {}
    for name, tree in trees:
        env = dict(os.environ, PYTHONPATH=str(tree))
        load = loadavg()
        done = subprocess.run([sys.executable, "bench/text.py", *arguments], cwd=tree, env=env,
                              capture_output=True, text=True)
        print(f"\nText, bench/text.py {' '.join(arguments)} on {name} ({tree})  [loadavg {load}]")
        if done.returncode != 0:
            print(f"  failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            continue
        for line in done.stdout.splitlines():
            print(f"  {line}")
        found = re.search(r"= *([\d.]+) records/s", done.stdout)
        if found:
            rates[name] = float(found.group(1))
    if len(rates) == 2:
        print(f"  bench/text.py records/s: {rates[label]:.2f} at {label}, {rates['this tree']:.2f} now: "
              f"{rates['this tree'] / rates[label]:4.2f}x (target >= 2x)")
    # The whole job as a user runs it (the demo's review model and config: pre-training bias, SHAP of
    # every token, report), the same reviews on both trees.
    n = 20 if quick else 300
    walls = {}
    for name, tree in trees:
        root = write_text_demo_job(tmp / f"text-{name.replace(' ', '-')}", n, length=80)
        job = run_lucent(root, tree)
        try:
            job.check()
        except JobFailed as error:
            print(f"\nText, whole lucent run on {name}: FAILED: {error}")
            continue
        walls[name] = job.wall
        print(f"\nText, whole lucent run on {name}: {n} reviews of about 80 tokens: {job.wall:7.2f} s = "
              f"{n / job.wall:6.2f} records/s, CPU {job.cpu:6.2f} s; peak RSS of the tree {job.memory.peak_rss / GIB:4.2f} GiB "
              f"(PSS {job.memory.peak_pss / GIB:4.2f})  [loadavg {job.load}]")
        print_memory(job.memory)
    if len(walls) == 2:
        print(f"  whole-job records/s: {walls[label] / walls['this tree']:4.2f}x {label}'s (target >= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small jobs (under 2 minutes): a smoke run")
    parser.add_argument("--only", choices=("adult", "small", "text"), action="append",
                        help="run only these sections (repeatable)")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="Adult-sized runs, each between two references (default 3; 1 with --quick)")
    parser.add_argument("--head", action="store_true",
                        help="also run the tabular jobs on a copy of git HEAD (before / after)")
    parser.add_argument("--base", default="HEAD", metavar="REV",
                        help="the git revision the before / after lines copy (default HEAD), e.g. the commit "
                             "before a change already committed")
    args = parser.parse_args()
    sections = args.only or ["adult", "small", "text"]
    clf, baseline = train_model()
    scoring_error = scoring_key_known(baseline)
    print(f"{cores()} cores, loadavg {loadavg()}; tree {ROOT}")
    if args.head:
        print("--head: every tabular job also runs on a copy of git HEAD")
    if scoring_error is not None:
        print(f"predictor.lucent_scoring is not in this tree's config yet ({scoring_error}): "
              "the \"server\" lines are skipped")
    with tempfile.TemporaryDirectory(prefix="lucent-scale-") as tmp:
        head = head_copy(Path(tmp), args.base) if args.head else None
        if "adult" in sections:
            try_line(lambda: adult(Path(tmp), clf, baseline, 1_000 if args.quick else ADULT_RECORDS, args.quick,
                                   scoring_error, head, args.repeat or (1 if args.quick else 3)))
        if "small" in sections:
            try_line(lambda: small(Path(tmp), clf, baseline, 300 if args.quick else 2_000, args.quick,
                                   scoring_error, head))
        if "text" in sections:  # before / after is the point of the text lines: HEAD too, unless --quick
            text(Path(tmp), args.quick, head or (None if args.quick else head_copy(Path(tmp), args.base)),
                 f"git {args.base}")


if __name__ == "__main__":
    main()
