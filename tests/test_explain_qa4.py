"""Explanations, QA round 4: duplicate label headers, one explained feature and budgets below one pair,
PDP on free text, messages that name the key to fix, baseline files read back bit for bit, and the report's
wording per ``agg_method``."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from http.server import BaseHTTPRequestHandler

import joblib
import numpy as np
import pandas as pd
import pytest

from analyzer.config import ConfigValidationError, parse_config
from analyzer.explain import KernelShap, limits, make_design
from analyzer.explain.design import MIN_NUM_SAMPLES, design_coalitions
from analyzer.report import JobSummary, views
from analyzer.report.content import build_document
from analyzer.report.html import render_html
from tests.conftest import JobRoot, csv_scoring_model, http_server


def brute_force(model, x: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Exact Shapley values ``(M, k)`` of ``v(S) = mean_b model(x_S, b_-S)``."""
    m = len(x)

    def value(subset: tuple[int, ...]) -> np.ndarray:
        rows = baseline.copy()
        rows[:, list(subset)] = x[list(subset)]
        return np.atleast_2d(model(rows).T).T.mean(axis=0)

    values = {s: value(s) for r in range(m + 1) for s in itertools.combinations(range(m), r)}
    phi = np.zeros((m, len(values[()])))
    for j in range(m):
        for subset, v in values.items():
            if j not in subset:
                weight = math.factorial(len(subset)) * math.factorial(m - len(subset) - 1) / math.factorial(m)
                phi[j] += weight * (values[tuple(sorted((*subset, j)))] - v)
    return phi


def nonlinear(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=float)
    first = np.tanh(x[:, 0]) + 0.5 * x[:, 0] * x[:, -1] + x[:, -1] ** 2
    return np.column_stack([first, np.sin(x[:, 0] - x[:, -1])])


# -- 1. duplicate label headers ----------------------------------------------------------------------

CONFIG = {"dataset_type": "text/csv", "headers": ["y", "x0", "x1"], "label": "y",
          "methods": {"shap": {"baseline": [[0, 0]]}}, "predictor": {"endpoint_name": "e"}}


@pytest.mark.parametrize("headers, duplicate", [(["x", "x"], "'x'"), (["1", 1], "1"), (["a", "b", "a"], "'a'")])
def test_duplicate_label_headers_are_a_config_error(headers, duplicate):
    doc = copy.deepcopy(CONFIG)
    doc["predictor"]["label_headers"] = headers
    with pytest.raises(ConfigValidationError) as caught:
        parse_config(doc)
    problems = [p for p in caught.value.problems if p.startswith(f"predictor.label_headers[{len(headers) - 1}]: ")]
    assert problems, caught.value.problems
    assert f"{duplicate} names the same output as predictor.label_headers[0]" in problems[0]


def test_distinct_label_headers_pass():
    doc = copy.deepcopy(CONFIG)
    doc["predictor"]["label_headers"] = ["1", "2", 3]
    parse_config(doc)


def test_validate_reports_duplicate_label_headers(job, capsys):
    job.write_data("1,0.5,1.0\n0,-0.5,2.0\n")
    doc = copy.deepcopy(CONFIG)
    doc["predictor"] = {"endpoint_url": "http://127.0.0.1:9", "label_headers": ["x", "x"]}
    job.write_config(doc)
    assert job.run(command="validate") == 1
    assert "predictor.label_headers[1]: 'x' names the same output" in capsys.readouterr().out


# -- 2. one explained feature; budgets below one pair --------------------------------------------------

def test_one_feature_gets_the_whole_difference_with_no_coalition():
    rng = np.random.default_rng(0)
    baseline = rng.normal(size=(3, 1))
    records = rng.normal(size=(7, 1))
    explanation = KernelShap(nonlinear, baseline, seed=1).explain(records)
    assert explanation.design.masks.shape == (0, 1)
    expected = nonlinear(records) - nonlinear(baseline).mean(axis=0)
    np.testing.assert_allclose(explanation.values[:, 0, :], expected, rtol=0, atol=1e-14)
    assert np.all(explanation.stderr == 0)
    for num_samples in (1, 2, 100):  # no budget changes anything
        again = KernelShap(nonlinear, baseline, seed=1, num_samples=num_samples).explain(records)
        np.testing.assert_array_equal(again.values, explanation.values)


