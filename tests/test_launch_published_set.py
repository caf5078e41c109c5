"""`lucent launch` to an S3 prefix that others use too: publishing replaces what Lucent published there
before (listed in the prefix's ``.lucent-outputs.json``, the local output folder's manifest) and nothing
else. moto's S3 server on 127.0.0.1, real jobs."""

# ruff: noqa: F811 - the fixtures shared with test_launcher.py are imported, then named as test arguments
from __future__ import annotations

import json

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from container.job import SUCCESS_MESSAGE  # noqa: E402
from container.launcher import Launch, Location, main  # noqa: E402
from tests.test_launcher import endpoint, get_text, keys, local_job, put_tree, s3  # noqa: E402, F401

SHARED = ["shared/.lucent-outputs.json", "shared/analysis.json", "shared/config/analysis_config.json",
          "shared/datasets/credit.csv", "shared/message", "shared/notes.txt"]


def test_the_users_objects_and_the_inputs_survive_launches_into_their_prefix(s3, local_job, tmp_path, caplog):
    """The QA report: `--output s3://b/shared` with the config and data below it, and the user's notes."""
    s3.put_object(Bucket="jobs", Key="shared/notes.txt", Body=b"the user's notes")
    put_tree(s3, local_job.root / "input" / "config", "shared/config")
    put_tree(s3, local_job.data_dir, "shared/datasets")
    arguments = ["--config", "s3://jobs/shared/config/", "--data", "s3://jobs/shared/datasets/",
                 "--output", "s3://jobs/shared"]

    with caplog.at_level("INFO", logger="lucent.launch"):
        assert main(arguments) == 0  # no manifest yet: nothing there is Lucent's, nothing is removed
    assert keys(s3, "shared/") == SHARED
    assert "Left 3 object(s) below s3://jobs/shared as they are: there is no Lucent manifest" in caplog.text
    assert "(2 file(s) uploaded, 0 unchanged, 0 old removed, 3 other object(s) left)" in caplog.text

    # A launch of another config published a report and SHAP values there meanwhile (Lucent's own
    # publication: it lists them in the manifest).
    earlier = tmp_path / "earlier"
    for name in ["analysis.json", "report.html", "explanations_shap/out.csv"]:
        (earlier / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        (earlier / "output" / name).write_text("earlier")
    Launch().publish(earlier, "Completed", Location("s3://jobs/shared"))
    assert "shared/report.html" in keys(s3, "shared/")

    caplog.clear()
    with caplog.at_level("INFO", logger="lucent.launch"):
        assert main(arguments) == 0  # what the earlier launch published and this one does not: removed
    assert keys(s3, "shared/") == SHARED
    assert "(2 file(s) uploaded, 0 unchanged, 2 old removed, 3 other object(s) left)" in caplog.text
    assert "Left 3 object(s) below s3://jobs/shared as they are: no Lucent manifest lists them" in caplog.text
    assert get_text(s3, "shared/notes.txt") == "the user's notes"
    assert json.loads(get_text(s3, "shared/analysis.json")) == local_job.analysis()
    assert get_text(s3, "shared/message").strip() == SUCCESS_MESSAGE
    assert json.loads(get_text(s3, "shared/.lucent-outputs.json")) == {"published": ["analysis.json", "message"]}


def test_a_killed_publication_leaves_nothing_untracked(s3, tmp_path):
    """The manifest lists the previous and the new set while objects change (as OutputStaging does): the
    next publication removes the leftovers of both."""
    runner = Launch()
    output = Location("s3://jobs/out")
    first = tmp_path / "first"
    for name in ["analysis.json", "a.csv"]:
        (first / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        (first / "output" / name).write_text("first")
    runner.publish(first, "Completed", output)
    # A publication of b.csv killed after its upload: the manifest still lists both sets.
    runner._put_manifest(output, ["a.csv", "analysis.json", "b.csv", "message"], tmp_path)
    s3.put_object(Bucket="jobs", Key="out/b.csv", Body=b"second")
    third = tmp_path / "third"
    (third / "output").mkdir(parents=True)
    (third / "output" / "analysis.json").write_text("third")
    summary, _ = runner.publish(third, "Completed", output)
    assert keys(s3, "out/") == ["out/.lucent-outputs.json", "out/analysis.json", "out/message"]
    assert summary == "2 file(s) uploaded, 0 unchanged, 2 old removed"
