"""The write gate: many writers in one process take SQLite's lock in turn, none fails or starves."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store import write_gate
from agentpod.store.tables import Sandbox, User
from agentpod.store.write_gate import begin_write
from tests.helpers import make_owner

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _bump(
    sessions: async_sessionmaker[AsyncSession], user_id: str, hold: float, gate_timeout: float = 30
) -> None:
    async with sessions() as db:
        await begin_write(db, timeout=gate_timeout)
        name = await db.scalar(select(User.name).where(User.id == user_id))
        await asyncio.sleep(hold)  # read-modify-write across an await: only safe under the lock
        await db.execute(update(User).where(User.id == user_id).values(name=str(int(name or "0") + 1)))
        await db.commit()


async def _reset(sessions: async_sessionmaker[AsyncSession], user_id: str) -> None:
    async with sessions() as db:
        await db.execute(update(User).where(User.id == user_id).values(name="0"))
        await db.commit()


async def test_two_hundred_read_modify_writes_lose_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    user_id = (await make_owner(sessions)).user_id
    # 200 writers at once, each holding the lock across an await: SQLite alone made the late ones
    # sleep-and-retry until `database is locked`; in turn, every one lands and none is lost.
    await _reset(sessions, user_id)
    await asyncio.gather(*(_bump(sessions, user_id, 0.001) for _ in range(200)))
    async with sessions() as db:
        assert await db.scalar(select(User.name).where(User.id == user_id)) == "200"


async def test_rollback_and_error_release_the_gate(sessions: async_sessionmaker[AsyncSession]) -> None:
    user_id = (await make_owner(sessions)).user_id
    with pytest.raises(ZeroDivisionError):
        async with sessions() as db:
            await begin_write(db)
            await db.execute(update(User).where(User.id == user_id).values(name="lost"))
            _ = 1 / 0
    async with sessions() as db:
        await begin_write(db)
        await db.rollback()
    await _reset(sessions, user_id)
    await asyncio.wait_for(_bump(sessions, user_id, 0, gate_timeout=60), 5)  # hangs if either kept the gate
    async with sessions() as db:
        assert await db.scalar(select(User.name).where(User.id == user_id)) == "1"


async def test_second_gated_transaction_in_one_task_is_an_error_not_a_hang(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as first, sessions() as second:
        await begin_write(first)
        with pytest.raises(RuntimeError, match="already holds"):
            async with asyncio.timeout(5):  # not wait_for: that would run it in another task
                await begin_write(second)


async def test_gate_left_by_a_finished_task_is_reclaimed(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    user_id = (await make_owner(sessions)).user_id
    await _reset(sessions, user_id)
    leaked = sessions()

    async def leak() -> None:
        await begin_write(leaked)
        # A bug: the task ends with its transaction open. Free SQLite's own lock by hand (a dead
        # connection would); the gate is still taken.
        raw = await (await leaked.connection()).get_raw_connection()
        assert raw.driver_connection is not None
        await raw.driver_connection.rollback()

    await asyncio.create_task(leak())
    with caplog.at_level(logging.ERROR, logger=write_gate.__name__):
        await asyncio.wait_for(_bump(sessions, user_id, 0, gate_timeout=0.5), 10)
    assert "held by a finished task" in caplog.text
    async with sessions() as db:
        assert await db.scalar(select(User.name).where(User.id == user_id)) == "1"
    await leaked.close()  # its late release must not free anyone else's hold
    await asyncio.wait_for(_bump(sessions, user_id, 0, gate_timeout=60), 5)


async def test_a_plain_write_waits_its_turn_behind_a_flood_of_writers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = await make_owner(sessions)
    await _reset(sessions, owner.user_id)
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            await _bump(sessions, owner.user_id, 0.02)

    floods = [asyncio.create_task(flood()) for _ in range(5)]
    try:
        await asyncio.sleep(0.3)
        async with sessions() as db:
            # A short busy timeout: left to SQLite, this writer would find the lock always taken.
            await db.execute(text("PRAGMA busy_timeout=100"))
            await db.execute(update(Sandbox).where(Sandbox.id == owner.sandbox_id).values(name="renamed"))
            await db.commit()
    finally:
        stop.set()
        await asyncio.gather(*floods)
    async with sessions() as db:
        assert await db.scalar(select(Sandbox.name).where(Sandbox.id == owner.sandbox_id)) == "renamed"
        assert int(await db.scalar(select(User.name).where(User.id == owner.user_id)) or 0) > 5
