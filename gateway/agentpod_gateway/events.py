"""The gateway's event log: ids ``<epoch>-<seq>``, a bounded replay buffer, SSE framing.

Every event gets the next ``seq`` (1, 2, 3, … for the life of the process) and the process's
``epoch``, a fixed-width hex millisecond start time, so ids from a later process never repeat and
sort after earlier ones. A subscriber resuming with ``Last-Event-ID`` gets exactly the events after
that id while they are still buffered; otherwise (first connection, another epoch, an id older than
the buffer, a malformed id) it gets one ``reset`` frame and then live events: replay is impossible and
the consumer must reconcile from ``GET /sessions`` and ``GET /sessions/{id}/history``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_HEARTBEAT_SECONDS = 15.0
# Asks EventSource-style clients to reconnect quickly after the gateway restarts.
RETRY_MS = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One published event, its SSE frame rendered once at publish time."""

    seq: int
    type: str
    data: dict[str, Any]
    frame: bytes


def new_epoch() -> str:
    """Start time in ms as 12 hex digits: distinct per process start and increasing with time."""
    return format(time.time_ns() // 1_000_000, "012x")


def frame(event_id: str, event_type: str, data: dict[str, Any]) -> bytes:
    """One SSE frame; compact JSON never contains a newline, so ``data:`` is a single line."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event_type}\ndata: {payload}\n\n".encode()


class EventLog:
    """Publishes events to every SSE subscriber and keeps the last ``buffer_size`` for replay."""

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE, epoch: str | None = None) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.epoch = epoch or new_epoch()
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._last_seq = 0
        self._closed = False
        # Replaced on every publish: subscribers wait on the one current when they found nothing new.
        self._wakeup = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def last_id(self) -> str:
        return self.event_id(self._last_seq)

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def publish(self, event_type: str, data: dict[str, Any]) -> Event:
        """Append an event and wake the subscribers."""
        self._last_seq += 1
        event = Event(self._last_seq, event_type, data, frame(self.event_id(self._last_seq), event_type, data))
        self._buffer.append(event)
        self._wake()
        return event

    def close(self) -> None:
        """End every subscription (at shutdown), so open SSE responses finish."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    def events_after(self, seq: int) -> list[Event] | None:
        """Buffered events with a greater seq; None when some of them already left the buffer."""
        if seq >= self._last_seq:
            return []
        first = self._buffer[0].seq
        if seq < first - 1:
            return None
        start = seq - first + 1
        return [self._buffer[i] for i in range(start, len(self._buffer))]

    def resume_point(self, last_event_id: str | None) -> tuple[int, str | None]:
        """Where a subscriber starts: (seq it has seen, reset reason or None when replay is exact)."""
        if not last_event_id:
            return self._last_seq, "initial"
        epoch, sep, seq_text = last_event_id.strip().rpartition("-")
        if not sep or not seq_text.isdigit():
            return self._last_seq, "invalid_id"
        if epoch != self.epoch:
            return self._last_seq, "epoch_changed"
        seq = int(seq_text)
        if seq > self._last_seq:
            return self._last_seq, "unknown_id"
        if self.events_after(seq) is None:
            return self._last_seq, "expired"
        return seq, None

    def reset_frame(self, reason: str, requested: str | None) -> bytes:
        """The ``reset`` frame; its id is the latest event's, so resuming from it loses nothing later."""
        data = {"epoch": self.epoch, "reason": reason, "last_event_id": requested, "current_event_id": self.last_id}
        return frame(self.last_id, "reset", data)

    async def subscribe(
        self, last_event_id: str | None, heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    ) -> AsyncGenerator[bytes, None]:
        """SSE bytes for one subscriber: replay or ``reset``, then live events and heartbeat comments."""
        yield f"retry: {RETRY_MS}\n\n".encode()
        seq, reason = self.resume_point(last_event_id)
        if reason is not None:
            yield self.reset_frame(reason, last_event_id)
        while True:
            wakeup = self._wakeup
            pending = self.events_after(seq)
            if pending is None:
                # This subscriber read too slowly and the buffer moved past it.
                behind, seq = self.event_id(seq), self._last_seq
                yield self.reset_frame("expired", behind)
                continue
            for event in pending:
                yield event.frame
                seq = event.seq
            if pending:
                continue
            if self._closed:  # only after the last events went out (e.g. turns ended by shutdown)
                return
            try:
                await asyncio.wait_for(wakeup.wait(), heartbeat)
            except TimeoutError:
                yield b": heartbeat\n\n"

    def snapshot(self) -> list[Event]:
        """Everything still buffered (for tests and diagnostics)."""
        return list(self._buffer)
