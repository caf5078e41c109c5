"""Hostile and unlucky inputs to `lucent run` and `lucent validate`, each ending in a clear error.

* Config paths that leave the processing root (``~/.aws/credentials``, ``..``, links) need
  ``--allow-paths-outside-root``; without it the job names the key and the path and reads nothing.
* Links in a dataset folder: links to files and to folders are both followed; loops and dangling
  links are errors.
* Publishing replaces Lucent's previous outputs (reports, ``explanations_shap/``) and never a user's
  file; staging folders of killed jobs are removed.
* Seeds numpy refuses, configs nested 100,000 deep, 5,000-digit numbers, an output folder that is
  read-only, a file, or on a full disk: exit 1, a message naming the key or path, no traceback, no
  half-written output.

The read-only and full-disk cases use real filesystems (a tmpfs mounted read-only or of a few pages)
when the tests run as root, and skip otherwise, except the read-only case, which then uses chmod.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.data.files import first_outside, list_data_files
from analyzer.errors import DataError
from analyzer.output import MANIFEST_FILE, STAGING_PREFIX, OutputStaging
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, http_server

HEADERS = ["x0", "x1", "g", "y"]
BIAS_CONFIG = {
    "dataset_type": "text/csv", "headers": HEADERS, "label": "y", "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "g", "value_or_threshold": ["a"]}],
    "methods": {"pre_training_bias": {"methods": ["CI", "DPL"]}},
}


def rows(n: int = 60, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x0": np.round(rng.normal(size=n), 3), "x1": np.round(rng.normal(size=n), 3),
                          "g": rng.choice(["a", "b"], n), "y": rng.integers(0, 2, n)})
    return frame.to_csv(index=False, header=False)


def config_with(**changes) -> dict:
    config = json.loads(json.dumps(BIAS_CONFIG))
    config.update(changes)
    return config


def bias_job(job: JobRoot, **changes) -> JobRoot:
    job.write_data(rows())
    job.write_config(config_with(**changes))
    return job


def run_fails(job: JobRoot, capsys, *fragments: str, extra: tuple[str, ...] = ()) -> None:
    """`run` exits 1 with every fragment in the message, publishes nothing; `validate` lists a problem
    with every fragment."""
    before = job.output_files()
    assert job.run(*extra) == 1, job.message
    assert job.message.startswith("ClientError: ")
    assert "Traceback" not in job.message
    for fragment in fragments:
        assert fragment in job.message, (fragment, job.message)
    assert job.output_files() == before
    capsys.readouterr()
    assert job.run(*extra, command="validate") == 1
    printed = capsys.readouterr().out
    for fragment in fragments:
        assert fragment in printed, (fragment, printed)


# ---- config paths outside the processing root ------------------------------------------------------

@pytest.fixture
def secret(tmp_path) -> Path:
    """A CSV file beside the processing root, as ~/.aws/credentials would be."""
    path = tmp_path / "secret.csv"
    path.write_text("".join(f"{i},{i},a,{i % 2}\n" for i in range(60)))
    return path


@pytest.mark.parametrize("form", ["absolute", "file URI", "relative with ..", "home"])
def test_dataset_uri_outside_the_root_needs_the_flag(job, capsys, monkeypatch, secret, form):
    monkeypatch.setenv("HOME", str(secret.parent))
    uri = {"absolute": str(secret), "file URI": f"file://{secret}", "relative with ..": "../../../secret.csv",
           "home": "~/secret.csv"}[form]
    bias_job(job, dataset_uri=uri)
    run_fails(job, capsys, "dataset_uri", repr(uri), str(secret), "--allow-paths-outside-root")

    assert job.run("--allow-paths-outside-root") == 0, job.message
    assert job.analysis()["pre_training_bias_metrics"]["facets"]["g"][0]["value_or_threshold"] == "a"
    assert job.run("--allow-paths-outside-root", command="validate") == 0


@pytest.mark.parametrize("key", ["facet_dataset_uri", "predicted_label_dataset_uri"])
def test_side_datasets_outside_the_root(job, capsys, secret, key):
    bias_job(job, **{key: str(secret)})
    run_fails(job, capsys, key, str(secret))


def test_string_baseline_outside_the_root(job, capsys, secret):
    shap = {"baseline": str(secret), "seed": 1}
    bias_job(job, methods={"shap": shap}, predictor={"endpoint_url": "http://127.0.0.1:9"})
    run_fails(job, capsys, "methods.shap.baseline", str(secret))


def test_links_in_the_dataset_that_leave_the_root(job, capsys, secret, tmp_path):
    job.write_data(rows())
    job.write_config(BIAS_CONFIG)
    (job.data_dir / "linked.csv").symlink_to(secret)
    run_fails(job, capsys, "the dataset input folder", str(secret), "linked.csv")

    (job.data_dir / "linked.csv").unlink()
    outside = tmp_path / "more"
    outside.mkdir()
    (outside / "part.csv").write_text(rows(seed=2))
    (job.data_dir / "folder").symlink_to(outside)
    run_fails(job, capsys, "the dataset input folder", str(outside / "part.csv"))

    assert job.run("--allow-paths-outside-root") == 0, job.message


def test_input_data_folder_itself_a_link_outside(job, capsys, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.csv").write_text(rows())
    job.data_dir.rmdir()
    job.data_dir.symlink_to(outside)
    job.write_config(BIAS_CONFIG)
    run_fails(job, capsys, "the dataset input folder", str(outside))


def test_paths_and_links_inside_the_root_are_fine(job):
    extra = job.root / "extra"
    extra.mkdir()
    (extra / "part.csv").write_text(rows(seed=3))
    job.write_data(rows())
    (job.data_dir / "more").symlink_to(extra)  # a link that stays inside the root
    job.write_config(BIAS_CONFIG)
    assert job.run() == 0, job.message
    assert job.run(command="validate") == 0
    job.write_config(config_with(dataset_uri="../../extra/part.csv"))  # relative to input/config
    assert job.run() == 0, job.message


def test_first_outside_follows_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "a.csv").write_text("1\n")
    assert first_outside(root / ".." / "outside" / "a.csv", root) == root / ".." / "outside" / "a.csv"
    assert first_outside(root / "missing.csv", root) is None
    (root / "link").symlink_to(outside / "a.csv")
    assert first_outside(root / "link", root) == root / "link"
    (root / "data").mkdir()
    (root / "data" / "in.csv").write_text("1\n")
    assert first_outside(root / "data", root) is None
    (root / "data" / "sub").symlink_to(outside)
    assert first_outside(root / "data", root) == root / "data" / "sub" / "a.csv"


# ---- links in dataset folders ------------------------------------------------------------------------

def test_links_to_files_and_folders_are_both_followed(tmp_path):
    data, parts = tmp_path / "data", tmp_path / "parts"
    data.mkdir()
    parts.mkdir()
    (data / "a.csv").write_text("1\n")
    (parts / "b.csv").write_text("2\n")
    (parts / "_SUCCESS").write_text("")
    (data / "linked-file.csv").symlink_to(parts / "b.csv")
    (data / "linked-folder").symlink_to(parts)
    (data / ".hidden-link").symlink_to(parts)
    assert list_data_files(data) == [data / "a.csv", data / "linked-file.csv", data / "linked-folder" / "b.csv"]


def test_link_loop_and_dangling_link_are_errors(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("1\n")
    (data / "sub" / "loop").symlink_to(data)
    with pytest.raises(DataError, match=r"the link .*sub/loop points to .*data, a folder that contains it"):
        list_data_files(data)
    (data / "sub" / "loop").unlink()
    (data / "sub" / "gone.csv").symlink_to(tmp_path / "deleted.csv")
    with pytest.raises(DataError, match=r"the link .*gone.csv points to .*deleted.csv, which does not exist"):
        list_data_files(data)


def test_linked_dataset_subfolder_rows_are_read_by_the_job(job):
    job.write_data(rows(30, seed=1), name="part-0/data.csv")
    linked = job.root / "more-parts"
    linked.mkdir()
    (linked / "data.csv").write_text(rows(30, seed=2))
    (job.data_dir / "part-1").symlink_to(linked)
    job.write_config(BIAS_CONFIG)
    assert job.run() == 0, job.message
    entry = job.analysis()["pre_training_bias_metrics"]["facets"]["g"][0]
    frame = pd.read_csv(StringIO(rows(30, seed=1) + rows(30, seed=2)), header=None, names=HEADERS)
    share_a = (frame["g"] == "a").mean()
    ci = {m["name"]: m["value"] for m in entry["metrics"]}["CI"]
    assert ci == pytest.approx((1 - share_a) - share_a)  # CI = (n_d - n_a)/n over all 60 rows


# ---- stale outputs -----------------------------------------------------------------------------------

class _LinearModel(BaseHTTPRequestHandler):
    """score = x0 - x1 + [g == a], one CSV value per row."""

    def do_GET(self):  # noqa: N802 - http.server API: /ping
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        frame = pd.read_csv(StringIO(body), header=None)
        scores = frame[0] - frame[1] + (frame[2] == "a")
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write("".join(f"{s!r}\n" for s in scores).encode())

    def log_message(self, *args):
        pass


def test_rerun_with_fewer_methods_removes_the_previous_outputs_only(job):
    job.write_data(rows())
    with http_server(_LinearModel) as server:
        job.write_config(config_with(
            methods={"pre_training_bias": {"methods": ["CI"]}, "report": {"name": "first"},
                     "shap": {"baseline": [[0.0, 0.0, "b"]], "num_samples": 20, "seed": 1}},
            predictor={"endpoint_url": f"http://127.0.0.1:{server.server_port}"}))
        assert job.run() == 0, job.message
    first = job.output_files()
    assert {"first.html", "explanations_shap/out.csv", "analysis.json"} <= set(first), first
    (job.output_dir / "notes.txt").write_text("mine")
    (job.output_dir / "explanations_shap" / "my-plot.png").write_bytes(b"png")
    (job.output_dir / f"{STAGING_PREFIX}killed").mkdir()  # a job killed before cleaning up
    (job.output_dir / f"{STAGING_PREFIX}killed" / "analysis.json").write_text("{")

    job.write_config(BIAS_CONFIG)
    assert job.run() == 0, job.message
    assert job.output_files() == [MANIFEST_FILE, "analysis.json", "explanations_shap",
                                  "explanations_shap/my-plot.png", "notes.txt"]
    assert "explanations" not in job.analysis()
    assert json.loads((job.output_dir / MANIFEST_FILE).read_text()) == {"published": ["analysis.json"]}

    (job.output_dir / "explanations_shap" / "my-plot.png").unlink()
    job.write_config(config_with(methods={"pre_training_bias": {"methods": ["DPL"]}}))
    assert job.run() == 0, job.message
    assert job.output_files() == [MANIFEST_FILE, "analysis.json", "explanations_shap", "notes.txt"]


def test_a_manifest_never_removes_anything_outside_the_output_folder(tmp_path):
    output, outside = tmp_path / "output", tmp_path / "keep.txt"
    output.mkdir()
    outside.write_text("keep")
    (output / "report.html").write_text("user's own, never published by Lucent")
    (output / MANIFEST_FILE).write_text(json.dumps({"published": ["../keep.txt", "/etc/hostname", ".lucent-work/x",
                                                                  "", 3, "gone.txt"]}))
    with OutputStaging(output) as staging:
        staging.write_json("analysis.json", {})
        staging.commit()
    assert outside.read_text() == "keep"
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST_FILE, "analysis.json", "report.html"]


def test_a_live_staging_folder_is_not_removed_by_another_job(tmp_path):
    output = tmp_path / "output"
    with OutputStaging(output) as live:
        with OutputStaging(output) as other:  # starts while `live` runs: its lock keeps its folder
            assert live.staging_dir.is_dir() and other.staging_dir != live.staging_dir
        assert live.staging_dir.is_dir()
    (output / f"{STAGING_PREFIX}dead").mkdir()  # nobody holds its lock: a killed job's leftover
    with OutputStaging(output) as staging:
        assert [p.name for p in output.iterdir()] == [staging.staging_dir.name]


# ---- clear errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("seed", "fragment"), [
    (-1, "methods.shap.seed: must be >= 0, got -1"),
    (2**32, "methods.shap.seed: must be <= 4294967295, got 4294967296"),
    (0.5, "methods.shap.seed: expected an integer, got 0.5"),
])
def test_seeds_numpy_refuses(job, capsys, seed, fragment):
    bias_job(job, methods={"shap": {"seed": seed}}, predictor={"endpoint_url": "http://127.0.0.1:9"})
    run_fails(job, capsys, fragment)


@pytest.mark.parametrize(("text", "fragments"), [
    ("[" * 100_000, ["Unable to load analysis configuration as JSON", "nested too deeply"]),
    ('{"a": ' + "[" * 500 + "]" * 500 + "}", ["nested more than 64 levels"]),
    (json.dumps(config_with()).replace('"label_values_or_threshold": [1]',
                                       '"label_values_or_threshold": [' + "7" * 5000 + "]"),
     ["Unable to load analysis configuration as JSON", "4300 digits"]),
    (json.dumps(config_with(probability_threshold=2**70)),
     ["probability_threshold: is out of range: integers must fit in 64 bits"]),
    (json.dumps(config_with(methods={"shap": {"num_samples": 10**30}}, predictor={"endpoint_url": "http://h"})),
     ["methods.shap.num_samples: is out of range"]),
])
def test_config_parser_limits(job, capsys, text, fragments):
    job.write_data(rows())
    path = job.write_config(text)
    run_fails(job, capsys, *fragments)
    assert str(path) in job.message or "nested more" in job.message or "out of range" in job.message


def test_huge_integers_in_data(job, capsys):
    job.write_data('{"f": [1, "a"], "y": 1}\n{"f": [' + "9" * 5000 + ', "b"], "y": 0}\n', name="data.jsonl")
    job.write_config(config_with(dataset_type="application/jsonlines", features="f", headers=["x", "g", "y"]))
    run_fails(job, capsys, "data.jsonl line 2", "too many digits")


def test_output_path_is_a_file(job, capsys):
    bias_job(job)
    job.output_dir.write_text("not a folder")
    run_fails(job, capsys, f"The output folder {job.output_dir} cannot be created", "is a file")
    assert job.output_dir.read_text() == "not a folder"


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[None]:
    """A tmpfs at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                            text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` as a read-only folder: a read-only mount for root (which ignores permissions), else chmod."""
    if os.geteuid() == 0:
        with mounted_tmpfs(path, "ro,size=64k"):
            yield
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield
    finally:
        path.chmod(0o755)


def test_read_only_output_folder(job, capsys):
    bias_job(job)
    with read_only(job.output_dir):
        run_fails(job, capsys, f"The output folder {job.output_dir} cannot be written")
        assert job.output_files() == []


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` with a user's file, then free ``leave`` bytes of it."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):  # unbuffered: the error comes here, not at close
            pass
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_full_disk_before_the_job_starts(job, capsys):
    bias_job(job)
    with mounted_tmpfs(job.output_dir, "size=256k"):
        fill(job.output_dir, leave=0)
        assert os.statvfs(job.output_dir).f_bavail == 0
        run_fails(job, capsys, f"The output folder {job.output_dir} cannot be written", "No space left on device")
        assert sorted(p.name for p in job.output_dir.iterdir()) == ["filler.bin"]


