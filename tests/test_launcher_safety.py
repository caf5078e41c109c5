"""``lucent launch`` with hostile inputs and faults: keys that climb out of the staging folder, configs
that name local files, unwritable or misspelled outputs, failed uploads, stale results, malformed URIs
and credentials in URIs. moto's S3 server on 127.0.0.1 and real files throughout."""

# ruff: noqa: F811 - the fixtures shared with test_launcher.py are imported, then named as test arguments

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from container.job import SUCCESS_MESSAGE  # noqa: E402
from container.launcher import (  # noqa: E402
    CONTAINER_ROOT,
    Launch,
    LaunchError,
    Location,
    Store,
    main,
    printable,
    result_files,
    staged_input_path,
)
from tests.test_launcher import (  # noqa: E402, F401
    CONFIG,
    endpoint,
    get_text,
    keys,
    local_job,
    put_tree,
    s3,
    s3_proxy,
)

SECRET = "hunter2-very-secret"


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_config(folder: Path, config: dict, prefix: bytes = b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis_config.json").write_bytes(prefix + json.dumps(config).encode())
    return folder


# 1. Keys that would be staged outside their folder ---------------------------------------------------

ESCAPING_KEYS = [
    "../../../../evil.csv",  # climbs from <work>/lucent-launch-*/input/data up to the test's folder
    "sub/../../../../../evil.csv",
    "/evil.csv",  # a leading '/' after the prefix
    "sub//evil.csv",  # an empty segment
    "./evil.csv",
    "..\\..\\..\\..\\evil.csv",  # a backslash: a separator on another system
    "sub/evil\x00.csv",
    "sub/evil\x01.csv",  # (moto refuses a newline in a key; the fuzz tests try it)
    "sub/evil\x7f.csv",
    "n" * 300 + ".csv",  # longer than a file name may be
]


def test_every_escaping_key_is_refused_before_anything_is_written(s3, tmp_path):
    store = Store()
    for number, relative in enumerate(ESCAPING_KEYS):
        prefix = f"case{number}/data"
        s3.put_object(Bucket="jobs", Key=f"{prefix}/good.csv", Body=b"a,b\n")
        s3.put_object(Bucket="jobs", Key=f"{prefix}/{relative}", Body=b"written outside")
        dest = tmp_path / "w" / "x" / "y" / "z" / "dest"  # '..' x4 from dest would reach tmp_path
        with pytest.raises(LaunchError) as error:
            store.download(Location(f"s3://jobs/{prefix}"), dest)
        assert f"s3://jobs/{prefix}/{printable(relative)}: the key has " in str(error.value), str(error.value)
        assert files_below(tmp_path) == [], relative  # not even good.csv: every key is checked first


@pytest.mark.parametrize(("option", "relative"), [("--config", ESCAPING_KEYS[0]), ("--data", ESCAPING_KEYS[2]),
                                                  ("--model", ESCAPING_KEYS[5])])
def test_a_key_that_leaves_the_staging_folder_fails_the_launch(s3, local_job, tmp_path, capsys, option, relative):
    put_tree(s3, local_job.root / "input", "in")
    folder = {"--config": "in/config", "--data": "in/data", "--model": "in/model"}[option]
    bad_key = f"{folder}/{relative}"
    s3.put_object(Bucket="jobs", Key=bad_key, Body=b"written outside")
    work = tmp_path / "work"
    work.mkdir()
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--model", "s3://jobs/in/model",
                 "--output", "s3://jobs/out", "--work-dir", str(work)])
    message = get_text(s3, "out/message")
    assert code == 1, message
    assert message.startswith(f"ClientError: s3://jobs/{printable(bad_key)}: the key has "), message
    assert keys(s3, "out/") == ["out/message"]
    assert files_below(tmp_path) == []  # nothing written anywhere: staging stopped before the first download
    capsys.readouterr()


