"""Is the sandbox image on the Docker engine, and if not, can ``agentpod dev`` build it?

A newcomer's first sandbox used to end in ``ImageMissing`` with nothing pointing at ``make image``.
``agentpod dev`` now asks here before it reports the stack as up, and builds the image when missing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The build recipe lives in the source tree, not in the wheel: look beside the working directory
# (``make run`` runs from the checkout) and beside this package's source.
_BUILD_SCRIPT = Path("images") / "build.sh"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # agentpod/cli/ -> the checkout


@dataclass(frozen=True)
class ImageCheck:
    """What the dev stack should do about the sandbox image."""

    state: Literal["ready", "build", "unavailable"]
    image: str
    message: str
    build_script: Path | None = None


def check_sandbox_image(image: str, docker_host: str | None = None) -> ImageCheck:
    """Look for ``image`` on the engine; say how to get it when it is missing or Docker is not there."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except DockerException:
        if shutil.which("dockerd") is None and shutil.which("docker") is None:
            fix = "install Docker (Debian: apt-get install docker.io), start it (dockerd &), then restart"
            return ImageCheck("unavailable", image, f"Docker is not installed: sandboxes cannot start; {fix}.")
        fix = "start it (systemctl start docker, or dockerd &) and run `make image`"
        return ImageCheck("unavailable", image, f"the Docker engine is not running: sandboxes cannot start; {fix}.")
    try:
        client.images.get(image)
        return ImageCheck("ready", image, f"{image} is on the Docker engine")
    except ImageNotFound:
        pass
    except DockerException as exc:
        return ImageCheck("unavailable", image, f"could not ask the Docker engine for {image}: {exc}")
    finally:
        client.close()
    script = find_build_script()
    if script is None:
        return ImageCheck(
            "unavailable", image, f"{image} is not on the Docker engine and images/build.sh is not here to build it."
        )
    return ImageCheck("build", image, f"{image} is not on the Docker engine: building it", script)


def find_build_script() -> Path | None:
    """``images/build.sh`` of the checkout this runs from, if there is one."""
    for root in (Path.cwd(), _SOURCE_ROOT):
        candidate = root / _BUILD_SCRIPT
        if candidate.is_file():
            return candidate
    return None


def build_command(check: ImageCheck) -> list[str]:
    """The command that builds the missing image (cached: a rebuild with unchanged inputs is a no-op)."""
    assert check.build_script is not None
    return ["bash", str(check.build_script), check.image]