def test_full_disk_while_writing_the_results(job):
    job.write_data(rows())
    job.write_config(config_with(methods={"pre_training_bias": {"methods": "all"}}))
    with mounted_tmpfs(job.output_dir, "size=256k"):
        filler = fill(job.output_dir, leave=4096)
        assert os.statvfs(job.output_dir).f_bavail > 0
        assert job.run() == 1
        # analysis.json or the list of published files, whichever the disk filled on
        assert job.message.startswith(f"ClientError: cannot write {job.output_dir}/"), job.message
        assert ": No space left on device. Free some space" in job.message
        assert sorted(p.name for p in job.output_dir.iterdir()) == ["filler.bin"]  # nothing half-written
        filler.unlink()
        assert job.run() == 0, job.message  # space freed: the same job publishes
        assert job.message == SUCCESS_MESSAGE


def test_storage_errors_are_the_users_not_internal(job, monkeypatch):
    # EDQUOT (a quota) cannot be produced on a tmpfs: fake the one write that would raise it.
    from analyzer import output

    def over_quota(self, relative, text):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    bias_job(job)
    monkeypatch.setattr(output.OutputStaging, "write_text", over_quota)
    assert job.run() == 1
    assert job.message.startswith(f"ClientError: cannot write {job.output_dir}: Disk quota exceeded"), job.message


def test_time_series_baseline_file_outside_the_root(job, capsys, secret):
    from tests.test_time_series_job import SPEC_CONFIG, timestamp_records, write_json

    write_json(job, timestamp_records())
    methods = {"asymmetric_shapley_value": {**SPEC_CONFIG["methods"]["asymmetric_shapley_value"],
                                            "baseline": str(secret)}}
    job.write_config({**SPEC_CONFIG, "methods": methods})
    run_fails(job, capsys, "methods.asymmetric_shapley_value.baseline", str(secret))
