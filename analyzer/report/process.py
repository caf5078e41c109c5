"""The report rendered in a process of its own, once ``analysis.json`` is published.

Why a process: rendering is seconds of CPU-bound Python (matplotlib, WeasyPrint) that the job's result
does not wait for. In a child process it runs while the job stops its model server and finishes; its
imports (matplotlib, WeasyPrint, nbformat: about 1.5 s) are done while the job computes; neither they
nor its memory reach the job's process; and a crash in a native library (Pango, FreeType) ends the
child, not the job, which then reports it. The child is started with ``spawn`` (as the SHAP workers are): the job's process has threads
(HTTP pools, the model server's watchers) that a fork would copy in an unknown state.

Time after ``analysis.json`` is the job's wait for the report: the child also pays the renderers' first-use
costs while the job computes (``warm_up``, when the job has not sent its report yet), and exits as soon as
it has answered (``analyzer.process_exit``: the interpreter's teardown cost 0.3 s that the job waited for in ``join``).

>>> with start_report_process() as reports:     # doctest: +SKIP  (when the job starts)
...     reports.check_engines()                   # ReportError now if the PDF engine is missing
...     ...                                       # the job computes and publishes analysis.json
...     reports.render(analysis, summary, staging_dir, name="report", title="t")
...     ...                                       # the job finishes (stops its model server) meanwhile
...     written = reports.wait()                  # ReportError if a format failed or the process died
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from analyzer.errors import UserError
from analyzer.report import ReportError
from analyzer.report.summary import JobSummary

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the wait checks that the child is still alive (a dead one sends nothing)


class ReportProcess:
    """The report's child process: started when the job starts, it checks the PDF engine and imports the
    renderers while the job computes, then renders once ``render`` hands it the results."""

    def __init__(self, process: multiprocessing.process.BaseProcess, jobs: Connection, results: Connection):
        self._process, self._jobs, self._results = process, jobs, results
        self._checked = False

    def check_engines(self) -> None:
        """Wait for the child's engine check (``check_report_engines``, run there so that WeasyPrint is
        never imported by the job's process); raise ``ReportError`` if a format cannot be rendered."""
        if self._checked:
            return
        started = time.perf_counter()
        outcome = self._receive()
        self._checked = True
        log.debug("The report process's engine check answered after %.2f s of waiting", time.perf_counter() - started)
        if outcome is None:
            raise ReportError(f"the report cannot be written (the report process {_ending(self._process.exitcode)})",
                              [], {"all": RuntimeError("report process died")})
        if outcome[0] == "missing":
            raise ReportError(outcome[1], [], {"pdf": RuntimeError(outcome[1])})

    def render(self, analysis: dict, summary: JobSummary, output_dir: Path, *, name: str = "report",
               title: str = "Analysis Report", local_explanations: Path | None = None) -> None:
        """Have the child write ``<name>.html/.pdf/.ipynb`` into ``output_dir`` (``write_reports``)."""
        self.check_engines()
        with contextlib.suppress(OSError):  # the child died since its check (BrokenPipeError): ``wait`` says how
            self._jobs.send((analysis, summary, Path(output_dir), name, title, local_explanations))

    def wait(self) -> list[Path]:
        """Wait for the child; return the files it wrote. Raises ``ReportError`` naming each format that
        failed (the others are written), or saying how the process ended when it died without a word."""
        outcome = self._receive()
        self._process.join()
        if outcome is None:
            raise ReportError(f"the report could not be written (the report process {_ending(self._process.exitcode)})",
                              [], {"all": RuntimeError("report process died")})
        written, failed = [Path(p) for p in outcome[0]], outcome[1]
        if failed:
            reasons = "; ".join(f"{ext}: {reason}" for ext, (reason, _) in failed.items())
            raise ReportError(f"the report could not be written ({reasons})", written,
                              {ext: OSError(*os_error) if os_error else RuntimeError(reason)
                               for ext, (reason, os_error) in failed.items()})
        return written

    def _receive(self) -> tuple | None:
        """The child's next message, or None once it died without sending one."""
        while True:
            if self._results.poll(POLL_SECONDS):
                try:
                    return self._results.recv()
                except EOFError:  # the child closed its end without sending: it died
                    break
            elif not self._process.is_alive() and not self._results.poll(0):
                break
        self._process.join()
        return None

    def stop(self) -> None:
        """Stop the child if it still runs (the job ended, failed or was stopped meanwhile)."""
        self._jobs.close()  # a child waiting for work sees EOF and exits
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._results.close()

    def __enter__(self) -> ReportProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_temporary_folder() -> None:
    """Raise ``UserError`` when no temporary folder can be written (``TMPDIR``, /tmp, /var/tmp, the current
    folder: Python's own search): the report's renderers (matplotlib, WeasyPrint) need one, and without
    it the report process dies at its start with a bare traceback, found only once the work is done."""
    previous, tempfile.tempdir = tempfile.tempdir, None  # search again: the cached answer may be stale
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        raise UserError("No temporary folder can be written (TMPDIR, /tmp, /var/tmp and the current folder were "
                        "tried): the report needs one. Mount one (docker run --tmpfs /tmp, or a volume) or set "
                        "TMPDIR to a writable folder.") from None
    finally:
        if tempfile.tempdir is None:
            tempfile.tempdir = previous


