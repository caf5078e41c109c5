"""`lucent run` on time-series jobs: a linear autoregressive forecaster behind ``code/inference.py``,
scored in process (the default) and by the built-in model server, explained with asymmetric Shapley
values and checked against brute-force enumeration of the ordered coalitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analyzer.data.time_series import TimeSeriesItem
from analyzer.explain.asymmetric_shapley import TimeSeriesBaseline
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot
from tests.test_time_series_asv import oracle

# The demo model: AR(2) on the target plus the related series' last values and the static covariates,
# forecasting 2 steps (the second from the first). Requests carry one record ({"instances": {...}}) or a
# list of them; the answer mirrors the shape ({"predictions": {"mean": [...]}} or a list).
INFERENCE = '''
import json
import os


def model_fn(model_dir):
    with open(os.path.join(model_dir, "coefficients.json")) as file:
        return json.load(file)


def forecast(coef, target, related, static):
    history = [0.0 if v is None else float(v) for v in target]
    last = [0.0 if r[-1] is None else float(r[-1]) for r in related]
    out = []
    for _ in range(coef["horizon"]):
        y = coef["intercept"] + sum(a * history[-1 - lag] for lag, a in enumerate(coef["lags"]))
        y += sum(b * v for b, v in zip(coef["related"], last)) + coef["static"] * sum(float(s) for s in static)
        out.append(y)
        history.append(y)
    return out


def input_fn(body, content_type):
    assert content_type == "application/json", content_type
    return json.loads(body)["instances"]


def predict_fn(instances, coef):
    records = [instances] if isinstance(instances, dict) else instances
    means = [forecast(coef, r["target"], r.get("dynamic_feat", []), r.get("cat", [])) for r in records]
    return means[0] if isinstance(instances, dict) else means


def output_fn(means, accept):
    if means and isinstance(means[0], list):
        return json.dumps({"predictions": [{"mean": m} for m in means]})
    return json.dumps({"predictions": {"mean": means}})
'''
COEFFICIENTS = {"horizon": 2, "intercept": 1.0, "lags": [0.6, 0.3], "related": [0.5, -0.25], "static": 2.0}


MODEL: dict = {}
exec(INFERENCE, MODEL)  # noqa: S102 - the test's own model code, for the oracle


def model_forecast(target, related, static) -> list[float]:
    """The served model's own function, for the oracle."""
    return MODEL["forecast"](COEFFICIENTS, [float(v) for v in target],
                                 [[float(v) for v in r] for r in np.asarray(related).tolist()], list(static))


def write_model(job: JobRoot) -> None:
    folder = job.root / "input" / "model"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(INFERENCE)
    (folder / "coefficients.json").write_text(json.dumps(COEFFICIENTS))


STAMPS = [f"2020-01-01 {h:02d}:00:00" for h in range(10, 16)]
RNG = np.random.default_rng(7)
SERIES = {item: {"p_mbar": RNG.normal(1000, 5, 6).round(2), "rain_mm": RNG.uniform(0, 3, 6).round(2),
                 "T_degC": RNG.normal(15, 4, 6).round(2), "zone": zone}
          for item, zone in (("sanjose", 1), ("reno", 3))}


def timestamp_records() -> list[dict]:
    return [{"item_id": item, "timestamp": stamp, "p_mbar": s["p_mbar"][t], "rain_mm": s["rain_mm"][t],
             "T_degC": s["T_degC"][t]} for item, s in SERIES.items() for t, stamp in enumerate(STAMPS)]


def item_records() -> list[dict]:
    return [{"id": item, "zone": s["zone"], "timeseries": [
        {"timestamp": stamp, "p_mbar": s["p_mbar"][t], "rain_mm": s["rain_mm"][t], "T_degC": s["T_degC"][t]}
        for t, stamp in enumerate(STAMPS)]} for item, s in SERIES.items()]


def columns() -> dict:
    rows = timestamp_records()
    return {key: [row[key] for row in rows] for key in ("item_id", "timestamp", "p_mbar", "rain_mm", "T_degC")}


