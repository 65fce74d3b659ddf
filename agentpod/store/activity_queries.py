"""Reading one user's audit trail: keyset pages, counts by action, a full export, one entity's history.

Every query is scoped by ``user_id`` in SQL; no function here can return another user's row.
Order is newest first, ``(created_at, id)`` descending, which the
``(user_id, created_at, id)`` index serves directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store.tables import ActivityLog

_LOG = cast(Table, ActivityLog.__table__)
_COLUMNS = (
    _LOG.c.id,
    _LOG.c.created_at,
    _LOG.c.action,
    _LOG.c.entity_type,
    _LOG.c.entity_id,
    _LOG.c.metadata,
    _LOG.c.ip_address,
    _LOG.c.user_agent,
)


@dataclass(frozen=True)
class ActivityRow:
    """One row of the caller's trail, as the API shows it."""

    id: str
    created_at: datetime
    action: str
    entity_type: str | None
    entity_id: str | None
    metadata: dict[str, Any]
    ip_address: str | None
    user_agent: str | None


@dataclass(frozen=True)
class ActivityFilter:
    """Optional filters; ``since`` is inclusive, ``until`` exclusive."""

    action: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Position:
    """A keyset position: the last row of the previous page."""

    created_at: datetime
    id: str


def _query(user_id: str, where: ActivityFilter, before: Position | None) -> Select[Any]:
    query = select(*_COLUMNS).where(_LOG.c.user_id == user_id)
    if where.action is not None:
        query = query.where(_LOG.c.action == where.action)
    if where.entity_type is not None:
        query = query.where(_LOG.c.entity_type == where.entity_type)
    if where.entity_id is not None:
        query = query.where(_LOG.c.entity_id == where.entity_id)
    if where.since is not None:
        query = query.where(_LOG.c.created_at >= where.since)
    if where.until is not None:
        query = query.where(_LOG.c.created_at < where.until)
    if before is not None:
        # Range term first so the index seeks; the OR breaks ties between equal timestamps by id.
        query = query.where(
            and_(
                _LOG.c.created_at <= before.created_at,
                or_(_LOG.c.created_at < before.created_at, _LOG.c.id < before.id),
            )
        )
    return query.order_by(_LOG.c.created_at.desc(), _LOG.c.id.desc())


def _row(raw: Any) -> ActivityRow:
    return ActivityRow(
        id=raw.id,
        created_at=raw.created_at,
        action=raw.action,
        entity_type=raw.entity_type,
        entity_id=raw.entity_id,
        metadata=raw.metadata if isinstance(raw.metadata, dict) else {},
        ip_address=raw.ip_address,
        user_agent=raw.user_agent,
    )


async def page(
    db: AsyncSession, user_id: str, where: ActivityFilter, *, limit: int, before: Position | None = None
) -> tuple[list[ActivityRow], Position | None]:
    """Up to ``limit`` rows after ``before`` (newest first) and the position of the next page, if any."""
    raws = (await db.execute(_query(user_id, where, before).limit(limit + 1))).all()
    rows = [_row(raw) for raw in raws[:limit]]
    more = len(raws) > limit
    return rows, Position(rows[-1].created_at, rows[-1].id) if more else None


async def count_by_action(
    db: AsyncSession, user_id: str, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, int]:
    """This user's number of rows per action (in the optional window)."""
    query = (
        select(_LOG.c.action, func.count())
        .where(_LOG.c.user_id == user_id)
        .group_by(_LOG.c.action)
        .order_by(_LOG.c.action)
    )
    if since is not None:
        query = query.where(_LOG.c.created_at >= since)
    if until is not None:
        query = query.where(_LOG.c.created_at < until)
    return dict((await db.execute(query)).all())


async def iter_all(
    sessions: async_sessionmaker[AsyncSession], user_id: str, where: ActivityFilter, *, page_size: int = 1000
) -> AsyncIterator[list[ActivityRow]]:
    """Every matching row, a page at a time (for exports: memory stays flat however long the trail).

    Each page is its own short read, so a long download never holds a transaction or a connection.
    """
    before: Position | None = None
    while True:
        async with sessions() as db:
            rows, before = await page(db, user_id, where, limit=page_size, before=before)
        if rows:
            yield rows
        if before is None:
            return
