"""Long-lived dependencies handed to activity classes, and the heartbeat they share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client

from agentpod.clients.docker_engine import DockerEngine
from agentpod.clients.sandbox_firewall import FirewallPolicy
from agentpod.domain.secrets import NoSecrets, SecretsProvider
from agentpod.security.keyring import Keyring, load_keyring
from agentpod.settings import Settings

T = TypeVar("T")


@dataclass
class WorkerResources:
    """What activities may use: settings, the database, the Temporal client and the key store."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    temporal: Client | None = None
    secrets: SecretsProvider = field(default_factory=NoSecrets)
    keyring: Keyring | None = None

    def keys(self) -> Keyring:
        """The keyring (loaded from settings on first use when none was given)."""
        if self.keyring is None:
            self.keyring = load_keyring(self.settings)
        return self.keyring

    def docker_engine(self) -> DockerEngine:
        """A client of the configured Docker engine (it connects on first use, so a worker starts even
        with Docker down)."""
        settings = self.settings
        firewall = (
            FirewallPolicy(settings.sandbox_host_services, tuple(settings.sandbox_blocked_networks))
            if settings.sandbox_firewall == "enforce"
            else None
        )
        return DockerEngine(settings.docker_host or None, firewall=firewall)


async def heartbeating(awaitable: Awaitable[T], *, every: float) -> T:
    """Await ``awaitable`` while heartbeating every ``every`` seconds, so a worker that dies meanwhile is
    noticed at the activity's heartbeat timeout, not at the end of its (long) start-to-close timeout."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()
