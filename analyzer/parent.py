"""Child processes that must not outlive the process that started them.

A job killed with ``kill -9`` runs no cleanup: its SHAP worker processes would stay blocked on a pipe
forever and the built-in model server would keep its port. Each such child watches its parent instead
and stops once the parent is gone (the child is then re-parented, so ``os.getppid()`` changes).

One implementation for both: ``analyzer.explain.shards`` (SHAP workers exit at once) and
``container.sidecar.server`` (the model server stops gracefully through its own SIGTERM handler).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int, stop: Callable[[], None] | None = None, *, death_signal: int | None = None,
                     interval: float = POLL_SECONDS) -> threading.Thread:
    """Call ``stop`` (default: exit this process at once) when ``parent_pid`` is no longer our parent.

    A daemon thread polls ``os.getppid()`` every ``interval`` seconds; it works on every platform and
    whatever the main thread is blocked on. ``death_signal`` also asks Linux to send that signal the
    moment the parent dies (``PR_SET_PDEATHSIG``): no polling delay, and the signal reaches a process
    whose threads cannot run. Linux sends it when the *thread* that started this process exits, so give
    it only when that thread lives as long as this process should. Returns the watching thread.
    """
    if death_signal is not None:
        set_parent_death_signal(death_signal)
    action = stop or _exit_now

    def watch() -> None:
        # Checked after the prctl above: a parent that died before it is caught by the first test here.
        while os.getppid() == parent_pid:
            time.sleep(interval)
        action()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _exit_now() -> None:
    log.warning("parent process is gone: exiting")
    os._exit(1)  # no cleanup: nobody is left to receive this process's results


def set_parent_death_signal(signal_number: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signal_number)`` on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal_number), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


__all__ = ["exit_with_parent", "set_parent_death_signal"]
