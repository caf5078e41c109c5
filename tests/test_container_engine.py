"""Removing containers (container/engine.py) when the engine races a container's own stop.

Podman refuses a forced removal of a container that stops by itself at that moment (seen in CI: a Spark
executor container whose driver had just gone). The real engine cannot be made to lose that race on
demand, so these tests stand in for the container with the SDK's own error objects."""

from __future__ import annotations

import logging

import docker.errors
import pytest

from container.engine import discard_container, remove_container

PODMAN_RACE = ("cannot remove container 05f2185d4e73 as it could not be stopped: sending SIGKILL to container "
               "05f2185d4e73: container state improper: stopped")


class Container:
    """Answers ``remove`` with the given errors in turn, then removes; records the calls."""

    short_id = "05f2185d4e73"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def remove(self, force: bool = False) -> None:
        assert force
        self.calls.append("remove")
        if self.errors:
            raise self.errors.pop(0)

    def wait(self, timeout: float) -> dict:
        self.calls.append("wait")
        return {"StatusCode": 137}


def api_error(explanation: str) -> docker.errors.APIError:
    return docker.errors.APIError("500 Server Error", explanation=explanation)


def test_a_container_that_stops_while_it_is_removed_is_waited_for_and_removed():
    container = Container(api_error(PODMAN_RACE))
    remove_container(container)
    assert container.calls == ["remove", "wait", "remove"]


def test_a_container_already_gone_is_removed():
    for error in (docker.errors.NotFound("404 Client Error", explanation="No such container: 05f2"),
                  api_error("no such container 05f2185d4e73")):  # podman answers 500 where Docker answers 404
        container = Container(error)
        remove_container(container)
        assert container.calls == ["remove"]


def test_any_other_refusal_is_raised_at_once():
    container = Container(api_error("removal of container 05f2 is already in progress: permission denied"))
    with pytest.raises(docker.errors.APIError, match="permission denied"):
        remove_container(container)
    assert container.calls == ["remove"]


def test_a_race_that_keeps_happening_is_raised_after_three_attempts():
    container = Container(*(api_error(PODMAN_RACE) for _ in range(3)))
    with pytest.raises(docker.errors.APIError, match="state improper"):
        remove_container(container)
    assert container.calls == ["remove", "wait", "remove", "wait", "remove"]


def test_a_container_left_behind_is_logged_with_the_command_that_removes_it(caplog):
    caplog.set_level(logging.WARNING)
    assert discard_container(Container(api_error("device or resource busy")), "model") is False
    assert "Could not remove the model container 05f2185d4e73 (" in caplog.text
    assert "device or resource busy" in caplog.text and "docker rm -f 05f2185d4e73" in caplog.text
    assert discard_container(Container(api_error(PODMAN_RACE)), "model") is True
