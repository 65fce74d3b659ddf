"""Bounded SQLite reads run on the event loop's thread; they never wait for a writer."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentpod.store.engine import create_engine
from agentpod.store.sqlite_inline import inline_reads


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        await conn.execute(text("INSERT INTO notes (body) VALUES ('kept')"))
    yield engine
    await engine.dispose()


async def _thread_of_a_statement(conn: AsyncConnection) -> int:
    """The thread SQLite ran a statement on (a SQL function reports it from inside the query)."""
    raw = await conn.get_raw_connection()
    await raw.driver_connection.create_function("thread_id", 0, threading.get_ident)  # type: ignore[union-attr]
    return int((await conn.execute(text("SELECT thread_id()"))).scalar_one())


async def test_reads_inside_inline_reads_run_on_the_loop_thread_and_others_on_the_connection_thread(
    engine: AsyncEngine,
) -> None:
    loop_thread = threading.get_ident()
    async with engine.connect() as conn:
        with inline_reads():
            assert await _thread_of_a_statement(conn) == loop_thread
        assert await _thread_of_a_statement(conn) != loop_thread


async def test_an_inline_read_sees_committed_rows_without_waiting_for_a_writer(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = sqlite3.connect(tmp_path / "inline.db", timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock, uncommitted, for the whole read
        writer.execute("INSERT INTO notes (body) VALUES ('not yet committed')")
        async with engine.connect() as conn:
            with inline_reads():
                bodies = (await conn.execute(text("SELECT body FROM notes"))).scalars().all()
        assert bodies == ["kept"]
    finally:
        writer.close()


async def test_an_abandoned_write_is_rolled_back_and_its_lock_released(engine: AsyncEngine, tmp_path: Path) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('abandoned')"))
    # The pool's reset (an inline rollback) ended that transaction: another writer gets the lock at once.
    other = sqlite3.connect(tmp_path / "inline.db", timeout=0)
    try:
        other.execute("INSERT INTO notes (body) VALUES ('next')")
        other.commit()
        assert [row[0] for row in other.execute("SELECT body FROM notes ORDER BY id")] == ["kept", "next"]
    finally:
        other.close()
