"""In-process notifications (SQLite deployments run one API process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agentpod.notify.base import DEFAULT_BUFFER, Fanout, Notifier, Subscription, check_message


class LocalNotifier(Notifier):
    """Delivers within this process only: a publish reaches this process's subscribers synchronously."""

    def __init__(self, *, buffer: int = DEFAULT_BUFFER) -> None:
        self._buffer = buffer
        self._fanout = Fanout()

    async def close(self) -> None:
        """End every subscription."""
        self._fanout.close_all()

    async def publish(self, channel: str, payload: str) -> None:
        """Hand ``payload`` to the channel's subscribers."""
        check_message(channel, payload)
        self._fanout.deliver(channel, payload)

    def subscribers(self, channel: str) -> int:
        """How many subscriptions ``channel`` has (for tests and metrics)."""
        return self._fanout.count(channel)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Receive the channel's messages inside the block."""
        subscription = Subscription(channel, self._buffer)
        self._fanout.add(channel, subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            self._fanout.remove(channel, subscription)
