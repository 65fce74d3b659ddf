"""The user's chat sessions across their sandboxes, live and deleted: the list, one session, and purging
what deleted sandboxes left behind.

Deleting a sandbox keeps its sessions (:func:`agentpod.store.sandboxes.delete_row`): ``sandbox_id``
becomes NULL and ``deleted_sandbox_id`` / ``deleted_sandbox_name`` say what the sandbox was. Here a
session's sandbox is ``sandbox_id`` while it lives and ``deleted_sandbox_id`` after. Ownership is the
session's ``user_id``: another user's session is absent, never an error of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.store.chat import SESSION_ORDER, SessionFilter, SessionKey, child_counts, session_after
from agentpod.store.sqlite_inline import inline_reads
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox

# Statements take at most this many ids in one IN list (both databases cap bound parameters).
_CHUNK = 500


@dataclass(frozen=True)
class UserSession:
    """A session with what the user sees of its sandbox: the live name, or the name it had when deleted."""

    row: ChatSession
    live_sandbox_name: str | None

    @property
    def sandbox_exists(self) -> bool:
        """Whether the session's sandbox still exists."""
        return self.row.sandbox_id is not None

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox the session was held in, live or deleted (None only for a row deleted around
        :func:`~agentpod.store.sandboxes.delete_row`, which no path of ours does)."""
        return self.row.sandbox_id or self.row.deleted_sandbox_id

    @property
    def sandbox_name(self) -> str | None:
        """The sandbox's name now, or as it was when deleted."""
        return self.live_sandbox_name if self.sandbox_exists else self.row.deleted_sandbox_name


def _with_sandbox() -> Select[ChatSession, str]:
    # The owner is part of the join: a sandbox row is only ever named for its own user. The name is
    # NULL for a deleted sandbox (an outer join; the typing cannot say so).
    on = and_(Sandbox.id == ChatSession.sandbox_id, Sandbox.user_id == ChatSession.user_id)
    return select(ChatSession, Sandbox.name).outerjoin(Sandbox, on)


def in_sandbox(sandbox_id: str) -> ColumnElement[bool]:
    """Sessions of ``sandbox_id``, whether it still exists or was deleted."""
    return or_(ChatSession.sandbox_id == sandbox_id, ChatSession.deleted_sandbox_id == sandbox_id)


@dataclass
class UserSessionPage:
    """One page of the user's sessions."""

    sessions: list[UserSession]
    child_counts: dict[str, int]
    next_key: SessionKey | None
    total: int


async def list_sessions(
    db: AsyncSession,
    user_id: str,
    *,
    sandbox_id: str | None = None,
    sandbox_exists: bool | None = None,
    filters: SessionFilter = SessionFilter(),
    limit: int = 50,
    after: SessionKey | None = None,
) -> UserSessionPage:
    """A page of the user's sessions in every sandbox (most recently active first, like a sandbox's list).

    ``sandbox_id`` narrows to one sandbox, live or deleted; ``sandbox_exists`` to live (True) or deleted
    (False) sandboxes. ``total`` counts every session matching the same filters.
    """
    conditions: list[ColumnElement[bool]] = [ChatSession.user_id == user_id, *filters.conditions()]
    if sandbox_id is not None:
        conditions.append(in_sandbox(sandbox_id))
    if sandbox_exists is not None:
        conditions.append(ChatSession.sandbox_id.is_not(None) if sandbox_exists else ChatSession.sandbox_id.is_(None))
    total = await db.scalar(select(func.count()).select_from(ChatSession).where(*conditions)) or 0
    query = _with_sandbox().where(*conditions)
    if after is not None:
        query = query.where(session_after(after))
    rows = [UserSession(row, name) for row, name in await db.execute(query.order_by(*SESSION_ORDER).limit(limit + 1))]
    next_key = SessionKey.of(rows[limit - 1].row) if len(rows) > limit else None
    rows = rows[:limit]
    return UserSessionPage(rows, await child_counts(db, [item.row.id for item in rows]), next_key, total)


# Built once: every request on a session through the user-level routes runs it.
_OWNED = _with_sandbox().where(ChatSession.id == bindparam("session_id"), ChatSession.user_id == bindparam("user_id"))


async def get_session(db: AsyncSession, user_id: str, session_id: str) -> UserSession | None:
    """The user's session ``session_id`` in any sandbox, live or deleted; None for a missing or foreign one."""
    with inline_reads():  # a primary-key lookup
        found = (await db.execute(_OWNED, {"session_id": session_id, "user_id": user_id})).first()
    return None if found is None else UserSession(found[0], found[1])


async def children(db: AsyncSession, session: ChatSession, *, limit: int = 100) -> list[UserSession]:
    """The subagent sessions ``session`` spawned, in list order."""
    query = _with_sandbox().where(ChatSession.user_id == session.user_id, ChatSession.parent_session_id == session.id)
    return [UserSession(row, name) for row, name in await db.execute(query.order_by(*SESSION_ORDER).limit(limit))]


@dataclass(frozen=True)
class Purged:
    """What a purge deleted."""

    sessions: int
    messages: int


async def _delete_sessions(db: AsyncSession, session_ids: Sequence[str]) -> Purged:
    sessions = messages = 0
    for start in range(0, len(session_ids), _CHUNK):
        chunk = list(session_ids[start : start + _CHUNK])
        # Messages first, explicitly, rather than trusting every backend's cascade.
        result: Any = await db.execute(
            delete(ChatMessage).where(ChatMessage.session_id.in_(chunk)).execution_options(synchronize_session=False)
        )
        messages += int(result.rowcount or 0)
        result = await db.execute(
            delete(ChatSession).where(ChatSession.id.in_(chunk)).execution_options(synchronize_session=False)
        )
        sessions += int(result.rowcount or 0)
    return Purged(sessions, messages)


async def purge_session(db: AsyncSession, session: ChatSession) -> Purged:
    """Delete a kept session for good: its messages, and its subagent sessions (all levels) with theirs.

    Only sessions whose sandbox is deleted: a live sandbox's agent still holds the conversation, and
    its mirror would copy it back. The caller commits.
    """
    if session.sandbox_id is not None:
        raise ValueError("only a deleted sandbox's sessions are purged")
    found, frontier = [session.id], [session.id]
    while frontier:
        spawned: list[str] = []
        for start in range(0, len(frontier), _CHUNK):
            query = select(ChatSession.id).where(
                ChatSession.user_id == session.user_id,
                ChatSession.sandbox_id.is_(None),
                ChatSession.parent_session_id.in_(frontier[start : start + _CHUNK]),
            )
            spawned += (await db.scalars(query)).all()
        frontier = [session_id for session_id in spawned if session_id not in found]
        found += frontier
    return await _delete_sessions(db, found)


async def purge_deleted_sandbox(db: AsyncSession, user_id: str, sandbox_id: str) -> Purged:
    """Delete for good every session (and message) the user kept from deleted sandbox ``sandbox_id``.

    Nothing of a live sandbox: its sessions have a ``sandbox_id``. The caller commits.
    """
    kept = select(ChatSession.id).where(
        ChatSession.user_id == user_id, ChatSession.sandbox_id.is_(None), ChatSession.deleted_sandbox_id == sandbox_id
    )
    return await _delete_sessions(db, list((await db.scalars(kept)).all()))
