"""SQLite lookups that run on the event loop's own thread instead of aiosqlite's (opt-in).

aiosqlite gives each connection a thread and sends it every call: one statement is four round trips
(cursor, execute, fetch, close), each a future, a wake-up of the loop and a hand-over of the GIL,
and under load those hand-overs cost more than an indexed lookup of a few rows does. Inside
:func:`inline_reads` the calls on a connection run where they are awaited, with no hand-off.

Only bounded reads belong inside it: a primary-key or indexed lookup, or a page with a LIMIT (the
loop does nothing else while one runs). That is safe on this engine because in WAL mode a reader
never waits for the writer (no busy-timeout sleep on the loop), and because SQLAlchemy's adapter
lets one call at a time use a connection, so its thread and the loop never touch it at once.
Everything else (writes, commits, exports, aggregates) still runs on the connection's thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import aiosqlite

_INLINE: ContextVar[bool] = ContextVar("inline_sqlite_reads", default=False)


@contextmanager
def inline_reads() -> Iterator[None]:
    """Run this block's SQLite calls on the calling thread (bounded reads only; see the module)."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


class InlineReadConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs calls inline inside :func:`inline_reads`.

    Its rollback always runs inline: it ends every request (the pool's reset), and discarding a
    transaction never waits for a lock. By then every call on the connection has returned: SQLAlchemy
    invalidates, rather than resets, a connection whose statement was interrupted by a cancellation.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if _INLINE.get() and self._connection is not None:
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async def rollback(self) -> None:
        """Roll back on the calling thread."""
        self._conn.rollback()


def connect(database: str, *, timeout: float) -> InlineReadConnection:
    """An unopened connection to ``database`` (await it), as ``aiosqlite.connect`` would make one."""
    # check_same_thread=False: the connection is opened on its thread and also used on the loop's.
    connector = partial(sqlite3.connect, database, timeout=timeout, check_same_thread=False)
    connection = InlineReadConnection(connector, iter_chunk_size=64)
    # A forgotten connection must not keep the process alive at exit (what SQLAlchemy does too).
    connection._thread.daemon = True
    return connection
