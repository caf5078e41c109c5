"""Coalition designs for Kernel SHAP: which feature subsets to evaluate and with what weight.

One design is drawn per job (from ``M``, ``num_samples`` and ``seed``) and shared by every record, so
results never depend on how records are split into batches or workers, and the weighted least-squares
system is factorised once.

Coalitions are grouped into *strata*: a stratum holds the coalitions of size ``s`` together with their
complements (size ``M - s``); for ``s = M / 2`` a stratum holds complementary pairs of equal size. The
sampling unit is a complementary pair, so every coalition in the design has its complement in the design
("paired" or antithetic sampling). The budget is spread over strata in proportion to their Shapley-kernel
mass; a stratum whose share covers all its pairs is enumerated completely (this is the "border" enumeration
of the smallest and largest sizes in the Kernel SHAP paper and in ``shap.KernelExplainer``), the others get
a simple random sample of pairs *without replacement*, weighted by the Horvitz-Thompson factor
``pairs in stratum / pairs drawn``. That makes the weighted normal equations unbiased for the exact ones,
keeps every evaluated coalition distinct, and gives the stratified-sampling variance used for standard
errors (``kernel_shap.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from math import comb

import numpy as np

__all__ = ["MIN_NUM_SAMPLES", "CoalitionDesign", "Stratum", "default_num_samples", "design_coalitions", "make_design"]

# The smallest budget a design can use: one complementary pair (the sampling unit). A configured
# ``num_samples`` below it (1) is raised to it (the job logs that): Clarify accepts any positive count.
MIN_NUM_SAMPLES = 2


def default_num_samples(n_features: int) -> int:
    """Clarify's documented default budget: ``min(2 * M + 2048, 2**M - 2)`` coalitions."""
    return min(2 * n_features + 2048, 2**n_features - 2)


