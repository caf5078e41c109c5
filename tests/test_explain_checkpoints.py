"""SHAP checkpoints: a resumed run reuses a shard only when it was made for exactly that shard's records.

Each test crashes a job after a few shards (``run_crashing_after_shards``), changes something (the shard
size, a report-only key, a value-relevant key, the checkpoint files themselves) and runs it again: every
record must be explained, with the values of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzer.explain import shards
from tests import test_explain_job as tabular
from tests import test_explain_text_job as text
from tests.conftest import JobRoot, http_server, run_crashing_after_shards

N_RECORDS = 30
ROWS_PER_RECORD = (14 + 2) * 2 + 1  # num_samples 14, 2 baseline rows: synthetic rows of one record


@pytest.fixture
def endpoint():
    with http_server(tabular._Model, request_rows=[]) as server:
        yield server


@pytest.fixture
def text_endpoint():
    with http_server(text._TextModel, max_chars=10_000, requests=0) as server:
        yield server


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    monkeypatch.setenv(shards.WORKERS_ENV, "1")


def checkpoints(job: JobRoot) -> list[Path]:
    return sorted((job.output_dir / ".lucent-work" / "shap").glob("*/shard-*.npz"))


def outputs(job: JobRoot) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return tabular.read_local(job), tabular.read_local(job, "out_stderr.csv"), job.analysis()


def reference_run(job: JobRoot, monkeypatch, shard_rows: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """An uninterrupted run's outputs; the output folder is emptied afterwards."""
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(shard_rows))
    assert job.run() == 0, job.message
    reference = outputs(job)
    shutil.rmtree(job.output_dir)
    return reference


def assert_same_outputs(job: JobRoot, reference, exact: bool = True) -> None:
    local, stderr, analysis = outputs(job)
    assert len(local) == N_RECORDS and local["id"].tolist() == [f"r{i}" for i in range(N_RECORDS)]
    if exact:
        pd.testing.assert_frame_equal(local, reference[0])
        pd.testing.assert_frame_equal(stderr, reference[1])
        assert analysis == reference[2]
    else:  # other shard boundaries: the same values up to the rounding of other batch sizes
        pd.testing.assert_frame_equal(local, reference[0], check_exact=False, rtol=1e-9, atol=1e-12)
        pd.testing.assert_frame_equal(stderr, reference[1], check_exact=False, rtol=1e-9, atol=1e-12)


# -- the shard size changes between the crash and the rerun -------------------------------------------

@pytest.mark.parametrize("first_rows, second_rows", [
    (2 * ROWS_PER_RECORD, 6 * ROWS_PER_RECORD),  # 2 records per shard, then 6: old shards would hold too few
    (6 * ROWS_PER_RECORD, 2 * ROWS_PER_RECORD),  # 6, then 2: old shards would hold too many
    (3 * ROWS_PER_RECORD, 1_000_000),  # 3, then everything in one shard
])
def test_resume_with_another_shard_size_explains_every_record(job, endpoint, monkeypatch, caplog,
                                                              first_rows, second_rows):
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, second_rows)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(first_rows))
    assert run_crashing_after_shards(job, monkeypatch, 2) == 2
    assert len(checkpoints(job)) == 2
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(second_rows))
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming" not in caplog.text  # the shard size is part of the fingerprint: nothing reused
    assert "Removing stale SHAP checkpoints" in caplog.text
    assert_same_outputs(job, reference)


def test_bad_shard_size_setting_is_a_clear_error(job, endpoint, monkeypatch):
    tabular.shap_job(job, endpoint, num_samples=14)
    for value in ("0", "-5", "many"):
        monkeypatch.setenv(shards.SHARD_ROWS_ENV, value)
        assert job.run() == 1
        assert shards.SHARD_ROWS_ENV in job.message and repr(value) in job.message, job.message


def test_bad_worker_count_setting_is_a_clear_error(job, endpoint, monkeypatch):
    tabular.shap_job(job, endpoint, num_samples=14)
    for value in ("0", "two", "1.5"):
        monkeypatch.setenv(shards.WORKERS_ENV, value)
        assert job.run() == 1
        assert f"{shards.WORKERS_ENV}={value!r}: must be a positive number of worker processes" in job.message


