"""Asymmetric Shapley values of a forecast (Frye, Rowat and Feige, NeurIPS 2020), per time-series item.

Symmetric Shapley values average a player's marginal contribution over every order in which the
players can join. Asymmetric Shapley values average only over the orders that respect a causal
ordering; for a forecast that ordering is time. Here the players join in *blocks*:

* the static covariates first (one block, symmetric among themselves: they hold before any time step),
* then one block per timestamp, in the ``direction``'s order: earliest first (``chronological``),
  latest first (``anti_chronological``), or both, averaged (``bidirectional``).

With ``granularity="timewise"`` a timestamp's block is one player (every series at that time); with
``"fine_grained"`` each series at each timestamp is a player, symmetric within its timestamp. Every
player of a block joins after all earlier blocks and before all later ones, so its value is the
ordinary Shapley value of the block's own game with the earlier blocks present. That game is solved
exactly from all its coalitions when that is cheap (always for one-player blocks: then the value is the
change in the forecast when the timestamp joins), else from ``num_samples`` random orders of the block.

The result is a fixed linear map from coalition forecasts to values (``AsymmetricPlan``): it depends
only on the item's shape, is built once per shape, and is the same for a batch job and one online
request. Values add up exactly: the scores of all players sum to forecast(item) - forecast(baseline),
and ``offset`` is forecast(baseline) (spec 4.6).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from analyzer.data.time_series import TimeSeriesItem
from analyzer.errors import UserError

CHRONOLOGICAL, ANTI_CHRONOLOGICAL, BIDIRECTIONAL = "chronological", "anti_chronological", "bidirectional"
DIRECTIONS = (CHRONOLOGICAL, ANTI_CHRONOLOGICAL, BIDIRECTIONAL)
TIMEWISE, FINE_GRAINED = "timewise", "fine_grained"
GRANULARITIES = (TIMEWISE, FINE_GRAINED)
ZERO, MEAN = "zero", "mean"
# The model's view of one item: these are the record_template placeholders ($start_time, ...).
RECORD_FIELDS = ("start_time", "target_time_series", "related_time_series", "static_covariates")
EXACT_BLOCK_LIMIT = 12  # a block of at most this many players is solved from all its coalitions ...
DEFAULT_BLOCK_SAMPLES = 1000  # ... a larger one (many static covariates) from this many random orders

Forecast = Callable[[pd.DataFrame], np.ndarray]  # records (RECORD_FIELDS columns) -> (n, horizon) forecasts


@dataclass(frozen=True)
class TimeSeriesBaseline:
    """What replaces a value that is out of the coalition: ``"zero"`` or the item's own series ``"mean"``
    for the temporal values, and per item id the static covariates' values."""

    target_time_series: str = ZERO
    related_time_series: str = ZERO
    static_covariates: dict[str, list[Any]] | None = None

    def for_item(self, item: TimeSeriesItem) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """(target (T,), related (R, T), static (S)) baseline values of ``item``."""
        target = _fill(item.target[None, :], self.target_time_series)[0]
        related = _fill(item.related, self.related_time_series)
        static: list[Any] = []
        if item.static:
            values = (self.static_covariates or {}).get(str(item.item_id))
            if values is None:
                raise UserError(f"methods.asymmetric_shapley_value.baseline.static_covariates has no entry for item "
                                f"{item.item_id!r}: the baseline of every item's static covariates is required")
            if len(values) != len(item.static):
                raise UserError(f"methods.asymmetric_shapley_value.baseline.static_covariates.{item.item_id}: "
                                f"{len(values)} values for {len(item.static)} static covariates")
            static = list(values)
        return target, related, static


def _fill(series: np.ndarray, how: str) -> np.ndarray:
    if how == ZERO:
        return np.zeros_like(series)
    if how != MEAN:
        raise ValueError(f"unknown temporal baseline {how!r}")
    observed = np.isfinite(series)
    counts = observed.sum(axis=1, keepdims=True)
    sums = np.where(observed, series, 0.0).sum(axis=1, keepdims=True)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)  # all missing: 0
    return np.broadcast_to(means, series.shape).copy()


