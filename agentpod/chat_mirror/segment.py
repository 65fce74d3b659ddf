"""One segment of a chat mirror's live stream: the loop both mirrors (OpenCode, ACP) run.

Each mirror holds its live stream in one long-running activity per segment. :func:`run_segment` connects,
reads frames, hands each to the source (:class:`StreamSource`: its own connect, event dispatch and
reconcile), and on a lost connection records it, lets the source write what it got, and reconnects
with jittered, capped exponential backoff until the segment's time is up. A clean end of stream
counts as a disconnect.

Beside the loop run three tasks: a flusher writing due batches every ``FLUSH_TICK_SECONDS`` (a
database error keeps the batch for the next tick), a heartbeater telling Temporal the activity is
alive and persisting the status (:class:`StatusSaver`), and a watcher that ends the segment promptly
when the worker shuts down, so another worker takes over instead of waiting for the graceful-shutdown
timeout. When the segment ends they stop and whatever is buffered is written: what a stream delivered
before a cancel or an error is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from agentpod.chat_mirror.status import StatusSaver
from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncStatus

T = TypeVar("T")
Link = TypeVar("Link")
Frame = TypeVar("Frame")

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
    """A mirror that buffers what the stream delivers and writes it in batches (serializing itself)."""

    def due_in(self) -> float | None:
        """Seconds until the buffer is due (0: now); None while it is empty."""
        ...

    async def flush_due(self) -> int:
        """Write the buffer if it waited long enough."""
        ...

    async def flush(self) -> int:
        """Write the buffer now."""
        ...


class StreamSource(Protocol[Link, Frame]):
    """One agent's live stream feeding one mirror: what :func:`run_segment` needs to follow it.

    ``Link`` is the connection's client (what dispatch reconciles through), ``Frame`` one stream frame.
    """

    label: str  # names the stream in logs
    name: str  # names the agent in errors ("nothing from <name> for 30 s")
    errors: tuple[type[Exception], ...]  # what a lost connection raises besides OSError and database errors
    first_frame_limit: float  # seconds to wait for the frame that opens the stream
    silence_limit: float  # seconds of silence after which an open stream is dead

    @property
    def mirror(self) -> BufferedMirror:
        """The mirror the flusher writes."""
        ...

    def connect(self) -> AbstractAsyncContextManager[tuple[Link, AsyncIterator[Frame]]]:
        """Connect: the client and its frames."""
        ...

    def opens(self, frame: Frame) -> bool:
        """Whether ``frame`` shows the stream open (the connection counts as up from then on)."""
        ...

    async def dispatch(self, link: Link, frame: Frame, *, first: bool) -> ReconcileReport | bool:
        """Apply one frame (``first``: it opened the stream).

        The report when it reconciled, else whether an event reached the mirror (False: a heartbeat).
        """
        ...

    async def disconnected(self) -> None:
        """The connection was lost: write (or drop) what it delivered."""
        ...

    async def save_status(self, status: SyncStatus) -> None:
        """Persist the status the chat API shows."""
        ...


async def run_segment(source: StreamSource[Link, Frame], data: StreamSegmentInput) -> StreamSegmentResult:
    """Follow ``source`` for ``data.segment_seconds`` (reconnecting as needed), then say what happened."""
    status = data.status.model_copy()
    result = StreamSegmentResult(status=status)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + data.segment_seconds
    # A database error too: reconnecting reconciles (or resumes from the committed event), which is what
    # failing the activity would come to, minus the dropped stream.
    lost: tuple[type[Exception], ...] = (StreamEnded, OSError, SQLAlchemyError, *source.errors)
    attempt = 0
    async with _companions(source, status):
        while loop.time() < deadline:
            connected_at: float | None = None
            try:
                async with source.connect() as (link, frames):
                    while True:
                        limit = source.silence_limit if connected_at is not None else source.first_frame_limit
                        frame = await next_frame(frames, silence_limit=limit, deadline=deadline, source=source.name)
                        if frame is None:
                            break
                        first = connected_at is None and source.opens(frame)
                        if first:
                            connected_at = loop.time()
                            status.connected, status.last_error = True, None
                        outcome = await source.dispatch(link, frame, first=first)
                        if isinstance(outcome, ReconcileReport):
                            result.reconciles += 1
                            status.last_reconcile_at = datetime.now(UTC)
                            activity.logger.info("%s reconciled: %s", source.label, outcome.model_dump())
                        elif outcome:
                            result.events += 1
                            status.events_applied += 1
                            status.last_event_at = datetime.now(UTC)
                            if connected_at is not None and loop.time() - connected_at > HEALTHY_RESET_SECONDS:
                                attempt = 0
            except lost as error:
                record_disconnect(status, error)
                await source.disconnected()
                delay = min(backoff_delay(attempt), max(0.0, deadline - loop.time()))
                attempt += 1
                activity.logger.info("%s disconnected (%s); retry in %.1fs", source.label, error, delay)
                await asyncio.sleep(delay)
    return result


@asynccontextmanager
async def _companions(source: StreamSource[Link, Frame], status: SyncStatus) -> AsyncIterator[None]:
    """Run the flusher, heartbeater and shutdown watcher beside the stream loop."""
    mirror = source.mirror
    saver = StatusSaver(source.save_status)
    segment_task = asyncio.current_task()

    async def flusher() -> None:
        while True:
            # Wake when the buffer falls due, not on the next fixed tick: a change that arrived just
            # after a tick waited up to two flush intervals before.
            due_in = mirror.due_in()
            await asyncio.sleep(FLUSH_TICK_SECONDS if due_in is None else min(due_in, FLUSH_TICK_SECONDS))
            try:
                await mirror.flush_due()
            except SQLAlchemyError as error:
                # The database is busy or away: the batch stays buffered and is retried next tick.
                activity.logger.warning("%s: flush failed (%s); retrying", source.label, error)
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
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.shield(mirror.flush())
        status.connected = False
        with contextlib.suppress(Exception):
            await asyncio.shield(source.save_status(status))


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