# -- damaged checkpoints: discarded with a warning, recomputed ----------------------------------------

def _rewrite(path: Path, change) -> None:
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_npy(path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))


def _pop(name: str):
    return lambda arrays: arrays.pop(name)


def _set(name: str, value):
    return lambda arrays: arrays.__setitem__(name, value)


DAMAGE = {
    "truncated": _truncate,
    "empty file": lambda path: path.write_bytes(b""),
    "not a zip": lambda path: path.write_bytes(b"not a checkpoint at all"),
    "a .npy, not an archive": lambda path: _write_npy(path),
    "values missing": lambda path: _rewrite(path, _pop("values")),
    "global terms missing": lambda path: _rewrite(path, _pop("terms_mean_abs")),
    "made before checkpoints named their records": lambda path: _rewrite(
        path, lambda arrays: [arrays.pop(name) for name in list(arrays) if name.startswith("lucent_")]),
    "one record too many": lambda path: _rewrite(
        path, lambda arrays: arrays.update(values=np.concatenate([arrays["values"], arrays["values"][:1]]))),
    "values of another type": lambda path: _rewrite(path, lambda arrays: arrays.update(
        values=arrays["values"].astype(str))),
    "another shard's file": lambda path: shutil.copy(path.with_name("shard-000000.npz"), path),
    "other record values": lambda path: _rewrite(path, _set("lucent_records", np.str_("0" * 64))),
    "another seed": lambda path: _rewrite(path, _set("lucent_seed", np.str_("4"))),
    "a range that is not a number": lambda path: _rewrite(path, _set("lucent_first", np.str_("x"))),
}


def damaged_name(warning: str, damaged: dict[str, str]) -> str | None:
    return next((kind for name, kind in damaged.items() if name in warning), None)


def test_damaged_checkpoints_are_recomputed_with_a_warning(job, endpoint, monkeypatch, caplog):
    """Every kind of damage at once, one per checkpoint (shard 0 stays intact: it is the source of "another
    shard's file"); each damaged shard is named in a warning and computed again."""
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)  # 15 shards of 2 records
    assert len(DAMAGE) < 14
    assert run_crashing_after_shards(job, monkeypatch, 14) == 2
    damaged = {}
    for path, (kind, damage) in zip(checkpoints(job)[1:], DAMAGE.items(), strict=False):
        damage(path)
        damaged[path.name] = kind
    caplog.clear()
    assert job.run() == 0, job.message
    warnings = [r.getMessage() for r in caplog.records if "discarding checkpoint" in r.getMessage()]
    missed = {name: kind for name, kind in damaged.items() if not any(name in w for w in warnings)}
    assert not missed, f"damaged checkpoints used: {missed}"
    assert len(warnings) == len(DAMAGE)
    # np.load takes a file that is not a zip for a pickle, and said so: a warning must not suggest loading one
    assert not any("pickle" in w for w in warnings), warnings
    assert any("not an .npz archive" in w for w in warnings if damaged_name(w, damaged) == "not a zip"), warnings
    assert f"resuming, {14 - len(DAMAGE)} of 15 shards already done" in caplog.text
    assert_same_outputs(job, reference)
    assert not (job.output_dir / ".lucent-work").exists()


def test_leftover_partial_writes_are_removed(job, endpoint, monkeypatch, caplog):
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    folder = checkpoints(job)[0].parent
    (folder / ".shard-000003.npz.abc123.tmp").write_bytes(b"half a shard")  # killed while writing
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming, 3 of 15 shards already done" in caplog.text
    assert_same_outputs(job, reference)


