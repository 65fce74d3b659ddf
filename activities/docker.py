"""Sandbox containers on the Docker engine, and waiting for the agent inside to come up.

The engine calls are synchronous; each runs in a thread while the activity heartbeats, so a
worker that dies mid-call is noticed by its heartbeat timeout rather than the (long) start-to-close
timeout. Every activity is idempotent (see :mod:`agentpod.clients.docker_engine`), so Temporal may
retry any of them freely. A cancelled activity stops waiting, but the engine call already in
flight finishes in its thread; that is harmless for the same reason.

Errors reach workflows as ``ApplicationError`` with ``type`` set to the engine exception's name:
``ImageMissing``, ``ContainerGone`` and ``SandboxNetworkError`` are non-retryable (retrying cannot
help: build the image, ensure the container again, or fix the network as the message says);
``DockerUnavailable`` and the rest are retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.resources import WorkerResources, heartbeating
from agentpod.agent_config import agent_files
from agentpod.clients.docker_engine import ContainerGone, DockerEngineError, ImageMissing, SandboxNetworkError
from agentpod.clients.opencode import DEFAULT_USERNAME, RotatingBasicAuth
from agentpod.domain import contracts
from agentpod.domain.sandbox import (
    ContainerSpec,
    ContainerState,
    DeliverConfigInput,
    RemoveContainerInput,
    WaitHealthyInput,
)
from agentpod.security.sandbox_secrets import gateway_secret, opencode_password, opencode_passwords

T = TypeVar("T")

HEARTBEAT_SECONDS = 1.0
HEALTH_POLL_SECONDS = 0.1
# Longest a single health request may take; later probes run meanwhile (see wait_opencode_healthy).
HEALTH_REQUEST_TIMEOUT = 5.0
CONTAINER_CHECK_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 10


def _forget_result(task: asyncio.Future[Any]) -> None:
    # After a cancellation nobody awaits the thread's outcome; fetch it so asyncio does not
    # log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class DockerActivities:
    """Activities creating, starting, stopping and removing sandbox containers."""

    def __init__(self, resources: WorkerResources) -> None:
        self._base_config = resources.settings.agent_base_config
        self._secrets = resources.secrets
        self._resources = resources
        self.engine = resources.docker_engine()

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [
            self.docker_deliver_agent_config,
            self.docker_ensure_container,
            self.docker_start_container,
            self.docker_stop_container,
            self.docker_remove_container,
            self.docker_inspect_container,
            self.wait_opencode_healthy,
        ]

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking engine call in a thread, heartbeating until it returns."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        task.add_done_callback(_forget_result)
        try:
            return await heartbeating(task, every=HEARTBEAT_SECONDS)
        except (ImageMissing, ContainerGone, SandboxNetworkError) as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        except DockerEngineError as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__) from exc

    @activity.defn(name=contracts.DOCKER_ENSURE_CONTAINER.name)
    async def docker_ensure_container(self, spec: ContainerSpec) -> ContainerState:
        """Create volumes and container if missing (or recreate it for a changed spec); not started."""
        return await self._call(self.engine.ensure_container, spec)

    @activity.defn(name=contracts.DOCKER_START_CONTAINER.name)
    async def docker_start_container(self, sandbox_id: str) -> ContainerState:
        """Start the container; the result carries the host ports Docker chose."""
        return await self._call(self.engine.start, sandbox_id)

    @activity.defn(name=contracts.DOCKER_STOP_CONTAINER.name)
    async def docker_stop_container(self, sandbox_id: str) -> ContainerState:
        """Stop the container; a missing container yields ``exists=False``."""
        return await self._call(self.engine.stop, sandbox_id, STOP_TIMEOUT_SECONDS)

    @activity.defn(name=contracts.DOCKER_REMOVE_CONTAINER.name)
    async def docker_remove_container(self, data: RemoveContainerInput) -> None:
        """Remove the container and, if asked, its volumes; missing ones are fine."""
        await self._call(self.engine.remove, data.sandbox_id, data.remove_volumes)

    @activity.defn(name=contracts.DOCKER_INSPECT_CONTAINER.name)
    async def docker_inspect_container(self, sandbox_id: str) -> ContainerState:
        """What Docker says about the sandbox's container now."""
        return await self._call(self.engine.inspect, sandbox_id)

    @activity.defn(name=contracts.DOCKER_DELIVER_AGENT_CONFIG.name)
    async def docker_deliver_agent_config(self, data: DeliverConfigInput) -> None:
        """Write the agent's OpenCode config (keys included), the user's AGENTS.md, custom agents and
        commands, OpenCode's server password and the ACP gateway's secret into the container's tmpfs,
        then `ready`.

        Secrets are fetched and written inside this one activity so they never pass through Temporal
        history, container env or labels. The entrypoint starts OpenCode once `ready` exists.
        """
        credentials = await self._secrets.agent_credentials(data.user_id)
        keys = self._resources.keys()
        files = {
            **agent_files(self._base_config, credentials),
            "gateway-secret": gateway_secret(keys, data.sandbox_id).encode(),
            # Without it the entrypoint does not start OpenCode: no managed agent server is ever open.
            "opencode-password": opencode_password(keys, data.sandbox_id).encode(),
        }
        # One `docker exec` for all of them (each costs ~50 ms), `ready` created after the rest.
        await self._call(self._write_then_ready, data.sandbox_id, files)

    def _write_then_ready(self, sandbox_id: str, files: dict[str, bytes]) -> None:
        self.engine.write_secret_files(sandbox_id, files, then_touch="ready")

    @activity.defn(name=contracts.WAIT_OPENCODE_HEALTHY.name)
    async def wait_opencode_healthy(self, data: WaitHealthyInput) -> None:
        """Poll ``GET {base_url}/global/health`` every 100 ms until it says ``healthy: true``; then,
        when ``gateway_url`` is set, the ACP gateway's ``/health`` the same way (it starts beside
        OpenCode, so it is almost always up by then: one request).

        Probes overlap instead of waiting for each other: a request that reaches OpenCode in the
        instant it starts listening is never answered, and waiting it out would add its whole
        timeout to every sandbox start. Raises a retryable ``ApplicationError`` (type
        ``OpenCodeUnhealthy`` / ``GatewayUnhealthy``) on timeout, carrying the last answer or error.
        """
        deadline = asyncio.get_running_loop().time() + data.timeout_seconds
        # trust_env=False: a proxy from the environment must not sit between us and a sandbox.
        # OpenCode answers 401 to everything without its server password, the health route included.
        auth = (
            RotatingBasicAuth(DEFAULT_USERNAME, opencode_passwords(self._resources.keys(), data.sandbox_id))
            if data.sandbox_id
            else None
        )
        async with httpx.AsyncClient(trust_env=False, timeout=HEALTH_REQUEST_TIMEOUT, auth=auth) as client:
            await self._wait_healthy(client, data, "OpenCode", data.base_url.rstrip("/") + "/global/health", deadline)
            if data.gateway_url:
                url = data.gateway_url.rstrip("/") + "/health"
                await self._wait_healthy(client, data, "Gateway", url, deadline)

    async def _wait_healthy(
        self, client: httpx.AsyncClient, data: WaitHealthyInput, what: str, url: str, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        next_probe = loop.time()
        next_container_check = loop.time() + CONTAINER_CHECK_SECONDS
        last = "no answer yet"
        probes: set[asyncio.Task[tuple[bool, str]]] = set()
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    raise ApplicationError(
                        f"{what} at {url} not healthy after {data.timeout_seconds:g} s ({last})",
                        type=f"{what}Unhealthy",
                    )
                if data.sandbox_id and now >= next_container_check:
                    next_container_check = now + CONTAINER_CHECK_SECONDS
                    await self._fail_if_exited(data.sandbox_id, last)
                if now >= next_probe:
                    activity.heartbeat(last)
                    probes.add(asyncio.create_task(_probe_health(client, url)))
                    next_probe = now + HEALTH_POLL_SECONDS
                wait = min(next_probe, deadline) - now
                if not probes:
                    await asyncio.sleep(wait)
                    continue
                done, probes = await asyncio.wait(probes, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for probe in done:
                    healthy, last = probe.result()
                    if healthy:
                        return
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)

    async def _fail_if_exited(self, sandbox_id: str, last: str) -> None:
        """A container that stopped (killed, crashed) will never turn healthy: say so now."""
        state = await self._call(self.engine.inspect, sandbox_id)
        if not state.running:
            raise ApplicationError(
                f"the container {'exited' if state.exists else 'is gone'} before OpenCode was healthy "
                f"(status {state.docker_status or 'none'}; last probe: {last})",
                type="ContainerExited",
                non_retryable=True,
            )


async def _probe_health(client: httpx.AsyncClient, url: str) -> tuple[bool, str]:
    """One health request: (healthy, what was seen)."""
    try:
        response = await client.get(url)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
        return False, f"{type(exc).__name__}: {exc}"
    # OpenCode answers {"healthy": true}; the ACP gateway {"status": "ok"}.
    if isinstance(body, dict) and (body.get("healthy") is True or body.get("status") == "ok"):
        return True, "healthy"
    return False, f"HTTP {response.status_code}: {response.text[:200]}"