def test_num_samples_one_uses_one_pair_and_is_exact_for_two_features():
    rng = np.random.default_rng(1)
    baseline = rng.normal(size=(2, 2))
    records = rng.normal(size=(5, 2))
    explanation = KernelShap(nonlinear, baseline, seed=3, num_samples=1).explain(records)
    assert len(explanation.design.masks) == MIN_NUM_SAMPLES and explanation.design.exact
    for i, x in enumerate(records):
        np.testing.assert_allclose(explanation.values[i], brute_force(nonlinear, x, baseline), rtol=0, atol=1e-12)
    assert np.all(explanation.stderr == 0)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 12])
@pytest.mark.parametrize("num_samples", [None, 1, 2, 3, 7, 40])
def test_coalition_count_matches_the_design(m, num_samples):
    count = len(make_design(m, num_samples, seed=0).masks)
    assert design_coalitions(m, num_samples) == count == limits.coalitions(num_samples, m)


def shap_job(job: JobRoot, server, features: list[str], shap: dict, **predictor) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    data = pd.DataFrame(np.round(rng.normal(size=(12, len(features))), 3), columns=features)
    data.insert(0, "y", rng.integers(0, 2, len(data)))
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
                      "methods": {"shap": shap},
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", **predictor}})
    return data


def _score_frame(frame: pd.DataFrame) -> np.ndarray:
    return nonlinear(frame.to_numpy(dtype=float))


@pytest.fixture
def endpoint():
    with http_server(csv_scoring_model(_score_frame), request_rows=[]) as server:
        yield server


@pytest.mark.parametrize("features, shap", [
    (["x0"], {"baseline": [[0.25]], "seed": 1}),
    (["x0"], {"seed": 1}),  # computed baseline
    (["x0", "x1"], {"baseline": [[0.25, -0.5]], "seed": 1, "num_samples": 1}),
])
def test_jobs_with_one_feature_or_one_sample_give_exact_values(job, endpoint, features, shap):
    data = shap_job(job, endpoint, features, shap)
    assert job.run() == 0, job.message
    baseline = pd.read_csv(job.output_dir / "explanations_shap/baseline.csv").to_numpy(dtype=float)
    out = pd.read_csv(job.output_dir / "explanations_shap/out.csv").to_numpy()
    stderr = pd.read_csv(job.output_dir / "explanations_shap/out_stderr.csv").to_numpy()
    x = data[features].to_numpy(dtype=float)
    exact = np.array([brute_force(nonlinear, row, baseline) for row in x])  # (n, M, k)
    np.testing.assert_allclose(out, exact.transpose(0, 2, 1).reshape(len(x), -1), rtol=0, atol=1e-12)
    assert np.all(stderr == 0)


def test_validate_passes_one_feature_and_one_sample(job, endpoint):
    shap_job(job, endpoint, ["x0", "x1"], {"baseline": [[0.0, 0.0]], "num_samples": 1})
    assert job.run(command="validate") == 0


# -- 3. PDP on free text -----------------------------------------------------------------------------

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "very", "good", "bad", "terrible",
         "product", "service"]


def _pdp_score(frame: pd.DataFrame) -> np.ndarray:
    return 0.3 * frame.iloc[:, 0].to_numpy(dtype=float) + 0.1 * frame.iloc[:, 1].to_numpy(dtype=float)


@pytest.fixture
def pdp_endpoint():
    with http_server(csv_scoring_model(_pdp_score), request_rows=[]) as server:
        yield server


