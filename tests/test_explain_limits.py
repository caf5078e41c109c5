"""Explain-side limits and outputs: jobs too large for memory are refused up front (``lucent run`` and
``lucent validate`` alike, with the estimate in the message), ``num_clusters`` beyond the rows, strict JSON
in out.jsonl, and relative baseline paths taken only from the folder the caller names."""

from __future__ import annotations

import json
import math
import re
from http.server import BaseHTTPRequestHandler

import numpy as np
import pandas as pd
import pytest

from analyzer.config import load_config
from analyzer.errors import UserError
from analyzer.explain import limits
from analyzer.explain.job import explain_dataset
from analyzer.explain.text_job import json_line, write_text_local
from analyzer.explain.text_shap import TextExplanation
from analyzer.explain.text_units import TextUnit
from analyzer.output import OutputStaging
from analyzer.pipeline import load_job_dataset
from analyzer.predict import ModelEndpoint
from tests import test_explain_text_job as text
from tests.conftest import JobRoot, http_server

WIDE = 60  # features of the wide dataset: 2**60 coalitions, so a budget is never capped by enumeration


class _SumModel(BaseHTTPRequestHandler):
    """A CSV model that scores the sum of the features and counts its requests."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.requests += 1
        rows = np.loadtxt(body.splitlines(), delimiter=",", ndmin=2)
        out = "".join(f"{float(value)!r}\n" for value in rows.sum(axis=1))
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def model():
    with http_server(_SumModel, requests=0) as server:
        yield server


def wide_job(job: JobRoot, server, n_rows: int = 30, **methods) -> None:
    rng = np.random.default_rng(0)
    data = pd.DataFrame(np.round(rng.normal(size=(n_rows, WIDE)), 3), columns=[f"f{j}" for j in range(WIDE)])
    data["y"] = rng.integers(0, 2, n_rows)
    job.write_data(data.to_csv(index=False, header=False))
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y", "methods": methods,
                      "predictor": {"endpoint_url": f"http://127.0.0.1:{server.server_port}"}})


def refused_by_run_and_validate(job: JobRoot, server, capsys, *fragments: str) -> str:
    """Both commands exit 1 naming ``fragments``; the model is never asked; nothing is written."""
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    assert job.run() == 1, job.message
    assert job.message.startswith("ClientError: ")
    for fragment in fragments:
        assert fragment in printed, (fragment, printed)
        assert fragment in job.message, (fragment, job.message)
    assert server.requests == 0
    assert job.output_files() == []
    return job.message


def coalitions_over_memory(times: float, n_baseline: int = 1) -> int:
    """A num_samples whose estimate for the wide dataset is ``times`` the machine's memory."""
    per_coalition = limits.shap_bytes(1, WIDE, WIDE, n_baseline)
    return int(times * limits.memory_limit_bytes() / per_coalition) + 2


# -- num_samples / grid_resolution too large for the memory -------------------------------------------

@pytest.mark.parametrize("times, n_baseline", [(1.5, 1), (40, 1), (1e6, 1), (3, 4)])
def test_num_samples_beyond_memory_is_refused_with_the_estimate(job, model, capsys, times, n_baseline):
    num_samples = coalitions_over_memory(times, n_baseline)
    baseline = [[0.0] * WIDE] * n_baseline
    wide_job(job, model, shap={"baseline": baseline, "num_samples": num_samples, "seed": 1})
    message = refused_by_run_and_validate(job, model, capsys, "methods.shap.num_samples",
                                          f"{num_samples - num_samples % 2:,} coalitions x {WIDE} features",
                                          f"x {n_baseline} baseline row(s)", "this machine has")
    need, have = re.search(r"need ~([\d,.]+ \w+) .* has ([\d,.]+ \w+)", message).groups()
    assert need != have
    assert _bytes(need) == pytest.approx(times * _bytes(have), rel=0.05)


def test_default_budget_of_a_long_text_is_refused_naming_the_default(job, capsys):
    """Text: every unit is a player, and the default budget grows with them (2M + 2048)."""
    tokens = 4 * int(math.sqrt(limits.memory_limit_bytes() / 48))  # design alone: C x M x 48 > memory
    with http_server(text._TextModel, max_chars=10**9, requests=0) as server:
        review = " ".join(["word"] * tokens)
        text.text_job(job, server, reviews=[(review, "A", 1), *text.REVIEWS[:2]])
        assert job.run(command="validate") == 1
        printed = capsys.readouterr().out
        assert "methods.shap.num_samples" in printed and "default budget" in printed
        assert f"x {tokens + 1:,} players" in printed
        assert server.requests == 0


