"""segment_config in a job: bias metrics and SHAP per segment against the pipeline itself, the
``lucent.segments`` layout of analysis.json, the report, and ``lucent validate`` (docs/segments.md).

The oracle for bias is the existing pipeline run on each segment's rows alone (written to a CSV of their
own and read back by the loader); the oracle for SHAP is the job's own ``out.csv`` aggregated with numpy.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.bias import bias_analysis
from analyzer.config.parser import parse_config
from analyzer.errors import UserError
from analyzer.output import OutputStaging
from analyzer.pipeline import load_job_dataset, run_analysis
from analyzer.segments.analysis import EMPTY_SEGMENT
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, csv_scoring_model, http_server

FEATURES = ["x0", "x1", "x2", "x3", "color"]
HEADERS = ["id", *FEATURES, "y"]
BASELINE = [[0.0, 0.5, -0.5, 0.2, "blue"], [1.0, -1.0, 0.0, 0.0, "red"]]


def score(frame: pd.DataFrame) -> np.ndarray:
    """The in-test model: two outputs, with an interaction and a categorical term."""
    x = frame.iloc[:, :4].to_numpy(dtype=float)
    red = (frame.iloc[:, 4].astype(str) == "red").to_numpy()
    first = x @ np.array([1.5, -2.0, 0.5, 3.0]) + 2.0 * red + 0.7 * x[:, 0] * x[:, 2]
    return np.column_stack([first, np.tanh(first) + x[:, 3] * red])


_Model = csv_scoring_model(score)


@pytest.fixture
def endpoint():
    with http_server(_Model, request_rows=[]) as server:
        yield server


def make_data(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(np.round(rng.normal(size=(n, 4)), 3), columns=FEATURES[:4])
    data.insert(0, "id", [f"r{i}" for i in range(n)])
    data["color"] = rng.choice(["red", "blue", "green"], n)
    data["y"] = rng.integers(0, 2, n)
    return data

STAGES = (("post_training", "post_training_bias_metrics"), ("pre_training", "pre_training_bias_metrics"))


# -- the oracle: the pipeline on one segment's rows ---------------------------------------------------

def in_item(value, item) -> bool:
    """The test's own reading of a segment item (independent of analyzer.segments): pandas intervals."""
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(item, str) and item[:1] in "([":
        low, high = (float(x) for x in item[1:-1].split(","))
        closed = {"[]": "both", "[)": "left", "(]": "right", "()": "neither"}[item[0] + item[-1]]
        return value in pd.Interval(low, high, closed=closed)
    if isinstance(value, str):
        return value == str(item)
    return float(value) == float(item)


def expected_segments(frame: pd.DataFrame, column: str, lists: list[list]) -> list[list[int]]:
    """Row positions of each list, then of the rest (``__default__``)."""
    members = [[i for i, v in enumerate(frame[column]) if any(in_item(v, item) for item in items)]
               for items in lists]
    taken = {i for rows in members for i in rows}
    return [*members, [i for i in range(len(frame)) if i not in taken]]


def pipeline_alone(tmp_path: Path, frame: pd.DataFrame, config_doc: dict) -> dict:
    """What the pipeline reports for ``frame`` alone, stage by stage (a failed report as its error)."""
    if frame.empty:
        return {"error": EMPTY_SEGMENT}
    path = tmp_path / f"alone-{len(list(tmp_path.iterdir()))}.csv"
    frame.to_csv(path, header=False, index=False)
    alone = {key: value for key, value in config_doc.items() if key != "segment_config"}
    config = parse_config(copy.deepcopy(alone))
    dataset = load_job_dataset(config, path)
    out = {}
    for stage, key in STAGES:
        if f"{stage}_bias" not in config_doc["methods"]:
            continue
        try:
            out[key] = bias_analysis(dataset, config, stage)
        except UserError as error:
            out[key] = {"error": str(error)}
    return out


def run_whole(tmp_path: Path, frame: pd.DataFrame, config_doc: dict) -> dict:
    path = tmp_path / "whole.csv"
    frame.to_csv(path, header=False, index=False)
    config = parse_config(copy.deepcopy(config_doc))
    dataset = load_job_dataset(config, path)
    with OutputStaging(tmp_path / "out") as staging:
        return run_analysis(config, dataset, staging)