def test_pdp_gives_the_free_text_entry_without_any_text_config(job, pdp_endpoint):
    rng = np.random.default_rng(0)
    n = 60
    data = pd.DataFrame({"y": rng.integers(0, 2, n), "f0": np.round(rng.normal(size=n), 3),
                         "bin": rng.integers(0, 2, n),
                         "txt": [" ".join(rng.choice(WORDS, size=8)) for _ in range(n)],
                         "city": rng.choice(["Paris", "Lyon", "Nice"], n)})
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
                      "methods": {"pdp": {"features": ["bin", "txt", "city"], "grid_resolution": 3}},
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{pdp_endpoint.server_port}"}})
    assert job.run() == 0, job.message
    entries = job.analysis()["explanations"]["pdp"]
    assert entries[1] == {"feature_name": "txt", "data_type": "free_text",
                          "error": "Detected data type is not supported for PDP. PDP can only be computed for "
                                   "numerical or categorical columns"}
    assert entries[0]["data_type"] == "numerical" and len(entries[0]["feature_values"]) == 3
    # A category of one word per value stays a categorical feature, one grid value per category.
    assert entries[2]["data_type"] == "categorical" and sorted(entries[2]["feature_values"]) == ["Lyon", "Nice", "Paris"]
    # The model scored the two grids only: 3 + 3 grid values of 60 records, nothing for the 60 texts.
    assert sum(pdp_endpoint.request_rows) == 6 * n


def test_pdp_memory_estimate_counts_a_categorys_values(job, pdp_endpoint, capsys):
    """A categorical feature's grid has one value per category: a column of codes too many for the memory
    is refused before anything runs, though grid_resolution alone would fit."""
    width = 200
    per_value = 24 * 2000 * width  # bytes per grid value: 2,000 records x the features
    n = max(2000, int(1.5 * limits.memory_limit_bytes() / per_value) + 1)
    rng = np.random.default_rng(0)
    data = pd.DataFrame(np.round(rng.normal(size=(n, width - 1)), 2), columns=[f"f{j}" for j in range(width - 1)])
    data["code"] = [f"c{i}" for i in range(n)]
    data.insert(0, "y", rng.integers(0, 2, n))
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
                      "methods": {"pdp": {"features": ["f0", "code"], "grid_resolution": 20}},
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{pdp_endpoint.server_port}"}})
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    assert f"methods.pdp.features: 'code' has {n:,} distinct values" in printed, printed
    assert pdp_endpoint.request_rows == []


def test_grid_points_count_categories():
    assert limits.grid_points(pd.Series([1.0, 2.0, 3.0]), 20) == 20
    assert limits.grid_points(pd.Series(["a", "b", "a", None]), 20) == 2


# -- 4. messages that name the key to fix ---------------------------------------------------------------

@pytest.mark.parametrize("predictor, fragment", [
    ({"label_headers": ["only"]}, "predictor.label_headers: 1 header(s) ['only'] but the model returns 2 score(s)"),
    ({"label_headers": ["no", "yes"], "probability": 1},
     "predictor.label_headers: 2 header(s) ['no', 'yes'] but the model returns 1 score(s) per record "
     "(what predictor.probability 1 selects"),
])
def test_label_headers_count_is_blamed_on_label_headers(job, endpoint, predictor, fragment):
    shap_job(job, endpoint, ["x0", "x1"], {"baseline": [[0.0, 0.0]], "seed": 1}, **predictor)
    assert job.run() == 1
    assert fragment in job.message, job.message
    assert "baseline" not in job.message


