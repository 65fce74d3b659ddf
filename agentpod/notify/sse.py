"""Server-Sent Events: the wire format, and the "current state, then every newer version" stream.

Framework-free (it yields bytes), so any push endpoint (preferences, chat, activity) can hand it to
a streaming response. The contract a client relies on:

* on connect: ``retry:``, then one event with the current state;
* then one event per newer version, never an older or repeated one (``id:`` is the version);
* a ``: keep-alive`` comment after ``heartbeat_seconds`` without events, so proxies keep the
  connection open;
* when the notifier reports a gap, the state is re-read and sent if it is newer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from agentpod.notify.base import NotifierClosedError, Subscription

HEARTBEAT = b": keep-alive\n\n"
DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_RETRY_MS = 3000


@dataclass(frozen=True)
class Event:
    """One SSE event."""

    data: str
    event: str | None = None
    id: str | None = None

    def encode(self) -> bytes:
        """The event on the wire (multi-line data is split into several ``data:`` lines)."""
        lines = []
        if self.event is not None:
            lines.append(f"event: {self.event}")
        if self.id is not None:
            lines.append(f"id: {self.id}")
        lines += [f"data: {line}" for line in self.data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


@functools.lru_cache(maxsize=64)
def _encoded(data: str, event: str | None, id_: str) -> bytes:
    # One publish reaches every stream of the channel with the same payload: encode it once.
    return Event(data, event, id_).encode()


@dataclass(frozen=True)
class Versioned:
    """A state and its version, as a stream sends it."""

    version: int
    data: str


async def versioned_stream(
    messages: Subscription,
    *,
    event: str,
    current: Callable[[], Awaitable[Versioned]],
    parse: Callable[[str], Versioned],
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
    retry_ms: int = DEFAULT_RETRY_MS,
) -> AsyncGenerator[bytes, None]:
    """The current state, then each newer version published on ``messages``, as SSE bytes.

    Subscribe *before* calling this, so nothing published between reading ``current()`` and the
    first ``get()`` is missed. Notifications may arrive out of order (several writers) or twice;
    only versions above the last one sent go out. ``parse`` runs once per stream and payload: cache it
    when it is not trivial (every stream of a channel receives the same payload). ``still_allowed``
    runs before every push and ends the stream when it says no, so a signed-out device receives
    nothing more however often others write. An idle stream asks nothing: to end it when access is
    lost meanwhile, close ``messages`` (the stream then ends).
    """
    state = await current()
    sent = state.version
    yield f"retry: {retry_ms}\n\n".encode() + Event(state.data, event, str(state.version)).encode()
    while True:
        try:
            async with asyncio.timeout(heartbeat_seconds):
                payload = await messages.get()
        except TimeoutError:
            yield HEARTBEAT
            continue
        except NotifierClosedError:
            return
        state = await current() if payload is None else parse(payload)
        if state.version > sent:
            if still_allowed is not None and not await still_allowed():
                return
            sent = state.version
            yield _encoded(state.data, event, str(state.version))
