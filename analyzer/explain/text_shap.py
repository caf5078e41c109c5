"""Kernel SHAP for records with text: every unit of a text column is a player, other columns one each.

Records have different numbers of players ``M`` (their texts have different lengths), so they are
grouped by ``M``: every record of a group shares one coalition design, drawn from ``(M, num_samples,
seed)`` alone, and one ``ShapSolver``. Results therefore do not depend on how records are split into
shards, and texts with at most 11 players are explained exactly, as tabular records are.

A synthetic row keeps the record's value for the players in the coalition and takes the baseline row's
value for the others; for a text column that means each masked unit is replaced by the baseline row's
string for that column (``<PAD>`` by default; an empty string drops the unit), with the text's spacing
kept (``text_units.masked_texts``). A record's values add up to ``f(record) - f(record with every unit
and feature masked)``: with text the fully masked record depends on the record (one replacement string
per unit), so this reference is evaluated per record; ``expected_value`` stays Clarify's mean score of
the baseline rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .design import make_design
from .kernel_shap import GROUP_ROWS, Model, ScoringModel, ShapSolver, baseline_expected_value
from .text_units import TextUnit, masked_texts

SOLVERS_KEPT = 32  # designs kept per explainer (by number of players)

__all__ = ["TextExplanation", "TextKernelShap", "player_counts"]

RecordUnits = Sequence[Sequence[TextUnit]]  # per text column of one record, its units


@dataclass
class TextExplanation:
    """SHAP values of ``n`` records whose numbers of players differ.

    Record ``i``'s players are rows ``offsets[i]:offsets[i + 1]`` of ``values`` and ``stderr``
    (``(players, k)``), in column order: one per non-text column, one per unit of a text column.
    """

    values: np.ndarray
    stderr: np.ndarray
    offsets: np.ndarray
    expected_value: np.ndarray
    reference: np.ndarray  # (n, k): link(score of the fully masked record)
    prediction: np.ndarray  # (n, k)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, stderr)`` of record ``i``, each ``(players, k)``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.values[a:b], self.stderr[a:b]

    def take(self, indices: Sequence[int] | np.ndarray) -> TextExplanation:
        """Records ``indices``, in that order: record ``j`` of the result is record ``indices[j]`` here."""
        picked = np.asarray(indices, dtype=np.intp)
        counts = np.diff(self.offsets)[picked]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(self.offsets.dtype, copy=False)
        rows = np.repeat(self.offsets[picked] - offsets[:-1], counts) + np.arange(offsets[-1])
        return TextExplanation(values=self.values[rows], stderr=self.stderr[rows], offsets=offsets,
                               expected_value=self.expected_value, reference=self.reference[picked],
                               prediction=self.prediction[picked])

    @classmethod
    def concat(cls, parts: Sequence[TextExplanation]) -> TextExplanation:
        if not parts:
            raise ValueError("nothing to concatenate")
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)])
        return cls(values=np.concatenate([p.values for p in parts]), stderr=np.concatenate([p.stderr for p in parts]),
                   offsets=offsets, expected_value=parts[0].expected_value,
                   reference=np.concatenate([p.reference for p in parts]),
                   prediction=np.concatenate([p.prediction for p in parts]))


def player_counts(units: Sequence[RecordUnits], n_columns: int) -> np.ndarray:
    """Players per record: the non-text columns plus every unit of every text column."""
    return np.array([n_columns - len(cols) + sum(len(u) for u in cols) for cols in units], dtype=int)


class TextKernelShap:
    """Kernel SHAP over text units (and the record's other columns) for a scoring callable.

    Args:
        model: ``model(rows: object ndarray (r, P)) -> ndarray (r,) or (r, k)``.
        baseline: ``(b, P)`` baseline rows; in a text column, the string that replaces a masked unit.
        text_columns: indices of the text columns among the ``P``.
        num_samples, seed, use_logit, max_rows_per_call: as for :class:`KernelShap`; the default budget
            ``min(2M + 2048, 2**M - 2)`` is taken per record, with ``M`` its number of players.
        baseline_scores: the model's scores of the baseline rows when already known (else the model is
            asked once). ``model`` may be None for an explainer that only assembles results.
    """

    def __init__(self, model: Model | None, baseline: np.ndarray, text_columns: Sequence[int], *,
                 num_samples: int | None = None, seed: int | None = None, use_logit: bool = False,
                 max_rows_per_call: int = 100_000, baseline_scores: np.ndarray | None = None):
        self.scorer = ScoringModel(model, use_logit=use_logit, max_rows_per_call=max_rows_per_call)
        self.baseline_scores = baseline_scores
        self.baseline = np.asarray(baseline, dtype=object)
        if self.baseline.ndim != 2 or len(self.baseline) == 0:
            raise ValueError("baseline must be a 2-D array with at least one row")
        self.text_columns = tuple(sorted(text_columns))
        if not self.text_columns:
            raise ValueError("no text column to explain")
        self.num_samples, self.seed = num_samples, seed
        # Designs by number of players, least recently used first: records come grouped by their number
        # of units, so a few suffice, and a job over documents of every length does not keep them all.
        self._solvers: OrderedDict[int, ShapSolver] = OrderedDict()

    @cached_property
    def expected_value(self) -> np.ndarray:
        """``(k,)`` link of the mean model score over the baseline rows (Clarify's ``expected_value``)."""
        if self.baseline_scores is None:
            return self.scorer.expected_value(self.baseline)
        return baseline_expected_value(self.baseline_scores, self.scorer.use_logit)

    def solver(self, n_players: int) -> ShapSolver:
        """The design and solve shared by every record with ``n_players`` players (built once)."""
        solver = self._solvers.pop(n_players, None)
        if solver is None:
            solver = ShapSolver(make_design(n_players, self.num_samples, self.seed))
        self._solvers[n_players] = solver
        while len(self._solvers) > SOLVERS_KEPT:
            self._solvers.popitem(last=False)
        return solver

    def explain(self, records: np.ndarray, units: Sequence[RecordUnits]) -> TextExplanation:
        """SHAP values of ``records`` ``(n, P)``; ``units[i][t]``: units of record i's t-th text column."""
        x = np.asarray(records, dtype=object)
        if x.ndim != 2 or x.shape[1] != self.baseline.shape[1]:
            raise ValueError(f"records must have the baseline's {self.baseline.shape[1]} columns")
        if len(units) != len(x):
            raise ValueError(f"{len(units)} unit lists for {len(x)} records")
        expected = self.expected_value
        k = len(expected)
        counts = player_counts(units, x.shape[1])
        if np.any(counts < 1):
            raise ValueError(f"record {int(np.argmin(counts))} has nothing to explain (no text unit, no feature)")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        values, stderr = np.zeros((offsets[-1], k)), np.zeros((offsets[-1], k))
        prediction, reference = np.zeros((len(x), k)), np.zeros((len(x), k))
        groups = []  # (solver, record indices), by ascending player count: a deterministic call order
        for m in np.unique(counts):
            solver = self.solver(int(m))
            members = np.flatnonzero(counts == m)
            per_record = (len(solver.design.masks) + 1) * len(self.baseline) + 1
            step = max(1, min(self.scorer.max_rows_per_call, GROUP_ROWS) // per_record)
            groups += [(solver, members[i:i + step]) for i in range(0, len(members), step)]

        def store(solver: ShapSolver, chunk: np.ndarray, v: np.ndarray, fx: np.ndarray) -> None:
            v0, v = v[:, -1, :], v[:, :-1, :]
            # TextExplanation keeps no global terms (text aggregates are per unit): not computed.
            part = solver.solve(v - v0[:, None, :], fx - v0, v0, fx, expected, np.arange(solver.design.n_features),
                                global_terms=False)
            for j, r in enumerate(chunk):
                values[offsets[r]:offsets[r + 1]] = part.values[j]
                stderr[offsets[r]:offsets[r + 1]] = part.stderr[j]
            prediction[chunk], reference[chunk] = fx, v0

        if len(groups) == 1:  # one group (an online request): nothing to overlap, no thread to start
            store(*groups[0], *self._evaluate(x, units, groups[0][1], groups[0][0]))
            return TextExplanation(values, stderr, offsets, expected, reference, prediction)
        # As in KernelShap.explain: the next group is built and scored while this one is solved.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shap-evaluate") as pool:
            pending = None
            for solver, chunk in groups:
                future = pool.submit(self._evaluate, x, units, chunk, solver)
                if pending is not None:
                    store(*pending[0], *pending[1].result())
                pending = ((solver, chunk), future)
            if pending is not None:
                store(*pending[0], *pending[1].result())
        return TextExplanation(values, stderr, offsets, expected, reference, prediction)

    def _evaluate(self, x: np.ndarray, units: Sequence[RecordUnits], chunk: np.ndarray,
                  solver: ShapSolver) -> tuple[np.ndarray, np.ndarray]:
        """Coalition values (every design coalition, then the empty one) and record values of ``chunk``."""
        design = solver.design
        keep = np.vstack([design.masks, np.zeros((1, design.n_features), dtype=bool)])
        rows = np.concatenate([self._synthetic_rows(x[r], units[r], keep) for r in chunk] + [x[chunk]])
        return self.scorer.evaluate(rows, chunk, len(keep), len(self.baseline))

    def _synthetic_rows(self, record: np.ndarray, units: RecordUnits, keep: np.ndarray) -> np.ndarray:
        """``(coalitions * b, P)`` rows, ordered (coalition, baseline row)."""
        base = self.baseline
        rows = np.empty((len(keep), len(base), len(record)), dtype=object)
        player = 0
        text_index = 0
        for col, value in enumerate(record):
            if col in self.text_columns:
                col_units = units[text_index]
                text_index += 1
                span = keep[:, player:player + len(col_units)]
                player += len(col_units)
                for b, replacement in enumerate(base[:, col]):
                    texts = masked_texts(value, col_units, span, replacement)
                    rows[:, b, col] = np.fromiter(texts, dtype=object, count=len(texts))
            else:
                rows[:, :, col] = np.where(keep[:, player, None], value, base[None, :, col])
                player += 1
        return rows.reshape(-1, len(record))