@pytest.mark.parametrize("content", ["{", "[1, 2]"])
def test_unreadable_drawn_seed_never_blocks_a_rerun(job, endpoint, monkeypatch, caplog, content):
    """Without ``seed`` the drawn one is kept with the checkpoints; a damaged copy means a fresh seed, and
    shards made with the lost one are recomputed (they carry their seed)."""
    tabular.shap_job(job, endpoint, num_samples=14)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    del config["methods"]["shap"]["seed"]
    job.write_config(config)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(2 * ROWS_PER_RECORD))
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    (checkpoints(job)[0].parent / "seed.json").write_text(content)
    caplog.clear()
    assert job.run() == 0, job.message
    assert "drawing a new coalition seed" in caplog.text
    assert caplog.text.count("made with another coalition seed") == 3
    local = tabular.read_local(job)
    assert len(local) == N_RECORDS
    # The seed drawn is logged, and methods.shap.seed takes it: the same values again
    drawn = int(re.search(r"drew the coalition seed (\d+)", caplog.text).group(1))
    config["methods"]["shap"]["seed"] = drawn
    job.write_config(config)
    assert job.run() == 0, job.message
    pd.testing.assert_frame_equal(tabular.read_local(job), local)
    # Efficiency holds for every record: its values add up to its score minus the expected value.
    data = tabular.make_data()
    expected = job.analysis()["explanations"]["kernel_shap"]["a"]["expected_value"]
    totals = local[[f"{name}_a" for name in tabular.FEATURES]].sum(axis=1).to_numpy()
    np.testing.assert_allclose(totals + expected, tabular.score(data[tabular.FEATURES])[:, 0], atol=1e-9)


# -- what the fingerprint holds: the values' inputs, not the whole config -----------------------------

def _report(config: dict) -> None:
    config["methods"]["report"] = {"name": "other", "title": "A new title"}


def _agg(config: dict) -> None:
    config["methods"]["shap"]["agg_method"] = "median"


def _label_names(config: dict) -> None:
    config["predictor"]["label_headers"] = ["first", "second"]


def _pdp(config: dict) -> None:
    config["methods"]["pdp"] = {"grid_resolution": 3, "features": ["x0"]}


def _no_local_values(config: dict) -> None:
    config["methods"]["shap"]["save_local_shap_values"] = False


@pytest.mark.parametrize("change", [pytest.param(_report, marks=pytest.mark.slow),  # renders a PDF: seconds
                                    _agg, _label_names, _pdp, _no_local_values])
def test_output_only_changes_keep_the_checkpoints(job, endpoint, monkeypatch, caplog, change):
    tabular.shap_job(job, endpoint, num_samples=14)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(2 * ROWS_PER_RECORD))
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    change(config)
    job.write_config(config)
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming, 3 of 15 shards already done" in caplog.text


@pytest.mark.parametrize("change", [
    {"num_samples": 16}, {"seed": 4}, {"features_to_explain": ["x0", "x1", "color"]},
    {"baseline": [[0.0, 0.5, -0.5, 0.2, "red"], [1.0, -1.0, 0.0, 0.0, "red"]]},
])
def test_value_changes_do_not_reuse_checkpoints(job, endpoint, monkeypatch, caplog, change):
    tabular.shap_job(job, endpoint, num_samples=14)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(2 * ROWS_PER_RECORD))
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    config["methods"]["shap"].update(change)
    job.write_config(config)
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming" not in caplog.text
    reused = job.analysis()
    shutil.rmtree(job.output_dir)
    assert job.run() == 0, job.message
    assert job.analysis() == reused  # the same as a run that never saw the old checkpoints


# -- text shards --------------------------------------------------------------------------------------

TEXT_REVIEWS = [(f"{review} number {i}", category, label) for i in range(3) for review, category, label in text.REVIEWS]


def _text_offsets_off_by_one(path: Path) -> None:
    def change(arrays):
        arrays["offsets"] = arrays["offsets"] + np.arange(len(arrays["offsets"]))
    _rewrite(path, change)


