"""Queries behind the live streams: one statement per tick for all of a process's open streams (per thousand).

Each asks about many streams at once (expanding ``IN`` lists), so the cost of a tick does not grow with
the number of phones connected: is each stream's token still live (and its sandbox still the user's),
and which chat rows of the watched sandboxes changed lately.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import bindparam, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from agentpod.store.base import utcnow
from agentpod.store.tables import AuthSession, ChatMessage, ChatSession, Sandbox, User

# Built once, run with bound parameters (see "Hot statements" in docs/architecture.md).
_SESSIONS: BindParameter[str] = bindparam("sessions", expanding=True)
_SANDBOXES: BindParameter[str] = bindparam("sandboxes", expanding=True)
_SINCE: BindParameter[datetime] = bindparam("since")
# Ids per statement: SQLite allows 32,766 bound parameters, asyncpg 32,767.
CHUNK = 1000

_ACCESS = (
    select(AuthSession.id, Sandbox.id)
    .join(User, User.id == AuthSession.user_id)
    # Only the watched sandboxes the user still owns: a row per (live token, owned sandbox), or one
    # with no sandbox when the user owns none of them.
    .outerjoin(Sandbox, (Sandbox.user_id == User.id) & Sandbox.id.in_(_SANDBOXES))
    .where(
        AuthSession.id.in_(_SESSIONS),
        AuthSession.revoked_at.is_(None),
        AuthSession.expires_at > bindparam("now"),
        User.locked_at.is_(None),
    )
)

_RECENT = union_all(
    select(ChatSession.sandbox_id, ChatSession.id, ChatSession.updated_at).where(
        ChatSession.sandbox_id.in_(_SANDBOXES), ChatSession.updated_at >= _SINCE
    ),
    select(ChatSession.sandbox_id, ChatMessage.id, ChatMessage.updated_at)
    .join(ChatSession, ChatMessage.session_id == ChatSession.id)
    .where(ChatMessage.updated_at >= _SINCE, ChatSession.sandbox_id.in_(_SANDBOXES)),
)


async def stream_access(
    db: AsyncSession, auth_session_ids: Collection[str], sandbox_ids: Collection[str]
) -> dict[str, set[str]]:
    """Live tokens among ``auth_session_ids`` (not revoked, not expired, account not locked), each with
    the sandboxes among ``sandbox_ids`` its user owns. A token missing from the result is dead."""
    if not auth_session_ids:
        return {}
    params = {"sessions": list(auth_session_ids), "sandboxes": list(sandbox_ids), "now": utcnow()}
    live: dict[str, set[str]] = {}
    for session_id, sandbox_id in await db.execute(_ACCESS, params):
        owned = live.setdefault(session_id, set())
        if sandbox_id is not None:
            owned.add(sandbox_id)
    return live


async def recent_chat_changes(
    db: AsyncSession, sandbox_ids: Collection[str], since: datetime
) -> dict[str, set[tuple[str, datetime]]]:
    """Per sandbox, the ``(row id, updated_at)`` of its chat sessions and messages stamped at or after ``since``.

    One statement per thousand sandboxes (both databases cap bound parameters).
    """
    ordered = list(sandbox_ids)
    changed: dict[str, set[tuple[str, datetime]]] = {}
    for start in range(0, len(ordered), CHUNK):
        params = {"sandboxes": ordered[start : start + CHUNK], "since": since}
        for sandbox_id, row_id, updated_at in await db.execute(_RECENT, params):
            if sandbox_id is not None:  # always: the query asks for these sandboxes (kept sessions have none)
                changed.setdefault(sandbox_id, set()).add((row_id, updated_at))
    return changed
