"""Docker checks for tests: is the engine up, is the sandbox image built, what is left behind."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

from agentpod.clients.docker_network import sandbox_host_address
from agentpod.domain.sandbox import container_name, volume_names
from tests.fakes.opencode_server import opencode_config
from tests.requirements import missing

SANDBOX_IMAGE = "agentpod-sandbox:dev"


def docker_client() -> Any:
    """A client for the local engine, with the sandbox image present (else skip / fail in CI)."""
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        missing(f"no Docker engine: {exc}")
    try:
        client.images.get(SANDBOX_IMAGE)
    except ImageNotFound:
        missing(f"image {SANDBOX_IMAGE} is not built: run `make image`")
    return client


def bridge_agent_config(llm_port: int, **extra: Any) -> dict[str, Any]:
    """An OpenCode config for sandbox containers: the fake LLM on the host, reached through the
    sandbox network's gateway (the worker must allowlist the port: :func:`use_fake_llm_in_sandboxes`)."""
    host = sandbox_host_address(docker_client())
    return {**opencode_config(f"http://{host}:{llm_port}/v1"), **extra}


def use_fake_llm_in_sandboxes(
    monkeypatch: pytest.MonkeyPatch, llm_port: int, *, providers: Mapping[str, int] | None = None, **extra: Any
) -> dict[str, Any]:
    """Point the stack's sandboxes at the fake LLM: the installation's agent config names it, and the
    host firewall lets sandboxes reach its port (every other host port stays closed to them).
    ``providers``: more fake model servers by OpenCode provider id (``anthropic``, ``openai``), named as
    that provider's ``baseURL`` (which the ACP agents follow too) and allowlisted the same way."""
    config = bridge_agent_config(llm_port, **extra)
    host = sandbox_host_address(docker_client())
    services = {"fake-llm": llm_port}
    for provider, port in (providers or {}).items():
        config.setdefault("provider", {})[provider] = {"options": {"baseURL": f"http://{host}:{port}/v1"}}
        services[f"fake-{provider}"] = port
    # The stack builds its Settings from the environment (prefix AGENTPOD_) plus its own overrides.
    monkeypatch.setenv("AGENTPOD_AGENT_BASE_CONFIG", json.dumps(config))
    monkeypatch.setenv("AGENTPOD_SANDBOX_HOST_SERVICES", json.dumps(services))
    return config


def leftovers(client: Any, sandbox_id: str) -> tuple[list[str], list[str]]:
    """Containers and volumes of a sandbox that still exist."""
    # The low-level list: `containers.list` inspects each container after listing, and one removed in
    # between (a recreation in progress) made it raise NotFound.
    listed = client.api.containers(all=True, filters={"name": container_name(sandbox_id)})
    containers = [name.lstrip("/") for c in listed for name in c["Names"]]
    wanted = set(volume_names(sandbox_id))
    volumes = [v.name for v in client.volumes.list() if v.name in wanted]
    return containers, volumes


def purge(client: Any, sandbox_id: str) -> None:
    """Remove whatever a failed test left behind."""
    for container in client.containers.list(all=True, filters={"name": container_name(sandbox_id)}):
        container.remove(force=True)
    for name in volume_names(sandbox_id):
        with contextlib.suppress(DockerException):
            client.volumes.get(name).remove(force=True)
