"""The stream status reaches the database when a user would see a change, and progress only now and then."""

from __future__ import annotations

from datetime import UTC, datetime

from agentpod.chat_mirror.status import PROGRESS_SECONDS, StatusSaver
from agentpod.domain.chat import SyncStatus


async def test_visible_changes_are_written_at_once_and_progress_at_most_every_interval() -> None:
    now = [0.0]
    written: list[SyncStatus] = []

    async def save(status: SyncStatus) -> None:
        written.append(status.model_copy())

    saver = StatusSaver(save, clock=lambda: now[0])
    status = SyncStatus(connected=True)
    assert await saver.beat(status)  # the first beat always writes
    assert not await saver.beat(status)  # nothing changed

    status.events_applied, status.last_event_at = 10, datetime.now(UTC)
    now[0] += 5
    assert not await saver.beat(status)  # progress alone waits
    now[0] += PROGRESS_SECONDS
    assert await saver.beat(status) and written[-1].events_applied == 10

    status.connected, status.last_error, status.reconnects = False, "ReadError", 1
    assert await saver.beat(status)  # a disconnect shows at once
    assert [w.connected for w in written] == [True, True, False]
    assert await saver.beat(status, force=True)
