"""The report is rendered in its own process after analysis.json is published (docs/reports.md).

The report process is a real ``spawn`` child: a monkeypatch in the test process does not reach it. To
break it on demand, the tests put a stand-in ``weasyprint`` package first on ``sys.path`` (which a
spawned child inherits; this process keeps the real module it has already imported). The stand-in
fails to import as WeasyPrint does without Pango, or imports and, when asked for the PDF, writes down
what the output folder held at that moment, then fails, or kills its own process the way a crash in a
native library would.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from analyzer.output import MANIFEST_FILE, OutputStaging, read_manifest
from container.demo import DEMO_CONFIG, write_demo_job
from tests.conftest import JobRoot

STAND_IN = '''
import json, os, signal
from pathlib import Path
if os.environ["LUCENT_TEST_MODE"] == "missing":
    raise OSError("cannot load library 'libpango-1.0-0'")


class URLFetcher:
    def __init__(self, **kwargs):
        pass


class HTML:
    def __init__(self, **kwargs):
        pass

    def write_pdf(self, font_config=None):
        assert type(font_config).__name__ == "FontConfiguration"  # the process's one (pdf.render_pdf)
        output = Path(os.environ["LUCENT_TEST_OUTPUT"])
        seen = sorted(p.name for p in output.iterdir() if not p.name.startswith(".lucent-staging"))
        Path(os.environ["LUCENT_TEST_SEEN"]).write_text(json.dumps(seen))
        if os.environ["LUCENT_TEST_MODE"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError("cannot allocate a Pango layout")
'''


@pytest.fixture
def broken_pdf(tmp_path, monkeypatch):
    """Arm the stand-in ``weasyprint`` for spawned children; returns (job, file of what it saw, mode setter)."""
    import weasyprint  # noqa: F401 - this process keeps the real one (check_report_engines passes)

    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, config=DEMO_CONFIG))
    shadow = tmp_path / "shadow"
    (shadow / "weasyprint").mkdir(parents=True)
    (shadow / "weasyprint" / "__init__.py").write_text(STAND_IN, encoding="utf-8")
    (shadow / "weasyprint" / "text").mkdir()
    (shadow / "weasyprint" / "text" / "__init__.py").write_text("", encoding="utf-8")
    (shadow / "weasyprint" / "text" / "fonts.py").write_text("class FontConfiguration:\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(shadow))
    seen = tmp_path / "seen.json"
    monkeypatch.setenv("LUCENT_TEST_OUTPUT", str(job.output_dir))
    monkeypatch.setenv("LUCENT_TEST_SEEN", str(seen))

    def mode(value: str) -> None:
        monkeypatch.setenv("LUCENT_TEST_MODE", value)

    return job, seen, mode


def test_a_failing_pdf_leaves_analysis_json_and_the_other_formats_published(broken_pdf) -> None:
    job, seen, mode = broken_pdf
    mode("fail")
    assert job.run() == 2
    # The child reached the PDF after analysis.json was published and before any report file was.
    assert json.loads(seen.read_text()) == [MANIFEST_FILE, "analysis.json"]
    assert job.message == ("AlgorithmError: the report could not be written (pdf: OSError: cannot allocate a Pango "
                           "layout); analysis.json, report.html, report.ipynb and the other results were published")
    assert job.output_files() == [MANIFEST_FILE, "analysis.json", "report.html", "report.ipynb"]
    assert read_manifest(job.output_dir) == ["analysis.json", "report.html", "report.ipynb"]
    assert list(job.analysis()) == ["version", "post_training_bias_metrics", "pre_training_bias_metrics"]


def test_a_missing_pdf_engine_fails_the_job_before_it_computes(broken_pdf) -> None:
    job, seen, mode = broken_pdf
    mode("missing")
    assert job.run() == 2
    assert job.message == (
        "AlgorithmError: the report cannot be written: pdf: WeasyPrint is not usable (cannot load library "
        "'libpango-1.0-0'); install the Python package 'weasyprint' and the Debian packages libpango-1.0-0 and "
        "libpangoft2-1.0-0")
    assert not seen.exists()
    assert job.output_files() == []  # the output folder was opened (and left empty), nothing computed


def test_a_report_process_that_dies_is_named_and_leaves_analysis_json(broken_pdf) -> None:
    job, seen, mode = broken_pdf
    mode("kill")
    assert job.run() == 2
    assert json.loads(seen.read_text()) == [MANIFEST_FILE, "analysis.json"]
    assert job.message == ("AlgorithmError: the report could not be written (the report process was killed by "
                           "signal 9 (SIGKILL)); analysis.json and the other results were published")
    # The formats the child had staged are not published: it never said they were complete.
    assert job.output_files() == [MANIFEST_FILE, "analysis.json"]


def test_a_rerun_replaces_the_previous_report_and_a_good_run_publishes_all(tmp_path) -> None:
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, config=DEMO_CONFIG))
    stale = job.output_dir / "report.pdf"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (job.output_dir / MANIFEST_FILE).write_text(json.dumps({"published": ["report.pdf", "old.csv"]}))
    (job.output_dir / "old.csv").write_text("x")
    (job.output_dir / "mine.txt").write_text("the user's own file")
    assert job.run() == 0, job.message
    assert job.output_files() == [MANIFEST_FILE, "analysis.json", "mine.txt", "report.html", "report.ipynb",
                                  "report.pdf"]
    assert stale.read_bytes().startswith(b"%PDF")
    assert read_manifest(job.output_dir) == ["analysis.json", "report.html", "report.ipynb", "report.pdf"]
    assert oct(os.stat(stale).st_mode & 0o777) == "0o644"


def test_commit_adding_keeps_what_is_published_and_replacing_removes_it(tmp_path) -> None:
    out = tmp_path / "out"
    with OutputStaging(out) as staging:
        staging.write_text("analysis.json", "{}")
        staging.write_text("explanations_shap/out.csv", "a")
        staging.commit()
    with OutputStaging(out) as staging:
        staging.write_text("report.html", "<p>")
        assert staging.commit(replace_previous=False) == [out / "report.html"]
    assert read_manifest(out) == ["analysis.json", "explanations_shap/out.csv", "report.html"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        MANIFEST_FILE, "analysis.json", "explanations_shap/out.csv", "report.html"]
    with OutputStaging(out) as staging:  # the next job's analysis replaces the whole set
        staging.write_text("analysis.json", "[]")
        staging.commit()
    assert read_manifest(out) == ["analysis.json"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "analysis.json"]


def test_sigterm_while_the_report_renders_stops_its_process(tmp_path) -> None:
    """SageMaker's stop request during the report: the child is stopped, analysis.json stays published and
    the message says so. The job runs in a subprocess that is sent SIGTERM when its log says the report
    started (no timing guess)."""
    import subprocess
    import sys

    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, config=DEMO_CONFIG))
    process = subprocess.Popen([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root)],
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Wrote" in line and "analysis.json" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 2, "".join(lines) + rest
    assert job.message == ("Stopped: the job was stopped (SIGTERM) before it finished; analysis.json and the "
                           "other results were published")
    assert job.output_files() == [MANIFEST_FILE, "analysis.json"]
    assert "report process" not in rest  # stopped, not reported as a crash



def test_a_job_stopped_while_its_report_renders_stops_the_child_before_removing_its_folder(tmp_path, monkeypatch) -> None:
    """The child writes into the report's staging folder: it is stopped while that folder still exists. (The
    other order left the folder in the output once: a file the child wrote while the folder was removed.)"""
    import contextlib
    from types import SimpleNamespace

    import container.job as job_module

    class Child:  # the report process, as _publish_report uses it
        def __init__(self) -> None:
            self.folder: Path | None = None
            self.folder_when_stopped: list[bool] = []

        def wait(self) -> list[Path]:
            (self.folder / "report.html").write_text("<p>half")
            raise job_module.JobStopped()

        def stop(self) -> None:
            self.folder_when_stopped.append(self.folder.is_dir())

    def render(reports, config, dataset, results, staging_dir, published_dir, started_at) -> None:
        reports.folder = staging_dir

    child, out = Child(), tmp_path / "out"
    monkeypatch.setattr(job_module, "render_job_reports", render)
    with pytest.raises(job_module.JobStopped):
        job_module._publish_report(child, None, None, {}, SimpleNamespace(output_dir=out), "", contextlib.ExitStack())
    assert child.folder_when_stopped == [True]
    assert sorted(p.name for p in out.iterdir()) == []


# -- speed (issue #14): what the report process does to save time must not change what the job does --------

RECORD_IMPORT = '''
import os
from pathlib import Path
Path(os.environ["LUCENT_TEST_IMPORTED"]).write_text("imported")
raise OSError("cannot load library 'libpango-1.0-0'")
'''


def _marked_processes(marker: str) -> list[int]:
    """Processes (other than this one) whose environment holds ``marker``: what a job left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


