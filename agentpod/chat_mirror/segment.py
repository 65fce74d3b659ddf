"""What every chat-stream segment runs beside its stream, and how it backs off.

Both mirrors (OpenCode, ACP) hold their live stream in one long-running activity per segment. Beside
the stream loop, :func:`segment_companions` runs three tasks: a flusher writing due batches every
``FLUSH_TICK_SECONDS`` (a database error keeps the batch for the next tick), a heartbeater telling
Temporal the activity is alive and persisting the status (:class:`StatusSaver`), and a watcher that
ends the segment promptly when the worker shuts down, so another worker takes over instead of waiting
for the graceful-shutdown timeout. Leaving the context stops them and writes whatever is buffered:
what a stream delivered before a cancel or an error is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from agentpod.chat_mirror.status import StatusSaver
from agentpod.domain.chat import SyncStatus

T = TypeVar("T")

HEARTBEAT_SECONDS = 5.0
FLUSH_TICK_SECONDS = 0.1
DB_RETRY_SECONDS = 1.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
# A connection must stay healthy this long before the backoff resets (no hammering a flapping server).
HEALTHY_RESET_SECONDS = 30.0


class StreamEnded(Exception):
    """The agent closed the stream cleanly, or it fell silent for too long."""


def backoff_delay(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: uniform in [0.5, 1] x min(cap, base x 2^attempt)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(attempt, 32))
    return float(ceiling * (0.5 + rng() / 2))


class BufferedMirror(Protocol):
    """A mirror that buffers what the stream delivers and writes it in batches."""

    def due_in(self) -> float | None:
        """Seconds until the buffer is due (0: now); None while it is empty."""
        ...

    async def flush_due(self) -> int:
        """Write the buffer if it waited long enough."""
        ...

    async def flush(self) -> int:
        """Write the buffer now."""
        ...


@asynccontextmanager
async def segment_companions(
    mirror: BufferedMirror,
    status: SyncStatus,
    save_status: Callable[[SyncStatus], Awaitable[None]],
    *,
    label: str,
) -> AsyncIterator[asyncio.Lock]:
    """Run the flusher, heartbeater and shutdown watcher; yields the lock every write must hold."""
    lock = asyncio.Lock()  # the flusher and the stream loop must not write concurrently
    saver = StatusSaver(save_status)
    segment_task = asyncio.current_task()

    async def flusher() -> None:
        while True:
            # Wake when the buffer falls due, not on the next fixed tick: a change that arrived just
            # after a tick waited up to two flush intervals before.
            due_in = mirror.due_in()
            await asyncio.sleep(FLUSH_TICK_SECONDS if due_in is None else min(due_in, FLUSH_TICK_SECONDS))
            try:
                async with lock:
                    await mirror.flush_due()
            except SQLAlchemyError as error:
                # The database is busy or away: the batch stays buffered and is retried next tick.
                activity.logger.warning("%s: flush failed (%s); retrying", label, error)
                await asyncio.sleep(DB_RETRY_SECONDS)

    async def heartbeater() -> None:
        while True:
            activity.heartbeat(status.model_dump(mode="json"))
            await saver.beat(status)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def shutdown_watcher() -> None:
        await activity.wait_for_worker_shutdown()
        if segment_task is not None:
            segment_task.cancel()

    background = [asyncio.create_task(job()) for job in (flusher, heartbeater, shutdown_watcher)]
    try:
        yield lock
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.shield(mirror.flush())
        status.connected = False
        with contextlib.suppress(Exception):
            await asyncio.shield(save_status(status))


async def next_frame(frames: AsyncIterator[T], *, silence_limit: float, deadline: float, source: str) -> T | None:
    """The stream's next frame; None once the segment's ``deadline`` (loop time) has come.

    Raises :class:`StreamEnded` when the stream ends or stays silent for ``silence_limit`` seconds.
    Not ``asyncio.wait_for``: on Python 3.11 it returns the result instead of raising when a cancel
    lands just as the next frame arrives, which is almost always during a delta burst; the swallowed
    cancel (finish, retarget, worker shutdown) left the activity streaming the old target until its
    segment ended. ``asyncio.timeout`` keeps the cancel.
    """
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    if remaining <= 0:
        return None
    try:
        async with asyncio.timeout(min(silence_limit, remaining)):
            return await anext(frames)
    except StopAsyncIteration:
        raise StreamEnded(f"{source} closed the event stream") from None
    except TimeoutError:
        if loop.time() >= deadline:
            return None
        raise StreamEnded(f"nothing from {source} for {silence_limit:.0f} s") from None


def record_disconnect(status: SyncStatus, error: BaseException) -> None:
    """Note a lost connection in the status the app shows."""
    status.connected = False
    status.last_error = f"{type(error).__name__}: {error}"[:500]
    status.reconnects += 1