def start_report_process() -> ReportProcess:
    """Start the report's child process now (it logs at this process's level and stops if this process
    dies); ``render`` gives it the work later."""
    context = multiprocessing.get_context("spawn")
    jobs_out, jobs_in = context.Pipe(duplex=False)
    results_out, results_in = context.Pipe(duplex=False)
    process = context.Process(target=_serve, name="lucent-report", daemon=True,
                              args=(logging.getLogger().level, os.getpid(), jobs_out, results_in))
    process.start()
    jobs_out.close()  # the child holds the only reading end of the jobs and writing end of the results:
    results_in.close()  # its death is then seen as EOF
    return ReportProcess(process, jobs_in, results_out)


def _serve(log_level: int, parent_pid: int, jobs: Connection, results: Connection) -> None:
    """The child: check the engines and import the renderers, then write the one report it is sent and
    send (paths written, {format: reason} of the failures); then exit at once."""
    _serve_report(log_level, parent_pid, jobs, results)
    # The answer is sent and every file written (atomically, closed): the interpreter's teardown (matplotlib,
    # WeasyPrint, pandas: about 0.3 s, while the job waits in ``join``) does nothing the job needs.
    from analyzer.process_exit import end_process

    end_process(0)


def _serve_report(log_level: int, parent_pid: int, jobs: Connection, results: Connection) -> None:
    from analyzer.logs import configure_logging
    from analyzer.parent import exit_with_parent

    started = time.perf_counter()
    configure_logging(log_level)
    exit_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the job, which stops this process
    from analyzer.report import check_report_engines, write_reports

    try:
        check_report_engines()
    except ReportError as error:
        results.send(("missing", str(error)))
        return
    results.send(("ready", None))
    # Imported now, while the job computes: the job's wait for the report starts with them loaded.
    import analyzer.report.content
    import analyzer.report.html
    import analyzer.report.notebook  # noqa: F401
    if not jobs.poll(0):  # the job is still computing: pay the renderers' first-use costs now
        try:
            warm_up()
        except Exception as error:  # noqa: BLE001 - the report itself says what fails, and why
            log.debug("Report warm-up failed: %s: %s", type(error).__name__, error)
    log.debug("Report process ready in %.2f s", time.perf_counter() - started)
    try:
        analysis, summary, output_dir, name, title, local_explanations = jobs.recv()
    except EOFError:  # the job ended without a report to write
        return
    started = time.perf_counter()
    try:
        written = write_reports(analysis, summary, output_dir, name=name, title=title,
                                local_explanations=local_explanations)
        log.debug("Report rendered in %.2f s", time.perf_counter() - started)
        results.send(([str(p) for p in written], {}))
    except ReportError as error:
        results.send(([str(p) for p in error.written], {ext: _failure(exc) for ext, exc in error.failed.items()}))
    except Exception as error:  # noqa: BLE001 - the job must hear why, not just an exit code
        results.send(([], {"all": _failure(error)}))
    finally:
        results.close()


def warm_up() -> None:
    """Pay the renderers' one-time costs on a tiny input: the notebook schema's validator (compiled on first
    use), the C types WeasyPrint declares to cffi (parsed on first use), its fonts and PDF writer, and
    matplotlib's SVG backend. About 0.1 s of CPU spent while the job computes, and as much less between
    ``analysis.json`` and the report (0.37 s -> 0.28 s of CPU for a SHAP report). The report's content does
    not depend on it (tests/test_report_process.py)."""
    import base64
    import io

    import matplotlib.figure
    import nbformat
    from nbformat import v4

    from analyzer.report.pdf import render_pdf

    nbformat.validate(v4.new_notebook(cells=[v4.new_markdown_cell("Lucent")]))
    figure = matplotlib.figure.Figure(figsize=(1, 1))
    figure.subplots().barh(["Lucent"], [1.0])
    svg = io.BytesIO()
    figure.savefig(svg, format="svg")
    # A chart drawn into the PDF, as the report's are (WeasyPrint's SVG renderer has first-use costs of its own).
    render_pdf(f'<p>Lucent</p><img src="data:image/svg+xml;base64,{base64.b64encode(svg.getvalue()).decode()}">')


def _failure(error: BaseException) -> tuple[str, tuple | None]:
    """A format's failure as the job receives it: its text, and for an ``OSError`` (a full disk: the user's to
    fix, not the report's) the ``(errno, strerror, filename)`` the job rebuilds it from."""
    os_error = (error.errno, error.strerror, error.filename) if isinstance(error, OSError) else None
    return f"{type(error).__name__}: {error}", os_error


def _ending(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} without a result"