def check_against_pipeline(tmp_path: Path, frame: pd.DataFrame, config_doc: dict) -> list[dict]:
    results = json.loads(json.dumps(run_whole(tmp_path, frame, config_doc)))  # as analysis.json holds it
    entries = results["lucent"]["segments"]
    assert len(entries) == len(config_doc["segment_config"])
    for entry, configured in zip(entries, config_doc["segment_config"], strict=True):
        column = configured["name_or_index"]
        rows = expected_segments(frame, column, configured["segments"])
        assert [s["n_rows"] for s in entry["segments"]] == [len(r) for r in rows]
        assert entry["segments"][-1]["values"] is None
        for segment, positions in zip(entry["segments"], rows, strict=True):
            expected = pipeline_alone(tmp_path, frame.iloc[positions], config_doc)
            got = {key: value for key, value in segment.items() if key not in ("name", "values", "n_rows")}
            assert got == json.loads(json.dumps(expected)), (entry["config_name"], segment["name"])
    return entries


# -- bias per segment = the pipeline on the segment's rows ---------------------------------------------

def mixed_frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(15, 80, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan  # missing: in __default__
    frame = pd.DataFrame({
        "age": age,
        "g": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]),
        "grp": rng.choice(["u", "v", "w"], n),
        "score": rng.normal(size=n).round(3),
        "y": rng.choice(["yes", "no"], n),
    })
    frame["p"] = np.where(rng.random(n) < 0.75, frame["y"], rng.choice(["yes", "no"], n))
    frame.loc[0, "p"] = "yes"  # the whole dataset has a positive prediction (segments need not)
    return frame


MIXED = {
    "dataset_type": "text/csv", "headers": ["age", "g", "grp", "score", "y", "p"], "label": "y", "predicted_label": "p",
    "label_values_or_threshold": ["yes"], "group_variable": "grp",
    "methods": {"pre_training_bias": {"methods": "all"},
                "post_training_bias": {"methods": ["AD", "CDDPL", "DCA", "DI", "DPPL", "GE", "RD", "TE"]}},
}


FACETS = [{"name_or_index": "g"},  # one versus the rest: the values present in each segment
          {"name_or_index": "g", "value_or_threshold": ["b"]},
          {"name_or_index": "score", "value_or_threshold": [0.2]}]  # a threshold: (0.2, the segment's max]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 90), facet=st.sampled_from(FACETS),
       cut=st.integers(20, 60), closed=st.sampled_from(["[]", "[)", "(]", "()"]))
def test_bias_per_segment_equals_the_pipeline_on_the_segment_alone(tmp_path_factory, seed, n, facet, cut, closed):
    tmp_path = tmp_path_factory.mktemp("mixed")
    frame = mixed_frame(seed, n)
    config = copy.deepcopy(MIXED)
    config["facet"] = [facet]
    config["segment_config"] = [
        # a plain feature column (not loaded for a bias job: read for the segments), intervals + a value
        {"config_name": "ages", "name_or_index": "age",
         "segments": [[f"{closed[0]}15, {cut}{closed[1]}"], [f"({cut + 1}, 70]", 75]],
         "display_aliases": ["young", "older"]},
        # the facet itself: each segment holds one facet value, so d or a is empty there
        {"name_or_index": "g", "segments": [["a"], ["b", "zzz"]]},
    ]
    entries = check_against_pipeline(tmp_path, frame, config)
    assert [s["name"] for s in entries[0]["segments"]] == ["young", "older", "__default__"]
    assert [s["name"] for s in entries[1]["segments"]] == ["a", "b,zzz", "__default__"]


def numeric_frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x1": rng.normal(size=n).round(2), "x2": rng.integers(0, 4, n),
                         "sex": rng.integers(0, 2, n), "y": rng.integers(0, 2, n), "p": rng.integers(0, 2, n)})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flip_test_per_segment_uses_the_segment_rows(tmp_path, seed):
    """FT looks at the segment's feature rows (neighbours inside the segment), like a run on those rows."""
    frame = numeric_frame(seed, 600)  # segments of 150+ rows: a 0/1 column stays categorical (5% rule)
    config = {"dataset_type": "text/csv", "headers": list(frame.columns), "label": "y", "predicted_label": "p",
              "label_values_or_threshold": [1], "facet": [{"name_or_index": "sex", "value_or_threshold": [1]}],
              "methods": {"post_training_bias": {"methods": ["FT", "DPPL"]}},
              "segment_config": [{"name_or_index": "x2", "segments": [[0, 1], ["[3, 3]"]]}]}
    entries = check_against_pipeline(tmp_path, frame, config)
    values = [m["value"] for s in entries[0]["segments"]
              for m in s["post_training_bias_metrics"]["facets"]["sex"][0]["metrics"] if m["name"] == "FT"]
    assert all(isinstance(v, float) for v in values) and len(set(values)) > 1  # computed, and per segment