@pytest.mark.parametrize("key", ["in/..", "in/a\\b", "in/.", "in/x\x00"])
def test_a_single_object_whose_name_is_not_a_file_name(s3, tmp_path, key):
    s3.put_object(Bucket="jobs", Key=key, Body=b"x")
    with pytest.raises(LaunchError) as error:
        Store().download(Location(f"s3://jobs/{key}"), tmp_path / "dest")
    assert "cannot be staged" in str(error.value) or "no object" in str(error.value)
    assert files_below(tmp_path) == []


def test_good_keys_are_staged_with_their_relative_paths(s3, tmp_path):
    for key in ["in/a.csv", "in/sub/b.csv", "in/é/ü ü.csv", "in/folder/"]:
        s3.put_object(Bucket="jobs", Key=key, Body=key.encode())
    Store().download(Location("s3://jobs/in"), tmp_path / "dest")
    assert files_below(tmp_path / "dest") == ["a.csv", "sub/b.csv", "é/ü ü.csv"]
    assert (tmp_path / "dest" / "sub" / "b.csv").read_text() == "in/sub/b.csv"


def test_a_key_that_is_both_a_file_and_a_folder(s3, tmp_path):
    s3.put_object(Bucket="jobs", Key="in/a", Body=b"file")
    s3.put_object(Bucket="jobs", Key="in/a/b.csv", Body=b"below")
    with pytest.raises(LaunchError, match="both a file and a folder"):
        Store().download(Location("s3://jobs/in/"), tmp_path / "dest")
    assert files_below(tmp_path) == []


def test_a_config_uri_prefix_with_an_escaping_key(s3, local_job, tmp_path, capsys):
    put_tree(s3, local_job.data_dir, "datasets/credit")
    s3.put_object(Bucket="jobs", Key="datasets/credit/../../../../evil.csv", Body=b"x")
    config = write_config(tmp_path / "config", {**CONFIG, "dataset_uri": "s3://jobs/datasets/credit/"})
    work = tmp_path / "work"
    work.mkdir()
    code = main(["--config", str(config), "--output", "s3://jobs/out", "--work-dir", str(work)])
    assert code == 1
    assert "datasets/credit/../../../../evil.csv" in get_text(s3, "out/message")
    assert not (tmp_path / "evil.csv").exists() and files_below(work) == []
    capsys.readouterr()


# 2. A config fetched by launch names local files --------------------------------------------------------

LOCAL_FILES = ["~/.aws/credentials", "{home}/.aws/credentials", "file://{home}/.aws/credentials",
               "../../../../../../../../{home}/.aws/credentials", "/opt/ml/processing/input/../../../../{home}/.aws/credentials",
               "/etc/passwd"]


@pytest.fixture
def fake_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("value", LOCAL_FILES)
@pytest.mark.parametrize("key", ["dataset_uri", "facet_dataset_uri", "predicted_label_dataset_uri",
                                 "methods.shap.baseline", "methods.asymmetric_shapley_value.baseline"])
def test_a_config_naming_a_local_file_outside_the_inputs_is_refused(local_job, tmp_path, fake_home, capsys,
                                                                   key, value):
    config = json.loads(json.dumps(CONFIG))
    *parents, name = key.split(".")
    parent = config
    for part in parents:
        parent = parent.setdefault(part, {})
    parent[name] = value.format(home=fake_home)
    results = tmp_path / "results"
    code = main(["--config", str(write_config(tmp_path / "config", config)), "--data", str(local_job.data_dir),
                 "--output", str(results)])
    message = (results / "message").read_text()
    assert code == 1
    assert message.startswith(f"ClientError: {key}: "), message
    assert "s3:// URI or a path in the staged inputs" in message
    assert files_below(results) == ["message"]  # a failed job publishes its message alone
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err


