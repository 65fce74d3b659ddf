"""Folding ACP updates: the live stream and a replayed history give the same messages."""

from __future__ import annotations

from typing import Any

from agentpod.chat_mirror.acp_transcript import Conversation, columns, fold_history

PROMPT = [{"type": "text", "text": "Run it"}]
TURN: list[dict[str, Any]] = [
    {"sessionUpdate": "agent_thought_chunk", "messageId": "prt_1", "content": {"type": "text", "text": "Let "}},
    {"sessionUpdate": "agent_thought_chunk", "messageId": "prt_1", "content": {"type": "text", "text": "me see"}},
    {"sessionUpdate": "agent_message_chunk", "messageId": "msg_a", "content": {"type": "text", "text": "Running "}},
    {"sessionUpdate": "agent_message_chunk", "messageId": "msg_a", "content": {"type": "text", "text": "it."}},
    {"sessionUpdate": "tool_call", "toolCallId": "call_1", "title": "bash", "kind": "execute", "status": "pending"},
    {"sessionUpdate": "tool_call_update", "toolCallId": "call_1", "status": "in_progress", "title": "echo hi"},
    {
        "sessionUpdate": "tool_call_update",
        "toolCallId": "call_1",
        "status": "completed",
        "rawOutput": {"output": "hi\n"},
    },
    {"sessionUpdate": "agent_message_chunk", "messageId": "msg_b", "content": {"type": "text", "text": "Done."}},
    {"sessionUpdate": "usage_update", "used": 100, "size": 1000, "cost": {"amount": 0.25, "currency": "USD"}},
]
USER_CHUNK = {"sessionUpdate": "user_message_chunk", "messageId": "msg_u", "content": PROMPT[0]}


def _live() -> Conversation:
    live = Conversation()
    for _ in range(2):
        live.start_turn(PROMPT)
        for update in TURN:
            live.apply(update)
        live.end_turn({"reason": "complete", "stop_reason": "end_turn", "usage": {"outputTokens": 7}})
    return live


def test_live_and_history_give_the_same_keys_text_and_tools() -> None:
    live = _live()
    replayed = fold_history([USER_CHUNK, *TURN, USER_CHUNK, *TURN])
    live_drafts = [live.drafts[key] for key in sorted(live.drafts)]
    assert (
        [d.key for d in live_drafts]
        == [d.key for d in replayed]
        == [
            "t000001-0-user",
            "t000001-1-agent",
            "t000002-0-user",
            "t000002-1-agent",
        ]
    )
    for ours, theirs in zip(live_drafts, replayed, strict=True):
        a, b = columns(ours), columns(theirs)
        assert (a.text, a.thinking, a.tool_calls, a.tool_results) == (b.text, b.thinking, b.tool_calls, b.tool_results)
    reply = columns(live_drafts[1])
    assert reply.text == "Running it.\n\nDone."  # two agent messages in one turn
    assert reply.thinking == "Let me see"
    assert reply.tool_calls == [{"toolCallId": "call_1", "title": "echo hi", "kind": "execute", "status": "completed"}]
    assert reply.tool_results == [{"toolCallId": "call_1", "status": "completed", "rawOutput": {"output": "hi\n"}}]
    assert reply.output_tokens == 7 and str(reply.cost) == "0.25"
    assert live_drafts[1].status == "complete" and replayed[1].status == "streaming"  # history carries no status


def test_a_user_message_in_several_chunks_is_one_message() -> None:
    image = {"type": "image", "mimeType": "image/png", "data": "AAAA"}
    drafts = fold_history([USER_CHUNK, {**USER_CHUNK, "content": image}, *TURN])
    assert [d.key for d in drafts] == ["t000001-0-user", "t000001-1-agent"]
    assert drafts[0].blocks == [PROMPT[0], image] and columns(drafts[0]).text == "Run it"


def test_a_turn_that_failed_before_any_output_still_has_its_reply() -> None:
    live = Conversation()
    live.start_turn(PROMPT)
    reply = live.end_turn({"reason": "error", "stop_reason": None, "error": "provider down"})
    assert reply.key == "t000001-1-agent" and reply.status == "error"
    assert columns(reply).error_message == "provider down" and columns(reply).text is None
    assert [d.key for d in live.take_touched()] == ["t000001-0-user", "t000001-1-agent"]
    assert live.take_touched() == []