def test_empty_segment_and_absent_facet_are_reported_not_raised(tmp_path):
    frame = mixed_frame(7, 80)
    config = copy.deepcopy(MIXED)
    config["facet"] = [{"name_or_index": "g", "value_or_threshold": ["c"]}]
    config["segment_config"] = [{"name_or_index": "age", "segments": [["[100, 200]"]]},
                                {"name_or_index": "g", "segments": [["a", "b"]]}]
    entries = check_against_pipeline(tmp_path, frame, config)
    empty = entries[0]["segments"][0]
    assert empty == {"name": "[100, 200]", "values": ["[100, 200]"], "n_rows": 0, "error": EMPTY_SEGMENT}
    no_c = entries[1]["segments"][0]["pre_training_bias_metrics"]["facets"]["g"][0]["metrics"]
    errors = {m["name"]: m.get("error") for m in no_c}
    assert errors["CI"] == "CI: facet set is empty. Check that x[facet] has non-zero length."
    assert errors["DPL"] == "Facet set is empty."


# -- SHAP per segment ----------------------------------------------------------------------------------

def shap_config(server, agg_method: str, segments: list | None) -> dict:
    config = {
        "dataset_type": "text/csv", "headers": HEADERS, "label": "y", "joinsource_name_or_index": "id",
        "methods": {"shap": {"baseline": BASELINE, "seed": 3, "num_samples": 14, "agg_method": agg_method}},
        "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "label_headers": ["a", "b"]},
    }
    if segments is not None:
        config["segment_config"] = segments
    return config


SHAP_SEGMENTS = [{"name_or_index": "color", "segments": [["red"], ["blue"]]},
                 {"config_name": "x0 bands", "name_or_index": "x0", "segments": [["(-inf, -0.5]"], ["(0, 0.75)"]]}]


@pytest.mark.parametrize("agg_method", ["mean_abs", "median", "mean_sq"])
def test_shap_per_segment_aggregates_the_segment_records(tmp_path, endpoint, agg_method):
    data = make_data(n=40, seed=5)
    job = JobRoot(tmp_path / "seg")
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config(shap_config(endpoint, agg_method, SHAP_SEGMENTS))
    assert job.run() == 0, job.message
    analysis = job.analysis()
    local = pd.read_csv(job.output_dir / "explanations_shap" / "out.csv")
    assert local["id"].tolist() == data["id"].tolist()
    aggregate = {"mean_abs": lambda v: np.abs(v).mean(axis=0), "median": lambda v: np.median(v, axis=0),
                 "mean_sq": lambda v: (v ** 2).mean(axis=0)}[agg_method]
    for entry, configured in zip(analysis["lucent"]["segments"], SHAP_SEGMENTS, strict=True):
        rows = expected_segments(data, configured["name_or_index"], configured["segments"])
        assert [s["n_rows"] for s in entry["segments"]] == [len(r) for r in rows]
        for segment, positions in zip(entry["segments"], rows, strict=True):
            kernel = segment["explanations"]["kernel_shap"]
            assert list(kernel) == ["a", "b"]
            for label in ("a", "b"):
                columns = [f"{feature}_{label}" for feature in FEATURES]
                expected = aggregate(local.iloc[positions][columns].to_numpy())
                got = [kernel[label]["global_shap_values"][feature] for feature in FEATURES]
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
                assert kernel[label]["expected_value"] == analysis["explanations"]["kernel_shap"][label]["expected_value"]
    # The segment holding every record gives back the job's own global values.
    whole = analysis["explanations"]["kernel_shap"]["a"]["global_shap_values"]
    assert sum(s["n_rows"] for s in analysis["lucent"]["segments"][0]["segments"]) == len(data)

    # No extra model call: the same job without segments sends exactly the same rows to the model.
    sent = sum(endpoint.request_rows)
    endpoint.request_rows.clear()
    plain = JobRoot(tmp_path / "plain")
    plain.write_data(data.to_csv(index=False, header=False))
    plain.write_config(shap_config(endpoint, agg_method, None))
    assert plain.run() == 0
    assert sum(endpoint.request_rows) == sent
    assert plain.analysis()["explanations"]["kernel_shap"]["a"]["global_shap_values"] == whole