@pytest.mark.parametrize("times", [1.5, 1e3])
def test_grid_resolution_beyond_memory_is_refused_with_the_estimate(job, model, capsys, times):
    records = 30
    grid = int(times * limits.memory_limit_bytes() / (24 * records * WIDE)) + 1
    wide_job(job, model, n_rows=records, pdp={"grid_resolution": grid, "features": ["f0"]})
    refused_by_run_and_validate(job, model, capsys, "methods.pdp.grid_resolution",
                                f"{grid:,} grid values x {records} records x {WIDE} features", "this machine has")


def test_large_but_normal_settings_pass(job, model, capsys):
    wide_job(job, model, shap={"baseline": [[0.0] * WIDE] * 3, "num_samples": 200_000, "seed": 1},
             pdp={"grid_resolution": 1000, "features": ["f0"]})
    assert job.run(command="validate") == 0, capsys.readouterr().out
    assert limits.shap_bytes(200_000, WIDE, WIDE, 3) < limits.memory_limit_bytes() / 4


def test_pdp_memory_check_runs_before_shap(job, model, capsys):
    grid = int(2 * limits.memory_limit_bytes() / (24 * 30 * WIDE)) + 1
    wide_job(job, model, shap={"baseline": [[0.0] * WIDE], "num_samples": 10, "seed": 1},
             pdp={"grid_resolution": grid, "features": ["f0"]})
    refused_by_run_and_validate(job, model, capsys, "methods.pdp.grid_resolution")


def test_estimate_follows_the_measured_allocation():
    """The estimate is of the real peak: within a factor of 2 of tracemalloc's measure, never below half."""
    import tracemalloc

    from analyzer.explain.kernel_shap import KernelShap

    for m, n_samples, n_baseline in [(30, 20_000, 1), (20, 20_000, 5)]:
        x = np.ones((3, m))
        tracemalloc.start()
        try:
            explainer = KernelShap(lambda rows: rows.sum(axis=1), np.zeros((n_baseline, m)), num_samples=n_samples,
                                   seed=0)
            explainer.explain(x)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        estimate = limits.shap_bytes(len(explainer.design.masks), m, m, n_baseline)
        assert peak / 2 <= estimate <= 2 * peak, (m, n_samples, n_baseline, peak, estimate)


# -- num_clusters beyond the rows ---------------------------------------------------------------------

@pytest.mark.parametrize("rows, clusters", [(30, 31), (30, 1000), (5, 6)])
def test_num_clusters_beyond_the_rows(job, model, capsys, rows, clusters):
    wide_job(job, model, n_rows=rows, shap={"num_clusters": clusters, "seed": 1})
    refused_by_run_and_validate(job, model, capsys, "methods.shap.num_clusters", f"{clusters:,} clusters",
                                f"only {rows} rows")


def test_num_clusters_equal_to_the_rows_passes_validate(job, model, capsys):
    wide_job(job, model, n_rows=8, shap={"num_clusters": 8, "seed": 1})
    assert job.run(command="validate") == 0, capsys.readouterr().out


# -- out.jsonl is strict JSON -------------------------------------------------------------------------

