"""Long-lived dependencies handed to activity classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from agentpod.domain.secrets import NoSecrets, SecretsProvider
from agentpod.security.keyring import Keyring, load_keyring
from agentpod.settings import Settings


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
