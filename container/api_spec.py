"""Specs for SageMaker API request bodies (``CreateEndpointConfig``, ``CreateModelBiasJobDefinition``,
``CreateMonitoringSchedule``, ...): the API's string, list and JMESPath constraints as ``analyzer.config.spec``
checks, shared by the endpoint's config and the monitor's job definitions."""

from __future__ import annotations

import re
from typing import Any

import jmespath
import jmespath.exceptions

from analyzer.config.spec import INVALID, ListOf, Spec, Typed, Where


def api_string(min_length: int = 0, max_length: int | None = None, pattern: str | None = None,
               what: str = "") -> Spec:
    """A string within the API's length bounds (and matching its whole pattern, when it has one)."""
    conditions: list[tuple[Any, str]] = []
    if min_length:
        conditions.append((lambda v: len(v) >= min_length, f"must have at least {min_length} character(s)"))
    if max_length is not None:
        conditions.append((lambda v: len(v) <= max_length, f"must have at most {max_length} characters"))
    if pattern is not None:
        conditions.append((lambda v: re.fullmatch(pattern, v) is not None,
                           "{value!r} is not " + (what or f"valid (pattern {pattern})")))
    return Where(Typed(("string",)), tuple(conditions))


def jmespath_expression(max_length: int = 64) -> Spec:
    """A JMESPath expression that compiles (``FeaturesAttribute``, ``EnableExplanations``, ...)."""
    return Where(api_string(1, max_length), ((_compiles, "{value!r} is not a valid JMESPath expression"),))


def _compiles(expression: str) -> bool:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError:
        return False
    return True


def bounded_list(item_spec: Spec, min_items: int, max_items: int) -> Spec:
    """A list of ``min_items`` to ``max_items`` items, each checked with ``item_spec``."""
    return Where(ListOf(item_spec, min_items), ((lambda v: len(v) <= max_items, f"must have at most {max_items} items"),))


def has_invalid(value: Any) -> bool:
    """Whether a checked value holds an invalid part anywhere (its problem was recorded)."""
    if value is INVALID:
        return True
    if isinstance(value, dict):
        return any(has_invalid(v) for v in value.values())
    if isinstance(value, list):
        return any(has_invalid(v) for v in value)
    return False


def object_or_empty(value: Any) -> dict:
    """A checked object, or an empty one where the object itself was invalid (its problem is recorded)."""
    return value if isinstance(value, dict) else {}