def strict_json(line: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("-inf")])
def test_non_finite_numbers_are_written_as_null(tmp_path, bad):
    # Two records of a text feature and a number: record 0 has 2 units, record 1 has 3.
    units = [[[TextUnit("good", 0), TextUnit("day", 5)]], [[TextUnit("bad", 0), TextUnit("day", 4), TextUnit("!", 7)]]]
    values = np.array([[1.5], [bad], [0.25], [-2.0], [7.0], [bad], [3.0]])
    stderr = np.array([[0.0], [0.1], [bad], [bad], [bad], [0.5], [0.0]])
    local = TextExplanation(values=values, stderr=stderr, offsets=np.array([0, 3, 7]), expected_value=np.array([0.5]),
                            reference=np.zeros((2, 1)), prediction=np.zeros((2, 1)))
    path = tmp_path / "out.jsonl"
    write_text_local(path, local, units, (0,), ["review", "stars"], ["free_text", "numerical"], [bad, "r1"])
    first, second = [strict_json(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert first["join_source_value"] is None and second["join_source_value"] == "r1"
    review, stars = first["explanations"]
    assert [a["attribution"] for a in review["attributions"]] == [[1.5], [None]]
    assert [a["lucent_stderr"] for a in review["attributions"]] == [[0.0], [0.1]]
    assert stars["attributions"] == [{"attribution": [0.25], "lucent_stderr": [None]}]
    review, stars = second["explanations"]
    assert [a["attribution"] for a in review["attributions"]] == [[-2.0], [7.0], [None]]
    assert [a["lucent_stderr"] for a in review["attributions"]] == [[None], [None], [0.5]]
    assert stars["attributions"] == [{"attribution": [3.0], "lucent_stderr": [0.0]}]


@pytest.mark.parametrize("document", [{"a": [1.0, math.nan]}, [math.inf, {"b": -math.inf}], {"c": np.float64(2.5)},
                                      {"d": np.int64(3), "e": "NaN"}])
def test_json_line_is_strict(document):
    line = json_line(document)
    assert line.endswith("\n") and "\n" not in line[:-1]
    parsed = strict_json(line)
    assert "NaN" not in line.replace('"NaN"', "") and "Infinity" not in line
    assert json.dumps(parsed)  # round-trips


def test_text_job_with_unestimable_standard_errors_writes_null(job, text_endpoint):
    """A budget of 4 coalitions leaves strata with a single pair: their standard errors are NaN."""
    text.text_job(job, text_endpoint, num_samples=4)
    assert job.run() == 0, job.message
    raw = (job.output_dir / "explanations_shap" / "out.jsonl").read_text(encoding="utf-8")
    lines = [strict_json(line) for line in raw.splitlines()]
    errors = [e for line in lines for f in line["explanations"] for a in f["attributions"] for e in a["lucent_stderr"]]
    assert None in errors and "NaN" not in raw
    assert all(e is None or (isinstance(e, float) and e >= 0) for e in errors)


@pytest.fixture
def text_endpoint():
    with http_server(text._TextModel, max_chars=10_000, requests=0) as server:
        yield server


# -- base_dir comes from the caller -------------------------------------------------------------------

def test_relative_baseline_is_taken_from_the_given_folder_only(tmp_path, monkeypatch):
    """explain_dataset no longer guesses ``<output>/../input/config``: the caller names the folder."""
    with http_server(_SumModel, requests=0) as server:
        job = JobRoot(tmp_path / "job")
        wide_job(job, server, shap={"baseline": "base.csv", "num_samples": 10, "seed": 1})
        (job.config_dir / "base.csv").write_text(",".join(["0"] * WIDE) + "\n")
        config = load_config(job.config_dir / "analysis_config.json")
        dataset = load_job_dataset(config, job.data_dir, base_dir=job.config_dir)
        endpoint = ModelEndpoint(f"http://127.0.0.1:{server.server_port}", config.predictor,
                                 tuple(dataset.feature_names))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        with OutputStaging(job.output_dir) as staging, pytest.raises(UserError, match="base.csv"):
            explain_dataset(config, dataset, endpoint, staging, job.output_dir / ".lucent-work", base_dir=None)
        with OutputStaging(job.output_dir) as staging:
            result = explain_dataset(config, dataset, endpoint, staging, job.output_dir / ".lucent-work",
                                     base_dir=job.config_dir)
        assert result["kernel_shap"]["label0"]["expected_value"] == 0.0


def _bytes(size: str) -> float:
    number, unit = size.split()
    return float(number.replace(",", "")) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].index(unit)


def test_sizes_are_readable():
    assert limits._size(512) == "512.0 B"
    assert limits._size(3 * 1024**3) == "3.0 GiB"
    assert _bytes(limits._size(10**18)) == pytest.approx(10**18, rel=1e-3)



def test_an_in_process_job_beyond_memory_is_refused_before_its_workers_are_counted(job):
    """A model folder scored in process: the SHAP workers are counted (and started) before the model loads,
    from the coalition design's size; a budget beyond the memory is the SHAP step's error, not a design built
    early (``expected_shap_workers`` checks the memory first)."""
    import joblib
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(40, WIDE)), 3)
    (job.root / "input" / "model").mkdir(parents=True, exist_ok=True)
    joblib.dump(LinearRegression().fit(x, x.sum(axis=1)), job.root / "input" / "model" / "model.joblib")
    data = pd.DataFrame(x, columns=[f"f{j}" for j in range(WIDE)])
    data["y"] = rng.integers(0, 2, len(data))
    job.write_data(data.to_csv(index=False, header=False))
    num_samples = coalitions_over_memory(1e6)
    job.write_config({"dataset_type": "text/csv", "headers": list(data.columns), "label": "y",
                      "methods": {"shap": {"baseline": [[0.0] * WIDE], "num_samples": num_samples, "seed": 1}},
                      "predictor": {"content_type": "text/csv"}})
    assert job.run() == 1, job.message
    assert job.message.startswith("ClientError: methods.shap.num_samples: "), job.message
    assert "this machine has" in job.message
