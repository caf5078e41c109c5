"""Text explanations in the job: ``methods.shap`` with ``text_config`` (see docs/text-explanations.md).

``analyzer.explain.job.explain_shap`` resolves what tabular and text SHAP share (baseline, label keys,
checkpoints, seed) and hands text jobs to this module, which decides which features are text, splits
every text into units, runs :class:`TextKernelShap` sharded over worker processes, and writes
``explanations_shap/out.jsonl`` and the ``global_top_shap_text`` of ``analysis.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzer.config.model import TextConfig
from analyzer.data import Dataset
from analyzer.errors import UserError
from analyzer.output import atomic_writer
from analyzer.progress import progress

from .aggregate import aggregate_values
from .design import design_coalitions
from .text_shap import TextExplanation
from .text_units import TextUnit, split_texts

log = logging.getLogger(__name__)

TEXT_BASELINE = "<PAD>"  # what replaces a masked unit when the config gives no baseline
KEY = "methods.shap.text_config"
SPLIT_CHUNK = 2000  # texts per spaCy call: progress is shown between calls
# Detection (docs/text-explanations.md): a string feature is free text when its values have at least
# MIN_TOKENS tokens on average and at least MIN_DISTINCT of them differ (categories repeat, reviews don't).
MIN_TOKENS = 3.0
MIN_DISTINCT = 0.5
DETECTION_SAMPLE = 1000


def text_columns(text_config: TextConfig, dataset: Dataset, explicit: Sequence[int] | None) -> tuple[int, ...]:
    """Indices into ``dataset.feature_names`` of the text features: ``explicit`` (from
    ``text_config.text_features``) when given, otherwise the features that look like free text."""
    assert dataset.features is not None
    frame, names = dataset.features, dataset.feature_names
    if explicit is not None:
        for j in explicit:
            if frame.iloc[:, j].dtype.kind in "biuf":
                raise UserError(f"{KEY}.text_features: {names[j]!r} holds numbers, not text")
        return tuple(sorted(explicit))
    detected = tuple(j for j in range(len(names))
                     if looks_like_free_text(frame.iloc[:, j], text_config.language))
    if not detected:
        strings = [n for j, n in enumerate(names) if frame.iloc[:, j].dtype.kind not in "biuf"]
        raise UserError(f"{KEY}: no feature looks like free text (string values of {MIN_TOKENS:g}+ tokens on average, "
                        f"mostly distinct); string features: {strings}. Name the text features with "
                        f"{KEY}.text_features (a Lucent extension), e.g. [\"{strings[0] if strings else 'text'}\"]")
    log.info("Text features (detected): %s", [names[j] for j in detected])
    return detected


def looks_like_free_text(column: pd.Series, language: str) -> bool:
    """Whether a feature holds free text (docs/text-explanations.md, "Which features are text"): string values
    of ``MIN_TOKENS`` tokens or more on average, at least ``MIN_DISTINCT`` of them distinct."""
    if column.dtype.kind in "biuf" or len(column) == 0:
        return False
    sample = [v for v in column.iloc[:DETECTION_SAMPLE] if isinstance(v, str)]
    if len(sample) < 0.5 * min(len(column), DETECTION_SAMPLE):
        return False
    tokens = np.mean([len(units) for units in split_texts(sample, language, "token")])
    return bool(tokens >= MIN_TOKENS and column.nunique(dropna=True) >= MIN_DISTINCT * len(column))


def record_units(text_config: TextConfig, dataset: Dataset, columns: Sequence[int]) -> list[list[list[TextUnit]]]:
    """``units[i][t]``: the units of record ``i``'s ``t``-th text feature. Every text must be a non-empty
    string: anything else is an error naming the dataset row and the feature."""
    assert dataset.features is not None
    per_column = []
    for j in columns:
        name = dataset.feature_names[j]
        values = dataset.features.iloc[:, j]
        # An empty CSV cell reads as NaN, not as "": report it as the empty text it is (a JSON null stays
        # "not a string": the document said null, not "").
        missing = values.map(lambda v: isinstance(v, float) and np.isnan(v)).to_numpy(dtype=bool)
        not_text = ~values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool) & ~missing
        if missing.any():
            rows = np.flatnonzero(missing)
            raise UserError(f"{KEY}: text feature {name!r} is empty at dataset row {int(rows[0])}"
                            + (f" and {len(rows) - 1} more row(s)" if len(rows) > 1 else "")
                            + " (a missing value); every record needs text to explain")
        if not_text.any():
            row = int(np.argmax(not_text))
            raise UserError(f"{KEY}: text feature {name!r} at dataset row {row} holds {values.iloc[row]!r} "
                            f"({type(values.iloc[row]).__name__}), not a string"
                            + (f" ({int(not_text.sum())} such rows)" if not_text.sum() > 1 else ""))
        texts = values.tolist()
        units = []
        with progress(f"Text: splitting {name!r}", total=len(texts), unit="texts") as bar:
            for start in range(0, len(texts), SPLIT_CHUNK):  # spaCy splits each text on its own
                part = texts[start:start + SPLIT_CHUNK]
                units.extend(split_texts(part, text_config.language, text_config.granularity))
                bar.update(len(part))
        empty = [i for i, u in enumerate(units) if not u]
        if empty:
            raise UserError(f"{KEY}: text feature {name!r} is empty at dataset row {empty[0]}"
                            + (f" and {len(empty) - 1} more row(s)" if len(empty) > 1 else "")
                            + "; every record needs text to explain")
        per_column.append(units)
    return [list(units) for units in zip(*per_column, strict=True)]


def text_baseline_values(baseline: pd.DataFrame, columns: Sequence[int]) -> pd.DataFrame:
    """The baseline with each text feature's value checked: a string (an empty cell reads as ``""``)."""
    out = baseline.copy()
    for j in columns:
        name = out.columns[j]
        values = out.iloc[:, j].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise UserError(f"methods.shap.baseline: the value of text feature {name!r} must be the string that "
                            f"replaces a masked unit (e.g. \"{TEXT_BASELINE}\"), got {bad[0]!r}")
        out[name] = values.astype(object)
    return out


