"""How often a chat stream's status reaches the database.

Every stream activity heartbeats to Temporal every few seconds (cheap, and how a dead worker is noticed),
but a status row written on every beat costs one transaction per sandbox every few seconds: 2,000 writes
per second for 10,000 sandboxes before anyone chats. :class:`StatusSaver` writes when something a user
would see changed (connected, the last error, a reconnect) at once, and progress counters at most every
``PROGRESS_SECONDS``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from agentpod.domain.chat import SyncStatus

PROGRESS_SECONDS = 30.0


class StatusSaver:
    """Decides, beat by beat, whether the status must be written now."""

    def __init__(
        self, save: Callable[[SyncStatus], Awaitable[None]], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._save = save
        self._clock = clock
        self._saved: SyncStatus | None = None
        self._saved_at = 0.0

    @staticmethod
    def _visible(status: SyncStatus) -> tuple[object, ...]:
        return (status.connected, status.last_error, status.reconnects, status.last_reconcile_at)

    async def beat(self, status: SyncStatus, *, force: bool = False) -> bool:
        """Write ``status`` if it must be written now; True when it was."""
        saved = self._saved
        due = saved is None or force or self._visible(saved) != self._visible(status)
        if not due and saved != status and self._clock() - self._saved_at >= PROGRESS_SECONDS:
            due = True
        if not due:
            return False
        await self._save(status)
        self._saved, self._saved_at = status.model_copy(), self._clock()
        return True
