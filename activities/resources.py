"""Long-lived dependencies handed to activity classes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.settings import Settings


@dataclass
class WorkerResources:
    """What activities may use: settings, the database and the Temporal client."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    temporal: Client | None = None