def test_a_utf8_bom_does_not_hide_the_config_from_the_check(local_job, tmp_path, fake_home, capsys):
    """The job reads configs with a BOM; the launcher must read them the same way to check them."""
    config = {**CONFIG, "dataset_uri": str(fake_home / ".aws" / "credentials")}
    results = tmp_path / "results"
    code = main(["--config", str(write_config(tmp_path / "config", config, prefix="\ufeff".encode())),
                 "--data", str(local_job.data_dir), "--output", str(results)])
    assert code == 1
    assert (results / "message").read_text().startswith("ClientError: dataset_uri: ")
    capsys.readouterr()


def test_a_symbolic_link_out_of_the_staged_inputs_is_refused(tmp_path):
    inputs, outside = tmp_path / "root" / "input", tmp_path / "secret.csv"
    (inputs / "data").mkdir(parents=True)
    outside.write_text("a,b\n")
    (inputs / "data" / "link.csv").symlink_to(outside)
    with pytest.raises(LaunchError, match="dataset_uri: '../data/link.csv' is not"):
        staged_input_path("dataset_uri", "../data/link.csv", inputs, inputs, inputs / "config")


@pytest.mark.parametrize("value", ["../data/credit.csv", "/opt/ml/processing/input/data/credit.csv",
                                   "file:///opt/ml/processing/input/data/credit.csv"])
def test_paths_in_the_staged_inputs_are_allowed(local_job, tmp_path, value):
    """Relative to the config, or as a SageMaker job sees them (rewritten for an in-process job)."""
    config = write_config(tmp_path / "config", {**CONFIG, "dataset_uri": value})
    assert main(["--config", str(config), "--data", str(local_job.data_dir),
                 "--output", str(tmp_path / "results")]) == 0, (tmp_path / "results" / "message").read_text()
    assert json.loads((tmp_path / "results" / "analysis.json").read_text()) == local_job.analysis()


def test_staged_paths_as_a_container_sees_them(tmp_path):
    inputs = tmp_path / "input"
    (inputs / "data").mkdir(parents=True)
    job_inputs = CONTAINER_ROOT / "input"
    assert staged_input_path("k", "../data/x.csv", inputs, job_inputs, job_inputs / "config") == \
        "/opt/ml/processing/input/data/x.csv"
    with pytest.raises(LaunchError):
        staged_input_path("k", str(tmp_path / "input" / "data" / "x.csv"), inputs, job_inputs, job_inputs / "config")


# 3. Output checked before computing; failed publications keep the results --------------------------------

def test_a_misspelled_bucket_fails_before_anything_is_staged(s3, local_job, tmp_path, capsys):
    put_tree(s3, local_job.root / "input", "in")
    work = tmp_path / "work"
    work.mkdir()
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jbos/out",
                 "--work-dir", str(work)])
    printed = capsys.readouterr()
    assert code == 1
    assert printed.err == "error: writing to s3://jbos/out: NoSuchBucket: the bucket does not exist\n"
    assert printed.out == ""
    assert list(work.iterdir()) == []  # no processing root was even made


@pytest.mark.parametrize(("kind", "expected"), [("file", "is a file, not a folder"),
                                                ("read-only", "Permission denied"),
                                                ("in /proc", "No such file or directory")])  # root too
def test_an_unwritable_local_output_fails_before_anything_is_staged(local_job, tmp_path, capsys, kind, expected):
    output = Path("/proc/lucent-results") if kind == "in /proc" else tmp_path / "results"
    if kind == "file":
        output.write_text("not a folder")
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders (the /proc case covers root)")
        output.mkdir()
        output.chmod(0o500)
    work = tmp_path / "work"
    work.mkdir()
    inputs = local_job.root / "input"
    code = main(["--config", str(inputs / "config"), "--data", str(inputs / "data"), "--output", str(output),
                 "--work-dir", str(work)])
    printed = capsys.readouterr().err
    if kind == "read-only":
        output.chmod(0o700)
    assert code == 1
    assert expected in printed and str(output) in printed, printed
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("output", ["s3://jobs", "s3://jobs/"])
def test_a_whole_bucket_is_not_an_output(s3, output, capsys):
    assert main(["--config", "s3://jobs/in/config", "--output", output]) == 1
    assert "is a whole bucket: give a prefix" in capsys.readouterr().err