@dataclass(frozen=True)
class Player:
    """A group of values that joins the coalition together: ``units`` index the item's values laid out as
    target (T), related series by series (R x T), then static covariates (S)."""

    feature_name: str
    timestamp_index: int | None  # None: a static covariate
    units: tuple[int, ...]


@dataclass(frozen=True)
class AsymmetricPlan:
    """For one item shape: the players, the coalitions to forecast (rows of ``masks``) and the linear map
    from their forecasts to the players' values (``values = weights @ forecasts``)."""

    players: tuple[Player, ...]
    masks: np.ndarray  # (n_coalitions, n_units) bool; row 0 is the empty coalition, row 1 the full one
    weights: np.ndarray  # (n_players, n_coalitions) float64

    def values(self, forecasts: np.ndarray) -> np.ndarray:
        """(n_players, horizon) values from the (n_coalitions, horizon) forecasts of ``masks``."""
        return self.weights @ forecasts


def build_plan(n_steps: int, series_names: Sequence[str], static_names: Sequence[str], *, direction: str,
               granularity: str, num_samples: int | None = None, seed: int = 0) -> AsymmetricPlan:
    """The plan for items with ``n_steps`` timestamps, ``series_names`` (target first, then the related
    series) and ``static_names``. ``num_samples``: random orders per block when solving a block exactly
    would need more forecasts than they do (docs/time-series.md)."""
    if direction not in DIRECTIONS:
        raise UserError(f"methods.asymmetric_shapley_value.direction must be one of {', '.join(DIRECTIONS)}, "
                        f"got {direction!r}")
    if granularity not in GRANULARITIES:
        raise UserError(f"methods.asymmetric_shapley_value.granularity must be one of {', '.join(GRANULARITIES)}, "
                        f"got {granularity!r}")
    if granularity == FINE_GRAINED and direction != CHRONOLOGICAL:
        raise UserError(f"methods.asymmetric_shapley_value: {direction} and {granularity} granularity are not "
                        "supported together.")
    return _plan(n_steps, tuple(series_names), tuple(static_names), direction, granularity, num_samples, seed)


@lru_cache(maxsize=64)
def _plan(n_steps: int, series: tuple[str, ...], statics: tuple[str, ...], direction: str, granularity: str,
          num_samples: int | None, seed: int) -> AsymmetricPlan:
    k = len(series)
    n_units = k * n_steps + len(statics)
    players: list[Player] = []
    if granularity == TIMEWISE:
        name = "+".join(series)
        steps = [len(players) + t for t in range(n_steps)]
        players += [Player(name, t, tuple(s * n_steps + t for s in range(k))) for t in range(n_steps)]
        temporal_blocks = [[steps[t]] for t in range(n_steps)]
    else:
        index = {}
        for s, name in enumerate(series):  # output order: series by series, each in time order
            for t in range(n_steps):
                index[s, t] = len(players)
                players.append(Player(name, t, (s * n_steps + t,)))
        temporal_blocks = [[index[s, t] for s in range(k)] for t in range(n_steps)]
    static_block = []
    for j, name in enumerate(statics):
        static_block.append(len(players))
        players.append(Player(name, None, (k * n_steps + j,)))

    orders = {CHRONOLOGICAL: [temporal_blocks], ANTI_CHRONOLOGICAL: [temporal_blocks[::-1]],
              BIDIRECTIONAL: [temporal_blocks, temporal_blocks[::-1]]}[direction]
    coalitions: dict[bytes, int] = {}
    masks: list[np.ndarray] = []

    def coalition(members: frozenset[int]) -> int:
        mask = np.zeros(n_units, dtype=bool)
        for p in members:
            mask[list(players[p].units)] = True
        key = np.packbits(mask).tobytes()
        if key not in coalitions:
            coalitions[key] = len(masks)
            masks.append(mask)
        return coalitions[key]

    coalition(frozenset())
    coalition(frozenset(range(len(players))))
    terms: list[tuple[int, float, int, int]] = []  # (player, weight, coalition with it, coalition without)
    rng = np.random.default_rng(seed)
    for blocks in orders:
        share = 1.0 / len(orders)
        prefix: frozenset[int] = frozenset()
        for block in ([static_block] if static_block else []) + blocks:
            for player, weight, with_, without in _block_terms(block, num_samples, rng):
                terms.append((player, share * weight, coalition(prefix | with_), coalition(prefix | without)))
            prefix |= frozenset(block)
    weights = np.zeros((len(players), len(masks)))
    for player, weight, with_index, without_index in terms:
        weights[player, with_index] += weight
        weights[player, without_index] -= weight
    return AsymmetricPlan(tuple(players), np.array(masks), weights)


