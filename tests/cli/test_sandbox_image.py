"""`agentpod dev` knows whether sandboxes can start before it says the stack is up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentpod.cli.sandbox_image import build_command, check_sandbox_image, find_build_script
from tests.docker_helpers import SANDBOX_IMAGE, docker_client


@pytest.mark.docker
def test_a_built_image_is_ready() -> None:
    docker_client()  # skips (or fails in CI) without an engine and the image
    check = check_sandbox_image(SANDBOX_IMAGE)
    assert check.state == "ready"


@pytest.mark.docker
def test_a_missing_image_is_built_by_the_repository_script() -> None:
    docker_client()
    check = check_sandbox_image("agentpod-sandbox:never-built")
    assert check.state == "build"
    command = build_command(check)
    assert command[-1] == "agentpod-sandbox:never-built"
    assert command[1].endswith("images/build.sh")
    # The script must be valid shell: a syntax error would only show on a newcomer's first run.
    subprocess.run(["bash", "-n", command[1]], check=True)


def test_an_engine_that_is_not_running_is_named_with_the_fix() -> None:
    check = check_sandbox_image(SANDBOX_IMAGE, docker_host="unix:///nonexistent/docker.sock")
    assert check.state == "unavailable"
    assert "sandboxes cannot start" in check.message
    assert "dockerd" in check.message


def test_the_build_script_is_found_from_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `agentpod dev` run from another directory still finds the checkout's recipe beside its source.
    monkeypatch.chdir(tmp_path)
    script = find_build_script()
    assert script is not None and script.is_file() and script.parts[-2:] == ("images", "build.sh")
