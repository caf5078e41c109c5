"""Quiet logs and no fixed import cost: ``--log-level``, other libraries' INFO lines, lazy imports."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.logs import configure_logging
from container.cli import main
from container.demo import DEMO_CONFIG, write_demo_job
from tests.conftest import JobRoot

ROOT = Path(__file__).parent.parent
HEAVY = ("pandas", "numpy", "sklearn", "matplotlib", "weasyprint", "scipy", "pyarrow", "spacy")


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          **kwargs)


def test_lucent_version_imports_nothing_heavy() -> None:
    result = _python("import sys\nfrom container.cli import main\ncode = main(['--version'])\n"
                     f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["lucent 0.1.0", "0 []"]


def test_a_bias_job_with_a_report_imports_neither_scikit_learn_nor_matplotlib(tmp_path) -> None:
    """The bias job needs pandas, not scikit-learn (no Flip Test on these string features, no model) nor
    matplotlib (the report is rendered by its own process)."""
    root = write_demo_job(tmp_path / "job", n_rows=300, config=DEMO_CONFIG)
    result = _python("import sys\nfrom container.cli import main\n"
                     f"code = main(['run', '--processing-root', {str(root)!r}])\n"
                     "print(code, sorted(m for m in ('sklearn', 'matplotlib', 'weasyprint') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"
    assert (root / "output" / "report.pdf").read_bytes().startswith(b"%PDF")
    # Third-party INFO lines (WeasyPrint logs hundreds per report, fontTools its subsetting) are off by default,
    # in the report's process too; Lucent's own INFO lines are there.
    lines = result.stderr.splitlines()
    assert any(" INFO lucent: Report written (report.html, report.ipynb, report.pdf)" in line for line in lines)
    third_party_info = [line for line in lines if " INFO " in line
                        and line.split(" INFO ")[1].split(":")[0].split(".")[0] not in ("lucent", "analyzer", "container")]
    assert third_party_info == []


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    level = root.level
    yield
    configure_logging(logging.INFO)
    root.setLevel(level)


RECORDS = [("analyzer.step", logging.DEBUG, "ours, debug"), ("analyzer.step", logging.INFO, "ours"),
           ("container.job", logging.WARNING, "ours, warning"), ("botocore.endpoint", logging.DEBUG, "theirs, debug"),
           ("weasyprint.progress", logging.INFO, "theirs"), ("fontTools.subset", logging.INFO, "theirs"),
           ("urllib3.connectionpool", logging.INFO, "theirs"), ("weasyprint", logging.WARNING, "theirs, warning")]


@pytest.mark.parametrize(("level", "shown"), [
    (logging.INFO, ["INFO analyzer.step: ours", "WARNING container.job: ours, warning",
                    "WARNING weasyprint: theirs, warning"]),
    (logging.WARNING, ["WARNING container.job: ours, warning", "WARNING weasyprint: theirs, warning"]),
    (logging.DEBUG, ["DEBUG analyzer.step: ours, debug", "INFO analyzer.step: ours", "WARNING container.job: ours, warning",
                     "DEBUG botocore.endpoint: theirs, debug", "INFO weasyprint.progress: theirs",
                     "INFO fontTools.subset: theirs", "INFO urllib3.connectionpool: theirs",
                     "WARNING weasyprint: theirs, warning"]),
])
def test_other_libraries_log_from_warning_up_unless_debug(level, shown, capsys, restore_logging) -> None:
    configure_logging(logging.DEBUG)
    configure_logging(level)  # idempotent: one handler and one filter, for the last level asked
    for name, record_level, message in RECORDS:
        logging.getLogger(name).log(record_level, message)
    printed = [line.split(" ", 2)[2] for line in capsys.readouterr().err.splitlines()]
    assert printed == shown


def test_log_level_option_on_validate(tmp_path, capsys, restore_logging) -> None:
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=50, config=DEMO_CONFIG))
    assert job.run("--log-level", "WARNING", command="validate") == 0
    captured = capsys.readouterr()
    assert captured.out == "OK: the job would start.\n"
    assert captured.err == ""  # nothing below WARNING
    assert job.run("--log-level", "info", command="validate") == 0
    assert " INFO lucent: Analysis config path: " in capsys.readouterr().err
    assert job.run("-v", command="validate") == 0
    assert logging.getLogger().level == logging.DEBUG


def test_the_level_can_come_from_the_environment(tmp_path, capsys, monkeypatch, restore_logging) -> None:
    """SageMaker starts the image with no arguments: LUCENT_LOG_LEVEL (the job's Environment) sets it."""
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=50, config=DEMO_CONFIG))
    monkeypatch.setenv("LUCENT_LOG_LEVEL", "Warning")
    assert job.run(command="validate") == 0
    assert capsys.readouterr().err == ""
    assert job.run("--log-level", "info", command="validate") == 0  # the option wins
    assert " INFO lucent: " in capsys.readouterr().err
    monkeypatch.setenv("LUCENT_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit, match=r"^lucent: LUCENT_LOG_LEVEL='chatty': choose from debug, info, warning, error$"):
        job.run(command="validate")
    # A job: the processing job's status says why (the previous run's "Completed" does not stay).
    (job.root / "message").write_text("Completed: an earlier run\n")
    assert job.run() == 1
    assert job.message == "ClientError: LUCENT_LOG_LEVEL='chatty': choose from debug, info, warning, error"
    assert "LUCENT_LOG_LEVEL='chatty'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "validate", "monitor", "launch"])
def test_log_level_option_is_on_every_working_command(command, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--log-level", "loud"])
    # argparse's usage error; lucent monitor's are bad input of an execution (exit 1, docs/monitoring.md)
    assert caught.value.code == (1 if command == "monitor" else 2)
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice: 'loud' (choose from 'debug', 'info', 'warning', 'error')" in err


def test_the_container_log_shows_progress_lines_not_bars(tmp_path) -> None:
    """A job whose stderr is not a terminal (a container log) logs progress lines, never a bar: for
    loading, the post-training predictions, SHAP and PDP."""
    from container.demo import MODEL_DEMO_CONFIG

    methods = MODEL_DEMO_CONFIG["methods"]
    config = {**MODEL_DEMO_CONFIG, "methods": {"shap": methods["shap"], "pdp": methods["pdp"],
                                               "post_training_bias": {"methods": ["DPPL"]}}}
    root = write_demo_job(tmp_path / "job", n_rows=200, config=config, with_model=True)
    result = subprocess.run([sys.executable, "-m", "container.cli", "run", "--processing-root", str(root)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "LUCENT_PROGRESS_SECONDS": "1e-9"})
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "█" not in result.stderr
    assert " INFO analyzer.progress: SHAP: 200 of 200 records (100%), " in result.stderr
    assert " INFO analyzer.progress: Loading: 200 rows, " in result.stderr  # the total is unknown up front
    assert " INFO analyzer.progress: Predictions: 200 of 200 rows (100%), " in result.stderr
    assert " INFO analyzer.progress: PDP: 3 of 3 features (100%), " in result.stderr
    assert json.loads((root / "output" / "analysis.json").read_text())["explanations"]["kernel_shap"]
