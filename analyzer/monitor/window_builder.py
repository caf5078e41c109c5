"""Chunks of capture lines -> the window's ``Dataset`` (``WindowBuilder``): the time filter, payloads to
records, the held records joined with the ground truth, and the predicted label read from the responses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.config.model import AnalysisConfig, Predictor
from analyzer.data.accumulate import ColumnAccumulator
from analyzer.data.column import Column
from analyzer.data.csv_format import infer_csv_values
from analyzer.data.dataset import Dataset
from analyzer.errors import UserError
from analyzer.media import CSV, JSON, JSON_LINES, media_type
from analyzer.monitor.arrow_masks import true_mask, valid_mask
from analyzer.monitor.attributes import PARSER_KEYS, EndpointAttributes
from analyzer.monitor.capture import INPUT, OUTPUT
from analyzer.monitor.capture_lines import CaptureLines
from analyzer.monitor.column_layout import ColumnLayout
from analyzer.monitor.ground_truth import Truth
from analyzer.monitor.held_columns import HeldColumn
from analyzer.monitor.jsonl_chunks import MAX_EXAMPLES, MalformedLines
from analyzer.monitor.payloads import KIND_LIST, decoded_payloads, explanation_answer, payload_kinds
from analyzer.monitor.records import (
    DataRecords,
    csv_records,
    holds_any,
    joined_texts,
    json_records,
    read_csv_records,
    record_counts,
    split_lines,
)
from analyzer.monitor.window import Window
from analyzer.predict.decode import ResponseParser
from analyzer.predict.locator import JsonLocator
from analyzer.predict.predictions import Predictions, predicted_labels_for_bias

log = logging.getLogger("analyzer.monitor.merge")  # the merge's messages keep the logger name they always had

class WindowBuilder:
    """Adds chunks of capture lines to the window's columns; ``finish`` makes the ``Dataset``."""

    def __init__(self, config: AnalysisConfig, attributes: EndpointAttributes, window: Window, bias: bool,
                 need_features: bool, malformed: MalformedLines, counts: dict[str, Any]):
        self.config, self.attributes, self.window = config, attributes, window
        self.truth: Truth | None = None  # bias: given to ``finish``
        self.bias = bias
        self.need_features = need_features
        self.malformed, self.counts = malformed, counts
        self.start = pa.scalar(_naive_utc(window.start), pa.timestamp("s"))
        self.end = pa.scalar(_naive_utc(window.end), pa.timestamp("s"))
        self.layout: ColumnLayout | None = None
        self.input_kind: tuple[int, str] | None = None
        self.output_kind: tuple[int, str] | None = None
        self.accumulators: dict[str, ColumnAccumulator | HeldColumn] = {}
        self.json_rows: list[list[Any]] = []
        self.label_rows: list[np.ndarray] = []
        self.output_lines: list[pa.Array] = []
        self.output_predictions: list[Predictions] = []
        self.matched: np.ndarray | None = None  # bias: which ground truth records a record of the window took
        # Bias: the join waits for the last chunk (see ``Truth.positions``); until then every record of a
        # well-formed line is held, with the number of its line among those lines, and each line's key.
        self.line_keys: list[pa.Array] = []
        self.record_lines: list[np.ndarray] = []
        self.n_lines = 0
        self.features_locator = None
        expression = attributes.features_attribute or config.features
        self.features_name = (attributes.field_name("FeaturesAttribute") if attributes.features_attribute
                              else "features")
        if expression:
            self.features_locator = JsonLocator(expression, self.features_name)
        self.parser: ResponseParser | None = None
        self.n_rows = 0
        self.ground_truth_where: str | None = None  # the folders listed for ground truth, for messages

    # one chunk ---------------------------------------------------------------------------------
    def add(self, lines: CaptureLines) -> None:
        in_window = true_mask(pc.and_(pc.greater_equal(lines.time, self.start), pc.less(lines.time, self.end)))
        rows = np.flatnonzero(in_window)
        self.counts["invocations_in_window"] += len(rows)
        if not len(rows):
            return
        if len(rows) < len(lines):
            lines = lines.take(rows)
        keep = np.ones(len(lines), dtype=bool)
        self._require(lines.in_data, keep, lines.origin, "endpointInput", "Input")
        if self.bias:
            self._require(lines.out_data, keep, lines.origin, "endpointOutput", "Output")
        texts = decoded_payloads(lines.in_data, lines.in_encoding, keep, lines.origin, self.malformed, INPUT)
        kinds = payload_kinds(lines.in_encoding, lines.in_type, keep, lines.origin, self.malformed, "input")
        self.input_kind = _one_kind(self.input_kind, kinds, keep, lines.origin, "requests", self.malformed)
        if self.input_kind is None:
            return
        kind = KIND_LIST[self.input_kind[0]]
        if kind == CSV:
            records = self._fast_csv(lines, texts, keep)
            if records is None:
                records = csv_records(texts, keep)
        else:
            records = json_records(texts, kinds, keep, lines.origin, self.malformed, self.features_locator,
                                    self.features_name)
        per_line = np.bincount(records.parent, minlength=len(lines))
        outputs = self._outputs(lines, keep, per_line) if self.bias else None
        records = records.take(keep[records.parent]) if len(records.parent) else records
        per_line = np.bincount(records.parent, minlength=len(lines))
        self.counts["records_in_window"] += int(per_line.sum())
        if not len(records.parent):
            return
        self._check_widths(records, lines.origin, json_input=kind != CSV)
        if self.bias:  # held for the join in ``_join``
            kept = np.flatnonzero(keep)
            number = np.full(len(lines), -1, dtype=np.int64)
            number[kept] = np.arange(self.n_lines, self.n_lines + len(kept))
            self.n_lines += len(kept)
            self.line_keys.append(pc.coalesce(lines.inference_id, lines.event_id).take(pa.array(kept)))
            self.record_lines.append(number[records.parent])
            self._add_outputs(outputs, keep)
        self._add_records(records)

    def _fast_csv(self, lines: CaptureLines, texts: pa.Array, keep: np.ndarray) -> DataRecords | None:
        """The records through pyarrow's CSV reader, when no payload holds a quote or a carriage return."""
        if holds_any(texts, b'"\r'):
            return None
        first = np.flatnonzero(keep & true_mask(pc.greater(pc.binary_length(texts), 0)))
        if not len(first):
            return None
        if self.layout is None:
            head = texts[int(first[0])].as_py().lstrip("\n").split("\n", 1)[0]
            self._set_layout(head.count(",") + 1, lines.origin(int(first[0])), json_input=False)
        assert self.layout is not None
        return read_csv_records(texts, keep, self.layout.captured, self._accumulated())

    def _set_layout(self, n_values: int, where: str, json_input: bool) -> None:
        self.layout = ColumnLayout.build(self.config, self.attributes, self.bias, json_input, n_values, where)
        for name in self._accumulated():
            self.accumulators[name] = HeldColumn(name) if self.bias else ColumnAccumulator(name, pa.string())

    def _require(self, data: pa.Array, keep: np.ndarray, origin: Callable[[int], str], key: str, mode: str) -> None:
        for i in np.flatnonzero(~valid_mask(data) & keep).tolist():
            keep[i] = False
            self.malformed.add(origin(i), f"no captureData.{key} (the endpoint's CaptureOptions must include "
                                          f"{mode} for this monitor)")

    def _outputs(self, lines: CaptureLines, keep: np.ndarray, per_line: np.ndarray) -> tuple[int, Any]:
        """The responses, one per record, checked against their requests' record counts."""
        texts = decoded_payloads(lines.out_data, lines.out_encoding, keep, lines.origin, self.malformed, OUTPUT)
        kinds = payload_kinds(lines.out_encoding, lines.out_type, keep, lines.origin, self.malformed, "output")
        texts = self._model_answers(texts, kinds, keep, lines.origin)
        self.output_kind = _one_kind(self.output_kind, kinds, keep, lines.origin, "responses", self.malformed)
        if self.output_kind is None:
            return (-1, None)
        kind = KIND_LIST[self.output_kind[0]]
        if self.parser is None:
            predictor = self.config.predictor
            try:
                self.parser = ResponseParser(Predictor(
                    label=self.attributes.inference_attribute, probability=self.attributes.probability_attribute,
                    label_headers=predictor.label_headers if predictor is not None else None,
                    content_type=kind, accept_type=kind))
            except UserError as error:
                hint = _attribute_hint(kind, self.attributes.probability_attribute, self.attributes.inference_attribute)
                if self.counts.get("explanation_documents"):
                    hint += (". The captured responses are explanation documents (an endpoint with ExplainerConfig): "
                             f"the attributes read the model's answer they carry (predictions.data, {kind}), as for "
                             "an endpoint without explanations")
                raise UserError(self._named(str(error)) + hint) from None
        if kind == JSON:  # one document per response: parsed per request
            parsed: dict[int, Predictions] = {}
            for i in np.flatnonzero(keep).tolist():
                try:
                    parsed[i] = self.parser.parse(texts[i].as_py().encode("utf-8"), int(per_line[i]))
                except UserError as error:
                    keep[i] = False
                    self.malformed.add(lines.origin(i), f"captured output: {self._named(str(error))}")
            return (self.output_kind[0], parsed)
        texts = pc.if_else(pa.array(keep), texts, pa.scalar("", pa.string()))
        if has_blank_line(texts.filter(pa.array(keep))):
            counts = np.bincount(split_lines(texts)[1], minlength=len(lines))
        else:
            counts = record_counts(texts)
        for i in np.flatnonzero(keep & (counts != per_line)).tolist():
            keep[i] = False
            self.malformed.add(lines.origin(i), f"captured output holds {counts[i]} record(s) for the request's "
                                                f"{per_line[i]}")
        # One line per record once the trailing line break is gone: the responses joined by line breaks
        # are one body for the parser.
        return (self.output_kind[0], pc.utf8_rtrim(texts, characters="\r\n"))

    def _named(self, text: str) -> str:
        """A response parser's message with the attributes' names (``ProbabilityAttribute``), not the
        config keys the parser calls them by: the parser's locators come from the job definition."""
        return self.attributes.named(text, PARSER_KEYS)

    def _model_answers(self, texts: pa.Array, kinds: np.ndarray, keep: np.ndarray,
                       origin: Callable[[int], str]) -> pa.Array:
        """``texts`` with every explanation document (the answer of an endpoint with ``ExplainerConfig``,
        online-explainability.md 5) replaced by the model's answer it carries, ``predictions.data``, and
        ``kinds`` (in place) by that answer's format, ``predictions.content_type``: the attributes then read
        the model's answer exactly as they read the response of an endpoint without explanations."""
        json_kind = KIND_LIST.index(JSON)
        candidates = np.flatnonzero(keep & (kinds == json_kind))
        if not len(candidates):
            return texts
        maybe = true_mask(pc.match_substring(texts.take(pa.array(candidates)), '"predictions"'))
        candidates = candidates[maybe]
        if not len(candidates):
            return texts
        answers: list[str] = []
        replaced: list[int] = []
        for i in candidates.tolist():
            try:
                document = orjson.loads(texts[i].as_py())
            except orjson.JSONDecodeError:
                continue  # the parser names it
            answer = explanation_answer(document)
            if answer is None:
                continue
            content_type, data = answer
            kind = media_type(content_type)
            if kind not in KIND_LIST:
                keep[i] = False
                kinds[i] = -1
                self.malformed.add(origin(i), f"captured output: an explanation document whose model answer "
                                              f"(predictions.content_type {content_type!r}) is neither CSV nor JSON")
                continue
            kinds[i] = KIND_LIST.index(kind)
            answers.append(data)
            replaced.append(i)
        self.counts["explanation_documents"] += len(replaced)
        if not replaced:
            return texts
        mask = np.zeros(len(texts), dtype=bool)
        mask[replaced] = True
        return pc.replace_with_mask(texts, pa.array(mask), pa.array(answers, pa.string()))

    def _add_outputs(self, outputs: tuple[int, Any] | None, keep: np.ndarray) -> None:
        assert outputs is not None
        kind, value = outputs
        if KIND_LIST[kind] == JSON:
            self.output_predictions.extend(value[i] for i in np.flatnonzero(keep).tolist())
        else:
            self.output_lines.append(value.filter(pa.array(keep)))

    def _join(self, truth: Truth) -> None:
        """Every held record takes its request's ground truth; records without one are dropped.

        A ground truth record holds one label, or one per record of its request (``_csv_labels``): the
        request's j-th record takes the j-th. One label for a request of several records is copied to each
        of them (counted and logged); another number of labels than the request's records leaves the request
        out (counted and logged, as records without ground truth are)."""
        self.truth = truth
        self.matched = np.zeros(truth.n_records, dtype=bool)
        keys = pa.concat_arrays(self.line_keys) if self.line_keys else pa.array([], pa.string())
        position = self.truth.positions(keys)
        joined = position >= 0
        self.matched[position[joined]] = True
        lines = np.concatenate(self.record_lines) if self.record_lines else np.empty(0, dtype=np.int64)
        per_line = np.bincount(lines, minlength=len(keys))  # records of each request
        labels = np.zeros(len(keys), dtype=np.int64)  # labels of each request's ground truth
        labels[joined] = truth.label_counts[position[joined]]
        mismatched = joined & (labels > 1) & (labels != per_line)
        copied = joined & (labels == 1) & (per_line > 1)
        self._report_label_counts(keys, per_line, labels, mismatched, copied)
        joined &= ~mismatched
        chosen = joined[lines]
        self.counts["records_without_ground_truth"] = int(len(chosen) - np.count_nonzero(chosen))
        # The j-th record of a request with a label per record takes the j-th label; otherwise the one label.
        order = np.argsort(lines, kind="stable")
        index = np.empty(len(lines), dtype=np.int64)
        index[order] = np.arange(len(lines)) - np.searchsorted(lines[order], lines[order])
        record_labels = labels[lines[chosen]]
        own = (record_labels > 1) & (record_labels == per_line[lines[chosen]])
        rows = truth.label_starts[position[lines[chosen]]] + np.where(own, index[chosen], 0)
        self.label_rows = [rows]
        self.n_rows = int(np.count_nonzero(chosen))
        if self.output_predictions:
            self.output_predictions = [p for p, j in zip(self.output_predictions, joined.tolist(), strict=True) if j]
        if self.output_lines:
            self.output_lines = [pa.concat_arrays(self.output_lines).filter(pa.array(joined))]
        if self.json_rows:
            self.json_rows = [row for row, c in zip(self.json_rows, chosen.tolist(), strict=True) if c]
        for name, held in self.accumulators.items():
            assert isinstance(held, HeldColumn)
            self.accumulators[name] = held.accumulator(chosen)
        self.line_keys, self.record_lines = [], []

    def _report_label_counts(self, keys: pa.Array, per_line: np.ndarray, labels: np.ndarray, mismatched: np.ndarray,
                             copied: np.ndarray) -> None:
        """Count and log the multi-record requests whose one label is copied to each of their records, and
        those whose ground truth has another number of labels than they have records (left out)."""
        n_copied = int(per_line[copied].sum())
        n_mismatched = int(per_line[mismatched].sum())
        self.counts["records_with_copied_ground_truth"] = n_copied
        self.counts["records_with_mismatched_ground_truth"] = n_mismatched
        if n_copied:
            log.warning("%d record(s) of %d multi-record request(s) got a copy of their request's one ground truth "
                        "label (labels are joined per request, on its inference id); to give each record its own, "
                        "put one label per line in groundTruthData.data, as many as the request's records",
                        n_copied, int(np.count_nonzero(copied)))
        if n_mismatched:
            examples = [f"{keys[int(i)].as_py()!r} ({labels[i]} labels, {per_line[i]} records)"
                        for i in np.flatnonzero(mismatched)[:MAX_EXAMPLES]]
            log.warning("%d record(s) of %d request(s) are left out: their ground truth holds another number of "
                        "labels (one per line) than the request has records: %s", n_mismatched,
                        int(np.count_nonzero(mismatched)), "; ".join(examples))

    def _check_widths(self, records: DataRecords, origin: Callable[[int], str], json_input: bool) -> None:
        if records.columns is not None:
            return  # the CSV reader saw every row with the layout's width
        if records.lines is not None:
            widths = pc.add(pc.count_substring(records.lines, ","), 1).to_numpy(zero_copy_only=False)
        else:
            assert records.rows is not None
            widths = np.fromiter((len(row) for row in records.rows), dtype=np.int64, count=len(records.rows))
        first_parent = int(records.parent[0])
        if self.layout is None:
            self._set_layout(int(widths[0]), _record_origin(origin, records, 0), json_input)
        expected = len(self.layout.captured)
        wrong = np.flatnonzero(widths != expected)
        if len(wrong):
            i = int(wrong[0])
            raise UserError(
                f"{_record_origin(origin, records, i)} has {widths[i]} feature value(s), but the window's "
                f"records have {expected} ({', '.join(self.layout.captured[:8])}"
                f"{', ...' if expected > 8 else ''}; `headers` minus the label)"
                + (f", as {_record_origin(origin, records, 0)} has" if first_parent != int(records.parent[i]) else "")
                + ". Every captured request must send the same features.")

    def _accumulated(self) -> list[str]:
        """The captured columns the dataset needs: role columns, and the features when asked for."""
        assert self.layout is not None
        names = [n for n in self.layout.roles.values() if n in self.layout.captured]
        if self.need_features:
            names += self.layout.feature_names
        return list(dict.fromkeys(names))

    def _add_records(self, records: DataRecords) -> None:
        assert self.layout is not None
        n = len(records.parent)
        self.n_rows += n
        if not n:
            return
        width = len(self.layout.captured)
        if KIND_LIST[self.input_kind[0]] != CSV:
            assert records.rows is not None
            self.json_rows.extend(records.rows)
            return
        if records.columns is not None:
            for name, accumulator in self.accumulators.items():
                accumulator.add(records.columns[name])
        elif records.lines is not None:
            # Split only as far as the last column needed (the role columns are often the first ones).
            last = max((self.layout.captured.index(name) for name in self.accumulators), default=-1)
            if last < 0:
                return
            fields = pc.split_pattern(records.lines, ",", max_splits=last + 1 if last + 1 < width else None)
            for name, accumulator in self.accumulators.items():
                accumulator.add(pc.list_element(fields, self.layout.captured.index(name)))
        else:
            assert records.rows is not None
            for name, accumulator in self.accumulators.items():
                j = self.layout.captured.index(name)
                accumulator.add(pa.array([row[j] for row in records.rows], pa.string()))

    # the dataset ---------------------------------------------------------------------------------
    def finish(self, source: str, truth: Truth | None = None) -> Dataset:
        """The ``Dataset``; ``truth`` (bias) is the ground truth the held records are joined with."""
        if self.bias:
            assert truth is not None
            self._join(truth)
        if self.n_rows == 0:
            raise UserError(self._empty_message())
        layout = self.layout
        assert layout is not None and self.input_kind is not None
        json_input = KIND_LIST[self.input_kind[0]] != CSV
        frame = pd.DataFrame(self.json_rows, columns=layout.captured) if json_input else None
        self.json_rows = []
        columns: dict[str, Column] = {}
        for name in dict.fromkeys(layout.roles.values()):
            if name == layout.label:
                continue
            columns[name] = (Column.from_series(frame[name], name=name) if frame is not None
                             else self.accumulators.pop(name).finish(infer_csv_values))
        label = predicted = None
        if self.bias:
            label = self._label_column(layout.label)
            predicted = self._predicted_column(layout.predicted)
            columns.setdefault(layout.label, label)
        dataset = Dataset(
            source=source, n_rows=self.n_rows, headers=layout.headers, feature_names=layout.feature_names,
            label=label, predicted_label=predicted,
            facets={layout.roles[key]: columns[layout.roles[key]] for key in layout.roles if key != "group"},
            group=columns[layout.roles["group"]] if "group" in layout.roles else None,
        )
        if self.need_features:
            values = {}
            for name in layout.feature_names:
                if frame is not None:
                    values[name] = frame[name]
                elif name in columns:
                    values[name] = columns[name].to_series()
                else:
                    values[name] = self.accumulators.pop(name).finish_values(infer_csv_values)
            dataset.features = pd.DataFrame(values, index=pd.RangeIndex(self.n_rows), copy=False)
        return dataset

    def _empty_message(self) -> str:
        counts = self.counts
        where = (f"{counts['capture_files']} capture file(s), {counts['captured_lines']} line(s) read, "
                 f"{counts['invocations_in_window']} invocation(s) in the window")
        if self.bias and counts["records_in_window"]:
            searched = (f" in {self.ground_truth_where}" if self.ground_truth_where and not counts["ground_truth_files"]
                        else "")
            return (f"None of the {counts['records_in_window']} captured record(s) in the window {self.window} "
                    f"has ground truth ({counts['ground_truth_records']} ground truth record(s) from "
                    f"{counts['ground_truth_files']} file(s){searched}; records are joined on "
                    "eventMetadata.inferenceId, else eventId, against the ground truth's eventMetadata.eventId)")
        return f"No captured records in the window {self.window} ({where})"

    def _label_column(self, name: str | None) -> Column:
        assert self.truth is not None and name is not None
        rows = np.concatenate(self.label_rows) if self.label_rows else np.empty(0, dtype=np.int64)
        if self.truth.csv_labels is not None:
            accumulator = ColumnAccumulator(name, pa.string())
            accumulator.add(self.truth.csv_labels.take(pa.array(rows)))
            return accumulator.finish(infer_csv_values)
        assert self.truth.json_labels is not None
        values = self.truth.json_labels
        return Column.from_series(pd.Series([values[i] for i in rows.tolist()]), name=name)

    def _predicted_column(self, name: str | None) -> Column:
        assert self.parser is not None and name is not None
        if self.output_predictions:
            predictions = Predictions.concat(self.output_predictions)
        else:
            body = joined_texts(pa.concat_arrays(self.output_lines)).to_pybytes()
            try:
                predictions = self.parser.parse(body, self.n_rows)
            except UserError as error:
                raise UserError(f"captured output: {self._named(str(error))}") from None
        threshold = (self.attributes.probability_threshold_attribute
                     if self.attributes.probability_threshold_attribute is not None
                     else self.config.probability_threshold)
        labels = predicted_labels_for_bias(predictions, threshold, name=name)
        return Column.from_series(labels, name=name)