def write_json(job: JobRoot, document) -> None:
    job.write_data(json.dumps(document, default=float), name="data.json")


# Spec 2.7 (i), the config printed by Clarify's own time-series example, verbatim but for the endpoint:
# Lucent serves the job's model folder.
SPEC_CONFIG = json.loads('''
{"dataset_type": "application/json",
 "headers": ["item_id", "timestamp", "p_mbar", "rain_mm", "T_degC"],
 "methods": {"asymmetric_shapley_value": {"baseline": {"related_time_series": "zero", "target_time_series": "zero"},
                                          "direction": "chronological", "granularity": "fine_grained", "num_samples": 2},
             "report": {"name": "report", "title": "Analysis Report"}},
 "predictor": {"accept_type": "application/json", "content_template": "{\\"instances\\": $record}", "content_type": "application/json",
               "record_template": "{\\"start\\": $start_time, \\"target\\": $target_time_series, \\"dynamic_feat\\": $related_time_series}",
               "time_series_predictor_config": {"forecast": "predictions.mean"}},
 "time_series_data_config": {"dataset_format": "timestamp_records", "item_id": "[].item_id",
                             "related_time_series": ["[].rain_mm", "[].T_degC"], "target_time_series": "[].p_mbar",
                             "timestamp": "[].timestamp"}}
''')
NAMES = {"p_mbar": "target", "rain_mm": "r0", "T_degC": "r1", "zone": "c0"}


def read_lines(job: JobRoot, granularity: str, direction: str) -> list[dict]:
    path = job.output_dir / "asymmetric_shapley_value" / f"{granularity}_{direction}" / "out.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_matches_oracle(lines: list[dict], granularity: str, direction: str, baseline: TimeSeriesBaseline,
                          statics: bool = False) -> None:
    assert [line["item_id"] for line in lines] == list(SERIES)
    for line in lines:
        s = SERIES[line["item_id"]]
        item = TimeSeriesItem(line["item_id"], STAMPS, np.asarray(s["p_mbar"], float),
                              np.array([s["rain_mm"], s["T_degC"]], float), [s["zone"]] if statics else [])
        expected = oracle(item, model_forecast, baseline, granularity, direction)
        got = {}
        for entry in line["explanations"]:
            name = "+".join(NAMES[part] for part in entry["feature_name"].split("+"))
            got[name, None if entry["timestamp"] is None else STAMPS.index(entry["timestamp"])] = entry["scores"]
        assert set(got) == set(expected)
        for key, scores in expected.items():
            np.testing.assert_allclose(got[key], scores, rtol=1e-9, atol=1e-9, err_msg=f"{line['item_id']} {key}")
        np.testing.assert_allclose(line["offset"], model_forecast(*baseline.for_item(item)), rtol=1e-12)


def test_spec_example_config_runs_in_process_and_writes_the_spec_outputs(job):
    write_model(job)
    write_json(job, timestamp_records())
    job.write_config(SPEC_CONFIG)
    assert job.run() == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    out = job.output_dir / "asymmetric_shapley_value" / "fine_grained_chronological" / "out.jsonl"
    assert job.analysis() == {"version": "1.0", "explanations": {"asymmetric_shapley_value": {
        "direction": "chronological", "granularity": "fine_grained", "explanation_results_path": str(out)}}}
    assert "asymmetric_shapley_value/fine_grained_chronological/out.jsonl" in job.output_files()
    # "report" is in the config (the SDK always adds it) but Clarify writes none for time series
    assert not [name for name in job.output_files() if name.startswith("report.")]
    lines = read_lines(job, "fine_grained", "chronological")
    # A linear model: every order gives the same marginal changes, so 2 sampled orders are exact.
    assert_matches_oracle(lines, "fine_grained", "chronological", TimeSeriesBaseline())
    first = lines[0]["explanations"][0]
    assert (first["feature_name"], first["timestamp"]) == ("p_mbar", STAMPS[0])


