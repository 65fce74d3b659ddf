"""The ACP mirror's own queries: claiming a gateway session, its resume point and status.

Sessions created through the ACP gateway with the OpenCode agent live in OpenCode's store too (the
ACP session id *is* the OpenCode session id), so the OpenCode mirror would list them a second time.
The ACP mirror owns them: :func:`claim_session` removes a copy the OpenCode mirror may have made
first, and :func:`acp_session_ids` tells the OpenCode mirror which ids to leave alone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.domain.chat import SyncStatus
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import SessionRow, ensure_session, find_session, list_sessions
from agentpod.store.tables import AcpSyncState, ChatMessage, ChatSession, Sandbox

SOURCE = "acp_gateway"


async def claim_session(
    db: AsyncSession, *, sandbox_id: str, user_id: str, acp_session_id: str, agent_id: str | None, now: datetime
) -> SessionRow:
    """The row of a gateway session (created when new), with its agent; drops an OpenCode-mirror duplicate."""
    row = await find_session(db, sandbox_id, acp_session_id, source=SOURCE)
    if row is None:
        await db.execute(
            delete(ChatSession).where(
                ChatSession.sandbox_id == sandbox_id,
                ChatSession.source == "opencode",
                ChatSession.opencode_session_id == acp_session_id,
            )
        )
        row = await ensure_session(
            db, sandbox_id=sandbox_id, user_id=user_id, source=SOURCE, external_session_id=acp_session_id, now=now
        )
        await db.execute(
            update(ChatSession).where(ChatSession.id == row.id).values(upstream_created_at=now, last_message_at=None)
        )
    if agent_id:
        await db.execute(
            update(ChatSession)
            .where(ChatSession.id == row.id, ChatSession.acp_agent_id.is_(None))
            .values(acp_agent_id=agent_id[:64])
        )
    return row


async def acp_session_ids(db: AsyncSession, sandbox_id: str) -> set[str]:
    """Upstream ids of the sandbox's ACP sessions (the OpenCode mirror must not copy them)."""
    rows = await db.scalars(
        select(ChatSession.acp_session_id).where(
            ChatSession.sandbox_id == sandbox_id, ChatSession.source == SOURCE, ChatSession.acp_session_id.is_not(None)
        )
    )
    return {value for value in rows if value}


async def acp_sessions(db: AsyncSession, sandbox_id: str) -> dict[str, SessionRow]:
    """Every ACP session row of the sandbox by gateway session id."""
    return await list_sessions(db, sandbox_id, source=SOURCE)


async def unfinished_sessions(db: AsyncSession, sandbox_id: str) -> set[str]:
    """Gateway ids of the sandbox's ACP sessions holding a reply still marked ``streaming``."""
    rows = await db.scalars(
        select(ChatSession.acp_session_id)
        .join(ChatMessage, ChatMessage.session_id == ChatSession.id)
        .where(
            ChatSession.sandbox_id == sandbox_id,
            ChatSession.source == SOURCE,
            ChatMessage.role == "assistant",
            ChatMessage.status == "streaming",
        )
        .distinct()
    )
    return {value for value in rows if value}


async def latest_key(db: AsyncSession, session_row_id: str) -> str | None:
    """The greatest message key stored for a session (keys sort in conversation order)."""
    value = await db.scalar(
        select(func.max(ChatMessage.external_message_id)).where(ChatMessage.session_id == session_row_id)
    )
    return str(value) if value is not None else None


async def load_cursor(db: AsyncSession, sandbox_id: str) -> str | None:
    """The id of the last gateway event whose effects are committed (None: start with a reconcile)."""
    row = await db.get(AcpSyncState, sandbox_id)
    return row.last_event_id if row else None


async def save_cursor(db: AsyncSession, sandbox_id: str, event_id: str | None) -> None:
    """Record the resume point, in the caller's transaction (with the rows that event produced)."""
    row = await db.get(AcpSyncState, sandbox_id)
    if row is None:
        if await db.get(Sandbox, sandbox_id) is None:
            return
        db.add(AcpSyncState(sandbox_id=sandbox_id, last_event_id=event_id, status={}))
    elif row.last_event_id != event_id:
        row.last_event_id = event_id
        row.updated_at = utcnow()


async def load_acp_status(db: AsyncSession, sandbox_id: str) -> SyncStatus:
    """The ACP mirror's last saved status (defaults when it never ran)."""
    row = await db.get(AcpSyncState, sandbox_id)
    return SyncStatus.model_validate(row.status) if row is not None and row.status else SyncStatus()
