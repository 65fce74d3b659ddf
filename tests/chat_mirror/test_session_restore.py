"""The session restore without Docker: stored rows → OpenCode's export format, the restore order, the
completeness rule, the mirror keeping a half-restored session flagged, and the restore activity's
idempotency (a session OpenCode holds is never imported again).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import pytest
import pytest_asyncio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.opencode_sync import OpenCodeSyncActivities
from activities.resources import WorkerResources
from activities.session_restore import IMPORT_COMMAND, STORE_IMPORT_COMMAND, UNKNOWN_STORE, SessionRestoreActivities
from agentpod.chat_mirror.opencode import OpenCodeMirror
from agentpod.chat_mirror.opencode_mapping import canonical
from agentpod.chat_mirror.restore import (
    expected_parts,
    restorable,
    restore_order,
    session_export,
    store_place,
    upstream_covers,
)
from agentpod.clients.docker_engine import ExecResult
from agentpod.clients.opencode import OpenCodeNotFound
from agentpod.domain.chat import SyncTarget
from agentpod.domain.session_restore import (
    RestoreOutcome,
    RestoreSessionInput,
    SessionRestorePlanInput,
)
from agentpod.settings import Settings
from agentpod.store.chat_sync import SessionRow, find_session, load_messages
from agentpod.store.tables import ChatSession, Sandbox
from tests.fakes.opencode_server import OpenCodeProcess
from tests.helpers import Owner, make_owner
from workflows.ids import session_restore_workflow_id

FIXTURES = Path(__file__).parent.parent / "fixtures" / "opencode"
SES = "ses_de99cb776ffeanXOCVNaqIDQUa"
CHILD = "ses_de99a1b2c3ffeChildSessXYZ01"
JSON = dict[str, Any]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def snapshot() -> JSON:
    data: JSON = json.loads((FIXTURES / "api_snapshot.json").read_text())
    return data


class FakeOpenCode:
    """An in-memory OpenCode: what the mirror and the restore activity read, plus what an import writes."""

    def __init__(self, data: JSON | None = None) -> None:
        data = copy.deepcopy(data if data is not None else snapshot())
        self.sessions: dict[str, JSON] = {s["id"]: s for s in data["sessions"]}
        self.messages: dict[str, list[JSON]] = data["messages"]

    # the OpenCodeApi side
    async def list_sessions(self) -> list[JSON]:
        return copy.deepcopy(list(self.sessions.values()))

    async def list_messages(self, session_id: str) -> list[JSON]:
        if session_id not in self.sessions:
            raise OpenCodeNotFound(f"Session not found: {session_id}", status=404)
        return copy.deepcopy(self.messages.get(session_id, []))

    async def get_session(self, session_id: str) -> JSON:
        if session_id not in self.sessions:
            raise OpenCodeNotFound(f"Session not found: {session_id}", status=404)
        return copy.deepcopy(self.sessions[session_id])

    async def session_status(self) -> dict[str, JSON]:
        return {}

    async def current_project(self) -> JSON:
        return {"id": "global", "worktree": "/"}

    async def paths(self) -> JSON:
        return {"directory": "/workspace", "worktree": "/"}

    async def version(self) -> str:
        return "1.18.34"

    def events(self) -> Any:
        raise NotImplementedError

    def drop(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.messages.pop(session_id, None)

    def take_import(self, export: JSON) -> None:
        """What `opencode import` does: the session row, then each message and part (existing ones kept)."""
        info = export["info"]
        self.sessions.setdefault(info["id"], {**info, "projectID": "global"})
        have = {m["info"]["id"] for m in self.messages.get(info["id"], [])}
        self.messages.setdefault(info["id"], []).extend(m for m in export["messages"] if m["info"]["id"] not in have)

    # the client's context manager
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class FakeEngine:
    """Stands in for the Docker engine: each import goes into ``agent``; ``known_store=False`` plays an
    OpenCode whose tables the fast import does not know (it exits 3, and ``opencode import`` runs)."""

    def __init__(self, agent: FakeOpenCode, *, known_store: bool = True) -> None:
        self.agent = agent
        self.known_store = known_store
        self.imports: list[JSON] = []
        self.commands: list[str] = []
        self.places: list[JSON] = []

    def run_with_stdin(self, sandbox_id: str, command: Sequence[str], stdin: bytes) -> ExecResult:
        data = json.loads(stdin)
        if tuple(command) == STORE_IMPORT_COMMAND:
            self.commands.append("store_import.js")
            if not self.known_store:
                return ExecResult(exit_code=UNKNOWN_STORE, stdout=b"", stderr=b"unknown OpenCode store schema\n")
            self.places.append(data["project"])
            export = data["export"]
        else:
            assert tuple(command) == IMPORT_COMMAND
            self.commands.append("opencode import")
            export = data
        self.imports.append(export)
        self.agent.take_import(export)
        return ExecResult(exit_code=0, stdout=f"Imported session: {export['info']['id']}\n".encode(), stderr=b"")


# --------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture
async def owner(sessions: async_sessionmaker[AsyncSession]) -> Owner:
    owner = await make_owner(sessions)
    async with sessions() as db:
        await db.execute(
            update(Sandbox)
            .where(Sandbox.id == owner.sandbox_id)
            .values(status="running", opencode_internal_url="http://127.0.0.1:1")
        )
        await db.commit()
    return owner


def mirror(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> OpenCodeMirror:
    return OpenCodeMirror(sessions, sandbox_id=owner.sandbox_id, user_id=owner.user_id)


async def lose_everything(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> None:
    """Mirror the snapshot, then the container's store is lost: every session flagged missing upstream."""
    await mirror(sessions, owner).reconcile(FakeOpenCode())
    report = await mirror(sessions, owner).reconcile(FakeOpenCode({"sessions": [], "messages": {}}))
    assert report.sessions_missing_upstream == 2