# -- a whole `lucent run`: the documented layout, the report, the SDK's shape --------------------------

def test_lucent_run_writes_the_documented_layout_and_report(tmp_path, endpoint):
    data = make_data(n=60, seed=9)
    data["p"] = (data["x0"] > 0).astype(int)
    headers = [*HEADERS, "p"]
    # The SDK's SegmentationConfig(...).to_dict() shape (spec 2.1), with the spec's interval strings.
    sdk_segments = [{"name_or_index": "x1", "segments": [["[1, 4]", "(2, 5]"], ["(-inf, 0]"]],
                     "config_name": "x1 bands", "display_aliases": ["high", "low", "middle"]},
                    {"name_or_index": "color", "segments": [["red", "green"]]}]
    config = shap_config(endpoint, "mean_abs", sdk_segments)
    config.update(headers=headers, predicted_label="p", label_values_or_threshold=[1],
                  facet=[{"name_or_index": "color", "value_or_threshold": ["red"]}])
    config["methods"].update(pre_training_bias={"methods": "all"}, post_training_bias={"methods": "all"},
                             report={"name": "report", "title": "Segments"})
    job = JobRoot(tmp_path / "full")
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config(config)
    assert job.run() == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    analysis = job.analysis()
    # Clarify's layout first and untouched; Lucent's section last.
    assert list(analysis) == ["version", "post_training_bias_metrics", "pre_training_bias_metrics", "explanations",
                              "lucent"]
    assert list(analysis["lucent"]) == ["segments"]
    first, second = analysis["lucent"]["segments"]
    assert {k: first[k] for k in ("config_name", "name_or_index", "column")} == \
        {"config_name": "x1 bands", "name_or_index": "x1", "column": "x1"}
    assert second["config_name"] == "color"
    assert [s["name"] for s in first["segments"]] == ["high", "low", "middle"]
    assert [s["values"] for s in first["segments"]] == [["[1, 4]", "(2, 5]"], ["(-inf, 0]"], None]
    for segment in first["segments"] + second["segments"]:
        assert list(segment)[:3] == ["name", "values", "n_rows"]
        if segment["n_rows"]:
            assert list(segment)[3:] == ["post_training_bias_metrics", "pre_training_bias_metrics", "explanations"]
    plain = copy.deepcopy(config)
    del plain["segment_config"], plain["methods"]["report"]  # the report does not change analysis.json
    other = JobRoot(tmp_path / "plain")
    other.write_data(data.to_csv(index=False, header=False))
    other.write_config(plain)
    assert other.run() == 0
    assert other.analysis() == {k: v for k, v in analysis.items() if k != "lucent"}
    # The report: one table per segment, in HTML and in the notebook.
    html = (job.output_dir / "report.html").read_text(encoding="utf-8")
    assert "Results per segment" in html and "Segments of x1 bands" in html
    for name in ("high", "low", "middle", "red,green", "__default__"):
        assert f">{name}<" in html, name
    notebook = json.loads((job.output_dir / "report.ipynb").read_text(encoding="utf-8"))
    calls = [c["source"] for c in notebook["cells"] if "".join(c["source"]).startswith("segment_table(")]
    assert len(calls) == 5


# -- lucent validate -----------------------------------------------------------------------------------