@pytest.mark.parametrize("second_rows, damage", [
    (400, None),  # another shard size: a fresh start
    (150, _truncate),  # the same size, one checkpoint truncated
    (150, _text_offsets_off_by_one),  # the same size, a checkpoint whose records have other unit counts
])
def test_text_resume_checks_every_shard(job, text_endpoint, monkeypatch, caplog, second_rows, damage):
    text.text_job(job, text_endpoint, reviews=TEXT_REVIEWS, num_samples=40)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(second_rows))
    assert job.run() == 0, job.message
    reference = [text.read_jsonl(job), job.analysis()]
    shutil.rmtree(job.output_dir)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "150")
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    if damage is not None:
        damage(checkpoints(job)[1])
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(second_rows))
    caplog.clear()
    assert job.run() == 0, job.message
    lines, analysis = text.read_jsonl(job), job.analysis()
    assert len(lines) == len(TEXT_REVIEWS)
    if damage is None:
        assert "resuming" not in caplog.text
        assert analysis.keys() == reference[1].keys()
        for line, expected in zip(lines, reference[0], strict=True):
            for feature, want in zip(line["explanations"], expected["explanations"], strict=True):
                got = [a["attribution"][0] for a in feature["attributions"]]
                np.testing.assert_allclose(got, [a["attribution"][0] for a in want["attributions"]], atol=1e-12)
    else:
        assert "resuming, 2 of" in caplog.text and "discarding checkpoint" in caplog.text
        assert [lines, analysis] == reference


# -- checkpoints whose values the solver cannot have written: discarded, recomputed ------------------

def _scale_values(factor: float):
    return lambda arrays: arrays.update(values=arrays["values"] * factor)


TAMPERING = {
    "values set to NaN": lambda arrays: arrays.update(values=np.full_like(arrays["values"], np.nan)),
    "values multiplied by 1000": _scale_values(1000.0),
    "one value changed": lambda arrays: arrays["values"].reshape(-1).__setitem__(0, arrays["values"].flat[0] + 0.5),
    "a standard error infinite": lambda arrays: arrays["stderr"].reshape(-1).__setitem__(0, np.inf),
    "a negative standard error": lambda arrays: arrays["stderr"].reshape(-1).__setitem__(0, -1.0),
    "a prediction that is NaN": lambda arrays: arrays["prediction"].reshape(-1).__setitem__(0, np.nan),
    "another reference": lambda arrays: arrays.update(reference=arrays["reference"] + 1.0),
}


def test_tampered_values_are_recomputed_with_a_warning(job, endpoint, monkeypatch, caplog):
    """Checkpoints that read well but hold values that are not finite or do not add up to the record's
    prediction minus its reference (efficiency, which the solver enforces) are not used: out.csv and the
    global values are those of an uninterrupted run, with no NaN."""
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)
    assert run_crashing_after_shards(job, monkeypatch, 14) == 2
    damaged = {}
    for path, (kind, change) in zip(checkpoints(job), TAMPERING.items(), strict=False):
        _rewrite(path, change)
        damaged[path.name] = kind
    caplog.clear()
    assert job.run() == 0, job.message
    warnings = [r.getMessage() for r in caplog.records if "discarding checkpoint" in r.getMessage()]
    missed = {name: kind for name, kind in damaged.items() if not any(name in w for w in warnings)}
    assert not missed, f"tampered checkpoints used: {missed}"
    assert len(warnings) == len(TAMPERING)
    assert f"resuming, {14 - len(TAMPERING)} of 15 shards already done" in caplog.text
    assert_same_outputs(job, reference)
    local, _, analysis = outputs(job)
    assert not local.isna().any().any()
    assert all(value is not None for entry in analysis["explanations"]["kernel_shap"].values()
               for value in entry["global_shap_values"].values())


