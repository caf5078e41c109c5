"""`lucent monitor` findings of QA session 13: NDCG with signed, unchanged and all-zero attributions; bad
constraint values; ground truth for multi-record requests; Clarify's label-typing failures in a window
(small windows, no positive prediction, labels of another type); argument errors; SIGTERM; gzip files;
the documented outputs."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from analyzer.config import parse_config
from analyzer.errors import UserError
from analyzer.monitor.attributes import EndpointAttributes
from analyzer.monitor.drift import attribution_scores, attribution_violations, ndcg
from analyzer.monitor.merge import merge_window
from container.cli import main as lucent
from container.monitor.demo import LABEL, make_churn_data
from tests.test_monitor_merge import START, WINDOW, churn_config, files, line, truth
from tests.test_monitor_run import HOUR, THRESHOLD, Setup, churn_score

DOCS = Path(__file__).resolve().parent.parent / "docs"

# NB-FA's baseline global SHAP values (spec 4): the old DCG (cumsum / diff) against the ideal (a dot product)
# gave 0.9999999999999998 for this unchanged ranking.
NB_FA = {"Age": 0.05962069398767555, "Workclass": 0.009340874120660063, "fnlwgt": 0.0010900750377509304,
         "Education": 0.014739126275038199, "Education-Num": 0.09891391226656666,
         "Marital Status": 0.05452765230404344, "Occupation": 0.0025392834714334667,
         "Relationship": 0.018169508641909988, "Ethnic group": 0.005295263900463686, "Sex": 0.032080828962127876,
         "Capital Gain": 0.09913318680892579, "Capital Loss": 0.013518474176382519,
         "Hours per week": 0.03641124946588507, "Country": 0.004894213349476741}


def _explanations(values_by_label: dict[str, dict[str, object]]) -> dict:
    return {"version": "1.0", "explanations": {"kernel_shap": {
        label: {"global_shap_values": values, "expected_value": 0.25} for label, values in values_by_label.items()}}}


# -- 1. signed attributions (agg_method median): importance is magnitude ----------------------------------


def test_signed_attributions_are_ranked_and_weighted_by_magnitude() -> None:
    baseline = {"a": 0.6, "b": -0.3, "c": 0.1, "d": -0.05}
    reversed_ranking = {"a": 0.05, "b": -0.1, "c": 0.3, "d": -0.6}
    score = ndcg(baseline, reversed_ranking)
    # The old code ranked by signed value: 1.58 for a fully reversed ranking (no violation).
    assert score == pytest.approx(ndcg_score([[0.6, 0.3, 0.1, 0.05]], [[0.05, 0.1, 0.3, 0.6]]), rel=1e-12)
    assert 0 <= score < 0.9
    # A mirror image (every sign flipped) keeps every feature's importance: no drift (the old code: -1.0).
    assert ndcg({"a": -0.5, "b": 0.5, "c": 0.0}, {"a": 0.5, "b": -0.5, "c": 0.0}) == 1.0
    assert ndcg({"a": -0.5, "b": 0.3, "c": -0.1}, {"a": 0.5, "b": -0.3, "c": 0.1}) == 1.0
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(2, 20))
        base, live = rng.normal(size=n), rng.normal(size=n)
        names = [f"f{i}" for i in range(n)]
        ours = ndcg(dict(zip(names, base, strict=True)), dict(zip(names, live, strict=True)))
        assert 0.0 <= ours <= 1.0
        assert ours == pytest.approx(ndcg_score([np.abs(base)], [np.abs(live)]), rel=1e-12, abs=1e-15)


# -- 2. an unchanged ranking scores exactly 1.0 -----------------------------------------------------------


def test_an_unchanged_ranking_scores_exactly_one() -> None:
    rng = np.random.default_rng(5)
    vectors = [NB_FA, {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.05}, {"a": 0.5, "b": 0.5, "c": 0.1},
               {"a": -0.2, "b": 0.7, "c": -0.05, "d": 0.0}]
    vectors += [{f"f{i}": float(v) for i, v in enumerate(rng.random(int(rng.integers(2, 40))))} for _ in range(200)]
    for vector in vectors:
        assert ndcg(vector, vector) == 1.0, vector
        assert ndcg(vector, {k: 3 * v for k, v in vector.items()}) == 1.0  # same ranking, other scale
    # A window that only breaks a tie of the baseline ranks the features the same way.
    assert ndcg({"a": 0.5, "b": 0.5, "c": 0.1}, {"a": 0.6, "b": 0.5, "c": 0.1}) == 1.0
    # Multi-label: every label exactly 1.0, so threshold 1 (allowed) raises no violation.
    document = _explanations({"label0": NB_FA, "label1": vectors[1], "label2": vectors[-1]})
    assert attribution_scores(document, document) == {"label0": 1.0, "label1": 1.0, "label2": 1.0}
    assert attribution_violations(document, document, threshold=1) == []
    drifted = _explanations({"label0": {k: -v if k == "Country" else v for k, v in NB_FA.items()},
                             "label1": {"a": 0.05, "b": 0.1, "c": 0.3, "d": 0.5}, "label2": vectors[-1]})
    assert [v["label"] for v in attribution_violations(drifted, document, threshold=1)] == ["label1"]


# -- 3. all-zero baseline attributions --------------------------------------------------------------------


def test_all_zero_baseline_attributions_have_no_ranking_to_compare(caplog) -> None:
    zeros = {"a": 0.0, "b": 0.0, "c": 0.0}
    assert ndcg(zeros, zeros) == 1.0
    assert ndcg(zeros, {"a": 0.0, "b": 0.2, "c": 0.0}) == 1.0
    baseline = _explanations({"label0": zeros})
    with caplog.at_level(logging.WARNING, logger="analyzer.monitor.drift"):
        assert attribution_violations(_explanations({"label0": {"a": 0.0, "b": 0.2, "c": 0.0}}), baseline) == []
    assert ("Label 'label0': every global SHAP value in the constraints file is 0" in caplog.text
            and "the NDCG is taken as 1.0" in caplog.text and "'b' 0.2" in caplog.text)


# -- 12. a bad constraint value names the file and the feature ---------------------------------------------


@pytest.mark.parametrize("bad", [None, "NaN", "Infinity", "a lot", True])
def test_a_bad_global_shap_value_names_the_file_and_the_feature(bad) -> None:
    baseline = _explanations({"label0": {"Age": 0.3, "Sex": bad, "Income": 0.1}})
    window = _explanations({"label0": {"Age": 0.3, "Sex": 0.2, "Income": 0.1}})
    expected = (f"constraints file s3://b/analysis.json explanations.kernel_shap.label0.global_shap_values "
                f"feature 'Sex': expected a finite number, got {bad!r}")
    with pytest.raises(UserError) as caught:
        attribution_violations(window, baseline, source="constraints file s3://b/analysis.json")
    assert str(caught.value) == expected


def test_a_bad_bias_constraint_value_names_the_constraints_file_in_a_run(tmp_path: Path) -> None:
    setup = Setup(tmp_path, make_churn_data(120, seed=2))
    assert setup.run() == 0
    constraints = json.loads((setup.window_folder() / "analysis.json").read_text())
    constraints["post_training_bias_metrics"]["facets"]["Account Length"][0]["metrics"][0]["value"] = "a lot"
    path = tmp_path / "constraints.json"
    path.write_text(json.dumps(constraints))
    setup.write_definition(path)
    assert setup.run() == 1
    assert setup.status()["FailureReason"].startswith(
        f"constraints file {path} post_training_bias_metrics facet 'Account Length' value ")


# -- 4. ground truth for multi-record requests -------------------------------------------------------------


def _multi_record_window(truths: list[str]):
    when = START + timedelta(minutes=5)
    lines = [line("e1", when, b"10,100,1.0,KS\n20,90,2.0,OH\n30,80,3.0,NJ\n", b"0.9\n0.1\n0.95\n", inference_id="r1"),
             line("e2", when, b"40,70,4.0,KS\n50,60,5.0,OH\n", b"0.2\n0.85\n", inference_id="r2"),
             line("e3", when, b"60,50,6.0,NJ\n", b"0.3\n", inference_id="r3")]
    return merge_window(parse_config(churn_config()), files(lines), WINDOW, EndpointAttributes(),
                        files(truths, 2, "truth"))


def test_one_label_per_line_gives_each_record_of_a_request_its_own(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="analyzer.monitor.merge"):
        merged = _multi_record_window([truth("r1", "1\n0\n1\n"), truth("r2", "0\n1"), truth("r3", "1")])
    assert merged.dataset.label.to_series().tolist() == [1, 0, 1, 0, 1, 1]
    assert merged.dataset.predicted_label.to_series().tolist() == [1, 0, 1, 0, 1, 0]
    assert merged.counts["records_with_copied_ground_truth"] == 0 and "copy" not in caplog.text
    json_lines = _multi_record_window([truth("r1", '{"Churn": 1}\n{"Churn": 0}\n{"Churn": 1}', "JSON"),
                                       truth("r2", '{"Churn": 0}\n{"Churn": 1}\n', "JSON"),
                                       truth("r3", '{"Churn": 1}', "JSON")])
    assert json_lines.dataset.label.to_series().tolist() == [1, 0, 1, 0, 1, 1]


def test_one_label_for_a_multi_record_request_is_copied_counted_and_logged(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="analyzer.monitor.merge"):
        merged = _multi_record_window([truth("r1", "1"), truth("r2", "0"), truth("r3", "1")])
    assert merged.dataset.label.to_series().tolist() == [1, 1, 1, 0, 0, 1]
    assert merged.counts["records_with_copied_ground_truth"] == 5
    assert "5 record(s) of 2 multi-record request(s) got a copy of their request's one ground truth label" in caplog.text


def test_another_number_of_labels_than_records_leaves_the_request_out(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="analyzer.monitor.merge"):
        merged = _multi_record_window([truth("r1", "1\n0"), truth("r2", "0\n1"), truth("r3", "1")])
    assert merged.dataset.label.to_series().tolist() == [0, 1, 1]  # r2's two records, r3's one
    assert merged.counts["records_with_mismatched_ground_truth"] == 3
    assert merged.counts["records_without_ground_truth"] == 3
    assert "3 record(s) of 1 request(s) are left out" in caplog.text and "'r1' (2 labels, 3 records)" in caplog.text


def test_a_label_line_with_several_fields_is_still_malformed() -> None:
    merged = _multi_record_window([truth("r1", "1,0,1"), truth("r2", "0\n1"), truth("r3", "1")] +
                                  [truth(f"x{i}", "0") for i in range(200)])
    assert merged.counts["malformed_ground_truth_lines"] == 1
    assert merged.counts["malformed_ground_truth_examples"][0].endswith(
        "groundTruthData.data holds 3 CSV fields on a line; it must hold only the label (one per line for a "
        "request of several records)")


# -- 11. gzip-compressed files ----------------------------------------------------------------------------


def test_a_gzip_compressed_capture_or_ground_truth_file_is_named() -> None:
    when = START + timedelta(minutes=5)
    lines = [line(f"e{i}", when, b"10,100,1.0,KS", b"0.9") for i in range(5)]
    compressed = [("capture/000.jsonl.gz", gzip.compress("".join(lines).encode()))]
    config = parse_config(churn_config())
    with pytest.raises(UserError) as caught:
        merge_window(config, compressed, WINDOW, EndpointAttributes(), files([truth("e1", "1")]))
    assert str(caught.value) == (
        "capture/000.jsonl.gz is gzip-compressed: capture files are plain JSON Lines (UTF-8 text, one capture "
        "record per line), as SageMaker's data capture and `lucent endpoint` write them; decompress it (gunzip) "
        "in place")
    with pytest.raises(UserError, match=r"^truth/0.jsonl.gz is gzip-compressed: ground truth files are plain JSON "
                                        r"Lines \(UTF-8 text, one ground truth record per line\); decompress"):
        merge_window(config, files(lines), WINDOW, EndpointAttributes(),
                     [("truth/0.jsonl.gz", gzip.compress(truth("e1", "1").encode()))])


# -- 5, 6, 7. Clarify's label-typing failures, told in the window's terms ----------------------------------


def _failure(setup: Setup) -> str:
    assert setup.run() == 1
    return (setup.root / "work" / "message").read_text()


def test_a_small_window_names_its_record_count_and_the_five_percent_rule(tmp_path: Path) -> None:
    message = _failure(Setup(tmp_path, make_churn_data(300, seed=2).iloc[:30]))
    assert message.startswith("Failed: ClientError: Post-training bias failed on the window's 30 labelled "
                              "record(s): the window holds only 30 labelled record(s): Clarify types an integer "
                              "column whose distinct values are at least 5 % of its rows as continuous")
    assert ("Here the label 'Churn' (2 distinct value(s) in 30 rows, 6.7%) is continuous and the predicted labels "
            "(1 distinct value(s) in 30 rows, 3.3%) are categorical. At least 41 labelled records") in message
    assert "predicted no positive" not in message
    assert message.rstrip().endswith("(Clarify's error: Predicted label column 'predicted_label': Predicted Label "
                                     "Column series datatype is not the same as Label Column series)")


def test_a_window_without_a_positive_prediction_says_so(tmp_path: Path) -> None:
    records = make_churn_data(300, seed=2)
    records = records[churn_score(records) <= THRESHOLD].iloc[:100]  # every predicted label 0
    setup = Setup(tmp_path, records)
    config = json.loads(setup.config.read_text())
    setup.config.write_text(json.dumps({**config, "label_values_or_threshold": [1]}))
    message = _failure(setup)
    assert message.startswith(
        "Failed: ClientError: Post-training bias failed on the window's 100 labelled record(s): the model "
        "predicted no positive label in the window: its 100 predicted label(s) are 0, none of "
        "label_values_or_threshold [1]. Clarify computes no post-training bias metric without a positive "
        "prediction")
    assert "5 %" not in message and "Positive Predicted Index Series contains all False values" in message
    assert setup.status()["ExecutionStatus"] == "Failed"


def test_ground_truth_of_another_type_than_the_predictions_names_both(tmp_path: Path) -> None:
    records = make_churn_data(300, seed=2).iloc[:100]
    setup = Setup(tmp_path, records)
    folder = setup.root / "ground-truth" / f"{HOUR:%Y/%m/%d/%H}"
    for path in folder.iterdir():
        path.unlink()
    (folder / "labels.jsonl").write_text("".join(truth(str(i), f"{label}.0") for i, label in
                                                 enumerate(records[LABEL])))
    message = _failure(setup)
    assert re.search(r"the ground truth labels are floats \((0\.0, 1\.0|1\.0, 0\.0)\), the predicted labels ints "
                     r"\((0, 1|1, 0)\): Clarify types the label and the predicted label separately", message), message


# -- 8. argument errors -----------------------------------------------------------------------------------


def test_a_bad_argument_exits_1_and_replaces_the_previous_message(tmp_path: Path, capsys) -> None:
    message = tmp_path / "message"
    message.write_text("Completed: window [previous run]\n")
    with pytest.raises(SystemExit) as caught:
        lucent(["monitor", "--job-definition", "j.json", "--capture-uri", "c", "--now", "1764554400",
                "--message-file", str(message)])
    assert caught.value.code == 1
    assert message.read_text() == ("Failed: ClientError: lucent monitor: argument --now: '1764554400' is not an "
                                   "ISO-8601 time such as 2024-05-01T06:00Z (a number of seconds since 1970 is "
                                   "not one)\n")
    assert "lucent monitor: error: argument --now" in capsys.readouterr().err
    root = tmp_path / "work"
    for argv in (["--job-definition", "j.json", "--processing-root", str(root)],
                 ["--job-definition", "j.json", "--capture-uri", "c", "--bogus", "--processing-r", str(root)]):
        with pytest.raises(SystemExit) as caught:
            lucent(["monitor", *argv])
        assert caught.value.code == 1
    assert (root / "message").read_text() == "Failed: ClientError: lucent monitor: unrecognized arguments: --bogus\n"
    with pytest.raises(SystemExit) as caught:  # no message file named: only the terminal has it
        lucent(["monitor", "--capture-uri", "c"])
    assert caught.value.code == 1 and "required: --job-definition" in capsys.readouterr().err


# -- 9. SIGTERM: Stopped ----------------------------------------------------------------------------------


class _StopWhenTheWindowStarts(logging.Handler):
    """Sends SIGTERM to this process when the execution logs its window (mid-run, before the merge)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Window ["):
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_run_is_recorded_as_stopped(tmp_path: Path) -> None:
    setup = Setup(tmp_path, make_churn_data(120, seed=2))
    handler = _StopWhenTheWindowStarts()
    monitor_log = logging.getLogger("lucent.monitor")
    monitor_log.addHandler(handler)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert setup.run() == 2
    finally:
        monitor_log.removeHandler(handler)
    assert signal.getsignal(signal.SIGTERM) is previous  # restored
    assert (setup.root / "work" / "message").read_text() == (
        "Stopped: the execution was stopped (SIGTERM) before it finished\n")
    status = setup.status()
    assert status["ExecutionStatus"] == "Stopped"
    assert status["FailureReason"] == "the execution was stopped (SIGTERM) before it finished"
    assert setup.published() == ["monitoring_execution.json"]


# -- 10. the documented outputs ---------------------------------------------------------------------------


def test_the_output_table_lists_every_file_a_window_folder_holds(tmp_path: Path) -> None:
    text = (DOCS / "monitoring.md").read_text()
    table = text[text.index("6. **The outputs**"):text.index("A failed execution publishes")]
    documented = set(re.findall(r"`([^`]+)`", table))
    setup = Setup(tmp_path, make_churn_data(120, seed=2))
    assert setup.run() == 0
    published = {str(p.relative_to(setup.window_folder())) for p in setup.window_folder().rglob("*") if p.is_file()}
    assert ".lucent-outputs.json" in published and published <= documented
    assert "explanations_shap/baseline.csv" in documented  # explainability windows (tests/test_monitor_run)


def test_a_multi_record_window_without_any_ground_truth_is_refused() -> None:
    with pytest.raises(UserError, match=r"^None of the 6 captured record\(s\) in the window .* has ground truth"):
        _multi_record_window([])
