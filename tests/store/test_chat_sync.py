"""The chat-sync writer and the OpenCode mirror, on SQLite and PostgreSQL.

Idempotency, out-of-order events, exact counters, tombstones that keep history, reconcile drift in
both directions, interrupted turns, the upstream-loss guard, and how many rows a delta burst costs.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.chat_mirror.opencode import OpenCodeMirror, judge_upstream
from agentpod.domain.chat import ReconcileReport
from agentpod.store.chat import upsert_opencode_session
from agentpod.store.tables import ActivityLog, ChatMessage, ChatSession, Sandbox
from tests.helpers import Owner, make_owner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "opencode"
SES = "ses_de99cb776ffeanXOCVNaqIDQUa"
CHILD = "ses_de99a1b2c3ffeChildSessXYZ01"
U1, A1 = "msg_216634aea001sqtuKyFwUB2Thv", "msg_216635073001WS5xe1v7thCCxh"
A3 = "msg_2166361f0001Kc7wzRbVn3Ys5T"
U4, A4 = "msg_21663651c001SoxJfr8VxyrQvF", "msg_216636531001xNQbClF4v2WDxW"
A5 = "msg_2166369a0001Cv5Nl9Mq3Rt7Su"
JSON = dict[str, Any]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def all_events() -> list[JSON]:
    names = ("full_chat", "child_session", "error_turn", "abort_turn")
    return [e for name in names for e in load(f"{name}.events.json")]


# --------------------------------------------------------------------------- fixtures and helpers


@pytest_asyncio.fixture
async def owner(sessions: async_sessionmaker[AsyncSession]) -> Owner:
    return await make_owner(sessions)


def mirror_for(sessions: async_sessionmaker[AsyncSession], owner: Owner, **kwargs: Any) -> OpenCodeMirror:
    return OpenCodeMirror(sessions, sandbox_id=owner.sandbox_id, user_id=owner.user_id, **kwargs)


@pytest.fixture
def mirror(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> OpenCodeMirror:
    return mirror_for(sessions, owner)


class Writes:
    """Counts INSERT / UPDATE / DELETE statements sent to the database."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __len__(self) -> int:
        return len(self.statements)

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.statements.append(statement)


@contextmanager
def count_writes(engine: AsyncEngine) -> Iterator[Writes]:
    writes = Writes()
    event.listen(engine.sync_engine, "before_cursor_execute", writes)
    try:
        yield writes
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", writes)


def columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


