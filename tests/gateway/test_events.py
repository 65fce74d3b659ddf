"""EventLog: ids, replay after Last-Event-ID, and the ``reset`` cases (no agent needed)."""

from __future__ import annotations

import asyncio
import json

from agentpod_gateway.events import EventLog


def parse(chunk: bytes) -> dict[str, str]:
    fields = {}
    for line in chunk.decode().strip().splitlines():
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


async def take(log: EventLog, last_event_id: str | None, count: int, heartbeat: float = 0.05) -> list[dict[str, str]]:
    """The first ``count`` frames after ``retry:`` (heartbeats included)."""
    frames: list[dict[str, str]] = []
    stream = log.subscribe(last_event_id, heartbeat)
    try:
        assert (await anext(stream)).startswith(b"retry:")
        while len(frames) < count:
            frames.append(parse(await asyncio.wait_for(anext(stream), 2)))
    finally:
        await stream.aclose()
    return frames


def test_ids_carry_the_epoch_and_increase() -> None:
    log = EventLog(epoch="00aa")
    ids = [log.publish("error", {"message": str(i)}).seq for i in range(3)]
    assert ids == [1, 2, 3]
    assert log.last_id == "00aa-3"
    later = EventLog()
    assert len(later.epoch) == 12 and later.epoch > "000000000000"


async def test_replay_is_exactly_the_missed_events() -> None:
    log = EventLog(epoch="e1")
    for i in range(5):
        log.publish("session_update", {"n": i})
    frames = await take(log, "e1-2", 4)
    assert [f.get("id") for f in frames[:3]] == ["e1-3", "e1-4", "e1-5"]
    assert [json.loads(f["data"])["n"] for f in frames[:3]] == [2, 3, 4]
    assert frames[3] == {"": "heartbeat"}  # nothing more: the next frame is a heartbeat comment


async def test_up_to_date_subscriber_gets_no_replay_and_then_live_events() -> None:
    log = EventLog(epoch="e1")
    log.publish("error", {"message": "old"})
    stream = log.subscribe("e1-1", 5)
    assert (await anext(stream)).startswith(b"retry:")
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert not pending.done()
    log.publish("error", {"message": "new"})
    frame = parse(await asyncio.wait_for(pending, 2))
    assert frame["id"] == "e1-2" and json.loads(frame["data"]) == {"message": "new"}
    await stream.aclose()


async def test_reset_cases() -> None:
    log = EventLog(buffer_size=3, epoch="e1")
    for i in range(6):
        log.publish("session_update", {"n": i})
    cases = {
        None: "initial",
        "e0-3": "epoch_changed",
        "garbage": "invalid_id",
        "e1-99": "unknown_id",
        "e1-1": "expired",  # events 2 and 3 already left the 3-event buffer
    }
    for last_event_id, reason in cases.items():
        (frame,) = await take(log, last_event_id, 1)
        assert frame["event"] == "reset", last_event_id
        # The reset's id is the newest event: resuming from it loses nothing published later.
        assert frame["id"] == "e1-6"
        data = json.loads(frame["data"])
        assert data["reason"] == reason and data["epoch"] == "e1" and data["last_event_id"] == last_event_id
    # The oldest id still resumable: exactly the three buffered events follow.
    frames = await take(log, "e1-3", 3)
    assert [f["id"] for f in frames] == ["e1-4", "e1-5", "e1-6"]


async def test_slow_subscriber_that_falls_behind_the_buffer_gets_a_reset() -> None:
    log = EventLog(buffer_size=2, epoch="e1")
    log.publish("session_update", {"n": 0})
    stream = log.subscribe("e1-0", 5)
    assert (await anext(stream)).startswith(b"retry:")
    assert parse(await anext(stream))["id"] == "e1-1"
    for i in range(1, 5):
        log.publish("session_update", {"n": i})
    frame = parse(await anext(stream))
    assert frame["event"] == "reset" and json.loads(frame["data"])["reason"] == "expired"
    await stream.aclose()


async def test_close_sends_what_is_left_then_ends() -> None:
    log = EventLog(epoch="e1")
    stream = log.subscribe(None, 5)
    assert (await anext(stream)).startswith(b"retry:")
    assert parse(await anext(stream))["event"] == "reset"
    log.publish("session_end_turn", {"reason": "cancelled"})
    log.close()
    rest = [chunk async for chunk in stream]
    assert [parse(chunk)["event"] for chunk in rest] == ["session_end_turn"]
