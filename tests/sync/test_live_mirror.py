"""No message is lost: a real ``opencode serve`` + the fake LLM, mirrored by the real stream activity.

The ``opencode_stream_segment`` activity runs in the background exactly as a worker runs it (through
``temporalio.testing.ActivityEnvironment``: heartbeats, cancellation, worker shutdown); after every
turn our rows must equal OpenCode's own ``GET /session/{id}/message`` (see ``conftest.mirror_diff``).
Then what must not lose anything either: a session deleted upstream (tombstone), joining a reply
mid-way, OpenCode SIGKILLed mid-reply and restarted, events missed while no stream ran, the activity
itself cancelled / shut down in the middle of a 2,000-chunk burst, and a clean end of the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.clients.opencode import OpenCodeClient
from agentpod.settings import Settings
from tests.fakes.fake_llm import PLAIN_REPLY, REASONED_REPLY, REASONING, TOOL_COMMAND, TOOL_PREAMBLE, FakeLLM
from tests.fakes.opencode_server import EventTap, OpenCodeProcess
from tests.helpers import Owner, eventually, make_owner
from tests.sync.conftest import (
    StreamRun,
    Syncer,
    assert_mirrored,
    assert_sandbox_mirrored,
    count_rows,
    prompt_and_wait,
    stored_session,
    stored_sessions,
    wait_turn,
)


@pytest_asyncio.fixture(scope="module")
async def server(
    opencode_binary: str, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpenCodeProcess]:
    """One OpenCode for the scenarios that neither kill nor restart it (a start costs ~3 s)."""
    process = OpenCodeProcess(opencode_binary, tmp_path_factory.mktemp("opencode"), fake_llm.base_url)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture
async def owner(sessions: async_sessionmaker[AsyncSession]) -> Owner:
    return await make_owner(sessions)


@pytest_asyncio.fixture
async def syncer(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, owner: Owner, server: OpenCodeProcess
) -> AsyncIterator[Syncer]:
    """Stream activities for a fresh sandbox row, following the shared OpenCode."""
    async with Syncer(sessions, settings, owner, server.base_url) as syncer:
        yield syncer


@pytest_asyncio.fixture
async def own_syncer(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, owner: Owner, opencode: OpenCodeProcess
) -> AsyncIterator[Syncer]:
    """Stream activities following this test's own OpenCode (which the test may kill)."""
    async with Syncer(sessions, settings, owner, opencode.base_url) as syncer:
        yield syncer


@pytest_asyncio.fixture
async def client(server: OpenCodeProcess) -> AsyncIterator[OpenCodeClient]:
    async with OpenCodeClient(server.base_url) as oc:
        yield oc


async def _live(syncer: Syncer) -> StreamRun:
    run = syncer.start()
    await run.wait_connected()
    return run


def _assert_never_reconnected(run: StreamRun) -> None:
    # The rows got there through the live path: the only reconcile was the one on connect.
    status = run.status
    assert status is not None and status.connected and status.reconnects == 0, status


# --------------------------------------------------------------------------- one turn of each kind


async def test_plain_reply_is_mirrored_exactly(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "hello there")

    rows = await assert_mirrored(sessions, syncer.owner.sandbox_id, client, session["id"])
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[0].text == "hello there"
    assert rows[1].text is not None and rows[1].text.strip() == PLAIN_REPLY
    assert rows[1].model_provider == "fake" and rows[1].output_tokens > 0
    _assert_never_reconnected(run)


async def test_reasoning_fills_the_thinking_column(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "REASON about it")

    rows = await assert_mirrored(sessions, syncer.owner.sandbox_id, client, session["id"])
    reply = rows[-1]
    assert reply.thinking is not None and reply.thinking.strip() == REASONING
    assert reply.text is not None and reply.text.strip() == REASONED_REPLY
    _assert_never_reconnected(run)


async def test_tool_call_fills_tool_calls_and_results(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "TOOL please")

    rows = await assert_mirrored(sessions, syncer.owner.sandbox_id, client, session["id"])
    # The tool turn is two assistant messages: the call (with its result), then the answer.
    assert [m.role for m in rows] == ["user", "assistant", "assistant"]
    call, answer = rows[1], rows[2]
    assert call.text is not None and call.text.strip() == TOOL_PREAMBLE
    assert call.tool_calls is not None and call.tool_calls[0]["tool"] == "bash"
    assert call.tool_calls[0]["input"]["command"] == TOOL_COMMAND
    assert call.tool_results is not None and call.tool_results[0]["status"] == "completed"
    assert "hello-from-tool" in call.tool_results[0]["output"]
    assert answer.text is not None and "hello-from-tool" in answer.text
    _assert_never_reconnected(run)


