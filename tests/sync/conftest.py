"""Shared pieces of the end-to-end sync tests: a background stream activity and the mirror check.

The check (:func:`mirror_diff`) states what "no message is ever lost" means, message by message,
against OpenCode's own ``GET /session/{id}/message``: same ids in the same order (by upstream time),
same roles, the status the upstream state implies, the same text / reasoning / tool calls, the raw
upstream objects kept verbatim for finished messages, and session counters that are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.opencode_sync import OpenCodeSyncActivities
from activities.resources import WorkerResources
from agentpod.chat_mirror import segment as stream_segment
from agentpod.chat_mirror.opencode_mapping import canonical, ms_to_datetime
from agentpod.clients.opencode import JSON, OpenCodeClient
from agentpod.domain.chat import StreamSegmentInput, StreamSegmentResult, SyncStatus, SyncTarget
from agentpod.settings import Settings
from agentpod.store.tables import ChatMessage, ChatSession
from tests.docker_helpers import use_fake_llm_in_sandboxes
from tests.fakes.fake_llm import FakeLLM
from tests.helpers import Owner, eventually
from tests.workflows import conftest as workflow_stack
from tests.workflows.conftest import Stack

T = TypeVar("T")

TURN_TIMEOUT = 45.0
MIRROR_TIMEOUT = 20.0
# Cancelled, the stream activity only flushes what it buffered: a few hundred ms at most.
STOP_TIMEOUT = 10.0
# OpenCode's error name for a turn the user stopped.
ABORTED = "MessageAbortedError"


@pytest.fixture(autouse=True)
def quick_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats (the status tests watch) every 0.2 s instead of 5 s; the stream logic is unchanged."""
    monkeypatch.setattr(stream_segment, "HEARTBEAT_SECONDS", 0.2)


# The running stack of tests/workflows (dev server, worker, API in-process, Docker), for the
# end-to-end modules here; requested by name, so the unit-level modules never start it.
stack = workflow_stack.stack
secrets_provider = workflow_stack.secrets_provider


