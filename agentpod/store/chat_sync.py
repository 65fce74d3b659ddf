"""The one writer of mirrored chat rows (OpenCode now, the ACP sync later).

Every row is keyed by upstream ids — ``(sandbox_id, opencode_session_id)`` for sessions,
``(session_id, external_message_id)`` for messages — and written with the dialect's
``INSERT … ON CONFLICT DO UPDATE … WHERE <row differs and is not newer>``. Replays, retries and a
reconcile racing the live stream therefore converge on one row per upstream object and never regress
it; there is no SELECT-then-INSERT anywhere.

Callers that read before writing (merging parts, skipping unchanged rows) first take
:func:`lock_sandbox_chats`, which serializes the chat writers of one sandbox for the transaction.
Session counters are recomputed from the messages with SQL aggregates in the writing transaction
(:func:`recompute_session_stats`), never incremented, so they cannot drift.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, RowMapping, Table, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from agentpod.domain.activity import ActivityEvent
from agentpod.notify.channels import chat_channel
from agentpod.notify.postgres import pg_channel
from agentpod.store.activity import record_activity_once
from agentpod.store.base import new_id
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.tables.chat import ChatMessage, ChatSession
from agentpod.store.write_gate import begin_write

SESSIONS: Table = ChatSession.__table__  # type: ignore[assignment]
MESSAGES: Table = ChatMessage.__table__  # type: ignore[assignment]

# The upstream-id column of each source (the UNIQUE key an upsert conflicts on).
SESSION_KEY = {"opencode": "opencode_session_id", "acp_gateway": "acp_session_id"}
JSON_COLUMNS = frozenset({"content", "tool_calls", "tool_results"})


@dataclass(frozen=True)
class SessionValues:
    """What upstream says about a session."""

    source: str
    external_session_id: str
    title: str | None
    parent_external_session_id: str | None
    upstream_created_at: datetime | None
    upstream_updated_at: datetime | None


@dataclass(frozen=True)
class SessionRow:
    """A stored session, as the sync needs to see it."""

    id: str
    external_session_id: str
    status: str
    title: str | None
    parent_external_session_id: str | None
    upstream_created_at: datetime | None
    upstream_updated_at: datetime | None
    missing_upstream_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class MessageValues:
    """The normalized columns of one message (``content`` keeps the raw upstream objects)."""

    external_message_id: str
    source: str
    role: str
    content: dict[str, Any]
    text: str | None
    thinking: str | None
    tool_calls: list[Any] | None
    tool_results: list[Any] | None
    model_provider: str | None
    model_id: str | None
    agent_id: str | None
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost: Decimal
    status: str
    error_message: str | None
    upstream_created_at: datetime | None
    upstream_completed_at: datetime | None


MESSAGE_COLUMNS = tuple(f.name for f in fields(MessageValues))


@dataclass(frozen=True)
class MessageRow:
    """A stored message: its row id, its values, and the sync's own bookkeeping."""

    id: str
    values: MessageValues
    missing_upstream_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class SessionWrite:
    """Outcome of a session upsert."""

    id: str
    status: str
    written: bool


# --------------------------------------------------------------------------- locking


async def lock_sandbox_chats(db: AsyncSession, sandbox_id: str) -> None:
    """Serialize the chat writers of one sandbox until this transaction ends.

    Must be the first statement of the transaction. PostgreSQL: a transaction-scoped advisory lock
    on the sandbox (other sandboxes are not blocked), and in the same statement a ``NOTIFY`` on the
    sandbox's chat channel, which PostgreSQL sends only if the transaction commits: the API's live
    streams wake on it (``agentpod.notify.chat_feed``) instead of polling. One per transaction, no
    extra round trip. SQLite: the database's single write lock, taken up front through
    :func:`store.write_gate.begin_write` (a deferred transaction that read first could not safely write
    later); the streams poll there.
    """
    conn = await db.connection()
    if conn.dialect.name == "postgresql":
        key = func.hashtextextended(f"agentpod.chat:{sandbox_id}", 0)
        channel = pg_channel(chat_channel(sandbox_id))
        await conn.execute(select(func.pg_advisory_xact_lock(key), func.pg_notify(channel, "")))
    else:
        await begin_write(db)