def test_efficiency_check_allows_the_rounding_of_large_cancelling_values():
    """The tolerance grows with the values: large values that cancel, summed in another order than the
    exact sum they must add up to, pass; the same values times 1000 do not."""
    from analyzer.explain.shards import CheckpointError, _check_values

    values = np.random.default_rng(0).normal(size=(5, 2000, 2)) * 1e9  # 5 records, 2000 players, 2 outputs
    exact = np.array([[math.fsum(values[i, :, c]) for c in range(2)] for i in range(5)])
    reference = np.full((5, 2), 1e6)
    assert np.any(values.sum(axis=1) != exact)  # rounding differs: what the check must tolerate
    _check_values(values, np.full_like(values, np.nan), reference, reference + exact, values.sum(axis=1),
                  np.abs(values).sum(axis=1))
    scaled = values * 1000
    with pytest.raises(CheckpointError, match="add up to"):
        _check_values(scaled, np.zeros_like(values), reference, reference + exact, scaled.sum(axis=1),
                      np.abs(scaled).sum(axis=1))


@pytest.mark.parametrize("damage", [_scale_values(1000.0),
                                    lambda arrays: arrays.update(values=np.full_like(arrays["values"], np.nan))],
                         ids=["values multiplied by 1000", "values set to NaN"])
def test_text_tampered_values_are_recomputed(job, text_endpoint, monkeypatch, caplog, damage):
    text.text_job(job, text_endpoint, reviews=TEXT_REVIEWS, num_samples=40)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "150")
    assert job.run() == 0, job.message
    reference = [text.read_jsonl(job), job.analysis()]
    shutil.rmtree(job.output_dir)
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    tampered = checkpoints(job)[1]
    _rewrite(tampered, damage)
    caplog.clear()
    assert job.run() == 0, job.message
    assert "resuming, 2 of" in caplog.text
    assert f"discarding checkpoint {tampered}" in caplog.text
    assert [text.read_jsonl(job), job.analysis()] == reference


# -- entries that are not checkpoint files: removed (links never followed), never blocking a rerun ----

def _folder(path: Path, outside: Path) -> None:
    path.unlink()
    (path / "inner").mkdir(parents=True)
    (path / "inner" / "file").write_text("x")
    (path / "to-outside").symlink_to(outside, target_is_directory=True)  # rmtree must not follow it


def _link_to_a_copy(path: Path, outside: Path) -> None:
    """A link to a copy of the very checkpoint, outside the work area: not read, and the copy is kept."""
    copy = outside / f"copy-of-{path.name}"
    shutil.copy(path, copy)
    path.unlink()
    path.symlink_to(copy)


def _link_to_a_folder(path: Path, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside, target_is_directory=True)


def _dangling_link(path: Path, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside / "gone.npz")


def _fifo(path: Path, outside: Path) -> None:  # a named pipe: reading it would block forever
    path.unlink()
    os.mkfifo(path)


NOT_FILES = {"a folder": _folder, "a link to a copy": _link_to_a_copy, "a link to a folder": _link_to_a_folder,
             "a dangling link": _dangling_link, "a named pipe": _fifo}


def test_checkpoint_entries_that_are_not_files_are_removed_without_following_links(job, endpoint, monkeypatch,
                                                                                     caplog, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's file")
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)
    assert run_crashing_after_shards(job, monkeypatch, 8) == 2
    paths = checkpoints(job)
    folder = paths[0].parent
    damaged = {}
    for path, (kind, damage) in zip(paths[1:], NOT_FILES.items(), strict=False):
        damage(path, outside)
        damaged[path.name] = kind
    (folder / ".shard-000009.npz.abc.tmp").mkdir()  # a leftover temporary name that is a folder
    caplog.clear()
    assert job.run() == 0, job.message
    warnings = [r.getMessage() for r in caplog.records if "discarding checkpoint" in r.getMessage()]
    missed = {name: kind for name, kind in damaged.items() if not any(name in w for w in warnings)}
    assert not missed, f"entries used as checkpoints: {missed}"
    assert f"resuming, {8 - len(NOT_FILES)} of 15 shards already done" in caplog.text
    assert_same_outputs(job, reference)
    assert not (job.output_dir / ".lucent-work").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["copy-of-shard-000002.npz", "keep.txt"]
    assert (outside / "keep.txt").read_text() == "the user's file"


