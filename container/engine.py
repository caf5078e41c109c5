"""The container engine (Docker, or podman's Docker-compatible API) as the Docker SDK reaches it."""

from __future__ import annotations

import os


class EngineUnavailable(Exception):
    """No container engine answers at DOCKER_HOST (or the default socket)."""


def connect_engine(purpose: str):
    """A connected ``docker.DockerClient``; ``purpose`` (e.g. ``"--image"``) starts the error message."""
    import docker
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise EngineUnavailable(f"{purpose}: no container engine reachable (DOCKER_HOST="
                                f"{os.environ.get('DOCKER_HOST', 'unset')}): {error}") from error
    return client
