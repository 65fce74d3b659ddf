"""``INSERT ... ON CONFLICT`` for the two databases the project runs on.

PostgreSQL's and SQLite's insert constructs share ``on_conflict_do_update`` / ``on_conflict_do_nothing``
and ``excluded``: code written against :func:`insert_for` runs unchanged on both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.store.base import Base


def dialect_of(db: AsyncSession) -> str:
    """``postgresql`` or ``sqlite``; anything else raises (upserts need one of the two)."""
    dialect = db.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"upserts need PostgreSQL or SQLite, not {dialect}")
    return dialect


def insert_for(dialect: str, table: Table | type[Base]) -> Any:
    """The dialect's INSERT construct, into a table or a mapped class (``dialect``: see :func:`dialect_of`)."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
