"""JMESPath locators over model responses, with fast paths for the common shapes.

``predictor.label`` / ``predictor.probability`` are JMESPath expressions for JSON and JSON Lines
responses. ``jmespath.search`` costs a few microseconds per call, which adds seconds when it runs
once per line of a million-line response, so plain field chains (``score``, ``a.b``) and single
projections over them (``predictions[*].score``, ``[*].label``) are evaluated directly. The fast
paths reproduce JMESPath semantics exactly, including that a projection drops null results; every
other expression goes through the ``jmespath`` library.
"""

from __future__ import annotations

import re
from typing import Any

import jmespath
import jmespath.exceptions

from analyzer.errors import UserError, jmespath_error_text

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_CHAIN = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_PROJECTION = re.compile(rf"(?P<outer>{_CHAIN.pattern})?\[\*\](?:\.(?P<inner>{_CHAIN.pattern}))?")


def _dig(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None  # JMESPath: a field of a non-object is null
        value = value.get(key)
    return value


class JsonLocator:
    """A compiled JMESPath expression; ``key`` names the config key in error messages."""

    def __init__(self, expression: str, key: str):
        self.expression = expression
        try:
            self._compiled = jmespath.compile(expression)
        except jmespath.exceptions.JMESPathError as error:
            raise UserError(f"{key} {expression!r} is not a valid JMESPath expression: "
                            f"{jmespath_error_text(error)}") from None
        self._chain: tuple[str, ...] | None = None
        self._projection: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        if _CHAIN.fullmatch(expression):
            self._chain = tuple(expression.split("."))
        elif match := _PROJECTION.fullmatch(expression):
            outer, inner = match.group("outer"), match.group("inner")
            self._projection = (tuple(outer.split(".")) if outer else (), tuple(inner.split(".")) if inner else ())

    def search(self, document: Any) -> Any:
        if self._chain is not None:
            return _dig(document, self._chain)
        if self._projection is not None:
            outer, inner = self._projection
            items = _dig(document, outer)
            if not isinstance(items, list):
                return None
            found = (_dig(item, inner) for item in items) if inner else iter(items)
            return [value for value in found if value is not None]
        return self._compiled.search(document)

    def search_each(self, documents: list[Any]) -> list[Any]:
        """``search`` applied to every document (one per JSON line)."""
        if self._chain is not None and len(self._chain) == 1:
            key = self._chain[0]
            return [doc.get(key) if isinstance(doc, dict) else None for doc in documents]
        return [self.search(doc) for doc in documents]
