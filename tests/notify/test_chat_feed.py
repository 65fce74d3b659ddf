"""What wakes live chat streams: one shared poll per process (both databases) and, on PostgreSQL, the
NOTIFY the mirror's write transaction sends at commit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.notify import PostgresNotifier
from agentpod.notify.chat_feed import ChatChanges
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import lock_sandbox_chats
from agentpod.store.tables import ChatMessage, ChatSession
from tests.helpers import eventually, make_owner


async def _sandbox_with_session(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str]:
    owner = await make_owner(sessions)
    async with sessions() as db:
        row = ChatSession(
            sandbox_id=owner.sandbox_id,
            user_id=owner.user_id,
            source="opencode",
            opencode_session_id=f"ses_{uuid.uuid4().hex}",
        )
        db.add(row)
        await db.commit()
        return owner.sandbox_id, row.id


def _message(session_id: str, **fields: object) -> ChatMessage:
    return ChatMessage(
        session_id=session_id,
        external_message_id=f"msg_{uuid.uuid4().hex}",
        source="opencode",
        role="assistant",
        content={},
        status="complete",
        **fields,
    )


async def _woken(wake: asyncio.Event, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        await wake.wait()
    wake.clear()


@contextlib.asynccontextmanager
async def _watching(changes: ChatChanges, sandbox_ids: list[str]) -> AsyncIterator[dict[str, asyncio.Event]]:
    wakes = {sandbox_id: asyncio.Event() for sandbox_id in sandbox_ids}
    async with contextlib.AsyncExitStack() as stack:
        for sandbox_id, wake in wakes.items():
            await stack.enter_async_context(changes.watch(sandbox_id, wake))
        yield wakes


async def test_the_shared_poll_wakes_only_the_sandbox_whose_rows_changed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sandboxes = [await _sandbox_with_session(sessions) for _ in range(3)]
    changes = ChatChanges(sessions, poll_seconds=0.05)  # no notifier: the poll is the only signal
    try:
        async with _watching(changes, [sandbox for sandbox, _ in sandboxes]) as wakes:
            for wake in wakes.values():  # the first tick wakes everyone once (nothing seen yet)
                await _woken(wake)
            (quiet, _), (busy, busy_session), (other, _) = sandboxes

            async with sessions() as db:  # a new row
                db.add(_message(busy_session))
                await db.commit()
            await _woken(wakes[busy])

            async with sessions() as db:  # a row committed after later-stamped ones were seen
                db.add(_message(busy_session, updated_at=utcnow() - timedelta(seconds=2)))
                await db.commit()
            await _woken(wakes[busy])

            async with sessions() as db:  # a new version of a row already seen
                await db.execute(
                    update(ChatSession).where(ChatSession.id == busy_session).values(title="t", updated_at=utcnow())
                )
                await db.commit()
            await _woken(wakes[busy])

            await asyncio.sleep(0.3)  # several ticks with nothing new
            assert not wakes[busy].is_set() and not wakes[quiet].is_set() and not wakes[other].is_set()
        assert changes.watched == frozenset()
    finally:
        await changes.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_committed_mirror_write_wakes_watchers_through_notify_and_a_rolled_back_one_does_not(
    sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    (watched, session_id), (elsewhere, other_session) = [await _sandbox_with_session(sessions) for _ in range(2)]
    notifier = PostgresNotifier(database_url)
    await notifier.start()
    changes = ChatChanges(sessions, notifier, poll_seconds=3600)  # the poll never runs: only NOTIFY can wake
    try:
        async with _watching(changes, [watched]) as wakes:
            assert notifier.listening  # LISTEN is in effect once watch() is entered

            async with sessions() as db:  # the mirror's transaction shape: the chat lock first
                await lock_sandbox_chats(db, watched)
                db.add(_message(session_id))
                await db.rollback()
            async with sessions() as db:  # another sandbox's write
                await lock_sandbox_chats(db, elsewhere)
                db.add(_message(other_session))
                await db.commit()
            with pytest.raises(TimeoutError):
                await _woken(wakes[watched], timeout=0.5)

            async with sessions() as db:
                await lock_sandbox_chats(db, watched)
                db.add(_message(session_id))
                await db.commit()
            await _woken(wakes[watched])

        async def unlistened() -> bool:  # UNLISTEN runs in the background once nobody watches
            return not notifier.listening

        await eventually(unlistened, timeout=3, what="UNLISTEN after the last watcher left")
    finally:
        await changes.close()
        await notifier.close()
