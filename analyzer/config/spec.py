"""A small declarative validator for JSON documents, the building block of the config schema.

Why not ``jsonschema`` or ``schema``: Lucent must report *every* problem at once, each one naming its
key path (``facet[1].name_or_index``) in plain words, suggest the closest key for typos, and
normalise values on the way (enum case, language codes, ``"all"``). The whole Clarify schema is then a
table of these specs (``analyzer.config.schema``), not hundreds of if statements.

Each ``Spec.check(value, path, ctx)`` returns the normalised value, or ``INVALID`` after recording
problems in ``ctx``; ``Spec.build(normalised)`` turns a normalised value into the typed model.
JSON ``null`` for an optional object key means "absent" (old SDK versions wrote ``"seed": null``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class _Invalid:
    """Marker left in the normalised tree where a value failed validation (so rules can skip it)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

# JSON type name -> test. bool is excluded from numbers on purpose: True is not an int in a config.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ARTICLE = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
            "null": "null", "object": "an object", "array": "a list"}


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, as users see it in their file."""
    for kind in ("boolean", "integer", "number", "string", "null", "object", "array"):
        if _KINDS[kind](value):
            return kind
    return type(value).__name__


def shown(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for error messages."""
    if isinstance(value, int) and value.bit_length() > 200:  # str() of a huge int is slow, or refused
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = object.__repr__(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages quoting what a file or a model gave
    (a field, a value, an output) that may be any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo most likely meant (case-insensitive first), or None."""
    candidates = list(candidates)
    for candidate in candidates:
        if candidate.lower() == word.lower():
            return candidate
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


@dataclass
class Context:
    """Collects problems during one validation pass.

    ``key_homes`` maps a key name to the paths where the schema allows it, so that a known key
    in the wrong object (``predictor.probability_threshold``) can be pointed to its right place.
    """

    problems: list[str] = field(default_factory=list)
    key_homes: Mapping[str, list[str]] = field(default_factory=dict)

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(top level)'}: {message}")

    def unknown_key(self, path: str, key: str, known: Iterable[str]) -> None:
        known = list(known)
        message = "unknown key"
        guess = closest(key, known)
        if key in self.key_homes:  # right key, wrong object: say where it belongs
            homes = ", ".join(home or "the top level" for home in self.key_homes[key])
            message += f"; {key!r} belongs at {homes}"
        elif guess is not None:
            message += f"; did you mean {guess!r}?"
        elif known:
            message += f" (known keys here: {', '.join(known)})"
        self.add(path, message)


class Spec:
    """One node of the schema. Subclasses override ``check`` and, if they build models, ``build``."""

    #: JSON types the spec can accept at its top level (used by ``Either`` to pick an alternative).
    kinds: frozenset[str] = frozenset(_KINDS)

    def describe(self) -> str:
        return " or ".join(_ARTICLE[k] for k in sorted(self.kinds))

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        raise NotImplementedError

    def build(self, value: Any) -> Any:
        return value

    def _wrong_type(self, value: Any, path: str, ctx: Context) -> Any:
        ctx.add(path, f"expected {self.describe()}, got {shown(value)} ({json_type(value)})")
        return INVALID


@dataclass(frozen=True)
class Typed(Spec):
    """A scalar of one of the given JSON types, optionally bounded (bounds apply to numbers)."""

    types: tuple[str, ...]
    minimum: float | None = None
    maximum: float | None = None
    as_float: bool = False  # store numbers as float (JSON ``1`` for a threshold means 1.0)

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        # An integer is also a JSON number; Either must see both.
        return frozenset(self.types) | ({"integer"} if "number" in self.types else set())

    def describe(self) -> str:
        return " or ".join(_ARTICLE[t] for t in self.types)

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not any(_KINDS[t](value) for t in self.types):
            return self._wrong_type(value, path, ctx)
        if _KINDS["number"](value):
            if isinstance(value, float) and not math.isfinite(value):
                ctx.add(path, f"must be a finite number, got {shown(value)}")
                return INVALID
            if self.minimum is not None and value < self.minimum:
                ctx.add(path, f"must be >= {_bound(self.minimum)}, got {shown(value)}")
                return INVALID
            if self.maximum is not None and value > self.maximum:
                ctx.add(path, f"must be <= {_bound(self.maximum)}, got {shown(value)}")
                return INVALID
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                # numpy, pandas and Arrow hold integers in 64 bits; bigger ones would overflow there.
                ctx.add(path, f"is out of range: integers must fit in 64 bits ({INT64_MIN} to {INT64_MAX}), "
                              f"got {shown(value)}")
                return INVALID
            if self.as_float:
                return float(value)
        return value


@dataclass(frozen=True)
class Enum(Spec):
    """A string among ``values``, stored as its canonical spelling.

    Compared case-insensitively by default, as the SDK schema does (``Use(str.lower)``); metric
    names are exact (``case_sensitive``), as smclarify matches them. ``aliases`` maps other accepted
    spellings (lower case) to a canonical value.
    """

    values: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    case_sensitive: bool = False
    kinds = frozenset({"string"})

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        fold = (lambda s: s) if self.case_sensitive else str.lower
        lookup = {fold(v): v for v in self.values} | dict(self.aliases)
        canonical = lookup.get(fold(value))
        if canonical is not None:
            return canonical
        message = f"{value!r} is not one of {', '.join(self.values)}"
        if len(self.values) > 25:  # long vocabularies (languages): suggest instead of listing
            message = f"{value!r} is not one of the {len(self.values)} accepted values"
        guess = closest(value, list(lookup))
        if guess is not None:
            message += f"; did you mean {guess!r}?"
        ctx.add(path, message)
        return INVALID


@dataclass(frozen=True)
class Checked(Spec):
    """``inner``, then ``problem(value)``: a message for the value's path, or None when it is fine (for
    messages that depend on why the value is wrong, such as a parser's error; else use ``Where``)."""

    inner: Spec
    problem: Callable[[Any], str | None]

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.kinds

    def describe(self) -> str:
        return self.inner.describe()

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        value = self.inner.check(value, path, ctx)
        if value is INVALID:
            return INVALID
        message = self.problem(value)
        if message is None:
            return value
        ctx.add(path, message)
        return INVALID


@dataclass(frozen=True)
class Where(Spec):
    """``inner`` plus extra conditions: ``(predicate, message)`` pairs; ``{value!r}`` in a message
    is replaced by the offending value. Conditions run only when ``inner`` accepted the value."""

    inner: Spec
    conditions: tuple[tuple[Callable[[Any], bool], str], ...]

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.kinds

    def describe(self) -> str:
        return self.inner.describe()

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        value = self.inner.check(value, path, ctx)
        if value is INVALID:
            return INVALID
        for predicate, message in self.conditions:
            if not predicate(value):
                ctx.add(path, message.format(value=value))
                return INVALID
        return value

    def build(self, value: Any) -> Any:
        return self.inner.build(value)


@dataclass(frozen=True)
class Then(Spec):
    """``inner`` followed by a normalising function (e.g. expand ``"all"`` into metric names)."""

    inner: Spec
    transform: Callable[[Any], Any]

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.kinds

    def describe(self) -> str:
        return self.inner.describe()

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        value = self.inner.check(value, path, ctx)
        return INVALID if value is INVALID else self.transform(value)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_items: int = 0
    kinds = frozenset({"array"})

    def describe(self) -> str:
        return "a list"

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, list):
            return self._wrong_type(value, path, ctx)
        if len(value) < self.min_items:
            ctx.add(path, f"must have at least {self.min_items} item{'s' * (self.min_items > 1)}")
            return INVALID
        checked = [self.item.check(v, item(path, i), ctx) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in checked) else checked

    def build(self, value: Any) -> Any:
        return [self.item.build(v) for v in value]


