"""How a command's outcome becomes its exit code and exit message: the one mapping every command uses.

``lucent run`` (one host or several), ``lucent monitor``, ``lucent launch`` and ``lucent schedule`` turn
whatever ended them into ``outcome_of(error)``, so the same exception gives the same exit code and message
prefix everywhere (docs/running.md, "Exit codes and messages"; docs/monitoring.md)::

    outcome                                               exit  message
    success                                               0     the command's own (Completed: ...)
    UserError: the inputs (ConfigError, StorageError)     1     ClientError: <reason>
    a write the storage refused (an OSError of            1     ClientError: cannot write <file>: <strerror>
      STORAGE_ERRNOS: full disk, quota, file-size limit,
      read-only mount; also as the cause of a ReportError)
    DependencyError: the model server died or did not     2     AlgorithmError: <reason>
      answer; ReportError: a report format failed
    JobStopped: SIGTERM, or SIGINT (Ctrl-C)               2     Stopped: the job was stopped (SIGTERM) before it finished
    any other exception: an internal error                2     AlgorithmError: internal error in Lucent <version>: <type>: <error>

A command may add to the reason (what was published, what to do) or put its status before the prefix
(``lucent monitor``: ``Failed: ClientError: ...``), never change the code or the prefix.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from analyzer import __version__
from analyzer.errors import DependencyError, UserError
from analyzer.output import STORAGE_ERRNOS, published_path
from analyzer.report import ReportError

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 0, 1, 2
# A stopped job did not complete and its inputs are not at fault: exit 2, as an internal or dependency error,
# with its own prefix (SageMaker's ProcessingJobStatus for a stopped job is "Stopped", not "Failed").
EXIT_STOPPED = EXIT_INTERNAL_ERROR
CLIENT_ERROR, ALGORITHM_ERROR, STOPPED = "ClientError", "AlgorithmError", "Stopped"


class JobStopped(BaseException):
    """Raised in the main thread when the job receives SIGTERM (SageMaker's stop request) or SIGINT (Ctrl-C).

    A ``BaseException``, as ``KeyboardInterrupt`` is: the signal may land in any code, and handlers that
    catch ``Exception`` (a log handler's ``emit``, one report format's failure) must not swallow it."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@dataclass(frozen=True)
class Outcome:
    """How a command ended: its exit code, its message's prefix and the reason after it."""

    code: int
    prefix: str  # CLIENT_ERROR, ALGORITHM_ERROR or STOPPED
    reason: str
    internal: bool = False  # an unexpected exception: its traceback belongs in the log

    @property
    def message(self) -> str:
        return f"{self.prefix}: {self.reason}"


def outcome_of(error: BaseException, *, subject: str = "job", where: str = "",
               output_dir: Path | None = None) -> Outcome:
    """The outcome of a command that ended with ``error`` (the module's table). ``subject``: what was stopped
    ("job", "execution"); ``where``: which host (" on algo-2", for one host of several); ``output_dir``: the
    output folder, named by a storage failure whose error names no file (and instead of a staging copy)."""
    if isinstance(error, JobStopped):
        return Outcome(EXIT_STOPPED, STOPPED, f"the {subject} was stopped ({error.signal_name}){where} before it finished")
    if isinstance(error, UserError):
        return Outcome(EXIT_USER_ERROR, CLIENT_ERROR, str(error))
    if (full := storage_error(error)) is not None:
        file = published_path(output_dir, full.filename) if output_dir is not None else full.filename
        return Outcome(EXIT_USER_ERROR, CLIENT_ERROR, f"cannot write {file or output_dir}: {full.strerror}")
    if isinstance(error, DependencyError | ReportError):
        return Outcome(EXIT_INTERNAL_ERROR, ALGORITHM_ERROR, str(error))
    return Outcome(EXIT_INTERNAL_ERROR, ALGORITHM_ERROR,
                   f"internal error in Lucent {__version__}{where}: {type(error).__name__}: {error}", internal=True)


def storage_error(error: BaseException) -> OSError | None:
    """The write the storage refused (an ``OSError`` of ``STORAGE_ERRNOS``) that ``error`` is, or that made a
    report format fail (the report process sends an ``OSError``'s errno and file with its failure:
    ``analyzer.report.process``): the report was complete, the disk (or a quota, a file-size limit) refused it."""
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return error
    if isinstance(error, ReportError):
        for failure in error.failed.values():
            seen: BaseException | None = failure
            while seen is not None:
                if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
                    return seen
                seen = seen.__cause__ or seen.__context__
    return None
