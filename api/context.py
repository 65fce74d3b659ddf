"""What the API process holds for its lifetime: settings, database, keyring, Temporal client."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from agentpod.notify import LocalNotifier, Notifier
from agentpod.security.keyring import Keyring
from agentpod.settings import Settings
from api.client_ip import Network


@dataclass
class AppContext:
    """Created in the lifespan, reached by dependencies through ``request.app.state.ctx``."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keyring: Keyring
    temporal: Client
    trusted_proxies: tuple[Network, ...] = field(default_factory=tuple)
    notifier: Notifier = field(default_factory=LocalNotifier)
