"""Async engine and session factory, with the SQLite settings correctness depends on."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from agentpod.settings import get_settings
from agentpod.store import sqlite_inline
from agentpod.store.write_gate import WriteGatedSession


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Foreign keys are off by default in SQLite: without this, ON DELETE rules silently do nothing.
    # WAL lets the API read while the worker writes; busy_timeout turns lock contention into waiting.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url: str | None = None, **kwargs: Any) -> AsyncEngine:
    """Create the engine for ``url`` (default: the configured database)."""
    url = url or get_settings().resolved_database_url
    if url.startswith("sqlite"):
        database = _ensure_sqlite_dir(url)
        # Connections that can run bounded reads on the loop's thread (``store/sqlite_inline.py``).
        engine = create_async_engine(url, async_creator=partial(sqlite_inline.connect, database, timeout=30), **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def _ensure_sqlite_dir(url: str) -> str:
    """The database file of ``url``, its directory created."""
    database = make_url(url).database or ":memory:"
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    return database


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (responses are built after it) and queue
    their writes on the process's write gate (``store/write_gate.py``)."""
    return async_sessionmaker(engine, class_=WriteGatedSession, expire_on_commit=False)