def test_item_records_through_the_model_server_with_batches_statics_and_a_baseline_file(job):
    write_model(job)
    write_json(job, item_records())
    baseline = {"target_time_series": "mean", "related_time_series": "mean",
                "static_covariates": {"sanjose": [0], "reno": [1]}}
    (job.config_dir / "ts_baseline.json").write_text(json.dumps(baseline))
    config = json.loads(json.dumps(SPEC_CONFIG))
    config.pop("headers")  # names come from the locators
    config["methods"]["asymmetric_shapley_value"] = {"direction": "bidirectional", "granularity": "timewise",
                                                     "baseline": "ts_baseline.json"}
    config["predictor"].update(
        lucent_scoring="server", content_template='{"instances": $records}',
        record_template='{"start": $start_time, "target": $target_time_series, "dynamic_feat": '
                        '$related_time_series, "cat": $static_covariates}',
        time_series_predictor_config={"forecast": "predictions[*].mean"})
    config["time_series_data_config"] = {
        "dataset_format": "item_records", "item_id": "[*].id", "timestamp": "[*].timeseries[].timestamp",
        "target_time_series": "[*].timeseries[].p_mbar",
        "related_time_series": ["[*].timeseries[].rain_mm", "[*].timeseries[].T_degC"],
        "static_covariates": ["[*].zone"]}
    job.write_config(config)
    assert job.run() == 0, job.message
    lines = read_lines(job, "timewise", "bidirectional")
    expected_baseline = TimeSeriesBaseline("mean", "mean", {"sanjose": [0], "reno": [1]})
    assert_matches_oracle(lines, "timewise", "bidirectional", expected_baseline, statics=True)
    assert [e["feature_name"] for e in lines[0]["explanations"]][-2:] == ["p_mbar+rain_mm+T_degC", "zone"]
    assert lines[0]["explanations"][-1]["timestamp"] is None


@pytest.mark.parametrize("direction", ["chronological", "anti_chronological"])
def test_columns_format(job, direction):
    write_model(job)
    write_json(job, columns())
    config = json.loads(json.dumps(SPEC_CONFIG))
    config["methods"]["asymmetric_shapley_value"] = {"direction": direction, "granularity": "timewise"}
    config["time_series_data_config"] = {
        "dataset_format": "columns", "item_id": "item_id", "timestamp": "timestamp", "target_time_series": "p_mbar",
        "related_time_series": ["rain_mm", "T_degC"]}
    job.write_config(config)
    assert job.run("--log-level", "WARNING") == 0, job.message
    assert_matches_oracle(read_lines(job, "timewise", direction), "timewise", direction, TimeSeriesBaseline())


def assert_fails(job: JobRoot, *fragments: str) -> None:
    assert job.run() == 1
    for fragment in fragments:
        assert fragment in job.message, job.message
    assert not (job.output_dir / "analysis.json").exists()


def spec_job(job: JobRoot, records: list[dict] | None = None, **changes) -> None:
    write_model(job)
    write_json(job, timestamp_records() if records is None else records)
    config = json.loads(json.dumps(SPEC_CONFIG))
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    job.write_config(config)


def test_a_value_that_is_not_a_number_names_item_timestamp_and_key(job):
    records = timestamp_records()
    records[8]["rain_mm"] = "heavy"
    spec_job(job, records)
    assert_fails(job, "item 'reno'", f"timestamp '{STAMPS[2]}'", "related_time_series[0]", '"heavy"')


def test_a_column_shorter_than_the_others_is_named(job):
    write_model(job)
    write_json(job, columns())
    config = json.loads(json.dumps(SPEC_CONFIG))
    config["time_series_data_config"] = {
        "dataset_format": "columns", "item_id": "item_id", "timestamp": "timestamp", "target_time_series": "p_mbar",
        "related_time_series": ["rain_mm", "T_degC[:10]"]}
    job.write_config(config)
    assert_fails(job, "related_time_series[1]", "gives 10 values but item_id gives 12")


