"""Recording audit events from workflows (e.g. an operator stopping a sandbox in the Web UI)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.resources import WorkerResources
from agentpod.domain import contracts
from agentpod.domain.activity import RecordActivityInput
from agentpod.store.activity import record_activity


class ActivityLogActivities:
    """Activities writing the audit trail."""

    def __init__(self, resources: WorkerResources) -> None:
        self._sessions = resources.sessions

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.record_activity]

    @activity.defn(name=contracts.RECORD_ACTIVITY.name)
    async def record_activity(self, data: RecordActivityInput) -> None:
        """Insert the event once, however often Temporal retries this activity."""
        async with self._sessions() as db:
            await record_activity(db, data.event, event_id=data.event_id)
            await db.commit()