@pytest.fixture
def agent_base_config(bridge_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The installation's agent config: the fake provider, addressed through the bridge gateway."""
    return use_fake_llm_in_sandboxes(monkeypatch, bridge_llm.port)


@pytest_asyncio.fixture
async def sync_stack(agent_base_config: dict[str, Any], stack: Stack) -> AsyncIterator[Stack]:
    """The stack with sandbox agents on the fake LLM; ends every sync workflow it started."""
    assert stack.settings.agent_base_config == agent_base_config
    try:
        yield stack
    finally:
        await stack.end_chat_mirrors()


# --------------------------------------------------------------------------- waiting


def is_final(info: JSON) -> bool:
    """OpenCode will not change this message any more (a user message, or a finished / failed turn)."""
    return info.get("role") == "user" or ms_to_datetime((info.get("time") or {}).get("completed")) is not None


async def wait_turn(
    client: OpenCodeClient, session_id: str, *, after: int, timeout: float = TURN_TIMEOUT
) -> list[JSON]:
    """Wait until the turn started after ``after`` messages has ended upstream; returns the messages.

    Ended: the session is idle and its newest message is a finished assistant message (polling the
    listing, not events: on an error turn ``session.idle`` precedes the final ``message.updated``).
    """

    async def done() -> list[JSON] | None:
        if session_id in await client.session_status():
            return None
        messages = await client.list_messages(session_id)
        if len(messages) < after + 2:
            return None
        last = messages[-1]["info"]
        return messages if last.get("role") == "assistant" and is_final(last) else None

    return await eventually(done, timeout=timeout, what=f"the turn in {session_id} to end upstream")


async def prompt_and_wait(client: OpenCodeClient, session_id: str, text: str) -> list[JSON]:
    """Prompt and wait until OpenCode has finished the reply."""
    before = len(await client.list_messages(session_id))
    await client.prompt_async(session_id, text)
    return await wait_turn(client, session_id, after=before)


# --------------------------------------------------------------------------- database side


async def stored_session(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str, external_session_id: str
) -> tuple[ChatSession | None, list[ChatMessage]]:
    """Our row of an upstream session and its messages in reading order (upstream time, then id)."""
    async with sessions() as db:
        row = await db.scalar(
            select(ChatSession).where(
                ChatSession.sandbox_id == sandbox_id, ChatSession.opencode_session_id == external_session_id
            )
        )
        if row is None:
            return None, []
        messages = (
            await db.scalars(
                select(ChatMessage)
                .where(ChatMessage.session_id == row.id)
                .order_by(ChatMessage.upstream_created_at, ChatMessage.external_message_id)
            )
        ).all()
        return row, list(messages)


async def stored_sessions(sessions: async_sessionmaker[AsyncSession], sandbox_id: str) -> dict[str, ChatSession]:
    """Every session row of a sandbox by upstream id (deleted ones included)."""
    async with sessions() as db:
        rows = (await db.scalars(select(ChatSession).where(ChatSession.sandbox_id == sandbox_id))).all()
    return {str(row.opencode_session_id): row for row in rows}


async def count_rows(sessions: async_sessionmaker[AsyncSession], sandbox_id: str) -> tuple[int, int]:
    """(session rows, message rows) of a sandbox: duplicates would show up here."""
    async with sessions() as db:
        session_count = await db.scalar(
            select(func.count()).select_from(ChatSession).where(ChatSession.sandbox_id == sandbox_id)
        )
        message_count = await db.scalar(
            select(func.count())
            .select_from(ChatMessage)
            .join(ChatSession, ChatSession.id == ChatMessage.session_id)
            .where(ChatSession.sandbox_id == sandbox_id)
        )
    return int(session_count or 0), int(message_count or 0)


# --------------------------------------------------------------------------- the comparison


def _texts(parts: list[JSON], kind: str) -> str | None:
    found = [
        str(part.get("text") or "")
        for part in parts
        if part.get("type") == kind and not part.get("synthetic") and not part.get("ignored")
    ]
    return "\n\n".join(found) if found else None


def expected_status(info: JSON, *, busy: bool) -> tuple[str, str | None]:
    """What our row must say about an upstream message: (status, error message).

    An assistant message that never completed while its session is idle was cut off (the server died
    mid-reply): ``interrupted``. Only the newest one of a busy session may still be ``streaming``.
    """
    error = info.get("error")
    if isinstance(error, dict) and error:
        if error.get("name") == ABORTED:
            return "cancelled", None
        data = error.get("data")
        message = data.get("message") if isinstance(data, dict) else None
        return "error", str(message or error.get("name"))
    if is_final(info):
        return "complete", None
    return ("streaming" if busy else "interrupted"), None


def _dt(value: Any) -> datetime | None:
    return ms_to_datetime(value)


def _message_diff(upstream: JSON, row: ChatMessage, *, busy: bool) -> list[str]:
    info, parts = upstream["info"], sorted(upstream.get("parts") or [], key=lambda p: str(p.get("id") or ""))
    mid = info["id"]
    diffs: list[str] = []

    def check(what: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            diffs.append(f"{mid} {what}: ours {ours!r} != upstream {theirs!r}")

    check("role", row.role, info["role"])
    status, error_message = expected_status(info, busy=busy)
    check("status", row.status, status)
    check("error_message", row.error_message, error_message)
    times = info.get("time") or {}
    check("upstream_created_at", row.upstream_created_at, _dt(times.get("created")))
    check("upstream_completed_at", row.upstream_completed_at, _dt(times.get("completed")))
    check("missing_upstream_at", row.missing_upstream_at, None)
    text, thinking = _texts(parts, "text"), _texts(parts, "reasoning")
    if is_final(info) or info.get("error"):
        check("text", row.text, text)
        check("thinking", row.thinking, thinking)
        # Finished messages are kept exactly as OpenCode has them (raw info + every part).
        check("content", row.content, canonical({"info": info, "parts": parts}))
        tokens = info.get("tokens") or {}
        check("input_tokens", row.input_tokens, int(tokens.get("input") or 0))
        check("output_tokens", row.output_tokens, int(tokens.get("output") or 0))
    else:
        # OpenCode persists streaming text only when a part ends, so our live copy may be further
        # along: what upstream has must be a prefix of ours (we never hold less).
        if not (row.text or "").startswith(text or ""):
            diffs.append(f"{mid} text: ours {row.text!r} does not extend upstream {text!r}")
    tools = [p for p in parts if p.get("type") == "tool"]
    check("tool call ids", [c["id"] for c in row.tool_calls or []], [p["id"] for p in tools])
    finished_tools = [p["id"] for p in tools if (p.get("state") or {}).get("status") in ("completed", "error")]
    check("tool result ids", [r["id"] for r in row.tool_results or []], finished_tools)
    return diffs


def mirror_diff(
    upstream_session: JSON,
    upstream_messages: list[JSON],
    row: ChatSession | None,
    rows: list[ChatMessage],
    *,
    busy: bool = False,
) -> list[str]:
    """Every way our copy of one session differs from OpenCode's; empty when it is a faithful mirror."""
    sid = upstream_session["id"]
    if row is None:
        return [f"session {sid} not stored"]
    diffs: list[str] = []

    def check(what: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            diffs.append(f"session {sid} {what}: ours {ours!r} != upstream {theirs!r}")

    times = upstream_session.get("time") or {}
    check("status", row.status, "active")
    check("missing_upstream_at", row.missing_upstream_at, None)
    check("title", row.title, upstream_session.get("title"))
    check("upstream_created_at", row.upstream_created_at, _dt(times.get("created")))
    check("upstream_updated_at", row.upstream_updated_at, _dt(times.get("updated")))

    # Same messages, same order (ours by upstream time, theirs as OpenCode lists them), no duplicates.
    check("message ids", [m.external_message_id for m in rows], [m["info"]["id"] for m in upstream_messages])
    newest_assistant = next(
        (m["info"]["id"] for m in reversed(upstream_messages) if m["info"].get("role") == "assistant"), None
    )
    by_id = {m.external_message_id: m for m in rows}
    for message in upstream_messages:
        stored = by_id.get(message["info"]["id"])
        if stored is not None:
            diffs += _message_diff(message, stored, busy=busy and message["info"]["id"] == newest_assistant)

    # Counters are exact (recomputed from the rows, and the rows match upstream).
    roles = [m["info"].get("role") for m in upstream_messages]
    check("message_count", row.message_count, len(upstream_messages))
    check("user_message_count", row.user_message_count, roles.count("user"))
    check("assistant_message_count", row.assistant_message_count, roles.count("assistant"))
    check("total_input_tokens", row.total_input_tokens, sum(m.input_tokens for m in rows))
    check("total_output_tokens", row.total_output_tokens, sum(m.output_tokens for m in rows))
    created = [_dt((m["info"].get("time") or {}).get("created")) for m in upstream_messages]
    check("last_message_at", row.last_message_at, max((c for c in created if c), default=None))
    return diffs


async def session_diff(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str, client: OpenCodeClient, session_id: str
) -> list[str]:
    """:func:`mirror_diff` of one session, both sides read now."""
    upstream = await client.get_session(session_id)
    messages = await client.list_messages(session_id)
    busy = session_id in await client.session_status()
    row, rows = await stored_session(sessions, sandbox_id, session_id)
    return mirror_diff(upstream, messages, row, rows, busy=busy)


async def assert_mirrored(
    sessions: async_sessionmaker[AsyncSession],
    sandbox_id: str,
    client: OpenCodeClient,
    session_id: str,
    *,
    timeout: float = MIRROR_TIMEOUT,
) -> list[ChatMessage]:
    """Wait until our copy of the session equals OpenCode's; fail with the remaining differences."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        diffs = await session_diff(sessions, sandbox_id, client, session_id)
        if not diffs:
            return (await stored_session(sessions, sandbox_id, session_id))[1]
        if loop.time() > deadline:
            raise AssertionError("the mirror differs from OpenCode:\n  " + "\n  ".join(diffs))
        await asyncio.sleep(0.1)


async def assert_sandbox_mirrored(
    sessions: async_sessionmaker[AsyncSession],
    sandbox_id: str,
    client: OpenCodeClient,
    *,
    timeout: float = MIRROR_TIMEOUT,
) -> dict[str, ChatSession]:
    """Every upstream session mirrored (and nothing else live in ours); returns our session rows."""
    upstream = {str(s["id"]) for s in await client.list_sessions()}

    async def same_sessions() -> dict[str, ChatSession] | None:
        ours = await stored_sessions(sessions, sandbox_id)
        live = {key for key, row in ours.items() if row.status != "deleted"}
        return ours if live == upstream else None

    await eventually(same_sessions, timeout=timeout, what=f"our live sessions to be exactly {sorted(upstream)}")
    for session_id in sorted(upstream):
        await assert_mirrored(sessions, sandbox_id, client, session_id, timeout=timeout)
    return await stored_sessions(sessions, sandbox_id)


# --------------------------------------------------------------------------- the stream activity


@dataclass
class StreamRun:
    """One ``opencode_stream_segment`` running in the background, as a worker would run it.

    Stopping cancels it like Temporal does (``finish`` / ``retarget``), or signals a worker
    shutdown (the activity's own shutdown watcher then ends it).
    """

    activities: OpenCodeSyncActivities
    target: SyncTarget
    segment_seconds: float = 120.0
    heartbeats: list[SyncStatus] = field(default_factory=list)
    env: ActivityEnvironment = field(default_factory=ActivityEnvironment)
    task: asyncio.Task[StreamSegmentResult] | None = None

    def start(self) -> StreamRun:
        self.env.on_heartbeat = lambda *details: self.heartbeats.append(SyncStatus.model_validate(details[0]))
        segment = StreamSegmentInput(target=self.target, segment_seconds=self.segment_seconds)
        self.task = asyncio.create_task(self.env.run(self.activities.stream_segment, segment))
        return self

    @property
    def status(self) -> SyncStatus | None:
        """The last heartbeat's status."""
        return self.heartbeats[-1] if self.heartbeats else None

    async def wait_connected(self, *, reconnects: int = 0, timeout: float = 30.0) -> SyncStatus:
        """Until a heartbeat reports the stream connected (after at least ``reconnects`` reconnects)."""

        async def connected() -> SyncStatus | None:
            self._raise_if_failed()
            status = self.status
            ok = status is not None and status.connected and status.reconnects >= reconnects
            return status if ok else None

        try:
            return await eventually(connected, timeout=timeout, what="the stream to (re)connect")
        except AssertionError as error:
            raise AssertionError(f"{error}; last heartbeat: {self.status}") from None

    def _raise_if_failed(self) -> None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            self.task.result()  # raises the activity's error

    async def stop(self, *, how: str = "cancel") -> None:
        """End the activity (``cancel`` or ``worker_shutdown``) and wait until it has flushed."""
        if self.task is None:
            return
        self._raise_if_failed()
        if how == "worker_shutdown":
            self.env.worker_shutdown()
        else:
            self.env.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=STOP_TIMEOUT)
        # A worker must be able to let go of the stream at once (retarget, finish, shutdown), even
        # while events pour in; an activity that ignores the cancel keeps following a stale address.
        assert done, f"the stream activity ignored its {how} for {STOP_TIMEOUT:g} s"
        task, self.task = self.task, None
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def kill(self) -> None:
        """End the activity whatever it does (cleanup after a failed test)."""
        if self.task is None:
            return
        self.env.cancel()
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=STOP_TIMEOUT)
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved: the test already failed for its own reason
        self.task = None


@dataclass
class Syncer:
    """Starts stream activities for one sandbox row against one OpenCode; stops them all at the end."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    owner: Owner
    opencode_url: str
    runs: list[StreamRun] = field(default_factory=list)

    def start(self) -> StreamRun:
        resources = WorkerResources(settings=self.settings, sessions=self.sessions)
        target = SyncTarget(
            sandbox_id=self.owner.sandbox_id, user_id=self.owner.user_id, opencode_url=self.opencode_url
        )
        run = StreamRun(OpenCodeSyncActivities(resources), target).start()
        self.runs.append(run)
        return run

    async def __aenter__(self) -> Syncer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for run in self.runs:
            await run.kill()
