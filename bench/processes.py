"""CPU time of the processes a benchmark starts (Linux /proc), for shares that parallelism cannot hide."""

from __future__ import annotations

import os
from pathlib import Path


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