async def stored(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, session_id: str
) -> tuple[SessionRow, list[JSON]]:
    async with sessions() as db:
        row = await find_session(db, owner.sandbox_id, session_id)
        assert row is not None
        messages = await load_messages(db, row.id)
    ordered = sorted(messages.values(), key=lambda m: (m.values.upstream_created_at, m.id))
    return row, [m.values.content for m in ordered]


# --------------------------------------------------------------------------- the export


async def test_the_export_is_opencodes_own_format_with_every_id_kept(
    sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await lose_everything(sessions, owner)
    data = snapshot()
    for session_id in (SES, CHILD):
        row, contents = await stored(sessions, owner, session_id)
        export = session_export(row, contents, version="1.18.34", now=NOW)
        upstream = next(s for s in data["sessions"] if s["id"] == session_id)

        # Messages exactly as OpenCode had them: same ids, same raw info and parts, same order.
        assert [canonical(m) for m in export["messages"]] == [
            canonical({"info": m["info"], "parts": sorted(m["parts"], key=lambda p: p["id"])})
            for m in data["messages"][session_id]
        ]
        for message in export["messages"]:
            assert message["info"]["sessionID"] == session_id
            assert {(p["sessionID"], p["messageID"]) for p in message["parts"]} <= {(session_id, message["info"]["id"])}

        info = export["info"]
        assert (info["id"], info["title"], info["version"]) == (session_id, upstream["title"], "1.18.34")
        assert info["time"]["created"] == upstream["time"]["created"]
        assert info["time"]["updated"] >= upstream["time"]["updated"]
        assert info["slug"] and info.get("parentID") == upstream.get("parentID")
        assistants = [m["info"] for m in data["messages"][session_id] if m["info"]["role"] == "assistant"]
        assert info["tokens"]["input"] == sum(a["tokens"]["input"] for a in assistants)
        assert info["tokens"]["output"] == sum(a["tokens"]["output"] for a in assistants)
        json.dumps(export)  # plain JSON, as the file the import reads


def test_placeholders_and_titles() -> None:
    row = SessionRow(
        id="row",
        external_session_id="ses_x",
        status="active",
        title=None,
        parent_external_session_id=None,
        upstream_created_at=None,
        upstream_updated_at=None,
        missing_upstream_at=NOW,
        created_at=NOW,
    )
    whole = {
        "info": {"id": "msg_1", "sessionID": "other", "role": "user", "time": {"created": 1_772_366_400_000}},
        "parts": [{"id": "prt_2", "type": "text", "text": "b"}, {"id": "prt_1", "type": "text", "text": "a"}],
    }
    placeholder = {"info": {}, "parts": [{"id": "prt_3", "messageID": "msg_2", "type": "text", "text": "x"}]}
    assert restorable(whole) and not restorable(placeholder)
    export = session_export(row, [whole, placeholder], version="v", now=NOW)
    assert [m["info"]["id"] for m in export["messages"]] == ["msg_1"]
    assert [p["id"] for p in export["messages"][0]["parts"]] == ["prt_1", "prt_2"]  # by id, like OpenCode
    assert export["messages"][0]["info"]["sessionID"] == "ses_x"
    assert export["info"]["title"] and "parentID" not in export["info"]
    assert export["info"]["time"]["created"] == 1_772_366_400_000  # the first message's, with no session times
    assert expected_parts([whole, placeholder]) == {"msg_1": {"prt_1", "prt_2"}}


def test_upstream_covers_ours_only_when_no_message_or_part_is_missing() -> None:
    ours: dict[str, set[str]] = {"msg_1": {"prt_1", "prt_2"}, "msg_2": set()}
    listed: list[JSON] = [
        {"info": {"id": "msg_1"}, "parts": [{"id": "prt_1"}, {"id": "prt_2"}]},
        {"info": {"id": "msg_2"}, "parts": []},
    ]
    assert upstream_covers(ours, listed)
    assert upstream_covers(ours, [*listed, {"info": {"id": "msg_3"}, "parts": []}])  # the chat went on
    assert not upstream_covers(ours, listed[:1])  # a message not imported yet
    cut: JSON = {"info": {"id": "msg_1"}, "parts": [{"id": "prt_1"}]}
    assert not upstream_covers(ours, [cut, listed[1]])
    assert not upstream_covers(ours, [])


def _row(key: str, *, updated: int, parent: str | None = None, lost: bool = True, status: str = "active") -> SessionRow:
    at = NOW + timedelta(minutes=updated)
    return SessionRow(
        id=f"row-{key}",
        external_session_id=key,
        status=status,
        title=key,
        parent_external_session_id=parent,
        upstream_created_at=NOW,
        upstream_updated_at=at,
        missing_upstream_at=NOW if lost else None,
        created_at=NOW,
    )


def test_restore_order_newest_family_first_and_parents_before_children() -> None:
    rows = {
        r.external_session_id: r
        for r in (
            _row("old", updated=1),
            _row("mid", updated=5),
            _row("mid-child", updated=50, parent="mid"),  # a busy subagent makes its family the newest
            _row("mid-grandchild", updated=6, parent="mid-child"),
            _row("new", updated=20),
            _row("present", updated=99, lost=False),  # OpenCode has it: not restored unless asked
            _row("gone", updated=98, status="deleted"),
            _row("orphan", updated=30, parent="present"),
        )
    }
    order = [item.session_id for item in restore_order(rows)]
    assert order == ["mid", "mid-child", "mid-grandchild", "orphan", "new", "old"]
    items = {item.session_id: item for item in restore_order(rows)}
    assert items["mid-child"].parent_id == "mid" and items["orphan"].parent_id == "present"
    # Asked for explicitly: included even though not flagged; a deleted one never.
    assert "present" in [item.session_id for item in restore_order(rows, ["present", "gone", "unknown"])]
    assert "gone" not in [item.session_id for item in restore_order(rows, ["gone"])]


def test_a_parent_cycle_in_bad_data_still_places_every_session() -> None:
    rows = {r.external_session_id: r for r in (_row("a", updated=1, parent="b"), _row("b", updated=2, parent="a"))}
    assert sorted(item.session_id for item in restore_order(rows)) == ["a", "b"]


# --------------------------------------------------------------------------- the mirror while a restore runs


async def test_a_half_restored_session_stays_flagged_and_keeps_all_our_messages(
    sessions: async_sessionmaker[AsyncSession], owner: Owner
) -> None:
    await lose_everything(sessions, owner)
    _, before = await stored(sessions, owner, SES)
    # `opencode import` writes the session first, then message by message: a reconcile sees it half done.
    half = snapshot()
    half["messages"][SES] = half["messages"][SES][:3]
    half["sessions"] = [s for s in half["sessions"] if s["id"] == SES]
    report = await mirror(sessions, owner).reconcile(FakeOpenCode(half))
    assert report.messages_removed == 0 and report.sessions_missing_upstream == 2
    assert any("lacks messages of ours" in note for note in report.notes)
    row, after = await stored(sessions, owner, SES)
    assert row.missing_upstream_at is not None and after == before

    report = await mirror(sessions, owner).reconcile(FakeOpenCode())  # the import finished
    assert report.sessions_missing_upstream == 0
    row, after = await stored(sessions, owner, SES)
    assert row.missing_upstream_at is None and after == before


# --------------------------------------------------------------------------- the activity


def restore_activities(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, agent: FakeOpenCode, *, known_store: bool = True
) -> tuple[SessionRestoreActivities, FakeEngine]:
    activities = SessionRestoreActivities(WorkerResources(settings=settings, sessions=sessions))
    engine = FakeEngine(agent, known_store=known_store)
    activities.engine = cast(Any, engine)
    activities.opencode = lambda url, passwords: cast(Any, agent)
    return activities, engine


async def flags(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> dict[str, datetime | None]:
    async with sessions() as db:
        rows = (await db.execute(select(ChatSession).where(ChatSession.sandbox_id == owner.sandbox_id))).scalars()
        return {str(r.opencode_session_id): r.missing_upstream_at for r in rows}


async def test_restoring_a_session_opencode_holds_imports_nothing(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, settings: Settings
) -> None:
    await lose_everything(sessions, owner)
    agent = FakeOpenCode()  # e.g. the volume came back, or an earlier attempt had finished the import
    activities, engine = restore_activities(sessions, settings, agent)
    result = await ActivityEnvironment().run(
        activities.restore_session, RestoreSessionInput(sandbox_id=owner.sandbox_id, session_id=SES)
    )
    assert result.outcome == RestoreOutcome.PRESENT
    assert engine.imports == []
    assert (await flags(sessions, owner))[SES] is None  # the prompt refusal clears at once


async def test_a_lost_session_is_imported_once_then_found_present(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, settings: Settings
) -> None:
    await lose_everything(sessions, owner)
    agent = FakeOpenCode({"sessions": [], "messages": {}})
    activities, engine = restore_activities(sessions, settings, agent)
    env = ActivityEnvironment()

    plan = await env.run(activities.plan, SessionRestorePlanInput(sandbox_id=owner.sandbox_id))
    assert [item.session_id for item in plan.items] == [SES, CHILD]  # the parent first
    assert plan.cpu_cores == 1  # the starter tier: one import at a time
    for item in plan.items:
        result = await env.run(
            activities.restore_session, RestoreSessionInput(sandbox_id=owner.sandbox_id, session_id=item.session_id)
        )
        assert result.outcome == RestoreOutcome.RESTORED and result.messages > 0
    assert [export["info"]["id"] for export in engine.imports] == [SES, CHILD]
    assert engine.imports[1]["info"]["parentID"] == SES
    assert engine.commands == ["store_import.js"] * 2  # the fast way: OpenCode is not started per session
    assert engine.places[0] == {"id": "global", "directory": "/workspace", "path": "workspace"}
    assert set((await flags(sessions, owner)).values()) == {None}
    original = snapshot()
    for session_id in (SES, CHILD):
        assert [m["info"]["id"] for m in agent.messages[session_id]] == [
            m["info"]["id"] for m in original["messages"][session_id]
        ]

    again = await env.run(activities.restore_session, RestoreSessionInput(sandbox_id=owner.sandbox_id, session_id=SES))
    assert again.outcome == RestoreOutcome.PRESENT and len(engine.imports) == 2


async def test_a_stopped_sandbox_stops_the_restore(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, settings: Settings
) -> None:
    await lose_everything(sessions, owner)
    async with sessions() as db:
        await db.execute(update(Sandbox).where(Sandbox.id == owner.sandbox_id).values(status="stopped"))
        await db.commit()
    activities, engine = restore_activities(sessions, settings, FakeOpenCode({"sessions": [], "messages": {}}))
    with pytest.raises(Exception, match="the sandbox is stopped") as raised:
        await ActivityEnvironment().run(
            activities.restore_session, RestoreSessionInput(sandbox_id=owner.sandbox_id, session_id=SES)
        )
    assert getattr(raised.value, "type", None) == "SandboxNotRunning" and getattr(raised.value, "non_retryable", False)
    assert engine.imports == []


# --------------------------------------------------------------------------- who asks for a restore


@pytest.mark.temporal
async def test_a_reconcile_that_finds_lost_sessions_starts_their_restore(
    sessions: async_sessionmaker[AsyncSession],
    owner: Owner,
    settings: Settings,
    opencode: OpenCodeProcess,
    temporal_dev_env: WorkflowEnvironment,
) -> None:
    """ "Sync now" and the periodic reconcile (not only the stream's reconnect) ask for lost sessions back."""
    await mirror(sessions, owner).reconcile(FakeOpenCode())  # we hold the snapshot; this OpenCode is empty
    resources = WorkerResources(settings=settings, sessions=sessions, temporal=temporal_dev_env.client)
    target = SyncTarget(sandbox_id=owner.sandbox_id, user_id=owner.user_id, opencode_url=opencode.base_url)
    queue = f"restore-{uuid.uuid4().hex[:8]}"  # no worker polls it: the restore waits there, started
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=queue)

    report = await env.run(OpenCodeSyncActivities(resources).reconcile, target)

    assert report.sessions_missing_upstream == 2
    handle = temporal_dev_env.client.get_workflow_handle(session_restore_workflow_id(owner.sandbox_id))
    try:
        described = await handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING and described.task_queue == queue
    finally:
        await handle.terminate("test over")


async def test_an_unknown_store_falls_back_to_opencode_import(
    sessions: async_sessionmaker[AsyncSession], owner: Owner, settings: Settings
) -> None:
    await lose_everything(sessions, owner)
    agent = FakeOpenCode({"sessions": [], "messages": {}})
    activities, engine = restore_activities(sessions, settings, agent, known_store=False)
    result = await ActivityEnvironment().run(
        activities.restore_session, RestoreSessionInput(sandbox_id=owner.sandbox_id, session_id=SES)
    )
    assert result.outcome == RestoreOutcome.RESTORED
    assert engine.commands == ["store_import.js", "opencode import"]
    assert [export["info"]["id"] for export in engine.imports] == [SES]


@pytest.mark.parametrize(
    ("project", "paths", "place"),
    [
        ({"id": "global", "worktree": "/"}, {"directory": "/workspace"}, ("global", "/workspace", "workspace")),
        ({"id": "f00d", "worktree": "/workspace"}, {"directory": "/workspace"}, ("f00d", "/workspace", "")),
        ({"id": "f00d", "worktree": "/workspace"}, {"directory": "/workspace/app"}, ("f00d", "/workspace/app", "app")),
    ],
)
def test_a_restored_session_lands_in_the_servers_project_and_directory(
    project: JSON, paths: JSON, place: tuple[str, str, str]
) -> None:
    got = store_place(project, paths)
    assert (got["id"], got["directory"], got["path"]) == place
