"""Notifications across API processes through PostgreSQL ``LISTEN`` / ``NOTIFY``.

Each process holds one dedicated listening connection. A channel is ``LISTEN``ed while this process
has at least one subscriber to it, so the database only sends a process what it needs. Publishing
goes through a small separate pool (``pg_notify``), and the publisher's own process receives the
message back through its listener like every other process (no local shortcut: one delivery path).

If the listening connection breaks, a supervisor reconnects with backoff, listens again and tells
every subscriber it may have missed messages (a ``None`` from :meth:`Subscription.get`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from agentpod.notify.base import DEFAULT_BUFFER, Fanout, Notifier, Subscription, check_message

log = logging.getLogger(__name__)

# Channel names are identifiers: at most 63 bytes (NAMEDATALEN - 1), longer ones are hashed.
_IDENTIFIER_MAX = 63
_HASHED_PREFIX = "sha256:"


def pg_channel(channel: str) -> str:
    """The PostgreSQL channel for ``channel`` (itself when short enough, else a stable hash)."""
    if len(channel.encode()) <= _IDENTIFIER_MAX:
        return channel
    digest = hashlib.sha256(channel.encode()).hexdigest()
    return _HASHED_PREFIX + digest[: _IDENTIFIER_MAX - len(_HASHED_PREFIX)]


@dataclass
class _Link:
    """The listening connection and the channels it currently listens on."""

    connection: AsyncConnection
    driver: Any  # the asyncpg connection under SQLAlchemy's adapter (LISTEN needs the driver's API)
    lost: asyncio.Event
    listening: set[str] = field(default_factory=set)


class PostgresNotifier(Notifier):
    """Cross-process notifier; give it the same database URL as the application."""

    def __init__(
        self,
        database_url: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        ping_seconds: float = 30.0,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self._url = database_url
        self._buffer = buffer
        self._ping_seconds = ping_seconds
        self._reconnect_seconds = reconnect_seconds
        self._fanout = Fanout()
        # One operation at a time on the listening connection (asyncpg refuses concurrent ones).
        self._lock = asyncio.Lock()
        self._link: _Link | None = None
        self._listener_engine: AsyncEngine | None = None
        self._publisher: AsyncEngine | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Open the listening connection (failing loudly if the database is unreachable)."""
        # AUTOCOMMIT: a LISTEN inside an open transaction would only take effect at its commit, and
        # a NOTIFY is only sent on commit.
        self._listener_engine = create_async_engine(self._url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._publisher = create_async_engine(
            self._url, pool_size=1, max_overflow=4, pool_pre_ping=True, isolation_level="AUTOCOMMIT"
        )
        self._link = await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="notify-postgres-listener")

    async def close(self) -> None:
        """Stop listening, end every subscription, close the connections."""
        self._closing = True
        tasks = [*self._tasks, *([self._supervisor] if self._supervisor else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fanout.close_all()
        if self._link is not None:
            await self._drop(self._link, graceful=True)
            self._link = None
        for engine in (self._listener_engine, self._publisher):
            if engine is not None:
                await engine.dispose()

    async def publish(self, channel: str, payload: str) -> None:
        """``pg_notify``: every process listening on the channel receives ``payload``."""
        check_message(channel, payload)
        if self._publisher is None:
            raise RuntimeError("PostgresNotifier.publish before start()")
        async with self._publisher.connect() as connection:
            await connection.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": pg_channel(channel), "payload": payload}
            )

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Receive the channel's messages inside the block (``LISTEN`` is in effect on entry)."""
        key = pg_channel(channel)
        subscription = Subscription(channel, self._buffer)
        self._fanout.add(key, subscription)
        try:
            # Every subscriber waits for the reconcile, not only the first: a second subscriber must
            # not return while the first one's LISTEN is still on its way.
            await self._reconcile()
            yield subscription
        finally:
            subscription.close()
            if self._fanout.remove(key, subscription) and not self._closing:
                self._spawn(self._reconcile())  # UNLISTEN in the background: leaving never waits

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listening connection (None while disconnected)."""
        link = self._link
        if link is None or link.lost.is_set():
            return None
        pid: int = link.driver.get_server_pid()
        return pid

    @property
    def listening(self) -> frozenset[str]:
        """The PostgreSQL channels the listening connection is subscribed to right now."""
        link = self._link
        return frozenset() if link is None or link.lost.is_set() else frozenset(link.listening)

    def _on_notify(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        self._fanout.deliver(channel, payload)

    async def _connect(self) -> _Link:
        assert self._listener_engine is not None
        connection = await self._listener_engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            lost = asyncio.Event()
            driver.add_termination_listener(lambda _connection: lost.set())
        except BaseException:
            await connection.close()
            raise
        return _Link(connection, driver, lost)

    async def _reconcile(self) -> None:
        """LISTEN to every channel with subscribers, UNLISTEN the rest."""
        async with self._lock:
            link = self._link
            if link is None or link.lost.is_set():
                return  # the supervisor listens again after reconnecting (and reports a gap)
            wanted = self._fanout.keys()
            try:
                for key in wanted - link.listening:
                    await link.driver.add_listener(key, self._on_notify)
                    link.listening.add(key)
                for key in link.listening - wanted:
                    await link.driver.remove_listener(key, self._on_notify)
                    link.listening.discard(key)
            except Exception as error:  # the connection broke mid-way: let the supervisor start over
                log.warning("notifier: LISTEN/UNLISTEN failed (%s); reconnecting", error)
                link.lost.set()

    async def _supervise(self) -> None:
        """Keep a listening connection: watch it, and replace it when it breaks."""
        delay = self._reconnect_seconds
        while True:
            link = self._link
            if link is None:
                try:
                    link = await self._connect()
                except Exception as error:
                    log.warning("notifier: reconnect failed (%s); next attempt in %.1f s", error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self._link, delay = link, self._reconnect_seconds
                await self._reconcile()
                # Anything published while we were away is lost: subscribers re-read the truth.
                self._fanout.gap_all()
                log.info("notifier: listening again on %d channels", len(link.listening))
            await self._watch(link)
            self._link = None
            await self._drop(link, graceful=False)

    async def _watch(self, link: _Link) -> None:
        """Return once ``link`` is lost; ping it while idle so a silently dead connection is noticed."""
        while not link.lost.is_set():
            try:
                async with asyncio.timeout(self._ping_seconds):
                    await link.lost.wait()
            except TimeoutError:
                if not await self._ping(link):
                    log.warning("notifier: listening connection stopped answering; reconnecting")
                    link.lost.set()

    async def _ping(self, link: _Link) -> bool:
        async with self._lock:
            try:
                async with asyncio.timeout(10):
                    await link.driver.fetchval("SELECT 1")
            except Exception:
                return False
            return True

    async def _drop(self, link: _Link, *, graceful: bool) -> None:
        link.lost.set()
        if not graceful:
            link.driver.terminate()  # a broken connection may never answer a polite goodbye
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await link.connection.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
