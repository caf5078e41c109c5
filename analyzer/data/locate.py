"""Locators: how the config names a column (header name or 0-based index), for every role.

One resolver serves the label, predicted label, facets, group variable, excluded columns and the
joinsource, so they all accept the same forms and fail with the same kind of message: Clarify's prefix
for the role (``Headers must contain label.``, ``Unable to locate the facet.``), then what was asked for,
where it was looked up, the available headers and the closest header name.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from analyzer.config.model import Locator
from analyzer.errors import DataError

# Clarify's error strings where it has one (spec 6.1); the same style for the roles it has none for.
_ROLE_PREFIX = {
    "label": "Headers must contain label.",
    "predicted_label": "Headers must contain predicted label.",
    "facet": "Unable to locate the facet.",
    "group_variable": "Unable to locate the group variable.",
    "excluded_columns": "Unable to locate the excluded column.",
    "joinsource_name_or_index": "Unable to locate the joinsource column.",
}


def locate_column(locator: Locator, headers: Sequence[str], *, role: str, source: str) -> str:
    """The header name that ``locator`` (a header name or a 0-based index into ``headers``) designates.

    ``role`` is the config key being resolved (a key of ``_ROLE_PREFIX``); ``source`` names the
    dataset for the error message.
    """
    prefix = _ROLE_PREFIX[role]
    if isinstance(locator, bool) or not isinstance(locator, int | str):
        raise DataError(f"{prefix} `{role}` must be a column name or a 0-based column index, got {locator!r}.")
    if isinstance(locator, int):
        if 0 <= locator < len(headers):
            return headers[locator]
        raise DataError(
            f"{prefix} `{role}` index {locator} is out of range: {source} has {len(headers)} columns "
            f"(valid indices 0..{len(headers) - 1}). Headers: {show_headers(headers)}."
        )
    if locator in headers:
        return locator
    raise DataError(
        f"{prefix} `{role}` {locator!r} is not a column of {source}. "
        f"Headers: {show_headers(headers)}.{suggest(locator, headers)}"
    )


def suggest(name: str, candidates: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate (case differences first), or ``""``."""
    folded = [c for c in candidates if c.casefold() == name.casefold()]
    close = folded or difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def show_headers(headers: Sequence[str], limit: int = 30) -> str:
    """``['a', 'b', ... (970 more)]``: a list of column names short enough for a message."""
    shown = ", ".join(repr(h) for h in headers[:limit])
    more = f", ... ({len(headers) - limit} more)" if len(headers) > limit else ""
    return f"[{shown}{more}]"


def check_distinct_headers(headers: Sequence[str], key: str = "headers") -> None:
    """``DataError`` when the config's ``key`` (``headers``, ``facet_headers``, ...) names a column twice: each
    column is then looked up by a name that two columns hold."""
    duplicated = sorted({h for h in headers if list(headers).count(h) > 1})
    if duplicated:
        raise DataError(f"`{key}` in the analysis config repeats {duplicated}; every column needs a distinct name.")