def _block_terms(block: list[int], num_samples: int | None, rng: np.random.Generator):
    """Shapley value terms of a block's own game: (player, weight, members with, members without)."""
    b = len(block)
    samples = num_samples if num_samples is not None else (DEFAULT_BLOCK_SAMPLES if b > EXACT_BLOCK_LIMIT else None)
    if samples is None or 2**b <= samples * b:  # every coalition of the block: exact, and no dearer
        for size in range(b):
            weight = math.factorial(size) * math.factorial(b - size - 1) / math.factorial(b)
            for members in combinations(block, size):
                before = frozenset(members)
                for player in block:
                    if player not in before:
                        yield player, weight, before | {player}, before
        return
    for _ in range(samples):
        before: frozenset[int] = frozenset()
        for position in rng.permutation(b):
            player = block[position]
            yield player, 1.0 / samples, before | {player}, before
            before = before | {player}


_ROW = re.compile(r"\b(?:on the record at|for) row (\d+)\b")


def describe_record(items: Sequence[TimeSeriesItem], sizes: np.ndarray, row: int) -> str | None:
    """Which item and which of its requests is record ``row`` of one ``forecast`` call (records item by item,
    ``sizes`` their cumulative counts; each item's coalition 0 is the baseline, 1 its own history)."""
    if not 0 <= row < sizes[-1]:
        return None
    i = int(np.searchsorted(sizes, row, side="right")) - 1
    local, count = row - int(sizes[i]), int(sizes[i + 1] - sizes[i])
    if local == 1:
        which = "its own forecast (the full history, no value replaced)"
    elif local == 0:
        which = "the baseline forecast (every value replaced by the baseline)"
    else:
        which = f"coalition {local} of {count} (values outside it replaced by the baseline)"
    return f"item {items[i].item_id!r}, {which}"


def _named_record(error: UserError, items: Sequence[TimeSeriesItem], sizes: np.ndarray) -> UserError:
    """``error`` with the record it names by its row in the call (``row 7``) named by item and request."""
    row = getattr(error, "row", None)
    message = str(error)
    match = _ROW.search(message)
    if row is None and match is not None:
        row = int(match.group(1))
    described = None if row is None else describe_record(items, sizes, int(row))
    if described is None:
        return error
    if match is not None:
        verb = "on" if match.group(0).startswith("on") else "for"
        message = message[:match.start()] + f"{verb} {described}" + message[match.end():]
    else:
        message = f"{described}: {message}"
    try:
        renamed = type(error)(message)
    except TypeError:
        renamed = UserError(message)
    for key, value in vars(error).items():  # e.g. ModelError's row and reason
        setattr(renamed, key, value)
    return renamed


