"""The bias-metric registry (analyzer/bias_registry.py): it lists exactly the contract's metrics, and
config validation, the bias report, the metric functions and the human-readable reports all use it."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import bias_registry as registry
from analyzer.bias import metric_names
from analyzer.bias import metrics as metric_functions
from analyzer.config import POST_TRAINING_METRICS, PRE_TRAINING_METRICS, ConfigValidationError, parse_config
from analyzer.report import views
from analyzer.report.notebook import helper_source
from tests.test_bias_helpers import lucent_report

TESTS = Path(__file__).resolve().parent

# The contract: bias-metrics.md sections 3 and 4 (smclarify's registration order per stage) and
# clarify-contract.md section 3 (the description analysis.json carries for each short name).
CONTRACT = {
    registry.PRE_TRAINING: [
        ("CI", "Class Imbalance (CI)"),
        ("DPL", "Difference in Positive Proportions in Labels (DPL)"),
        ("KL", "Kullback-Liebler Divergence (KL)"),
        ("JS", "Jensen-Shannon Divergence (JS)"),
        ("LP", "L-p Norm (LP)"),
        ("TVD", "Total Variation Distance (TVD)"),
        ("KS", "Kolmogorov-Smirnov Distance (KS)"),
        ("CDDL", "Conditional Demographic Disparity in Labels (CDDL)"),
    ],
    registry.POST_TRAINING: [
        ("DPPL", "Difference in Positive Proportions in Predicted Labels (DPPL)"),
        ("DI", "Disparate Impact (DI)"),
        ("DCA", "Difference in Conditional Acceptance (DCA)"),
        ("DCR", "Difference in Conditional Rejection (DCR)"),
        ("RD", "Recall Difference (RD)"),
        ("SD", "Specificity Difference (SD)"),
        ("DAR", "Difference in Acceptance Rates (DAR)"),
        ("DRR", "Difference in Rejection Rates (DRR)"),
        ("AD", "Accuracy Difference (AD)"),
        ("CDDPL", "Conditional Demographic Disparity in Predicted Labels (CDDPL)"),
        ("TE", "Treatment Equality (TE)"),
        ("FT", "Flip Test (FT)"),
        ("GE", "Generalized Entropy (GE)"),
    ],
}


def test_registry_lists_exactly_the_contract_metrics():
    for stage, expected in CONTRACT.items():
        assert [(m.name, m.description) for m in registry.BIAS_METRICS if m.stage == stage] == expected
        assert registry.registered_names(stage) == tuple(name for name, _ in expected)
    assert len(registry.BIAS_METRICS_BY_NAME) == len(registry.BIAS_METRICS) == 21
    with pytest.raises(ValueError, match="stage_type should be a Enum value of StageType"):
        registry.registered_names("during_training")


@pytest.mark.oracle
def test_registry_matches_smclarify():
    from smclarify.bias import metrics as oracle

    stages = ((registry.PRE_TRAINING, oracle.PRETRAINING_METRICS),
              (registry.POST_TRAINING, oracle.POSTTRAINING_METRICS))
    for stage, functions in stages:
        assert [(f.__name__, f.__doc__.strip().splitlines()[0]) for f in functions] == [
            (m.name, m.description) for m in registry.BIAS_METRICS if m.stage == stage]


def test_every_metric_function_is_registered_and_found():
    for metric in registry.BIAS_METRICS:
        assert metric.function.__name__ == metric.name
    public = {name for name, value in vars(metric_functions).items()
              if callable(value) and name.isupper() and value.__module__ == metric_functions.__name__}
    # CDD is the shared body of CDDL and CDDPL, not a metric of its own.
    assert public - {"CDD"} == {m.name for m in registry.BIAS_METRICS if m.inputs != registry.FEATURES}


def test_config_validation_takes_the_metric_names_from_the_registry(demo_config):
    assert tuple(sorted(registry.registered_names(registry.PRE_TRAINING))) == PRE_TRAINING_METRICS
    assert tuple(sorted(registry.registered_names(registry.POST_TRAINING))) == POST_TRAINING_METRICS
    pre_training = list(registry.registered_names(registry.PRE_TRAINING))
    demo_config["methods"] = {"pre_training_bias": {"methods": pre_training},
                              "post_training_bias": {"methods": "all"}}
    config = parse_config(demo_config)
    assert config.methods.pre_training_bias.methods == list(PRE_TRAINING_METRICS)
    assert config.methods.post_training_bias.methods == list(POST_TRAINING_METRICS)
    # "RR" exists only as a model-performance statistic (bias-metrics.md 4), not as a bias metric.
    demo_config["methods"]["post_training_bias"] = {"methods": ["DI", "RR"]}
    with pytest.raises(ConfigValidationError) as raised:
        parse_config(demo_config)
    assert "'RR' is not one of " + ", ".join(POST_TRAINING_METRICS) in str(raised.value)


def test_bias_report_names_and_describes_metrics_from_the_registry():
    df = pd.DataFrame({"x": ["a", "b", "a", "b", "a", "b"], "f": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                       "y": ["yes", "no", "yes", "yes", "no", "no"],
                       "yhat": ["yes", "yes", "no", "yes", "no", "yes"]})
    group = pd.Series(["g", "h", "g", "h", "g", "h"])
    for stage in (registry.PRE_TRAINING, registry.POST_TRAINING):
        assert metric_names(stage, ["all"]) == sorted(registry.registered_names(stage))
        (entry, _) = lucent_report(df, "x", None, "y", ["yes"], stage, predicted="yhat", group=group)
        assert [(m["name"], m["description"]) for m in entry["metrics"]] == sorted(
            (m.name, m.description) for m in registry.BIAS_METRICS if m.stage == stage)


def test_human_readable_reports_use_the_registry():
    assert views.METRICS == registry.BIAS_METRICS_BY_NAME
    assert set(views.READINGS) == set(registry.BIAS_METRICS_BY_NAME)
    shown = {name: views.range_text(views.METRICS[name]) for name in ("CI", "JS", "LP", "DI", "KL")}
    assert shown == {"CI": "−1 to 1", "JS": "0 to ln 2 ≈ 0.69", "LP": "0 to √2 ≈ 1.41", "DI": "0 to ∞",
                     "KL": "−∞ to ∞"}


def test_notebook_helpers_run_without_lucent(monkeypatch):
    source = helper_source()
    assert "from analyzer" not in source and "import analyzer" not in source
    monkeypatch.setitem(sys.modules, "analyzer", None)  # any import of Lucent now fails
    notebook = types.ModuleType("notebook_helpers")  # stands for the kernel's __main__
    monkeypatch.setitem(sys.modules, notebook.__name__, notebook)
    exec(compile(source, "notebook helpers", "exec"), notebook.__dict__)
    copied = notebook.METRICS
    assert [(m.name, m.description, m.low, m.high, m.ideal, m.direction) for m in copied.values()] == [
        (m.name, m.description, m.low, m.high, m.ideal, m.direction) for m in registry.BIAS_METRICS]


# -- the registry's ranges hold for what the functions return -----------------------------------------

counts = st.integers(min_value=0, max_value=30)
confusions = st.builds(metric_functions.Confusion, counts, counts, counts, counts)


def _assert_in_range(metric: registry.BiasMetric, *arguments) -> None:
    try:
        value = metric.function(*arguments)
    except ValueError:  # Clarify's per-metric error (an empty side, no positive label ...)
        return
    assert not math.isnan(value), metric.name
    if math.isinf(value):
        assert metric.infinite, f"{metric.name} returned {value} but is not registered as possibly infinite"
    assert metric.low - 1e-12 <= value <= metric.high + 1e-12, (metric.name, value)


@settings(max_examples=300, deadline=None)
@given(a=confusions, d=confusions)
def test_side_and_overall_metrics_stay_in_their_registered_range(a, d):
    for metric in registry.BIAS_METRICS:
        if metric.inputs == registry.SIDES:
            _assert_in_range(metric, a, d)
        elif metric.inputs == registry.LABEL_DISTRIBUTIONS:
            _assert_in_range(metric, a.label_counts, d.label_counts)
        elif metric.inputs == registry.OVERALL:
            overall = metric_functions.Confusion(a.tp + d.tp, a.fp + d.fp, a.fn + d.fn, a.tn + d.tn)
            _assert_in_range(metric, overall)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(counts, counts, counts, counts), min_size=1, max_size=5))
def test_group_metrics_stay_in_their_registered_range(groups):
    cells = np.array(groups, dtype=np.int64)  # per group: positives in a, in d, negatives in a, in d
    group_counts = metric_functions.GroupCounts(
        sizes=cells.sum(axis=1), positive=cells[:, 0] + cells[:, 1], positive_d=cells[:, 1],
        negative=cells[:, 2] + cells[:, 3], negative_d=cells[:, 3],
        n_positive=int(cells[:, :2].sum()), n_negative=int(cells[:, 2:].sum()))
    for metric in registry.BIAS_METRICS:
        if metric.inputs == registry.GROUPS:
            _assert_in_range(metric, group_counts)


def test_distribution_metrics_reach_the_registered_bounds():
    """The bounds are the implementation's: KL below 0 (truncated vectors), LP at sqrt(2), JS at ln 2."""
    kl, js, lp = (registry.BIAS_METRICS_BY_NAME[name] for name in ("KL", "JS", "LP"))
    assert kl.function(np.array([2, 1]), np.array([0, 3])) < 0 <= kl.high
    assert lp.function(np.array([1, 1]), np.array([1, 1])) == 0.0
    # Disjoint supports leave nothing in common: Clarify's error, not a value beyond the bounds.
    with pytest.raises(ValueError, match="No instance of common facet found"):
        js.function(np.array([5, 0]), np.array([0, 5]))