# --------------------------------------------------------------------------- helpers


# A JSON column binds Python None as the JSON value ``null``; the mirror means SQL NULL.
_JSON_OR_SQL_NULL = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _message_params(values: MessageValues) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies ``content`` (every part of the message) on every write.
    params = {f"p_{name}": getattr(values, name) for name in MESSAGE_COLUMNS}
    # ``completed_at`` is upstream's completion time: our own clock would differ on every write.
    params["p_completed_at"] = values.upstream_completed_at
    return params


@functools.cache
def _message_upsert(dialect: str) -> Any:
    """The message upsert, built once per dialect and run with bound parameters.

    Building it per call (the ``excluded`` alias above all) cost a third of a busy worker's CPU.
    """
    columns = (*MESSAGE_COLUMNS, "completed_at", "id", "session_id", "created_at", "updated_at")
    values = {
        c: bindparam(f"p_{c}", type_=_JSON_OR_SQL_NULL if c in JSON_COLUMNS else MESSAGES.c[c].type) for c in columns
    }
    stmt = insert_for(dialect, MESSAGES).values(missing_upstream_at=None, **values)
    new = stmt.excluded
    updatable = [c for c in (*MESSAGE_COLUMNS, "completed_at") if c != "external_message_id"]
    return stmt.on_conflict_do_update(
        index_elements=["session_id", "external_message_id"],
        set_={**{c: new[c] for c in updatable}, "missing_upstream_at": None, "updated_at": new.updated_at},
        where=and_(
            ~_regression(MESSAGES.c.upstream_completed_at, new.upstream_completed_at),
            or_(
                *(MESSAGES.c[c].is_distinct_from(new[c]) for c in updatable),
                MESSAGES.c.missing_upstream_at.is_not(None),
            ),
        ),
    ).returning(MESSAGES.c.id)


def _session_row(row: RowMapping, key: str) -> SessionRow:
    return SessionRow(
        id=row["id"],
        external_session_id=row[key],
        status=row["status"],
        title=row["title"],
        parent_external_session_id=row["parent_external_session_id"],
        upstream_created_at=row["upstream_created_at"],
        upstream_updated_at=row["upstream_updated_at"],
        missing_upstream_at=row["missing_upstream_at"],
        created_at=row["created_at"],
    )


def _session_select(source: str) -> Any:
    key = SESSION_KEY[source]
    parent = aliased(SESSIONS)
    return select(
        SESSIONS.c.id,
        SESSIONS.c[key],
        SESSIONS.c.status,
        SESSIONS.c.title,
        parent.c[key].label("parent_external_session_id"),
        SESSIONS.c.upstream_created_at,
        SESSIONS.c.upstream_updated_at,
        SESSIONS.c.missing_upstream_at,
        SESSIONS.c.created_at,
    ).outerjoin(parent, parent.c.id == SESSIONS.c.parent_session_id)


# --------------------------------------------------------------------------- sessions


async def list_sessions(db: AsyncSession, sandbox_id: str, *, source: str = "opencode") -> dict[str, SessionRow]:
    """Every stored session of one sandbox and source, by upstream id (deleted ones included)."""
    key = SESSION_KEY[source]
    stmt = _session_select(source).where(
        SESSIONS.c.sandbox_id == sandbox_id, SESSIONS.c.source == source, SESSIONS.c[key].is_not(None)
    )
    rows = (await db.execute(stmt)).mappings()
    return {row[key]: _session_row(row, key) for row in rows}


