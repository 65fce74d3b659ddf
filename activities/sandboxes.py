"""Database side of the sandbox workflow: read the spec, write status and URLs, delete the row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.resources import WorkerResources
from agentpod.clients.opencode import DEFAULT_USERNAME, OpenCodeClient, RotatingBasicAuth
from agentpod.domain import contracts
from agentpod.domain.sandbox import (
    ACP_GATEWAY_PORT,
    OPENCODE_PORT,
    ConfigPendingInput,
    ContainerSpec,
    ContainerState,
    PushCredentialsInput,
    ReloadAgentInput,
    SandboxEndpoints,
    SandboxUrls,
    SetStatusInput,
)
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.settings import Settings
from agentpod.store import sandboxes
from agentpod.store.tables import ContainerAddon, ResourceTier, Sandbox

_LOCAL_DOMAINS = ("localhost", "127.0.0.1")
# How often a reload waiting for the agent to be idle asks again.
IDLE_POLL_SECONDS = 1.0


def sandbox_endpoints(settings: Settings, spec: ContainerSpec, state: ContainerState) -> SandboxEndpoints:
    """Public URLs: published loopback ports on a local install, subdomains behind a proxy otherwise."""

    def url(container_port: int, suffix: str) -> str | None:
        host_port = state.host_ports.get(container_port)
        if settings.public_domain in _LOCAL_DOMAINS:
            return f"http://{settings.public_domain}:{host_port}" if host_port else None
        return f"https://{spec.sandbox_id}{suffix}.{settings.public_domain}"

    addon_url = {addon: url(port, f"-{addon.split('-')[0]}") for addon, port in spec.addon_ports.items()}
    opencode_port = state.host_ports.get(OPENCODE_PORT)
    acp_port = state.host_ports.get(ACP_GATEWAY_PORT)
    if opencode_port is None:
        raise ApplicationError("container has no published OpenCode port", non_retryable=True)
    return SandboxEndpoints(
        urls=SandboxUrls(
            opencode_url=url(OPENCODE_PORT, "-api"),
            acp_gateway_url=url(ACP_GATEWAY_PORT, "-acp"),
            code_server_url=addon_url.get("code-server"),
            vnc_url=addon_url.get("vnc"),
        ),
        internal_opencode_url=f"http://127.0.0.1:{opencode_port}",
        internal_acp_url=f"http://127.0.0.1:{acp_port}" if acp_port else None,
    )


class SandboxActivities:
    """Activities the sandbox workflow uses for everything that is not Docker."""

    def __init__(self, resources: WorkerResources) -> None:
        self._settings = resources.settings
        self._sessions = resources.sessions
        self._secrets = resources.secrets
        self._keys = resources.keys

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [
            self.load_spec,
            self.set_status,
            self.endpoints,
            self.delete_row,
            self.push_agent_credentials,
            self.set_config_pending,
            self.reload_when_idle,
        ]

    @activity.defn(name=contracts.SANDBOX_LOAD_SPEC.name)
    async def load_spec(self, sandbox_id: str) -> ContainerSpec:
        """The container spec from the row, its tier and add-ons (non-retryable if the row is gone)."""
        async with self._sessions() as db:
            row = await db.get(Sandbox, sandbox_id)
            if row is None:
                raise ApplicationError(f"sandbox {sandbox_id} no longer exists", type="SandboxGone", non_retryable=True)
            tier = await db.get(ResourceTier, row.resource_tier_id)
            assert tier is not None  # foreign key
            rows = await db.execute(
                select(ContainerAddon.id, ContainerAddon.port).where(
                    ContainerAddon.id.in_(row.addon_ids), ContainerAddon.port.is_not(None)
                )
            )
            addon_ports = {addon_id: int(port) for addon_id, port in rows.all() if port is not None}
        return ContainerSpec(
            sandbox_id=row.id,
            user_id=row.user_id,
            name=row.name,
            slug=row.slug,
            image=self._settings.image_for_flavor(row.flavor_id),
            cpu_cores=float(tier.cpu_cores),
            memory_mb=tier.memory_gb * 1024,
            # Enough for builds, low enough that a fork bomb cannot starve the host.
            pids_limit=max(256, tier.memory_gb * 128),
            network=self._settings.docker_network,
            repo_name=row.repo_name,
            github_url=row.github_url,
            flavor_id=row.flavor_id,
            resource_tier_id=row.resource_tier_id,
            addon_ports=addon_ports,
        )

    @activity.defn(name=contracts.SANDBOX_SET_STATUS.name)
    async def set_status(self, data: SetStatusInput) -> bool:
        """Write the observed status; idempotent (same values, same row)."""
        async with self._sessions() as db:
            found = await sandboxes.set_status(
                db,
                data.sandbox_id,
                data.status,
                error_message=data.error_message,
                container_id=data.container_id,
                urls=data.urls,
                internal_opencode_url=data.internal_opencode_url,
                internal_acp_url=data.internal_acp_url,
            )
            await db.commit()
        return found

    @activity.defn(name=contracts.SANDBOX_ENDPOINTS.name)
    async def endpoints(self, spec: ContainerSpec, state: ContainerState) -> SandboxEndpoints:
        """URLs for the container's published ports (configuration lives in the worker, not the workflow)."""
        return sandbox_endpoints(self._settings, spec, state)

    @activity.defn(name=contracts.SANDBOX_DELETE_ROW.name)
    async def delete_row(self, sandbox_id: str) -> None:
        """Delete the row; deleting an already-deleted row is fine."""
        async with self._sessions() as db:
            await sandboxes.delete_row(db, sandbox_id)
            await db.commit()

    @activity.defn(name=contracts.SANDBOX_SET_CONFIG_PENDING.name)
    async def set_config_pending(self, data: ConfigPendingInput) -> None:
        """Record whether the running agent still waits for the user's changed configuration."""
        async with self._sessions() as db:
            await sandboxes.set_config_pending(db, data.sandbox_id, data.pending)
            await db.commit()

    @activity.defn(name=contracts.OPENCODE_RELOAD_WHEN_IDLE.name)
    async def reload_when_idle(self, data: ReloadAgentInput) -> bool:
        """Reload OpenCode's configuration once no session is busy; False when a turn kept it busy for
        ``idle_wait_seconds`` (the workflow tries again later: a turn in progress is never cut)."""
        deadline = asyncio.get_running_loop().time() + data.idle_wait_seconds
        passwords = opencode_passwords(self._keys(), data.sandbox_id)
        async with OpenCodeClient(data.opencode_url, passwords, timeout=10) as client:
            while True:
                if not await client.session_status():
                    # Checked and disposed back to back: the window for a prompt to slip in is one request.
                    await client.reload()
                    return True
                if asyncio.get_running_loop().time() > deadline:
                    return False
                activity.heartbeat()
                await asyncio.sleep(IDLE_POLL_SECONDS)

    @activity.defn(name=contracts.SANDBOX_PUSH_AGENT_CREDENTIALS.name)
    async def push_agent_credentials(self, data: PushCredentialsInput) -> int:
        """Give a healthy OpenCode the user's provider keys over its API, and take back the ones the user
        deleted; returns how many were set."""
        credentials = await self._secrets.agent_credentials(data.user_id)
        # OpenCode answers 401 to everything without the sandbox's server password.
        password = (
            RotatingBasicAuth(DEFAULT_USERNAME, opencode_passwords(self._keys(), data.sandbox_id))
            if data.sandbox_id
            else None
        )
        async with httpx.AsyncClient(base_url=data.opencode_url, timeout=10, auth=password, trust_env=False) as client:
            for provider_id, auth in credentials.providers.items():
                response = await client.put(f"/auth/{provider_id}", json=auth.model_dump())
                response.raise_for_status()
            # OpenCode keeps keys it was given in its store (the /data volume): a key the user deleted goes.
            # Providers connected by the installation's config have no stored key: deleting one is a no-op.
            listed = await client.get("/provider")
            listed.raise_for_status()
            connected = listed.json().get("connected") or []
            for provider_id in sorted(set(connected) - set(credentials.providers)):
                await client.delete(f"/auth/{provider_id}")
        return len(credentials.providers)
