"""`lucent launch --image` and SHAP checkpoints on S3: the container is given no credentials, so the
launcher copies the checkpoints between S3 and the job's work area, before the container starts and
after it ends (also when the job failed or was stopped), and a second launch resumes from them.

The fast tests replace only the container run (``launch(run_container=...)``): the staged job runs in this
process as the image runs it, with the container's environment and no AWS credentials in reach (none in
the environment, no credentials file, no instance role), so any S3 request from the job fails. moto's S3
server on 127.0.0.1. The slow test runs the real image on the machine's container engine.
"""

# ruff: noqa: F811 - the fixtures shared with other test files are imported, then named as test arguments
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from analyzer.explain import shards  # noqa: E402
from container.checkpoint_store import COPIED_BY_LAUNCHER, WorkAreaCopy  # noqa: E402
from container.demo import MODEL_DEMO_CONFIG, write_demo_job  # noqa: E402
from container.job import OUTPUT_URI_VARIABLE, SUCCESS_MESSAGE, JobPaths, run_job  # noqa: E402
from container.launcher import launch, main  # noqa: E402
from tests.test_container import engine, image  # noqa: E402, F401
from tests.test_launcher import endpoint, get_text, keys, put_tree, s3  # noqa: E402, F401

SHAP_CONFIG = {**MODEL_DEMO_CONFIG, "methods": {"shap": {"num_clusters": 1, "num_samples": 20, "seed": 0}}}
N_ROWS, SHARD_ROWS = 60, 10  # synthetic rows per shard: one record each, 60 shards
WORK = "out/.lucent-work/shap/"


@pytest.fixture
def shap_inputs(tmp_path, monkeypatch, s3) -> Path:
    """A SHAP job's config, data and model on S3 (in/...), in small shards computed one at a time."""
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, str(SHARD_ROWS))
    inputs = write_demo_job(tmp_path / "job", n_rows=N_ROWS, seed=2, config=SHAP_CONFIG, with_model=True) / "input"
    put_tree(s3, inputs, "in")
    return inputs


class CredentiallessContainer:
    """A container runner for ``launch``: runs the staged job as ``run_in_container`` runs the image (the
    processing root, the environment it is given, the message in ``root/message``), with no AWS
    credentials in reach. ``crash_after``: the job's main process dies once that many shards are done;
    ``stop``: then the launcher is stopped (SIGTERM) while the "container" is still running."""

    def __init__(self, tmp_path: Path, crash_after: int | None = None, stop: bool = False):
        self.nowhere, self.crash_after, self.stop = tmp_path / "no-credentials", crash_after, stop
        self.environments: list[dict[str, str]] = []
        self.work_areas: list[list[str]] = []  # the checkpoints the job found in its work area when it started

    def __call__(self, image: str, root: Path, environment: dict[str, str]) -> int:
        self.environments.append(dict(environment))
        work = root / "output" / ".lucent-work"
        self.work_areas.append(sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()))
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                patch.delenv(name, raising=False)
            patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self.nowhere))
            patch.setenv("AWS_CONFIG_FILE", str(self.nowhere))
            patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            for name, value in environment.items():
                patch.setenv(name, value)
            if self.crash_after is not None:
                advance = shards._Progress.advance

                def crash(progress, index):
                    advance(progress, index)
                    if progress.done == self.crash_after:
                        raise RuntimeError("simulated crash")

                patch.setattr(shards._Progress, "advance", crash)
            code = run_job(JobPaths.for_root(root))
        if self.stop:
            signal.raise_signal(signal.SIGTERM)  # the launcher's handler: JobStopped, as during the container's logs
        return code


def launch_shap(runner: CredentiallessContainer, output: str = "s3://jobs/out") -> tuple[int, str]:
    return launch("s3://jobs/in/config", output, "s3://jobs/in/data", "s3://jobs/in/model", image="lucent:test",
                  run_container=runner)


def test_a_failed_image_job_keeps_its_checkpoints_on_s3_and_the_next_launch_resumes(s3, shap_inputs, tmp_path,
                                                                                    caplog):
    crashing = CredentiallessContainer(tmp_path, crash_after=2)
    code, message = launch_shap(crashing)
    assert code == 2 and message.startswith("AlgorithmError: ") and "simulated crash" in message, message
    environment = crashing.environments[0]
    assert environment[OUTPUT_URI_VARIABLE] == "s3://jobs/out"  # for the paths analysis.json names
    assert environment[COPIED_BY_LAUNCHER] == "s3://jobs/out/.lucent-work"
    assert not any(name.startswith("AWS_") for name in environment)  # the host's credentials stay on the host
    saved = [key.removeprefix(WORK) for key in keys(s3, WORK)]
    assert [name.split("/")[1] for name in saved] == ["shard-000000.npz", "shard-000001.npz"], saved
    assert keys(s3, "out/") == [*(WORK + name for name in saved), "out/message"]  # a failed job: its message alone

    resuming = CredentiallessContainer(tmp_path)
    with caplog.at_level("INFO"):
        code, message = launch_shap(resuming)
    assert (code, message) == (0, SUCCESS_MESSAGE)
    assert resuming.work_areas == [[f"shap/{name}" for name in saved]]  # copied in before the job started
    assert "SHAP: 2 checkpoint file(s) copied from s3://jobs/out/.lucent-work into the job's work area" in caplog.text
    assert "SHAP: resuming, 2 of 60 shards already done" in caplog.text
    assert keys(s3, WORK) == []  # the job succeeded: its checkpoints are removed everywhere
    resumed = json.loads(get_text(s3, "out/analysis.json"))["explanations"]["kernel_shap"]

    # The same job launched in one go, in this process (its own S3 mirror): the same values.
    assert main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--model", "s3://jobs/in/model",
                 "--output", "s3://jobs/reference"]) == 0
    assert resumed == json.loads(get_text(s3, "reference/analysis.json"))["explanations"]["kernel_shap"]


