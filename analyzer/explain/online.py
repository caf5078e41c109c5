"""Online explanations (the endpoint's ``ExplainerConfig``): Kernel SHAP of a few records per request.

Spec ``online-explainability.md`` sections 2-5. The explainer is fitted once, when the endpoint starts:
the baseline rows are scored once, and the coalition design, its solver and the expected value are
prepared (``kernel_shap.fit_kernel_shap``, the same fitted object the batch job's workers use). A request
then costs one build of synthetic rows, one ``score`` call and one solve. Records with text features
(``TextConfig``) are explained unit by unit with ``text_shap.TextKernelShap``, whose design for a given
number of players is built on the first record that has that many and kept.

Each attribution carries a standard error from coalition sampling under ``lucent_stderr`` (0 when the
budget covers every coalition and the values are exact; ``null`` where it cannot be estimated), a key
that boto3 users can ignore. This module never does HTTP: the model is a plain ``Score`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
import jmespath.exceptions
import numpy as np

from analyzer.config.spec import short_repr
from analyzer.errors import jmespath_error_text

from .design import make_design
from .kernel_shap import GROUP_ROWS, Explanation, KernelShapFit, as_matrix, fit_kernel_shap
from .text_shap import TextExplanation, TextKernelShap
from .text_units import GRANULARITIES, TextUnit, language_code, split_texts

__all__ = ["FEATURE_TYPES", "RESPONSE_VERSION", "STDERR_KEY", "OnlineExplainer", "OnlineShapSettings", "Score",
           "check_enable_explanations", "enable_explanations", "fit_online_explainer", "response_document"]

# rows: (n_rows, n_features), float or object; returns (n_rows, n_outputs) scores, one row per input row.
Score = Callable[[np.ndarray], np.ndarray]

FEATURE_TYPES = ("numerical", "categorical", "text")
RESPONSE_VERSION = "1.0"
STDERR_KEY = "lucent_stderr"  # Lucent's key beside each "attribution": its standard error, one per output
# The endpoint's Score cuts requests to the container itself (MaxRecordCount, MaxPayloadInMB): the text
# explainer must not cut them again.
_UNLIMITED_ROWS = 2**62


@dataclass(frozen=True)
class OnlineShapSettings:
    """``ShapConfig`` and the explanation-related ``InferenceConfig`` keys, already validated."""

    num_samples: int | None = None  # None: min(2M + 2048, 2**M - 2), spec section 4
    seed: int | None = None
    use_logit: bool = False
    text_language: str | None = None  # TextConfig.Language
    text_granularity: str | None = None  # TextConfig.Granularity
    feature_types: Sequence[str] | None = None  # "numerical" | "categorical" | "text" per feature


@dataclass(frozen=True)
class OnlineExplainer:
    """A fitted online explainer: ``explain(records)`` gives each record's spec-section-5 entry.

    Immutable after fitting; ``explain`` may be called from several threads at once.
    """

    score: Score
    feature_types: tuple[str, ...]  # per feature (column), resolved at fit time
    expected_value: np.ndarray  # (n_outputs,)
    tabular: KernelShapFit | None  # records without text
    text: TextKernelShap | None  # records with text features
    text_language: str | None
    text_granularity: str | None

    @property
    def text_columns(self) -> tuple[int, ...]:
        return tuple(j for j, kind in enumerate(self.feature_types) if kind == "text")

    @property
    def synthetic_rows_per_record(self) -> int | None:
        """Model rows one tabular record costs (coalitions x baseline rows, plus the record); None for text,
        where it depends on the record's number of units."""
        return None if self.tabular is None else self.tabular.rows_per_record

    def explain(self, records: np.ndarray) -> list[list[dict]]:
        """One entry per record: a list with one object per feature, ``{"feature_type"? (text problems
        only), "attributions": [{"attribution": [one per output], "lucent_stderr": [...],
        "description"? (text units: {"partial_text", "start_idx"})}]}``. ``feature_header`` is added by
        :func:`response_document`."""
        if self.tabular is not None:
            x = self.tabular.check_records(records)
            # Records in groups of about GROUP_ROWS synthetic rows, as the batch job does: a 6 MB request
            # of short records would otherwise build (and hold the scores of) billions of rows at once.
            step = max(1, GROUP_ROWS // self.tabular.rows_per_record)
            entries: list[list[dict]] = []
            for start in range(0, len(x), step):
                entries += _tabular_entries(self.tabular.explain(x[start:start + step], self.score,
                                                                 global_terms=False))
            return entries
        return self._explain_text(records)

    def _explain_text(self, records: np.ndarray) -> list[list[dict]]:
        assert self.text is not None and self.text_language is not None and self.text_granularity is not None
        x = np.asarray(records, dtype=object)
        if x.ndim != 2 or x.shape[1] != len(self.feature_types):
            raise ValueError(f"records must be a 2-D array of {len(self.feature_types)} feature(s), got shape {x.shape}")
        columns = self.text_columns
        for i, record in enumerate(x):
            for j in columns:
                if not isinstance(record[j], str):
                    raise ValueError(f"record {i}: text feature {j} holds {type(record[j]).__name__} "
                                     f"{record[j]!r}, not a string")
        per_column = [split_texts(x[:, j].tolist(), self.text_language, self.text_granularity) for j in columns]
        units = [[column[i] for column in per_column] for i in range(len(x))]
        # A record whose texts have no unit (blank) and no other feature has nothing to explain: it gets
        # empty attribution lists instead of failing the request's other records.
        players = [len(x[0]) - len(columns) + sum(len(u) for u in record) for record in units] if len(x) else []
        explained = [i for i, count in enumerate(players) if count > 0]
        out: list[list[dict]] = [[self._feature(j, []) for j in range(x.shape[1])] for _ in range(len(x))]
        if explained:
            result = self.text.explain(x[explained], [units[i] for i in explained])
            for position, i in enumerate(explained):
                out[i] = self._text_entry(result, position, x[i], units[i])
        return out

    def _text_entry(self, result: TextExplanation, position: int, record: np.ndarray,
                    units: Sequence[Sequence[TextUnit]]) -> list[dict]:
        values, stderr = result.record(position)
        entry, player, text_index = [], 0, 0
        for j in range(len(record)):
            if self.feature_types[j] == "text":
                column_units = units[text_index]
                text_index += 1
                attributions = [_attribution(values[player + u], stderr[player + u],
                                             {"partial_text": unit.text, "start_idx": unit.start})
                                for u, unit in enumerate(column_units)]
                player += len(column_units)
            else:
                attributions = [_attribution(values[player], stderr[player])]
                player += 1
            entry.append(self._feature(j, attributions))
        return entry

    def _feature(self, j: int, attributions: list[dict]) -> dict:
        # "feature_type -- only available for NLP explainability problems" (spec section 5).
        return {"feature_type": self.feature_types[j], "attributions": attributions}


def fit_online_explainer(baseline: np.ndarray, score: Score, settings: OnlineShapSettings) -> OnlineExplainer:
    """Score the baseline rows once and prepare everything a request needs (ValueError on bad inputs).

    ``baseline``: ``(b, P)`` rows, features only (parsed from ``ShapBaseline`` / ``ShapBaselineUri``); for
    a text feature, the string that replaces a masked unit.
    """
    base = np.asarray(baseline)
    if base.ndim != 2 or base.shape[0] == 0 or base.shape[1] == 0:
        raise ValueError(f"ShapBaseline must hold at least one row of at least one feature, got shape {base.shape}")
    types = _feature_types(base, settings)
    text_columns = tuple(j for j, kind in enumerate(types) if kind == "text")
    scores = np.asarray(score(as_matrix(base, "baseline") if not text_columns else base.astype(object)), dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] != len(base):
        raise ValueError(f"the model returned scores of shape {scores.shape} for {len(base)} baseline row(s); "
                         "expected one row of scores per baseline row")
    if not text_columns:
        fitted = fit_kernel_shap(base, scores, num_samples=settings.num_samples, seed=settings.seed,
                                 use_logit=settings.use_logit)
        return OnlineExplainer(score=score, feature_types=types, expected_value=fitted.expected_value,
                               tabular=fitted, text=None, text_language=None, text_granularity=None)
    # Text designs are drawn per number of players, on first use: a drawn seed makes them all come from
    # one seed for the endpoint's life, whichever request needs them first.
    seed = settings.seed if settings.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    text = TextKernelShap(score, base.astype(object), text_columns, num_samples=settings.num_samples, seed=seed,
                          use_logit=settings.use_logit, max_rows_per_call=_UNLIMITED_ROWS, baseline_scores=scores)
    if settings.num_samples is not None:
        make_design(1, settings.num_samples, seed)  # rejects a bad budget now, not at the first request
    return OnlineExplainer(score=score, feature_types=types, expected_value=text.expected_value, tabular=None,
                           text=text, text_language=settings.text_language, text_granularity=settings.text_granularity)


def _feature_types(baseline: np.ndarray, settings: OnlineShapSettings) -> tuple[str, ...]:
    """Each feature's type: ``FeatureTypes`` when given, else inferred from the baseline (spec 2.3): numbers
    are numerical; strings are text when a ``TextConfig`` is given, categorical otherwise."""
    n = baseline.shape[1]
    has_text_config = settings.text_language is not None or settings.text_granularity is not None
    if has_text_config:
        if settings.text_language is None or settings.text_granularity is None:
            raise ValueError("TextConfig needs both Language and Granularity")
        language_code(settings.text_language)  # ValueError naming the choices
        if settings.text_granularity not in GRANULARITIES:
            raise ValueError(f"TextConfig.Granularity {settings.text_granularity!r}: choose one of "
                             f"{', '.join(GRANULARITIES)}")
    if settings.feature_types is not None:
        types = tuple(settings.feature_types)
        if len(types) != n:
            raise ValueError(f"FeatureTypes has {len(types)} entries but the baseline has {n} feature(s)")
        unknown = sorted({t for t in types if t not in FEATURE_TYPES})
        if unknown:
            raise ValueError(f"FeatureTypes: unknown type(s) {unknown}; choose from {', '.join(FEATURE_TYPES)}")
        if "text" in types and not has_text_config:
            raise ValueError("FeatureTypes names a text feature but ShapConfig.TextConfig is missing")
        if has_text_config and "text" not in types:
            raise ValueError("ShapConfig.TextConfig is given but FeatureTypes has no 'text' feature")
        return types
    inferred = []
    for j in range(n):
        numeric = all(_is_number(value) for value in baseline[:, j])
        inferred.append("numerical" if numeric else "text" if has_text_config else "categorical")
    if has_text_config and "text" not in inferred:
        raise ValueError("ShapConfig.TextConfig is given but no baseline column holds text; "
                         "set InferenceConfig.FeatureTypes")
    return tuple(inferred)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _tabular_entries(result: Explanation) -> list[list[dict]]:
    # Whole arrays to lists at once (one call each, not one per feature): a request's JSON is cheap.
    values = result.values.tolist()
    stderr = result.stderr.tolist() if np.isfinite(result.stderr).all() else _finite_or_none(result.stderr)
    return [[{"attributions": [{"attribution": v, STDERR_KEY: e}]} for v, e in zip(record_values, record_stderr,
                                                                                  strict=True)]
            for record_values, record_stderr in zip(values, stderr, strict=True)]


def _attribution(values: np.ndarray, stderr: np.ndarray, description: dict | None = None) -> dict:
    item: dict[str, Any] = {"attribution": values.tolist(), STDERR_KEY: _finite_or_none(stderr)}
    if description is not None:
        item["description"] = description
    return item


def _finite_or_none(values: np.ndarray) -> list:
    """JSON has no NaN: a standard error that cannot be estimated (one pair drawn in a stratum) is null.
    Nested lists of ``values``' shape."""
    return np.where(np.isfinite(values), values, None).tolist()


# -- the response (spec section 5) ---------------------------------------------------------------------

def response_document(model_body: bytes | str, model_content_type: str, explained: Sequence[list[dict] | None],
                      feature_headers: Sequence[str] | None, label_headers: Sequence[str] | None) -> dict:
    """The spec section 5 response: ``version``, ``predictions`` (``content_type``, ``data``: the model's
    response as a string), ``label_headers`` (only when known) and ``explanations`` (``{}`` when no record
    is explained, else ``{"kernel_shap": [...]}`` with one entry per record, ``None`` for one not explained).

    ``feature_headers`` (``FeatureHeaders``) are added to each feature object as ``feature_header``.
    """
    data = model_body.decode("utf-8", errors="replace") if isinstance(model_body, bytes | bytearray) else model_body
    document: dict[str, Any] = {"version": RESPONSE_VERSION,
                                "predictions": {"content_type": model_content_type, "data": data}}
    if label_headers is not None:
        document["label_headers"] = list(label_headers)
    if all(entry is None for entry in explained):
        document["explanations"] = {}
        return document
    kernel_shap: list[list[dict] | None] = []
    for i, entry in enumerate(explained):
        if entry is None or feature_headers is None:
            kernel_shap.append(entry)
            continue
        if len(feature_headers) != len(entry):
            raise ValueError(f"FeatureHeaders has {len(feature_headers)} name(s) but record {i} has "
                             f"{len(entry)} feature(s)")
        kernel_shap.append([{"feature_header": header, **feature}
                            for header, feature in zip(feature_headers, entry, strict=True)])
    document["explanations"] = {"kernel_shap": kernel_shap}
    return document


# -- EnableExplanations (spec 2.4) ---------------------------------------------------------------------

@lru_cache(maxsize=64)
def _compiled(expression: str) -> jmespath.parser.ParsedResult:
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as error:
        raise ValueError(f"EnableExplanations {expression!r} is not a valid JMESPath expression: "
                         f"{jmespath_error_text(error)}") from None


def check_enable_explanations(expression: str) -> None:
    """ValueError when ``expression`` is not valid JMESPath (at configuration time, spec 2.4)."""
    _compiled(expression)


def enable_explanations(expression: str, parsed_outputs: list) -> list[bool]:
    """Whether to explain each record: ``expression`` (JMESPath) over the record's parsed model output (a
    CSV record as a JSON array of its values, a JSON Lines record as its object).

    ValueError, naming the record and the value, when the expression is invalid or does not evaluate to a
    boolean (literals need backticks: ``[1]>`0.5```).
    """
    compiled = _compiled(expression)
    out = []
    for i, output in enumerate(parsed_outputs):
        try:
            result = compiled.search(output)
        except jmespath.exceptions.JMESPathError as error:
            raise ValueError(f"EnableExplanations {expression!r} failed on record {i}'s model output "
                             f"{short_repr(output, 120)}: {str(error).strip()}") from None
        if not isinstance(result, bool):
            raise ValueError(f"EnableExplanations {expression!r} must evaluate to true or false, but gave "
                             f"{short_repr(result, 120)} for record {i}'s model output {short_repr(output, 120)}")
        out.append(result)
    return out


