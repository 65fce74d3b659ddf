"""Alembic environment: runs on the connection handed in by ``store.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import store.tables  # noqa: F401  (registers every table on the metadata)
from store.base import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run migrations in one transaction; batch mode lets SQLite alter tables."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `agentpod db upgrade` (store.migrate), not the alembic CLI")
run_migrations(connection)
