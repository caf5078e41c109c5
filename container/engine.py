"""The container engine (Docker, or podman's Docker-compatible API) as the Docker SDK reaches it."""

from __future__ import annotations

import logging
import os

from analyzer.redact import redact

log = logging.getLogger(__name__)


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


# The engine answers these when a forced removal races the container's own stop: podman sends SIGKILL to a
# container that has just stopped and refuses ("could not be stopped ... container state improper: stopped").
_STOPPING_WHILE_REMOVED = ("container state improper", "could not be stopped")
_REMOVAL_ATTEMPTS = 3


def remove_container(container, wait_seconds: float = 60) -> None:
    """Remove ``container`` (a ``docker`` SDK container), running or not; one that is already gone is fine.

    A forced removal fails on podman when the container stops by itself at that moment (its driver went
    away, its command ended). It is then waited for (its stop completes) and removed again. Any other
    refusal is raised as the SDK's ``APIError``."""
    import docker.errors

    for attempt in range(1, _REMOVAL_ATTEMPTS + 1):
        try:
            container.remove(force=True)
            return
        except docker.errors.APIError as error:
            if container_gone(error):
                return
            explanation = str(error.explanation or error).lower()
            if attempt == _REMOVAL_ATTEMPTS or not any(text in explanation for text in _STOPPING_WHILE_REMOVED):
                raise
        try:
            container.wait(timeout=wait_seconds)
        except docker.errors.NotFound:
            return


def container_gone(error: Exception) -> bool:
    """Whether the engine's ``error`` says the container does not exist (any more): Docker's 404, or podman's
    500 "no such container" for one removed while it was being listed or removed."""
    import docker.errors

    if isinstance(error, docker.errors.NotFound):
        return True
    return isinstance(error, docker.errors.APIError) and "no such container" in str(error.explanation or error).lower()


def discard_container(container, role: str) -> bool:
    """Remove ``container`` at the end of its use; True when it is gone. A failure is logged with the
    command that finishes the job and never hides the result the container ran for. ``role`` names it in
    the log ("model", "job")."""
    import docker.errors

    try:
        remove_container(container)
    except docker.errors.DockerException as error:
        log.warning("Could not remove the %s container %s (%s); remove it with: docker rm -f %s",
                    role, container.short_id, redact(str(error)), container.short_id)
        return False
    return True
