"""What the benchmarks share: the built-in model server as ``lucent run`` talks to it, and the CPU time of
the processes a benchmark starts (Linux /proc), for shares that parallelism cannot hide."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served_endpoint(model_dir: Path, config, dataset, feature_names) -> Iterator[tuple[object, object]]:
    """``(server, endpoint)``: the built-in server on ``model_dir`` with every worker loaded, and the
    endpoint in the request format `lucent run` uses with its own server (npy for numeric features)."""
    from analyzer.predict import ModelEndpoint
    from container.job import LOCAL_MAX_PAYLOAD_BYTES, request_format
    from container.model_endpoint import ServedModel
    from container.sidecar import start_model_server

    with start_model_server(model_dir) as server:
        server.wait_healthy(timeout=120)
        served = ServedModel.from_info(server.url, server.info())
        yield server, ModelEndpoint(server.url, request_format(config, dataset, served), tuple(feature_names),
                                    max_payload_bytes=LOCAL_MAX_PAYLOAD_BYTES,
                                    composes_pictures=served.composes_pictures)


def children(pid):
    """Process ids of ``pid``'s children (the server's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:  # exited meanwhile
            pass
    return found


def cpu_seconds(pids):
    """User + system CPU time of processes, in seconds (Linux /proc; 10 ms resolution); a process that has
    exited meanwhile counts 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, grandchildren...), from one pass over /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def _status_kib(pid: int, *keys: str) -> dict[str, int]:
    """Fields of /proc/<pid>/status (or smaps_rollup for ``Pss``) in KiB; empty when the process is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
        if "Pss" in keys:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except (OSError, ValueError):
        return {}
    return out


SPAWNED = "worker process (spawn)"  # a multiprocessing child not (yet) known to be anything else


def _maps_library(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def process_label(pid: int, root: int) -> str:
    """What a process of a job is, from its command line: the job, a SHAP worker, the model server..."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return "?"
    if pid == root:
        return "job (lucent run)"
    if "container.sidecar" in cmd or "gunicorn" in cmd:
        return "model server " + ("main" if ppid == root else "worker")
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "report process (spawn)" if _maps_library(pid, "libpango") else SPAWNED
    return cmd[:70] or "?"


class TreeMemory:
    """Samples the memory of a process and all its descendants every ``interval`` seconds (a thread).

    ``peak_rss``: the highest sum of VmRSS over the tree at one sample (shared pages of forked workers
    counted in each: an upper bound), with ``at_peak`` the per-process figures of that sample;
    ``peak_pss``: the same for PSS, over the samples that read it (shared pages split between their
    processes: what the tree really holds). ``hwm``: each process's own peak (VmHWM, the kernel's exact high-water mark), by pid.
    ``timeline``: (seconds since start, {label: summed RSS}) per sample, to see which step holds the peak.
    All in bytes. Sampling misses spikes shorter than ``interval``; VmHWM does not.

    Light on the job it watches: PSS (``/proc/<pid>/smaps_rollup``, a walk of the process's page tables
    under its memory map's lock) and what a spawned child is (its ``/proc/<pid>/maps``) are read only every
    ``slow_every`` samples; RSS and VmHWM (``/proc/<pid>/status``, counters) at every sample. Read at every
    sample every 0.1 s, they made an Adult-sized job ~14 % slower (41.8 and 44.1 s unwatched, 51.3 and
    46.8 s watched, alternating): the workers' large allocations wait on that lock, and the walks take CPU
    from the job's cores.
    """

    def __init__(self, pid: int, interval: float = 0.2, slow_every: int = 10):
        import threading

        self.pid, self.interval, self.slow_every = pid, interval, slow_every
        self.peak_rss = self.peak_pss = 0
        self.at_peak: dict[int, tuple[str, int]] = {}
        self.hwm: dict[int, tuple[str, int]] = {}
        self.samples = 0
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        rss_total = pss_total = 0
        snapshot = {}
        slow = self.samples % self.slow_every == 0
        for pid in descendants(self.pid):
            fields = _status_kib(pid, "VmRSS", "VmHWM", *(("Pss",) if slow else ()))
            if not fields:
                continue
            label = self.hwm.get(pid, (None,))[0]
            # A spawned child shows what it is once it has loaded its libraries.
            if label is None or (label == SPAWNED and slow):
                label = process_label(pid, self.pid)
            rss, pss = 1024 * fields.get("VmRSS", 0), 1024 * fields.get("Pss", 0)
            rss_total, pss_total = rss_total + rss, pss_total + pss
            snapshot[pid] = (label, rss)
            self.hwm[pid] = (label, max(self.hwm.get(pid, ("", 0))[1], 1024 * fields.get("VmHWM", 0)))
        self.samples += 1
        by_label: dict[str, int] = {}
        for label, rss in snapshot.values():
            by_label[label] = by_label.get(label, 0) + rss
        self.timeline.append((time.perf_counter() - self._start, by_label))
        if rss_total > self.peak_rss:
            self.peak_rss, self.at_peak = rss_total, snapshot
        if slow:
            self.peak_pss = max(self.peak_pss, pss_total)