@dataclass
class ItemExplanation:
    """One line of ``out.jsonl`` (spec 4.6): ``offset`` is the baseline's forecast, ``explanations`` one
    entry per player with its ``scores`` per forecast step."""

    item_id: Any
    offset: list[float]
    explanations: list[dict[str, Any]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "offset": self.offset, "explanations": self.explanations}


@dataclass(frozen=True)
class AsymmetricShapleyExplainer:
    """Explains forecasts of time-series items; holds only its parameters (the same explainer serves a
    batch job and online requests). ``explain`` takes the items and a ``Forecast`` callable."""

    direction: str = CHRONOLOGICAL
    granularity: str = TIMEWISE
    num_samples: int | None = None
    baseline: TimeSeriesBaseline = field(default_factory=TimeSeriesBaseline)
    seed: int = 0

    def plan(self, item: TimeSeriesItem, series_names: Sequence[str], static_names: Sequence[str]) -> AsymmetricPlan:
        if len(series_names) != 1 + item.related.shape[0] or len(static_names) != len(item.static):
            raise ValueError("series_names / static_names do not match the item")
        return build_plan(len(item), series_names, static_names, direction=self.direction,
                          granularity=self.granularity, num_samples=self.num_samples, seed=self.seed)

    def records(self, item: TimeSeriesItem, plan: AsymmetricPlan) -> pd.DataFrame:
        """The model's records for every coalition of ``plan``: values out of the coalition replaced by
        the baseline's (RECORD_FIELDS columns)."""
        target_base, related_base, static_base = self.baseline.for_item(item)
        n_steps, n_related = len(item), item.related.shape[0]
        actual = np.concatenate([item.target, item.related.ravel()])
        base = np.concatenate([target_base, related_base.ravel()])
        temporal = np.where(plan.masks[:, :actual.size], actual, base)  # (n_coalitions, (1 + R) * T)
        static_masks = plan.masks[:, actual.size:]
        n = len(plan.masks)
        targets = [row[:n_steps].tolist() for row in temporal]
        related = [row[n_steps:].reshape(n_related, n_steps).tolist() for row in temporal]
        statics = [[x if keep else b for x, b, keep in zip(item.static, static_base, row, strict=True)]
                   for row in static_masks]
        return pd.DataFrame({"start_time": [item.timestamps[0]] * n, "target_time_series": targets,
                             "related_time_series": related, "static_covariates": statics}, columns=RECORD_FIELDS)

    def explain(self, items: Sequence[TimeSeriesItem], forecast: Forecast, series_names: Sequence[str],
                static_names: Sequence[str]) -> list[ItemExplanation]:
        """Explanations of ``items``, with one ``forecast`` call for all their coalitions."""
        plans = [self.plan(item, series_names, static_names) for item in items]
        frames = [self.records(item, plan) for item, plan in zip(items, plans, strict=True)]
        if not frames:
            return []
        sizes = np.cumsum([0, *(len(plan.masks) for plan in plans)])
        try:
            forecasts = np.asarray(forecast(pd.concat(frames, ignore_index=True)), dtype=np.float64)
        except UserError as error:
            raise _named_record(error, items, sizes) from None
        if forecasts.ndim != 2 or forecasts.shape[0] != sizes[-1]:
            raise ValueError(f"forecast returned shape {forecasts.shape} for {sizes[-1]} records")
        return [self._explanation(item, plan, forecasts[sizes[i]:sizes[i + 1]])
                for i, (item, plan) in enumerate(zip(items, plans, strict=True))]

    def _explanation(self, item: TimeSeriesItem, plan: AsymmetricPlan, forecasts: np.ndarray) -> ItemExplanation:
        values = plan.values(forecasts)
        result = ItemExplanation(item.item_id, forecasts[0].tolist())
        for player, scores in zip(plan.players, values, strict=True):
            stamp = None if player.timestamp_index is None else item.timestamps[player.timestamp_index]
            result.explanations.append({"feature_name": player.feature_name, "timestamp": stamp,
                                        "scores": scores.tolist()})
        return result