@pytest.fixture
def proxy(endpoint, monkeypatch):
    """Every request the launch sends, recorded; uploads of the keys in ``proxy.deny`` answered with S3's
    403 AccessDenied, as a bucket policy that forbids one object does."""
    deny: set[str] = set()

    def denied(method, path):
        if method in ("PUT", "POST") and path.split("?")[0] in deny:
            return 403, "AccessDenied", "Access Denied"
        return None

    with s3_proxy(endpoint, denied) as server:
        server.deny = deny
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        yield server


def a_previous_run(client, prefix: str = "out") -> None:
    for name in ["analysis.json", "message", "report.html", "explanations_shap/out.csv", ".lucent-work/shard-0.npz"]:
        client.put_object(Bucket="jobs", Key=f"{prefix}/{name}", Body=b"old " + name.encode())


def test_analysis_and_message_are_published_last_and_old_ones_removed_first(s3, proxy, local_job):
    put_tree(s3, local_job.root / "input", "in")
    a_previous_run(s3)
    assert main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out"]) == 0
    writes = [(method, path) for method, path in proxy.requests if method in ("PUT", "POST", "DELETE")
              and path.startswith("/jobs/out")]
    # probe put and delete, delete of the old markers (one DeleteObjects POST), the manifest listing the
    # old and new sets, the new one alone, then analysis.json and message last
    assert writes[-4:] == [("PUT", "/jobs/out/.lucent-outputs.json"), ("PUT", "/jobs/out/.lucent-outputs.json"),
                           ("PUT", "/jobs/out/analysis.json"), ("PUT", "/jobs/out/message")], writes
    # No manifest listed the earlier objects: an earlier version's (or someone's), never removed.
    assert keys(s3, "out/") == ["out/.lucent-outputs.json", "out/.lucent-work/shard-0.npz", "out/analysis.json",
                                "out/explanations_shap/out.csv", "out/message", "out/report.html"]
    assert get_text(s3, "out/message").strip() == SUCCESS_MESSAGE
    assert get_text(s3, "out/report.html") == "old report.html"


def test_a_failed_upload_keeps_the_local_copy_and_leaves_no_complete_looking_result(s3, proxy, local_job, tmp_path,
                                                                                    capsys):
    put_tree(s3, local_job.root / "input", "in")
    a_previous_run(s3)
    proxy.deny.add("/jobs/out/analysis.json")
    work = tmp_path / "work"
    work.mkdir()
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out",
                 "--work-dir", str(work)])
    printed = capsys.readouterr().err
    assert code == 1
    assert "error: uploading to s3://jobs/out/analysis.json: AccessDenied" in printed, printed
    kept = next(work.iterdir())
    assert f"the results are kept in {kept / 'output'}" in printed
    assert json.loads((kept / "output" / "analysis.json").read_text()) == local_job.analysis()
    assert (kept / "message").read_text().strip() == SUCCESS_MESSAGE
    remaining = keys(s3, "out/")
    assert "out/message" not in remaining and "out/analysis.json" not in remaining  # nothing looks complete


def job_folder(tmp_path: Path) -> Path:
    """A processing root as a job leaves it: results, the SHAP work area, a staging leftover, a
    temporary file of an atomic write, and a symbolic link to a file outside."""
    root = tmp_path / "root"
    output = root / "output"
    for name, text in {"analysis.json": "{}", "report.html": "<p>", "explanations_shap/out.csv": "a\n1\n",
                       ".lucent-work/shard-0.npz": "ckpt", ".lucent-staging-x1/analysis.json": "{",
                       ".report.html.abc.tmp": "<"}.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(text)
    (tmp_path / "secret").write_text(SECRET)
    (output / "link.csv").symlink_to(tmp_path / "secret")
    return root