# -- the oracle gate (tests/conftest.py) ----------------------------------------------------------------

_BLOCK_ORACLE = """\
import sys
class _NoOracle:
    def find_spec(self, name, path=None, target=None):
        if name == "smclarify" or name.startswith("smclarify."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _NoOracle())
"""
_ORACLE_TEST = """\
import pytest

@pytest.mark.oracle
def test_needs_the_oracle():
    import smclarify  # noqa: F401

def test_without_the_oracle():
    pass
"""


def _pytest_without_oracle(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(_BLOCK_ORACLE)
    (tmp_path / "test_gate.py").write_text(_ORACLE_TEST)
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{TESTS.parent}", **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest",
                           "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_gate.py")],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)


def test_a_missing_oracle_fails_the_run(tmp_path):
    result = _pytest_without_oracle(tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "1 collected tests compare with the test oracle smclarify, which cannot be imported" in (
        result.stderr)
    assert "LUCENT_TESTS_WITHOUT_ORACLE=1" in result.stderr


def test_a_missing_oracle_skips_its_tests_only_when_asked(tmp_path):
    result = _pytest_without_oracle(tmp_path, LUCENT_TESTS_WITHOUT_ORACLE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "the test oracle is missing" in result.stdout


def test_no_test_skips_silently_when_the_oracle_is_missing():
    offenders = [path.name for path in TESTS.glob("test_*.py")
                 if 'importorskip("' + 'smclarify' in path.read_text(encoding="utf-8")]
    assert offenders == [], "mark oracle tests with @pytest.mark.oracle instead of importorskip"
