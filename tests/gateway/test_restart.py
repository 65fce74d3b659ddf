"""A gateway restarted mid-turn: new epoch, ``reset``, and a consumer that follows the documented
recovery (reconcile from history, then follow live) ends with the agent's transcript exactly."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.fake_llm import PLAIN_REPLY, FakeLLM
from tests.gateway.conftest import GatewayProcess, make_sandbox
from tests.gateway.helpers import EventStream, Transcript, agent_text


async def test_restart_mid_turn_loses_and_duplicates_nothing(
    opencode_binary: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    process = GatewayProcess(make_sandbox(tmp_path, fake_llm), opencode_binary)
    await process.start()
    consumer = Transcript()
    try:
        async with process.client() as client:
            session_id = (await client.post("/sessions", json={"agent_id": "opencode"})).json()["session_id"]
            async with EventStream(client) as stream:
                assert stream.frames[0].event == "reset"
                first_epoch = stream.frames[0].epoch
                await client.post(f"/sessions/{session_id}/prompt", json={"text": "Say hello"})
                await stream.wait_event("session_end_turn", session_id)
                await client.post(f"/sessions/{session_id}/prompt", json={"text": "SLOW please"})
                await stream.wait_for(lambda f: "s3 " in agent_text([f]))  # a few chunks into the reply
                # `docker stop` / a gateway update: SIGTERM in the middle of the turn.
                assert await process.terminate() is not None
                await stream.wait_event("session_end_turn", session_id, since=0)
                await stream.ended.wait()
            for frame in stream.events[1:]:
                consumer.apply(frame)
            last_seen = stream.events[-1].id
        ends = [f.data for f in stream.events if f.event == "session_end_turn"]
        # The interrupted turn still ended explicitly before the stream closed.
        assert [e["reason"] for e in ends] == ["complete", "cancelled"]

        await process.start()
        async with process.client() as client:
            async with EventStream(client, last_event_id=last_seen) as stream:
                reset = stream.frames[0]
                assert reset.event == "reset" and reset.data["reason"] == "epoch_changed"
                assert reset.epoch != first_epoch and reset.epoch > first_epoch
                # Reconcile: every session the gateway knows, idle ones from their history at once.
                sessions = (await client.get("/sessions")).json()["sessions"]
                assert [(s["session_id"], s["running"]) for s in sessions] == [(session_id, False)]
                history = (await client.get(f"/sessions/{session_id}/history")).json()["updates"]
                before = consumer.normalized()
                consumer.replace(history)
                # Everything streamed before the restart, the interrupted reply's partial text included,
                # is what the agent persisted: nothing lost, nothing twice.
                assert consumer.normalized() == before
                assert before[:3] == [("user", "Say hello"), ("agent", PLAIN_REPLY), ("user", "SLOW please")]
                assert before[3][0] == "agent" and before[3][1].startswith("s0 s1 s2 s3")

                # ...then follow live: the session works in the new gateway (re-attached in the agent).
                mark = stream.mark()
                await client.post(f"/sessions/{session_id}/prompt", json={"text": "Say hello again"})
                await stream.wait_event("session_end_turn", session_id, since=mark)
            for frame in stream.events[1:]:
                consumer.apply(frame)
            live = [f for f in stream.events[1:] if f.event == "session_update"]
            # Re-attaching the session replayed nothing into the stream (no duplicates for consumers).
            assert not [f for f in live if f.data["update"].get("sessionUpdate") == "user_message_chunk"]
            assert agent_text(live).strip() == PLAIN_REPLY

            final = (await client.get(f"/sessions/{session_id}/history")).json()["updates"]
        truth = Transcript()
        truth.replace(final)
        assert consumer.normalized() == truth.normalized()
        assert consumer.normalized()[-2:] == [("user", "Say hello again"), ("agent", PLAIN_REPLY)]
    finally:
        await process.terminate()
