"""``lucent launch``: a SageMaker-style processing job against any S3-compatible store.

What SageMaker Processing does around the Clarify container, done on this machine:

1. stage the inputs (``--config``, ``--data``, ``--model``; S3 URIs or local paths) into a temporary
   processing root, plus the datasets the config names by ``s3://`` URI (``dataset_uri``,
   ``facet_dataset_uri``, ``predicted_label_dataset_uri``, string SHAP baselines), rewriting the
   staged config copy to their local paths (spec clarify-contract.md section 1.2);
2. run the job, in-process or in a container (``--image``) with the staged folders mounted;
3. upload ``output/`` to ``--output`` (managed transfer: multipart for large files, concurrent, objects
   already there with the same size and ETag are skipped) and the exit message as ``<output>/message``.

A failed job still uploads its message and exits non-zero. S3 credentials come from boto3's usual
chain; ``--endpoint-url`` (or ``AWS_ENDPOINT_URL``) points it at MinIO, Ceph, moto, ...
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from container.engine import EngineUnavailable, connect_engine
from container.job import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, JobPaths, configure_logging, run_job

log = logging.getLogger("lucent.launch")

PART_SIZE = 8 * 1024 * 1024  # multipart threshold and part size; the skip test recomputes ETags with it
CONTAINER_ROOT = Path("/opt/ml/processing")
# Config keys that name a dataset by URI: the real container downloads them itself (spec section 1.2).
URI_KEYS = (("dataset_uri",), ("facet_dataset_uri",), ("predicted_label_dataset_uri",),
            ("methods", "shap", "baseline"), ("methods", "asymmetric_shapley_value", "baseline"))


class LaunchError(Exception):
    """The job could not be staged, started or published; the message says what and where."""


@dataclass(frozen=True)
class Location:
    """An ``s3://bucket/key`` URI or a local path."""

    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return urlparse(self.uri).netloc

    @property
    def key(self) -> str:
        return urlparse(self.uri).path.lstrip("/")

    @property
    def path(self) -> Path:
        parsed = urlparse(self.uri)
        return Path(parsed.path if parsed.scheme == "file" else self.uri).expanduser()

    def child(self, name: str) -> Location:
        return Location(f"{self.uri.rstrip('/')}/{name}")


class Store:
    """The S3 operations a launch needs, with S3's errors turned into ``LaunchError``s."""

    def __init__(self, endpoint_url: str | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig

        # A session of its own: boto3's default one caches the credentials it first found. endpoint_url None
        # lets boto3 read AWS_ENDPOINT_URL itself.
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)

    @contextlib.contextmanager
    def errors(self, action: str, uri: str) -> Iterator[None]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                yield
            except S3UploadFailedError as error:  # upload_file wraps the ClientError that says why
                raise error.__cause__ or error from None
        except ClientError as error:
            info = error.response.get("Error", {})
            code = info.get("Code", "?")
            hint = {"NoSuchBucket": "the bucket does not exist", "NoSuchKey": "no such object",
                    "404": "no such object", "AccessDenied": "access denied: check the credentials' policy",
                    "403": "access denied: check the credentials' policy"}.get(code, info.get("Message", ""))
            raise LaunchError(f"{action} {uri}: {code}: {hint}") from error
        except (BotoCoreError, S3UploadFailedError, OSError) as error:  # no credentials, endpoint down, retries exhausted, ...
            raise LaunchError(f"{action} {uri}: {error}") from error

    def objects(self, location: Location) -> dict[str, tuple[int, str]]:
        """Every object under the prefix: key -> (size, ETag without quotes)."""
        found = {}
        with self.errors("listing", location.uri):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket,
                                                                           Prefix=location.key)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
        return found

    def download(self, location: Location, dest: Path) -> None:
        """SageMaker's S3Prefix input: the object itself if the key names one, else every object below
        ``key/``, keeping their relative paths."""
        key = location.key
        keys = self.objects(location)
        if key and key in keys and not key.endswith("/"):
            targets = {key: dest / Path(key).name}
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            targets = {k: dest / k[len(prefix):] for k in keys if k.startswith(prefix) and not k.endswith("/")}
        if not targets:
            raise LaunchError(f"reading {location.uri}: no object at this key or below this prefix")
        for source, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.errors("downloading", f"s3://{location.bucket}/{source}"):
                self.client.download_file(location.bucket, source, str(target), Config=self.transfer)

    def upload_folder(self, folder: Path, location: Location) -> tuple[int, int]:
        """Upload every file below ``folder`` under the prefix; returns (uploaded, unchanged)."""
        from boto3.s3.transfer import create_transfer_manager

        remote = self.objects(location)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        changed = []
        for path in files:
            key = location.child(path.relative_to(folder).as_posix()).key
            if remote.get(key) != (path.stat().st_size, etag(path)):
                changed.append((path, key))
        with self.errors("uploading to", location.uri), create_transfer_manager(self.client, self.transfer) as manager:
            futures = [manager.upload(str(path), location.bucket, key) for path, key in changed]
            for future in futures:
                future.result()  # raises the first failure (after botocore's own retries)
        return len(changed), len(files) - len(changed)


def etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives ``path`` uploaded with ``part_size`` parts: the MD5, or for a multipart upload the
    MD5 of the parts' MD5s and the part count."""
    parts = []
    with path.open("rb") as stream:
        while chunk := stream.read(part_size):
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if path.stat().st_size < part_size:
        return (parts[0] if parts else hashlib.md5(b"", usedforsecurity=False).digest()).hex()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class Launch:
    """One launch: where things come from and go, and the store that reaches S3 (created lazily, so a
    launch on local paths alone needs neither boto3 credentials nor a network)."""

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.endpoint_url)
        return self._store

    def fetch(self, location: Location, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        if location.is_s3:
            self.store.download(location, dest)
        elif location.path.is_dir():
            shutil.copytree(location.path, dest, dirs_exist_ok=True)
        elif location.path.is_file():
            shutil.copy2(location.path, dest / location.path.name)
        else:
            raise LaunchError(f"reading {location.uri}: no such file or folder")

    def publish(self, folder: Path, message: str, output: Location) -> str:
        """Upload (or copy) the results and the message; returns a one-line summary."""
        message_file = folder.parent / "message"
        message_file.write_text(message + "\n", encoding="utf-8")
        if output.is_s3:
            uploaded, unchanged = self.store.upload_folder(folder, output) if folder.exists() else (0, 0)
            with self.store.errors("uploading to", output.child("message").uri):
                self.store.client.upload_file(str(message_file), output.bucket, output.child("message").key)
            return f"{uploaded} file(s) uploaded, {unchanged} unchanged"
        output.path.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.copytree(folder, output.path, dirs_exist_ok=True)
        shutil.copy2(message_file, output.path / "message")
        return "copied"

    def stage(self, root: Path, config: Location, data: Location | None, model: Location | None,
              job_root: Path) -> None:
        """Lay out ``root`` as the processing root; ``job_root`` is where the job will see it."""
        inputs = root / "input"
        self.fetch(config, inputs / "config")
        if data is not None:
            self.fetch(data, inputs / "data")
        if model is not None:
            self.fetch(model, inputs / "model")
        self._stage_config_uris(inputs, job_root / "input")

    def _stage_config_uris(self, inputs: Path, job_inputs: Path) -> None:
        from analyzer.config import find_config_file

        try:
            config_file = find_config_file(inputs / "config")
            tree = json.loads(config_file.read_text(encoding="utf-8"))
        except Exception as error:  # noqa: BLE001 - the job reports a bad config properly; stage as is
            log.debug("config not rewritten: %s", error)
            return
        changed = False
        for path in URI_KEYS:
            parent = tree
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            value = parent.get(path[-1]) if isinstance(parent, dict) else None
            if isinstance(value, str) and value.startswith("s3://"):
                name = "_".join(path)
                self.store.download(Location(value), inputs / name)
                staged = list((inputs / name).iterdir())
                relative = staged[0].relative_to(inputs) if len(staged) == 1 and staged[0].is_file() else name
                parent[path[-1]] = str(job_inputs / relative)
                log.info("Staged %s %s as %s", ".".join(path), value, parent[path[-1]])
                changed = True
        if changed:
            config_file.write_text(json.dumps(tree, indent=2), encoding="utf-8")


def run_in_container(image: str, root: Path) -> int:
    """Run ``image`` on the staged processing root as SageMaker would: no arguments, inputs read-only."""
    import docker.errors

    try:
        client = connect_engine("--image")
    except EngineUnavailable as error:
        raise LaunchError(str(error)) from error
    volumes = {str(root / "input"): {"bind": str(CONTAINER_ROOT / "input"), "mode": "ro"},
               str(root / "output"): {"bind": str(CONTAINER_ROOT / "output"), "mode": "rw"},
               str(root / "message-dir"): {"bind": "/opt/ml/output", "mode": "rw"}}
    for folder in ("output", "message-dir"):
        (root / folder).mkdir(exist_ok=True)
    try:
        # Our uid, so the results belong to whoever launched the job (the image runs any uid).
        container = client.containers.run(image, detach=True, volumes=volumes, user=f"{os.getuid()}:{os.getgid()}",
                                          labels={"lucent.role": "job"})
    except docker.errors.ImageNotFound as error:
        raise LaunchError(f"--image: image {image!r} not found: {error.explanation}") from error
    except docker.errors.APIError as error:
        raise LaunchError(f"--image: could not start {image!r}: {error.explanation}") from error
    try:
        for line in container.logs(stream=True, follow=True):
            log.info("[job] %s", line.decode("utf-8", "replace").rstrip())
        code = container.wait()["StatusCode"]
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
    message_file = root / "message-dir" / "message"
    if message_file.is_file():
        shutil.copy2(message_file, root / "message")
    else:
        (root / "message").write_text(f"AlgorithmError: the job container exited with code {code} and left no "
                                      "exit message\n", encoding="utf-8")
    return code


def launch(config: str, output: str, data: str | None = None, model: str | None = None, image: str | None = None,
           endpoint_url: str | None = None, work_dir: Path | None = None) -> tuple[int, str]:
    """Stage, run and publish one job; returns (exit code, exit message). Raises ``LaunchError`` only when
    not even the message could be published."""
    runner = Launch(endpoint_url)
    destination = Location(output)
    with tempfile.TemporaryDirectory(prefix="lucent-launch-", dir=work_dir) as temp:
        root = Path(temp)
        (root / "output").mkdir()
        try:
            runner.stage(root, Location(config), Location(data) if data else None,
                         Location(model) if model else None, CONTAINER_ROOT if image else root)
            code = run_in_container(image, root) if image else run_job(JobPaths.for_root(root))
            message = (root / "message").read_text(encoding="utf-8").strip()
        except LaunchError as error:
            code, message = EXIT_USER_ERROR, f"ClientError: {error}"
            shutil.rmtree(root / "output", ignore_errors=True)  # nothing half-made gets published
            log.error("%s", message)
        summary = runner.publish(root / "output", message, destination)
    log.info("Results in %s (%s)", output, summary)
    return code, message


def add_launch_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``launch`` on the ``lucent`` subcommand parser."""
    parser = subparsers.add_parser(
        "launch", help="run a job on S3 (or local) inputs and publish its results, as SageMaker Processing does",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="URI",
                        help="analysis config: s3://bucket/key (an object or a prefix) or a local file/folder")
    parser.add_argument("--data", metavar="URI", help="dataset (object, prefix or local path); optional when the "
                                                      "config has dataset_uri")
    parser.add_argument("--model", metavar="URI", help="model folder or model.tar.gz, for the built-in model server")
    parser.add_argument("--output", required=True, metavar="URI", help="where results and `message` go")
    parser.add_argument("--image", help="run the job in this container image (default: in this process)")
    parser.add_argument("--endpoint-url", default=None, metavar="URL",
                        help="S3 API endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="where to stage (default: the temp folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run_launch(args: argparse.Namespace) -> int:
    """``lucent launch``: prints where the results are and the exit message; returns the exit code."""
    configure_logging(args.verbose)
    try:
        code, message = launch(args.config, args.output, args.data, args.model, args.image, args.endpoint_url,
                               args.work_dir)
    except LaunchError as error:
        print(f"error: {error}")
        return EXIT_USER_ERROR
    except Exception as error:  # noqa: BLE001 - an unexpected failure must still end with a clear line
        log.exception("launch failed")
        print(f"error: internal error: {type(error).__name__}: {error}")
        return EXIT_INTERNAL_ERROR
    print(f"results: {args.output}\nmessage: {message}")
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m container.launcher ...`` is ``lucent launch ...``."""
    from container.cli import main as lucent

    return lucent(["launch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
