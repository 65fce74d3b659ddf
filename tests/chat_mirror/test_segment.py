"""The one segment loop, driven through a fake source: what it counts, how it reconnects, what it flushes.

The real sources (OpenCode, the ACP gateway) are exercised end to end in tests/sync and tests/acp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.testing import ActivityEnvironment

from agentpod.chat_mirror.segment import run_segment
from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncStatus, SyncTarget

TARGET = SyncTarget(sandbox_id="sb", user_id="u", opencode_url="http://127.0.0.1:1")


class FakeMirror:
    """Counts flushes; never has anything due."""

    def __init__(self) -> None:
        self.flushes = 0

    def due_in(self) -> float | None:
        return None

    async def flush_due(self) -> int:
        return 0

    async def flush(self) -> int:
        self.flushes += 1
        return 0


class FakeSource:
    """Each connection plays its frames; ``open`` opens the stream and reconciles, ``beat`` is a heartbeat.

    A connection ending with ``None`` stays silent afterwards (until the segment's end); otherwise it ends,
    which the loop must treat as a lost connection.
    """

    name = "the fake"
    label = "fake sync"
    errors: tuple[type[Exception], ...] = (ConnectionError,)
    first_frame_limit = silence_limit = 5.0

    def __init__(self, connections: list[list[str | None]]) -> None:
        self.mirror = FakeMirror()
        self.connections = connections
        self.firsts: list[str] = []
        self.disconnects = 0
        self.saved: list[SyncStatus] = []

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[str, AsyncIterator[str]]]:
        if not self.connections:
            raise ConnectionError("refused")
        yield "link", self._frames(self.connections.pop(0))

    @staticmethod
    async def _frames(frames: list[str | None]) -> AsyncIterator[str]:
        for frame in frames:
            if frame is None:
                await asyncio.Event().wait()
            else:
                yield frame

    def opens(self, frame: str) -> bool:
        return frame == "open"

    async def dispatch(self, link: str, frame: str, *, first: bool) -> ReconcileReport | bool:
        assert link == "link"
        if first:
            self.firsts.append(frame)
        if frame == "open":
            return ReconcileReport()
        return frame != "beat"

    async def disconnected(self) -> None:
        self.disconnects += 1

    async def save_status(self, status: SyncStatus) -> None:
        self.saved.append(status.model_copy())


async def run(source: FakeSource, seconds: float) -> StreamSegmentResult:
    data = StreamSegmentInput(target=TARGET, segment_seconds=seconds)
    return await ActivityEnvironment().run(run_segment, source, data)


async def test_a_segment_counts_events_and_reconciles_and_reconnects_after_a_clean_end() -> None:
    source = FakeSource([["open", "event", "beat", "event"], ["open", "event", None]])
    result = await run(source, 1.5)

    assert (result.events, result.reconciles) == (3, 2)
    assert source.firsts == ["open", "open"]  # each connection opened once
    assert source.disconnects == 1 and result.status.reconnects == 1
    assert result.status.last_error is None  # cleared when the stream opened again
    assert result.status.events_applied == 3 and result.status.last_reconcile_at is not None
    # Ending the segment writes what is buffered and leaves the status disconnected, saved.
    assert source.mirror.flushes == 1
    assert not result.status.connected and source.saved[-1] == result.status


async def test_a_refused_connection_backs_off_until_the_segment_ends() -> None:
    source = FakeSource([])
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await run(source, 1.0)

    assert loop.time() - began < 3  # the last wait is cut at the segment's end
    assert result.events == 0 and result.status.reconnects == source.disconnects >= 2
    assert result.status.last_error == "ConnectionError: refused"
