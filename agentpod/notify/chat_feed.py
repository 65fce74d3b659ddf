"""Wakes live chat streams when their sandbox's chat rows change, at a cost that does not grow per stream.

The mirror writes chat rows in the worker process and the streams run in API processes, so the signal
crosses processes through the database:

* **PostgreSQL**: every chat write transaction starts with ``store.chat_sync.lock_sandbox_chats``, which
  also queues ``NOTIFY "chat:<sandbox id>"`` (sent at commit, one per transaction). The hub holds one
  notifier subscription per watched sandbox, shared by all of its streams, and wakes them at once.
* **One poll per process**: every ``poll_seconds`` a single query lists the chat rows of *all* watched
  sandboxes stamped within the last ``window``; a sandbox showing a row (or row version) the previous
  tick did not see is woken. On SQLite (one machine, no NOTIFY) this is the signal; on PostgreSQL it
  catches writers that do not notify (the API's own session create and archive), at a slower pace.

A woken stream reads its own feed (``api.chat_stream.ChangeFeed``); a stream with nothing new sleeps and
costs no query. Waking is a hint, never data: a spurious wake costs one empty read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.notify.base import Notifier
from agentpod.notify.channels import chat_channel
from agentpod.store.base import utcnow
from agentpod.store.live_streams import recent_chat_changes

log = logging.getLogger(__name__)

# SQLite: the poll is the only signal, so it sets the latency. PostgreSQL: NOTIFY wakes streams at
# once; the poll only backs up writers that do not notify.
POLL_SECONDS = 0.25
POLL_SECONDS_WITH_NOTIFY = 0.5
# How far back a tick looks. A writer stamps ``updated_at`` before it commits; a row committed this
# long after its stamp is still noticed (the feed's own look-back then finds it).
WINDOW = timedelta(seconds=10)


@dataclass(eq=False)
class _Watched:
    """One watched sandbox: its streams' wake events, what the last tick saw, its NOTIFY listener."""

    wakes: set[asyncio.Event] = field(default_factory=set)
    seen: frozenset[tuple[str, datetime]] | None = None  # None: no tick yet, the first one wakes
    listener: asyncio.Task[None] | None = None
    listening: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_all(self) -> None:
        for wake in self.wakes:
            wake.set()


class ChatChanges:
    """Per process: ``async with changes.watch(sandbox_id, wake): ...`` sets ``wake`` when the sandbox's
    chat rows may have changed. Give it the notifier only on PostgreSQL (``NOTIFY`` needs it)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        notifier: Notifier | None = None,
        *,
        poll_seconds: float | None = None,
        window: timedelta = WINDOW,
    ) -> None:
        self._sessions = sessions
        self._notifier = notifier
        default = POLL_SECONDS if notifier is None else POLL_SECONDS_WITH_NOTIFY
        self._poll_seconds = default if poll_seconds is None else poll_seconds
        self._window = window
        self._watched: dict[str, _Watched] = {}
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def watched(self) -> frozenset[str]:
        """The sandboxes with at least one stream watching (for tests and metrics)."""
        return frozenset(self._watched)

    async def close(self) -> None:
        """Stop polling and listening (streams still watching are simply no longer woken)."""
        tasks = [*self._tasks, *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None

    @asynccontextmanager
    async def watch(self, sandbox_id: str, wake: asyncio.Event) -> AsyncIterator[None]:
        """Set ``wake`` whenever ``sandbox_id``'s chat rows may have changed, for the duration of the block.

        On entry a change committed from now on is noticed: read the feed *after* entering.
        """
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="chat-changes-poll")
        entry = self._watched.get(sandbox_id)
        if entry is None:
            entry = self._watched[sandbox_id] = _Watched()
            if self._notifier is None:
                entry.listening.set()
            else:
                entry.listener = self._spawn(self._listen(self._notifier, sandbox_id, entry))
        entry.wakes.add(wake)
        try:
            await entry.listening.wait()  # LISTEN is in effect: a commit from now on wakes us
            yield
        finally:
            entry.wakes.discard(wake)
            if not entry.wakes and self._watched.get(sandbox_id) is entry:
                del self._watched[sandbox_id]
                if entry.listener is not None:
                    entry.listener.cancel()

    async def _listen(self, notifier: Notifier, sandbox_id: str, entry: _Watched) -> None:
        """Wake the sandbox's streams on every NOTIFY (and on a gap: something may have been missed)."""
        try:
            async with notifier.subscribe(chat_channel(sandbox_id)) as messages:
                entry.listening.set()
                async for _payload in messages:
                    entry.wake_all()
        except Exception:
            log.warning("chat changes: listening for sandbox %s failed; polling only", sandbox_id, exc_info=True)
        finally:
            entry.listening.set()  # never leave a stream waiting: the poll still covers it

    async def _poll(self) -> None:
        """Every tick, one query for every watched sandbox; wake those showing rows not seen before."""
        failing = False
        while True:
            await asyncio.sleep(self._poll_seconds)
            watched = dict(self._watched)
            if not watched:
                continue
            try:
                async with self._sessions() as db:
                    changed = await recent_chat_changes(db, watched.keys(), utcnow() - self._window)
            except Exception:  # the loop outlives any one failure (a database outage, most likely)
                if not failing:  # once per outage, not four times a second
                    log.warning("chat changes: poll failed; retrying every tick", exc_info=True)
                failing = True
                continue
            failing = False
            for sandbox_id, entry in watched.items():
                seen = frozenset(changed.get(sandbox_id, ()))
                # Rows leaving the window are no news; a new row or a new version of one is.
                if entry.seen is None or not seen <= entry.seen:
                    entry.wake_all()
                entry.seen = seen

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a strong reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)
        return task
