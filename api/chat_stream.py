"""The live chat stream: Server-Sent Events relaying what changed in our chat tables, read from the database.

The sync writes rows from the worker process. A stream does not poll: it sleeps until the process's
:class:`agentpod.notify.chat_feed.ChatChanges` wakes it (PostgreSQL ``NOTIFY`` from the mirror's write
transaction, or one shared poll per process), then reads what changed. So it works across processes
on SQLite and PostgreSQL with no broker, and an idle stream costs no query. Each event's ``id`` is the
feed position (``updated_at`` + row id); a reconnecting client sends it back as ``Last-Event-ID`` and
gets every row stored after it.

A writer stamps ``updated_at`` before it commits, so a row can become visible after rows stamped later
have been relayed. While connected, each read therefore re-reads the last ``lookback`` of the feed and
sends rows it has not sent yet (in that case the event id stays at the current position, so ids never
go backwards). A reconnect resumes strictly after ``Last-Event-ID``, with no repeats; the look-back
only works while connected, so a row stamped before that id but committed after the previous
connection's last read is not sent (the window is the writer's stamp-to-commit time).

Access (token, account, sandbox ownership) is re-checked for all streams of the process at once
(``api.live_streams``); a stream that lost it sends ``end`` and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import StreamingResponse

from agentpod.notify.chat_feed import ChatChanges
from agentpod.store import chat
from agentpod.store.chat import ChangedRow, ChangeKey
from agentpod.store.tables import ChatSession
from api.live_streams import LiveStream
from api.schemas.chat import ChatMessageOut, ChatSessionOut

log = logging.getLogger(__name__)

HEARTBEAT = b": heartbeat\n\n"


class EventStreamResponse(StreamingResponse):
    """``text/event-stream``, never cached or buffered by a proxy."""

    media_type = "text/event-stream"


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class StreamTiming:
    """How often the stream beats and how it reads (``api.deps.ChatStreamTiming``: tests speed it up)."""

    heartbeat_seconds: float = 15.0
    lookback: timedelta = timedelta(seconds=5)
    batch: int = 200
    retry_ms: int = 2000


@dataclass(frozen=True)
class Frame:
    """One event to send."""

    event: str
    id: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        """SSE wire format (compact JSON: a single ``data:`` line)."""
        payload = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"event: {self.event}\nid: {self.id}\ndata: {payload}\n\n".encode()


class ChangeFeed:
    """One client's position in a sandbox's change feed, and the rows it already got."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sandbox_id: str,
        start: ChangeKey,
        *,
        lookback: timedelta,
        batch: int,
    ) -> None:
        self._sessions = sessions
        self.sandbox_id = sandbox_id
        # Rows at or before the client's cursor were delivered on an earlier connection.
        self._floor = start
        self.cursor = start
        self._lookback = lookback
        self._batch = batch
        self._sent: dict[str, datetime] = {}  # row id -> updated_at of the version sent (within the look-back)

    async def poll(self) -> tuple[list[Frame], bool]:
        """Frames for rows not sent yet, in feed order; True when a backlog remains (poll again now)."""
        # A fresh session per poll: a long-lived transaction would keep reading one old snapshot.
        async with self._sessions() as db:
            late = await chat.changes_between(
                db,
                self.sandbox_id,
                since=self.cursor.updated_at - self._lookback,
                floor=self._floor,
                upto=self.cursor,
            )
            fresh, backlog = await chat.changes_after(db, self.sandbox_id, self.cursor, limit=self._batch)
            scanned = late + fresh
            wanted = [row for row in scanned if self._sent.get(row.key.id) != row.key.updated_at]
            rows = await chat.load_changed(db, self.sandbox_id, wanted)
            counts = await chat.child_counts(db, [r.id for r in rows.values() if isinstance(r, ChatSession)])
            frames = self._frames(scanned, rows, counts)
        self._forget_old()
        return frames, backlog

    def _frames(self, scanned: list[ChangedRow], rows: dict[str, chat.ChatRow], counts: dict[str, int]) -> list[Frame]:
        frames: list[Frame] = []
        for changed in scanned:
            # Advance over every scanned key, sent or not, so the next poll starts after it.
            self.cursor = max(self.cursor, changed.key)
            row = rows.get(changed.key.id)
            if row is None or self._sent.get(row.id) == row.updated_at:
                continue  # already sent (this version), or deleted meanwhile
            # The row may have changed again since the scan: send what is stored now, remember that version.
            self._sent[row.id] = row.updated_at
            if isinstance(row, ChatSession):
                data = ChatSessionOut.from_row(row, counts.get(row.id, 0)).model_dump(mode="json")
                frames.append(Frame("session", self.cursor.encode(), data))
            else:
                data = ChatMessageOut.from_row(row).model_dump(mode="json")
                frames.append(Frame("message", self.cursor.encode(), data))
        return frames

    def _forget_old(self) -> None:
        horizon = self.cursor.updated_at - self._lookback
        self._sent = {row_id: stamp for row_id, stamp in self._sent.items() if stamp >= horizon}


async def relay(
    feed: ChangeFeed,
    timing: StreamTiming,
    *,
    changes: ChatChanges,
    stream: LiveStream,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """The event stream: ``ready`` (with the starting id), then ``session`` / ``message`` events and
    heartbeat comments, until the client goes away or loses access (``end`` event).

    Reads the feed only when ``changes`` wakes it (and once on connect); gives ``stream``'s slot back
    when it ends.
    """
    try:
        ready = Frame("ready", feed.cursor.encode(), {"cursor": feed.cursor.encode()})
        yield f"retry: {timing.retry_ms}\n".encode() + ready.encode()
        wake = asyncio.Event()
        stream.on_revoked(wake.set)
        async with changes.watch(feed.sandbox_id, wake):
            wake.set()  # read once right away: rows stored after the starting cursor (a resume) go out now
            loop = asyncio.get_running_loop()
            last_sent = loop.time()
            while True:
                if stream.revoked:
                    yield Frame("end", feed.cursor.encode(), {"reason": "access_revoked"}).encode()
                    return
                if wake.is_set():
                    wake.clear()
                    try:
                        frames, backlog = await feed.poll()
                    except SQLAlchemyError:
                        # Ending is safe: the client reconnects with Last-Event-ID and misses nothing stored.
                        log.warning("chat stream stopped by a database error", exc_info=True)
                        return
                    if stream.revoked:
                        continue  # lost access while reading: send nothing of it
                    for frame in frames:
                        yield frame.encode()
                        last_sent = loop.time()
                    if backlog:
                        wake.set()  # more beyond this batch: read again at once
                if await is_disconnected():
                    return
                idle = loop.time() - last_sent
                if idle >= timing.heartbeat_seconds:
                    yield HEARTBEAT
                    last_sent = loop.time()
                elif not wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timing.heartbeat_seconds - idle):
                            await wake.wait()
    finally:
        stream.close()
