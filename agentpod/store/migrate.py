"""Alembic, driven from code: upgrade, read the current revision, refuse an out-of-date schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentpod.store.engine import create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaOutOfDateError(RuntimeError):
    """The database is not at the schema this code expects."""


def alembic_config() -> Config:
    """An Alembic config pointing at this package's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    """The newest migration this code ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None for an empty database)."""

    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_read)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision`` (idempotent)."""
    config = alembic_config()

    def _upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


def upgrade(revision: str = "head", url: str | None = None) -> str:
    """Synchronous entry point for the CLI; returns the URL migrated (password hidden)."""

    async def _run() -> str:
        engine = create_engine(url)
        try:
            await upgrade_database(engine, revision)
            return engine.url.render_as_string(hide_password=True)
        finally:
            await engine.dispose()

    return asyncio.run(_run())


async def assert_schema_current(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaOutOfDateError` with the fix when the database lags the code."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at {current or 'nothing (empty database)'}, this code needs {head}: "
            "run `agentpod db upgrade` first"
        )


async def autogenerate_revision(engine: AsyncEngine, message: str, rev_id: str) -> None:
    """Write a new migration comparing the models with ``engine``'s database (migrated to head first)."""
    await upgrade_database(engine)
    config = alembic_config()

    def _generate(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True, rev_id=rev_id)

    async with engine.begin() as connection:
        await connection.run_sync(_generate)
