"""The notifier interface, and the per-consumer subscription both implementations hand out."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from contextlib import AbstractAsyncContextManager
from typing import Self

# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more. The in-process notifier enforces the same
# limit, so a payload that would break on PostgreSQL already fails on a SQLite laptop.
MAX_PAYLOAD_BYTES = 7999
# Messages a subscriber may fall behind by before it is told it missed some (see Subscription.deliver).
DEFAULT_BUFFER = 256


class NotifierClosedError(Exception):
    """The subscription ended: its notifier closed or its ``subscribe`` block exited."""


class Subscription:
    """The messages of one channel for one consumer, in arrival order.

    ``get()`` returns a payload, or ``None`` when messages may have been lost since the previous one
    (the consumer fell more than ``buffer`` messages behind, or the notifier lost its database
    connection): the consumer should then re-read the source of truth instead of trusting its state.
    """

    def __init__(self, channel: str, buffer: int = DEFAULT_BUFFER) -> None:
        self.channel = channel
        self._buffer = buffer
        self._items: deque[str | None] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def deliver(self, payload: str | None) -> None:
        """Queue ``payload`` (None: a gap). Never blocks: a full buffer is replaced by one gap."""
        if self._closed:
            return
        if len(self._items) >= self._buffer:
            # A consumer this far behind re-reads the truth anyway; dropping the backlog bounds memory.
            # The payload that overflowed is dropped too: it was committed before publishing, so the
            # re-read sees it (or something newer).
            self._items.clear()
            payload = None
        if payload is None and self._items and self._items[-1] is None:
            return  # one gap says it all
        self._items.append(payload)
        self._ready.set()

    def close(self) -> None:
        """End the subscription; ``get()`` raises :class:`NotifierClosedError` once the backlog is read."""
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def get(self) -> str | None:
        """The next payload (None: messages may have been lost); waits until one arrives."""
        while not self._items:
            if self._closed:
                raise NotifierClosedError(self.channel)
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str | None:
        try:
            return await self.get()
        except NotifierClosedError:
            raise StopAsyncIteration from None


class Fanout:
    """Subscriptions by channel key; delivery to every subscriber of a key."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    def add(self, key: str, subscription: Subscription) -> None:
        """Register ``subscription`` under ``key``."""
        self._subscribers.setdefault(key, set()).add(subscription)

    def remove(self, key: str, subscription: Subscription) -> bool:
        """Unregister ``subscription``; True when it was the last one of ``key``."""
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return False
        subscribers.discard(subscription)
        if subscribers:
            return False
        del self._subscribers[key]
        return True

    def keys(self) -> set[str]:
        """Keys with at least one subscriber."""
        return set(self._subscribers)

    def count(self, key: str) -> int:
        """Subscribers of ``key``."""
        return len(self._subscribers.get(key, ()))

    def deliver(self, key: str, payload: str | None) -> None:
        """Hand ``payload`` to every subscriber of ``key``."""
        for subscription in self._subscribers.get(key, ()):
            subscription.deliver(payload)

    def gap_all(self) -> None:
        """Tell every subscriber it may have missed messages."""
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.deliver(None)

    def close_all(self) -> None:
        """End every subscription."""
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.close()
        self._subscribers.clear()


def check_message(channel: str, payload: str) -> None:
    """Refuse what PostgreSQL would refuse, on every backend alike."""
    if not channel:
        raise ValueError("channel must not be empty")
    if "\x00" in payload:
        raise ValueError("payload must not contain NUL characters")
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes: publish an id and let readers fetch")


class Notifier(ABC):
    """Publish small text payloads on named channels; every subscriber of the channel receives them.

    Delivery is best effort and at most once: publish *after* committing the change, and make
    consumers able to re-read the truth (on connect, and whenever a subscription reports a gap).
    Use: ``async with notifier.subscribe("preferences:<user id>") as messages: ...``.
    """

    async def start(self) -> None:  # noqa: B027  (optional hook: nothing to start in-process)
        """Connect whatever the notifier needs (called once, at process start)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect and end every subscription."""

    @abstractmethod
    async def publish(self, channel: str, payload: str) -> None:
        """Send ``payload`` (at most :data:`MAX_PAYLOAD_BYTES`) to the subscribers of ``channel``."""

    @abstractmethod
    def subscribe(self, channel: str) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe for the duration of the block; messages published once it is entered arrive."""
