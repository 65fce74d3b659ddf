"""Each chat mirror's persisted status per sandbox, so the chat API can show it even when Temporal is busy or down.

The OpenCode mirror's lives in ``chat_sync_state``, the ACP mirror's in ``acp_sync_state`` (beside its
resume point, :mod:`agentpod.store.acp_sync`): writers pass the table.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.chat import SyncStatus
from agentpod.store.base import utcnow
from agentpod.store.tables import AcpSyncState, ChatSyncState, Sandbox
from agentpod.store.write_gate import begin_write

StatusTable = TypeVar("StatusTable", ChatSyncState, AcpSyncState)


async def save_sync_status(
    db: AsyncSession, table: type[StatusTable], sandbox_id: str, status: SyncStatus, *, merge: bool = False
) -> None:
    """Write the status (``merge``: only the fields set on ``status``); no-op if the sandbox is gone."""
    await begin_write(db)
    row = await db.get(table, sandbox_id)
    if row is None:
        if await db.get(Sandbox, sandbox_id) is None:
            return
        row = table(sandbox_id=sandbox_id, status={})
        db.add(row)
    current = SyncStatus.model_validate(row.status or {})
    # ``restore`` has its own writer (the session restore, merging): a stream's full write keeps it.
    fields = status.model_fields_set if merge else set(SyncStatus.model_fields) - {"restore"}
    update = {name: getattr(status, name) for name in fields}
    row.status = current.model_copy(update=update).model_dump(mode="json")
    row.updated_at = utcnow()


async def commit_sync_status(
    sessions: async_sessionmaker[AsyncSession],
    table: type[StatusTable],
    sandbox_id: str,
    status: SyncStatus,
    *,
    merge: bool = False,
) -> None:
    """:func:`save_sync_status` in a transaction of its own."""
    async with sessions() as db:
        await save_sync_status(db, table, sandbox_id, status, merge=merge)
        await db.commit()


async def load_sync_status(db: AsyncSession, sandbox_id: str) -> SyncStatus:
    """The OpenCode mirror's last saved status (defaults when the sync never ran)."""
    row = await db.get(ChatSyncState, sandbox_id)
    return SyncStatus.model_validate(row.status) if row else SyncStatus()