def _run_program(job: JobRoot, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``lucent run`` as the program (``python -m container.cli``: ``analyzer.process_exit.end_process`` ends it), in an
    environment marked so that every process it started can be found afterwards."""
    import subprocess
    import sys
    import uuid

    marker = f"LUCENT_TEST_MARKER={uuid.uuid4().hex}"
    done = subprocess.run([sys.executable, "-m", "container.cli", "run", "--processing-root", str(job.root),
                           "--log-level", "debug"],
                          env={**os.environ, **(env or {}), marker.split("=")[0]: marker.split("=")[1]},
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert _marked_processes(marker) == [], "the job left processes behind"
    return done.returncode, done.stderr


def test_a_job_run_as_the_program_publishes_everything_and_leaves_no_process(tmp_path) -> None:
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, config=DEMO_CONFIG))
    code, log = _run_program(job, tmp_path)
    assert code == 0, log
    assert job.message == "Completed: SageMaker XAI Analyzer ran successfully"
    assert read_manifest(job.output_dir) == ["analysis.json", "report.html", "report.ipynb", "report.pdf"]
    assert (job.output_dir / "report.pdf").read_bytes().startswith(b"%PDF")
    # The log lines of the report process (flushed before it ends at once) and of the job's last steps.
    assert "Report rendered in" in log and "exit_message: Completed" in log


def test_a_failing_report_in_the_program_keeps_its_exit_code_and_message(broken_pdf, tmp_path) -> None:
    job, seen, mode = broken_pdf
    mode("fail")
    code, log = _run_program(job, tmp_path, {"PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])})
    assert code == 2, log
    assert job.message == ("AlgorithmError: the report could not be written (pdf: OSError: cannot allocate a Pango "
                           "layout); analysis.json, report.html, report.ipynb and the other results were published")
    assert read_manifest(job.output_dir) == ["analysis.json", "report.html", "report.ipynb"]


def test_a_job_without_a_report_starts_no_report_process(tmp_path) -> None:
    """The stand-in WeasyPrint records its import: the report process is the only one that imports it."""
    config = json.loads(json.dumps(DEMO_CONFIG))
    del config["methods"]["report"]
    job = JobRoot(write_demo_job(tmp_path / "job", n_rows=300, config=config))
    shadow = tmp_path / "shadow"
    (shadow / "weasyprint").mkdir(parents=True)
    (shadow / "weasyprint" / "__init__.py").write_text(RECORD_IMPORT, encoding="utf-8")
    imported = tmp_path / "imported"
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]),
           "LUCENT_TEST_IMPORTED": str(imported)}
    code, log = _run_program(job, tmp_path, env)
    assert code == 0, log
    assert read_manifest(job.output_dir) == ["analysis.json"]
    assert not imported.exists()
    # The same stand-in in a job with a report: it is imported (so the check above can fail), and the job
    # fails before computing, as a missing PDF engine makes it.
    job = JobRoot(write_demo_job(tmp_path / "with-report", n_rows=300, config=DEMO_CONFIG))
    code, log = _run_program(job, tmp_path, env)
    assert code == 2, log
    assert imported.read_text() == "imported"
    assert "WeasyPrint is not usable" in job.message


def test_the_warm_up_does_not_change_the_report(tmp_path) -> None:
    """``warm_up`` runs in the report process before the job's report: the HTML and PDF are the same bytes
    with and without it, and the notebook the same cells (its cell ids are random by nbformat's design)."""
    from analyzer.report import write_reports
    from analyzer.report.process import warm_up
    from analyzer.report.summary import JobSummary

    values = {f"f{j}": 0.1 * (j + 1) for j in range(6)}
    analysis = {"version": "1.0", "explanations": {"kernel_shap": {"label0": {
        "global_shap_values": values, "expected_value": 0.4}}}}
    summary = JobSummary(dataset_source="data.csv", dataset_type="text/csv", n_rows=100, label="y",
                         label_values_or_threshold=None, facets=[], methods=["shap"], lucent_version="test",
                         started_at="2026-01-01T00:00:00+00:00")

    def render(folder: str) -> dict[str, bytes]:
        return {p.suffix: p.read_bytes() for p in write_reports(analysis, summary, tmp_path / folder)}

    before = render("before")
    warm_up()
    after = render("after")
    assert before[".html"] == after[".html"]
    assert before[".pdf"] == after[".pdf"] and before[".pdf"].startswith(b"%PDF")

    def cells(notebook: bytes) -> list[dict]:
        return [{k: v for k, v in cell.items() if k != "id"} for cell in json.loads(notebook)["cells"]]

    assert cells(before[".ipynb"]) == cells(after[".ipynb"])
