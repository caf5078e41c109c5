"""End-to-end: `lucent run` / `lucent validate` on processing roots laid out on disk."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from analyzer.output import MANIFEST_FILE
from container.demo import COLUMNS
from container.job import SUCCESS_MESSAGE

ORACLE_TOLERANCE = 1e-9


def smclarify_section(df: pd.DataFrame, config: dict, stage: str) -> dict:
    """What Clarify's metric library computes for the same job (the test oracle)."""
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report

    label = config["label"]
    values = config["label_values_or_threshold"]
    frame = df.drop(columns=[label, config["predicted_label"]])
    facets = {}
    for facet in config["facet"]:
        name = facet["name_or_index"]
        facets[name] = bias_report(
            frame.copy(), FacetColumn(name, facet.get("value_or_threshold")),
            LabelColumn(label, df[label], values),
            StageType.PRE_TRAINING if stage == "pre" else StageType.POST_TRAINING,
            LabelColumn(config["predicted_label"], df[config["predicted_label"]], values),
            group_variable=df[config["group_variable"]])
    return facets


def assert_same_metrics(ours: list, theirs: list) -> None:
    assert [entry["value_or_threshold"] for entry in ours] == [entry["value_or_threshold"] for entry in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert [m["name"] for m in mine["metrics"]] == [m["name"] for m in ref["metrics"]]
        for m, r in zip(mine["metrics"], ref["metrics"], strict=True):
            assert m["description"] == r["description"]
            assert m.get("error") == r.get("error"), m["name"]
            if isinstance(r["value"], float) and math.isfinite(r["value"]):
                assert m["value"] == pytest.approx(r["value"], abs=ORACLE_TOLERANCE, rel=ORACLE_TOLERANCE), m["name"]
            else:
                assert m["value"] == r["value"], m["name"]


@pytest.mark.slow
@pytest.mark.oracle
def test_demo_job_matches_smclarify(demo_job, demo_config):
    assert demo_job.run() == 0
    assert demo_job.message == SUCCESS_MESSAGE
    analysis = demo_job.analysis()
    assert list(analysis) == ["version", "post_training_bias_metrics", "pre_training_bias_metrics"]
    assert analysis["version"] == "1.0"
    df = pd.read_csv(demo_job.data_dir / "credit.csv", header=None, names=COLUMNS)
    for stage in ("pre", "post"):
        section = analysis[f"{stage}_training_bias_metrics"]
        assert section["label"] == "approved"
        assert section["label_value_or_threshold"] == "1"
        assert list(section["facets"]) == ["sex", "race"]
        expected = smclarify_section(df, demo_config, stage)
        for facet, entries in expected.items():
            assert_same_metrics(section["facets"][facet], entries)
    # one-vs-rest over race: one entry per value, in order of first appearance
    assert [e["value_or_threshold"] for e in analysis["pre_training_bias_metrics"]["facets"]["race"]] == \
        list(df["race"].unique())
    assert demo_job.output_files() == [MANIFEST_FILE, "analysis.json", "report.html", "report.ipynb", "report.pdf"]
    assert {(demo_job.output_dir / name).stat().st_mode & 0o777 for name in demo_job.output_files()} == {0o644}


@pytest.mark.oracle
def test_flip_test_on_numeric_features_matches_smclarify(job):
    from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report

    from container.demo import make_credit_dataset

    df = make_credit_dataset(300, seed=7)[["age", "education_years", "hours_per_week", "credit_amount",
                                           "approved", "predicted_approved"]]
    job.write_data(df.to_csv(index=False))  # header row in the file, no `headers` in the config
    job.write_config({"dataset_type": "text/csv", "label": "approved", "predicted_label": "predicted_approved",
                      "label_values_or_threshold": [1], "facet": [{"name_or_index": "age", "value_or_threshold": [50]}],
                      "methods": {"post_training_bias": {"methods": ["FT", "DPPL"]}}})
    assert job.run() == 0
    ours = job.analysis()["post_training_bias_metrics"]["facets"]["age"]
    theirs = bias_report(df.drop(columns=["approved", "predicted_approved"]), FacetColumn("age", [50]),
                         LabelColumn("approved", df["approved"], [1]), StageType.POST_TRAINING,
                         LabelColumn("predicted_approved", df["predicted_approved"], [1]), metrics=["FT", "DPPL"])
    assert_same_metrics(ours, theirs)
    assert isinstance(ours[0]["metrics"][1]["value"], float)  # FT computed, not an error


def test_console_script_runs_a_job(demo_job):
    """The installed `lucent` entry point, as a separate process, with the default message-file rule."""
    lucent = [sys.executable, "-m", "container.cli"]
    result = subprocess.run([*lucent, "run", "--processing-root", str(demo_job.root)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Calculating pre-training bias metrics" in result.stderr
    assert "exit_message: " + SUCCESS_MESSAGE in result.stderr
    assert demo_job.message == SUCCESS_MESSAGE
    help_text = subprocess.run([*lucent, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "processing root" in help_text and "validate" in help_text


def test_validate_ok_and_computes_nothing(demo_job):
    assert demo_job.run(command="validate") == 0
    assert demo_job.output_files() == []


def test_no_report_files_without_methods_report(demo_job, demo_config):
    del demo_config["methods"]["report"]
    demo_job.write_config(demo_config)
    assert demo_job.run() == 0
    assert demo_job.output_files() == [MANIFEST_FILE, "analysis.json"]


def test_message_file_override(demo_job, tmp_path):
    target = tmp_path / "elsewhere" / "msg.txt"
    assert demo_job.run("--message-file", str(target)) == 0
    assert target.read_text().strip() == SUCCESS_MESSAGE


# ---- bad input: clear error, exit 1, reason in the message file, nothing in output/ ---------------

SIMPLE_CONFIG = {
    "dataset_type": "text/csv",
    "headers": ["x", "g", "y", "p"],
    "label": "y",
    "predicted_label": "p",
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "g", "value_or_threshold": ["b"]}],
    "methods": {"pre_training_bias": {"methods": "all"}, "post_training_bias": {"methods": "all"}},
}
# 60 rows: with fewer than 41, a 0/1 int label is "continuous" under Clarify's 5% uniqueness rule.
SIMPLE_DATA = "".join(f"{i},{'ab'[i % 2]},{(i // 2) % 2},{(i // 3) % 2}\n" for i in range(60))


def config_with(**changes) -> dict:
    config = json.loads(json.dumps(SIMPLE_CONFIG))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def assert_user_error(job, *fragments: str) -> None:
    assert job.run() == 1
    assert job.message.startswith("ClientError: ")
    for fragment in fragments:
        assert fragment in job.message, (fragment, job.message)
    assert job.output_files() == [], "a failed job must leave nothing in output/"


def test_missing_config(job):
    job.write_data(SIMPLE_DATA)
    assert_user_error(job, "input/config")


def test_invalid_json(job):
    job.write_data(SIMPLE_DATA)
    job.write_config('{"dataset_type": "text/csv",\n "label": }')
    assert_user_error(job, "Unable to load analysis configuration as JSON", "line 2")


def test_unknown_key(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(lable="y"))
    assert_user_error(job, "Analysis configuration schema validation error", "lable")


def test_wrong_type(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(probability_threshold="high"))
    assert_user_error(job, "probability_threshold")


def test_label_not_found(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(label="target"))
    assert_user_error(job, "target")


def test_facet_not_found(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(facet=[{"name_or_index": "gender"}]))
    assert_user_error(job, "gender")


def test_empty_dataset(job):
    job.write_data("")
    job.write_config(SIMPLE_CONFIG)
    assert_user_error(job, "data.csv")


def test_header_column_count_mismatch(job):
    job.write_data("1,a,0\n2,b,1\n")
    job.write_config(SIMPLE_CONFIG)
    assert_user_error(job, "Headers in config do not match with the number of columns in the dataset")


def test_jmespath_matches_nothing(job):
    job.write_data('{"f": [1, "a"], "y": 1, "p": 0}\n{"f": [2, "b"], "y": 0, "p": 1}\n', name="data.jsonl")
    job.write_config(config_with(dataset_type="application/jsonlines", features="features", label="y",
                                 predicted_label="p", headers=["x", "g", "y", "p"]))
    assert_user_error(job, "features")


def test_non_numeric_threshold_on_a_numeric_column(job):
    # a string column whose values are all integers is "continuous" for Clarify: it needs a numeric threshold
    job.write_data("".join(f"{i},{i},{i % 2},{(i // 2) % 2}\n" for i in range(60)))
    job.write_config(config_with(facet=[{"name_or_index": "g", "value_or_threshold": ["high"]}]))
    assert_user_error(job, "single numeric threshold")


def test_no_positive_predictions_fails_the_post_training_report(job):
    job.write_data("".join(f"{i},{'ab'[i % 2]},{i % 3 == 0:d},0\n" for i in range(60)))
    job.write_config(config_with())
    assert_user_error(job, "Positive Predicted Index Series contains all False values")


def test_not_supported_yet_method(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(dataset_type="application/sagemakercapturejson"))  # `lucent monitor` reads those
    assert_user_error(job, "application/sagemakercapturejson", "not supported yet")


# ---- Clarify reports these per metric and the job succeeds ----------------------------------------

def test_facet_value_absent_gives_per_metric_errors(job):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(facet=[{"name_or_index": "g", "value_or_threshold": ["zzz"]}]))
    assert job.run() == 0
    metrics = {m["name"]: m for m in job.analysis()["pre_training_bias_metrics"]["facets"]["g"][0]["metrics"]}
    assert metrics["CI"]["value"] is None
    assert metrics["CI"]["error"] == "CI: facet set is empty. Check that x[facet] has non-zero length."
    assert metrics["CDDL"]["error"] == "Group variable is empty or not provided"


def test_all_rows_in_one_group_gives_per_metric_errors(job):
    job.write_data("".join(f"{i},b,{i % 2},{(i // 2) % 2}\n" for i in range(60)))
    job.write_config(SIMPLE_CONFIG)
    assert job.run() == 0
    metrics = {m["name"]: m for m in job.analysis()["pre_training_bias_metrics"]["facets"]["g"][0]["metrics"]}
    assert metrics["CI"]["error"] == "CI: negated facet set is empty. Check that x[~facet] has non-zero length."
    assert metrics["KL"]["error"] == "No instance of common facet found, dataset may be too small"


def test_validate_lists_every_problem(job, capsys):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(lable="y", probability_threshold="high"))
    assert job.run(command="validate") == 1
    printed = capsys.readouterr().out
    assert "2 problem(s) found" in printed
    assert "lable" in printed and "probability_threshold" in printed


def test_validate_reports_data_problems(job, capsys):
    job.write_data(SIMPLE_DATA)
    job.write_config(config_with(label="target"))
    assert job.run(command="validate") == 1
    assert "target" in capsys.readouterr().out
    assert job.output_files() == []


# ---- a file-size limit (ulimit -f) or a full disk while the results are written ----------------------

def run_with_file_size_limit(job, limit: int, **env: str) -> subprocess.CompletedProcess:
    """`lucent run` whose writes stop at ``limit`` bytes per file (RLIMIT_FSIZE, as `ulimit -f`): a real write
    fails with EFBIG ("File too large") once a file would pass it, as on a full disk."""
    import resource

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root)],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, **env})


