"""What the benchmarks share: the built-in model server as ``lucent run`` talks to it, and the CPU time of
the processes a benchmark starts (Linux /proc), for shares that parallelism cannot hide."""

from __future__ import annotations

import os
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
        served = ServedModel(server.url, default_io=bool(server.info().get("default_io")))
        yield server, ModelEndpoint(server.url, request_format(config, dataset, served), tuple(feature_names),
                                    max_payload_bytes=LOCAL_MAX_PAYLOAD_BYTES)


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
    """User + system CPU time of processes, in seconds (Linux /proc; 10 ms resolution)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")