def has_blank_line(texts: pa.Array) -> bool:
    """Whether a text has an empty or whitespace-only line (an empty text is one; the empty "line" after
    a final line break is not)."""
    space = r"[ \t\f\v\r]"
    pattern = rf"^{space}*(?:\n|$)|\n{space}*\n|\n{space}+$"
    return bool(pc.any(pc.match_substring_regex(texts, pattern)).as_py())


def _attribute_hint(kind: str, *attributes: str | None) -> str:
    """A hint for an attribute the window's responses cannot use: a column index for JSON responses."""
    if kind in (JSON, JSON_LINES) and any(a is not None and a.strip().isdigit() for a in attributes):
        return (f". The window's captured responses are {kind}: there the attribute is a JMESPath expression "
                "(such as score or probabilities[1]); a column index applies to text/csv responses")
    return ""


def _one_kind(seen: tuple[int, str] | None, kinds: np.ndarray, keep: np.ndarray, origin: Callable[[int], str],
              what: str, malformed: MalformedLines) -> tuple[int, str] | None:
    """The window's one payload format for ``what``: the most common among the first lines that have one.

    A window's traffic is one model's, in one format; a line in another (a caller who sent another
    Content-Type) is a malformed line: skipped, counted and named, so that one stray request cannot stop
    the execution (more than 1 % of them still do, as other malformed lines)."""
    present = np.flatnonzero(kinds >= 0)
    if not len(present):
        return seen
    if seen is None:
        chosen = int(np.argmax(np.bincount(kinds[present], minlength=len(KIND_LIST))))
        seen = (chosen, origin(int(present[kinds[present] == chosen][0])))
    for i in np.flatnonzero((kinds >= 0) & (kinds != seen[0])).tolist():
        malformed.add(origin(i), f"captured {what} in {KIND_LIST[int(kinds[i])]}; the window's {what} are "
                                 f"{KIND_LIST[seen[0]]} (as {seen[1]}), and a monitor reads one format")
        keep[i] = False
        kinds[i] = -1
    return seen


def _record_origin(origin: Callable[[int], str], records: DataRecords, i: int) -> str:
    parent = int(records.parent[i])
    first = int(np.searchsorted(records.parent, parent))
    count = int(np.searchsorted(records.parent, parent, side="right")) - first
    return origin(parent) + (f" (record {i - first + 1} of {count})" if count > 1 else "")


def _naive_utc(when: datetime) -> datetime:
    return (when if when.tzinfo is None else when.astimezone(UTC)).replace(tzinfo=None)
