"""Long-lived dependencies handed to activity classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.settings import Settings
from domain.secrets import NoSecrets, SecretsProvider


@dataclass
class WorkerResources:
    """What activities may use: settings, the database, the Temporal client and the key store."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    temporal: Client | None = None
    secrets: SecretsProvider = field(default_factory=NoSecrets)
