"""Alembic environment: runs on the connection handed in by ``store.migrate``."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

import agentpod.store.tables  # noqa: F401  (registers every table on the metadata)
from agentpod.store.base import Base, UTCDateTime

target_metadata = Base.metadata


def render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:  # noqa: ARG001
    """Render project column types as plain SQLAlchemy, so migrations never import application code."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and type(item).__name__ == "JSON" and getattr(item, "_variant_mapping", None):
        return "JSON_TYPE"
    return False


def run_migrations(connection: Connection) -> None:
    """Run migrations in one transaction; batch mode lets SQLite alter tables."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `agentpod db upgrade` (store.migrate), not the alembic CLI")
run_migrations(connection)