def test_the_work_area_temporary_files_and_links_are_never_results(tmp_path):
    assert sorted(result_files(job_folder(tmp_path) / "output")) == ["analysis.json", "explanations_shap/out.csv",
                                                                     "report.html"]


# 4. Stale outputs -----------------------------------------------------------------------------------------

def earlier_results(tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "earlier" / "root"
    for name in names:
        (root / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "output" / name).write_text("old")
    return root


def test_publishing_to_s3_replaces_the_previous_set_and_only_it(s3, tmp_path):
    a_previous_run(s3, "out2")  # shares the prefix "out" as a string, not as a folder
    s3.put_object(Bucket="jobs", Key="out/notes.txt", Body=b"the user's")
    s3.put_object(Bucket="jobs", Key="out/.lucent-work/shap/f/shard-000000.npz", Body=b"a failed job's checkpoint")
    earlier = earlier_results(tmp_path, ["analysis.json", "old-report.html", "explanations_shap/out.csv",
                                         "pdp/old.csv", "data/credit.csv"])
    Launch().publish(earlier, "Completed", Location("s3://jobs/out"))
    assert json.loads(get_text(s3, "out/.lucent-outputs.json")) == {"published": [
        "analysis.json", "data/credit.csv", "explanations_shap/out.csv", "message", "old-report.html", "pdp/old.csv"]}
    # An input of the next launch, at a key the earlier run published: the launch's inputs are never removed.
    s3.put_object(Bucket="jobs", Key="out/data/credit.csv", Body=b"an input that lives below --output")
    runner = Launch()
    runner.sources.append(Location("s3://jobs/out/data"))
    summary, _ = runner.publish(job_folder(tmp_path), "Completed", Location("s3://jobs/out"))
    assert keys(s3, "out/") == ["out/.lucent-outputs.json", "out/.lucent-work/shap/f/shard-000000.npz",
                                "out/analysis.json", "out/data/credit.csv", "out/explanations_shap/out.csv",
                                "out/message", "out/notes.txt", "out/report.html"]
    assert get_text(s3, "out/explanations_shap/out.csv") == "a\n1\n"
    assert get_text(s3, "out/notes.txt") == "the user's"
    assert get_text(s3, "out/data/credit.csv") == "an input that lives below --output"
    assert json.loads(get_text(s3, "out/.lucent-outputs.json")) == {"published": [
        "analysis.json", "explanations_shap/out.csv", "message", "report.html"]}
    assert len(keys(s3, "out2/")) == 5
    assert summary == "4 file(s) uploaded, 0 unchanged, 2 old removed, 2 other object(s) left"  # old-report, pdp


def test_a_prefix_without_a_manifest_loses_nothing(s3, tmp_path, caplog):
    """Objects no Lucent manifest lists (an earlier version's results, or anyone's) are never removed."""
    for name in ["old-report.html", "notes/a.txt", "analysis.json"]:
        s3.put_object(Bucket="jobs", Key=f"out/{name}", Body=b"not listed")
    with caplog.at_level("INFO", logger="lucent.launch"):
        summary, _ = Launch().publish(job_folder(tmp_path), "Completed", Location("s3://jobs/out"))
    assert keys(s3, "out/") == ["out/.lucent-outputs.json", "out/analysis.json", "out/explanations_shap/out.csv",
                                "out/message", "out/notes/a.txt", "out/old-report.html", "out/report.html"]
    assert summary.endswith("0 old removed, 2 other object(s) left")
    assert "Left 2 object(s) below s3://jobs/out as they are: there is no Lucent manifest (.lucent-outputs.json) " \
           "there, so they are not Lucent's" in caplog.text


@pytest.mark.parametrize("content", [b"{not json", b'{"published": "analysis.json"}', b'{"published": ["../x", "/y"]}'])
def test_an_unreadable_manifest_removes_nothing(s3, tmp_path, content):
    s3.put_object(Bucket="jobs", Key="out/.lucent-outputs.json", Body=content)
    for name in ["x", "y", "old.html"]:
        s3.put_object(Bucket="jobs", Key=f"out/{name}", Body=b"kept")
    Launch().publish(job_folder(tmp_path), "Completed", Location("s3://jobs/out"))
    assert {"out/x", "out/y", "out/old.html"} <= set(keys(s3, "out/"))


def test_publishing_to_a_local_folder_replaces_the_previous_set_and_keeps_the_users_files(tmp_path):
    dest = tmp_path / "dest"
    earlier = tmp_path / "earlier" / "root"
    for name in ["analysis.json", "old-report.html", "explanations_shap/out.csv", "pdp/old.csv"]:
        (earlier / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        (earlier / "output" / name).write_text("old")
    Launch().publish(earlier, "Completed", Location(str(dest)))
    (dest / "notes.txt").write_text("mine")  # the user's own file, published by no run
    (dest / ".lucent-staging-dead").mkdir()  # left by a killed job
    Launch().publish(job_folder(tmp_path), "Completed again", Location(str(dest)))
    assert files_below(dest) == [".lucent-outputs.json", "analysis.json", "explanations_shap/out.csv", "message",
                                 "notes.txt", "report.html"]
    assert (dest / "explanations_shap" / "out.csv").read_text() == "a\n1\n"
    assert not (dest / "pdp").exists() and not (dest / ".lucent-staging-dead").exists()
    assert (dest / "message").read_text() == "Completed again\n"
    assert SECRET not in (dest / "report.html").read_text() and not (dest / "link.csv").exists()


def test_a_failed_rerun_replaces_only_the_message_which_says_the_results_are_earlier_ones(s3, local_job, capsys):
    put_tree(s3, local_job.root / "input", "in")
    a_previous_run(s3)
    s3.put_object(Bucket="jobs", Key="bad/config/analysis_config.json", Body=b'{"dataset_type": "text/csv"}')
    assert main(["--config", "s3://jobs/bad/config", "--data", "s3://jobs/in/data", "--output", "s3://jobs/out"]) == 1
    # As `lucent run`: a failed job removes nothing (its SHAP checkpoints stay for the rerun), and its message
    # says that the results there are an earlier run's, so they are never taken for this run's.
    assert keys(s3, "out/") == ["out/.lucent-work/shard-0.npz", "out/analysis.json", "out/explanations_shap/out.csv",
                                "out/message", "out/report.html"]
    assert get_text(s3, "out/analysis.json") == "old analysis.json"
    message = get_text(s3, "out/message")
    assert message.startswith("ClientError: "), message
    assert message.endswith("; s3://jobs/out still holds an earlier run's results (analysis.json, ...), not this "
                            "run's: this run published nothing\n"), message
    capsys.readouterr()


# 5. URI schemes ---------------------------------------------------------------------------------------

def test_scheme_case_does_not_matter(s3, local_job, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    put_tree(s3, local_job.root / "input", "in")
    assert main(["--config", "S3://jobs/in/config", "--data", "s3://jobs/in/data", "--output", "S3://jobs/out"]) == 0
    assert json.loads(get_text(s3, "out/analysis.json")) == local_job.analysis()
    assert list(tmp_path.iterdir()) == []  # no local folder named "S3:"
    capsys.readouterr()


def test_a_config_uri_scheme_in_capitals(s3, local_job, tmp_path):
    put_tree(s3, local_job.data_dir, "datasets/credit")
    config = write_config(tmp_path / "config", {**CONFIG, "dataset_uri": "S3://jobs/datasets/credit/credit.csv"})
    assert main(["--config", str(config), "--output", str(tmp_path / "results")]) == 0
    assert json.loads((tmp_path / "results" / "analysis.json").read_text()) == local_job.analysis()


MALFORMED = ["s3:/jobs/in", "S3:/jobs/in", "s3:jobs/in", "s3://", "s3:///in", "s3://jobs?x/in", "http://host/in",
             "ftp://jobs/in", "gs://jobs/in", ""]


@pytest.mark.parametrize("uri", MALFORMED)
@pytest.mark.parametrize("option", ["--config", "--data", "--model"])
def test_a_malformed_input_uri_is_a_client_error(local_job, tmp_path, monkeypatch, capsys, option, uri):
    monkeypatch.chdir(tmp_path)
    inputs = local_job.root / "input"
    arguments = {"--config": str(inputs / "config"), "--data": str(inputs / "data"), option: uri}
    results = tmp_path / "results"
    results.mkdir()
    (results / "message").write_text("the previous run's message\n")
    code = main([*[x for pair in arguments.items() for x in pair], "--output", str(results)])
    printed = capsys.readouterr()
    assert code == 1
    # A mistake on the command line: said on stderr, before anything is written to --output.
    assert printed.err.startswith(f"error: {option}: "), printed.err
    assert printed.out == ""
    assert (results / "message").read_text() == "the previous run's message\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # nothing made under the URI's name


@pytest.mark.parametrize("uri", MALFORMED)
def test_a_malformed_output_uri_is_an_error(local_job, tmp_path, monkeypatch, capsys, uri):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(local_job.root / "input" / "config"), "--output", uri]) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith("error: --output: ") and printed.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["s3:/jobs/x.csv", "s3://", "gs://jobs/x.csv", "S3:jobs/x.csv"])
def test_a_malformed_config_uri_names_the_key(local_job, tmp_path, value):
    config = write_config(tmp_path / "config", {**CONFIG, "facet_dataset_uri": value})
    assert main(["--config", str(config), "--data", str(local_job.data_dir), "--output", str(tmp_path / "r")]) == 1
    assert (tmp_path / "r" / "message").read_text().startswith("ClientError: facet_dataset_uri")


