"""Where log lines go and which ones: Lucent's own at the chosen level, other libraries' only when they warn.

A job's log is read by people (``docker logs``, CloudWatch): WeasyPrint and fontTools log hundreds of
INFO lines per report, botocore and urllib3 one per request. Those say nothing a user can act on, so
records from loggers outside Lucent's packages are shown from WARNING up, unless the level is DEBUG
(``-v``), which shows everything. The filter sits on Lucent's handler, not on the libraries' loggers,
so it changes nothing for other handlers a host application installed.

Leaf module (standard library only): ``container`` configures the job's process with it, and the report
process (``analyzer.report.process``) its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from analyzer.redact import install_redaction

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
OWN_PACKAGES = ("lucent", "analyzer", "container", "bench", "__main__")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVEL_VARIABLE = "LUCENT_LOG_LEVEL"


def is_own(name: str) -> bool:
    """Whether the logger ``name`` is Lucent's (or a child of one of its packages)."""
    return any(name == package or name.startswith(package + ".") for package in OWN_PACKAGES)


class ThirdPartyFilter(logging.Filter):
    """Lets other libraries' records through only from ``floor`` up (WARNING, or DEBUG under ``-v``)."""

    def __init__(self, level: int):
        super().__init__()
        self.floor = level if level <= logging.DEBUG else max(level, logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.floor or is_own(record.name)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be swapped, as in tests).

    While a progress bar is drawn on the terminal (``analyzer.progress``), the bar is cleared, the line
    written and the bar drawn again below it, so that log lines and bars never overwrite each other.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        from analyzer import progress

        if progress.bars_drawn():
            with progress.writing_around_bars():
                super().emit(record)
        else:
            super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr, where SageMaker (and `docker logs`) collect them. Idempotent: calling it again
    changes the level; other handlers on the root logger are left alone.

    Every record is redacted (``analyzer.redact.install_redaction``): URL passwords, credential
    headers, session tokens and key ids never reach a log, botocore's debug lines under ``-v`` included.
    """
    root = logging.getLogger()
    root.setLevel(level)
    handler = next((h for h in root.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    for old in [f for f in handler.filters if isinstance(f, ThirdPartyFilter)]:
        handler.removeFilter(old)
    handler.addFilter(ThirdPartyFilter(level))
    install_redaction(root)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``-v`` (the same as ``--log-level debug``) for a command that runs work."""
    parser.add_argument("--log-level", choices=sorted(LEVELS, key=LEVELS.__getitem__), default=None,
                        type=str.lower, metavar="LEVEL",
                        help="debug, info (default: $LUCENT_LOG_LEVEL, else info), warning or error; other "
                             "libraries' lines (WeasyPrint, fontTools, botocore, urllib3, ...) are shown from "
                             "warning up, except at debug")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (--log-level debug)")


def level_from_args(args: argparse.Namespace) -> int:
    """The level ``add_log_arguments``'s options ask for: ``-v`` wins, then ``--log-level``, then
    ``$LUCENT_LOG_LEVEL`` (SageMaker Processing starts the image with no arguments, but with the job's
    ``Environment``), else INFO. A bad variable exits with a message naming it, as a bad option does."""
    if getattr(args, "verbose", False):
        return logging.DEBUG
    name = getattr(args, "log_level", None)
    if name:
        return LEVELS[name]
    value = os.environ.get(LEVEL_VARIABLE, "").strip()
    if not value:
        return logging.INFO
    if value.lower() not in LEVELS:
        raise SystemExit(f"lucent: {LEVEL_VARIABLE}={value!r}: choose from {', '.join(LEVELS)}")
    return LEVELS[value.lower()]