def test_a_result_file_over_the_file_size_limit_is_named_as_published(tmp_path):
    """explanations_shap/out.csv (45 kB here) is written by plain writes, whose error names no file: the
    message names the file where the user will look for it, not the output folder or its staging copy."""
    from container.demo import write_demo_job
    from tests.conftest import JobRoot

    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, seed=3, with_model=True))
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"] = {"shap": {"num_clusters": 1, "num_samples": 16, "seed": 0}}
    job.write_config(config)
    # Shards of 15 records (a few kB each, in .lucent-work): they fit, as do the probe and baseline.csv.
    result = run_with_file_size_limit(job, 16 * 1024, LUCENT_SHAP_SHARD_ROWS="300")
    assert result.returncode == 1, result.stderr
    assert job.message == (f"ClientError: cannot write {job.output_dir / 'explanations_shap' / 'out.csv'}: File too "
                           "large. Raise the file-size limit (ulimit -f), or use a filesystem that takes larger files, "
                           "and run the job again; nothing was published"), job.message
    assert "Traceback" not in result.stderr
    assert [name for name in job.output_files() if not name.startswith(".lucent-work")] == []


def test_a_report_over_the_file_size_limit_is_the_users_error_naming_the_report_file(demo_job):
    """The report (373 kB of HTML here) is refused by the storage after analysis.json (32 kB) was published:
    exit 1, ClientError naming the report file as published, like any other output, not an AlgorithmError."""
    result = run_with_file_size_limit(demo_job, 128 * 1024)
    assert result.returncode == 1, result.stderr
    assert demo_job.message == (f"ClientError: cannot write {demo_job.output_dir / 'report.html'}: File too large. "
                                "Raise the file-size limit (ulimit -f), or use a filesystem that takes larger files, "
                                "and run the job again; analysis.json and the other results were published"), \
        demo_job.message
    assert demo_job.output_files() == [MANIFEST_FILE, "analysis.json"]  # published; no staging copy left