def test_file_uris_are_local_paths(local_job, tmp_path):
    inputs = local_job.root / "input"
    assert main(["--config", (inputs / "config").as_uri(), "--data", (inputs / "data").as_uri(),
                 "--output", (tmp_path / "results").as_uri()]) == 0
    assert json.loads((tmp_path / "results" / "analysis.json").read_text()) == local_job.analysis()


@pytest.mark.parametrize(("uri", "bucket", "key"), [("S3://b-1/k/x", "b-1", "k/x"), ("s3://b.c/", "b.c", ""),
                                                     ("s3://b/k?v#f", "b", "k?v#f")])
def test_s3_uris_keep_their_key_as_written(uri, bucket, key):
    assert (Location(uri).bucket, Location(uri).key) == (bucket, key)


# 6. Secrets -------------------------------------------------------------------------------------------

def test_credentials_in_uris_never_reach_the_message_or_the_log(s3, local_job, capsys):
    put_tree(s3, local_job.root / "input", "in")
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data",
                 "--model", f"https://user:{SECRET}@models.example/model.tar.gz", "--output", "s3://jobs/out"])
    printed = capsys.readouterr()
    assert code == 1
    # An unsupported scheme is the command line's mistake: refused on stderr, nothing published.
    assert printed.err.startswith("error: --model: https://***@models.example/model.tar.gz: unsupported URI "
                                  "scheme"), printed.err
    assert keys(s3, "out/") == []
    assert SECRET not in printed.out and SECRET not in printed.err


def test_credentials_in_the_output_uri_are_not_printed(local_job, capsys):
    assert main(["--config", str(local_job.root / "input" / "config"),
                 "--output", f"s3://admin:{SECRET}@jobs/out"]) == 1
    printed = capsys.readouterr()
    assert "error: --output: " in printed.err and SECRET not in printed.out + printed.err