def design_coalitions(n_features: int, num_samples: int | None) -> int:
    """Coalitions ``make_design`` evaluates for ``n_features`` players and this budget: complementary pairs
    (an odd budget loses one, a budget below ``MIN_NUM_SAMPLES`` is raised to it), capped at all
    ``2**M - 2`` (none for one feature: its value is ``f(x) - E`` without any coalition)."""
    budget = default_num_samples(n_features) if num_samples is None else max(int(num_samples), MIN_NUM_SAMPLES)
    return min(2 * (budget // 2), 2**n_features - 2)


@dataclass(frozen=True)
class Stratum:
    """One sampled (not fully enumerated) stratum: rows ``start .. start + 2 * units`` of the design.

    Rows come in complementary pairs (``start + 2u``, ``start + 2u + 1``); ``population`` is the number of
    distinct pairs the stratum holds, ``units`` how many were drawn.
    """

    size: int
    start: int
    units: int
    population: int

    @property
    def stop(self) -> int:
        return self.start + 2 * self.units


@dataclass(frozen=True)
class CoalitionDesign:
    """Coalition masks and regression weights shared by all records.

    ``masks[c, j]`` is True when feature ``j`` takes the record's value in coalition ``c`` (False: the
    baseline's). The empty and the full coalition are never included: they enter as the efficiency
    constraint. ``weights`` sum to 1. ``sampled`` lists the strata that were sampled; it is empty exactly
    when ``exact`` (every proper coalition enumerated with its Shapley-kernel weight).
    """

    masks: np.ndarray
    weights: np.ndarray
    sampled: tuple[Stratum, ...]

    @property
    def n_features(self) -> int:
        return self.masks.shape[1]

    @property
    def exact(self) -> bool:
        return not self.sampled

    def sampling_variance(self, unit_effects: np.ndarray, axis: int = 0, *,
                          overwrite_input: bool = False) -> np.ndarray:
        """Variance of an estimate that is a sum of per-pair effects (``axis``: sampled pairs, strata order).

        Stratified simple random sampling without replacement: per stratum
        ``(1 - m/N) * m / (m - 1) * sum_u (d_u - mean d)^2`` with ``d_u`` already carrying the
        Horvitz-Thompson weight ``N/m``. NaN where a stratum has a single drawn pair. Computed along the
        last axis (the pairs of a stratum contiguous): one ``reduceat`` for the means, then the weighted sum
        of squares as one matrix-vector product, so that an online request pays a few array operations.
        ``overwrite_input``: ``unit_effects`` may be used as the workspace (the caller's scratch array: an
        online request then allocates little).
        """
        axis = axis % unit_effects.ndim
        shape = unit_effects.shape[:axis] + unit_effects.shape[axis + 1:]
        if not self.sampled:
            return np.zeros(shape)
        units, starts, factor = self._strata_arrays
        effects = unit_effects if axis == unit_effects.ndim - 1 else np.moveaxis(unit_effects, axis, -1)
        means = np.add.reduceat(effects, starts, axis=-1)
        means /= units
        centred = np.subtract(effects, np.repeat(means, units, axis=-1), out=effects if overwrite_input else None)
        np.multiply(centred, centred, out=centred)
        return np.matmul(centred.reshape(-1, len(factor)), factor).reshape(shape)

    @cached_property
    def _strata_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sampled stratum: pairs drawn and first pair's index; per sampled pair: its stratum's
        ``(1 - m/N) m / (m - 1)`` (NaN for m < 2)."""
        units = np.array([s.units for s in self.sampled], dtype=np.intp)
        starts = np.concatenate([[0], np.cumsum(units)[:-1]]).astype(np.intp)
        return units, starts, np.repeat(self.stratum_factors, units)

    @cached_property
    def stratum_factors(self) -> np.ndarray:
        """Per sampled stratum, the factor of its sum of squares in ``sampling_variance``:
        ``(1 - m/N) m / (m - 1)``, NaN when a single pair was drawn (no variance estimate)."""
        return np.array([(1.0 - s.units / s.population) * s.units / (s.units - 1) if s.units >= 2 else np.nan
                         for s in self.sampled])


def make_design(n_features: int, num_samples: int | None = None, seed: int | None = None) -> CoalitionDesign:
    """Build the coalition design for ``n_features`` players and a budget of ``num_samples`` coalitions.

    Exact enumeration when all ``2**M - 2`` proper coalitions fit in the budget; otherwise at most
    ``num_samples`` distinct coalitions (rounded down to an even number: pairs), deterministic for a given
    ``seed`` (``None``: fresh OS entropy). A budget of 1 is raised to ``MIN_NUM_SAMPLES`` (one pair): no
    pair at all would leave every value to the minimum-norm guess ``delta / M``. One feature needs no
    coalition (an empty design; the efficiency constraint alone gives its exact value).
    """
    if n_features < 1:
        raise ValueError(f"Kernel SHAP needs at least one feature to explain, got {n_features}")
    if num_samples is None:
        num_samples = default_num_samples(n_features)  # 0 for a single feature: nothing to sample
    elif isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    m = n_features
    rng = np.random.default_rng(seed)

    sizes = list(range(1, m // 2 + 1))
    # Pairs per stratum (exact integers, astronomically large for long texts) and the stratum's total
    # Shapley-kernel mass, in closed form: the kernel weight (M-1) / (C(M,s) s (M-s)) of one coalition
    # times the C(M,s) coalitions of size s, plus as many of size M-s when that is a different size.
    population = [comb(m, s) if 2 * s < m else comb(m, s) // 2 for s in sizes]
    mass = [(2 if 2 * s < m else 1) * (m - 1) / (s * (m - s)) for s in sizes]
    units = _allocate(population, mass, max(int(num_samples), MIN_NUM_SAMPLES) // 2)

    blocks: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    sampled: list[Stratum] = []
    start = 0
    for s, pop, stratum_mass, u in zip(sizes, population, mass, units, strict=True):
        if u == 0:
            continue
        half = _enumerate(m, s) if u == pop else _sample(m, s, u, pop, rng)
        pairs = np.empty((2 * len(half), m), dtype=bool)
        pairs[0::2], pairs[1::2] = half, ~half
        blocks.append(pairs)
        # Horvitz-Thompson: each drawn pair stands for pop / u pairs of the stratum, so each of its two
        # coalitions carries kernel weight x pop / u = stratum mass / (2u).
        weights.append(np.full(len(pairs), stratum_mass / (2 * u)))
        if u < pop:
            sampled.append(Stratum(size=s, start=start, units=u, population=pop))
        start += len(pairs)

    masks = np.concatenate(blocks) if blocks else np.zeros((0, m), dtype=bool)
    w = np.concatenate(weights) if weights else np.zeros(0)
    return CoalitionDesign(masks=masks, weights=w / w.sum() if w.size else w, sampled=tuple(sampled))


def _allocate(population: list[int], mass: list[float], budget: int) -> list[int]:
    """Pairs to draw per stratum: proportional to kernel mass, capped at the stratum's population.

    Water-filling: strata whose proportional share reaches their population are enumerated and the rest
    of the budget is re-spread. Per-pair mass falls towards the middle sizes, so enumeration proceeds from
    the smallest/largest sizes inwards. Every sampled stratum gets at least 2 pairs when the budget allows,
    so that its variance (hence the standard errors) can be estimated.
    """
    n = len(population)
    units = [0] * n
    open_ = set(range(n))
    left = budget
    while open_:
        total = sum(mass[h] for h in open_)
        full = [h for h in open_ if left * mass[h] / total >= population[h]]
        if not full:
            break
        for h in full:
            units[h] = population[h]
            left -= population[h]
            open_.remove(h)
    if open_ and left > 0:
        order = sorted(open_)
        open_mass = np.array([mass[h] for h in order])
        share = left * open_mass / open_mass.sum()
        take = np.floor(share).astype(int)
        # Largest remainders get the leftover pairs (ties: smaller size first, deterministic).
        for i in np.argsort(-(share - take), kind="stable")[: left - take.sum()]:
            take[i] += 1
        # Move pairs from the richest strata to those with fewer than 2 (variance needs 2 per stratum).
        for i in range(len(order)):
            while take[i] < min(2, population[order[i]]) and take.max() > 2:
                take[int(np.argmax(take))] -= 1
                take[i] += 1
        for h, t in zip(order, take, strict=True):
            units[h] = int(min(t, population[h]))
    return units


def _enumerate(m: int, s: int) -> np.ndarray:
    """All subsets of size ``s`` (for ``2s = M``: those containing feature 0, one per complementary pair)."""
    if 2 * s == m:
        combos = [(0, *(c + 1 for c in rest)) for rest in itertools.combinations(range(m - 1), s - 1)]
    else:
        combos = list(itertools.combinations(range(m), s))
    out = np.zeros((len(combos), m), dtype=bool)
    out[np.repeat(np.arange(len(combos)), s), np.asarray(combos, dtype=np.intp).ravel()] = True
    return out


def _sample(m: int, s: int, units: int, population: int, rng: np.random.Generator) -> np.ndarray:
    """``units`` distinct pairs of the size-``s`` stratum, uniformly without replacement, in draw order."""
    if 2 * units > population:
        # Dense case (the stratum is small): draw indices of the enumeration instead of rejecting.
        pick = np.sort(rng.choice(population, size=units, replace=False))
        return _enumerate(m, s)[pick]
    seen: set[bytes] = set()
    rows: list[np.ndarray] = []
    while len(rows) < units:
        batch = max(16, 2 * (units - len(rows)))
        order = np.argsort(rng.random((batch, m)), axis=1)[:, :s]
        cand = np.zeros((batch, m), dtype=bool)
        np.put_along_axis(cand, order, True, axis=1)
        if 2 * s == m:
            # Canonical representative of the pair {S, complement}: the one holding feature 0.
            cand[~cand[:, 0]] ^= True
        for row in cand:
            key = np.packbits(row).tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
                if len(rows) == units:
                    break
    return np.array(rows)