@dataclass(frozen=True)
class MapOf(Spec):
    """A JSON object with free keys (e.g. item ids) whose values all follow ``values``."""

    values: Spec
    kinds = frozenset({"object"})

    def describe(self) -> str:
        return "an object"

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            return self._wrong_type(value, path, ctx)
        checked = {k: self.values.check(v, child(path, k), ctx) for k, v in value.items()}
        return INVALID if any(v is INVALID for v in checked.values()) else checked


@dataclass(frozen=True)
class Obj(Spec):
    """A JSON object with a fixed set of keys. Unknown keys are errors (Clarify rejects them too).

    ``model`` (a dataclass whose field names are the JSON keys) is what ``build`` returns; keys
    absent from the JSON take the dataclass defaults.
    """

    fields: Mapping[str, Spec]
    required: tuple[str, ...] = ()
    model: type | None = None
    kinds = frozenset({"object"})

    def describe(self) -> str:
        return "an object"

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            return self._wrong_type(value, path, ctx)
        out: dict[str, Any] = {}
        for key, raw in value.items():
            spec = self.fields.get(key)
            if spec is None:
                ctx.unknown_key(child(path, key), key, self.fields)
                continue
            if raw is None:
                if key in self.required:
                    ctx.add(child(path, key), "required key is null")
                    out[key] = INVALID
                continue
            out[key] = spec.check(raw, child(path, key), ctx)
        for key in self.required:
            if key not in value:
                ctx.add(child(path, key), "required key missing")
                out[key] = INVALID
        return out

    def build(self, value: Any) -> Any:
        built = {k: self.fields[k].build(v) for k, v in value.items()}
        return self.model(**built) if self.model is not None else built

    def key_homes(self, path: str = "") -> dict[str, list[str]]:
        """Every key of this object tree -> the paths of the objects that accept it."""
        homes: dict[str, list[str]] = {}
        for key, spec in self.fields.items():
            homes.setdefault(key, []).append(path)
            for nested_key, nested_paths in _nested_objects(spec, child(path, key)):
                homes.setdefault(nested_key, []).extend(nested_paths)
        return homes


def _nested_objects(spec: Spec, path: str) -> Iterable[tuple[str, list[str]]]:
    while isinstance(spec, Where | Then):
        spec = spec.inner
    if isinstance(spec, Obj):
        yield from spec.key_homes(path).items()
    elif isinstance(spec, ListOf):
        yield from _nested_objects(spec.item, f"{path}[]")
    elif isinstance(spec, Either):
        for alternative in spec.alternatives:
            yield from _nested_objects(alternative, path)


@dataclass(frozen=True)
class Either(Spec):
    """The first alternative that accepts the value.

    Only alternatives that take the value's JSON type are tried; if all of them fail, the problems
    of the first one are reported (with one candidate, they are the most specific there are).
    """

    alternatives: tuple[Spec, ...]

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(a.kinds for a in self.alternatives))

    def describe(self) -> str:
        return " or ".join(a.describe() for a in self.alternatives)

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        candidates = [a for a in self.alternatives if json_type(value) in a.kinds]
        if not candidates:
            return self._wrong_type(value, path, ctx)
        first_problems: list[str] = []
        for alternative in candidates:
            trial = Context(key_homes=ctx.key_homes)
            checked = alternative.check(value, path, trial)
            if not trial.problems:
                return checked
            first_problems = first_problems or trial.problems
        ctx.problems.extend(first_problems)
        return INVALID


ANY = Typed(tuple(_KINDS))


def _bound(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"

