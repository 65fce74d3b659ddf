"""Writing the audit trail: the one function every feature records activity through."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.domain.activity import ActivityEvent
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.tables import ActivityLog

_USER_AGENT_MAX = 512
_ACTIVITY: Table = ActivityLog.__table__  # type: ignore[assignment]


def _fields(event: ActivityEvent) -> dict[str, Any]:
    """The row's values from ``event``, but its metadata (named differently on the model and the table)."""
    return {
        "user_id": event.user_id,
        "action": event.action,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "ip_address": event.ip_address,
        "user_agent": (event.user_agent or "")[:_USER_AGENT_MAX] or None,
        **({"created_at": event.occurred_at} if event.occurred_at is not None else {}),
    }


async def record_activity(db: AsyncSession, event: ActivityEvent, *, event_id: str | None = None) -> ActivityLog:
    """Add one activity row to ``db``'s transaction (the caller commits).

    ``event_id`` makes the write idempotent for callers that may retry (Temporal activities):
    the same id is inserted at most once.
    """
    if event_id is not None and (existing := await db.get(ActivityLog, event_id)) is not None:
        return existing
    row = ActivityLog(**_fields(event), metadata_=event.metadata)
    if event_id is not None:
        row.id = event_id
    db.add(row)
    await db.flush()
    return row


async def record_activity_once(db: AsyncSession, event: ActivityEvent, *, event_id: str) -> None:
    """:func:`record_activity` with an ``event_id``, in one statement and without loading the row.

    For the chat mirror, which records a reply on every turn inside its write transaction.
    """
    # The column is ``metadata``; the ORM attribute ``metadata_`` (``metadata`` is taken on a model).
    stmt = insert_for(dialect_of(db), _ACTIVITY).values(id=event_id, **_fields(event), metadata=event.metadata)
    await db.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