def synthetic_rows(units: Sequence[Sequence[TextUnit]], n_columns: int, num_samples: int | None,
                   n_baseline: int) -> int:
    """Model rows one record costs: (its coalitions + the empty one) x baseline rows, plus the record."""
    return rows_for_players(n_columns - len(units) + sum(len(u) for u in units), num_samples, n_baseline)


def rows_for_players(players: int, num_samples: int | None, n_baseline: int) -> int:
    """Model rows a record of ``players`` players (text units and other features) costs: ``synthetic_rows``
    from the count alone (a job's early guess counts units without spaCy)."""
    return (design_coalitions(players, num_samples) + 1) * n_baseline + 1


def warn_thin_budgets(units: Sequence[Sequence[Sequence[TextUnit]]], n_columns: int, num_samples: int | None) -> None:
    """One WARNING when a record has more players (text units + other features) than coalitions to fit them.

    Kernel SHAP then solves an underdetermined regression: the job runs, but that record's values are
    mostly noise. Names the record with the most units (its dataset row) and how many records are alike.
    """
    thin = []
    for row, record in enumerate(units):
        m = n_columns - len(record) + sum(len(u) for u in record)
        coalitions = design_coalitions(m, num_samples)
        if coalitions < m:
            thin.append((m, row, coalitions))
    if thin:
        m, row, coalitions = max(thin)
        log.warning("methods.shap.num_samples: dataset row %d has %s players (text units and other features) but "
                    "only %s coalitions are sampled for it, far fewer than its players: its values are mostly "
                    "noise (%d record(s) alike). Raise num_samples, or use a coarser text_config.granularity",
                    row, f"{m:,}", f"{coalitions:,}", len(thin))


# -- outputs -----------------------------------------------------------------------------------------