async def find_session(
    db: AsyncSession, sandbox_id: str, external_session_id: str, *, source: str = "opencode"
) -> SessionRow | None:
    """One stored session by upstream id."""
    key = SESSION_KEY[source]
    stmt = _session_select(source).where(SESSIONS.c.sandbox_id == sandbox_id, SESSIONS.c[key] == external_session_id)
    row = (await db.execute(stmt)).mappings().one_or_none()
    return None if row is None else _session_row(row, key)


async def ensure_session(
    db: AsyncSession, *, sandbox_id: str, user_id: str, source: str, external_session_id: str, now: datetime
) -> SessionRow:
    """The session row for an upstream id, creating a placeholder (id only) when none exists yet.

    Events can arrive before the session they belong to (a message before its session, a child
    before its parent); the placeholder is filled in by the session's own upsert later. The insert
    is ON CONFLICT DO NOTHING, so a concurrent creator cannot make a second row.
    """
    found = await find_session(db, sandbox_id, external_session_id, source=source)
    if found is not None:
        return found
    key = SESSION_KEY[source]
    stmt = (
        insert_for(dialect_of(db), SESSIONS)
        .values(
            id=new_id(),
            sandbox_id=sandbox_id,
            user_id=user_id,
            source=source,
            status="active",
            last_synced_at=now,
            created_at=now,
            updated_at=now,
            **{key: external_session_id},
        )
        .on_conflict_do_nothing(index_elements=["sandbox_id", key])
    )
    await db.execute(stmt)
    row = await find_session(db, sandbox_id, external_session_id, source=source)
    assert row is not None  # inserted just now, or by the concurrent creator we conflicted with
    return row


def _revival(stored_status: Any, stored_updated: Any, incoming_updated: Any) -> ColumnElement[bool]:
    """SQL: a ``deleted`` row comes back only for a strictly newer upstream state (or a placeholder)."""
    return and_(stored_status == "deleted", or_(stored_updated.is_(None), incoming_updated > stored_updated))


def _revives(stored: SessionRow, values: SessionValues) -> bool:
    """:func:`_revival` in Python."""
    return stored.status == "deleted" and (
        stored.upstream_updated_at is None
        or (values.upstream_updated_at is not None and values.upstream_updated_at > stored.upstream_updated_at)
    )


def session_needs_write(stored: SessionRow, values: SessionValues) -> bool:
    """The same decision the upsert's WHERE makes, in Python, to skip the statement altogether."""
    if stored.upstream_updated_at is not None and (
        values.upstream_updated_at is None or values.upstream_updated_at < stored.upstream_updated_at
    ):
        return False  # what we hold is newer
    return (
        stored.title != values.title
        or stored.parent_external_session_id != values.parent_external_session_id
        or stored.upstream_created_at != values.upstream_created_at
        or stored.upstream_updated_at != values.upstream_updated_at
        or stored.missing_upstream_at is not None
        or _revives(stored, values)
    )


@functools.cache
def _session_upsert(dialect: str, key: str) -> Any:
    """The session upsert for the upstream-id column ``key``, built once (see :func:`_message_upsert`)."""

    def param(column: str, name: str | None = None) -> Any:
        return bindparam(f"p_{name or column}", type_=SESSIONS.c[column].type)

    now = param("updated_at", "now")
    stmt = insert_for(dialect, SESSIONS).values(
        {
            "id": param("id"),
            "sandbox_id": param("sandbox_id"),
            "user_id": param("user_id"),
            "source": param("source"),
            key: param(key, "external"),
            "title": param("title"),
            "parent_session_id": param("parent_session_id"),
            "upstream_created_at": param("upstream_created_at"),
            "upstream_updated_at": param("upstream_updated_at"),
            "status": "active",
            "last_synced_at": now,
            "created_at": now,
            "updated_at": now,
        }
    )
    new = stmt.excluded
    revive = _revival(SESSIONS.c.status, SESSIONS.c.upstream_updated_at, new.upstream_updated_at)
    changed = [SESSIONS.c[c].is_distinct_from(new[c]) for c in ("title", "parent_session_id", "upstream_created_at")]
    return stmt.on_conflict_do_update(
        index_elements=["sandbox_id", key],
        set_={
            "title": new.title,
            "parent_session_id": new.parent_session_id,
            "upstream_created_at": new.upstream_created_at,
            "upstream_updated_at": new.upstream_updated_at,
            "missing_upstream_at": None,
            "status": case((revive, "active"), else_=SESSIONS.c.status),
            "last_synced_at": new.last_synced_at,
            "updated_at": new.updated_at,
        },
        where=and_(
            or_(
                SESSIONS.c.upstream_updated_at.is_(None),
                new.upstream_updated_at >= SESSIONS.c.upstream_updated_at,
            ),
            or_(
                *changed,
                SESSIONS.c.upstream_updated_at.is_distinct_from(new.upstream_updated_at),
                SESSIONS.c.missing_upstream_at.is_not(None),
                revive,
            ),
        ),
    ).returning(SESSIONS.c.id, SESSIONS.c.status)


