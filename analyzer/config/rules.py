"""Rules that involve more than one key (spec clarify-contract.md sections 2, 5.2, 6.6-6.9).

Each rule reads the normalised config tree (the output of the schema pass, where a value that
failed its own check is ``INVALID``) and yields ``(key path, message)`` pairs. Messages reuse the
SageMaker SDK's wording where the SDK has one, so users can search for them.

A rule must not fire because of a problem the schema pass already reported: ``get`` returns None for
an ``INVALID`` value and ``has`` tells "present, even if invalid" from "absent".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from analyzer import media
from analyzer.config.model import IN_PROCESS
from analyzer.config.spec import INVALID, closest
from analyzer.segments.intervals import IntervalError, looks_like_interval, overlapping_lists, parse_interval

Tree = dict[str, Any]
Finding = tuple[str, str]
Rule = Callable[[Tree], Iterator[Finding]]

COLUMN_TYPES = (media.CSV, media.PARQUET)  # locators are column names or indexes
EXPLANATION_METHODS = ("shap", "pdp", "asymmetric_shapley_value")
ANALYSIS_METHODS = ("pre_training_bias", "post_training_bias", *EXPLANATION_METHODS)

RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def _walk(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def get(tree: Tree, dotted: str) -> Any:
    """The valid value at ``dotted`` ("methods.shap.baseline"), or None if absent or invalid."""
    value = _walk(tree, dotted)
    return None if value is INVALID else value


def has(tree: Tree, dotted: str) -> bool:
    """Whether the key is present (even with an invalid value)."""
    parent, _, key = dotted.rpartition(".")
    node = _walk(tree, parent) if parent else tree
    return isinstance(node, dict) and key in node


def methods(tree: Tree) -> dict[str, Any]:
    value = get(tree, "methods")
    return value if isinstance(value, dict) else {}


def needs_predictions(tree: Tree) -> str | None:
    """Why the job must call a model, or None. Shared with the 'predictor' rules."""
    present = methods(tree)
    explanations = [m for m in EXPLANATION_METHODS if m in present]
    if explanations:
        return f"methods.{explanations[0]} needs model predictions"
    if "post_training_bias" in present and not (has(tree, "predicted_label")
                                                or has(tree, "predicted_label_dataset_uri")):
        return "methods.post_training_bias needs model predictions when neither predicted_label " \
               "nor predicted_label_dataset_uri is given"
    return None


def model_content_type(tree: Tree) -> str | None:
    """``predictor.content_type`` as given, else its documented default (spec 2.5 / 5.1):
    the dataset format for CSV / JSON Lines / JSON, ``image/jpeg`` for images, none otherwise
    (Parquet has no default: the model cannot take Parquet)."""
    if has(tree, "predictor.content_type"):
        return get(tree, "predictor.content_type")
    dataset_type = get(tree, "dataset_type")
    if dataset_type in media.TABULAR_TYPES:
        return dataset_type
    return media.JPEG if dataset_type == media.IMAGE else None


def model_accept_type(tree: Tree) -> str | None:
    """``predictor.accept_type`` as given, else ``content_type`` (``application/json`` for images)."""
    if has(tree, "predictor.accept_type"):
        return get(tree, "predictor.accept_type")
    content_type = model_content_type(tree)
    if content_type is None:
        return None
    return content_type if content_type in media.TABULAR_TYPES else media.JSON


# -- methods --------------------------------------------------------------------------------------
@rule
def at_least_one_method(tree: Tree) -> Iterator[Finding]:
    if get(tree, "methods") is not None and not any(m in methods(tree) for m in ANALYSIS_METHODS):
        yield "methods", ("analysis_config must have at least one working method: One of the "
                          "`pre_training_methods`, `post_training_methods`, `explainability_config`. "
                          f"(one of {', '.join(ANALYSIS_METHODS)}; methods.report alone is not an analysis)")


@rule
def bias_inputs(tree: Tree) -> Iterator[Finding]:
    stages = [m for m in ("pre_training_bias", "post_training_bias") if m in methods(tree)]
    if not stages:
        return
    for key in ("label", "label_values_or_threshold", "facet"):
        if not has(tree, key):
            yield key, f"required by methods.{stages[0]}"
    seen: dict[str, int] = {}
    for i, facet in enumerate(get(tree, "facet") or []):
        name = facet.get("name_or_index") if isinstance(facet, dict) else None
        if isinstance(name, str | int) and not isinstance(name, bool):
            if str(name) in seen:  # analysis.json holds one result per facet column: one would be lost
                yield f"facet[{i}].name_or_index", (f"{name!r} is facet[{seen[str(name)]}] too: analysis.json keeps one "
                                                    "result per facet column; give it once, with all its values")
            seen.setdefault(str(name), i)


@rule
def shap_options(tree: Tree) -> Iterator[Finding]:
    if has(tree, "methods.shap.baseline") and has(tree, "methods.shap.num_clusters"):
        yield "methods.shap.num_clusters", ("Baseline and num_clusters cannot be provided together. "
                                            "Please specify one of the two.")
    to_explain = get(tree, "methods.shap.features_to_explain")
    if has(tree, "methods.shap.features_to_explain") and (has(tree, "methods.shap.text_config")
                                                          or has(tree, "methods.shap.image_config")):
        yield "methods.shap.features_to_explain", ("`features_to_explain` is not supported for datasets "
                                                   "containing text features or images.")
    for key in ("label", "predicted_label"):
        value = get(tree, key)
        if to_explain and value is not None and value in to_explain:
            yield "methods.shap.features_to_explain", f"cannot include the {key.replace('_', ' ')} {value!r}"
    if has(tree, "methods.shap.image_config") and get(tree, "dataset_type") not in (None, media.IMAGE):
        yield "methods.shap.image_config", "only for dataset_type application/x-image"


@rule
def pdp_features(tree: Tree) -> Iterator[Finding]:
    present = methods(tree)
    if "pdp" in present and "shap" not in present and not has(tree, "methods.pdp.features"):
        yield "methods.pdp.features", "PDP features must be provided when ShapConfig is not provided"


# -- dataset --------------------------------------------------------------------------------------
@rule
def dataset_type_constraints(tree: Tree) -> Iterator[Finding]:
    """SDK ``DataConfig`` checks."""
    dataset_type = get(tree, "dataset_type")
    if dataset_type is None:
        return
    if dataset_type != media.CSV:
        for pair in (("facet_dataset_uri", "facet_headers"),
                     ("predicted_label_dataset_uri", "predicted_label_headers")):
            given = [key for key in pair if has(tree, key)]
            if given:
                yield given[0], (f"The parameters '{pair[0]}' and '{pair[1]}' are not supported for "
                                 f"dataset_type '{dataset_type}'. Only text/csv datasets can have separate "
                                 "facet or predicted-label datasets.")
    if dataset_type == media.IMAGE:
        for key in ("predicted_label", "excluded_columns"):
            if has(tree, key):
                yield key, f"The parameter '{key}' is not supported for dataset_type '{dataset_type}'."
        content_type = get(tree, "predictor.content_type")
        if isinstance(content_type, str) and media.media_type(content_type) not in (media.JPEG, media.JPG, media.PNG,
                                                                                   media.NPY):
            yield "predictor.content_type", (f"{content_type} cannot carry images; use image/jpeg, image/png or "
                                             "application/x-npy for application/x-image datasets")
    time_series = has(tree, "time_series_data_config")
    if dataset_type in media.JSON_TYPES and not has(tree, "features") and not time_series:
        yield "features", f"features JMESPath is required for {dataset_type} dataset_type"
    if time_series and dataset_type != media.JSON:
        yield "time_series_data_config", ("Currently time series explainability only supports JSON format "
                                          f"data (dataset_type application/json), not {dataset_type}.")
    if dataset_type in media.JSON_TYPES:
        for key in ("label", "predicted_label"):
            if isinstance(get(tree, key), int):
                yield key, f"must be a JMESPath expression (a string) for {dataset_type} datasets"


def _column_references(tree: Tree) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    """(path, locator, names of the header lists it may refer to) for every column reference."""
    dataset_type = get(tree, "dataset_type")
    main = ("headers",)
    if dataset_type in COLUMN_TYPES:  # in JSON datasets these two are JMESPath expressions
        yield "label", get(tree, "label"), main
        labels_elsewhere = has(tree, "predicted_label_dataset_uri")
        yield "predicted_label", get(tree, "predicted_label"), (
            ("predicted_label_headers",) if labels_elsewhere else main)
        yield "joinsource_name_or_index", get(tree, "joinsource_name_or_index"), main
    # With a facet dataset, a facet index refers to it and a name is looked up there, then in the main dataset
    # (docs/data-formats.md "Side datasets"); the group variable is looked up in the main dataset first.
    side = ("facet_headers",) if has(tree, "facet_dataset_uri") else ()
    for i, facet in enumerate(get(tree, "facet") or []):
        if isinstance(facet, dict):
            locator = get(facet, "name_or_index")
            yield f"facet[{i}].name_or_index", locator, (side or main) if isinstance(locator, int) else side + main
    yield "group_variable", get(tree, "group_variable"), main + side
    for key in ("excluded_columns", "methods.shap.features_to_explain", "methods.shap.text_config.text_features",
                "methods.pdp.features"):
        for i, locator in enumerate(get(tree, key) or []):
            yield f"{key}[{i}]", locator, main
    for i, segment in enumerate(get(tree, "segment_config") or []):
        if isinstance(segment, dict):
            yield f"segment_config[{i}].name_or_index", get(segment, "name_or_index"), main


@rule
def columns_exist(tree: Tree) -> Iterator[Finding]:
    """Names must be among the configured headers ("Headers must contain label.", "Unable to locate
    the facet." would otherwise stop the job after the data is read); checked only when the headers
    are given and the dataset is a table (not images, not time series)."""
    if get(tree, "dataset_type") in (None, media.IMAGE) or has(tree, "time_series_data_config"):
        return
    dataset_type = get(tree, "dataset_type")
    for path, locator, header_keys in _column_references(tree):
        lists = [get(tree, key) for key in header_keys]
        if locator is None or None in lists:  # a dataset without configured headers names its own columns
            continue
        names = [name for names in lists for name in names]
        where = " or ".join(header_keys)
        if isinstance(locator, str) and locator not in names:
            guess = closest(locator, names)
            yield path, f"{locator!r} is not in {where}" + (f"; did you mean {guess!r}?" if guess else "")
        elif isinstance(locator, int) and dataset_type in COLUMN_TYPES and locator >= max(map(len, lists)):
            yield path, f"column index {locator} is out of range: {where} has {max(map(len, lists))} columns"


@rule
def segments(tree: Tree) -> Iterator[Finding]:
    for i, segment in enumerate(get(tree, "segment_config") or []):
        aliases, groups = get(segment, "display_aliases"), get(segment, "segments")
        if aliases is not None and groups is not None and len(aliases) not in (len(groups), len(groups) + 1):
            yield f"segment_config[{i}].display_aliases", (
                "Number of `display_aliases` must equal the number of segments specified or with one "
                f"additional default segment display alias ({len(groups)} or {len(groups) + 1}, got {len(aliases)}).")
        yield from _segment_lists(f"segment_config[{i}]", groups or [], aliases or [])
    names = [get(s, "config_name") or get(s, "name_or_index") for s in get(tree, "segment_config") or []]
    for i, name in enumerate(names):
        if name is not None and name in names[:i]:
            yield f"segment_config[{i}].config_name", (
                f"{name!r} already names segment_config[{names.index(name)}] (its config_name, else its column); "
                "give each entry a distinct config_name")


def _segment_lists(key: str, groups: list, aliases: list) -> Iterator[Finding]:
    """Intervals that do not parse, lists that select the same values, repeated aliases (docs/segments.md)."""
    for j, items in enumerate(groups):
        for k, item in enumerate(items or []):
            if looks_like_interval(item):
                try:
                    parse_interval(item)
                except IntervalError as error:
                    yield f"{key}.segments[{j}][{k}]", str(error)
    for a, b, item_a, item_b in overlapping_lists([items or [] for items in groups]):
        yield f"{key}.segments", (f"lists {a} and {b} overlap ({item_a!r} and {item_b!r} select the same values); "
                                  "a row belongs to one segment")
    for j, alias in enumerate(aliases):
        if alias in aliases[:j]:
            yield f"{key}.display_aliases[{j}]", f"{alias!r} is already the alias of segment {aliases.index(alias)}"


# -- predictor ------------------------------------------------------------------------------------
@rule
def predictor_present(tree: Tree) -> Iterator[Finding]:
    reason = needs_predictions(tree)
    if reason is None:
        return
    # Without endpoint_url, image_uri, endpoint_name or model_name, Lucent serves the model folder of
    # the job (<root>/input/model), so the predictor block itself is what is required.
    if not has(tree, "predictor"):
        yield "predictor", f"required: {reason}"


@rule
def predictor_location(tree: Tree) -> Iterator[Finding]:
    """SDK ``ModelConfig``: an existing endpoint, or a model with its shadow-endpoint settings."""
    if has(tree, "predictor.model_name"):
        for key in ("instance_type", "initial_instance_count"):
            if not has(tree, f"predictor.{key}"):
                yield f"predictor.{key}", "required with predictor.model_name (shadow endpoint settings)"
    if has(tree, "predictor.endpoint_name"):
        for key in ("model_name", "endpoint_name_prefix"):
            if has(tree, f"predictor.{key}"):
                yield f"predictor.{key}", "cannot be used together with predictor.endpoint_name"
    if has(tree, "predictor.endpoint_url") and has(tree, "predictor.image_uri"):
        yield "predictor.image_uri", "cannot be used together with predictor.endpoint_url (give one of them)"
    if get(tree, "predictor.lucent_scoring") == IN_PROCESS:
        for key in ("endpoint_url", "image_uri"):
            if has(tree, f"predictor.{key}"):
                yield "predictor.lucent_scoring", (f"'in_process' loads the job's model folder, but predictor.{key} "
                                                   "names a model server, which is always called over HTTP: "
                                                   f"remove one of them")


@rule
def predictor_formats(tree: Tree) -> Iterator[Finding]:
    if not has(tree, "predictor"):
        return
    if get(tree, "dataset_type") == media.PARQUET and not has(tree, "predictor.content_type"):
        yield "predictor.content_type", ("required when dataset_type is application/x-parquet: models do not "
                                         "take Parquet; choose text/csv, application/jsonlines or application/json")
    if get(tree, "dataset_type") == media.IMAGE and not has(tree, "predictor.label_headers"):
        yield "predictor.label_headers", "required for application/x-image datasets (the class names)"
    if has(tree, "predictor.time_series_predictor_config"):
        for key, value in (("content_type", model_content_type(tree)), ("accept_type", model_accept_type(tree))):
            if value is not None and value not in media.JSON_TYPES:
                yield f"predictor.{key}", f"``{key}`` must be JSON or JSONLines for time series explainability."


@rule
def label_headers_distinct(tree: Tree) -> Iterator[Finding]:
    """Each label header names one model output: explanations are keyed by ``str(header)`` (analysis.json's
    ``kernel_shap`` keys, out.csv's ``<feature>_<header>`` columns), so two headers with the same text (``"x"``
    twice, or ``"1"`` and ``1``) would lose one output's results."""
    seen: dict[str, int] = {}
    for i, header in enumerate(get(tree, "predictor.label_headers") or []):
        key = str(header)
        if key in seen:
            yield f"predictor.label_headers[{i}]", (
                f"{header!r} names the same output as predictor.label_headers[{seen[key]}] "
                f"({get(tree, 'predictor.label_headers')[seen[key]]!r}): results are keyed by the header's text, so "
                "one output's results would be lost; give every output a distinct header")
        seen.setdefault(key, i)


@rule
def request_templates(tree: Tree) -> Iterator[Finding]:
    """Spec 5.2: templates required per request content type, with the SDK's messages."""
    if not has(tree, "predictor"):
        return
    content_type = model_content_type(tree)
    template, record = get(tree, "predictor.content_template"), get(tree, "predictor.record_template")
    if content_type == media.JSON_LINES:
        if not has(tree, "predictor.content_template"):
            yield "predictor.content_template", f"content_template field is required for content_type {content_type}"
        elif isinstance(template, str):
            count = sum(slot.name == media.FEATURES for slot in media.placeholders(template))
            if count == 0:
                yield "predictor.content_template", (f"Invalid content_template {template}. "
                                                     "Please include a placeholder $features.")
            elif count > 1:
                yield "predictor.content_template", f"must contain $features exactly once, found {count}"
    elif content_type == media.JSON:
        missing = [k for k in ("content_template", "record_template") if not has(tree, f"predictor.{k}")]
        if missing:
            yield f"predictor.{missing[0]}", ("content_template and record_template are required for "
                                              f"content_type {content_type}")
        if isinstance(template, str) and not any(slot.name in (media.RECORDS, media.RECORD)
                                                 for slot in media.placeholders(template)):
            yield "predictor.content_template", (f"Invalid content_template {template}. "
                                                 "Please include either placeholder $records or $record.")
        if record is not None:
            yield from _record_template_problems(tree, record)


def _record_template_problems(tree: Tree, record: str) -> Iterator[Finding]:
    slots = media.placeholders(record)
    tokens = [slot.name for slot in slots if slot.name not in (None, media.RECORDS, media.RECORD)]
    names = [slot.feature for slot in slots if slot.feature is not None]
    if not tokens and not names:
        yield "predictor.record_template", (f"Invalid record_template {record}. Please include $features, "
                                            '$features_kvp or "${feature name}" placeholders.')
    if tokens.count(media.FEATURES_KVP) > 1:
        yield "predictor.record_template", "must contain $features_kvp at most once"
    headers = get(tree, "headers")
    if headers and not has(tree, "time_series_data_config"):
        for name in names:
            if name not in headers:
                guess = closest(name, headers)
                yield "predictor.record_template", (f"placeholder \"${{{name}}}\" names no column of headers"
                                                    + (f"; did you mean {guess!r}?" if guess else ""))


# -- time series ----------------------------------------------------------------------------------
@rule
def time_series_pieces(tree: Tree) -> Iterator[Finding]:
    """ASV needs both time-series configs, and they only make sense with ASV (SDK generator)."""
    present = methods(tree)
    asv = "asymmetric_shapley_value" in present
    ts_data, ts_model = has(tree, "time_series_data_config"), has(tree, "predictor.time_series_predictor_config")
    if asv:
        if not ts_data:
            yield "time_series_data_config", "required by methods.asymmetric_shapley_value"
        if has(tree, "predictor") and not ts_model:
            yield "predictor.time_series_predictor_config", "required by methods.asymmetric_shapley_value"
        for stage in ("pre_training_bias", "post_training_bias"):
            if stage in present:
                yield f"methods.{stage}", "Bias metrics are unsupported for time series."
    elif ts_data or ts_model:
        yield "methods.asymmetric_shapley_value", (
            "Please provide an AsymmetricShapleyValueConfig for time series explainability cases. For non "
            "time series cases, please do not provide time_series_data_config or "
            "predictor.time_series_predictor_config.")
    if asv or ts_data:
        for method in ("shap", "pdp"):
            if method in present:
                yield f"methods.{method}", "cannot be combined with time series explainability"
        if has(tree, "excluded_columns"):
            yield "excluded_columns", "not supported for time series"


@rule
def time_series_templates(tree: Tree) -> Iterator[Finding]:
    """A time-series record is written with Clarify's four time-series placeholders only (spec 2.6, [DOC-CFG]):
    ``$features`` and the other tabular placeholders have no meaning there (``$features`` was filled with
    ``[start, target, related, static]``, and the log then said the covariates were never seen)."""
    if not (has(tree, "predictor.time_series_predictor_config") or has(tree, "time_series_data_config")
            or "asymmetric_shapley_value" in methods(tree)):
        return
    # JSON Lines records are written by content_template, which the SDK's own time-series examples give with
    # $features: checked when the job starts (asymmetric_job.check_templates), not refused here.
    template = get(tree, "predictor.record_template")
    if media.media_type(model_content_type(tree)) != media.JSON or not isinstance(template, str):
        return
    problem = time_series_template_problem(template)
    if problem:
        yield "predictor.record_template", problem


def time_series_template_problem(template: str) -> str | None:
    """Why ``template`` cannot write a time-series record (a placeholder that is not one of Clarify's four
    time-series placeholders), or None."""
    allowed = ", ".join(f"${name}" for name in media.TIME_SERIES_PLACEHOLDERS)
    for slot in media.placeholders(template):
        if slot.name in (media.FEATURES, media.FEATURES_KVP, media.FEATURE_NAMES):
            shown = f"${slot.name}"
        elif slot.feature is not None and slot.feature not in media.TIME_SERIES_PLACEHOLDERS:
            shown = template[slot.start:slot.end]
        else:
            continue
        return (f"{shown} is not a time-series placeholder: a time-series record is written with {allowed} "
                "(Clarify's time-series placeholders)")
    return None


@rule
def time_series_data(tree: Tree) -> Iterator[Finding]:
    """SDK ``TimeSeriesDataConfig``: all locators strings (JMESPath) or all ints, consistently."""
    config = get(tree, "time_series_data_config")
    if not isinstance(config, dict):
        return
    target = get(config, "target_time_series")
    if target is None:
        return
    kind = type(target)
    path = "time_series_data_config"
    for key in ("item_id", "timestamp"):
        value = get(config, key)
        if value is not None and type(value) is not kind:
            yield f"{path}.{key}", f"Please provide {kind.__name__} for ``{key}`` (like target_time_series)"
    for key in ("related_time_series", "static_covariates"):
        values = get(config, key) or []
        if any(type(v) is not kind for v in values):
            yield f"{path}.{key}", f"Please provide a list of {kind.__name__} for ``{key}`` (like target_time_series)"
    if kind is str and not has(config, "dataset_format"):
        yield f"{path}.dataset_format", "required when the locators are JMESPath strings (Please provide a valid dataset format.)"
    if kind is int and has(config, "dataset_format"):
        yield f"{path}.dataset_format", "Dataset format should only be provided when data files are JSONs."


@rule
def asymmetric_shapley_value(tree: Tree) -> Iterator[Finding]:
    path = "methods.asymmetric_shapley_value"
    direction, granularity = get(tree, f"{path}.direction"), get(tree, f"{path}.granularity")
    if granularity == "fine_grained":
        if not has(tree, f"{path}.num_samples"):
            yield f"{path}.num_samples", "required for fine_grained granularity (Please provide an integer for ``num_samples``.)"
        if direction not in (None, "chronological"):
            yield f"{path}.direction", f"{direction} and {granularity} granularity are not supported together."
    elif granularity is not None and has(tree, f"{path}.num_samples"):
        yield f"{path}.num_samples", "``num_samples`` is only used for fine-grained explanations."
    covariate_baselines = get(tree, f"{path}.baseline.static_covariates")
    if covariate_baselines is None:
        return
    count = len(get(tree, "time_series_data_config.static_covariates") or [])
    if count == 0:
        yield f"{path}.baseline.static_covariates", ("Static covariate baselines are provided when no static "
                                                     "covariate columns are provided in time_series_data_config.")
    for item_id, values in covariate_baselines.items():
        if count and len(values) != count:
            yield f"{path}.baseline.static_covariates.{item_id}", (
                f"Length of baseline entry for {item_id} does not match number of static covariate columns "
                f"({len(values)} values for {count} columns).")


def check_rules(tree: Tree) -> list[Finding]:
    """Every cross-key problem of a normalised config tree, in rule order."""
    return [finding for check in RULES for finding in check(tree)]
