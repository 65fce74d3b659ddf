"""Persisted sync status per sandbox, so the chat API can show it even when Temporal is busy or down."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.domain.chat import SyncStatus
from agentpod.store.base import utcnow
from agentpod.store.tables import ChatSyncState, Sandbox
from agentpod.store.write_gate import begin_write


async def save_sync_status(db: AsyncSession, sandbox_id: str, status: SyncStatus, *, merge: bool = False) -> None:
    """Write the status (``merge``: only the fields set on ``status``); no-op if the sandbox is gone."""
    await begin_write(db)
    row = await db.get(ChatSyncState, sandbox_id)
    if row is None:
        if await db.get(Sandbox, sandbox_id) is None:
            return
        row = ChatSyncState(sandbox_id=sandbox_id, status={})
        db.add(row)
    current = SyncStatus.model_validate(row.status or {})
    update = status.model_dump(exclude_unset=True) if merge else status.model_dump()
    row.status = current.model_copy(update=update).model_dump(mode="json")
    row.updated_at = utcnow()


async def load_sync_status(db: AsyncSession, sandbox_id: str) -> SyncStatus:
    """The last saved status (defaults when the sync never ran)."""
    row = await db.get(ChatSyncState, sandbox_id)
    return SyncStatus.model_validate(row.status) if row else SyncStatus()