class _LabelModel(BaseHTTPRequestHandler):
    """A model that answers with labels (``yes`` / ``no``), not scores."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        out = "".join(("yes" if float(line.split(",")[0]) > 0 else "no") + "\n" for line in body.splitlines())
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("methods", [{"shap": {"baseline": [[0.5, 0.0]], "seed": 1}},
                                     {"pdp": {"features": ["x0"], "grid_resolution": 3}}])
@pytest.mark.parametrize("keys", [{}, {"label": 0}])
def test_a_model_returning_labels_over_http_is_told_so(job, methods, keys):
    """Labels where explanations need scores (read as scores, or named by predictor.label): the message says
    so and names the keys that choose the scores (not that the baseline failed)."""
    with http_server(_LabelModel) as server:
        shap_job(job, server, ["x0", "x1"], {})
        job.write_config({"dataset_type": "text/csv", "headers": ["y", "x0", "x1"], "label": "y", "methods": methods,
                          "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}", **keys}})
        assert job.run() == 1
    method = next(iter(methods))
    assert any(f"methods.{method}: the model returns labels such as {label!r}, not scores" in job.message
               for label in ("yes", "no")), job.message
    assert "predictor.probability" in job.message and "baseline" not in job.message


@pytest.mark.parametrize("methods", [{"shap": {"baseline": [[0.0, 0.0]], "seed": 1}},
                                     {"pdp": {"features": ["x0"], "grid_resolution": 3}}])
# object labels cannot be npy (the answer is asked again as CSV); numpy strings can. Through the built-in server
# (lucent_scoring "server") the npy refusal is its 500.
@pytest.mark.parametrize(("dtype", "scoring"), [(object, "in_process"), (str, "in_process"), (object, "server")])
def test_an_in_process_model_returning_labels_is_not_told_about_npy(job, methods, dtype, scoring):
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 2))
    labels = np.where(x[:, 0] > 0, "yes", "no").astype(dtype)
    (job.root / "input/model").mkdir(parents=True)
    joblib.dump(LinearSVC(random_state=0).fit(x, labels), job.root / "input/model/model.joblib")
    data = pd.DataFrame({"y": labels, "x0": x[:, 0].round(3), "x1": x[:, 1].round(3)})
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": ["y", "x0", "x1"], "label": "y", "methods": methods,
                      "predictor": {"content_type": "text/csv", "accept_type": "text/csv", "lucent_scoring": scoring}})
    assert job.run() == 1
    assert any(f"methods.{next(iter(methods))}: the model returns labels such as {label!r}, not scores" in job.message
               for label in ("yes", "no")), job.message
    assert "not scores" in job.message and "npy" not in job.message and "predictor.probability" in job.message
    assert "baseline" not in job.message


def test_pdp_frames_worded_where_they_are_scored_and_labels_told_by_type_not_text():
    """``predict_frames`` (each Spark task's scoring, whose errors travel on as text) words a model answering
    labels as PDP's message; an error that only reads like the parser's is not taken for labels."""
    from analyzer.config.model import Predictor
    from analyzer.errors import UserError
    from analyzer.explain.pdp import labels_not_scores, predict_frames
    from analyzer.predict import ModelEndpoint
    from analyzer.predict.decode import LabelsNotScores

    with http_server(_LabelModel) as server:
        endpoint = ModelEndpoint(f"http://127.0.0.1:{server.server_port}", Predictor(content_type="text/csv"),
                                 ("x0", "x1"))
        frame = pd.DataFrame({"x0": [1.0, -1.0], "x1": [0.0, 0.0]})
        with pytest.raises(UserError) as caught:
            list(predict_frames(endpoint, [frame]))
    assert not isinstance(caught.value, LabelsNotScores)  # already PDP's words
    assert str(caught.value).startswith("methods.pdp: the model returns labels such as 'yes', not scores: ")
    lookalike = UserError("Model output score for row 0 is not a number: 'yes'; if the model returns predicted "
                          "labels, set predictor.label")
    assert labels_not_scores("methods.pdp", lookalike) is None


# -- 5. JSON Lines inline baseline rows ---------------------------------------------------------------

@pytest.mark.parametrize("baseline, fragment", [
    ([{"features": [0, 0, 0]}], "methods.shap.baseline: row 0 has 3 values but the model has 4 feature columns"),
    ([{"features": [0, 0, 0, 0]}, {"features": [0, 0, 0]}], "row 1 has 3 feature values but row 0 has 4"),
    ([{"feats": [0, 0, 0, 0]}], "gives nothing (no match) on row 0"),
])
def test_json_lines_inline_baseline_errors_name_the_row(job, capsys, baseline, fragment):
    rng = np.random.default_rng(3)
    job.write_data("".join(json.dumps({"features": rng.normal(size=4).round(3).tolist(), "label": int(i % 2)}) + "\n"
                           for i in range(10)), name="data.jsonl")
    job.write_config({"dataset_type": "application/jsonlines", "headers": ["f0", "f1", "f2", "f3", "label"],
                      "features": "features", "label": "label", "methods": {"shap": {"baseline": baseline}},
                      "predictor": {"endpoint_url": "http://127.0.0.1:9", "content_type": "application/jsonlines",
                                    "content_template": '{"features":$features}'}})
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    assert fragment in printed, printed
    assert "lucent-baseline-" not in printed and "/tmp" not in printed


# -- 6. baseline.csv fed back gives the same bytes ----------------------------------------------------

def test_baseline_csv_fed_back_reproduces_every_value(tmp_path, endpoint):
    first, second = JobRoot(tmp_path / "first"), JobRoot(tmp_path / "second")
    rng = np.random.default_rng(7)
    data = pd.DataFrame(np.round(rng.normal(size=(200, 6)), 3), columns=[f"f{j}" for j in range(6)])
    data.insert(0, "y", rng.integers(0, 2, len(data)))
    config = {"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
              "methods": {"shap": {"num_clusters": 4, "seed": 1}},
              "predictor": {"endpoint_url": f"http://127.0.0.1:{endpoint.server_port}"}}
    for job in (first, second):
        job.write_data(data.to_csv(index=False, header=False))
    first.write_config(config)
    assert first.run() == 0, first.message
    written = (first.output_dir / "explanations_shap/baseline.csv").read_bytes()
    (second.config_dir / "baseline.csv").write_bytes(written)
    config["methods"]["shap"] = {"baseline": "baseline.csv", "seed": 1}
    second.write_config(config)
    assert second.run() == 0, second.message
    assert (second.output_dir / "explanations_shap/baseline.csv").read_bytes() == written
    for name in ("out.csv", "out_stderr.csv"):
        assert (second.output_dir / "explanations_shap" / name).read_bytes() == \
            (first.output_dir / "explanations_shap" / name).read_bytes()
    assert second.analysis()["explanations"] == first.analysis()["explanations"]


# -- 7. the report's wording per agg_method ----------------------------------------------------------

def _analysis() -> dict:
    values = {"age": 0.2, "income": -0.1, "tenure": 0.05}
    return {"explanations": {"kernel_shap": {"label0": {"global_shap_values": values, "expected_value": 0.4}}}}


def _summary(agg_method: str | None) -> JobSummary:
    return JobSummary(dataset_source="data.csv", dataset_type="text/csv", n_rows=100, label="y",
                      label_values_or_threshold=None, facets=[], methods=["shap"], lucent_version="0",
                      started_at="2024-05-01T12:30:00Z", shap_agg_method=agg_method)


@pytest.mark.parametrize("agg_method, said, axis", [
    ("median", "<strong>median</strong> SHAP value over the explained rows, with its sign",
     "median SHAP value over the rows (signed)"),
    ("mean_sq", "<strong>mean of the squared</strong> SHAP values over the explained rows",
     "mean of squared SHAP values over the rows"),
    ("mean_abs", "<strong>mean absolute</strong> SHAP value over the explained rows", "mean |SHAP value| over the rows"),
    (None, "aggregates its SHAP values over the explained rows, as methods.shap.agg_method says",
     "global SHAP value (methods.shap.agg_method over the rows)"),
])
def test_report_words_the_global_values_by_agg_method(agg_method, said, axis):
    html = render_html(build_document(_analysis(), _summary(agg_method)))
    assert said in html, html
    assert "averaged over the explained rows" not in html
    xlabel = views.shap_chart(_analysis(), "label0", agg_method=agg_method).axes[0].get_xlabel()
    assert axis in xlabel
    assert ("median" in xlabel) == (agg_method == "median") and ("squared" in xlabel) == (agg_method == "mean_sq")


@pytest.mark.parametrize("agg_method", ["mean_abs", "median", "mean_sq", None])
def test_shap_chart_axis_fits_its_figure_for_every_agg_method(agg_method):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    analysis = _analysis()
    analysis["explanations"]["kernel_shap"]["label0"]["lucent_global_shap_stderr"] = {"age": 0.01, "income": 0.02,
                                                                                      "tenure": 0.0}
    figure = views.shap_chart(analysis, "label0", agg_method=agg_method)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = figure.get_tightbbox(canvas.get_renderer())
    width, height = figure.get_size_inches()
    assert drawn.x0 >= 0 and drawn.x1 <= width + 0.005 and drawn.y1 <= height + 0.005


@pytest.mark.parametrize("agg_method", ["median", "mean_sq", None])
def test_the_jobs_summary_carries_its_agg_method(tmp_path, agg_method):
    """What a real job's report is worded by: the pipeline's summary of the job (analysis.json has no
    agg_method), None when the job asked for no SHAP."""
    from analyzer.data import load_dataset
    from analyzer.pipeline import job_summary
    from container.demo import write_demo_job

    root = write_demo_job(tmp_path / "job", n_rows=60)
    document = json.loads((root / "input" / "config" / "analysis_config.json").read_text())
    if agg_method is None:
        document["methods"].pop("shap", None)
    else:
        document["methods"]["shap"] = {"baseline": [[0] * 7], "agg_method": agg_method}
        document["predictor"] = {"endpoint_url": "http://127.0.0.1:9", "content_type": "text/csv"}  # never called
    config = parse_config(document)
    dataset = load_dataset(config, root / "input" / "data")
    assert job_summary(config, dataset, {}, "2026-12-07T00:00:00Z").shap_agg_method == agg_method


def test_wide_records_make_smaller_shards_and_count_as_more_work(monkeypatch):
    """Shards and rows per worker hold values, not rows, past NARROW_COLUMNS columns: 200 records of 1,000
    features were one shard (no progress for the whole step, one core, 1.9 GB)."""
    from analyzer.explain.shards import (
        DEFAULT_SHARD_ROWS,
        IN_PROCESS_ROWS_PER_WORKER,
        NARROW_COLUMNS,
        SHARD_ROWS_ENV,
        planned_workers,
        shard_size,
        tabular_shard_rows,
        wide_rows,
    )

    monkeypatch.delenv(SHARD_ROWS_ENV, raising=False)
    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "")  # the default: one per core, by the work there is
    assert tabular_shard_rows(14) == tabular_shard_rows(NARROW_COLUMNS) == DEFAULT_SHARD_ROWS  # narrow: as before
    assert tabular_shard_rows(1000) * 1000 == DEFAULT_SHARD_ROWS * NARROW_COLUMNS
    rows_per_record = 2 * 1000 + 2048 + 1
    assert DEFAULT_SHARD_ROWS // rows_per_record >= 200  # one shard for every record, by rows alone
    assert shard_size(rows_per_record, tabular_shard_rows(1000)) == 3
    rows = 200 * rows_per_record
    assert planned_workers(67, rows, IN_PROCESS_ROWS_PER_WORKER, None) == 1
    assert planned_workers(67, rows, wide_rows(IN_PROCESS_ROWS_PER_WORKER, 1000), None) == min(2, os.cpu_count() or 1)
    monkeypatch.setenv(SHARD_ROWS_ENV, "5000")  # the user's setting is taken as it is
    assert tabular_shard_rows(1000) == tabular_shard_rows(14) == 5000


def test_a_mistyped_feature_name_is_suggested_and_a_long_feature_list_is_cut(tmp_path):
    """methods.shap.features_to_explain / methods.pdp.features name features as the facets do: a close name is
    suggested, and a dataset of hundreds of features is not listed whole in the message."""
    from analyzer.config.model import AnalysisConfig, Methods
    from analyzer.data import load_dataset
    from analyzer.errors import UserError
    from analyzer.explain.job import feature_index

    names = ["income", *(f"f{i}" for i in range(300))]
    path = tmp_path / "d.csv"
    path.write_text(",".join(["y", *names]) + "\n" + ",".join(["1"] * (len(names) + 1)) + "\n")
    dataset = load_dataset(AnalysisConfig(dataset_type="text/csv", label="y", methods=Methods()), path,
                           need_features=True)
    assert feature_index("f7", dataset, "methods.pdp.features") == 8
    with pytest.raises(UserError) as error:
        feature_index("Income", dataset, "methods.shap.features_to_explain")
    message = str(error.value)
    assert message.startswith("methods.shap.features_to_explain: 'Income' is not a feature column; features: ")
    assert message.endswith("Did you mean 'income'?") and "(271 more)" in message and "'f299'" not in message
