"""What the API process holds for its lifetime: settings, database, keyring, Temporal client."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.client_ip import Network
from core.settings import Settings
from notify import LocalNotifier, Notifier
from security.keyring import Keyring


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