async def test_provider_error_is_an_error_row(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "ERROR400 now")

    rows = await assert_mirrored(sessions, syncer.owner.sandbox_id, client, session["id"])
    failed = rows[-1]
    assert failed.role == "assistant" and failed.status == "error"
    assert failed.error_message and "fake bad request" in failed.error_message
    _assert_never_reconnected(run)


async def test_abort_mid_reply_is_cancelled_and_keeps_the_partial_text(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    sandbox_id = syncer.owner.sandbox_id
    await client.prompt_async(session["id"], "SLOW please")

    async def streaming_text() -> str | None:
        rows = (await stored_session(sessions, sandbox_id, session["id"]))[1]
        reply = next((m for m in rows if m.role == "assistant"), None)
        ok = reply is not None and reply.status == "streaming" and reply.text and "s3 " in reply.text
        return reply.text if ok and reply else None

    # The deltas reach our database while the reply is still streaming (not only at its end).
    await eventually(streaming_text, timeout=30, what="streamed text in our database")
    await client.abort(session["id"])
    await wait_turn(client, session["id"], after=0)

    rows = await assert_mirrored(sessions, sandbox_id, client, session["id"])
    assert rows[-1].status == "cancelled" and rows[-1].error_message is None
    assert rows[-1].text is not None and rows[-1].text.startswith("s0 s1 s2 s3 ")
    _assert_never_reconnected(run)


async def test_provider_retry_ends_in_a_complete_reply(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession], fake_llm: FakeLLM
) -> None:
    run = await _live(syncer)
    session = await client.create_session()
    token = uuid.uuid4().hex[:8]
    await prompt_and_wait(client, session["id"], f"RETRY {token}")

    rows = await assert_mirrored(sessions, syncer.owner.sandbox_id, client, session["id"])
    assert [m.status for m in rows] == ["complete", "complete"]
    assert rows[-1].text is not None and rows[-1].text.strip() == PLAIN_REPLY
    assert [r.status for r in fake_llm.requests_for(token)] == [503, 200]  # it really was retried
    _assert_never_reconnected(run)


async def test_session_deleted_upstream_keeps_its_history_as_a_tombstone(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = syncer.owner.sandbox_id
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "hello")
    before = await assert_mirrored(sessions, sandbox_id, client, session["id"])
    await client.delete_session(session["id"])

    async def tombstone() -> bool:
        row = (await stored_sessions(sessions, sandbox_id)).get(session["id"])
        return row is not None and row.status == "deleted"

    await eventually(tombstone, timeout=10, what="the live session.deleted to tombstone our row")
    after = (await stored_session(sessions, sandbox_id, session["id"]))[1]
    assert [(m.external_message_id, m.text, m.status) for m in after] == [
        (m.external_message_id, m.text, m.status) for m in before
    ]
    _assert_never_reconnected(run)


# --------------------------------------------------------------------------- failures


# SQLite is the default installation; the kill/restart path does not depend on the dialect.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_opencode_killed_mid_reply_then_restarted(
    own_syncer: Syncer, opencode: OpenCodeProcess, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = own_syncer.owner.sandbox_id
    run = await _live(own_syncer)
    async with OpenCodeClient(opencode.base_url) as client:
        session = await client.create_session()
        await prompt_and_wait(client, session["id"], "hello before the crash")
        await client.prompt_async(session["id"], "SLOW then crash")

        async def partial() -> bool:
            rows = (await stored_session(sessions, sandbox_id, session["id"]))[1]
            return len(rows) == 4 and rows[-1].status == "streaming" and "s2 " in (rows[-1].text or "")

        await eventually(partial, timeout=30, what="the SLOW reply to stream into our database")
        await opencode.kill()  # SIGKILL: no goodbye, no error event, the reply never completes
        await opencode.restart()
        # The stream noticed, backed off, reconnected and reconciled.
        await run.wait_connected(reconnects=1)

        rows = await assert_mirrored(sessions, sandbox_id, client, session["id"])
        cut = rows[-1]
        assert cut.role == "assistant" and cut.status == "interrupted"
        assert cut.text is not None and cut.text.startswith("s0 s1 s2 ")  # what we saw streaming is kept
        assert [m.status for m in rows[:3]] == ["complete", "complete", "complete"]

        # And the mirror is live again on the restarted server.
        await prompt_and_wait(client, session["id"], "hello after the crash")
        rows = await assert_mirrored(sessions, sandbox_id, client, session["id"])
        assert [m.status for m in rows][-2:] == ["complete", "complete"]
        assert rows[3].status == "interrupted"  # a later turn does not "complete" the cut-off one
    status = run.status
    assert status is not None and status.reconnects >= 1


