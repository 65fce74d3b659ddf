"""The SSE wire format and the "current state, then newer versions" stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from agentpod.notify import LocalNotifier
from agentpod.notify.sse import HEARTBEAT, Event, Versioned, versioned_stream


def test_events_are_framed_as_the_sse_specification_says() -> None:
    assert Event('{"a": 1}', "preferences", "7").encode() == b'event: preferences\nid: 7\ndata: {"a": 1}\n\n'
    assert Event("line one\nline two").encode() == b"data: line one\ndata: line two\n\n"


def _parse(payload: str) -> Versioned:
    return Versioned(json.loads(payload)["v"], payload)


async def _next(stream: AsyncIterator[bytes], timeout: float = 1.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await anext(stream)


async def test_the_stream_sends_the_state_then_only_newer_versions() -> None:
    notifier = LocalNotifier()
    stored = {"v": 1}
    reads = 0

    async def current() -> Versioned:
        nonlocal reads
        reads += 1
        return Versioned(stored["v"], json.dumps(stored))

    async with notifier.subscribe("c") as messages:
        stream = versioned_stream(messages, event="e", current=current, parse=_parse, heartbeat_seconds=60)
        assert await _next(stream) == b'retry: 3000\n\nevent: e\nid: 1\ndata: {"v": 1}\n\n'
        for version in (3, 2, 3, 4):  # out of order and repeated, as several writers may publish
            await notifier.publish("c", json.dumps({"v": version}))
        assert await _next(stream) == b'event: e\nid: 3\ndata: {"v": 3}\n\n'
        assert await _next(stream) == b'event: e\nid: 4\ndata: {"v": 4}\n\n'

        stored["v"] = 6
        messages.deliver(None)  # a gap: the stream re-reads the state instead of trusting its last event
        assert await _next(stream) == b'event: e\nid: 6\ndata: {"v": 6}\n\n'
        assert reads == 2
        await stream.aclose()


async def test_idle_streams_get_heartbeats_and_a_push_goes_out_only_while_the_caller_is_allowed() -> None:
    notifier = LocalNotifier()
    allowed = [True, False]
    asked = 0

    async def current() -> Versioned:
        return Versioned(1, "{}")

    async def still_allowed() -> bool:
        nonlocal asked
        asked += 1
        return allowed.pop(0)

    async with notifier.subscribe("c") as messages:
        stream = versioned_stream(
            messages, event="e", current=current, parse=_parse, heartbeat_seconds=0.01, still_allowed=still_allowed
        )
        await _next(stream)
        assert [await _next(stream), await _next(stream)] == [HEARTBEAT, HEARTBEAT]
        assert asked == 0  # an idle stream asks nothing (the caller closes it when access is lost)
        await notifier.publish("c", json.dumps({"v": 2}))
        while (chunk := await _next(stream)) == HEARTBEAT:
            pass
        assert chunk == b'event: e\nid: 2\ndata: {"v": 2}\n\n'
        await notifier.publish("c", json.dumps({"v": 3}))  # no longer allowed: the stream ends, nothing sent
        rest = [chunk async for chunk in stream]
    assert set(rest) <= {HEARTBEAT} and asked == 2


async def test_the_stream_ends_when_the_notifier_closes() -> None:
    notifier = LocalNotifier()

    async def current() -> Versioned:
        return Versioned(1, "{}")

    async with notifier.subscribe("c") as messages:
        stream = versioned_stream(messages, event="e", current=current, parse=_parse, heartbeat_seconds=60)
        await _next(stream)
        await notifier.close()
        assert [chunk async for chunk in stream] == []
