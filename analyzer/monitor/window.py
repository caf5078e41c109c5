"""The monitoring window: which hour of traffic an execution analyses (spec model-monitor.md 4.1, 6, 7).

An execution runs at a time T, rounded down to the hour (SageMaker schedules fire on the hour; rounding
makes a rerun of the same window land on the same outputs). The job definition's ``StartTimeOffset`` /
``EndTimeOffset`` (ISO-8601 durations, default ``-PT1H`` / ``PT0H``) turn T into ``[start, end)``:
T = 2020-01-09T13:00 with ``-P8D`` / ``-P1D`` analyses 2020-01-01T13:00 to 2020-01-08T13:00.

Capture objects sit in one folder per hour of inference time (``yyyy/mm/dd/hh``), so only the folders
of the hours that overlap the window are listed; the records are then filtered by ``inferenceTime``.
Ground truth folders are named after the hour the label was *collected*, which is after the inference:
every folder from the window's start up to T is read.

Standard library only, so that the command layer and the merge can both import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from analyzer.errors import UserError

DEFAULT_START_OFFSET = "-PT1H"
DEFAULT_END_OFFSET = "PT0H"
MAX_DURATION_CHARS = 15  # EndpointInput.StartTimeOffset / EndTimeOffset: pattern ``.?P.*``, at most 15 chars
_HOUR = timedelta(hours=1)

# ISO-8601 durations in the forms SageMaker documents: an optional sign, then days (weeks) and a
# time part. Years and months are refused: they have no fixed length, so "-P1M" has no single answer.
_DURATION = re.compile(
    r"(?P<sign>[+-])?P(?!$)"
    r"(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?"
)
_YEARS_OR_MONTHS = re.compile(r"[+-]?P[^T]*[YM]")


def parse_duration(text: str, key: str) -> timedelta:
    """``"-PT1H"`` -> ``timedelta(hours=-1)``: a signed ISO-8601 duration of weeks, days, hours, minutes
    and seconds (``-P8D``, ``PT0H``, ``-P1DT2H30M``). Anything else is a ``UserError`` naming ``key``
    (the job definition field it came from)."""
    if not isinstance(text, str):
        raise UserError(f"{key}: expected an ISO-8601 duration such as -PT1H, got {text!r}")
    if len(text) > MAX_DURATION_CHARS:
        raise UserError(f"{key} {text!r}: at most {MAX_DURATION_CHARS} characters (SageMaker's limit); "
                        "use the largest unit, e.g. -P8D rather than -PT192H")
    match = _DURATION.fullmatch(text)
    if match is None:
        if _YEARS_OR_MONTHS.match(text):
            raise UserError(f"{key} {text!r}: years and months have no fixed length; give the offset in "
                            "weeks, days or hours (e.g. -P30D)")
        raise UserError(f"{key} {text!r} is not an ISO-8601 duration such as -PT1H, -P8D or -P1DT2H30M")
    parts = {name: int(value) for name, value in match.groupdict().items() if name != "sign" and value}
    try:
        duration = timedelta(**parts)
    except OverflowError:
        raise UserError(f"{key} {text!r}: the duration is too long") from None
    return -duration if match.group("sign") == "-" else duration


def execution_time(now: datetime | None = None) -> datetime:
    """The execution's time T: ``now`` (default: the clock) in UTC, rounded down to the hour. A naive
    ``now`` is taken as UTC."""
    now = datetime.now(UTC) if now is None else _utc(now)
    return now.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Window:
    """The inference times an execution analyses: ``start <= inferenceTime < end``, aware UTC datetimes."""

    start: datetime
    end: datetime

    def __contains__(self, when: datetime) -> bool:
        return self.start <= _utc(when) < self.end

    def __str__(self) -> str:
        return f"[{utc_text(self.start)}, {utc_text(self.end)})"


def monitoring_window(now: datetime, start_offset: str | None, end_offset: str | None) -> Window:
    """``[T + start_offset, T + end_offset)`` with T = ``execution_time(now)``; offsets default to
    ``-PT1H`` and ``PT0H`` (the hour before T). A window that is empty or reversed is a ``UserError``."""
    when = execution_time(now)
    start_text = DEFAULT_START_OFFSET if start_offset is None else start_offset
    end_text = DEFAULT_END_OFFSET if end_offset is None else end_offset
    start = _shift(when, parse_duration(start_text, "StartTimeOffset"), "StartTimeOffset", start_text)
    end = _shift(when, parse_duration(end_text, "EndTimeOffset"), "EndTimeOffset", end_text)
    if start >= end:
        raise UserError(f"StartTimeOffset {start_text!r} must come before EndTimeOffset {end_text!r}: for the "
                        f"execution at {utc_text(when)} they give the empty window {utc_text(start)} to {utc_text(end)}")
    return Window(start, end)


def check_window_over(window: Window, publish_delay: timedelta, clock: datetime | None = None) -> None:
    """``UserError`` unless ``window`` is over: its end at or before ``clock`` (default: now) minus
    ``publish_delay``, the time a capture file may stay unpublished (records of the window's last
    minute would otherwise be missing without a word)."""
    now = datetime.now(UTC) if clock is None else _utc(clock)
    ready = window.end + publish_delay
    if ready > now:
        raise UserError(f"the window {window} is not over yet: its capture files may be published until "
                        f"{utc_text(ready)} ({int(publish_delay.total_seconds())} s after its end), and it is "
                        f"{utc_text(now)}; run it after that")


def _shift(when: datetime, offset: timedelta, key: str, text: str) -> datetime:
    try:
        return when + offset
    except OverflowError:
        raise UserError(f"{key} {text!r} moves the window outside the calendar (years 1 to 9999)") from None


def hour_prefixes(window: Window) -> list[str]:
    """``yyyy/mm/dd/hh`` of every hour that overlaps ``[start, end)``, oldest first: the capture folders
    that can hold records of the window."""
    return _hours(_floor_hour(window.start), window.end)


def ground_truth_prefixes(window: Window, now: datetime) -> list[str]:
    """``yyyy/mm/dd/hh`` of every ground truth folder that can hold labels for the window: from the hour
    of the window's start up to and including the hour of ``now`` (labels are collected after the
    inference, so folders after the window count too), oldest first."""
    last = _floor_hour(_utc(now))
    return _hours(_floor_hour(window.start), max(last + _HOUR, window.end))


def _hours(first: datetime, end: datetime) -> list[str]:
    prefixes = []
    hour = first
    while hour < end:
        prefixes.append(f"{hour:%Y/%m/%d/%H}")
        hour += _HOUR
    return prefixes


def _floor_hour(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def utc_text(when: datetime) -> str:
    """``when`` as monitoring outputs and messages write times: UTC, to the second, ``Z`` (a naive time is UTC)."""
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")
