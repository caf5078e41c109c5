"""Find, read and validate ``analysis_config.json`` into an ``AnalysisConfig``.

Validation runs in two passes over the whole document and collects every problem before raising
one ``ConfigError`` (so ``lucent validate`` can list them all): the schema table
(``analyzer.config.schema``: keys, types, enums, ranges) then the cross-key rules
(``analyzer.config.rules``). Only a config without any problem is turned into typed objects.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from analyzer.config.model import AnalysisConfig, Predictor
from analyzer.config.rules import check_rules, model_accept_type, model_content_type
from analyzer.config.schema import ANALYSIS_CONFIG, KEY_HOMES
from analyzer.config.spec import Context, child, item
from analyzer.errors import ConfigError

CONFIG_FILE_NAME = "analysis_config.json"
# Clarify's job-level messages (spec 6.1); Lucent adds the file, key path and reason after them.
JSON_ERROR = "Unable to load analysis configuration as JSON."
SCHEMA_ERROR = "Analysis configuration schema validation error."
# Deepest nesting a config may have. Clarify's own keys need 5 levels; inline baselines a few more.
MAX_NESTING = 64


class ConfigValidationError(ConfigError):
    """A config that is valid JSON but breaks the schema or a rule.

    ``problems`` has one line per problem, each starting with its key path; the message starts with
    Clarify's ``Analysis configuration schema validation error.`` and then lists them.
    """

    def __init__(self, problems: list[str], source: str):
        super().__init__(problems)
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        self.args = (f"{SCHEMA_ERROR} {source} has {count}: " + "; ".join(problems),)


def find_config_file(config_dir: Path) -> Path:
    """The config file of a processing job: ``analysis_config.json`` if present, else the only
    ``*.json`` file of ``config_dir`` (the boto3 examples upload ``bias_analysis_config.json``)."""
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigError(f"The analysis configuration folder {config_dir} does not exist")
    preferred = config_dir / CONFIG_FILE_NAME
    if preferred.is_file():
        return preferred
    # Dot files are skipped: macOS copies leave "._name.json" resource forks next to real files.
    candidates = sorted(p for p in config_dir.iterdir()
                        if p.is_file() and p.suffix.lower() == ".json" and not p.name.startswith("."))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"No analysis configuration in {config_dir}: expected {CONFIG_FILE_NAME} "
                          "or a single .json file")
    names = ", ".join(p.name for p in candidates)
    raise ConfigError(f"Several .json files in {config_dir} and none is named {CONFIG_FILE_NAME} ({names}): "
                      f"rename the analysis configuration to {CONFIG_FILE_NAME} or remove the others")


def read_json_file(path: Path, what: str = "analysis configuration") -> Any:
    """The JSON document in ``path`` (UTF-8, a BOM tolerated); ``ConfigError`` naming ``what`` and the file
    for an unreadable file, bad encoding, bad JSON, nesting too deep to read or an integer too long."""
    path = Path(path)
    json_error = f"Unable to load {what} as JSON."  # JSON_ERROR for the analysis configuration
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"Cannot read the {what} {path}: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as error:
        raise ConfigError(f"{json_error} {path} is not UTF-8 text (invalid byte at offset {error.start})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{json_error} {path}, line {error.lineno}, column {error.colno}: {error.msg}") from error
    except RecursionError as error:
        raise ConfigError(f"{json_error} {path}: arrays or objects nested too deeply to read "
                          f"(a config needs at most {MAX_NESTING} levels)") from error
    except ValueError as error:  # Python's limit on digits in an integer (int_max_str_digits)
        raise ConfigError(f"{json_error} {path}: {error}") from error


def load_config(path: Path) -> AnalysisConfig:
    """Read a UTF-8 JSON config file and validate it (see ``parse_config``)."""
    return parse_config(read_json_file(path), source=str(path))


def parse_config(doc: dict[str, Any], source: str = CONFIG_FILE_NAME) -> AnalysisConfig:
    """Validate a config document and return it typed, with defaults applied.

    Raises ``ConfigValidationError`` (a ``ConfigError``) listing every problem found.
    Enum strings are accepted in any case and stored normalised; ``"all"`` metric selections are
    expanded; ``predictor.content_type`` / ``accept_type`` get their documented defaults.
    """
    ctx = Context(key_homes=KEY_HOMES)
    if not isinstance(doc, dict):
        ctx.add("", f"the configuration must be a JSON object, got {type(doc).__name__}")
        raise ConfigValidationError(ctx.problems, source)
    too_deep = _too_deep(doc)
    if too_deep is not None:
        ctx.add(too_deep, f"nested more than {MAX_NESTING} levels deep; a config needs only a few")
        raise ConfigValidationError(ctx.problems, source)
    tree = ANALYSIS_CONFIG.check(doc, "", ctx)
    for path, message in check_rules(tree):
        ctx.add(path, message)
    if ctx.problems:
        raise ConfigValidationError(ctx.problems, source)
    fields = {key: ANALYSIS_CONFIG.fields[key].build(value) for key, value in tree.items()}
    if "predictor" in fields:
        fields["predictor"] = _with_format_defaults(fields["predictor"], tree)
    return AnalysisConfig(**fields, raw=copy.deepcopy(doc))


def _too_deep(doc: Any) -> str | None:
    """The key path of the first value nested deeper than ``MAX_NESTING``, or None.

    Checked before anything else walks the document: copying it, printing values in messages and
    reading inline baselines all recurse, and Python's recursion limit must never be what stops a config.
    """
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return path if len(path) <= 80 else path[:77] + "..."
        if isinstance(value, dict):
            stack.extend((v, child(path, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, item(path, i), depth + 1) for i, v in enumerate(value))
    return None


def _with_format_defaults(predictor: Predictor, tree: dict[str, Any]) -> Predictor:
    """Fill ``content_type`` / ``accept_type`` from the dataset type (spec 2.5), so consumers never
    re-derive them."""
    return replace(predictor, content_type=model_content_type(tree), accept_type=model_accept_type(tree))
