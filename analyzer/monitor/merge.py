"""Captured traffic + ground truth -> the window's ``Dataset`` (spec model-monitor.md 3; issue 13 item 3).

What a record is. A capture line is one invocation; its ``data`` can hold several records (lines of a
CSV body, lines of a JSON Lines body, the records of an ``application/json`` document). Every record
keeps its request's join key: ``eventMetadata.inferenceId`` when the caller sent one, else ``eventId``.
Lines whose ``inferenceTime`` is outside ``[start, end)`` are dropped before their payloads are read.

Ground truth (bias only). One label per join key, ``eventMetadata.eventId`` of the ground truth record,
read like the baseline's label: ``CSV`` data is the label's field as a CSV cell; ``JSON`` data is a JSON
value, a scalar label or a document the config's ``label`` locates (a JMESPath, e.g. ``label`` in
``{"label": 0}``; an integer ``label`` indexes a list). When a key has several ground truth records, the
last one read wins (folders are read oldest first, so a corrected label replaces the first one). A
multi-record request's records share its key: one label is copied to every record (counted in
``records_with_copied_ground_truth`` and logged as a WARNING); one label per line of ``data`` (CSV fields,
or JSON Lines documents), as many as the request's records, gives the j-th record the j-th label; another
number of labels leaves the request out (``records_with_mismatched_ground_truth``, a WARNING). A gzip-compressed
capture or ground truth file is a ``UserError`` naming it.

Features. ``headers`` minus the label's header and the predicted label's header name the captured values,
in order: a bias config lists the label among its headers, an explainability config lists the features
only; a captured record with another number of values is a ``UserError`` naming the file, line and both
counts. JSON inputs are located with ``FeaturesAttribute`` (else the config's ``features``; else the
record itself must be the list), and ``headers`` may also have one more name at the end, the label's
column, as for JSON datasets (``analyzer.data.json_format``). Without ``headers`` the values are named
``column_0``, ``column_1``, ... ``excluded_columns`` and ``ExcludeFeaturesAttribute`` (comma-separated
header names or 0-based indices) are left out of the model features, as ``load_dataset`` does.

Predicted label (bias only), from the captured response, by the rules ``lucent run`` applies to a model's
answer (``analyzer.predict``; spec clarify-contract 5.3): ``InferenceAttribute`` locates the predicted
label, ``ProbabilityAttribute`` the score (a 0-based column for CSV, JMESPath for JSON). The threshold is
``ProbabilityThresholdAttribute``, else the config's ``probability_threshold`` (0.5 by default). With
neither attribute the whole response is the score: a bare CSV value such as the churn walkthrough's
``0.0254`` is cut at the threshold (score > threshold -> 1, else 0), and a model that answers a 0/1 label
gives that same label back for any threshold in [0, 1).
An endpoint with ``ExplainerConfig`` answers (and so captures) an explanation document,
``{"version", "predictions": {"content_type", "data"}, "label_headers", "explanations"}``
(online-explainability.md 5): such a response is read as the model's answer it carries, ``predictions.data``
in ``predictions.content_type``, so the attributes apply to it as to an endpoint without explanations.

Typing. Role columns are typed exactly as ``load_dataset`` types them on the same rows written as a
dataset file: CSV values are the raw field strings, typed once from all their distinct values by the CSV
reader's rules (``analyzer.data.csv_format``); JSON values keep their JSON types, typed as a JSON Lines
dataset is. The predicted label is typed as the pipeline types a model's answers.

Bad input. A malformed capture line (not JSON, not the capture shape, an unreadable payload, a response
with another number of records than its request) is skipped, counted and listed ("file line n: reason",
at most 10) when malformed lines are at most 1 % of the lines read; above that the merge fails. The same
holds for ground truth lines (a JSON label the analysis config's ``label`` finds nothing in, or null, is
malformed too: no label, never a null one). A window without captured records, and a bias window where no record has
ground truth, are ``UserError``.

Speed. Capture files are read in chunks of ``chunk_bytes`` on a reader thread, one chunk ahead of the
merge: one ``pyarrow.json`` call parses a chunk's lines into columns (about 4x faster than ``orjson``
line by line, and 2x faster than polars' ``read_ndjson``, measured; it runs without the GIL, beside the
merge of the previous chunk). The time filter is an array operation; a chunk's CSV payloads are joined
into one document for ``pyarrow.csv`` (the reader ``load_dataset`` uses, so fields come out identical),
which converts only the columns the analysis needs; their values are dictionary-encoded chunk by chunk
(``ColumnAccumulator``), so memory holds codes, not strings. Payloads with quotes, carriage returns or
blank lines take an exact line by line path. The join is one ``pyarrow.compute.index_in`` over all the
window's keys after the last chunk (it builds its hash table of the ground truth's keys on every call,
so once, not per chunk; a Python dict built and probed per record took twice as long): until then each
chunk's records are held, their columns as codes (``HeldColumn``), and the records it drops are cut out
before any typing. Because the join comes last, the ground truth is read on a thread of its own while
the capture is merged. A chunk that pyarrow refuses, or that has a line of the wrong shape, is read
again line by line with Python's ``json`` to find and name the bad lines. bench/monitor.py measures all this.

Layout. This module runs the steps; each lives in a module of its own, lower ones first: ``arrow_masks``,
``jsonl_chunks`` (files read in chunks, malformed lines), ``background`` (the reader threads),
``capture_lines`` and ``ground_truth`` (the two kinds of file as columns), ``column_layout``, ``payloads``,
``records`` (payloads -> data records), ``held_columns``, and ``window_builder`` (chunks -> the ``Dataset``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzer.config.model import AnalysisConfig, Locator
from analyzer.data.dataset import Dataset
from analyzer.monitor.attributes import EndpointAttributes
from analyzer.monitor.background import TRUTH_READER, Background, Prefetched
from analyzer.monitor.capture_lines import parsed_chunks
from analyzer.monitor.ground_truth import Truth, read_ground_truth
from analyzer.monitor.jsonl_chunks import (
    MAX_EXAMPLES,
    MAX_LINE_BYTES,
    MAX_MALFORMED_FRACTION,
    CaptureFile,
    MalformedLines,
)
from analyzer.monitor.window import Window, utc_text
from analyzer.monitor.window_builder import WindowBuilder

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # capture bytes parsed per pyarrow call: 32 MB buffers fault in fresh pages every chunk
#                         (measured on the million-record bench: 2.3x the page faults, +0.4 CPU-s, +0.1 GiB)


@dataclass
class MergedWindow:
    """The window's records, ready for ``analyzer.pipeline.run_analysis``, and what the merge counted.

    ``counts`` goes under ``analysis.json["lucent"]["monitor"]``:

    * ``capture_files``, ``captured_lines`` (non-blank lines read), ``malformed_lines``,
      ``malformed_examples`` ("file line n: reason", at most 10), ``captured_records`` (well-formed
      capture lines, one per invocation), ``invocations_in_window``, ``records_in_window`` (data
      records those invocations hold, several per multi-record request), ``merged_records`` (rows of
      the dataset);
    * bias only: ``ground_truth_files``, ``ground_truth_lines``, ``malformed_ground_truth_lines``,
      ``malformed_ground_truth_examples``, ``ground_truth_records`` (distinct join keys),
      ``duplicate_ground_truth`` (records replaced by a later one for the same key),
      ``records_without_ground_truth``, ``ground_truth_without_records`` (keys no record of the window
      has: labels for other windows, or for requests that were not sampled), ``explanation_documents``
      (captured responses that were explanation documents, read through their ``predictions``);
    * ``window_start``, ``window_end``, ``join_key`` and ``seconds``.
    """

    dataset: Dataset
    counts: dict[str, Any]


# -- the entry point ------------------------------------------------------------------------------

def merge_window(config: AnalysisConfig, capture_files: Iterable[CaptureFile], window: Window,
                 attributes: EndpointAttributes, ground_truth_files: Iterable[CaptureFile] | None, *,
                 need_features: bool | None = None, chunk_bytes: int = CHUNK_BYTES,
                 ground_truth_where: str | None = None) -> MergedWindow:
    """The window's records as a ``Dataset`` for ``run_analysis`` (see the module docstring for the rules).

    ``capture_files``: the capture objects of the window's hour folders (``hour_prefixes``), any order,
    read lazily ``chunk_bytes`` at a time on a reader thread (which parses one chunk ahead while this
    one is merged). ``ground_truth_files``: the ground truth objects (``ground_truth_prefixes``), oldest
    first, read on another thread meanwhile; None for an explainability execution (features only: no
    label, no predicted label). Both are iterated on threads: iterating them must not depend on
    thread-local state. ``ground_truth_where``: the folders the ground truth files were listed in, named
    when a bias window has no ground truth at all. Ground truth problems are reported before the capture's, as if read first. ``need_features``: build ``Dataset.features`` (default: for
    explainability, and for bias when the Flip Test is asked for).
    """
    started = time.perf_counter()
    if need_features is None:
        post = config.methods.post_training_bias
        need_features = ground_truth_files is None or bool(post and "FT" in post.methods)
    # Capture chunks are read and parsed on a thread one chunk ahead (pyarrow parses without the GIL).
    counter = [0]
    parsed = Prefetched(parsed_chunks(capture_files, chunk_bytes, counter))
    jobs: list[Background] = []
    try:
        return _merge(config, window, attributes, ground_truth_files, need_features, chunk_bytes, parsed, counter,
                      started, jobs, ground_truth_where)
    finally:
        parsed.close()
        for job in jobs:
            job.close()


def _merge(config: AnalysisConfig, window: Window, attributes: EndpointAttributes,
           ground_truth_files: Iterable[CaptureFile] | None, need_features: bool, chunk_bytes: int,
           parsed: Prefetched, counter: list[int], started: float, jobs: list[Background],
           ground_truth_where: str | None = None) -> MergedWindow:
    bias = ground_truth_files is not None
    counts: dict[str, Any] = {"window_start": utc_text(window.start), "window_end": utc_text(window.end),
                              "capture_files": 0, "captured_lines": 0, "malformed_lines": 0,
                              "malformed_examples": [], "captured_records": 0, "invocations_in_window": 0,
                              "records_in_window": 0, "merged_records": 0}
    truth_job = None
    if ground_truth_files is not None:
        counts.update(ground_truth_lines=0, malformed_ground_truth_lines=0, malformed_ground_truth_examples=[],
                      records_without_ground_truth=0, records_with_copied_ground_truth=0,
                      records_with_mismatched_ground_truth=0, ground_truth_files=0, ground_truth_records=0,
                      duplicate_ground_truth=0, explanation_documents=0)
        # The join waits for the last capture chunk, so the ground truth is read meanwhile, on its own thread.
        label = config.label
        truth_job = Background(lambda stop: _ground_truth(ground_truth_files, label, chunk_bytes, stop),
                                TRUTH_READER)
        jobs.append(truth_job)
    malformed = MalformedLines("capture")
    builder = WindowBuilder(config, attributes, window, bias, need_features, malformed, counts)
    builder.ground_truth_where = ground_truth_where
    try:
        for lines, chunk_malformed in parsed:
            malformed.absorb(chunk_malformed)
            counts["captured_records"] += len(lines)
            builder.add(lines)
    except Exception:
        if truth_job is not None:  # a problem of the ground truth is reported first, as when it was read first
            _truth_result(truth_job, counts)
        raise
    truth = _truth_result(truth_job, counts) if truth_job is not None else None
    counts.update(capture_files=counter[0], captured_lines=malformed.lines, malformed_lines=malformed.count,
                  malformed_examples=list(malformed.examples))
    malformed.check()
    dataset = builder.finish(source=f"captured data {window}", truth=truth)
    counts["merged_records"] = dataset.n_rows
    if builder.matched is not None:
        counts["ground_truth_without_records"] = counts["ground_truth_records"] - int(np.count_nonzero(builder.matched))
        counts["join_key"] = "eventMetadata.inferenceId, else eventId"
    counts["seconds"] = round(time.perf_counter() - started, 3)
    log.info("Merged window %s: %d record(s) from %d invocation(s) in %d capture file(s)%s in %.2f s", window,
             dataset.n_rows, counts["invocations_in_window"], counts["capture_files"],
             f"; {counts['records_without_ground_truth']} without ground truth, "
             f"{counts['ground_truth_without_records']} ground truth label(s) without a record" if bias else "",
             counts["seconds"])
    return MergedWindow(dataset, counts)


def _ground_truth(files: Iterable[CaptureFile], label: Locator | None, chunk_bytes: int,
                  stop: threading.Event) -> tuple[Truth, MalformedLines, dict[str, Any]]:
    """The ground truth read on its thread: the labels, the malformed lines, and the counts."""
    malformed = MalformedLines("ground truth")
    counts: dict[str, Any] = {}
    truth = read_ground_truth(files, label, malformed, counts, chunk_bytes, stop)
    return truth, malformed, counts


def _truth_result(job: Background, counts: dict[str, Any]) -> Truth:
    """The ground truth, once read, its counts added to ``counts``; too many malformed lines fail here."""
    truth, malformed, truth_counts = job.result()
    counts.update(ground_truth_lines=malformed.lines, malformed_ground_truth_lines=malformed.count,
                  malformed_ground_truth_examples=list(malformed.examples), **truth_counts)
    malformed.check()
    log.info("Ground truth: %d label(s) from %d file(s)", counts["ground_truth_records"], counts["ground_truth_files"])
    return truth


__all__ = ["CHUNK_BYTES", "MAX_EXAMPLES", "MAX_LINE_BYTES", "MAX_MALFORMED_FRACTION", "CaptureFile", "MergedWindow", "merge_window"]