async def test_events_missed_while_no_stream_ran_are_recovered_on_connect(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = syncer.owner.sandbox_id
    first = await _live(syncer)
    kept, doomed = await client.create_session(), await client.create_session()
    await prompt_and_wait(client, kept["id"], "hello")
    await prompt_and_wait(client, doomed["id"], "hello")
    await assert_mirrored(sessions, sandbox_id, client, kept["id"])
    await assert_mirrored(sessions, sandbox_id, client, doomed["id"])
    await first.stop()

    # Nobody listens now: a turn in a known session, a new session, and a deletion.
    await prompt_and_wait(client, kept["id"], "REASON while nobody listens")
    await prompt_and_wait(client, kept["id"], "TOOL while nobody listens")
    fresh = await client.create_session()
    await prompt_and_wait(client, fresh["id"], "hello while nobody listens")
    before = (await stored_session(sessions, sandbox_id, doomed["id"]))[1]
    await client.delete_session(doomed["id"])

    await _live(syncer)  # the reconcile on connect catches up
    ours = await assert_sandbox_mirrored(sessions, sandbox_id, client)
    assert len((await stored_session(sessions, sandbox_id, kept["id"]))[1]) == 7
    # The deleted session is a tombstone: marked deleted, its history kept.
    assert ours[doomed["id"]].status == "deleted"
    after = (await stored_session(sessions, sandbox_id, doomed["id"]))[1]
    assert [m.external_message_id for m in after] == [m.external_message_id for m in before]


async def test_joining_mid_reply_catches_up_without_calling_it_interrupted(
    syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = syncer.owner.sandbox_id
    session = await client.create_session()
    await client.prompt_async(session["id"], "LONG reply please")

    async def replying() -> bool:
        messages = await client.list_messages(session["id"])
        busy = session["id"] in await client.session_status()
        return busy and len(messages) == 2

    await eventually(replying, timeout=30, what="the reply to start upstream")
    run = await _live(syncer)  # connects mid-reply: the reconcile sees a busy session
    seen: set[str] = set()

    async def finished() -> bool:
        rows = (await stored_session(sessions, sandbox_id, session["id"]))[1]
        seen.update(m.status for m in rows if m.role == "assistant")
        return bool(rows) and rows[-1].role == "assistant" and rows[-1].status == "complete"

    await eventually(finished, timeout=30, what="the reply to complete in our database")
    assert "streaming" in seen  # we did join mid-reply
    assert "interrupted" not in seen  # and a reply still running is never called cut off
    rows = await assert_mirrored(sessions, sandbox_id, client, session["id"])
    # Deltas of the part we joined late were dropped; the part's final update brought all of it.
    assert (rows[-1].text or "").split() == [f"w{i}" for i in range(400)]
    _assert_never_reconnected(run)


# Both ways a worker lets go of the stream, one per dialect (each run takes a few seconds).
@pytest.mark.parametrize(
    ("database_url", "how"), [("sqlite", "cancel"), ("postgres", "worker_shutdown")], indirect=["database_url"]
)
async def test_stream_activity_restarted_mid_burst_loses_and_duplicates_nothing(
    how: str, syncer: Syncer, client: OpenCodeClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = syncer.owner.sandbox_id
    first = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "hello")
    async with EventTap(client) as tap:
        mark = tap.mark()
        await client.prompt_async(session["id"], "BURST 2000")
        await tap.wait_for(lambda e: e["type"] == "message.part.delta", since=mark)
        await first.stop(how=how)  # mid-burst: the worker lets go of the stream
    await _live(syncer)
    await wait_turn(client, session["id"], after=2)

    ours = await assert_sandbox_mirrored(sessions, sandbox_id, client)
    rows = (await stored_session(sessions, sandbox_id, session["id"]))[1]
    burst = rows[-1].text or ""
    assert burst.split() == [f"b{i}" for i in range(2000)]
    upstream = await client.list_sessions()
    total = sum([len(await client.list_messages(s["id"])) for s in upstream])
    assert await count_rows(sessions, sandbox_id) == (len(ours), total)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_clean_end_of_stream_is_a_disconnect_not_the_end_of_the_mirror(
    syncer: Syncer, client: OpenCodeClient, server: OpenCodeProcess, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sandbox_id = syncer.owner.sandbox_id
    run = await _live(syncer)
    session = await client.create_session()
    await prompt_and_wait(client, session["id"], "hello")
    await assert_mirrored(sessions, sandbox_id, client, session["id"])

    # Disposing the instance ends /event with a clean EOF (what an in-container OpenCode restart or
    # config reload looks like). That must count as a disconnect: reconnect, reconcile, stay live.
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.post("/instance/dispose")).json() is True
    await run.wait_connected(reconnects=1)
    await prompt_and_wait(client, session["id"], "hello after the dispose")
    rows = await assert_mirrored(sessions, sandbox_id, client, session["id"])
    assert len(rows) == 4
