"""Window arithmetic: ISO-8601 offsets, the execution hour, and the hour folders to list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from analyzer.errors import UserError
from analyzer.monitor.window import (
    Window,
    execution_time,
    ground_truth_prefixes,
    hour_prefixes,
    monitoring_window,
    parse_duration,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("-PT1H", timedelta(hours=-1)),
    ("PT0H", timedelta(0)),
    ("-P8D", timedelta(days=-8)),
    ("-P1D", timedelta(days=-1)),
    ("-P1DT2H30M", -timedelta(days=1, hours=2, minutes=30)),
    ("+PT5H", timedelta(hours=5)),
    ("P2W", timedelta(weeks=2)),
    ("-PT90M", timedelta(minutes=-90)),
    ("PT45S", timedelta(seconds=45)),
    ("-PT5H", timedelta(hours=-5)),
])
def test_durations(text, expected):
    assert parse_duration(text, "StartTimeOffset") == expected


@pytest.mark.parametrize(("text", "message"), [
    ("-1H", "is not an ISO-8601 duration"),
    ("P", "is not an ISO-8601 duration"),
    ("-PT", "is not an ISO-8601 duration"),
    ("PT1D", "is not an ISO-8601 duration"),
    ("-P1.5D", "is not an ISO-8601 duration"),
    ("pt1h", "is not an ISO-8601 duration"),
    ("-P1M", "years and months have no fixed length"),
    ("P1Y", "years and months have no fixed length"),
    ("-PT0000000000001H", "at most 15 characters"),
    ("P99999999999D", "too long"),
])
def test_bad_durations_name_the_key(text, message):
    with pytest.raises(UserError) as error:
        parse_duration(text, "EndTimeOffset")
    assert str(error.value).startswith(f"EndTimeOffset {text!r}") and message in str(error.value)


def test_execution_time_is_the_utc_hour():
    assert execution_time(datetime(2026, 3, 1, 10, 59, 59, 999999, tzinfo=UTC)) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert execution_time(datetime(2026, 3, 1, 1, 30, tzinfo=plus_two)) == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert execution_time(datetime(2026, 3, 1, 10, 30)) == datetime(2026, 3, 1, 10, tzinfo=UTC)  # naive = UTC
    now = execution_time()
    assert now.tzinfo == UTC and now.minute == now.second == now.microsecond == 0
    assert timedelta(0) <= datetime.now(UTC) - now < timedelta(hours=1, seconds=5)


def test_default_window_is_the_hour_before():
    window = monitoring_window(datetime(2026, 3, 1, 10, 7, tzinfo=UTC), None, None)
    assert window == Window(datetime(2026, 3, 1, 9, tzinfo=UTC), datetime(2026, 3, 1, 10, tzinfo=UTC))
    assert str(window) == "[2026-03-01T09:00:00Z, 2026-03-01T10:00:00Z)"
    assert hour_prefixes(window) == ["2026/03/01/09"]
    assert datetime(2026, 3, 1, 9, tzinfo=UTC) in window and datetime(2026, 3, 1, 10, tzinfo=UTC) not in window


def test_late_ground_truth_offsets_from_the_developer_guide():
    """DG: -P8D / -P1D for a run at 2020-01-09T13:00 analyses 2020-01-01T13:00 to 2020-01-08T13:00."""
    window = monitoring_window(datetime(2020, 1, 9, 13, 20, tzinfo=UTC), "-P8D", "-P1D")
    assert window == Window(datetime(2020, 1, 1, 13, tzinfo=UTC), datetime(2020, 1, 8, 13, tzinfo=UTC))
    hours = hour_prefixes(window)
    assert len(hours) == 7 * 24 and hours[0] == "2020/01/01/13" and hours[-1] == "2020/01/08/12"
    truth = ground_truth_prefixes(window, datetime(2020, 1, 9, 13, 20, tzinfo=UTC))
    assert truth[0] == "2020/01/01/13" and truth[-1] == "2020/01/09/13" and len(truth) == 8 * 24 + 1


def test_hours_cross_day_month_and_year_boundaries():
    window = monitoring_window(datetime(2027, 1, 1, 2, tzinfo=UTC), "-PT4H", "PT0H")
    assert hour_prefixes(window) == ["2026/12/31/22", "2026/12/31/23", "2027/01/01/00", "2027/01/01/01"]
    leap = monitoring_window(datetime(2028, 3, 1, 1, tzinfo=UTC), "-PT2H", "-PT1H")
    assert hour_prefixes(leap) == ["2028/02/29/23"]


def test_partial_hours_are_listed_when_they_overlap():
    window = Window(datetime(2026, 3, 1, 9, 30, tzinfo=UTC), datetime(2026, 3, 1, 11, 0, 1, tzinfo=UTC))
    assert hour_prefixes(window) == ["2026/03/01/09", "2026/03/01/10", "2026/03/01/11"]
    exact = Window(datetime(2026, 3, 1, 9, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC))
    assert hour_prefixes(exact) == ["2026/03/01/09", "2026/03/01/10"]
    # brute force: every minute in the window falls in a listed hour, and every listed hour holds one
    minutes = [window.start + timedelta(minutes=m) for m in range(0, 92)]
    inside = {f"{t:%Y/%m/%d/%H}" for t in minutes if t in window}
    assert inside == set(hour_prefixes(window))


def test_ground_truth_folders_run_from_the_window_start_to_now():
    window = monitoring_window(datetime(2026, 3, 1, 10, tzinfo=UTC), None, None)
    assert ground_truth_prefixes(window, datetime(2026, 3, 1, 12, 59, tzinfo=UTC)) == [
        "2026/03/01/09", "2026/03/01/10", "2026/03/01/11", "2026/03/01/12"]


@pytest.mark.parametrize(("start", "end"), [("PT0H", "PT0H"), ("-PT1H", "-PT2H"), ("PT1H", None)])
def test_empty_or_reversed_window_fails(start, end):
    with pytest.raises(UserError, match=f"StartTimeOffset {start!r} must come before EndTimeOffset"):
        monitoring_window(datetime(2026, 3, 1, 10, tzinfo=UTC), start, end)


def test_window_outside_the_calendar_fails():
    with pytest.raises(UserError, match="outside the calendar"):
        monitoring_window(datetime(1, 1, 2, tzinfo=UTC), "-P9D", None)