async def stored(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> dict[str, dict[str, dict[str, Any]]]:
    """Every chat row of the sandbox: sessions by upstream id, messages by upstream id."""
    async with sessions() as db:
        chat_sessions = (
            (await db.execute(select(ChatSession).where(ChatSession.sandbox_id == owner.sandbox_id))).scalars().all()
        )
        messages = (
            (
                await db.execute(
                    select(ChatMessage)
                    .join(ChatSession, ChatSession.id == ChatMessage.session_id)
                    .where(ChatSession.sandbox_id == owner.sandbox_id)
                )
            )
            .scalars()
            .all()
        )
    return {
        "sessions": {str(s.opencode_session_id): columns(s) for s in chat_sessions},
        "messages": {m.external_message_id: columns(m) for m in messages},
    }


NORMALIZED = (
    "role",
    "source",
    "content",
    "text",
    "thinking",
    "tool_calls",
    "tool_results",
    "model_provider",
    "model_id",
    "agent_id",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "status",
    "error_message",
    "upstream_created_at",
    "upstream_completed_at",
    "completed_at",
)


class FakeOpenCode:
    """An in-memory OpenCode REST API (the reconcile side of ``OpenCodeApi``)."""

    def __init__(self, snapshot: JSON | None = None, busy: dict[str, JSON] | None = None) -> None:
        snapshot = copy.deepcopy(snapshot if snapshot is not None else load("api_snapshot.json"))
        self.sessions: list[JSON] = snapshot["sessions"]
        self.messages: dict[str, list[JSON]] = snapshot["messages"]
        self.busy = busy or {}

    async def list_sessions(self) -> list[JSON]:
        return copy.deepcopy(self.sessions)

    async def list_messages(self, session_id: str) -> list[JSON]:
        if session_id not in {s["id"] for s in self.sessions}:
            raise LookupError(f"Session not found: {session_id}")
        return copy.deepcopy(self.messages.get(session_id, []))

    async def session_status(self) -> dict[str, JSON]:
        return dict(self.busy)

    async def events(self) -> AsyncIterator[JSON]:
        return
        yield {}  # an async generator that yields nothing

    def session(self, session_id: str) -> JSON:
        return next(s for s in self.sessions if s["id"] == session_id)

    def drop_session(self, session_id: str) -> None:
        self.sessions = [s for s in self.sessions if s["id"] != session_id]
        self.messages.pop(session_id, None)


# --------------------------------------------------------------------------- the live path


async def test_applying_the_same_batch_three_times_gives_the_same_rows(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    events = load("full_chat.events.json")
    assert await mirror.apply(events) > 0
    first = await stored(sessions, owner)
    assert await mirror.apply(events) == 0
    assert await mirror.apply(events) == 0
    assert await stored(sessions, owner) == first  # updated_at included: nothing was rewritten

    session = first["sessions"][SES]
    assert session["title"] == "Fake title"
    assert (session["message_count"], session["user_message_count"], session["assistant_message_count"]) == (5, 2, 3)
    assert (session["total_input_tokens"], session["total_output_tokens"]) == (100 + 150 + 200, 10 + 20 + 8)
    assert session["last_message_at"] == first["messages"][A3]["upstream_created_at"]
    assert session["parent_session_id"] is None and session["status"] == "active"

    a1 = first["messages"][A1]
    assert (a1["role"], a1["status"], a1["source"]) == ("assistant", "complete", "opencode")
    assert a1["text"] == "Hello from the fake LLM. This reply is streamed. "
    assert a1["thinking"] == "The user wants a greeting."
    assert (a1["model_provider"], a1["model_id"], a1["agent_id"]) == ("fake", "fake-model", "build")
    assert a1["completed_at"] == a1["upstream_completed_at"] is not None
    tool_turn = first["messages"]["msg_216635fa2001R6EfBuSVGENvpP"]
    assert tool_turn["tool_calls"][0]["tool"] == "bash"
    assert tool_turn["tool_results"][0]["output"] == "hello-from-tool\n"
    assert first["messages"][U1]["text"] == "Say hello"

    # Each finished reply is audited once, however often the same events arrive.
    async with sessions() as db:
        received = (
            await db.scalars(select(ActivityLog.metadata_).where(ActivityLog.action == "chat.message_receive"))
        ).all()
    assert sorted(m["message_id"] for m in received) == sorted(
        mid for mid, m in first["messages"].items() if m["role"] == "assistant" and m["status"] == "complete"
    )


async def test_counters_follow_errors_aborts_and_removals(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.apply(all_events())
    rows = await stored(sessions, owner)
    assert (rows["messages"][A4]["status"], rows["messages"][A4]["error_message"]) == ("error", "fake bad request")
    assert (rows["messages"][A5]["status"], rows["messages"][A5]["text"]) == ("cancelled", "Once upon a time")
    main = rows["sessions"][SES]
    assert (main["message_count"], main["user_message_count"], main["assistant_message_count"]) == (9, 4, 5)
    child = rows["sessions"][CHILD]
    assert (child["message_count"], child["total_input_tokens"], child["total_output_tokens"]) == (2, 50, 5)

    await mirror.apply(load("removal.events.json"))
    rows = await stored(sessions, owner)
    assert U4 not in rows["messages"] and A4 not in rows["messages"]
    assert rows["messages"][A1]["thinking"] is None  # its reasoning part was removed
    assert [p["type"] for p in rows["messages"][A1]["content"]["parts"]] == ["step-start", "text", "step-finish"]
    main = rows["sessions"][SES]
    assert (main["message_count"], main["user_message_count"], main["assistant_message_count"]) == (7, 3, 4)
    assert main["total_input_tokens"] == 450


async def test_a_part_removed_mid_batch_stays_removed(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    """One batch reads its messages up front; a removal in the middle must not be undone by that read."""
    events = load("full_chat.events.json")
    await mirror.apply(events)
    info = {e["properties"]["info"]["id"]: e for e in events if e["type"] == "message.updated"}
    part_removed = load("removal.events.json")[0]
    assert part_removed["properties"]["messageID"] == A1
    changed = copy.deepcopy(info[A1])
    changed["properties"]["info"]["tokens"]["output"] += 1
    # U1 first (so the batch loads U1 and A1 together), then A1 loses its reasoning, then A1 changes again.
    await mirror.apply([info[U1], part_removed, changed])
    rows = await stored(sessions, owner)
    assert rows["messages"][A1]["output_tokens"] == changed["properties"]["info"]["tokens"]["output"]
    assert rows["messages"][A1]["thinking"] is None
    assert [p["type"] for p in rows["messages"][A1]["content"]["parts"]] == ["step-start", "text", "step-finish"]


async def test_message_before_its_session_and_part_before_its_message(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    events = load("full_chat.events.json")
    user_message = next(e for e in events if e["type"] == "message.updated")
    user_part = next(e for e in events if e["type"] == "message.part.updated")
    session_created = next(e for e in events if e["type"] == "session.created")

    await mirror.apply([user_part])  # part first: a placeholder message in a placeholder session
    rows = await stored(sessions, owner)
    placeholder = rows["sessions"][SES]
    assert placeholder["title"] is None and placeholder["upstream_created_at"] is None
    assert (rows["messages"][U1]["role"], rows["messages"][U1]["text"]) == ("assistant", "Say hello")

    await mirror.apply([user_message])  # its info corrects the placeholder
    rows = await stored(sessions, owner)
    assert (rows["messages"][U1]["role"], rows["messages"][U1]["status"]) == ("user", "complete")
    assert rows["messages"][U1]["text"] == "Say hello"
    assert rows["sessions"][SES]["user_message_count"] == 1

    await mirror.apply([session_created])  # the session itself, last
    rows = await stored(sessions, owner)
    assert rows["sessions"][SES]["id"] == placeholder["id"]
    assert rows["sessions"][SES]["title"] == "New session - 2026-11-26T05:45:35.113Z"
    assert len(rows["sessions"]) == 1 and len(rows["messages"]) == 1


async def test_child_before_parent_is_linked_when_the_parent_arrives(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.apply(load("child_session.events.json"))
    rows = await stored(sessions, owner)
    parent_placeholder = rows["sessions"][SES]
    assert rows["sessions"][CHILD]["parent_session_id"] == parent_placeholder["id"]
    assert parent_placeholder["title"] is None

    await mirror.apply(load("full_chat.events.json"))
    rows = await stored(sessions, owner)
    assert rows["sessions"][SES]["id"] == parent_placeholder["id"]
    assert rows["sessions"][SES]["title"] == "Fake title"
    assert rows["sessions"][CHILD]["parent_session_id"] == rows["sessions"][SES]["id"]
    assert rows["sessions"][SES]["message_count"] == 5  # the child's messages stay the child's
    assert rows["sessions"][CHILD]["message_count"] == 2


async def test_a_session_the_app_creates_is_read_like_the_mirror_reads_it(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    """The chat API writes the row of a session it created in OpenCode at once, through the mirror's mapping:
    a subagent session is linked to its parent, and the mirror later finds the same rows."""
    child = next(e for e in load("child_session.events.json") if e["type"] == "session.created")
    async with sessions() as db:
        sandbox = await db.get(Sandbox, owner.sandbox_id)
        assert sandbox is not None
        created = await upsert_opencode_session(db, sandbox, child["properties"]["info"])
        await db.commit()
    rows = await stored(sessions, owner)
    assert rows["sessions"][CHILD]["id"] == created.id
    assert rows["sessions"][CHILD]["parent_session_id"] == rows["sessions"][SES]["id"]
    assert rows["sessions"][CHILD]["title"] == "Sub-agent: explore the repo"

    await mirror.apply(load("child_session.events.json"))
    await mirror.apply(load("full_chat.events.json"))
    mirrored = await stored(sessions, owner)
    assert {key: row["id"] for key, row in mirrored["sessions"].items()} == {
        key: row["id"] for key, row in rows["sessions"].items()
    }
    assert mirrored["sessions"][CHILD]["parent_session_id"] == mirrored["sessions"][SES]["id"]


async def test_deleted_session_keeps_its_history_and_takes_no_more_writes(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.apply(load("full_chat.events.json"))
    await mirror.apply(load("session_deleted.events.json"))
    rows = await stored(sessions, owner)
    assert rows["sessions"][SES]["status"] == "deleted"
    assert rows["sessions"][SES]["title"] == "renamed by probe"
    assert len(rows["messages"]) == 5 and rows["sessions"][SES]["message_count"] == 5

    # a straggling event for the deleted session writes nothing
    assert await mirror.apply(load("error_turn.events.json")) == 0
    # a listing taken before the deletion (older time.updated) does not bring it back
    await mirror.reconcile(FakeOpenCode())
    rows = await stored(sessions, owner)
    assert rows["sessions"][SES]["status"] == "deleted"
    assert U4 not in rows["messages"]


async def test_a_two_thousand_delta_burst_costs_a_handful_of_writes(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    now = [0.0]
    mirror = mirror_for(sessions, owner, clock=lambda: now[0])
    full = load("full_chat.events.json")
    start = [e for e in full if e["type"] in ("session.created", "message.updated")][:3]  # session, user, assistant
    part = {"id": "prt_21663575e001wb8y4Bp6RKv7NR", "messageID": A1, "sessionID": SES, "type": "text"}
    chunks = [f"token{i} " for i in range(2000)]

    def part_event(**fields: Any) -> JSON:
        return {"type": "message.part.updated", "properties": {"sessionID": SES, "part": {**part, **fields}}}

    burst = [part_event(text="", time={"start": 1})]
    burst += [
        {
            "type": "message.part.delta",
            "properties": {"sessionID": SES, "messageID": A1, "partID": part["id"], "field": "text", "delta": c},
        }
        for c in chunks
    ]
    burst += [part_event(text="".join(chunks), time={"start": 1, "end": 2})]
    done = next(e for e in full if e["type"] == "message.updated" and e["properties"]["info"].get("finish"))
    done = copy.deepcopy(done)
    done["properties"]["info"]["time"]["completed"] = 1795671939491

    with count_writes(engine) as writes:
        for event_ in [*start, *burst, done]:
            now[0] += 0.00005  # 2,000 chunks in 0.1 s, as OpenCode sends them
            await mirror.feed(event_)
            await mirror.flush_due()
        await mirror.flush()
    rows = await stored(sessions, owner)
    assert rows["messages"][A1]["text"] == "".join(chunks)
    assert rows["messages"][A1]["status"] == "complete"
    # 2,005 events: one session insert, the two messages' inserts, one counter update, and a few
    # rewrites of the streaming message (every 100 ms and at completion) -- 6 statements when measured.
    assert len(writes) <= 10, writes.statements


class FlakySessions:
    """A session factory whose first ``failures`` uses fail, like a database that blips."""

    def __init__(self, inner: async_sessionmaker[AsyncSession], failures: int) -> None:
        self.inner, self.failures = inner, failures

    def __call__(self) -> AsyncSession:
        if self.failures:
            self.failures -= 1
            raise OSError("database unavailable")
        return self.inner()


async def test_a_failed_flush_is_retried_not_lost(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> None:
    flaky = FlakySessions(sessions, failures=1)
    mirror = OpenCodeMirror(cast(Any, flaky), sandbox_id=owner.sandbox_id, user_id=owner.user_id)
    with pytest.raises(OSError):
        for event_ in load("full_chat.events.json"):
            await mirror.feed(event_)  # the first completion event asks for a flush, which fails
    for event_ in load("full_chat.events.json"):
        await mirror.feed(event_)
    await mirror.flush()
    rows = await stored(sessions, owner)
    assert rows["messages"][A1]["text"] == "Hello from the fake LLM. This reply is streamed. "
    assert rows["sessions"][SES]["message_count"] == 5


# --------------------------------------------------------------------------- reconcile


async def test_reconcile_builds_the_same_rows_as_the_live_path(
    sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    live_owner = await make_owner(sessions)
    await mirror_for(sessions, live_owner).apply(all_events())
    report = await mirror_for(sessions, owner).reconcile(FakeOpenCode())
    assert (report.sessions_upserted, report.messages_upserted, report.messages_removed) == (2, 11, 0)
    assert report.sessions_marked_deleted == report.sessions_missing_upstream == 0

    live, reconciled = await stored(sessions, live_owner), await stored(sessions, owner)
    assert live["messages"].keys() == reconciled["messages"].keys()
    for key, row in live["messages"].items():
        assert {c: row[c] for c in NORMALIZED} == {c: reconciled["messages"][key][c] for c in NORMALIZED}, key
    for key in (SES, CHILD):
        for column in ("title", "message_count", "total_input_tokens", "total_output_tokens", "last_message_at"):
            assert live["sessions"][key][column] == reconciled["sessions"][key][column], (key, column)
    assert reconciled["sessions"][CHILD]["parent_session_id"] == reconciled["sessions"][SES]["id"]


async def test_reconcile_over_unchanged_data_writes_nothing(
    engine: AsyncEngine, mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.apply(all_events())
    api = FakeOpenCode()
    await mirror.reconcile(api)
    before = await stored(sessions, owner)
    with count_writes(engine) as writes:
        report = await mirror.reconcile(api)
    assert writes.statements == []
    assert report == ReconcileReport(unchanged=2 + 11)
    assert await stored(sessions, owner) == before


async def test_reconcile_fixes_drift_in_both_directions(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.apply(all_events())
    api = FakeOpenCode()
    # upstream moved on while we were not listening:
    api.messages[SES] = [m for m in api.messages[SES] if m["info"]["id"] not in (U4, A4)]  # error turn reverted
    missed = copy.deepcopy(api.messages[SES][0])
    missed["info"].update(id="msg_2166370000019MissedWhileDown", time={"created": 1795671950000})
    missed["parts"][0].update(id="prt_2166370000029MissedWhileDown", messageID=missed["info"]["id"], text="Again")
    api.messages[SES].append(missed)  # a message the stream never delivered
    api.session(SES)["title"] = "Renamed upstream"
    api.session(SES)["time"]["updated"] = 1795671950001
    api.drop_session(CHILD)  # deleted upstream: 1 of our 2 sessions, upstream otherwise healthy

    report = await mirror.reconcile(api)
    assert report.messages_removed == 2
    assert report.messages_upserted >= 1
    assert report.sessions_marked_deleted == 1 and report.sessions_missing_upstream == 0

    rows = await stored(sessions, owner)
    assert rows["sessions"][SES]["title"] == "Renamed upstream"
    assert U4 not in rows["messages"] and A4 not in rows["messages"]
    assert rows["messages"]["msg_2166370000019MissedWhileDown"]["text"] == "Again"
    main = rows["sessions"][SES]
    assert (main["message_count"], main["user_message_count"], main["assistant_message_count"]) == (8, 4, 4)
    assert main["last_message_at"] == rows["messages"]["msg_2166370000019MissedWhileDown"]["upstream_created_at"]
    assert rows["sessions"][CHILD]["status"] == "deleted"
    assert rows["sessions"][CHILD]["message_count"] == 2  # history kept
    assert rows["sessions"][CHILD]["missing_upstream_at"] is None


def _cut_turn() -> tuple[list[JSON], JSON]:
    """Events of a turn whose server died mid-reply, and how upstream lists it afterwards."""

    def ends_the_turn(e: JSON) -> bool:
        props = e["properties"]
        return (
            e["type"] in ("session.error", "session.idle", "session.status")
            or (e["type"] == "message.updated" and "error" in props["info"])
            or (e["type"] == "message.part.updated" and "end" in props["part"].get("time", {}))
        )

    cut = [e for e in load("abort_turn.events.json") if not ends_the_turn(e)]
    infos = [e["properties"]["info"] for e in cut if e["type"] == "message.updated"]
    parts = [e["properties"]["part"] for e in cut if e["type"] == "message.part.updated"]
    snapshot = load("api_snapshot.json")
    # Upstream persisted the assistant's text part only as started (text ""), never the streamed text.
    snapshot["messages"] = {
        SES: [{"info": info, "parts": [p for p in parts if p["messageID"] == info["id"]]} for info in infos],
        CHILD: snapshot["messages"][CHILD],
    }
    return cut, snapshot


async def test_unfinished_turns_become_interrupted_only_when_the_session_is_idle(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    events, snapshot = _cut_turn()
    await mirror.apply(events)
    assert (await stored(sessions, owner))["messages"][A5]["status"] == "streaming"

    report = await mirror.reconcile(FakeOpenCode(snapshot, busy={SES: {"type": "busy"}}))
    assert report.messages_interrupted == 0
    row = (await stored(sessions, owner))["messages"][A5]
    assert (row["status"], row["text"]) == ("streaming", "Once upon a time")  # our live text beats upstream's ""

    report = await mirror.reconcile(FakeOpenCode(snapshot))  # idle now, and still no completion
    assert report.messages_interrupted == 1
    row = (await stored(sessions, owner))["messages"][A5]
    assert (row["status"], row["text"]) == ("interrupted", "Once upon a time")

    # if the turn does complete after all (a late event), completion wins
    await mirror.apply([e for e in load("abort_turn.events.json") if e["type"] == "message.updated"][-1:])
    assert (await stored(sessions, owner))["messages"][A5]["status"] == "cancelled"


async def test_upstream_loss_guard_keeps_and_flags_then_clears(
    engine: AsyncEngine, mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.reconcile(FakeOpenCode())
    before = await stored(sessions, owner)

    empty = FakeOpenCode({"sessions": [], "messages": {}})
    report = await mirror.reconcile(empty)
    assert report.upstream_empty
    assert (report.sessions_marked_deleted, report.messages_removed, report.sessions_missing_upstream) == (0, 0, 2)
    assert any("upstream-loss guard" in note for note in report.notes)
    rows = await stored(sessions, owner)
    assert rows["messages"].keys() == before["messages"].keys()
    for key in (SES, CHILD):
        assert rows["sessions"][key]["status"] == "active"
        assert rows["sessions"][key]["missing_upstream_at"] is not None
        assert rows["sessions"][key]["message_count"] == before["sessions"][key]["message_count"]

    with count_writes(engine) as writes:  # still empty: already flagged, nothing more to write
        report = await mirror.reconcile(empty)
    assert writes.statements == [] and report.sessions_missing_upstream == 2

    report = await mirror.reconcile(FakeOpenCode())  # upstream is back
    assert report.sessions_missing_upstream == 0 and report.sessions_upserted == 2
    rows = await stored(sessions, owner)
    assert all(rows["sessions"][key]["missing_upstream_at"] is None for key in (SES, CHILD))


async def test_a_recreated_container_does_not_erase_history(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.reconcile(FakeOpenCode())
    # the new container's OpenCode has a fresh store with one new chat only
    fresh = copy.deepcopy(load("api_snapshot.json")["sessions"][0])
    fresh.update(id="ses_fresh0000001ffeNewContainer", title="After recreation")
    report = await mirror.reconcile(FakeOpenCode({"sessions": [fresh], "messages": {}}))
    assert report.sessions_marked_deleted == 0 and report.sessions_missing_upstream == 2
    rows = await stored(sessions, owner)
    assert rows["sessions"]["ses_fresh0000001ffeNewContainer"]["status"] == "active"
    assert rows["sessions"][SES]["status"] == "active" and rows["sessions"][SES]["missing_upstream_at"] is not None
    assert len([m for m in rows["messages"].values() if m["session_id"] == rows["sessions"][SES]["id"]]) == 9


async def test_an_empty_listing_of_a_live_session_removes_nothing(
    mirror: OpenCodeMirror, sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await mirror.reconcile(FakeOpenCode())
    api = FakeOpenCode()
    api.messages[SES] = []
    report = await mirror.reconcile(api)
    assert report.messages_removed == 0
    rows = await stored(sessions, owner)
    main_id = rows["sessions"][SES]["id"]
    kept = [m for m in rows["messages"].values() if m["session_id"] == main_id]
    assert len(kept) == 9 and all(m["missing_upstream_at"] is not None for m in kept)
    await mirror.reconcile(FakeOpenCode())
    rows = await stored(sessions, owner)
    assert all(m["missing_upstream_at"] is None for m in rows["messages"].values())


@pytest.mark.parametrize("order", ["live-first", "reconcile-first", "concurrent"])
async def test_reconcile_racing_the_live_path_keeps_the_newer_state(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, order: str
) -> None:
    # The listing was taken mid-turn: A3 unfinished, its text not yet persisted upstream.
    stale = load("api_snapshot.json")
    a3 = next(m for m in stale["messages"][SES] if m["info"]["id"] == A3)
    del a3["info"]["time"]["completed"]
    a3["info"]["tokens"] = {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}}
    for part in a3["parts"]:
        if part["type"] == "text":
            part["text"], part["time"] = "", {"start": part["time"]["start"]}
    live, reconciler = mirror_for(sessions, owner), mirror_for(sessions, owner)
    events = all_events()
    if order == "live-first":
        await live.apply(events)
        await reconciler.reconcile(FakeOpenCode(stale))
    elif order == "reconcile-first":
        await reconciler.reconcile(FakeOpenCode(stale))
        await live.apply(events)
    else:
        await asyncio.gather(live.apply(events), reconciler.reconcile(FakeOpenCode(stale)))
    row = (await stored(sessions, owner))["messages"][A3]
    assert (row["status"], row["text"]) == ("complete", "The command printed hello-from-tool.")
    assert row["input_tokens"] == 200


# --------------------------------------------------------------------------- the guard's rule


@pytest.mark.parametrize(
    ("known", "upstream", "trusted"),
    [
        ({"a", "b", "c"}, {"a", "b", "c"}, True),  # nothing missing
        ({"a", "b", "c"}, {"a", "b"}, True),  # one deleted by the user
        ({"a", "b"}, {"a", "new"}, True),  # half gone, rest still there
        (set(), {"new"}, True),  # nothing known yet
        ({"a", "b"}, set(), False),  # empty store
        (set(), set(), False),  # empty store, nothing to lose either
        ({"a", "b"}, {"x", "y", "z"}, False),  # a different store (container recreated)
        ({"a", "b", "c"}, {"a"}, False),  # most sessions vanished at once
    ],
)
def test_judge_upstream(known: set[str], upstream: set[str], trusted: bool) -> None:
    verdict, reason = judge_upstream(known, upstream)
    assert verdict is trusted
    assert (reason is None) is trusted
