"""The job's explanations: ``methods.shap`` and ``methods.pdp`` on the dataset, through the model endpoint.

``explain_dataset`` is the one entry point (called by ``analyzer.pipeline``). It resolves the config
(features to explain, baseline, budget, seed), runs Kernel SHAP sharded over worker processes with
checkpoints (``shards``), writes ``explanations_shap/{baseline,out,out_stderr}.csv`` and returns the
``explanations`` section of ``analysis.json``. See docs/kernel-shap.md ("In the job").
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analyzer import __version__, media
from analyzer.config import AnalysisConfig
from analyzer.config.model import Locator, ShapMethod
from analyzer.data import Dataset, load_dataset, resolve_local_path
from analyzer.data.csv_format import read_first_record
from analyzer.data.files import list_data_files, open_stream
from analyzer.data.locate import show_headers, suggest
from analyzer.engines import engine_choice, job_engine
from analyzer.errors import DataError, UserError
from analyzer.output import OutputStaging, write_text_atomic
from analyzer.predict import ModelEndpoint, Predictions
from analyzer.progress import progress

from .aggregate import aggregate
from .baseline import compute_baseline
from .checkpoint_store import CheckpointMirror, CheckpointStore, fingerprint, remove_checkpoints
from .design import MIN_NUM_SAMPLES, make_design
from .kernel_shap import Explanation, KernelShap, baseline_expected_value, fit_kernel_shap
from .limits import PY_STRING_BYTES, check_num_clusters, check_pdp_memory, check_shap_memory
from .pdp import free_text_columns, labels_not_scores, partial_dependence
from .shards import (
    DEFAULT_TEXT_SHARD_ROWS,
    IN_PROCESS_ROWS_PER_WORKER,
    IN_PROCESS_TEXT_ROWS_PER_WORKER,
    ShapSettings,
    TextShapSettings,
    configured_shard_rows,
    discard_entry,
    even_bounds,
    planned_workers,
    run_shards,
    run_text_shards,
    shard_size,
    tabular_shard_rows,
    text_shard_bounds,
    wide_rows,
)
from .text_job import (
    TEXT_BASELINE,
    feature_data_types,
    record_units,
    rows_for_players,
    synthetic_rows,
    text_baseline_values,
    text_columns,
    text_section,
    warn_thin_budgets,
    write_text_local,
)
from .text_shap import TextKernelShap, player_counts
from .text_units import rough_unit_count

log = logging.getLogger(__name__)

SHAP_DIR = "explanations_shap"
STDERR_KEY = "lucent_global_shap_stderr"  # Lucent extension beside global_shap_values
# Called with the local values of every record (dataset order), the explained features and the outputs:
# how per-segment global values (analyzer/segments) reuse them without another model call.
LocalShapHook = Callable[[Explanation, list[str], list[str]], None]


def explain_dataset(config: AnalysisConfig, dataset: Dataset, endpoint: ModelEndpoint | None,
                    staging: OutputStaging, work_dir: Path, *, base_dir: Path | None,
                    model_identity: str = "", on_local: LocalShapHook | None = None,
                    checkpoint_store: CheckpointStore | None = None) -> dict[str, Any]:
    """Run ``methods.shap`` and ``methods.pdp``; return ``analysis.json``'s ``explanations`` (may be empty).
    ``on_local``: given tabular SHAP's local values once they are computed. ``checkpoint_store``: where the
    shards' checkpoints are also kept, so that a rerun on another machine resumes (checkpoint_store.py).

    ``work_dir``: the output folder's work area (``<output>/.lucent-work``), where finished shards are
    checkpointed; it survives a failed run so that the next run resumes, and is removed on success.
    ``base_dir``: folder that relative baseline paths are taken from, given by the caller (the job passes
    the config file's folder); None: the current directory. The analyzer never guesses job folders.
    ``model_identity``: text that changes whenever the model does (the caller's digest of the model's
    files, its URL or its image); part of the checkpoints' fingerprint, so that a resumed run never mixes
    values of two models. Empty: the model is known only by its scores on the baseline rows, which a model
    changed elsewhere can keep.
    """
    shap, pdp = config.methods.shap, config.methods.pdp
    if shap is None and pdp is None:
        return {}
    if endpoint is None or dataset.features is None:
        raise UserError("methods.shap / methods.pdp need a model (predictor) and the dataset's features")
    try:
        explanations = _explain(config, dataset, endpoint, staging, work_dir, base_dir, model_identity, on_local,
                                checkpoint_store)
    except BaseException:
        if not any((work_dir / "shap").glob("**/shard-*.npz")):  # image SHAP: a folder per segment count
            _remove_work_area(work_dir)  # nothing to resume from: leave no trace in the output folder
        raise
    _remove_work_area(work_dir)
    if checkpoint_store is not None and shap is not None:
        remove_checkpoints(checkpoint_store)
    return explanations


def _explain(config: AnalysisConfig, dataset: Dataset, endpoint: ModelEndpoint, staging: OutputStaging,
             work_dir: Path, base_dir: Path | None, model_identity: str,
             on_local: LocalShapHook | None = None, checkpoint_store: CheckpointStore | None = None) -> dict[str, Any]:
    shap, pdp = config.methods.shap, config.methods.pdp
    if pdp is not None:
        check_pdp_memory(pdp, dataset, pdp_grid_columns(config, dataset))  # before SHAP: not after hours of it
    explanations: dict[str, Any] = {}
    global_values: dict[str, dict[str, float]] | None = None
    text_features: frozenset[str] = frozenset()
    if shap is not None and config.dataset_type == media.IMAGE:  # segments, not columns: image_job.py
        from .image_job import explain_images  # it imports this module's helpers

        return explain_images(config, shap, dataset, endpoint, staging, work_dir / "shap", base_dir, model_identity,
                              checkpoint_store)
    if shap is not None:
        explanations["kernel_shap"] = explain_shap(config, shap, dataset, endpoint, staging, work_dir / "shap",
                                                   base_dir, model_identity, on_local, checkpoint_store)
        global_values = {key: entry["global_shap_values"] for key, entry in explanations["kernel_shap"].items()}
        text_features = frozenset(name for entry in explanations["kernel_shap"].values()
                                  for name in entry.get("global_top_shap_text", {}))
    if pdp is not None:
        # SHAP's label keys name PDP's outputs too: one name per model output in one analysis.json (the
        # keys can come from predicted values, spec 4.3, which differ between the baseline and PDP's grid).
        explanations["pdp"] = partial_dependence(pdp, dataset, endpoint, global_values,
                                                 seed=shap.seed if shap is not None and shap.seed is not None else 0,
                                                 text_features=text_features, engine=job_engine(config),
                                                 label_keys=list(explanations["kernel_shap"]) if shap else None,
                                                 text_language=shap.text_config.language
                                                 if shap is not None and shap.text_config is not None else None)
    return explanations


@dataclass(frozen=True)
class ShapInputs:
    """The resolved ``methods.shap``: what the values depend on (and the fingerprint is made of)."""

    baseline: pd.DataFrame  # feature_names columns
    features: tuple[int, ...]  # explained columns, indices into dataset.feature_names, ascending
    num_samples: int | None
    use_logit: bool


def explain_shap(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, endpoint: ModelEndpoint,
                 staging: OutputStaging, work_dir: Path, base_dir: Path | None,
                 model_identity: str = "", on_local: LocalShapHook | None = None,
                 checkpoint_store: CheckpointStore | None = None) -> dict[str, Any]:
    """Kernel SHAP of every record: writes the local files, returns ``explanations.kernel_shap``."""
    assert dataset.features is not None
    started = time.perf_counter()
    text = _text_inputs(shap, dataset)  # checks every text before anything else runs
    check_num_clusters(shap, dataset)
    baseline_frame = shap_baseline(config, shap, dataset, base_dir, text.columns if text else ())
    if text:
        baseline_frame = text_baseline_values(baseline_frame, text.columns)
    inputs = ShapInputs(baseline=baseline_frame, features=features_to_explain(shap.features_to_explain, dataset),
                        num_samples=shap.num_samples, use_logit=shap.use_logit)
    _check_shap_memory(shap, dataset, inputs.features, text, len(inputs.baseline))
    _warn_small_budget(inputs.num_samples, len(inputs.features), text is not None)
    write_table(staging.path(f"{SHAP_DIR}/baseline.csv"), inputs.baseline)
    baseline = inputs.baseline.to_numpy()

    # The baseline scores name the outputs (label keys) and take part in the fingerprint, beside the
    # model's identity: a checkpoint made with another model is not reused.
    answer: Predictions | None = None
    try:
        with endpoint.client() as client:
            answer = client.predict(inputs.baseline)
        answer.scores  # noqa: B018 -- reads the scores: a value that is not a number fails here
    except UserError as error:  # its rows are the baseline's, not the dataset's: say so
        labels = labels_not_scores("methods.shap", error) or labels_not_scores("methods.shap", predictions=answer)
        if labels is not None:
            raise labels from None
        raise UserError(f"methods.shap.baseline: scoring the baseline rows failed (rows are numbered within "
                        f"the baseline, 0-based): {error}") from None
    assert answer is not None
    predictions = answer
    label_keys = score_keys(config, predictions)
    fingerprint = _fingerprint(config, shap, dataset, inputs, text, predictions.scores, model_identity)
    checkpoint_dir, seed, mirror = _work_folder(work_dir, fingerprint, shap.seed, checkpoint_store)

    if text:
        return _explain_text(shap, dataset, text, inputs, endpoint, staging, checkpoint_dir, seed, label_keys,
                             predictions.scores, started, mirror)

    # The main process only assembles the shards: it needs the design and the expected value, and the
    # model's scores for the baseline rows (the only rows it asks for) are already known.
    # One BLAS thread: the design's products would otherwise leave BLAS threads spinning on the cores the
    # model server needs (~0.1 s of CPU at M = 20).
    _check_finite_baseline(predictions.scores, inputs.use_logit)
    with threadpool_limits(limits=1):
        fitted = fit_kernel_shap(baseline, predictions.scores, num_samples=inputs.num_samples, seed=seed,
                                 use_logit=inputs.use_logit, features_to_explain=list(inputs.features))
    explainer = KernelShap.from_fit(fitted, None)  # assembles the shards' checkpoints: never scores
    log.info("SHAP n_samples %d (%d coalitions), %d baseline row(s), %d feature(s) explained, %d output(s) %s",
             max(inputs.num_samples, MIN_NUM_SAMPLES) if inputs.num_samples else len(explainer.design.masks),
             len(explainer.design.masks), len(baseline),
             len(inputs.features), len(label_keys), label_keys)
    settings = ShapSettings(endpoint=endpoint, baseline=baseline, num_samples=inputs.num_samples, seed=seed,
                            use_logit=inputs.use_logit, features=inputs.features, checkpoint_dir=checkpoint_dir,
                            fitted=fitted, mirror=mirror)
    rows_per_record = (len(explainer.design.masks) + 2) * len(baseline) + 1
    records = dataset.features.to_numpy()
    size = shard_size(rows_per_record, tabular_shard_rows(records.shape[1]))
    with progress("SHAP", total=len(records), unit="records") as bar:
        local = run_shards(settings, records, size, explainer,
                           on_done=lambda i: bar.update(min(size, len(records) - i * size)), engine=job_engine(config))

    names = [dataset.feature_names[j] for j in inputs.features]
    if on_local is not None:
        on_local(local, names, label_keys)
    if shap.save_local_shap_values:
        joinsource = dataset.joinsource
        ids = joinsource.to_series().rename(joinsource.name) if joinsource is not None else None
        if local_shap_output(config) == "parts":  # Clarify's Spark layout: out.csv/part-00000-c000.csv, ...
            for name, values in (("out.csv", local.values), ("out_stderr.csv", local.stderr)):
                write_local_parts(staging, f"{SHAP_DIR}/{name}", values, names, label_keys, ids,
                                  even_bounds(len(records), size))
        else:
            write_local(staging.path(f"{SHAP_DIR}/out.csv"), local.values, names, label_keys, ids)
            write_local(staging.path(f"{SHAP_DIR}/out_stderr.csv"), local.stderr, names, label_keys, ids)
    result = shap_section(local, shap.agg_method, names, label_keys)
    log.info("Kernel SHAP of %d records done in %.2f s", len(records), time.perf_counter() - started)
    return result


def score_keys(config: AnalysisConfig, predictions: Predictions) -> list[str]:
    """The outputs' names (``Predictions.score_keys``), after checking that ``predictor.label_headers`` names
    as many outputs as the model returns: a mismatch is that key's error, whichever rows were scored."""
    predictor = config.predictor
    headers = predictor.label_headers if predictor is not None else None
    width = predictions.scores.shape[1]
    if predictor is not None and headers is not None and len(headers) != width:
        chosen = next((f" (what predictor.{key} {value!r} selects from the model's answer)"
                       for key, value in (("probability", predictor.probability), ("label", predictor.label))
                       if value is not None), "")
        raise UserError(f"predictor.label_headers: {len(headers)} header(s) {list(headers)} but the model returns "
                        f"{width} score(s) per record{chosen}; give one header per score, in the scores' order")
    return predictions.score_keys()


def pdp_grid_columns(config: AnalysisConfig, dataset: Dataset) -> list[int] | None:
    """The ``methods.pdp.features`` that get a grid (not free text, ``pdp.free_text_columns``), for the memory
    check made before anything runs; None when the features are SHAP's top ones (known after SHAP) or a
    feature is not found (PDP reports that)."""
    pdp, shap = config.methods.pdp, config.methods.shap
    if pdp is None or pdp.features is None or dataset.features is None:
        return None
    text_config = shap.text_config if shap is not None else None
    try:
        columns = [feature_index(loc, dataset, "methods.pdp.features") for loc in pdp.features]
        named = [feature_index(loc, dataset, "methods.shap.text_config.text_features")
                 for loc in (text_config.text_features or [])] if text_config is not None else []
    except UserError:
        return None
    free = free_text_columns(dataset, columns, frozenset(dataset.feature_names[j] for j in named),
                             text_config.language if text_config is not None else None)
    return [j for j in columns if j not in free]


def _warn_small_budget(num_samples: int | None, n_features: int, text: bool) -> None:
    """Say so when ``num_samples`` is below the smallest budget a design uses (``MIN_NUM_SAMPLES``, one
    complementary pair of coalitions) and the design is raised to it. One explained feature needs no
    coalition: its value is exact whatever the budget."""
    if num_samples is not None and num_samples < MIN_NUM_SAMPLES and (text or n_features > 1):
        log.warning("methods.shap.num_samples: %d is below the smallest budget, one complementary pair of "
                    "coalitions; using num_samples %d", num_samples, MIN_NUM_SAMPLES)


def expected_shap_workers(config: AnalysisConfig, dataset: Dataset) -> int:
    """The worker processes ``methods.shap`` will most likely run on this machine with the model scored
    in process, told before the model is loaded (``shards.spare_workers`` starts them then).

    Counted as ``explain_shap`` counts them, from the records and the coalition budget, with the fewest
    baseline rows the config allows (a computed baseline has one at least) and no checkpoint done (text:
    from a rough count of each record's units, ``_expected_text_workers``): a job that turns out to need
    another number runs its own pool. 1 for anything else (no SHAP, images, the Spark engine, features the
    config names wrongly: the SHAP step reports those).
    """
    shap = config.methods.shap
    if (shap is None or config.dataset_type == media.IMAGE or dataset.features is None
            or engine_choice(config).name != "local"):
        return 1
    baseline_rows = _fewest_baseline_rows(shap)
    if shap.text_config is not None:
        return _expected_text_workers(config, shap, dataset, baseline_rows)
    try:
        features = features_to_explain(shap.features_to_explain, dataset)
        # A design too large for the memory is the SHAP step's error to report, not to be built here.
        _check_shap_memory(shap, dataset, features, None, baseline_rows)
        coalitions = len(make_design(len(features), shap.num_samples, seed=0).masks)  # the seed changes no count
    except (UserError, ValueError):
        return 1
    n = len(dataset.features)
    n_columns = len(dataset.feature_names)
    size = shard_size((coalitions + 2) * baseline_rows + 1, tabular_shard_rows(n_columns))
    return max(1, planned_workers(len(even_bounds(n, size)) - 1, n * (coalitions + 1) * baseline_rows,
                                  wide_rows(IN_PROCESS_ROWS_PER_WORKER, n_columns), config.predictor.max_concurrency))


def _expected_text_workers(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, baseline_rows: int) -> int:
    """``expected_shap_workers`` of a text job, estimated without spaCy (its import and the split cost ~1 s,
    which the workers would wait for): the text features' units counted by ``rough_unit_count``, the rest
    as the text SHAP step counts them. A wrong guess costs little: a pool of another size is started anew."""
    assert dataset.features is not None and shap.text_config is not None
    names = dataset.feature_names
    if shap.text_config.text_features is not None:
        try:
            columns = sorted({feature_index(locator, dataset, "methods.shap.text_config.text_features")
                              for locator in shap.text_config.text_features})
        except UserError:
            return 1
    else:  # the string features: the free-text ones among them are found later, with spaCy
        columns = [j for j in range(len(names)) if dataset.features.iloc[:, j].dtype.kind not in "biuf"]
    if not columns:
        return 1
    granularity = shap.text_config.granularity
    players = np.full(len(dataset.features), len(names) - len(columns))
    for j in columns:
        players += np.fromiter((rough_unit_count(value, granularity) for value in dataset.features.iloc[:, j]),
                               dtype=int, count=len(dataset.features))
    per_record = np.array([rows_for_players(int(m), shap.num_samples, baseline_rows) for m in players])
    rows = int(per_record.sum())
    shards = len(text_shard_bounds(np.sort(per_record))) - 1  # ascending player count, as run_text_shards
    return max(1, planned_workers(shards, rows, IN_PROCESS_TEXT_ROWS_PER_WORKER, config.predictor.max_concurrency))


def _fewest_baseline_rows(shap: ShapMethod) -> int:
    """The baseline rows ``methods.shap`` has at least, told from the config alone: the rows given inline,
    ``num_clusters`` for a computed baseline, else one (a file or a document is read later)."""
    given = shap.baseline
    if given is None:
        return shap.num_clusters or 1
    if isinstance(given, list) and given and all(isinstance(row, list) for row in given):
        return len(given)
    return 1


def check_explain_inputs(config: AnalysisConfig, dataset: Dataset, base_dir: Path | None) -> list[str]:
    """Problems ``methods.shap`` / ``methods.pdp`` would stop on before asking the model anything (for
    ``lucent validate``): features to explain, text features and their texts, a configured baseline's
    shape, ``num_clusters`` beyond the rows, and jobs too large for the memory (``limits``)."""
    shap, pdp = config.methods.shap, config.methods.pdp
    if dataset.features is None:
        return []
    if shap is not None and config.dataset_type == media.IMAGE:
        from .image_job import image_source

        try:
            image_source(config, shap, dataset, base_dir)
        except UserError as error:
            return [str(error)]
        return []
    problems = []
    if pdp is not None:
        try:
            check_pdp_memory(pdp, dataset, pdp_grid_columns(config, dataset))
        except UserError as error:
            problems.append(str(error))
    if shap is None:
        return problems
    try:
        features = features_to_explain(shap.features_to_explain, dataset)
        text = _text_inputs(shap, dataset)
        check_num_clusters(shap, dataset)
        # A computed baseline has num_clusters rows, or as many as the clustering finds (at least one).
        n_baseline = shap.num_clusters or 1
        if shap.baseline is not None:
            baseline = shap_baseline(config, shap, dataset, base_dir, text.columns if text else ())
            if text:
                text_baseline_values(baseline, text.columns)
            n_baseline = len(baseline)
        _check_shap_memory(shap, dataset, features, text, n_baseline)
    except UserError as error:
        problems.append(str(error))
    return problems


def _check_shap_memory(shap: ShapMethod, dataset: Dataset, features: tuple[int, ...], text: _TextInputs | None,
                       n_baseline: int) -> None:
    assert dataset.features is not None
    n_columns = len(dataset.feature_names)
    if text is None:
        check_shap_memory(shap, n_players=len(features), n_columns=n_columns, n_baseline=n_baseline)
    elif text.units:
        # The longest record decides: its design and its synthetic rows, each with new strings as long as
        # its texts.
        players = int(player_counts(text.units, n_columns).max())
        chars = int(dataset.features.iloc[:, list(text.columns)].map(lambda v: len(v) if isinstance(v, str) else 0)
                    .sum(axis=1).max())
        check_shap_memory(shap, n_players=players, n_columns=n_columns, n_baseline=n_baseline,
                          row_extra_bytes=len(text.columns) * PY_STRING_BYTES + chars,
                          players="players (text units and other features of the longest record)")


@dataclass(frozen=True)
class _TextInputs:
    columns: tuple[int, ...]  # text features, indices into dataset.feature_names
    units: list  # units[i][t]: units of record i's t-th text feature


def _text_inputs(shap: ShapMethod, dataset: Dataset) -> _TextInputs | None:
    text_config = shap.text_config
    if text_config is None:
        return None
    explicit = None
    if text_config.text_features is not None:
        explicit = sorted({feature_index(locator, dataset, "methods.shap.text_config.text_features")
                           for locator in text_config.text_features})
    started = time.perf_counter()
    columns = text_columns(text_config, dataset, explicit)
    units = record_units(text_config, dataset, columns)
    counts = [sum(len(u) for u in record) for record in units]
    log.info("Split %d records into %s units (%s, %d to %d per record, %d in all) in %.2f s", len(units),
             text_config.granularity, text_config.language, min(counts), max(counts), sum(counts),
             time.perf_counter() - started)
    return _TextInputs(columns, units)


def _explain_text(shap: ShapMethod, dataset: Dataset, text: _TextInputs, inputs: ShapInputs,
                  endpoint: ModelEndpoint, staging: OutputStaging, checkpoint_dir: Path, seed: int,
                  label_keys: list[str], baseline_scores: np.ndarray, started: float,
                  mirror: CheckpointMirror | None = None) -> dict[str, Any]:
    assert dataset.features is not None and shap.text_config is not None
    baseline = inputs.baseline.to_numpy(dtype=object)
    _check_finite_baseline(baseline_scores, inputs.use_logit)
    explainer = TextKernelShap(None, baseline, text.columns, num_samples=inputs.num_samples, seed=seed,
                               use_logit=inputs.use_logit, baseline_scores=baseline_scores)
    n_columns = len(dataset.feature_names)
    rows = np.array([synthetic_rows(u, n_columns, inputs.num_samples, len(baseline)) for u in text.units])
    warn_thin_budgets(text.units, n_columns, inputs.num_samples)
    log.info("Text SHAP: %d records, %d baseline row(s), %d output(s) %s, %d synthetic rows in all", len(rows),
             len(baseline), len(label_keys), label_keys, int(rows.sum()))
    settings = TextShapSettings(endpoint=endpoint, baseline=baseline, text_columns=text.columns,
                                num_samples=inputs.num_samples, seed=seed, use_logit=inputs.use_logit,
                                checkpoint_dir=checkpoint_dir, baseline_scores=baseline_scores, mirror=mirror)
    with progress("Text SHAP", total=len(rows), unit="records") as bar:
        local = run_text_shards(settings, dataset.features.to_numpy(dtype=object), text.units, rows, explainer,
                                on_records=bar.update)
    names = dataset.feature_names
    if shap.save_local_shap_values:
        joinsource = dataset.joinsource
        write_text_local(staging.path(f"{SHAP_DIR}/out.jsonl"), local, text.units, text.columns, names,
                         feature_data_types(dataset, text.columns),
                         joinsource.to_series().tolist() if joinsource is not None else None)
    result = text_section(local, text.units, text.columns, names, label_keys, shap.agg_method,
                          shap.text_config.max_top_tokens)
    log.info("Kernel SHAP of %d text records done in %.2f s", len(rows), time.perf_counter() - started)
    return result


def shap_section(local: Explanation, agg_method: str, names: list[str], label_keys: list[str]) -> dict[str, Any]:
    """``explanations.kernel_shap`` (contract 4.3) plus Lucent's global standard errors."""
    glob = aggregate(local, agg_method)
    return {key: {"global_shap_values": dict(zip(names, glob.values[:, c].tolist(), strict=True)),
                  "expected_value": float(glob.expected_value[c]),
                  STDERR_KEY: dict(zip(names, glob.stderr[:, c].tolist(), strict=True))}
            for c, key in enumerate(label_keys)}


# -- config resolution -------------------------------------------------------------------------------

def features_to_explain(locators: list[Locator] | None, dataset: Dataset) -> tuple[int, ...]:
    """Indices into ``dataset.feature_names`` of the features to explain (all when not configured)."""
    if locators is None:
        return tuple(range(len(dataset.feature_names)))
    return tuple(sorted({feature_index(locator, dataset, "methods.shap.features_to_explain")
                         for locator in locators}))


def feature_index(locator: Locator, dataset: Dataset, key: str) -> int:
    """The feature column a locator (header name, or 0-based index into the dataset's headers) names."""
    if isinstance(locator, int) and not isinstance(locator, bool):
        if not 0 <= locator < len(dataset.headers):
            raise UserError(f"{key}: column index {locator} is out of range ({len(dataset.headers)} columns)")
        name = dataset.headers[locator]
    else:
        name = str(locator)
    if name in dataset.feature_names:
        return dataset.feature_names.index(name)
    roles = {"label": dataset.label, "predicted label": dataset.predicted_label, "joinsource": dataset.joinsource}
    role = next((r for r, c in roles.items() if c is not None and c.name == name), None)
    if role is not None:
        raise UserError(f"{key}: {name!r} is the {role} column, not a feature the model sees")
    raise UserError(f"{key}: {name!r} is not a feature column; features: {show_headers(dataset.feature_names)}."
                    f"{suggest(name, dataset.feature_names)}")


def shap_baseline(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, base_dir: Path | None,
                  text_columns: Sequence[int] = ()) -> pd.DataFrame:
    """The baseline rows (``feature_names`` columns): given inline, in a file, or computed by clustering.

    A computed baseline clusters the features other than ``text_columns``; text features get
    ``<PAD>``, the string that replaces a masked text unit.
    """
    assert dataset.features is not None
    names = dataset.feature_names
    given = shap.baseline
    if given is None:
        started = time.perf_counter()
        others = [j for j in range(len(names)) if j not in text_columns]
        frame = pd.DataFrame({names[j]: [TEXT_BASELINE] for j in text_columns}, columns=names)
        if others:
            table = dataset.features.iloc[:, others]
            categorical = [i for i, dtype in enumerate(table.dtypes) if dtype.kind not in "biuf"]
            rows = compute_baseline(table, shap.num_clusters, categorical=categorical,
                                    seed=shap.seed if shap.seed is not None else 0)
            frame = pd.DataFrame(rows, columns=[names[j] for j in others])
            for j in text_columns:
                frame.insert(j, names[j], TEXT_BASELINE)
        log.info("Computed a baseline of %d row(s) by clustering in %.2f s", len(frame), time.perf_counter() - started)
        return _typed_like(frame, dataset.features)
    if isinstance(given, list) and all(isinstance(row, list) for row in given):
        for i, row in enumerate(given):
            _check_width(len(row), names, dataset, f"row {i}")
        return _typed_like(pd.DataFrame(given, columns=names), dataset.features)
    if isinstance(given, str):
        path = resolve_local_path(given, base_dir=base_dir)
        return _load_baseline_file(config, path, dataset, given)
    # JSON Lines rows (objects) or a JSON document: read them with the dataset's own reader.
    return _load_baseline_document(config, given, dataset)


def _load_baseline_document(config: AnalysisConfig, given: list | dict, dataset: Dataset) -> pd.DataFrame:
    with tempfile.TemporaryDirectory(prefix="lucent-baseline-") as folder:
        path = Path(folder) / "baseline"
        if isinstance(given, list):
            path.write_text("\n".join(json.dumps(row) for row in given) + "\n", encoding="utf-8")
            doc_type = media.JSON_LINES
        else:
            path.write_text(json.dumps(given), encoding="utf-8")
            doc_type = media.JSON
        if config.dataset_type not in media.JSON_TYPES:
            raise UserError(f"methods.shap.baseline: rows as JSON objects need a JSON dataset, not {config.dataset_type}; "
                            "give CSV rows as lists of values")
        try:
            return _load_baseline_file(replace(config, dataset_type=doc_type), path, dataset, "the inline baseline",
                                       first_row_width="row 0" if isinstance(given, list) else None)
        except UserError as error:
            raise UserError(_inline_rows(str(error), path)) from None


def _inline_rows(message: str, path: Path) -> str:
    """``message`` about the temporary file an inline baseline was written to, told about the config's rows
    instead: ``<file> line N`` -> ``row N-1`` (0-based, as for rows given as lists), the file itself -> "the
    inline baseline" (the user never saw that file)."""
    shown = re.sub(re.escape(str(path)) + r" line (\d+)", lambda match: f"row {int(match.group(1)) - 1}", message)
    return shown.replace(str(path), "the inline baseline")


def _load_baseline_file(config: AnalysisConfig, path: Path, dataset: Dataset, what: str,
                        first_row_width: str | None = None) -> pd.DataFrame:
    """A baseline file in the dataset's format: features only (no label, no other role column).
    ``first_row_width``: how a width error names the rows (all of the same width, else the reader says
    which line differs); default: the file."""
    assert dataset.features is not None
    names = dataset.feature_names
    csv_like = config.dataset_type == media.CSV
    # The dataset's reader, told that there is no role column; CSV gets the feature names as headers, so a
    # header row equal to them (our own baseline.csv) is skipped and a wrong width is reported.
    side = replace(config, dataset_uri=None, headers=names if csv_like else None, label=None, predicted_label=None,
                   facet=[], group_variable=None, facet_dataset_uri=None, predicted_label_dataset_uri=None,
                   excluded_columns=None, joinsource_name_or_index=None, segment_config=None)
    try:
        if csv_like:
            _check_csv_width(path, names, dataset)
        table = load_dataset(side, path, need_features=True)
    except DataError as error:
        raise UserError(f"methods.shap.baseline ({what}): {error}") from None
    assert table.features is not None
    _check_width(table.features.shape[1], names, dataset, first_row_width or str(path))
    frame = table.features.set_axis(names, axis=1)
    if csv_like:
        frame = _round_trip_floats(frame, path)
    log.info("Read %d baseline row(s) from %s", len(frame), what)
    return _typed_like(frame, dataset.features)


def _round_trip_floats(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``frame`` (a CSV baseline as the dataset reader typed it) with each float column's values parsed
    again with Python's ``float``, which is correctly rounded: the dataset reader copies pandas' default
    float parser, which can miss the last bits of a 17-digit value (tens of ulps), so ``baseline.csv``
    (written with ``repr``) given back as the baseline would not give the same numbers. Only baselines are
    read this way (datasets keep pandas' values, as Clarify has them). A value is replaced only where the
    two parses agree to 1e-12, and none is when the raw records do not line up with the rows."""
    floats = [j for j, dtype in enumerate(frame.dtypes) if dtype.kind == "f"]
    if not floats or len(frame) == 0:
        return frame
    names = list(frame.columns)
    records: list[list[str]] = []
    try:
        for file in list_data_files(path):
            with open_stream(file) as stream:
                text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
                rows = [row for row in csv.reader(text) if row]
            if rows and [field.strip() for field in rows[0]] == names:
                rows = rows[1:]  # the header row the reader skipped
            records.extend(rows)
    except (OSError, UnicodeDecodeError, csv.Error, DataError):
        return frame
    if len(records) != len(frame) or any(len(row) != len(names) for row in records):
        return frame
    out = frame.copy()
    for j in floats:
        read = out.iloc[:, j].to_numpy(dtype=float)
        exact = read.copy()
        for i, row in enumerate(records):
            try:
                exact[i] = float(row[j])
            except ValueError:
                continue  # a missing-value word (NA, ...): the reader's NaN stays
        same = np.isclose(exact, read, rtol=1e-12, atol=0.0) | (np.isnan(exact) & np.isnan(read))
        out.isetitem(j, np.where(same, exact, read))
    return out


def _check_csv_width(path: Path, names: list[str], dataset: Dataset) -> None:
    for file in list_data_files(path):
        first = read_first_record(file)
        if first is not None:
            _check_width(len(first.fields), names, dataset, f"{file} line {first.line}")


def _check_width(width: int, names: list[str], dataset: Dataset, where: str) -> None:
    if width == len(names):
        return
    hint = ""
    if width == len(names) + 1 and dataset.label is not None:
        hint = f" (it looks like it includes the label column {dataset.label.name!r}; leave it out)"
    raise UserError(f"methods.shap.baseline: {where} has {width} values but the model has {len(names)} feature "
                    f"columns {names}; baseline rows hold the features only{hint}")


def _typed_like(frame: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Numeric baseline columns as float where the dataset's column is numeric (a category stays as given)."""
    out = frame.copy()
    for name in out.columns:
        if features[name].dtype.kind in "biuf":
            try:
                out[name] = pd.to_numeric(out[name]).astype(float)
            except (TypeError, ValueError):
                raise UserError(f"methods.shap.baseline: column {name!r} is numeric in the dataset but the baseline "
                                f"holds {out[name].tolist()[:5]}") from None
    return out


# -- files -------------------------------------------------------------------------------------------

def write_table(path: Path, frame: pd.DataFrame) -> None:
    """CSV with a header row; floats in full precision (the files must round-trip exactly)."""
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)  # floats: shortest repr that round-trips


def write_local(path: Path, values: np.ndarray, names: list[str], label_keys: list[str],
                ids: pd.Series | None) -> None:
    """``out.csv``: one row per record, columns ``<feature>_<label key>`` (label by label), ids first."""
    columns = [f"{name}_{key}" for key in label_keys for name in names]
    flat = values.transpose(0, 2, 1).reshape(len(values), -1)
    if ids is None and not np.isnan(flat).any():
        _write_floats(path, columns, flat)
        return
    frame = pd.DataFrame(flat, columns=columns)
    if ids is not None:
        frame.insert(0, str(ids.name), ids.to_numpy())
    write_table(path, frame)


def local_shap_output(config: AnalysisConfig) -> str:
    """``"lucent": {"local_shap_output": ...}``: ``"file"`` (one out.csv, the default) or ``"parts"``."""
    return str((config.lucent or {}).get("local_shap_output") or "file")


def write_local_parts(staging: OutputStaging, folder: str, values: np.ndarray, names: list[str],
                      label_keys: list[str], ids: pd.Series | None, bounds: list[int]) -> None:
    """``folder`` (``explanations_shap/out.csv``) as a folder of part files, one per shard
    (``bounds``), each with the header: the parts in name order, headers but the first dropped, are
    the bytes ``write_local`` writes for all the rows (Clarify's Spark output, contract 4.5)."""
    pairs = list(zip(bounds[:-1], bounds[1:], strict=True)) or [(0, 0)]  # no records: one part, the header
    for k, (first, stop) in enumerate(pairs):
        write_local(staging.path(f"{folder}/part-{k:05d}-c000.csv"), values[first:stop], names, label_keys,
                    None if ids is None else ids.iloc[first:stop])


def _write_floats(path: Path, columns: list[str], values: np.ndarray) -> None:
    """The bytes ``write_table`` writes for a float frame without NaN (``repr``: the shortest string that
    round-trips, as pandas writes them), twice as fast: out.csv of an Adult-sized job took 0.5 s."""
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(columns)
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(header.getvalue())
        for start in range(0, len(values), 10_000):  # a block at a time: one string per block, not per file
            out.write("".join([",".join(map(repr, row)) + "\n" for row in values[start:start + 10_000].tolist()]))


# -- work area ---------------------------------------------------------------------------------------

# Predictor keys that name or place things without changing any score: not part of the fingerprint.
_PREDICTOR_KEYS_NOT_IN_VALUES = frozenset({"label_headers", "instance_type", "initial_instance_count",
                                           "accelerator_type", "endpoint_name_prefix", "max_concurrency"})


def predictor_settings(config: AnalysisConfig) -> dict:
    """The predictor's keys that can change a score (its format, locators, model), for a fingerprint."""
    if config.predictor is None:
        return {}
    return {key: value for key, value in asdict(config.predictor).items() if key not in _PREDICTOR_KEYS_NOT_IN_VALUES}


def _fingerprint(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, inputs: ShapInputs,
                 text: _TextInputs | None, baseline_scores: np.ndarray, model_identity: str) -> str:
    """A digest of everything the checkpointed values and the shard boundaries depend on, and nothing else.

    In: the Lucent version, the feature data (values, types, names), the baseline rows, the explained
    features, ``num_samples``, ``use_logit``, the configured seed, the text settings, the predictor's
    request/response format and model, the model's identity (``explain_dataset``) and its scores for the
    baseline rows (a changed model is not mixed with old checkpoints) and the synthetic rows per shard
    (which decide each shard's records). Not in: keys that only shape the outputs (report, ``agg_method``,
    ``save_local_shap_values``, label names, bias methods, PDP), so that changing them keeps the finished
    shards.
    """
    assert dataset.features is not None
    predictor = predictor_settings(config)
    text_settings = None
    if text is not None and shap.text_config is not None:
        import spacy  # the tokenizer decides the units: its version is part of the values

        text_settings = (shap.text_config.granularity, shap.text_config.language, text.columns, spacy.__version__)
    shard_rows = (configured_shard_rows(DEFAULT_TEXT_SHARD_ROWS) if text is not None
                  else tabular_shard_rows(len(dataset.feature_names)))
    settings = dict(version=__version__, features=inputs.features, num_samples=inputs.num_samples,
                    use_logit=inputs.use_logit, seed=shap.seed, text=text_settings, predictor=predictor,
                    shard_rows=shard_rows, feature_names=dataset.feature_names, model=model_identity,
                    dtypes=[str(dtype) for dtype in dataset.features.dtypes])
    return fingerprint(settings, (pd.util.hash_pandas_object(dataset.features, index=False).to_numpy().tobytes(),
                                  pd.util.hash_pandas_object(inputs.baseline, index=False).to_numpy().tobytes(),
                                  np.ascontiguousarray(baseline_scores, dtype=float).tobytes()))


def _work_folder(work_dir: Path, fingerprint: str, seed: int | None, checkpoint_store: CheckpointStore | None,
                 ) -> tuple[Path, int, CheckpointMirror | None]:
    """This job's checkpoint folder in the work area (other fingerprints' folders removed), its coalition
    seed, and its mirror in ``checkpoint_store``, pulled first: the seed and the shards a lost run left there."""
    checkpoint_dir = work_dir / fingerprint
    _drop_stale(work_dir, keep=fingerprint)
    mirror = None if checkpoint_store is None else CheckpointMirror(checkpoint_store, fingerprint, checkpoint_dir)
    if mirror is not None:
        mirror.pull()
    return checkpoint_dir, _job_seed(seed, checkpoint_dir), mirror


def _job_seed(seed: int | None, checkpoint_dir: Path) -> int:
    """The coalition seed. Without a configured seed one is drawn, and kept with the checkpoints so that a
    resumed run uses the same design (all workers share it, so it is drawn once, here)."""
    if seed is not None:
        return seed
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    saved = checkpoint_dir / "seed.json"
    if os.path.lexists(saved):
        try:
            if saved.is_symlink():
                raise OSError("a link, not the file Lucent wrote")
            return int(json.loads(saved.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            # Shards made with a lost seed cannot be told apart from others: they are checked against the
            # seed each carries (shards.py) and recomputed.
            log.warning("SHAP: discarding unreadable %s (%s); drawing a new coalition seed", saved, error)
            discard_entry(saved)  # a folder or a link there would block the new seed's write
    # In the range methods.shap.seed accepts, and logged: a user can repeat the values by putting it there.
    drawn = int(np.random.SeedSequence().entropy % 2**32)
    write_text_atomic(saved, json.dumps(drawn))
    log.info("SHAP: no methods.shap.seed given; drew the coalition seed %d (give it as methods.shap.seed to "
             "draw the same coalitions again)", drawn)
    return drawn


def _drop_stale(work_dir: Path, keep: str) -> None:
    """Checkpoints of another config, dataset, baseline or model can never be reused: remove them."""
    if work_dir.is_dir() and not work_dir.is_symlink():
        for stale in work_dir.iterdir():
            if stale.name != keep or not stale.is_dir() or stale.is_symlink():
                log.info("Removing stale SHAP checkpoints %s", stale)
                discard_entry(stale)
    elif os.path.lexists(work_dir):
        log.info("Removing %s: not the SHAP checkpoints folder", work_dir)
        discard_entry(work_dir)


def _remove_work_area(work_dir: Path) -> None:
    discard_entry(work_dir / "shap")
    with contextlib.suppress(OSError):
        work_dir.rmdir()  # only when empty: other analyses may keep their own work there


def _check_finite_baseline(baseline_scores: np.ndarray, use_logit: bool) -> None:
    try:
        baseline_expected_value(baseline_scores, use_logit)
    except ValueError as error:
        raise UserError(f"methods.shap.baseline: {error}") from None


__all__ = ["check_explain_inputs", "explain_dataset", "explain_shap", "feature_index", "features_to_explain", "shap_baseline",
           "write_local"]