def test_a_stopped_image_job_leaves_its_checkpoints_on_s3(s3, shap_inputs, tmp_path):
    code, message = launch_shap(CredentiallessContainer(tmp_path, crash_after=3, stop=True))
    assert code == 2 and message.startswith("Stopped: the job was stopped (SIGTERM)"), message
    assert [key.rsplit("/", 1)[1] for key in keys(s3, WORK)] == [f"shard-00000{i}.npz" for i in range(3)]
    assert get_text(s3, "out/message") == message + "\n"


def test_a_successful_image_job_needs_no_credentials_and_leaves_no_checkpoint(s3, shap_inputs, tmp_path):
    code, message = launch_shap(CredentiallessContainer(tmp_path))
    assert (code, message) == (0, SUCCESS_MESSAGE)
    assert json.loads(get_text(s3, "out/analysis.json"))["explanations"]["kernel_shap"]
    assert keys(s3, "out/.lucent-work/") == []


def test_checkpoints_of_another_fingerprint_are_removed_once_the_job_has_its_own(s3, tmp_path):
    """As a mirror's pull does: a stale fingerprint can never be reused. A failed job that made no folder
    of its own (it failed before SHAP) and a job that succeeded without SHAP leave the store alone."""
    from container.checkpoint_store import store_at

    old, new = "7e240de74fb1ed08fa08d38c", "5d41402abc4b2a76b9719d91"  # fingerprints as a job makes them
    store = store_at("s3://jobs/ckpt")
    store.write(f"shap/{old}/shard-000000.npz", b"stale")
    store.write(f"shap/{old}/.hidden", b"not a checkpoint")  # never copied, never removed
    work = tmp_path / "work"

    copy = WorkAreaCopy(store, work)
    assert copy.pull() == 1 and (work / "shap" / old / "shard-000000.npz").read_bytes() == b"stale"
    assert copy.push(succeeded=False) == (0, 0)  # the job did not get to SHAP: nothing changes
    assert copy.push(succeeded=True) == (0, 0)  # a job without SHAP leaves the work area as it was

    copy = WorkAreaCopy(store, work)
    copy.pull()
    (work / "shap" / old / "shard-000000.npz").unlink()  # the job's _drop_stale
    (work / "shap" / old).rmdir()
    (work / "shap" / new).mkdir()
    (work / "shap" / new / "shard-000000.npz").write_bytes(b"fresh")
    assert copy.push(succeeded=False) == (1, 1)
    assert keys(s3, "ckpt/") == [f"ckpt/shap/{new}/shard-000000.npz", f"ckpt/shap/{old}/.hidden"]


@pytest.mark.slow
def test_the_image_resumes_from_checkpoints_on_s3_with_no_credentials(engine, image, s3, tmp_path, caplog):
    """The QA report's launch, for real: SHAP in the image with --output on S3. The first run (the job
    as the image runs it, crashing once its only shard is done) leaves its checkpoint on S3; the image
    then resumes from it, given no credentials, and the checkpoint is removed after its success."""
    inputs = write_demo_job(tmp_path / "job", n_rows=N_ROWS, seed=2, config=SHAP_CONFIG, with_model=True) / "input"
    put_tree(s3, inputs, "in")
    code, message = launch_shap(CredentiallessContainer(tmp_path, crash_after=1))
    assert code == 2 and "simulated crash" in message, message
    assert [key.rsplit("/", 1)[1] for key in keys(s3, WORK)] == ["shard-000000.npz"]

    with caplog.at_level("INFO"):
        assert main(["--config", "s3://jobs/in/config", "--data", "s3://jobs/in/data", "--model", "s3://jobs/in/model",
                     "--output", "s3://jobs/out", "--image", image]) == 0, get_text(s3, "out/message")
    job_lines = [line for line in caplog.text.splitlines() if "[job]" in line]
    assert any("copies them from and to s3://jobs/out/.lucent-work" in line for line in job_lines), job_lines
    assert any("SHAP: resuming, 1 of 1 shards already done" in line for line in job_lines), job_lines
    assert "Unable to locate credentials" not in caplog.text
    assert get_text(s3, "out/message").strip() == SUCCESS_MESSAGE
    assert json.loads(get_text(s3, "out/analysis.json"))["explanations"]["kernel_shap"]
    assert keys(s3, "out/.lucent-work/") == []


def test_a_local_output_gets_the_image_jobs_checkpoints_too(s3, shap_inputs, tmp_path, caplog):
    """A local --output: the checkpoints go to <output>/.lucent-work on this machine, not into the
    container's own file system (where the job would otherwise have written its "store")."""
    output = tmp_path / "results"
    code, _ = launch_shap(CredentiallessContainer(tmp_path, crash_after=2), str(output))
    assert code == 2
    saved = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.npz"))
    assert [name.rsplit("/", 1)[1] for name in saved] == ["shard-000000.npz", "shard-000001.npz"], saved
    assert all(name.startswith(".lucent-work/shap/") for name in saved)
    with caplog.at_level("INFO"):
        code, message = launch_shap(CredentiallessContainer(tmp_path), str(output))
    assert (code, message) == (0, SUCCESS_MESSAGE)
    assert "SHAP: resuming, 2 of 60 shards already done" in caplog.text
    assert not (output / ".lucent-work").exists()
    assert json.loads((output / "analysis.json").read_text())["explanations"]["kernel_shap"]