def test_validate_checks_segments_against_the_data(tmp_path, capsys):
    job = JobRoot(tmp_path / "validate")
    frame = pd.DataFrame({"age": [20, 30, 40, 50], "flag": [True, False, True, False], "g": ["a", "b", "a", "b"],
                          "y": [1, 0, 1, 0]})
    job.write_data(frame.to_csv(index=False))  # a header row, and no `headers`: columns checked with the data
    job.write_config({"dataset_type": "text/csv", "label": "y", "label_values_or_threshold": [0],
                      "facet": [{"name_or_index": "g"}], "methods": {"pre_training_bias": {"methods": "all"}},
                      "segment_config": [{"name_or_index": "agee", "segments": [[1]]},
                                         {"name_or_index": "age", "segments": [["young"], ["(1, 2"]]},
                                         {"name_or_index": "flag", "segments": [["true"], ["True"]]},
                                         {"name_or_index": "g", "segments": [["(0, 1]"]]},
                                         {"name_or_index": 9, "segments": [[1]]}]})
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    for fragment in ("segment_config[0].name_or_index: 'agee' is not a column of the dataset",
                     "Did you mean 'age'?",
                     "segment_config[4].name_or_index: column index 9 is out of range"):
        assert fragment in printed, (fragment, printed)
    assert job.output_files() == []
    # Once the columns exist, the values are checked, every problem at once.
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["segment_config"] = config["segment_config"][1:4]
    job.write_config(config)
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    for fragment in ("segment_config[0].segments[0][0]: 'young' is not a number",
                     "segment_config[0].segments[1][0]: '(1, 2' is not a number",
                     "segment_config[1].segments: lists 0 and 1 both select the value True of column 'flag'",
                     "segment_config[2].segments[0][0]: the interval '(0, 1]' needs a numeric column"):
        assert fragment in printed, (fragment, printed)
    assert "4 problem(s) found" in printed
    # And a job with them stops before computing anything.
    assert job.run() == 1
    assert job.message.startswith("ClientError: segment_config[0].segments[0][0]")
    assert job.output_files() == []


def test_the_sdk_segmentation_config_runs_unchanged(tmp_path):
    """The SDK unit tests' config with ``SegmentationConfig("F1", [[0]], config_name="c1", display_aliases=["a1"])``
    (tests/test_config.py keeps it verbatim), run as is on data with those columns."""
    from tests.test_config import SDK_CONFIGS

    config = copy.deepcopy(SDK_CONFIGS["predicted_label_and_excluded"])
    assert config["segment_config"] == [{"config_name": "c1", "display_aliases": ["a1"], "name_or_index": "F1",
                                         "segments": [[0]]}]
    rng = np.random.default_rng(4)
    n = 300
    frame = pd.DataFrame({"Label": rng.integers(0, 2, n), "F1": rng.integers(0, 3, n), "F2": rng.integers(0, 4, n),
                          "F3": rng.normal(size=n).round(2), "F4": rng.integers(0, 9, n)})
    frame["Predicted Label"] = np.where(rng.random(n) < 0.8, frame["Label"], 1 - frame["Label"])
    (entry,) = check_against_pipeline(tmp_path, frame, config)
    assert (entry["config_name"], entry["column"]) == ("c1", "F1")
    assert [(s["name"], s["values"], s["n_rows"]) for s in entry["segments"]] == [
        ("a1", [0], int((frame["F1"] == 0).sum())), ("__default__", None, int((frame["F1"] != 0).sum()))]
    # F1 is constant in "a1": its one-vs-rest group has no "rest", so the metrics say so.
    metrics = entry["segments"][0]["post_training_bias_metrics"]["facets"]["F1"][0]["metrics"]
    assert {m["name"]: m.get("error") for m in metrics}["DPPL"] == "Negative facet set is empty."


def test_rows_grouped_by_an_engine_are_refused_with_a_reason():
    """A dataset whose rows stand for several rows (the Spark engine's GroupedRows) has no per-row segment
    values: the job says so instead of segmenting the groups."""
    from dataclasses import dataclass

    from analyzer.data import Dataset
    from analyzer.segments.analysis import check_segment_inputs

    @dataclass
    class Grouped(Dataset):
        weights: np.ndarray | None = None

    config = parse_config({**MIXED, "facet": [{"name_or_index": "g"}],
                           "segment_config": [{"name_or_index": "g", "segments": [["a"]]}]})
    grouped = Grouped("data.csv", 10, MIXED["headers"], ["age", "g", "grp", "score"], weights=np.array([4, 6]))
    (problem,) = check_segment_inputs(config, grouped, None)
    assert problem.startswith("segment_config: segments are computed on the local engine only")