async def upsert_session(
    db: AsyncSession,
    *,
    sandbox_id: str,
    user_id: str,
    values: SessionValues,
    now: datetime,
    stored: SessionRow | None = None,
) -> SessionWrite:
    """Insert or update a session from upstream state; an older upstream state never wins.

    Seeing the session upstream clears ``missing_upstream_at``; a ``deleted`` row comes back only
    for a strictly newer upstream state (so a listing taken before a deletion cannot undo it).
    A parent not stored yet gets a placeholder, which its own upsert fills in later. Pass ``stored``
    (when already read) to skip the statement if nothing changed.
    """
    if stored is not None and not session_needs_write(stored, values):
        return SessionWrite(stored.id, stored.status, written=False)
    parent_id: str | None = None
    if values.parent_external_session_id:
        parent = await ensure_session(
            db,
            sandbox_id=sandbox_id,
            user_id=user_id,
            source=values.source,
            external_session_id=values.parent_external_session_id,
            now=now,
        )
        parent_id = parent.id
    params = {
        "p_id": new_id(),
        "p_sandbox_id": sandbox_id,
        "p_user_id": user_id,
        "p_source": values.source,
        "p_external": values.external_session_id,
        "p_title": values.title,
        "p_parent_session_id": parent_id,
        "p_upstream_created_at": values.upstream_created_at,
        "p_upstream_updated_at": values.upstream_updated_at,
        "p_now": now,
    }
    stmt = _session_upsert(dialect_of(db), SESSION_KEY[values.source])
    row = (await db.execute(stmt, params)).one_or_none()
    if row is not None:
        return SessionWrite(row.id, row.status, written=True)
    current = await find_session(db, sandbox_id, values.external_session_id, source=values.source)
    assert current is not None  # the conflict that skipped the update is this row
    return SessionWrite(current.id, current.status, written=False)


