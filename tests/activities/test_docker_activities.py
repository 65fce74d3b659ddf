"""The Docker activities in Temporal's activity test environment, on the real engine and image."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.docker import DockerActivities
from activities.resources import WorkerResources
from agentpod.domain.sandbox import (
    ACP_GATEWAY_PORT,
    OPENCODE_PORT,
    DeliverConfigInput,
    RemoveContainerInput,
    WaitHealthyInput,
)
from agentpod.security.keyring import Keyring, generate_entry, parse_key
from agentpod.security.sandbox_secrets import gateway_secret
from agentpod.settings import Settings
from tests.clients import docker_client, make_spec, new_sandbox_id, purge


def _activities(tmp_path: Path, docker_host: str = "") -> DockerActivities:
    settings = Settings(data_dir=tmp_path, docker_host=docker_host)
    keyring = Keyring((parse_key(generate_entry()),))  # for the ACP gateway's secret
    # These activities never touch the database: an unbound session factory is enough.
    sessions = async_sessionmaker(class_=AsyncSession)
    return DockerActivities(WorkerResources(settings=settings, sessions=sessions, keyring=keyring))


@pytest.fixture(scope="module")
def raw() -> Iterator[Any]:
    client = docker_client()
    yield client
    client.close()


@pytest.fixture
async def sandbox_id(raw: Any) -> AsyncIterator[str]:
    """A fresh sandbox id whose containers and volumes are removed after the test, pass or fail."""
    sandbox_id = new_sandbox_id()
    try:
        yield sandbox_id
    finally:
        purge(raw, sandbox_id)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once to get a free number, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.docker
async def test_lifecycle_through_activities(tmp_path: Path, sandbox_id: str) -> None:
    acts = _activities(tmp_path)
    env = ActivityEnvironment()
    spec = make_spec(sandbox_id)

    created = await env.run(acts.docker_ensure_container, spec)
    assert created.exists and not created.running
    assert (await env.run(acts.docker_ensure_container, spec)).container_id == created.container_id

    started = await env.run(acts.docker_start_container, sandbox_id)
    assert started.running and OPENCODE_PORT in started.host_ports
    await env.run(acts.docker_deliver_agent_config, DeliverConfigInput(sandbox_id=sandbox_id, user_id="u1"))
    began = time.monotonic()
    opencode_url = f"http://127.0.0.1:{started.host_ports[OPENCODE_PORT]}"
    gateway_url = f"http://127.0.0.1:{started.host_ports[ACP_GATEWAY_PORT]}"
    # "Running" promises both servers: the wait covers the ACP gateway too.
    await env.run(
        acts.wait_opencode_healthy,
        WaitHealthyInput(base_url=opencode_url, gateway_url=gateway_url, timeout_seconds=20, sandbox_id=sandbox_id),
    )
    assert time.monotonic() - began < 20
    assert await env.run(acts.docker_inspect_container, sandbox_id) == started
    with pytest.raises(ApplicationError) as no_gateway:
        await env.run(
            acts.wait_opencode_healthy,
            WaitHealthyInput(
                base_url=opencode_url,
                gateway_url=f"http://127.0.0.1:{_closed_port()}",
                timeout_seconds=1,
                sandbox_id=sandbox_id,
            ),
        )
    assert no_gateway.value.type == "GatewayUnhealthy" and not no_gateway.value.non_retryable

    # The ACP gateway takes the delivered secret, and only it; the secret is nowhere in `docker inspect`.
    secret = gateway_secret(acts._resources.keys(), sandbox_id)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as gateway:
        wrong = await gateway.get("/agents", headers={"Authorization": "Bearer not-the-secret"})
        right = await gateway.get("/agents", headers={"Authorization": f"Bearer {secret}"})
    assert wrong.status_code == 401 and right.status_code == 200, right.text
    assert secret not in json.dumps(docker_client().api.inspect_container(started.container_id))

    stopped = await env.run(acts.docker_stop_container, sandbox_id)
    assert stopped.exists and not stopped.running

    await env.run(acts.docker_remove_container, RemoveContainerInput(sandbox_id=sandbox_id, remove_volumes=True))
    await env.run(acts.docker_remove_container, RemoveContainerInput(sandbox_id=sandbox_id, remove_volumes=True))
    assert (await env.run(acts.docker_inspect_container, sandbox_id)).exists is False
    assert (await env.run(acts.docker_stop_container, sandbox_id)).exists is False
    assert acts.engine is acts.engine  # created once, lazily


@pytest.mark.docker
async def test_missing_image_and_missing_container_are_not_retryable(tmp_path: Path, sandbox_id: str) -> None:
    acts = _activities(tmp_path)
    env = ActivityEnvironment()
    absent = make_spec(sandbox_id, image=f"agentpod-sandbox:absent-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ApplicationError) as image_error:
        await env.run(acts.docker_ensure_container, absent)
    assert image_error.value.type == "ImageMissing" and image_error.value.non_retryable

    with pytest.raises(ApplicationError) as gone_error:
        await env.run(acts.docker_start_container, sandbox_id)
    assert gone_error.value.type == "ContainerGone" and gone_error.value.non_retryable


@pytest.mark.docker
async def test_a_container_that_dies_while_starting_fails_the_health_wait_at_once(
    tmp_path: Path, sandbox_id: str
) -> None:
    acts = _activities(tmp_path)
    env = ActivityEnvironment()
    await env.run(acts.docker_ensure_container, make_spec(sandbox_id))
    started = await env.run(acts.docker_start_container, sandbox_id)
    # Killed before `ready`: OpenCode never starts, and the container is gone for good.
    docker_client().containers.get(started.container_id).kill()
    began = time.monotonic()
    with pytest.raises(ApplicationError) as error:
        await env.run(
            acts.wait_opencode_healthy,
            WaitHealthyInput(
                base_url=f"http://127.0.0.1:{started.host_ports[OPENCODE_PORT]}",
                timeout_seconds=60,
                sandbox_id=sandbox_id,
            ),
        )
    assert error.value.type == "ContainerExited" and error.value.non_retryable
    assert time.monotonic() - began < 10  # noticed within seconds, not at the 60 s timeout


async def test_docker_down_is_retryable(tmp_path: Path) -> None:
    acts = _activities(tmp_path, docker_host=f"unix:///tmp/no-docker-{uuid.uuid4().hex}.sock")
    with pytest.raises(ApplicationError) as error:
        await ActivityEnvironment().run(acts.docker_inspect_container, "x")
    assert error.value.type == "DockerUnavailable" and not error.value.non_retryable


async def test_wait_opencode_healthy_times_out_retryably_and_heartbeats(tmp_path: Path) -> None:
    env = ActivityEnvironment()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    began = time.monotonic()
    with pytest.raises(ApplicationError) as error:
        await env.run(
            _activities(tmp_path).wait_opencode_healthy,
            WaitHealthyInput(base_url=f"http://127.0.0.1:{_closed_port()}", timeout_seconds=1.0),
        )
    elapsed = time.monotonic() - began
    assert error.value.type == "OpenCodeUnhealthy" and not error.value.non_retryable
    assert "ConnectError" in str(error.value)
    assert 1.0 <= elapsed < 2.5
    assert len(heartbeats) >= 3  # one per poll (every 100 ms)