def test_missing_static_covariate_baseline_is_named_before_the_model_is_called(job):
    spec_job(job, time_series_data_config__static_covariates=["[].item_id"],
             headers=["item_id", "timestamp", "p_mbar", "rain_mm", "T_degC", "site"],
             methods__asymmetric_shapley_value={"direction": "chronological", "granularity": "timewise",
                                                "baseline": {"static_covariates": {"sanjose": [0]}}})
    assert_fails(job, "static_covariates has no entry for item 'reno'")


def test_template_placeholder_without_data_is_refused(job):
    spec_job(job, predictor__record_template='{"target": $target_time_series, "cat": $static_covariates}')
    assert_fails(job, "$static_covariates", "time_series_data_config has no static_covariates")


def test_a_forecast_locator_that_finds_nothing_names_the_key(job):
    spec_job(job, predictor__time_series_predictor_config={"forecast": "predictions.median"})
    assert_fails(job, "predictor.time_series_predictor_config.forecast")


def test_validate_reports_time_series_problems(job, capsys):
    spec_job(job, methods__asymmetric_shapley_value={"direction": "chronological", "granularity": "timewise",
                                                     "baseline": "missing.json"})
    assert job.run(command="validate") == 1
    assert "missing.json is not a file" in capsys.readouterr().out


def test_validate_accepts_the_spec_example(job):
    spec_job(job)
    assert job.run(command="validate") == 0
    assert not Path(job.output_dir / "analysis.json").exists()


def test_record_templates_fill_the_time_series_placeholders():
    import pandas as pd

    from analyzer.config.model import Predictor
    from analyzer.explain.asymmetric_job import forecast_endpoint
    from analyzer.explain.asymmetric_shapley import RECORD_FIELDS
    from analyzer.predict import ModelEndpoint, parse_response, serialize_records

    rows = pd.DataFrame({"start_time": ["2024-01-01 01:00:00"], "target_time_series": [[1.0, 2.0, None]],
                         "related_time_series": [[[1.0, 2.0, 3.0], [0.5, 0.0, 1.0]]],
                         "static_covariates": [[0, "red"]]}, columns=RECORD_FIELDS)
    json_predictor = Predictor(content_type="application/json", accept_type="application/json",
                               content_template='{"instances": $records}',
                               record_template='{"start": $start_time, "target": $target_time_series, '
                                               '"dynamic_feat": $related_time_series, "cat": $static_covariates}')
    assert serialize_records(rows, RECORD_FIELDS, json_predictor) == (
        b'{"instances": [{"start": "2024-01-01 01:00:00", "target": [1.0,2.0,null], '
        b'"dynamic_feat": [[1.0,2.0,3.0],[0.5,0.0,1.0]], "cat": [0,"red"]}]}')
    lines_predictor = Predictor(content_type="application/jsonlines", accept_type="application/jsonlines",
                                content_template='{"target":$target_time_series,"start":$start_time}',
                                time_series_predictor_config={"forecast": "quantiles.\"0.5\""})
    two = pd.concat([rows, rows], ignore_index=True)
    assert serialize_records(two, RECORD_FIELDS, lines_predictor) == (
        b'{"target":[1.0,2.0,null],"start":"2024-01-01 01:00:00"}\n' * 2).rstrip(b"\n")
    scoring = forecast_endpoint(ModelEndpoint("http://unused", lines_predictor, ("x",))).predictor
    answer = b'{"quantiles": {"0.5": [3.0, 4.0]}}\n{"quantiles": {"0.5": [5.0, 6.5]}}'
    assert parse_response(answer, "application/jsonlines", scoring, 2).scores.tolist() == [[3.0, 4.0], [5.0, 6.5]]


