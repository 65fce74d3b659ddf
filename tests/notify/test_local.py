"""The in-process notifier and the subscription contract both notifiers share."""

from __future__ import annotations

import asyncio

import pytest

from agentpod.notify import MAX_PAYLOAD_BYTES, LocalNotifier, PostgresNotifier, create_notifier
from agentpod.notify.base import Subscription


async def test_a_publish_reaches_every_subscriber_of_its_channel_only() -> None:
    notifier = LocalNotifier()
    await notifier.publish("a", "before anyone listened")
    async with notifier.subscribe("a") as first, notifier.subscribe("a") as second, notifier.subscribe("b") as other:
        await notifier.publish("a", "one")
        await notifier.publish("a", "two")
        assert [await first.get(), await first.get()] == ["one", "two"]
        assert [await second.get(), await second.get()] == ["one", "two"]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await other.get()
        assert notifier.subscribers("a") == 2
    assert notifier.subscribers("a") == notifier.subscribers("b") == 0
    await notifier.close()


async def test_a_subscriber_that_falls_behind_gets_one_gap_instead_of_unbounded_memory() -> None:
    subscription = Subscription("c", buffer=3)
    for n in range(4):
        subscription.deliver(str(n))
    subscription.deliver("later")
    # The backlog (and the message that overflowed it) became one "you missed something": the
    # consumer re-reads the truth, which includes them. What comes after is delivered normally.
    assert [await subscription.get(), await subscription.get()] == [None, "later"]
    subscription.deliver(None)
    subscription.deliver(None)
    assert await subscription.get() is None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await subscription.get()  # the two gaps were one


async def test_closing_the_notifier_ends_every_subscription() -> None:
    notifier = LocalNotifier()
    received: list[str | None] = []

    async def consume() -> None:
        async with notifier.subscribe("c") as messages:
            async for payload in messages:
                received.append(payload)

    task = asyncio.create_task(consume())
    while notifier.subscribers("c") == 0:
        await asyncio.sleep(0)
    await notifier.publish("c", "last")
    await notifier.close()
    async with asyncio.timeout(1):
        await task
    assert received == ["last"]


@pytest.mark.parametrize(
    ("channel", "payload"),
    [("", "x"), ("c", "x" * (MAX_PAYLOAD_BYTES + 1)), ("c", "é" * 4000), ("c", "nul\x00")],
)
async def test_what_postgresql_would_refuse_is_refused_in_process_too(channel: str, payload: str) -> None:
    with pytest.raises(ValueError):
        await LocalNotifier().publish(channel, payload)


def test_the_database_decides_the_notifier() -> None:
    assert isinstance(create_notifier("sqlite+aiosqlite:///var/agentpod.db"), LocalNotifier)
    assert isinstance(create_notifier("postgresql+asyncpg://u:p@db/agentpod"), PostgresNotifier)
    with pytest.raises(ValueError):
        create_notifier("mysql+aiomysql://u:p@db/agentpod")
