"""Chat queries: owner-scoped session and message pages (keyset), archive and unarchive, the row for a
session the app created, and the change feed the live stream relays.

Ordering never depends on insert time: sessions by last activity then upstream creation, messages by
upstream creation then upstream id. Every nullable sort column is placed explicitly (``NULLS LAST``),
because SQLite and PostgreSQL disagree on where NULLs go by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, and_, bindparam, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from agentpod.chat_mirror.opencode_mapping import session_values
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import ensure_session
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.sqlite_inline import inline_reads
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class InvalidCursor(ValueError):
    """A cursor that this API did not produce (or produced for another list)."""


def _to_micros(value: datetime | None) -> int | None:
    # Integer microseconds, exact: both databases store microseconds, a float would round.
    return None if value is None else (value - EPOCH) // _MICROSECOND


def _from_micros(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCursor("malformed cursor")
    try:
        return EPOCH + value * _MICROSECOND
    except OverflowError:
        raise InvalidCursor("malformed cursor") from None


def _encode(kind: str, payload: dict[str, Any]) -> str:
    raw = json.dumps({"k": kind, **payload}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(kind: str, cursor: str) -> dict[str, Any]:
    if len(cursor) > 1024:
        raise InvalidCursor("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("malformed cursor") from None
    if not isinstance(data, dict) or data.get("k") != kind:
        raise InvalidCursor("cursor does not belong to this list")
    return data


def _text(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value or len(value) > 256 or not _storable(value):
        raise InvalidCursor("malformed cursor")
    return value


def _storable(value: str) -> bool:
    # A forged cursor may carry NUL or a lone surrogate (JSON "\\u0000", "\\ud800"): neither can be sent
    # to the database (PostgreSQL refused the query: that was a 500).
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


# --- Sort-key helpers (NULL-aware keyset conditions, identical SQL on both databases) -----------------


def _after_desc_nulls_last(
    column: InstrumentedAttribute[datetime | None], value: datetime | None
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(strictly after, equal) for ``column DESC NULLS LAST``."""
    if value is None:
        return false(), column.is_(None)
    return or_(column < value, column.is_(None)), column == value