async def mark_session_deleted(db: AsyncSession, session_id: str, *, now: datetime) -> bool:
    """Tombstone a session deleted upstream: status ``deleted``, every message kept."""
    stmt = (
        update(SESSIONS)
        .where(SESSIONS.c.id == session_id, SESSIONS.c.status != "deleted")
        .values(status="deleted", updated_at=now)
    )
    return bool((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def flag_sessions_missing(db: AsyncSession, session_ids: Collection[str], *, now: datetime) -> int:
    """Flag sessions the agent's store no longer has (kept as they are, never deleted)."""
    if not session_ids:
        return 0
    stmt = (
        update(SESSIONS)
        .where(SESSIONS.c.id.in_(session_ids), SESSIONS.c.missing_upstream_at.is_(None))
        .values(missing_upstream_at=now, updated_at=now)
    )
    return int((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


@functools.cache
def _stats_update() -> Any:
    """The counters' UPDATE, built once (the mirror runs it on every turn) and run with bound parameters.

    One statement: rows whose counters already match are left alone, so an unchanged session keeps its
    ``updated_at`` and stays out of the change feed.
    """
    m = MESSAGES.c
    session_id = bindparam("p_session_id", type_=SESSIONS.c.id.type)
    aggregates = (
        select(
            func.count().label("message_count"),
            func.coalesce(func.sum(case((m.role == "user", 1), else_=0)), 0).label("user_message_count"),
            func.coalesce(func.sum(case((m.role == "assistant", 1), else_=0)), 0).label("assistant_message_count"),
            func.coalesce(func.sum(m.input_tokens), 0).label("total_input_tokens"),
            func.coalesce(func.sum(m.output_tokens), 0).label("total_output_tokens"),
            func.max(m.upstream_created_at).label("last_message_at"),
        )
        .where(m.session_id == session_id)
        .subquery()
    )
    changed = or_(*(SESSIONS.c[c.name].is_distinct_from(c) for c in aggregates.c))
    now = bindparam("p_now", type_=SESSIONS.c.updated_at.type)
    return (
        update(SESSIONS)
        .where(SESSIONS.c.id == session_id, changed)
        .values(**{c.name: c for c in aggregates.c}, updated_at=now)
    )


async def recompute_session_stats(db: AsyncSession, session_id: str, *, now: datetime) -> bool:
    """Set a session's counters from its messages (SQL aggregates, same transaction); True if changed.

    ``last_message_at`` is the newest upstream creation time, so back-filled messages sort correctly.
    """
    stmt = _stats_update()
    params = {"p_session_id": session_id, "p_now": now}
    return bool((await db.execute(stmt, params)).rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- messages


def _message_row(row: RowMapping) -> MessageRow:
    return MessageRow(
        id=row["id"],
        values=MessageValues(**{c: row[c] for c in MESSAGE_COLUMNS}),
        missing_upstream_at=row["missing_upstream_at"],
        created_at=row["created_at"],
    )


async def load_messages(
    db: AsyncSession, session_id: str, external_ids: Collection[str] | None = None
) -> dict[str, MessageRow]:
    """Stored messages of a session by upstream id (all of them, or just ``external_ids``)."""
    stmt = select(
        MESSAGES.c.id,
        *(MESSAGES.c[c] for c in MESSAGE_COLUMNS),
        MESSAGES.c.missing_upstream_at,
        MESSAGES.c.created_at,
    ).where(MESSAGES.c.session_id == session_id)
    if external_ids is not None:
        if not external_ids:
            return {}
        stmt = stmt.where(MESSAGES.c.external_message_id.in_(external_ids))
    rows = (await db.execute(stmt)).mappings()
    return {row["external_message_id"]: _message_row(row) for row in rows}


def _regression(stored_completed: Any, incoming_completed: Any) -> ColumnElement[bool]:
    """SQL: a completed message must not be overwritten by an unfinished state of itself."""
    return and_(stored_completed.is_not(None), incoming_completed.is_(None))


def message_needs_write(stored: MessageRow, values: MessageValues) -> bool:
    """The upsert's WHERE, in Python: differs from what is stored, and is not older."""
    if stored.values.upstream_completed_at is not None and values.upstream_completed_at is None:
        return False  # :func:`_regression`
    return stored.values != values or stored.missing_upstream_at is not None


async def upsert_message(
    db: AsyncSession,
    *,
    session_id: str,
    values: MessageValues,
    now: datetime,
    stored: MessageRow | None = None,
) -> bool:
    """Insert or update one message; True if a row was written.

    The row is rewritten only when some column differs and the new state is not older than the
    stored one (a completed message is never replaced by an unfinished copy). Seeing a message
    upstream clears its ``missing_upstream_at``. Pass ``stored`` to skip the statement when unchanged.
    """
    if stored is not None and not message_needs_write(stored, values):
        return False
    params = {**_message_params(values), "p_id": new_id(), "p_session_id": session_id}
    params["p_created_at"] = params["p_updated_at"] = now
    stmt = _message_upsert(dialect_of(db))
    return (await db.execute(stmt, params)).first() is not None


async def remove_message(db: AsyncSession, *, session_id: str, external_message_id: str) -> bool:
    """Delete a message removed upstream (revert, explicit delete); True if a row went."""
    stmt = delete(MESSAGES).where(
        MESSAGES.c.session_id == session_id, MESSAGES.c.external_message_id == external_message_id
    )
    return bool((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def remove_part(
    db: AsyncSession,
    *,
    session_id: str,
    external_message_id: str,
    part_id: str,
    rebuild: Callable[[MessageRow, dict[str, Any]], MessageValues],
    now: datetime,
) -> bool:
    """Drop one part from a message's content and re-derive its columns with ``rebuild``.

    ``rebuild(stored_row, new_content)`` is the source's own mapping (parts are source-specific).
    """
    stored = (await load_messages(db, session_id, [external_message_id])).get(external_message_id)
    if stored is None:
        return False
    parts = stored.values.content.get("parts") or []
    kept = [p for p in parts if not (isinstance(p, dict) and p.get("id") == part_id)]
    if len(kept) == len(parts):
        return False
    values = rebuild(stored, {**stored.values.content, "parts": kept})
    return await upsert_message(db, session_id=session_id, values=values, now=now, stored=stored)


async def flag_messages_missing(db: AsyncSession, message_ids: Collection[str], *, now: datetime) -> int:
    """Flag messages upstream no longer lists, where removing them is not safe to conclude."""
    if not message_ids:
        return 0
    stmt = (
        update(MESSAGES)
        .where(MESSAGES.c.id.in_(message_ids), MESSAGES.c.missing_upstream_at.is_(None))
        .values(missing_upstream_at=now, updated_at=now)
    )
    return int((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def mark_interrupted(db: AsyncSession, session_ids: Collection[str], *, now: datetime) -> int:
    """Mark unfinished assistant turns of these sessions ``interrupted`` (their agent will not finish them)."""
    if not session_ids:
        return 0
    stmt = (
        update(MESSAGES)
        .where(
            MESSAGES.c.session_id.in_(session_ids),
            MESSAGES.c.role == "assistant",
            MESSAGES.c.status == "streaming",
        )
        .values(status="interrupted", updated_at=now)
    )
    return int((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


__all__ = [
    "MessageRow",
    "MessageValues",
    "SessionRow",
    "SessionValues",
    "SessionWrite",
    "ensure_session",
    "find_session",
    "flag_messages_missing",
    "flag_sessions_missing",
    "list_sessions",
    "load_messages",
    "lock_sandbox_chats",
    "mark_interrupted",
    "mark_session_deleted",
    "message_needs_write",
    "recompute_session_stats",
    "remove_message",
    "remove_part",
    "session_needs_write",
    "upsert_message",
    "upsert_session",
]


_FINISHED_REPLY = ("complete", "error", "cancelled")


async def record_reply_received(
    db: AsyncSession, *, user_id: str, session_row_id: str, values: MessageValues, stored: MessageRow | None
) -> None:
    """Audit ``chat.message_receive`` when an assistant reply first reaches a final state.

    The event id is derived from the message, so the live path, a reconcile and retries record it once.
    """
    if values.role != "assistant" or values.status not in _FINISHED_REPLY:
        return
    if stored is not None and stored.values.status == values.status:
        return
    event = ActivityEvent(
        user_id=user_id,
        action="chat.message_receive",
        entity_type="chat_session",
        entity_id=session_row_id,
        metadata={
            "message_id": values.external_message_id,
            "status": values.status,
            "model": values.model_id,
            "output_tokens": values.output_tokens,
        },
    )
    event_id = str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"chat.message_receive:{session_row_id}:{values.external_message_id}")
    )
    await record_activity_once(db, event, event_id=event_id)
