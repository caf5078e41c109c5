"""Ending a process whose work is done, without the interpreter's teardown.

Freeing what a process imported and loaded (pandas, scikit-learn, a model; matplotlib and WeasyPrint in the
report process) takes 0.2-0.4 s and does nothing for the results: they are written, closed and renamed
into place by then. ``end_process`` runs what a normal exit would do for others (the ``atexit`` handlers:
log handlers flushed, temporary folders removed, child processes reaped; the standard streams flushed)
and then leaves with ``os._exit``. Used by ``lucent run`` as a program (``container.cli``) and by the
report process once it has answered (``analyzer.report.process``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def end_process(code: int) -> int:
    """Run the exit handlers and end this process with ``code``. Returns ``code`` instead, for a normal
    exit, when a thread that a normal exit would wait for still runs, or where the interpreter does not
    offer its exit handlers to run (``atexit._run_exitfuncs`` is CPython's)."""
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None or any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
                                        if thread is not threading.main_thread()):
        return code
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more can be said there
            stream.flush()
    os._exit(code)


__all__ = ["end_process"]