def test_a_folder_at_a_checkpoint_path_never_blocks_reruns(job, endpoint, monkeypatch, caplog):
    """The reviewer's case: ``mkdir <fingerprint>/shard-000004.npz`` after a crash; every later run works."""
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    folder = checkpoints(job)[0].parent
    (folder / "shard-000004.npz").mkdir()
    caplog.clear()
    assert run_crashing_after_shards(job, monkeypatch, 2) == 2  # the crashed rerun got past the folder
    assert "discarding checkpoint" in caplog.text and "a folder" in caplog.text
    assert job.run() == 0, job.message
    assert "resuming, 5 of 15 shards already done" in caplog.text
    assert_same_outputs(job, reference)


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_a_seed_file_that_is_not_a_file_never_blocks_a_rerun(job, endpoint, monkeypatch, caplog, tmp_path, kind):
    tabular.shap_job(job, endpoint, num_samples=14)
    config = json.loads((job.config_dir / "analysis_config.json").read_text())
    del config["methods"]["shap"]["seed"]
    job.write_config(config)
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(2 * ROWS_PER_RECORD))
    assert run_crashing_after_shards(job, monkeypatch, 3) == 2
    seed_file = checkpoints(job)[0].parent / "seed.json"
    seed_file.unlink()
    if kind == "folder":
        seed_file.mkdir()
    else:
        seed_file.symlink_to(tmp_path / "elsewhere.json")
    caplog.clear()
    assert job.run() == 0, job.message
    assert "drawing a new coalition seed" in caplog.text
    assert len(tabular.read_local(job)) == N_RECORDS


def test_a_file_where_the_checkpoint_folders_go_never_blocks_a_run(job, endpoint, monkeypatch):
    tabular.shap_job(job, endpoint, num_samples=14)
    reference = reference_run(job, monkeypatch, 2 * ROWS_PER_RECORD)
    work = job.output_dir / ".lucent-work"
    work.mkdir(parents=True)
    (work / "shap").write_text("not a folder")
    assert job.run() == 0, job.message
    assert_same_outputs(job, reference)


class _ListedStore:
    """A checkpoint store whose listing is whatever a test says (an S3 bucket others can write to)."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = dict(objects)

    def names(self, prefix: str) -> list[str]:
        return sorted(name for name in self.objects if name.startswith(prefix + "/"))

    def read(self, name: str) -> bytes:
        return self.objects[name]

    def write(self, name: str, data: bytes) -> None:
        self.objects[name] = data

    def remove(self, names) -> None:
        for name in list(names):
            self.objects.pop(name, None)


def test_a_mirror_pulls_one_level_of_sub_folders_and_nothing_that_leaves_the_work_area(tmp_path):
    from analyzer.explain.checkpoint_store import CheckpointMirror

    fingerprint, other = "5d41402abc4b2a76b9719d91", "7e240de74fb1ed08fa08d38c"  # as a job makes them
    store = _ListedStore({
        f"shap/{fingerprint}/seed.json": b"7",
        f"shap/{fingerprint}/segments-8/shard-000001.npz": b"one",  # image SHAP: a folder per segment count
        f"shap/{fingerprint}/../../escaped": b"x", f"shap/{fingerprint}/segments-8/../../../escaped": b"x",
        f"shap/{fingerprint}/.hidden/shard-000000.npz": b"x", f"shap/{fingerprint}/a/b/shard-000000.npz": b"x",
        f"shap/{fingerprint}//shard-000000.npz": b"x", f"shap/{other}/shard-000000.npz": b"stale",
    })
    local = tmp_path / "work" / fingerprint
    mirror = CheckpointMirror(store, fingerprint, local)
    assert mirror.pull() == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        f"work/{fingerprint}/seed.json", f"work/{fingerprint}/segments-8/shard-000001.npz"]
    assert f"shap/{other}/shard-000000.npz" not in store.objects  # another fingerprint's: removed

    child = mirror.child("segments-8")
    (local / "segments-8" / "shard-000002.npz").write_bytes(b"two")
    child.push_missing()
    assert store.objects[f"shap/{fingerprint}/segments-8/shard-000002.npz"] == b"two"
    for bad in ("..", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            mirror.child(bad)
