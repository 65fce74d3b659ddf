"""What both mirrors (OpenCode, ACP) share: whose chats they keep, one writer at a time, and how a row is written.

A mirror is driven by two tasks at once during a live segment: the stream loop feeding events and the
flusher writing due batches. Every method that reads or writes the mirror's buffers is
:func:`serialized` on the mirror's own lock, so callers never hold a lock themselves. The lock is
reentrant per task: a serialized method may call another (``reconcile`` flushes first; a turn's end
flushes and then rebuilds) as one step that no flush interleaves with.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.chat import ReconcileReport
from agentpod.store.chat_sync import (
    MessageRow,
    MessageValues,
    lock_sandbox_chats,
    record_reply_received,
    upsert_message,
)

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound="Mirror")


def serialized(
    method: Callable[Concatenate[M, P], Awaitable[R]],
) -> Callable[Concatenate[M, P], Coroutine[Any, Any, R]]:
    """Run ``method`` holding its mirror's lock."""

    @functools.wraps(method)
    async def locked(self: M, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._serial():
            return await method(self, *args, **kwargs)

    return locked


async def write_message(
    db: AsyncSession,
    *,
    user_id: str,
    session_row_id: str,
    values: MessageValues,
    stored: MessageRow | None,
    now: datetime,
    report: ReconcileReport | None = None,
) -> bool:
    """Upsert one message and audit a reply reaching its final state; True when the row was written.

    ``report`` (a reconcile's) counts the message as upserted, newly interrupted or unchanged.
    """
    if not await upsert_message(db, session_id=session_row_id, values=values, now=now, stored=stored):
        if report is not None:
            report.unchanged += 1
        return False
    await record_reply_received(db, user_id=user_id, session_row_id=session_row_id, values=values, stored=stored)
    if report is not None:
        report.messages_upserted += 1
        if values.status == "interrupted" and (stored is None or stored.values.status != "interrupted"):
            report.messages_interrupted += 1
    return True


class Mirror:
    """Base of a mirror of one sandbox's chats: identity, the mirror's lock, locked write transactions."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, sandbox_id: str, user_id: str, now: Callable[[], datetime]
    ) -> None:
        self._db = sessions
        self.sandbox_id = sandbox_id
        self.user_id = user_id
        self._now = now
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None

    @asynccontextmanager
    async def _serial(self) -> AsyncIterator[None]:
        """Hold the mirror's lock (already held by this task: nothing more to take)."""
        task = asyncio.current_task()
        if task is not None and self._holder is task:
            yield
            return
        async with self._lock:
            self._holder = task
            try:
                yield
            finally:
                self._holder = None

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A transaction holding the sandbox's chat lock, committed when the block ends without an error.

        The chat lock serializes every chat writer of the sandbox (the other mirror, a concurrent
        reconcile), in this process or another.
        """
        async with self._db() as db:
            await lock_sandbox_chats(db, self.sandbox_id)
            yield db
            await db.commit()
