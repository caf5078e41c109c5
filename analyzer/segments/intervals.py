"""The items of a ``segment_config`` list: numeric intervals such as ``"(2, 5]"`` and plain values.

A segment list holds values (``"urban"``, ``3``) and, for numeric columns, interval strings. An item is
an interval when it is a string that starts with ``(`` or ``[`` and ends with ``)`` or ``]``; such a
string that does not parse is an error, never a value, so a typo cannot silently select nothing.
Endpoints are integers or decimals (``1e3`` too) or infinities (``inf``, ``-inf``, ``Infinity``, ``∞``);
they are kept exactly as written (an integer literal stays a Python ``int``), and membership compares
exactly (``rows.py``), so ``"(0.1, 0.3]"`` holds the CSV value ``0.3`` and ``"[9007199254740993, inf)"``
does not hold ``9007199254740992``.

Standard library only: config validation imports it (``analyzer.config.rules``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

Number = int | float

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_INFINITY = r"[+-]?(?:inf(?:inity)?|∞)"
_ENDPOINT = rf"({_NUMBER}|{_INFINITY})"
_INTERVAL = re.compile(rf"^\s*([\[(])\s*{_ENDPOINT}\s*,\s*{_ENDPOINT}\s*([\])])\s*$", re.IGNORECASE)


class IntervalError(ValueError):
    """An item that looks like an interval and is not a valid one (the message says why)."""


@dataclass(frozen=True)
class Interval:
    """``lower``..``upper`` with each end closed or open; endpoints as written (int, float or +-inf)."""

    lower: Number
    upper: Number
    lower_closed: bool
    upper_closed: bool

    def __str__(self) -> str:
        return (f"{'[' if self.lower_closed else '('}{_text(self.lower)}, "
                f"{_text(self.upper)}{']' if self.upper_closed else ')'}")

    def contains(self, value: Number) -> bool:
        """Whether ``value`` (a number) lies in the interval, compared exactly (NaN never does)."""
        if isinstance(value, float) and math.isnan(value):
            return False
        above = value >= self.lower if self.lower_closed else value > self.lower
        below = value <= self.upper if self.upper_closed else value < self.upper
        return bool(above and below)

    def overlaps(self, other: Interval) -> bool:
        """Whether some real number (or infinity) lies in both intervals."""
        low, low_closed = _tighter_lower(self, other)
        high, high_closed = _tighter_upper(self, other)
        if _exact(low) < _exact(high):
            return True
        return _exact(low) == _exact(high) and low_closed and high_closed


def _text(value: Number) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value)


def _exact(value: Number) -> Fraction | float:
    """A value that orders ints and floats exactly (infinities stay floats, which order fine)."""
    if isinstance(value, float) and math.isinf(value):
        return value
    return Fraction(value)


def _tighter_lower(a: Interval, b: Interval) -> tuple[Number, bool]:
    if _exact(a.lower) != _exact(b.lower):
        return (a.lower, a.lower_closed) if _exact(a.lower) > _exact(b.lower) else (b.lower, b.lower_closed)
    return a.lower, a.lower_closed and b.lower_closed


def _tighter_upper(a: Interval, b: Interval) -> tuple[Number, bool]:
    if _exact(a.upper) != _exact(b.upper):
        return (a.upper, a.upper_closed) if _exact(a.upper) < _exact(b.upper) else (b.upper, b.upper_closed)
    return a.upper, a.upper_closed and b.upper_closed


def looks_like_interval(item: object) -> bool:
    """Whether ``item`` is meant as an interval: a string in brackets or parentheses."""
    if not isinstance(item, str):
        return False
    text = item.strip()
    return len(text) >= 2 and text[0] in "([" and text[-1] in ")]"


def _endpoint(text: str) -> Number:
    stripped = text.strip().lower().lstrip("+")
    if stripped.lstrip("-") in ("inf", "infinity", "∞"):
        return -math.inf if stripped.startswith("-") else math.inf
    if re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    value = float(text)
    if math.isinf(value):  # 1e999: a finite literal that no float can hold
        raise IntervalError(f"endpoint {text.strip()} is too large for a number")
    return value


def parse_interval(text: str) -> Interval:
    """``"(2, 5]"`` -> ``Interval(2, 5, False, True)``. Raises ``IntervalError`` saying what is wrong."""
    match = _INTERVAL.match(text)
    if match is None:
        raise IntervalError(f"{text!r} is not an interval: write it as (a, b), (a, b], [a, b) or [a, b] with numbers "
                            "or -inf / inf as ends, for example \"(2, 5]\"")
    opening, low, high, closing = match.groups()
    interval = Interval(_endpoint(low), _endpoint(high), opening == "[", closing == "]")
    if _exact(interval.lower) > _exact(interval.upper):
        raise IntervalError(f"interval {text!r} is empty: its lower end is above its upper end")
    if _exact(interval.lower) == _exact(interval.upper) and not (interval.lower_closed and interval.upper_closed):
        raise IntervalError(f"interval {text!r} is empty: write [{_text(interval.lower)}, {_text(interval.upper)}] "
                            "for the single value, or the value itself")
    return interval


def as_number(item: object) -> Number | None:
    """A segment item as a number: an int, a float, or a string holding one (``"3"``, ``"2.5"``); else None."""
    if isinstance(item, bool):
        return None
    if isinstance(item, int | float):
        return item
    if isinstance(item, str) and re.fullmatch(_NUMBER, item.strip()):
        return _endpoint(item)
    return None


Item = Interval | Number | str  # a parsed item: an interval, a number, or a text value


def parse_item(item: object) -> Item:
    """An item of a segment list as an ``Interval``, or the value itself (raises ``IntervalError``)."""
    if looks_like_interval(item):
        assert isinstance(item, str)
        return parse_interval(item)
    return item  # type: ignore[return-value]  # str | int (the schema's item types)


def items_overlap(a: Item, b: Item) -> bool:
    """Whether two parsed items can select the same value: equal values (``3`` and ``"3"`` too, since
    the column decides how either is read), a number inside an interval, or intersecting intervals."""
    if isinstance(a, Interval) and isinstance(b, Interval):
        return a.overlaps(b)
    if isinstance(a, Interval) or isinstance(b, Interval):
        interval, other = (a, b) if isinstance(a, Interval) else (b, a)
        number = as_number(other)
        return number is not None and interval.contains(number)  # type: ignore[union-attr]
    number_a, number_b = as_number(a), as_number(b)
    if number_a is not None and number_b is not None:
        return _exact(number_a) == _exact(number_b)
    return str(a) == str(b)


def overlapping_lists(lists: list[list[object]]) -> list[tuple[int, int, str, str]]:
    """``(i, j, item of list i, item of list j)`` for each pair of lists ``i < j`` sharing values
    (first shared pair only), judged from the items alone. Items that do not parse are skipped
    (their own error is reported)."""
    parsed: list[list[tuple[object, Item]]] = []
    for items in lists:
        row = []
        for item in items:
            try:
                row.append((item, parse_item(item)))
            except IntervalError:
                continue
        parsed.append(row)
    found = []
    for i in range(len(parsed)):
        for j in range(i + 1, len(parsed)):
            pair = next(((x, y) for x, px in parsed[i] for y, py in parsed[j] if items_overlap(px, py)), None)
            if pair is not None:
                found.append((i, j, str(pair[0]), str(pair[1])))
    return found