def _after_asc_nulls_last(
    column: InstrumentedAttribute[datetime | None] | ColumnElement[datetime | None],
    value: datetime | ColumnElement[Any] | None,
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(strictly after, equal) for ``column ASC NULLS LAST``."""
    if value is None:
        return false(), column.is_(None)
    return or_(column > value, column.is_(None)), column == value


def _before_asc_nulls_last(
    column: InstrumentedAttribute[datetime | None] | ColumnElement[datetime | None],
    value: datetime | ColumnElement[Any] | None,
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(strictly before, equal) for ``column ASC NULLS LAST``."""
    if value is None:
        return column.is_not(None), column.is_(None)
    return column < value, column == value


# --- Sessions ----------------------------------------------------------------------------------------

SessionStatus = Literal["active", "archived", "deleted"]


@dataclass(frozen=True)
class SessionKey:
    """Position in the session list: (last_message_at DESC, upstream_created_at DESC, id), NULLs last."""

    last_message_at: datetime | None
    upstream_created_at: datetime | None
    id: str

    @classmethod
    def of(cls, row: ChatSession) -> SessionKey:
        """The key of ``row``."""
        return cls(row.last_message_at, row.upstream_created_at, row.id)

    def encode(self) -> str:
        """Opaque base64url cursor."""
        return _encode(
            "s",
            {"l": _to_micros(self.last_message_at), "c": _to_micros(self.upstream_created_at), "i": self.id},
        )

    @classmethod
    def decode(cls, cursor: str) -> SessionKey:
        """Parse a cursor from :meth:`encode`; :class:`InvalidCursor` otherwise."""
        data = _decode("s", cursor)
        return cls(_from_micros(data.get("l")), _from_micros(data.get("c")), _text(data, "i"))


SESSION_ORDER = (
    ChatSession.last_message_at.desc().nulls_last(),
    ChatSession.upstream_created_at.desc().nulls_last(),
    ChatSession.id,
)


def session_after(key: SessionKey) -> ColumnElement[bool]:
    """Sessions strictly after ``key`` in :data:`SESSION_ORDER`."""
    after_last, same_last = _after_desc_nulls_last(ChatSession.last_message_at, key.last_message_at)
    after_created, same_created = _after_desc_nulls_last(ChatSession.upstream_created_at, key.upstream_created_at)
    return or_(after_last, and_(same_last, or_(after_created, and_(same_created, ChatSession.id > key.id))))


@dataclass
class SessionPage:
    """One page of the session list."""

    sessions: list[ChatSession]
    child_counts: dict[str, int]
    next_key: SessionKey | None
    total: int


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a list shows (a sandbox's list and the user's list take the same filters)."""

    status: SessionStatus = "active"
    include_children: bool = False
    source: str | None = None  # "opencode" or "acp_gateway"
    agent_id: str | None = None  # the ACP agent a session is with ("claude-code", "codex", ...)

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE conditions of this filter."""
        conditions = [ChatSession.status == self.status]
        if not self.include_children:
            # Subagent sessions are reached through their parent, not listed beside it.
            conditions.append(ChatSession.parent_session_id.is_(None))
        if self.source is not None:
            conditions.append(ChatSession.source == self.source)
        if self.agent_id is not None:
            conditions.append(ChatSession.acp_agent_id == self.agent_id)
        return conditions


async def list_sessions(
    db: AsyncSession,
    sandbox_id: str,
    *,
    filters: SessionFilter = SessionFilter(),
    limit: int = 50,
    after: SessionKey | None = None,
) -> SessionPage:
    """A page of a sandbox's sessions; ``total`` counts every session matching the same filters."""
    conditions = [ChatSession.sandbox_id == sandbox_id, *filters.conditions()]
    total = await db.scalar(select(func.count()).select_from(ChatSession).where(*conditions)) or 0
    query = select(ChatSession).where(*conditions)
    if after is not None:
        query = query.where(session_after(after))
    rows = list((await db.scalars(query.order_by(*SESSION_ORDER).limit(limit + 1))).all())
    next_key = SessionKey.of(rows[limit - 1]) if len(rows) > limit else None
    rows = rows[:limit]
    return SessionPage(rows, await child_counts(db, [row.id for row in rows]), next_key, total)


async def child_counts(db: AsyncSession, session_ids: Sequence[str]) -> dict[str, int]:
    """How many subagent sessions each of ``session_ids`` spawned (absent: none)."""
    if not session_ids:
        return {}
    rows = await db.execute(
        select(ChatSession.parent_session_id, func.count())
        .where(ChatSession.parent_session_id.in_(session_ids))
        .group_by(ChatSession.parent_session_id)
    )
    return {parent: count for parent, count in rows if parent is not None}


async def children_of(db: AsyncSession, session: ChatSession, *, limit: int = 100) -> list[ChatSession]:
    """The subagent sessions ``session`` spawned, in list order."""
    query = select(ChatSession).where(
        ChatSession.sandbox_id == session.sandbox_id, ChatSession.parent_session_id == session.id
    )
    return list((await db.scalars(query.order_by(*SESSION_ORDER).limit(limit))).all())


# Built once: every request on a chat session runs it. The sandbox is the outer side so that one
# query tells a foreign or missing sandbox (no row) from a missing session (a row without one).
_OWNED_SESSION = (
    select(Sandbox.id, ChatSession)
    .select_from(Sandbox)
    .outerjoin(
        ChatSession,
        and_(
            ChatSession.id == bindparam("session_id"),
            ChatSession.sandbox_id == Sandbox.id,
            ChatSession.user_id == Sandbox.user_id,
        ),
    )
    .where(Sandbox.id == bindparam("sandbox_id"), Sandbox.user_id == bindparam("user_id"))
)


async def get_owned_session(
    db: AsyncSession, user_id: str, sandbox_id: str, session_id: str
) -> tuple[bool, ChatSession | None]:
    """(whether ``user_id`` owns sandbox ``sandbox_id``, its session ``session_id`` or None), in one query."""
    params = {"session_id": session_id, "sandbox_id": sandbox_id, "user_id": user_id}
    with inline_reads():
        row = (await db.execute(_OWNED_SESSION, params)).first()
    return (False, None) if row is None else (True, row[1])


async def get_session(db: AsyncSession, sandbox: Sandbox, session_id: str) -> ChatSession | None:
    """The session if it belongs to ``sandbox`` (and its owner); None means 404 for the caller."""
    return (await get_owned_session(db, sandbox.user_id, sandbox.id, session_id))[1]


async def acp_session_rows(db: AsyncSession, sandbox: Sandbox, acp_session_ids: set[str]) -> list[ChatSession]:
    """The sandbox's ACP sessions with these gateway ids (owner-scoped like :func:`get_session`)."""
    if not acp_session_ids:
        return []
    rows = await db.scalars(
        select(ChatSession).where(
            ChatSession.sandbox_id == sandbox.id,
            ChatSession.user_id == sandbox.user_id,
            ChatSession.acp_session_id.in_(acp_session_ids),
        )
    )
    return list(rows.all())


async def archive_session(db: AsyncSession, session: ChatSession) -> bool:
    """Archive an active session; False when there was nothing to do (archived, or deleted upstream)."""
    if session.status != "active":
        return False
    session.status = "archived"
    await db.flush()
    return True


async def unarchive_session(db: AsyncSession, session: ChatSession) -> bool:
    """Make an archived session active again; False when there was nothing to do (not archived)."""
    if session.status != "archived":
        return False
    session.status = "active"
    await db.flush()
    return True


async def upsert_opencode_session(db: AsyncSession, sandbox: Sandbox, upstream: dict[str, Any]) -> ChatSession:
    """The row for a session just created in OpenCode (``upstream`` is its Session JSON).

    Read by the mirror's own mapping, and keyed like the sync's upsert, (sandbox_id, opencode_session_id):
    whichever writes first wins and the other leaves the row alone, so the app sees the session at once
    and never twice, linked to its parent session (``parentID``) like the mirror links it.
    """
    values = session_values(upstream)
    parent_id: str | None = None
    if values.parent_external_session_id:
        parent = await ensure_session(
            db,
            sandbox_id=sandbox.id,
            user_id=sandbox.user_id,
            source=values.source,
            external_session_id=values.parent_external_session_id,
            now=utcnow(),
        )
        parent_id = parent.id
    await db.execute(
        insert_for(dialect_of(db), ChatSession)
        .values(
            sandbox_id=sandbox.id,
            user_id=sandbox.user_id,
            source=values.source,
            opencode_session_id=values.external_session_id,
            parent_session_id=parent_id,
            title=values.title[:500] if values.title else None,  # the column's width
            upstream_created_at=values.upstream_created_at,
            upstream_updated_at=values.upstream_updated_at,
        )
        .on_conflict_do_nothing(index_elements=["sandbox_id", "opencode_session_id"])
    )
    row = await db.scalar(
        select(ChatSession)
        .where(
            ChatSession.sandbox_id == sandbox.id,
            ChatSession.opencode_session_id == values.external_session_id,
        )
        .execution_options(populate_existing=True)
    )
    assert row is not None  # inserted or already there, inside this transaction
    return row


# --- Messages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageKey:
    """Position in a conversation: (upstream_created_at ASC NULLS LAST, external_message_id ASC).

    Unique per session (UNIQUE(session_id, external_message_id)). OpenCode ids ascend within a
    millisecond, so they order messages created in the same millisecond correctly.
    """

    upstream_created_at: datetime | None
    external_message_id: str

    @classmethod
    def of(cls, row: ChatMessage | Row[Any]) -> MessageKey:
        """The key of ``row``."""
        return cls(row.upstream_created_at, row.external_message_id)

    def encode(self) -> str:
        """Opaque base64url cursor."""
        return _encode("m", {"t": _to_micros(self.upstream_created_at), "x": self.external_message_id})

    @classmethod
    def decode(cls, cursor: str) -> MessageKey:
        """Parse a cursor from :meth:`encode`; :class:`InvalidCursor` otherwise."""
        data = _decode("m", cursor)
        return cls(_from_micros(data.get("t")), _text(data, "x"))


# The page queries are the API's busiest reads: built once per shape from the table's columns (the ORM
# attributes' operators, and building a statement and its cache key per call, cost a fifth of a page's
# CPU) and run on the connection, past the ORM's result machinery. A cursor's values are parameters.
_M = ChatMessage.__table__.c
_PAGE_COLUMNS = {True: tuple(_M), False: tuple(c for c in _M if c.name != "content")}
_ORDER = {
    "after": (_M.upstream_created_at.asc().nulls_last(), _M.external_message_id.asc()),
    "before": (_M.upstream_created_at.desc().nulls_first(), _M.external_message_id.desc()),
}
Side = Literal["after", "before"]


def _beyond(side: Side, key_has_time: bool) -> ColumnElement[bool]:
    """Messages strictly after / before the cursor bound as ``t`` (if it has a time) and ``x``."""
    time: ColumnElement[Any] | None = bindparam("t") if key_has_time else None
    split = _after_asc_nulls_last if side == "after" else _before_asc_nulls_last
    strictly, same = split(_M.upstream_created_at, time)
    comparison = operator.gt if side == "after" else operator.lt
    return or_(strictly, and_(same, comparison(_M.external_message_id, bindparam("x"))))


def _in_session(side: Side, has_time: bool | None) -> tuple[ColumnElement[bool], ...]:
    """The session's messages beyond a cursor (``has_time`` None: no cursor, all of them)."""
    session = _M.session_id == bindparam("session_id")
    return (session,) if has_time is None else (session, _beyond(side, has_time))


# (side, whether the cursor has a time or None without a cursor, with content): every page's shape.
_PAGES = {
    (side, has_time, with_content): select(*_PAGE_COLUMNS[with_content])
    .where(*_in_session(side, has_time))
    .order_by(*_ORDER[side])
    .limit(bindparam("limit"))
    for side in ("after", "before")
    for has_time in (None, True, False)
    for with_content in (True, False)
}
# (side, has time) -> whether any message lies beyond the cursor; (side, None): any message at all.
_ANY_BEYOND = {
    (side, has_time): select(exists().where(*_in_session(side, has_time)))
    for side in ("after", "before")
    for has_time in (None, True, False)
}


def _cursor_params(key: MessageKey | None) -> tuple[bool | None, dict[str, Any]]:
    if key is None:
        return None, {}
    has_time = key.upstream_created_at is not None
    return has_time, ({"t": key.upstream_created_at} if has_time else {}) | {"x": key.external_message_id}


@dataclass
class MessagePage:
    """Messages in chronological order, and whether more exist on either side.

    Rows, not ORM objects: a page is read-only, and building 50 tracked instances was a third of a
    page request's CPU. They carry every column (``content`` only when asked for).
    """

    messages: list[Row[Any]]
    has_older: bool
    has_newer: bool


async def message_page(
    db: AsyncSession,
    session_id: str,
    *,
    limit: int = 50,
    before: MessageKey | None = None,
    after: MessageKey | None = None,
    with_content: bool = True,
) -> MessagePage:
    """A page of a session's messages: after ``after``, before ``before``, or else the newest ones.

    ``with_content=False`` leaves out the raw upstream parts (the largest column, JSON to decode):
    reading ``content`` on the returned rows then raises instead of loading it.
    """
    if before is not None and after is not None:
        raise ValueError("before and after are exclusive")
    side: Side = "after" if after is not None else "before"
    has_time, params = _cursor_params(after if after is not None else before)
    with inline_reads():  # index seeks bounded by the LIMIT: cheaper than two thread hand-offs each
        conn = await db.connection()
        query = _PAGES[side, has_time, with_content]
        rows = list((await conn.execute(query, {"session_id": session_id, "limit": limit + 1, **params})).all())
        more = len(rows) > limit
        rows = rows[:limit] if side == "after" else rows[:limit][::-1]
        if has_time is None:  # the newest page: nothing is newer
            return MessagePage(rows, has_older=more, has_newer=False)
        # The other side of the cursor: beyond the page's edge row, or (no rows) anywhere.
        other: Side = "before" if side == "after" else "after"
        edge = (rows[0] if side == "after" else rows[-1]) if rows else None
        edge_has_time, edge_params = _cursor_params(MessageKey.of(edge) if edge is not None else None)
        any_query = _ANY_BEYOND[other, edge_has_time]
        found = bool((await conn.execute(any_query, {"session_id": session_id, **edge_params})).scalar())
    return MessagePage(rows, has_older=found, has_newer=more) if side == "after" else MessagePage(rows, more, found)


# --- Change feed (what the live stream relays) -------------------------------------------------------

ChangeKind = Literal["session", "message"]
ChatRow = ChatSession | ChatMessage
_FEED_TABLES: tuple[tuple[ChangeKind, type[ChatSession] | type[ChatMessage]], ...] = (
    ("session", ChatSession),
    ("message", ChatMessage),
)
# The id part is empty only for STREAM_START (a sandbox without chat rows yet).
_CHANGE_KEY = re.compile(r"^(\d{1,19})_([A-Za-z0-9-]{0,64})$")


@dataclass(frozen=True, order=True)
class ChangeKey:
    """Position in a sandbox's change feed: (updated_at, row id), compared as a pair.

    The id breaks ties between rows written in the same microsecond, so a cursor never skips or
    repeats one of them. Keys are compared in Python as well as in SQL: row ids are UUIDs, on which
    code-point order and PostgreSQL's collations agree. Encoded as ``<microseconds>_<id>``, zero-padded
    so the text sorts like the key.
    """

    updated_at: datetime
    id: str

    def encode(self) -> str:
        """The SSE event id."""
        return f"{_to_micros(self.updated_at):016d}_{self.id}"

    @classmethod
    def decode(cls, value: str) -> ChangeKey:
        """Parse an event id from :meth:`encode`; :class:`InvalidCursor` otherwise."""
        match = _CHANGE_KEY.match(value.strip())
        if match is None:
            raise InvalidCursor("malformed event id")
        updated_at = _from_micros(int(match.group(1)))
        assert updated_at is not None
        return cls(updated_at, match.group(2))


STREAM_START = ChangeKey(EPOCH, "")


@dataclass(frozen=True)
class ChangedRow:
    """A row's identity and version in the change feed."""

    kind: ChangeKind
    key: ChangeKey


def _key_after(
    updated_at: InstrumentedAttribute[datetime], row_id: InstrumentedAttribute[str], key: ChangeKey
) -> ColumnElement[bool]:
    # The redundant first term is a plain range, so an index on updated_at can serve the query.
    return and_(
        updated_at >= key.updated_at,
        or_(updated_at > key.updated_at, and_(updated_at == key.updated_at, row_id > key.id)),
    )


def _key_at_most(
    updated_at: InstrumentedAttribute[datetime], row_id: InstrumentedAttribute[str], key: ChangeKey
) -> ColumnElement[bool]:
    return or_(updated_at < key.updated_at, and_(updated_at == key.updated_at, row_id <= key.id))


async def _changed(
    db: AsyncSession,
    sandbox_id: str,
    kind: ChangeKind,
    table: type[ChatSession] | type[ChatMessage],
    conditions: list[ColumnElement[bool]],
    limit: int | None,
) -> list[ChangedRow]:
    query = select(table.id, table.updated_at).where(*conditions)
    if table is ChatMessage:
        query = query.join(ChatSession, ChatMessage.session_id == ChatSession.id)
    query = query.where(ChatSession.sandbox_id == sandbox_id).order_by(table.updated_at, table.id)
    if limit is not None:
        query = query.limit(limit)
    rows = await db.execute(query)
    return [ChangedRow(kind, ChangeKey(updated_at, row_id)) for row_id, updated_at in rows]


async def changes_after(
    db: AsyncSession, sandbox_id: str, after: ChangeKey, *, limit: int
) -> tuple[list[ChangedRow], bool]:
    """Rows changed strictly after ``after``, in key order; True when more remain beyond the batch."""
    found: list[ChangedRow] = []
    cutoff: ChangeKey | None = None
    for kind, table in _FEED_TABLES:
        condition = _key_after(table.updated_at, table.id, after)
        batch = await _changed(db, sandbox_id, kind, table, [condition], limit)
        found.extend(batch)
        if len(batch) == limit:
            # This table may hold more beyond its batch: keep only keys the merged order has seen in full.
            cutoff = batch[-1].key if cutoff is None else min(cutoff, batch[-1].key)
    found.sort(key=lambda row: row.key)
    if cutoff is not None:
        found = [row for row in found if row.key <= cutoff]
    return found, cutoff is not None


async def changes_between(
    db: AsyncSession, sandbox_id: str, *, since: datetime, floor: ChangeKey, upto: ChangeKey
) -> list[ChangedRow]:
    """Rows whose key lies in (``floor``, ``upto``] and whose ``updated_at`` >= ``since``.

    The look-back scan: a writer stamps ``updated_at`` before it commits, so a row can become
    visible after rows with later stamps were already relayed.
    """
    found: list[ChangedRow] = []
    for kind, table in _FEED_TABLES:
        conditions = [
            table.updated_at >= since,
            _key_after(table.updated_at, table.id, floor),
            _key_at_most(table.updated_at, table.id, upto),
        ]
        found.extend(await _changed(db, sandbox_id, kind, table, conditions, None))
    return sorted(found, key=lambda row: row.key)


async def latest_change(db: AsyncSession, sandbox_id: str) -> ChangeKey:
    """The newest key in the sandbox's feed (where a stream without a cursor starts)."""
    newest = STREAM_START
    for _kind, table in _FEED_TABLES:
        query = select(table.id, table.updated_at)
        if table is ChatMessage:
            query = query.join(ChatSession, ChatMessage.session_id == ChatSession.id)
        query = query.where(ChatSession.sandbox_id == sandbox_id)
        row = (await db.execute(query.order_by(table.updated_at.desc(), table.id.desc()).limit(1))).first()
        if row is not None:
            newest = max(newest, ChangeKey(row[1], row[0]))
    return newest


async def load_changed(db: AsyncSession, sandbox_id: str, rows: Sequence[ChangedRow]) -> dict[str, ChatRow]:
    """The current version of each changed row, by id (rows deleted meanwhile are absent)."""
    loaded: dict[str, ChatRow] = {}
    session_ids = [row.key.id for row in rows if row.kind == "session"]
    message_ids = [row.key.id for row in rows if row.kind == "message"]
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        sessions = select(ChatSession).where(ChatSession.sandbox_id == sandbox_id, ChatSession.id.in_(chunk))
        loaded.update({row.id: row for row in await db.scalars(sessions)})
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        messages = (
            select(ChatMessage)
            .join(ChatSession, ChatMessage.session_id == ChatSession.id)
            .where(ChatSession.sandbox_id == sandbox_id, ChatMessage.id.in_(chunk))
        )
        loaded.update({row.id: row for row in await db.scalars(messages)})
    return loaded
