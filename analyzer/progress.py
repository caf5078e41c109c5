"""Progress of a long step: a bar with rate and ETA on a terminal, a log line every few seconds elsewhere.

Every long step (loading, predictions, SHAP shards, PDP, text splitting) reports through this one
module, so they all look the same and follow the same rules:

* On a terminal (``sys.stderr`` is a TTY) a tqdm bar is drawn, with the count, the rate and the time
  left. Log lines written meanwhile go above the bar (``analyzer.logs.StderrHandler``).
* Anywhere else (a container's log, CloudWatch, a file) a bar would be a stream of carriage returns,
  so one INFO line is logged at most every ``LUCENT_PROGRESS_SECONDS`` seconds (default 5):
  ``SHAP: 1,200 of 2,000 records (60%), 340 records/s, ETA 2 s``. A step shorter than that logs no
  progress line at all; the step's own "done in" line says how long it took.

>>> with progress("SHAP", total=2000, unit="records") as bar:     # doctest: +SKIP
...     for shard in shards:
...         bar.update(len(shard))

Why tqdm: it is the maintained, widely used bar (rate and ETA smoothing, terminal width, Jupyter), and
spaCy already depends on it, so it costs the image nothing. It is imported only when a bar is drawn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from analyzer.environment import positive_number

log = logging.getLogger(__name__)

INTERVAL_VARIABLE = "LUCENT_PROGRESS_SECONDS"
DEFAULT_INTERVAL_SECONDS = 5.0
_bars: list[Any] = []  # tqdm bars drawn now, innermost last


def bars_drawn() -> bool:
    """Whether a progress bar is on the terminal now (log lines must then be written around it)."""
    return bool(_bars)


@contextlib.contextmanager
def writing_around_bars() -> Iterator[None]:
    """Clear the bars, let the caller write a line, and draw the bars again below it."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        yield


def on_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``) is a terminal a person watches."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts the units of one step done so far and shows it (see the module docstring).

    ``total`` may be None when unknown (no percentage or ETA then). ``stream`` is where a bar is drawn
    (default ``sys.stderr``) and decides bar or log lines; ``clock`` and ``interval`` are there for tests.
    """

    def __init__(self, description: str, total: int | None, unit: str = "rows", *, stream: IO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self._clock, self._log = clock, logger or log
        self._interval = interval if interval is not None else positive_number(
            INTERVAL_VARIABLE, DEFAULT_INTERVAL_SECONDS, unit="seconds")
        self._started = self._last_line = clock()
        self._bar = None
        stream = sys.stderr if stream is None else stream
        if on_terminal(stream):
            from tqdm import tqdm

            # k/M suffixes for large counts only: "3.00/3.00" would read oddly.
            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=stream,
                             unit_scale=total is None or total >= 10_000,
                             dynamic_ncols=True, mininterval=0.2, leave=True)
            _bars.append(self._bar)

    def update(self, n: int = 1) -> None:
        """``n`` more units are done (negative: units counted already that are being done again)."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self._log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``SHAP: 1,200 of 2,000 records (60%), 340 records/s, ETA 2 s``: what a log line says now."""
        elapsed = max((self._clock() if now is None else now) - self._started, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            return f"{self.description}: {self.done:,} {self.unit}, {_rate(rate)} {self.unit}/s"
        percent = 100 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        return (f"{self.description}: {self.done:,} of {self.total:,} {self.unit} ({percent:.0f}%), "
                f"{_rate(rate)} {self.unit}/s, ETA {_duration(left)}")

    def close(self) -> None:
        """Leave the finished bar on the terminal (nothing is logged: the step logs its own result)."""
        if self._bar is not None:
            self._bar.close()
            if self._bar in _bars:
                _bars.remove(self._bar)
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(description: str, total: int | None, unit: str = "rows") -> Progress:
    """A ``Progress`` for one step, on ``sys.stderr`` (use it as a context manager)."""
    return Progress(description, total, unit)


def _rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
