"""Settings read from environment variables (``LUCENT_*``): one parser, so each bad value is the user's
clear error naming the variable, never a ``ValueError`` traceback."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping

from analyzer.errors import UserError


def positive_number(name: str, default: float, convert: Callable[[str], float] = float, unit: str = "") -> float:
    """``$name`` converted by ``convert`` (``int`` or ``float``) when set and not blank, else ``default``;
    a value that is not a finite number above 0 is a ``UserError`` naming the variable and ``unit``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = convert(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name}={text!r}: must be a positive number{f' of {unit}' if unit else ''}")
    return value


@contextlib.contextmanager
def environment_set(variables: Mapping[str, str | None]) -> Iterator[None]:
    """``variables`` set in ``os.environ`` for the duration (None: left as it is); every variable's own
    value (or absence) is restored afterwards, so a process that runs several jobs (the tests, a monitoring
    schedule) does not carry one job's settings into the next."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            if value is not None:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