def test_a_relative_processing_root_publishes_an_absolute_results_path_and_says_why_no_report(
        job, monkeypatch, caplog):
    import logging

    from container.cli import main

    write_model(job)
    write_json(job, timestamp_records())
    job.write_config(SPEC_CONFIG)
    monkeypatch.chdir(job.root.parent)
    with caplog.at_level(logging.INFO):
        assert main(["run", "--processing-root", job.root.name]) == 0, job.message
    path = job.analysis()["explanations"]["asymmetric_shapley_value"]["explanation_results_path"]
    assert Path(path).is_absolute(), path
    assert Path(path) == (job.output_dir / "asymmetric_shapley_value" / "fine_grained_chronological"
                          / "out.jsonl").resolve()
    assert Path(path).is_file()
    assert any(r.levelno == logging.INFO and "methods.report: no report is written for time-series" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("placeholder", ["$features", "$features_kvp", '"${p_mbar}"'])
def test_a_tabular_placeholder_in_a_time_series_record_template_is_refused(job, placeholder):
    """QA ts/t22b: $features was filled with [start, target, related, static] and the log then said the related
    series and static covariates were never seen. Clarify's time-series placeholders are the four tokens."""
    spec_job(job, predictor__record_template='{"start": $start_time, "target": $target_time_series, "f": '
                                             + placeholder + "}")
    assert_fails(job, "predictor.record_template", f"{placeholder} is not a time-series placeholder",
                 "$start_time, $target_time_series, $related_time_series, $static_covariates")


def test_a_failed_model_call_names_the_item_and_which_of_its_requests(job):
    """QA ts/mfail: "failed on the record at row 7" named a row of the request batch. The item and the request
    are named: here the model refuses reno's own forecast (its full history)."""
    spec_job(job)
    reno = [float(v) for v in SERIES["reno"]["p_mbar"]]
    refusing = INFERENCE + f'''
_predict = predict_fn


def predict_fn(instances, coef):
    records = [instances] if isinstance(instances, dict) else instances
    if any([float(v) for v in r["target"]] == {reno!r} and 0.0 not in r["dynamic_feat"][0] for r in records):
        raise RuntimeError("boom on the full history")
    return _predict(instances, coef)
'''
    (job.root / "input" / "model" / "code" / "inference.py").write_text(refusing)
    assert_fails(job, "failed on item 'reno', its own forecast (the full history, no value replaced): ",
                 "boom on the full history")
    assert "row" not in job.message


def test_a_forecast_that_is_not_a_number_names_the_item_and_request(job):
    """QA ts/cfgs/t17: "forecast for row 0 is not a number: None"."""
    spec_job(job, predictor__time_series_predictor_config={"forecast": "predictions.nothing"})
    assert_fails(job, "predictor.time_series_predictor_config.forecast for item '", "is not a number: None")
    assert "row" not in job.message


def test_records_of_one_forecast_call_are_named_by_item_and_request():
    from analyzer.explain.asymmetric_shapley import describe_record

    items = [TimeSeriesItem(name, ["t0", "t1"], np.zeros(2), np.zeros((0, 2)), []) for name in ("A", "B")]
    sizes = np.array([0, 4, 10])  # A: 4 records, B: 6
    assert describe_record(items, sizes, 0) == "item 'A', the baseline forecast (every value replaced by the baseline)"
    assert describe_record(items, sizes, 5) == "item 'B', its own forecast (the full history, no value replaced)"
    assert describe_record(items, sizes, 7) == "item 'B', coalition 3 of 6 (values outside it replaced by the baseline)"
    assert describe_record(items, sizes, 10) is None


def test_a_json_lines_content_template_with_features_is_refused_when_the_job_starts(job):
    spec_job(job, predictor__content_type="application/jsonlines", predictor__accept_type="application/jsonlines",
             predictor__content_template='{"start": $start_time, "target": $target_time_series, "x": $features}')
    del_record = json.loads((job.root / "input" / "config" / "analysis_config.json").read_text())
    del del_record["predictor"]["record_template"]
    job.write_config(del_record)
    assert_fails(job, "predictor.content_template", "$features is not a time-series placeholder")
