"""Which model a job explains, as text that changes whenever the model does.

SHAP checkpoints are kept per model (``analyzer.explain.job``): a rerun after the model changed must not
reuse values of the old one. The model's scores on the baseline rows alone cannot tell (a new model may
score those rows the same and others differently), so the job names the model itself:

- ``predictor.endpoint_url``: the URL, without its userinfo (the password is not the model);
- ``predictor.image_uri``: the image name and its id in the engine (a tag can be rebuilt), and the model
  folder mounted into it, if any;
- the built-in server: the folder (or ``model.tar.gz``) it serves.

A folder is named by every file below it: relative path, size and SHA-256 of the content, read in
blocks (model files are small to medium; a 1 GB model costs about a second).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from pathlib import Path

from analyzer.config import AnalysisConfig
from analyzer.redact import redact_url
from container.model_endpoint import model_source

log = logging.getLogger(__name__)


def model_identity(config: AnalysisConfig, model_dir: Path) -> str:
    """The identity of the model ``config`` uses (see the module docstring); ``model_dir``: the job's
    model folder. Call it once the model is up: the image is then in the engine."""
    predictor = config.predictor
    if predictor is None:
        return ""
    if predictor.endpoint_url:
        return f"endpoint_url {redact_url(predictor.endpoint_url)}"
    started = time.perf_counter()
    if predictor.image_uri:
        identity = f"image_uri {predictor.image_uri} {_image_id(predictor.image_uri)}"
        if model_dir.exists():
            identity += f"; mounted model {files_digest(model_dir)}"
    else:
        identity = f"built-in server on {files_digest(model_source(model_dir))}"
    log.info("Model identity for the SHAP checkpoints computed in %.2f s", time.perf_counter() - started)
    return identity


def files_digest(path: Path) -> str:
    """SHA-256 over the relative path, size and content digest of every file at or below ``path``.

    Links are followed, as the model server follows them (a folder reached twice is read once); entries
    that are neither files nor folders (sockets, pipes) are named by their kind, never read.
    """
    digest = hashlib.sha256()
    if not path.is_dir():
        _add_entry(digest, path.name, path)
        return digest.hexdigest()
    seen: set[tuple[int, int]] = set()
    for folder, folders, files in os.walk(path, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:  # a link back up the tree
            folders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        folders.sort()
        relative = Path(folder).relative_to(path)
        for name in sorted(files):
            _add_entry(digest, (relative / name).as_posix(), Path(folder) / name)
    return digest.hexdigest()


def _add_entry(digest: hashlib._Hash, name: str, path: Path) -> None:
    try:
        info = path.stat()
    except OSError as error:  # a dangling link: the server cannot read it either
        digest.update(f"{name}\0unreadable {type(error).__name__}\0".encode())
        return
    if not stat.S_ISREG(info.st_mode):
        digest.update(f"{name}\0mode {stat.S_IFMT(info.st_mode)}\0".encode())
        return
    with path.open("rb") as handle:
        content = hashlib.file_digest(handle, "sha256").hexdigest()
    digest.update(f"{name}\0{info.st_size}\0{content}\0".encode())


def _image_id(image: str) -> str:
    """The image's id in the engine, or a note that it could not be read (the name then stands alone)."""
    import docker.errors

    from container.engine import EngineUnavailable, connect_engine

    try:
        return str(connect_engine("predictor.image_uri").images.get(image).id)
    except (EngineUnavailable, docker.errors.DockerException) as error:
        log.warning("Could not read the id of image %s (%s): SHAP checkpoints are kept per image name only",
                    image, error)
        return "(id unknown)"
