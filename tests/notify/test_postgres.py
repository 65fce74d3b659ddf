"""LISTEN/NOTIFY across notifiers (as across API processes), listening on demand, and reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text

from agentpod.notify import PostgresNotifier, Subscription
from agentpod.notify.postgres import pg_channel
from agentpod.store.engine import create_engine
from tests.requirements import postgres_url

pytestmark = pytest.mark.postgres


@pytest_asyncio.fixture
async def notifiers() -> AsyncIterator[tuple[PostgresNotifier, PostgresNotifier]]:
    """Two notifiers on one database, each with its own connections: two API processes' worth."""
    url = postgres_url()
    pair = (PostgresNotifier(url, reconnect_seconds=0.05), PostgresNotifier(url, reconnect_seconds=0.05))
    for notifier in pair:
        await notifier.start()
    try:
        yield pair
    finally:
        for notifier in pair:
            await notifier.close()


def _channel() -> str:
    # Test runs share the server; NOTIFY is per database, so names must not collide.
    return f"test:{uuid.uuid4()}"


async def _get(messages: Subscription, timeout: float = 2.0) -> str | None:
    async with asyncio.timeout(timeout):
        return await messages.get()


async def test_a_publish_in_one_process_reaches_subscribers_in_every_process(
    notifiers: tuple[PostgresNotifier, PostgresNotifier],
) -> None:
    a, b = notifiers
    channel = _channel()
    async with b.subscribe(channel) as on_b, a.subscribe(channel) as on_a, b.subscribe(_channel()) as elsewhere:
        for n in range(5):
            await a.publish(channel, f"m{n}")
        assert [await _get(on_b) for _ in range(5)] == [f"m{n}" for n in range(5)]  # in publish order
        assert [await _get(on_a) for _ in range(5)] == [f"m{n}" for n in range(5)]  # the publisher's too
        with pytest.raises(TimeoutError):
            await _get(elsewhere, timeout=0.2)


async def test_channels_are_listened_to_only_while_someone_subscribes(
    notifiers: tuple[PostgresNotifier, PostgresNotifier],
) -> None:
    a, b = notifiers
    channel = _channel()
    async with contextlib.AsyncExitStack() as stack:
        # Many devices of one user connecting at once: each returns only once the LISTEN is in effect.
        devices = await asyncio.gather(*(stack.enter_async_context(b.subscribe(channel)) for _ in range(50)))
        assert pg_channel(channel) in b.listening
        await a.publish(channel, "hello")
        assert [await _get(messages) for messages in devices] == ["hello"] * 50
    for _ in range(100):  # UNLISTEN happens in the background once the last subscriber left
        if pg_channel(channel) not in b.listening:
            break
        await asyncio.sleep(0.01)
    assert pg_channel(channel) not in b.listening


async def test_long_channel_names_are_hashed_to_a_valid_identifier(
    notifiers: tuple[PostgresNotifier, PostgresNotifier],
) -> None:
    a, b = notifiers
    channel = "activity:" + "x" * 100 + str(uuid.uuid4())
    assert len(pg_channel(channel)) == 63 and pg_channel(channel) == pg_channel(channel)
    async with b.subscribe(channel) as messages:
        await a.publish(channel, "long")
        assert await _get(messages) == "long"


async def test_a_lost_listening_connection_is_replaced_and_subscribers_hear_of_the_gap(
    notifiers: tuple[PostgresNotifier, PostgresNotifier],
) -> None:
    a, b = notifiers
    channel = _channel()
    async with b.subscribe(channel) as messages:
        pid = b.listener_pid
        assert pid is not None
        admin = create_engine(postgres_url())
        try:
            async with admin.connect() as connection:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await admin.dispose()
        assert await _get(messages, timeout=5) is None  # "re-read the truth": messages may have been lost
        assert b.listener_pid not in (None, pid)
        await a.publish(channel, "after")
        assert await _get(messages) == "after"