def text_section(local: TextExplanation, units: Sequence[Sequence[Sequence[TextUnit]]], columns: Sequence[int],
                 names: list[str], label_keys: list[str], agg_method: str, max_top_tokens: int) -> dict[str, Any]:
    """``explanations.kernel_shap`` for a text job (contract 4.3).

    ``global_shap_values``: every feature, a text feature counting as the sum of its units' values in a
    record, aggregated over records with ``agg_method``. ``global_top_shap_text``: per text feature, the
    tokens (units, case-folded) aggregated with ``agg_method`` over all their occurrences, strongest first.
    """
    n, k = len(local), len(label_keys)
    totals = np.zeros((n, len(names), k))
    occurrences: dict[int, dict[str, list[np.ndarray]]] = {j: defaultdict(list) for j in columns}
    for i in range(n):
        values, _ = local.record(i)
        for j, start, stop in _player_spans(units[i], columns, len(names)):
            totals[i, j] = values[start:stop].sum(axis=0)
            if j in occurrences:
                for unit, value in zip(units[i][columns.index(j)], values[start:stop], strict=True):
                    occurrences[j][unit.text.casefold()].append(value)
    global_values = aggregate_values(totals, agg_method)
    section: dict[str, Any] = {}
    for c, key in enumerate(label_keys):
        top = {}
        for j in columns:
            scored = {token: float(aggregate_values(np.array(vals)[:, None, c:c + 1], agg_method)[0, 0])
                      for token, vals in occurrences[j].items()}
            ranked = sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:max_top_tokens]
            top[names[j]] = dict(ranked)
        section[key] = {"global_shap_values": dict(zip(names, global_values[:, c].tolist(), strict=True)),
                        "expected_value": float(local.expected_value[c]),
                        "global_top_shap_text": top}
    return section


def _player_spans(units: Sequence[Sequence[TextUnit]], columns: Sequence[int], n_columns: int):
    """``(feature, first player, stop)`` for each feature of a record, in column order."""
    player = 0
    for j in range(n_columns):
        size = len(units[columns.index(j)]) if j in columns else 1
        yield j, player, player + size
        player += size


def write_text_local(path: Path, local: TextExplanation, units: Sequence[Sequence[Sequence[TextUnit]]],
                     columns: Sequence[int], names: list[str], data_types: list[str],
                     join_values: Sequence[Any] | None) -> None:
    """``explanations_shap/out.jsonl``: one line per record, its features' attributions (contract 4.5).

    Each attribution also carries ``lucent_stderr`` (Lucent extension, beside Clarify's keys): the
    standard error of each value from coalition sampling, 0 where the record's values are exact. A number
    that is not finite (a standard error that cannot be estimated is NaN) is written as ``null``: every
    line is strict JSON.
    """
    with atomic_writer(path, "w") as handle:
        for i in range(len(local)):
            values, stderr = local.record(i)
            explanations = []
            for j, start, stop in _player_spans(units[i], columns, len(names)):
                if j in columns:
                    attributions = [{"attribution": v.tolist(), "lucent_stderr": e.tolist(),
                                     "description": {"partial_text": u.text, "start_idx": u.start}}
                                    for u, v, e in zip(units[i][columns.index(j)], values[start:stop],
                                                       stderr[start:stop], strict=True)]
                else:
                    attributions = [{"attribution": values[start].tolist(), "lucent_stderr": stderr[start].tolist()}]
                explanations.append({"feature_name": names[j], "data_type": data_types[j],
                                     "attributions": attributions})
            line: dict[str, Any] = {"explanations": explanations}
            if join_values is not None:
                value = join_values[i]
                line["join_source_value"] = value.item() if isinstance(value, np.generic) else value
            handle.write(json_line(line))


def json_line(document: Any) -> str:
    """One line of a JSON Lines file: strict JSON, so NaN and +/-inf become ``null`` (not ``NaN``)."""
    return json.dumps(_finite_or_null(document), ensure_ascii=False, allow_nan=False) + "\n"


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def feature_data_types(dataset: Dataset, columns: Sequence[int]) -> list[str]:
    """``free_text``, ``numerical`` or ``categorical`` per feature (out.jsonl's ``data_type``)."""
    assert dataset.features is not None
    return ["free_text" if j in columns else "numerical" if dtype.kind in "biuf" else "categorical"
            for j, dtype in enumerate(dataset.features.dtypes)]


__all__ = ["TEXT_BASELINE", "feature_data_types", "json_line", "looks_like_free_text", "record_units",
           "rows_for_players", "synthetic_rows", "text_baseline_values", "text_columns", "text_section",
           "warn_thin_budgets", "write_text_local"]
