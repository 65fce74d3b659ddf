"""The archival batch as a Temporal activity: one database transaction per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.resources import WorkerResources
from agentpod.domain import contracts
from agentpod.domain.archival import ArchiveBatchInput, ArchiveBatchResult
from agentpod.store.archival import archive_batch


class ArchivalActivities:
    """Activities of the daily activity-log archival."""

    def __init__(self, resources: WorkerResources) -> None:
        self._sessions = resources.sessions

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.archive_activity_batch]

    @activity.defn(name=contracts.ARCHIVE_ACTIVITY_BATCH.name)
    async def archive_activity_batch(self, data: ArchiveBatchInput) -> ArchiveBatchResult:
        """Archive one batch and commit. Safe to retry: a committed batch's rows are gone from the hot
        table, so a retry simply takes the next ones; an uncommitted one rolled back entirely."""
        async with self._sessions.begin() as db:
            return await archive_batch(db, cutoff=data.cutoff, after=data.after, limit=data.limit)
