"""The live-stream coalescer: few flushes for many deltas, exact final text, order kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentpod.chat_mirror.coalescer import (
    Coalescer,
    MessageChange,
    MessageRemoved,
    Operation,
    PartRemoved,
    SessionChange,
    SessionSignal,
    unwrap,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "opencode"
SES, MSG, PART = "ses_1", "msg_1", "prt_1"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def part_updated(text: str, *, end: bool = False, part_id: str = PART) -> dict[str, Any]:
    time = {"start": 1, "end": 2} if end else {"start": 1}
    part = {"id": part_id, "messageID": MSG, "sessionID": SES, "type": "text", "text": text, "time": time}
    return {"type": "message.part.updated", "properties": {"sessionID": SES, "part": part}}


def delta(text: str, part_id: str = PART) -> dict[str, Any]:
    props = {"sessionID": SES, "messageID": MSG, "partID": part_id, "field": "text", "delta": text}
    return {"type": "message.part.delta", "properties": props}


def message_updated(*, completed: bool = False) -> dict[str, Any]:
    time = {"created": 1, "completed": 2} if completed else {"created": 1}
    info = {"id": MSG, "sessionID": SES, "role": "assistant", "time": time}
    return {"type": "message.updated", "properties": {"sessionID": SES, "info": info}}


def changes(ops: list[Operation]) -> list[MessageChange]:
    return [op for op in ops if isinstance(op, MessageChange)]


def run(coalescer: Coalescer, clock: FakeClock, events: list[dict[str, Any]], step: float) -> list[list[Operation]]:
    """Feed events ``step`` seconds apart, draining whenever the coalescer asks; the batches."""
    batches = []
    for event in events:
        clock.now += step
        if coalescer.add(event):
            batches.append(coalescer.drain())
    if len(coalescer):
        batches.append(coalescer.drain())
    return batches


def test_two_thousand_deltas_become_a_handful_of_flushes_with_the_exact_final_text() -> None:
    clock = FakeClock()
    coalescer = Coalescer(interval=0.1, clock=clock)
    chunks = [f"w{i} " for i in range(2000)]
    events = [message_updated(), part_updated(""), *(delta(c) for c in chunks)]
    events += [part_updated("".join(chunks), end=True), message_updated(completed=True)]
    # OpenCode delivers 2,000 chunks in ~0.1 s: 50 µs apart
    batches = run(coalescer, clock, events, step=0.00005)

    assert 1 <= len(batches) <= 5, len(batches)
    last = changes(batches[-1])[-1]
    assert last.parts[PART]["text"] == "".join(chunks)
    assert last.parts[PART]["time"] == {"start": 1, "end": 2}
    assert last.info is not None and last.info["time"]["completed"] == 2
    assert coalescer.stats.events == len(events)


def test_slow_stream_flushes_every_interval_with_growing_text() -> None:
    clock = FakeClock()
    coalescer = Coalescer(interval=0.1, clock=clock)
    coalescer.add(part_updated(""))
    texts = []
    for i in range(100):
        clock.now += 0.01  # 100 deltas over one second
        if coalescer.add(delta(f"{i},")):
            texts.append(changes(coalescer.drain())[0].parts[PART]["text"])
    assert 8 <= len(texts) <= 11
    assert all(a != b and b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))


def test_due_follows_the_clock_and_the_size_limit() -> None:
    clock = FakeClock()
    coalescer = Coalescer(interval=0.1, max_items=3, clock=clock)
    assert not coalescer.due() and coalescer.due_in() is None  # nothing to wait for
    assert not coalescer.add(part_updated(""))
    clock.now += 0.05
    assert not coalescer.due()
    assert coalescer.due_in() == pytest.approx(0.05)  # the flusher sleeps exactly until then
    clock.now += 0.05
    assert coalescer.due() and coalescer.due_in() == 0
    coalescer.drain()
    assert coalescer.due_in() is None
    assert not coalescer.add(delta("a")) and not coalescer.add(delta("b")) and not coalescer.add(delta("c"))
    assert coalescer.add(delta("d"))  # more than max_items buffered
    assert coalescer.due_in() == 0


def test_turn_ending_events_ask_for_an_immediate_flush() -> None:
    for event in [
        message_updated(completed=True),
        {"type": "session.idle", "properties": {"sessionID": SES}},
        {"type": "session.status", "properties": {"sessionID": SES, "status": {"type": "idle"}}},
        {"type": "session.error", "properties": {"sessionID": SES, "error": {"name": "APIError"}}},
        {"type": "session.error", "properties": {"error": {"name": "UnknownError"}}},  # names no session
    ]:
        assert Coalescer(clock=FakeClock()).add(event), event["type"]
    busy = {"type": "session.status", "properties": {"sessionID": SES, "status": {"type": "busy"}}}
    assert not Coalescer(clock=FakeClock()).add(busy)
    assert not Coalescer(clock=FakeClock()).add(message_updated())


def test_noise_is_ignored_and_global_frames_are_unwrapped() -> None:
    catalogue = load("full_chat.events.json")
    noise = [
        e for e in catalogue if e["type"] in ("server.connected", "server.heartbeat", "plugin.added", "session.diff")
    ]
    noise += [e for e in catalogue if e["type"].startswith("permission.")]
    coalescer = Coalescer(clock=FakeClock())
    assert noise and not any(coalescer.add(e) for e in noise)
    assert len(coalescer) == 0

    wrapped = {"directory": "/workspace/proj", "payload": message_updated()}
    sync_frame = {
        "directory": "/workspace/proj",
        "payload": {"type": "sync", "syncEvent": {"type": "message.updated.1"}},
    }
    assert unwrap(wrapped) == ("message.updated", message_updated()["properties"])
    assert unwrap(sync_frame) is None
    assert unwrap({"type": "message.updated", "data": {"x": 1}}) == ("message.updated", {"x": 1})


def test_full_chat_ends_in_the_listed_state() -> None:
    coalescer = Coalescer(clock=FakeClock())
    state: dict[str, dict[str, Any]] = {}  # message id -> {"info": ..., "parts": {id: part}}
    sessions: list[SessionChange] = []
    for event in load("full_chat.events.json"):
        coalescer.add(event)
    for op in coalescer.drain():
        if isinstance(op, SessionChange):
            sessions.append(op)
        elif isinstance(op, MessageChange):
            entry = state.setdefault(op.message_id, {"info": None, "parts": {}})
            entry["info"] = op.info or entry["info"]
            entry["parts"].update(op.parts)
    listed = load("api_snapshot.json")["messages"]["ses_de99cb776ffeanXOCVNaqIDQUa"]
    for message in listed[:5]:  # the full chat's five messages
        entry = state[message["info"]["id"]]
        assert entry["info"] == message["info"]
        assert sorted(entry["parts"].values(), key=lambda p: p["id"]) == message["parts"]
    assert [s.info["title"] for s in sessions if s.info][-1] == "Fake title"


def test_changes_to_one_message_share_one_slot_in_stream_order() -> None:
    coalescer = Coalescer(clock=FakeClock())
    session = {"type": "session.updated", "properties": {"info": {"id": SES, "title": "t"}}}
    coalescer.add(message_updated())
    coalescer.add(session)
    coalescer.add(part_updated("a"))
    coalescer.add(part_updated("b", part_id="prt_2"))
    ops = coalescer.drain()
    assert [type(op) for op in ops] == [MessageChange, SessionChange]
    assert list(changes(ops)[0].parts) == [PART, "prt_2"]


def test_message_removed_mid_buffer_drops_its_state_and_keeps_order() -> None:
    coalescer = Coalescer(clock=FakeClock())
    coalescer.add(message_updated())
    coalescer.add(part_updated(""))
    coalescer.add(delta("lost"))
    coalescer.add({"type": "message.removed", "properties": {"sessionID": SES, "messageID": MSG}})
    coalescer.add(delta("after removal"))  # its base went with the message: dropped
    coalescer.add(message_updated())  # re-created after the removal: a new slot, after it
    ops = coalescer.drain()
    assert [type(op) for op in ops] == [MessageRemoved, MessageChange]
    assert changes(ops)[0].parts == {}
    assert coalescer.stats.dropped_deltas == 1


def test_part_removed_mid_buffer_closes_the_slot() -> None:
    coalescer = Coalescer(clock=FakeClock())
    coalescer.add(part_updated("keep", part_id="prt_0"))
    coalescer.add(part_updated("gone"))
    coalescer.add({"type": "message.part.removed", "properties": {"sessionID": SES, "messageID": MSG, "partID": PART}})
    coalescer.add(part_updated("later", part_id="prt_3"))
    ops = coalescer.drain()
    assert [type(op) for op in ops] == [MessageChange, PartRemoved, MessageChange]
    first, second = changes(ops)
    assert list(first.parts) == ["prt_0"] and list(second.parts) == ["prt_3"]


def test_deltas_need_the_start_of_their_part() -> None:
    clock = FakeClock()
    coalescer = Coalescer(clock=clock)
    assert not coalescer.add(delta("orphan"))  # joined mid-part: wait for the final update
    coalescer.add(part_updated("Hel"))
    coalescer.drain()
    coalescer.add(delta("lo"))  # the base survives a flush
    assert changes(coalescer.drain())[0].parts[PART]["text"] == "Hello"
    coalescer.reset()  # reconnect: continuity lost
    coalescer.add(delta(" world"))
    assert coalescer.drain() == []
    assert coalescer.stats.dropped_deltas == 2


def test_bases_are_forgotten_when_the_turn_ends() -> None:
    coalescer = Coalescer(clock=FakeClock())
    coalescer.add(part_updated(""))
    coalescer.add({"type": "session.idle", "properties": {"sessionID": SES}})
    coalescer.drain()
    coalescer.add(delta("late"))
    assert coalescer.drain() == []


def test_drained_operations_are_copies() -> None:
    coalescer = Coalescer(clock=FakeClock())
    event = part_updated("a")
    coalescer.add(event)
    first = changes(coalescer.drain())[0]
    coalescer.add(delta("b"))
    second = changes(coalescer.drain())[0]
    assert first.parts[PART]["text"] == "a"  # not changed by the later delta
    assert second.parts[PART]["text"] == "ab"
    assert event["properties"]["part"]["text"] == "a"  # the caller's event is untouched


def test_session_events_pass_through_in_order() -> None:
    coalescer = Coalescer(clock=FakeClock())
    events = load("error_turn.events.json")
    for event in events:
        coalescer.add(event)
    ops = coalescer.drain()
    signals = [op.type for op in ops if isinstance(op, SessionSignal)]
    assert signals == ["session.status", "session.error", "session.status", "session.idle", "session.idle"]
