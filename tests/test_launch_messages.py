"""What `lucent launch` says: exit messages name the user's URIs (never the temporary staged copies),
command-line mistakes are refused on stderr before anything is written, and missing credentials say
how to provide them. moto's S3 server on 127.0.0.1, real files and real jobs."""

# ruff: noqa: F811 - the fixtures shared with test_launcher.py are imported, then named as test arguments
from __future__ import annotations

import io
import tarfile

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from container.demo import MODEL_DEMO_CONFIG, write_demo_job  # noqa: E402
from container.launcher import CONTAINER_ROOT, Launch, Location, main  # noqa: E402
from container.storage import CREDENTIALS_HINT  # noqa: E402
from tests.test_launcher import endpoint, get_text, keys, local_job, put_tree, s3  # noqa: E402, F401

POST_TRAINING = {**MODEL_DEMO_CONFIG, "methods": {"post_training_bias": {"methods": ["DPPL"]}}}


def escaping_model_archive() -> bytes:
    """A model.tar.gz with a member that would be extracted outside its folder: the job refuses it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        content = b"escaped"
        member = tarfile.TarInfo("../../../../escaped.txt")
        member.size = len(content)
        archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def test_the_message_names_the_model_uri_not_the_staged_copy(s3, tmp_path, capsys):
    inputs = write_demo_job(tmp_path / "job", n_rows=200, seed=5, config=POST_TRAINING, with_model=True) / "input"
    put_tree(s3, inputs, "in")
    s3.put_object(Bucket="jobs", Key="models/evil/model.tar.gz", Body=escaping_model_archive())
    code = main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data",
                 "--model", "s3://jobs/models/evil/model.tar.gz", "--output", "s3://jobs/out"])
    message = get_text(s3, "out/message")
    printed = capsys.readouterr().out
    assert code == 1, message
    assert message.startswith("ClientError: model folder unloadable: "), message
    assert " s3://jobs/models/evil/model.tar.gz: " in message and "escaped.txt" in message, message
    assert "lucent-launch-" not in message and "/input/model" not in message
    assert f"message: {message.strip()}" in printed


@pytest.mark.parametrize("job_root", ["host", "container"])
def test_staged_paths_map_to_the_uris_and_keys_given(s3, tmp_path, job_root):
    for key in ["datasets/credit/part-1.csv", "datasets/credit/sub/part-2.csv", "models/m/model.tar.gz"]:
        s3.put_object(Bucket="jobs", Key=key, Body=b"x")
    local = tmp_path / "my config"
    local.mkdir()
    (local / "analysis_config.json").write_text("{}")
    root = tmp_path / "root"
    runner = Launch()
    runner.fetch(Location("s3://jobs/datasets/credit/"), root / "input" / "data", "--data")
    runner.fetch(Location("s3://jobs/models/m/model.tar.gz"), root / "input" / "model")
    runner.fetch(Location(str(local)), root / "input" / "config", "--config")
    runner.fetch(Location("s3://jobs/datasets/credit"), root / "input" / "dataset_uri")
    seen = {"host": root, "container": CONTAINER_ROOT}[job_root]
    inputs = seen / "input"
    text = (f"cannot read {inputs}/data/sub/part-2.csv: bad; {inputs}/data is empty. "
            f"cannot extract {inputs}/model/model.tar.gz: x; '{inputs}/model' has no model; "
            f"{inputs}/config/analysis_config.json: invalid; {inputs}/dataset_uri/part-1.csv; "
            f"{inputs}/model/other; {inputs}/data2 and {inputs}/data.csv are not inputs.")
    assert runner.user_names(text, root, CONTAINER_ROOT) == (
        "cannot read s3://jobs/datasets/credit/sub/part-2.csv: bad; s3://jobs/datasets/credit is empty. "
        "cannot extract s3://jobs/models/m/model.tar.gz: x; 's3://jobs/models/m/model.tar.gz' has no model; "
        f"{local}/analysis_config.json: invalid; s3://jobs/datasets/credit/part-1.csv; "
        f"{inputs}/model/other; {inputs}/data2 and {inputs}/data.csv are not inputs.")


def test_a_malformed_uri_is_refused_before_the_output_is_touched(s3, capsys):
    s3.put_object(Bucket="jobs", Key="out/message", Body=b"Completed: the previous run\n")
    code = main(["--config", "s3:/jobs/in/config", "--output", "s3://jobs/out"])
    printed = capsys.readouterr()
    assert code == 1
    assert printed.err == "error: --config: s3:/jobs/in/config: not a well-formed S3 URI (write s3://bucket/key)\n"
    assert printed.out == ""
    assert keys(s3, "out/") == ["out/message"]  # no probe, and the previous message is still there
    assert get_text(s3, "out/message") == "Completed: the previous run\n"


def test_missing_credentials_say_how_to_provide_them(s3, local_job, tmp_path, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role on this machine
    inputs = local_job.root / "input"
    code = main(["--config", str(inputs / "config"), "--data", str(inputs / "data"), "--output", "s3://jobs/out"])
    printed = capsys.readouterr()
    assert code == 1
    assert printed.err == f"error: writing to s3://jobs/out: Unable to locate credentials: {CREDENTIALS_HINT}\n"
    assert printed.out == ""
    for way in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "~/.aws/credentials", "instance role"):
        assert way in CREDENTIALS_HINT


def test_results_and_message_lines_stay_on_stdout(local_job, tmp_path, capsys):
    inputs = local_job.root / "input"
    assert main(["--config", str(inputs / "config"), "--data", str(inputs / "data"),
                 "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"results: {tmp_path / 'out'}\nmessage: Completed")
    assert "error:" not in printed.err

