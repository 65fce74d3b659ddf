"""Helpers shared by the tests that drive a real Docker engine and the real sandbox image."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any

import docker
import httpx

from agentpod.clients.docker_engine import LABEL_SANDBOX_ID
from agentpod.domain.sandbox import ContainerSpec, volume_names
from agentpod.settings import Settings
from tests.requirements import missing

# The image under test; CI may build another tag. Never built by the tests themselves.
SANDBOX_IMAGE = os.environ.get("AGENTPOD_SANDBOX_IMAGE") or str(Settings.model_fields["sandbox_image"].default)


def docker_client() -> Any:
    """A raw docker SDK client for checking what the code under test did; skip/fail if unusable."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure here means "no usable engine"
        missing(f"Docker engine not reachable (`docker info` fails): {exc}")
    try:
        client.images.get(SANDBOX_IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        missing(f"image {SANDBOX_IMAGE} is not built (run images/build.sh)")
    return client


def new_sandbox_id() -> str:
    """A sandbox id no other test (or earlier run) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def make_spec(sandbox_id: str, **changes: Any) -> ContainerSpec:
    """A small but complete spec on the image under test."""
    fields: dict[str, Any] = {
        "sandbox_id": sandbox_id,
        "user_id": "user-test",
        "name": "Test sandbox",
        "slug": "test-sandbox",
        "image": SANDBOX_IMAGE,
        "cpu_cores": 0.5,
        "memory_mb": 1024,
        "pids_limit": 256,
        "repo_name": "demo",
        "github_url": "https://example.com/acme/demo.git",
        "flavor_id": "base",
        "resource_tier_id": "small",
        "addon_ports": {"code-server": 8080},
    }
    fields.update(changes)
    return ContainerSpec(**fields)


def purge(client: Any, sandbox_id: str) -> None:
    """Remove every container and volume of ``sandbox_id``, not relying on the code under test."""
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX_ID}={sandbox_id}"}):
        container.remove(force=True)
    for name in volume_names(sandbox_id):
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(name).remove(force=True)


# What the tests that drive the engine directly give OpenCode as its server password.
TEST_OPENCODE_PASSWORD = "test-opencode-password"


def wait_healthy(host_port: int, timeout: float = 20.0) -> dict[str, Any]:
    """Poll OpenCode's health route on the loopback port until it reports healthy (with the password
    :data:`TEST_OPENCODE_PASSWORD`: OpenCode answers 401 to everything without it)."""
    url = f"http://127.0.0.1:{host_port}/global/health"
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=0.5, trust_env=False, auth=("opencode", TEST_OPENCODE_PASSWORD))
            body: dict[str, Any] = response.json()
            if body.get("healthy") is True:
                return body
            last = body
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"OpenCode on port {host_port} not healthy after {timeout} s: {last!r}")
