"""Take the database's write lock up front, in arrival order within this process.

SQLite has one write lock per database. Left to SQLite, writers that find it taken back off and sleep
(1 ms growing to 100 ms) and retry: the lock sits idle while they sleep, and an unlucky writer keeps
losing the race until its ``busy_timeout`` runs out (``database is locked``). With hundreds of sync
loops in one worker that was the whole tail of the fleet lag. :func:`begin_write` queues the
process's writers on one FIFO ``asyncio.Lock`` per engine before ``BEGIN IMMEDIATE``, so within a
process the lock passes straight to the next writer; between processes (API and worker) SQLite's
busy handler still arbitrates.

PostgreSQL needs none of this (row locks, no database-wide writer): :func:`begin_write` does nothing.

The gate is released when the session's transaction ends (commit, rollback or close). A writer must
not open a second gated transaction while it holds one: that would wait on itself, so it raises.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

# A writer that waits this long for the gate proceeds without it (SQLite's busy handler still
# serializes): a transaction leaked by a bug must slow writers down, never stop them for good.
GATE_TIMEOUT_SECONDS = 30.0
_HOLD_KEY = "agentpod.write_gate"


@dataclass(eq=False)
class _Hold:
    """One acquisition of the gate, by one task."""

    task: asyncio.Task[object] | None


@dataclass
class _Gate:
    lock: asyncio.Lock
    hold: _Hold | None = None

    def release(self, hold: _Hold) -> None:
        # Only the current hold may release: a hold already forced open must not free a later one.
        if self.hold is hold:
            self.hold = None
            self.lock.release()


_GATES: weakref.WeakKeyDictionary[Engine, _Gate] = weakref.WeakKeyDictionary()


def _gate(engine: Engine) -> _Gate:
    gate = _GATES.get(engine)
    if gate is None:
        gate = _GATES[engine] = _Gate(asyncio.Lock())
    return gate


async def begin_write(db: AsyncSession, *, timeout: float = GATE_TIMEOUT_SECONDS) -> None:
    """Hold the database's write lock from now until ``db``'s transaction ends.

    Must come before the transaction's first statement. SQLite: wait for this process's earlier
    writers (FIFO), then ``BEGIN IMMEDIATE``. PostgreSQL: nothing to do.
    """
    conn = await db.connection()  # begins the session's transaction, which the release hooks onto
    if conn.dialect.name != "sqlite":
        return
    raw = await conn.get_raw_connection()
    if getattr(raw.driver_connection, "in_transaction", False):
        # A caller wrote first: this connection already holds (or waits for) SQLite's lock. Queuing
        # behind writers that wait for that same lock would only deadlock until the busy timeout.
        return
    gate = _gate(conn.sync_engine)
    task = asyncio.current_task()
    if task is not None and gate.hold is not None and gate.hold.task is task:
        raise RuntimeError("a second write transaction in a task that already holds the write gate")
    if await _acquire(gate, timeout):
        # No await between acquiring and hooking the release: a cancel cannot strand the gate.
        hold = gate.hold = _Hold(task)
        _release_when_done(db.sync_session, gate, hold)
    await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _acquire(gate: _Gate, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await gate.lock.acquire()
        return True
    except TimeoutError:
        pass
    hold = gate.hold
    if hold is not None and hold.task is not None and hold.task.done():
        # Its task ended without ending the transaction (a leaked session): the gate would never
        # open again. SQLite's own lock goes when that connection is collected.
        log.error("database write gate held by a finished task (%s); releasing it", hold.task.get_name())
        gate.release(hold)
        return await _acquire(gate, timeout)
    log.warning("waited %.0f s for the database write gate; writing without it", timeout)
    return False


def _release_when_done(session: Session, gate: _Gate, hold: _Hold) -> None:
    """Release ``hold`` when ``session``'s outermost transaction ends."""
    session.info[_HOLD_KEY] = (gate, hold)
    if not event.contains(session, "after_transaction_end", _release_on_end):
        event.listen(session, "after_transaction_end", _release_on_end)


def _release_on_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint ended; the transaction goes on
    held = session.info.pop(_HOLD_KEY, None)
    if held is not None:
        gate, hold = held
        gate.release(hold)


class WriteGatedSession(AsyncSession):
    """An ``AsyncSession`` whose first write of each transaction goes through :func:`begin_write`.

    Every write in the process queues on the one gate: a writer left to SQLite's busy handler would
    starve behind the gate's back-to-back hand-overs (it only finds the lock free while sleeping).
    """

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """``AsyncSession.execute``, gated when it writes (a DML statement or pending ORM changes)."""
        if getattr(statement, "is_dml", False) or self._has_changes():
            await self._gate()
        return await super().execute(statement, *args, **kwargs)

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        """``AsyncSession.flush``, gated when there is something to write."""
        if self._has_changes():
            await self._gate()
        await super().flush(objects)

    async def commit(self) -> None:
        """``AsyncSession.commit``, gated when its autoflush will write."""
        if self._has_changes():
            await self._gate()
        await super().commit()

    def _has_changes(self) -> bool:
        return bool(self.new or self.dirty or self.deleted)

    async def _gate(self) -> None:
        bind = self.bind
        if bind is None or bind.dialect.name != "sqlite" or _HOLD_KEY in self.sync_session.info:
            return
        await begin_write(self)


__all__ = ["GATE_TIMEOUT_SECONDS", "WriteGatedSession", "begin_write"]
