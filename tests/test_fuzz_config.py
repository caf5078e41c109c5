"""Property-based tests of the config parser and of `lucent validate` on mutated configs.

Generators start from real configs (the sample configs, the demo configs and one config that uses
every key of the schema) and break them the way people and attackers do: a key deleted, a value
replaced by one of the wrong type, a huge or negative number, unicode, deep nesting, an unknown key,
or the file's bytes cut and corrupted. Mutations hit any depth, so the generated configs reach the
cross-key rules and the data checks, not only the top-level type check.

Every input must end in a config (or a list of problems) or a ``UserError``: never another
exception, a hang, or a file written anywhere but where the job writes.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analyzer.config import AnalysisConfig, load_config, parse_config
from analyzer.errors import ConfigError
from container.demo import DEMO_CONFIG, MODEL_DEMO_CONFIG, write_demo_job
from container.job import JobPaths, validate_job

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"
HUGE = 10**5000  # beyond Python's int_max_str_digits: json.dumps refuses it, parse_config must not
HUGE_MARK = "<a 5001-digit integer>"


class Huge:
    """HUGE while a document is generated: Hypothesis prints what it draws, and ``repr(HUGE)`` raises.
    ``realize`` puts the real number in before the document is used."""

    def __init__(self, sign: int = 1):
        self.sign = sign

    def __repr__(self) -> str:
        return f"Huge({self.sign})"


def realize(value: Any) -> Any:
    if isinstance(value, Huge):
        return value.sign * HUGE
    if isinstance(value, dict):
        return {k: realize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [realize(v) for v in value]
    return value

EVERY_KEY = {
    "version": "1.0", "dataset_type": "text/csv", "dataset_uri": "data.csv",
    "headers": ["a", "b", "t", "y", "p", "id"], "label": "y", "predicted_label": "p", "features": "features",
    "label_values_or_threshold": [1], "probability_threshold": 0.5,
    "facet": [{"name_or_index": "b", "value_or_threshold": ["x", 1, True]}], "group_variable": 0,
    "facet_dataset_uri": "facet.csv", "facet_headers": ["id", "b"], "predicted_label_dataset_uri": "pred.csv",
    "predicted_label_headers": ["id", "p"], "excluded_columns": ["id"], "joinsource_name_or_index": "id",
    "segment_config": [{"config_name": "c", "name_or_index": "a", "segments": [["1", 2]], "display_aliases": ["s"]}],
    "time_series_data_config": {"target_time_series": "a", "item_id": "id", "timestamp": "t",
                                "related_time_series": ["b"], "static_covariates": ["y"], "dataset_format": "columns"},
    "methods": {
        "pre_training_bias": {"methods": ["CI", "DPL"]}, "post_training_bias": {"methods": "all"},
        "shap": {"baseline": [[1, "x", "t"]], "num_clusters": 2, "num_samples": 100, "agg_method": "mean_abs",
                 "use_logit": False, "save_local_shap_values": True, "seed": 7, "features_to_explain": ["a", 1],
                 "text_config": {"granularity": "token", "language": "en", "max_top_tokens": 10, "text_features": ["t"]},
                 "image_config": {"model_type": "IMAGE_CLASSIFICATION", "num_segments": 20, "segment_compactness": 5,
                                  "feature_extraction_method": "segmentation", "max_objects": 3, "iou_threshold": 0.5,
                                  "context": 1.0, "debug": {"image_names": ["i"], "class_ids": [0], "sample_from": 0,
                                                            "sample_to": 1}}},
        "pdp": {"grid_resolution": 10, "features": ["a"], "top_k_features": 2},
        "report": {"name": "report", "title": "t"},
        "asymmetric_shapley_value": {"direction": "chronological", "granularity": "timewise", "num_samples": 5,
                                     "baseline": {"target_time_series": "zero", "related_time_series": "mean",
                                                  "static_covariates": {"item": [1, "a"]}}},
    },
    "predictor": {"endpoint_url": "http://127.0.0.1:9", "endpoint_name": "e", "endpoint_name_prefix": "pre",
                  "model_name": "m", "target_model": "t", "instance_type": "ml.m5.xlarge", "initial_instance_count": 1,
                  "accelerator_type": "a", "custom_attributes": "c=1", "content_type": "text/csv",
                  "accept_type": "application/jsonlines", "content_template": "$features",
                  "record_template": "$features_kvp", "label": "label", "probability": 0,
                  "label_headers": ["no", "yes"], "time_series_predictor_config": {"forecast": "mean"}},
}
BASES = [EVERY_KEY, DEMO_CONFIG, MODEL_DEMO_CONFIG, *(json.loads(p.read_text()) for p in sorted(SAMPLES.glob("*.json")))]

# -- values a mutation puts in a config --------------------------------------------------------------
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from([-1, 0, 2**31, 2**32, 2**63, -(2**63) - 1, 10**30,
                                                                  1e308, -0.0, 0.5]),
                  st.builds(Huge, st.sampled_from([1, -1])))
strings = st.one_of(st.text(max_size=20), st.sampled_from(["", "all", "ALL", "text/CSV", "../../etc/passwd",
                                                           "~/.aws/credentials", "s3://bucket/key", "S3:/x",
                                                           "file:///etc/passwd", "http://user:pw@h/", "\x00",
                                                           "é" * 2000, "$features", "{", "[0]"]))
# URLs assembled from parts, well-formed and not: bad IPv6 brackets, ports out of range or not numbers,
# userinfo holding a password (which no message may echo), paths, queries and fragments.
URL_PASSWORD = "pw-SECRET-7"
urls = st.builds(
    lambda scheme, userinfo, host, port, path, query, fragment: f"{scheme}{userinfo}{host}{port}{path}{query}{fragment}",
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:/", "http:", "", "//", "http:///"]),
    st.sampled_from(["", "alice@", f"alice:{URL_PASSWORD}@", f"alice:{URL_PASSWORD}@@", "@", ":@"]),
    st.one_of(st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "::1]", "[::1:1", "[v1.x]", "[]", "",
                               "h\u0430st", "ho st", "\uff0fx", "[fe80::1%eth0]"]), st.text(max_size=6)),
    st.one_of(st.sampled_from(["", ":", ":8080", ":0", ":65535", ":65536", ":99999999", ":-1", ":x", ": 80"]),
              st.integers(-5, 10**6).map(lambda n: f":{n}")),
    st.sampled_from(["", "/", "/models/a", "/invocations", "//", "/%zz", "/a b"]),
    st.sampled_from(["", "?", "?access_token=t0k&client_secret=s3c", "?a=1"]),
    st.sampled_from(["", "#", "#frag"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings, urls)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


json_values = st.one_of(
    scalars,
    st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8),
                                                                                              inner, max_size=3)),
                 max_leaves=8),
    st.sampled_from([nested(65), nested(300), {"": {}}, [[]], {"methods": "all"}]),
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON document (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def mutate(doc: Any, data: st.DataObject) -> Any:
    """One mutation at a path drawn from the document."""
    path = data.draw(st.sampled_from(paths(doc)), label="path")
    operation = data.draw(st.sampled_from(["replace", "delete", "unknown key", "wrap", "stringify", "case"]),
                          label="operation")
    if not path:
        return copy.deepcopy(data.draw(json_values)) if operation == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    key, value = path[-1], parent[path[-1]]
    if operation == "replace":
        parent[key] = copy.deepcopy(data.draw(json_values, label="value"))  # drawn values are shared
    elif operation == "delete":
        del parent[key]
    elif operation == "unknown key" and isinstance(value, dict):
        value[data.draw(st.text(max_size=12), label="key")] = copy.deepcopy(data.draw(json_values, label="value"))
    elif operation == "wrap":
        parent[key] = [value]
    elif operation == "stringify":
        parent[key] = config_bytes(realize(value)).decode()
    elif operation == "case" and isinstance(value, str):
        parent[key] = value.swapcase()
    return doc


@st.composite
def mutated_configs(draw: st.DrawFn, bases: list[dict] = BASES) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(bases), label="base"))
    data = draw(st.data())
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        doc = mutate(doc, data)
    return doc


def config_bytes(doc: Any) -> bytes:
    """The document as a file's bytes. ``json.dumps`` refuses HUGE, so it goes in as a marker string that
    is then replaced by its digits, as a hostile file would hold them."""
    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return HUGE_MARK if isinstance(value, int) and abs(value) > 10**4000 else value

    return json.dumps(mark(doc)).replace(f'"{HUGE_MARK}"', "9" * 5001).encode()


def parse(doc: Any) -> AnalysisConfig | ConfigError:
    try:
        return parse_config(doc)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems), error.problems
        return error


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(doc=mutated_configs())
@example(doc={"dataset_type": "text/csv", "methods": {"shap": {"seed": -1}}})
@example(doc={"dataset_type": "text/csv", "probability_threshold": Huge(), "methods": {}})
@example(doc={"dataset_type": "text/csv", "methods": {"shap": {"baseline": {"a": nested(300)}}}})
@example(doc={"dataset_type": "text/csv", "methods": {"shap": {}},
              "predictor": {"endpoint_url": "http://alice:pw@[::1:1/"}})
def test_parse_config_ends_in_a_config_or_a_config_error(doc):
    parse(realize(doc))


def url_config(url: str) -> dict:
    return {"dataset_type": "text/csv", "methods": {"shap": {}}, "predictor": {"endpoint_url": url}}


@settings(max_examples=300, deadline=None)
@given(url=urls)
@example(url="http://alice:pw-SECRET-7@[::1:1/")
@example(url="http://127.0.0.1:99999999")
@example(url="http://h/invocations?access_token=t0k&client_secret=s3c")
def test_endpoint_url_is_a_base_url_or_a_config_error_without_secrets(url):
    result = parse(url_config(url))
    if isinstance(result, ConfigError):
        text = "\n".join(result.problems)
        assert "predictor.endpoint_url:" in text, text
        for secret in (URL_PASSWORD, "t0k", "s3c"):
            assert secret not in text, text
    else:  # accepted: a base the job can put /ping and /invocations after
        assert result.predictor.endpoint_url == url
        assert "?" not in url and "#" not in url
        assert url.lower().startswith(("http://", "https://"))


@pytest.mark.parametrize(("url", "fragment"), [
    ("http://alice:pw@[::1:1/", "must be an http:// or https:// URL"),
    ("http://h:65536", "valid port"),
    ("http://h/models?access_token=t0k", "must not have a query string or fragment"),
    ("http://h/#x", "must not have a query string or fragment"),
])
def test_malformed_endpoint_url_names_the_key_not_the_secret(url, fragment):
    error = parse(url_config(url))
    assert isinstance(error, ConfigError)
    assert any(problem.startswith("predictor.endpoint_url: ") and fragment in problem for problem in error.problems)
    assert "pw" not in str(error.problems) and "t0k" not in str(error.problems)


@pytest.mark.parametrize("url", ["http://h", "https://alice:pw@h:8443/models/a/", "HTTP://[::1]:8080",
                                 "http://127.0.0.1:9"])
def test_base_endpoint_urls_are_accepted(url):
    config = parse(url_config(url))
    assert isinstance(config, AnalysisConfig), config
    assert config.predictor.endpoint_url == url


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_configs(), cut=st.one_of(st.none(), st.integers(0, 3000)), junk=st.binary(max_size=6),
       at=st.integers(0, 3000))
@example(doc={}, cut=None, junk=b"", at=0)
def test_load_config_on_corrupted_bytes(tmp_path_factory, doc, cut, junk, at):
    data = config_bytes(realize(doc))
    if cut is not None:
        data = data[:cut]
    data = data[: at % (len(data) + 1)] + junk + data[at % (len(data) + 1):]
    path = tmp_path_factory.mktemp("config") / "analysis_config.json"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as error:
        assert str(error)


@pytest.mark.parametrize(("text", "fragment"), [
    ("[" * 100_000, "nested too deeply"),
    ('{"dataset_type": "text/csv", "methods": {}, "probability_threshold": ' + "1" * 5000 + "}", "digits"),
    ('{"a": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels"),
])
def test_load_config_reports_parser_limits(tmp_path, text, fragment):
    path = tmp_path / "analysis_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert fragment in str(raised.value)


@pytest.mark.parametrize(("shap", "fragment"), [
    ({"seed": -1}, "methods.shap.seed: must be >= 0, got -1"),
    ({"seed": 2**32}, "methods.shap.seed: must be <= 4294967295"),
    ({"seed": 1.5}, "methods.shap.seed: expected an integer"),
    ({"seed": "1"}, "methods.shap.seed: expected an integer"),
    ({"num_samples": 2**63}, "methods.shap.num_samples: is out of range: integers must fit in 64 bits"),
    ({"num_samples": HUGE}, "an integer of about 5001 digits"),
])
def test_seed_and_integer_ranges(shap, fragment):
    error = parse({"dataset_type": "text/csv", "methods": {"shap": shap}, "predictor": {"endpoint_url": "http://h"}})
    assert isinstance(error, ConfigError)
    assert any(fragment in problem for problem in error.problems), error.problems


def test_huge_number_where_a_float_is_expected():
    error = parse({"dataset_type": "text/csv", "probability_threshold": HUGE, "methods": {}})
    assert isinstance(error, ConfigError)
    assert error.problems[0] == ("probability_threshold: is out of range: integers must fit in 64 bits "
                                 f"({-(2**63)} to {2**63 - 1}), got an integer of about 5001 digits")


# -- `lucent validate` on mutated configs, on a real processing root -----------------------------------

@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "job"
    write_demo_job(root, n_rows=120, seed=5)
    return root


def tree(folder: Path) -> dict[str, float | None]:
    """Every path below ``folder``, with its modification time for files (a folder's changes when an entry
    is added and removed again, as validate's output check does)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime if p.is_file() else None for p in folder.rglob("*")}


VALIDATE_BASES = [DEMO_CONFIG, {**DEMO_CONFIG, "methods": {**DEMO_CONFIG["methods"],
                                                           "shap": {"baseline": [[30, "Male", "White", 12, 40, 1000,
                                                                                  "25-40"]], "seed": 1}},
                                "predictor": {"endpoint_url": "http://127.0.0.1:9"}}]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=mutated_configs(VALIDATE_BASES))
def test_validate_lists_problems_and_writes_nothing(demo_root, doc):
    config_file = demo_root / "input" / "config" / "analysis_config.json"
    config_file.write_bytes(config_bytes(realize(doc)))
    before = tree(demo_root.parent)
    problems = validate_job(JobPaths.for_root(demo_root))
    assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems), problems
    after = tree(demo_root.parent)
    assert after == before, set(after) ^ set(before)
    assert not os.path.exists(demo_root / "output")
