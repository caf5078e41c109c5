"""Text units (Clarify ``text_config``): split text into tokens, sentences or paragraphs, and rebuild it.

Each unit of a text is one Kernel SHAP player. Tokens come from spaCy's rule-based tokenizer of a blank
pipeline for the configured language (no trained weights, nothing downloaded): spaCy covers exactly the
63 languages of Clarify's ``text_config.language``. Sentences come from spaCy's rule-based
``sentencizer``; paragraphs are the text between blank lines. Whitespace is never part of a unit: it
stays between units, so a text rebuilt with some units replaced keeps its original spacing.

A few languages segment words with a dictionary tokenizer installed from PyPI beside spaCy: Japanese
(SudachiPy with its core dictionary), Thai (PyThaiNLP), Vietnamese (pyvi); Chinese uses spaCy's
character segmentation.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from analyzer.config.schema import LANGUAGES

__all__ = ["GRANULARITIES", "TextUnit", "language_code", "masked_texts", "rough_unit_count", "split_text",
           "split_texts"]

log = logging.getLogger(__name__)

GRANULARITIES = ("token", "sentence", "paragraph")
_CODES = {name: code for name, code in LANGUAGES}
# A blank line (only spaces or tabs on it) separates paragraphs.
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# Rough token counts (``rough_unit_count``): words and punctuation runs. Each alternative only ever
# grows a match that succeeds, so a scan is linear in the text whatever it holds.
_ROUGH_TOKEN = re.compile(r"\w+|[^\w\s]+")


class TextUnit(NamedTuple):
    """One unit of a text: its characters and the offset of the first one in the text."""

    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def language_code(language: str) -> str:
    """spaCy's code for a Clarify language name or code (``"english"`` or ``"en"`` -> ``"en"``)."""
    key = language.lower()
    if key in _CODES:
        return _CODES[key]
    if key in _CODES.values():
        return key
    raise ValueError(f"unknown text_config.language {language!r}; choose one of {sorted(_CODES)} or their codes")


@lru_cache(maxsize=8)
def _pipeline(code: str):
    """A blank spaCy pipeline with the rule-based sentencizer, built once per process and language: tokens come
    from its tokenizer alone (``make_doc``), sentences from the whole pipeline. Logged with the time it took:
    spaCy's import alone is 1.3-1.6 s of CPU, which a job's first split of its texts pays, and building a
    blank pipeline 0.3 s (once, not once per granularity: a text job detects text features by tokens)."""
    import warnings

    started = time.perf_counter()
    import spacy

    with warnings.catch_warnings():  # spaCy's Japanese tokenizer calls a SudachiPy API deprecated since 0.6
        warnings.simplefilter("ignore", DeprecationWarning)
        nlp = spacy.blank(code)
    nlp.add_pipe("sentencizer")
    log.info("Loaded spaCy %s's rule-based tokenizer and sentencizer for %r in %.2f s (its import and a blank "
             "pipeline, once per process)", spacy.__version__, code, time.perf_counter() - started)
    return nlp


def split_texts(texts: Iterable[str], language: str, granularity: str) -> list[list[TextUnit]]:
    """The units of each text, in order. Whitespace-only texts have no units."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown text_config.granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    texts = list(texts)
    if granularity == "paragraph":
        return [_paragraphs(text) for text in texts]
    nlp = _pipeline(language_code(language))
    if granularity == "token":  # the tokenizer alone: the sentencizer changes no token
        return [[TextUnit(token.text, token.idx) for token in nlp.make_doc(text) if not token.is_space]
                for text in texts]
    return [[unit for sent in doc.sents if (unit := _stripped(sent.text, sent.start_char))] for doc in nlp.pipe(texts)]


def rough_unit_count(text: object, granularity: str) -> int:
    """About how many units ``split_texts`` finds in ``text``, without spaCy (its import is ~1.5 s): words
    and punctuation runs, or sentence ends, for a guess of a job's work made before spaCy is loaded
    (``analyzer.explain.job.expected_shap_workers``). Paragraphs are counted exactly. Not a string: 0."""
    if not isinstance(text, str):
        return 0
    if granularity == "paragraph":
        return len(_paragraphs(text))
    if granularity == "sentence":
        # Words ending a sentence, with a word after them; not a regular expression such as
        # "[.!?]+\s+\S", which backtracks through a run of punctuation from each of its characters
        # (quadratic: seconds for 8,000 "!", hours for a hostile megabyte).
        words = text.split()
        return sum(1 for word in words[:-1] if word[-1] in ".!?") + (1 if words else 0)
    return sum(1 for _ in _ROUGH_TOKEN.finditer(text))


def split_text(text: str, language: str, granularity: str) -> list[TextUnit]:
    """The units of one text (see :func:`split_texts`)."""
    return split_texts([text], language, granularity)[0]


def _paragraphs(text: str) -> list[TextUnit]:
    """The paragraphs of ``text``: the text between blank lines, stripped (no spaCy involved)."""
    units, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if unit := _stripped(text[start:match.start()], start):
            units.append(unit)
        start = match.end()
    if unit := _stripped(text[start:], start):
        units.append(unit)
    return units


def _stripped(text: str, start: int) -> TextUnit | None:
    body = text.strip()
    if not body:
        return None
    return TextUnit(body, start + len(text) - len(text.lstrip()))


def masked_texts(text: str, units: Sequence[TextUnit], keep: np.ndarray, replacement: str) -> list[str]:
    """The text once per row of ``keep`` (``(rows, len(units))`` bool), masked units replaced.

    A masked unit becomes ``replacement`` and the whitespace around it stays as it was; with an empty
    replacement the unit is dropped together with the whitespace that follows it. Characters outside
    every unit (leading whitespace) are kept.
    """
    if not units:
        return [text] * len(keep)
    gaps = [text[a.end:b.start] for a, b in zip(units, units[1:], strict=False)] + [text[units[-1].end:]]
    kept = np.array([u.text + gap for u, gap in zip(units, gaps, strict=True)], dtype=object)
    masked = np.array([replacement + gap if replacement else "" for gap in gaps], dtype=object)
    head = text[:units[0].start]
    if head:
        kept[0], masked[0] = head + kept[0], head + masked[0]
    return ["".join(row) for row in np.where(keep, kept, masked).tolist()]
