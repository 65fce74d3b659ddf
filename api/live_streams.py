"""Every open live stream of this API process (chat, preferences): how many a user may hold, and
whether each may go on.

* **Cap**: at most ``AGENTPOD_MAX_STREAMS_PER_USER`` open streams per user; one more is refused with
  429 ``too_many_streams`` before anything streams. The count is per API process: behind several
  processes a user may hold up to that many in each (every process still bounds the work one account
  can make it do).
* **Access**: every ``recheck_seconds`` one query checks all open streams at once: token not revoked
  or expired, account not locked, and for a chat stream its sandbox still the user's. A stream that
  lost access is told through its ``on_revoked`` callbacks, whichever process the sign-out went to.
  Before a push a stream may also ask :meth:`LiveStream.still_allowed`, a fresh check; streams asking
  at the same moment (one change pushed to all of a user's devices) share one query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.notify import PostgresNotifier
from agentpod.notify.chat_feed import ChatChanges
from agentpod.store.live_streams import CHUNK, stream_access
from api.context import AppContext
from api.errors import ApiError

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0


def too_many_streams(limit: int) -> ApiError:
    """The answer to the stream over the cap."""
    return ApiError(
        f"too many live streams: at most {limit} may be open at once per account; close one and retry",
        status=429,
        code="too_many_streams",
        details={"max_streams": limit},
    )


class LiveStream:
    """One open stream's slot: held until :meth:`close`, revoked when its caller loses access."""

    def __init__(self, registry: LiveStreams, user_id: str, auth_session_id: str, sandbox_id: str | None) -> None:
        self.user_id = user_id
        self.auth_session_id = auth_session_id
        self.sandbox_id = sandbox_id  # a chat stream's sandbox (None: a stream about the account itself)
        self._registry = registry
        self._revoked = False
        self._closed = False
        self._on_revoked: list[Callable[[], None]] = []

    @property
    def revoked(self) -> bool:
        """Whether the caller lost access (signed out, token expired, account locked, sandbox gone)."""
        return self._revoked

    def on_revoked(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once access is lost (at once if it already is)."""
        self._on_revoked.append(callback)
        if self._revoked:
            callback()

    async def still_allowed(self) -> bool:
        """A fresh access check (for a push about to go out); fails closed when it cannot be made."""
        if self._revoked or self._closed:
            return False
        return await self._registry.confirm(self)

    def close(self) -> None:
        """Give the slot back (idempotent)."""
        if not self._closed:
            self._closed = True
            self._registry.release(self)

    def revoke(self) -> None:
        """Mark access lost and tell the stream (idempotent)."""
        if self._revoked:
            return
        self._revoked = True
        for callback in self._on_revoked:
            callback()


@dataclass(eq=False)
class _Batch:
    """Streams asking for a fresh check at the same moment, answered by one query."""

    streams: set[LiveStream] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LiveStreams:
    """The process's open streams (``app.state.live_streams``, closed by the app lifespan)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_per_user: int,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self._sessions = sessions
        self.max_per_user = max_per_user
        self._recheck_seconds = recheck_seconds
        self._by_user: dict[str, set[LiveStream]] = {}
        self._batch: _Batch | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, user_id: str, auth_session_id: str, sandbox_id: str | None = None) -> LiveStream:
        """Take a slot for a new stream, or raise 429 ``too_many_streams``. Close it when the stream ends."""
        held = self._by_user.setdefault(user_id, set())
        if len(held) >= self.max_per_user:
            raise too_many_streams(self.max_per_user)
        stream = LiveStream(self, user_id, auth_session_id, sandbox_id)
        held.add(stream)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="live-streams-access")
        return stream

    def count(self, user_id: str) -> int:
        """Open streams of ``user_id`` in this process."""
        return len(self._by_user.get(user_id, ()))

    def release(self, stream: LiveStream) -> None:
        """Forget a closed stream (:meth:`LiveStream.close` calls this)."""
        held = self._by_user.get(stream.user_id)
        if held is not None:
            held.discard(stream)
            if not held:
                del self._by_user[stream.user_id]

    async def close(self) -> None:
        """Stop checking (at shutdown)."""
        tasks = [*self._tasks, *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None

    async def confirm(self, stream: LiveStream) -> bool:
        """Check ``stream`` now, together with every stream asking in the same moment."""
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            self._spawn(self._check_batch(batch))
        batch.streams.add(stream)
        await batch.done.wait()
        return not stream.revoked

    async def _check_batch(self, batch: _Batch) -> None:
        # One turn of the loop: the other streams woken by the same publish ask in the meantime.
        await asyncio.sleep(0)
        self._batch = None
        try:
            await self.check(batch.streams)
        except (SQLAlchemyError, OSError) as error:
            # Fail closed, quietly: the stream ends and the client reconnects (authenticated again).
            log.info("ending %d live stream(s): access check failed (%s)", len(batch.streams), error)
            for stream in batch.streams:
                stream.revoke()
        finally:
            batch.done.set()

    async def check(self, streams: Collection[LiveStream]) -> None:
        """Revoke every stream in ``streams`` whose caller lost access (one query per thousand streams)."""
        ordered = list(streams)
        for start in range(0, len(ordered), CHUNK):
            chunk = ordered[start : start + CHUNK]
            async with self._sessions() as db:
                live = await stream_access(
                    db,
                    {stream.auth_session_id for stream in chunk},
                    {stream.sandbox_id for stream in chunk if stream.sandbox_id is not None},
                )
            for stream in chunk:
                owned = live.get(stream.auth_session_id)
                if owned is None or (stream.sandbox_id is not None and stream.sandbox_id not in owned):
                    stream.revoke()

    async def _watch(self) -> None:
        """Check every open stream each ``recheck_seconds``; a failed check waits for the next tick."""
        failing = False
        while True:
            await asyncio.sleep(self._recheck_seconds)
            streams = [stream for held in self._by_user.values() for stream in held if not stream.revoked]
            if not streams:
                continue
            try:
                await self.check(streams)
            except Exception:
                # Not fail-closed here: a database blip must not end every stream of the process at once.
                # Nothing is pushed meanwhile without a read that fails too.
                if not failing:
                    log.warning("live streams: access check failed; retrying every tick", exc_info=True)
                failing = True
                continue
            failing = False

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a strong reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)


@asynccontextmanager
async def running_live_streams(app: FastAPI, ctx: AppContext) -> AsyncIterator[None]:
    """For the app's lifetime: ``app.state.live_streams`` (:class:`LiveStreams`) and ``app.state.chat_changes``
    (:class:`ChatChanges`, woken by the mirror's ``NOTIFY`` on PostgreSQL, by one shared poll otherwise)."""
    streams = LiveStreams(ctx.sessions, max_per_user=ctx.settings.max_streams_per_user)
    notifier = ctx.notifier if isinstance(ctx.notifier, PostgresNotifier) else None
    changes = ChatChanges(ctx.sessions, notifier)
    app.state.live_streams, app.state.chat_changes = streams, changes
    try:
        yield
    finally:
        await changes.close()
        await streams.close()
