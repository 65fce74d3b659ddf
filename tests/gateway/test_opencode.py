"""The gateway driving a real ``opencode acp`` against the fake LLM (one agent process per module)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.fakes.fake_llm import PLAIN_REPLY, TOOL_COMMAND
from tests.gateway.conftest import InProcessGateway, start_in_process
from tests.gateway.helpers import EventStream, Transcript, agent_text


async def new_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/sessions", json={"agent_id": "opencode"})
    assert response.status_code == 201, response.text
    session_id = str(response.json()["session_id"])
    assert session_id.startswith("ses_")  # the ACP session id is OpenCode's own session id
    return session_id


async def prompt(client: httpx.AsyncClient, session_id: str, text: str) -> str:
    response = await client.post(f"/sessions/{session_id}/prompt", json={"text": text})
    assert response.status_code == 202, response.text
    return str(response.json()["turn_id"])


async def test_prompt_returns_at_once_and_the_reply_streams_then_persists(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    async with EventStream(client) as stream:
        assert stream.frames[0].event == "reset"  # a first connection: reconcile, then follow
        started = time.monotonic()
        turn_id = await prompt(client, session_id, "Say hello")
        assert time.monotonic() - started < 1.0  # the turn runs in the background
        end = await stream.wait_event("session_end_turn", session_id)
    assert end.data == {
        "session_id": session_id,
        "turn_id": turn_id,
        "reason": "complete",
        "stop_reason": "end_turn",
        "usage": end.data["usage"],
    }
    frames = stream.of_session(session_id)
    # (OpenCode announces its commands with a session_update of its own soon after session/new.)
    frames = frames[next(i for i, f in enumerate(frames) if f.event == "turn_start") :]
    assert frames[0].data["prompt"] == [{"type": "text", "text": "Say hello"}]
    assert agent_text(frames).strip() == PLAIN_REPLY
    assert frames[-1] is end
    # Ids: one epoch, strictly increasing, no gaps (nothing else happened on this gateway meanwhile).
    seqs = [f.seq for f in stream.events[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len({f.epoch for f in stream.events}) == 1

    # The reply is persisted by the agent: its replayed history has it.
    history = (await client.get(f"/sessions/{session_id}/history")).json()["updates"]
    replayed = Transcript()
    replayed.replace(history)
    assert replayed.normalized() == [("user", "Say hello"), ("agent", PLAIN_REPLY)]
    # ...and replaying it did not leak old updates into the live stream.
    session = (await client.get(f"/sessions/{session_id}")).json()
    assert session["running"] is False and session["pending_permissions"] == []


async def test_tool_call_waits_for_our_answer_then_completes(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    async with EventStream(client) as stream:
        await prompt(client, session_id, "TOOL please")
        asked = await stream.wait_event("permission_request", session_id)
        request_id = asked.data["request_id"]
        assert asked.data["tool_call"]["title"] == TOOL_COMMAND
        assert {o["optionId"] for o in asked.data["options"]} >= {"once", "always", "reject"}

        # Never auto-approved: the tool does not run and the turn does not end while nobody answers.
        await asyncio.sleep(1.0)
        mark = stream.mark()
        assert not [f for f in stream.of_session(session_id) if f.event == "session_end_turn"]
        assert not [
            f
            for f in stream.of_session(session_id)
            if f.event == "session_update" and f.data["update"].get("status") == "completed"
        ]
        pending = (await client.get("/permissions")).json()["permissions"]
        assert [p["request_id"] for p in pending] == [request_id]
        assert (await client.get(f"/sessions/{session_id}")).json()["pending_permissions"] == [request_id]

        bad = await client.post(f"/permissions/{request_id}", json={"option_id": "not-offered"})
        assert bad.status_code == 422
        answer = await client.post(f"/permissions/{request_id}", json={"option_id": "once"})
        assert answer.status_code == 200
        assert (await client.post(f"/permissions/{request_id}", json={"option_id": "once"})).status_code == 404

        end = await stream.wait_event("session_end_turn", session_id, since=mark)
    assert end.data["reason"] == "complete"
    after = stream.of_session(session_id, since=mark)
    resolved = [f for f in after if f.event == "permission_resolved"]
    assert [r.data for r in resolved] == [
        {"request_id": request_id, "session_id": session_id, "outcome": "selected", "option_id": "once"}
    ]
    tool_updates = [f.data["update"] for f in after if f.event == "session_update" and "toolCallId" in f.data["update"]]
    assert tool_updates[-1]["status"] == "completed"
    assert "hello-from-tool" in agent_text(after)
    assert (await client.get("/permissions")).json()["permissions"] == []


async def test_cancel_mid_turn(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    async with EventStream(client) as stream:
        turn_id = await prompt(client, session_id, "SLOW please")
        await stream.wait_for(
            lambda f: f.event == "session_update" and f.data["update"].get("sessionUpdate") == "agent_message_chunk"
        )
        busy = await client.post(f"/sessions/{session_id}/prompt", json={"text": "again"})
        assert busy.status_code == 409
        assert (await client.get(f"/sessions/{session_id}")).json()["turn_id"] == turn_id
        cancelled = await client.post(f"/sessions/{session_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["turn_id"] == turn_id
        end = await stream.wait_event("session_end_turn", session_id, timeout=10)
    assert end.data["reason"] == "cancelled" and end.data["stop_reason"] == "cancelled"
    assert 0 < len(agent_text(stream.of_session(session_id)).split()) < 100  # stopped before the 100 chunks
    assert (await client.post(f"/sessions/{session_id}/cancel")).status_code == 409


async def test_cancel_while_a_permission_is_pending(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    async with EventStream(client) as stream:
        await prompt(client, session_id, "TOOL please")
        asked = await stream.wait_event("permission_request", session_id)
        assert (await client.post(f"/sessions/{session_id}/cancel")).status_code == 202
        end = await stream.wait_event("session_end_turn", session_id)
    assert end.data["reason"] == "cancelled"
    resolved = [f.data for f in stream.of_session(session_id) if f.event == "permission_resolved"]
    assert resolved == [
        {"request_id": asked.data["request_id"], "session_id": session_id, "outcome": "cancelled", "option_id": None}
    ]
    answer = await client.post(f"/permissions/{asked.data['request_id']}", json={"option_id": "once"})
    assert answer.status_code == 404


async def test_last_event_id_replays_exactly_the_missed_events(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    async with EventStream(client) as full:
        await prompt(client, session_id, "Say hello")
        await full.wait_event("session_end_turn", session_id)
    turn = full.of_session(session_id)
    cut = len(turn) // 2
    # A consumer that saw the first half reconnects with the id of the last event it got.
    async with EventStream(client, last_event_id=turn[cut - 1].id) as resumed:
        await resumed.wait_for(lambda f: f.comment == "heartbeat")
    replayed = resumed.frames[: next(i for i, f in enumerate(resumed.frames) if f.comment)]
    assert [(f.id, f.event, f.data) for f in replayed] == [(f.id, f.event, f.data) for f in turn[cut:]]
    # Up to date: nothing replayed, no reset.
    async with EventStream(client, last_event_id=turn[-1].id) as current:
        await current.wait_for(lambda f: f.comment == "heartbeat")
    assert current.events == []


async def test_agent_crash_is_reported_and_the_next_prompt_recovers(gw: InProcessGateway) -> None:
    async with gw.client() as client:
        session_id = await new_session(client)
        (agent,) = (await client.get("/agents")).json()["agents"]
        assert agent["state"] == "running" and agent["agent_info"]["name"] == "OpenCode"
        process = gw.gateway._agents["opencode"]
        async with EventStream(client) as stream:
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
            error = await stream.wait_event("error")
            assert error.data["agent_id"] == "opencode" and "exited" in error.data["message"]
            assert (await client.get("/agents")).json()["agents"][0]["state"] == "exited"
            # A new agent process; the session it never saw is resumed from OpenCode's store.
            await prompt(client, session_id, "Say hello")
            end = await stream.wait_event("session_end_turn", session_id)
        assert end.data["reason"] == "complete"
        turn = stream.of_session(session_id)
        assert agent_text(turn).strip() == PLAIN_REPLY
        # Re-attaching replayed nothing into the stream: only this turn's own updates (and maybe a
        # fresh command list, which OpenCode announces whenever it opens a session).
        kinds = [f.data["update"]["sessionUpdate"] for f in turn if f.event == "session_update"]
        assert "user_message_chunk" not in kinds
        start = next(i for i, f in enumerate(turn) if f.event == "turn_start")
        assert {f.data["update"]["sessionUpdate"] for f in turn[:start]} <= {"available_commands_update"}


async def test_another_sandboxs_session_is_a_404(gw: InProcessGateway, client: httpx.AsyncClient, tmp_path) -> None:
    session_id = await new_session(client)
    other_sandbox = await start_in_process(
        type(gw.sandbox)(tmp_path, tmp_path / "ws", tmp_path / "home", tmp_path / "state"), "/nonexistent"
    )
    try:
        async with other_sandbox.client() as other:
            for method, path, body in (
                ("GET", f"/sessions/{session_id}", None),
                ("POST", f"/sessions/{session_id}/prompt", {"text": "hi"}),
                ("POST", f"/sessions/{session_id}/cancel", None),
                ("GET", f"/sessions/{session_id}/history", None),
            ):
                assert (await other.request(method, path, json=body)).status_code == 404, path
    finally:
        await other_sandbox.server.stop()
