"""OpenCode JSON → chat row values, for every event and part type the mirror stores."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentpod.chat_mirror.opencode_mapping import (
    canonical,
    content_values,
    merge_info,
    merge_parts,
    message_status,
    message_values,
    ms_to_datetime,
    part_progress,
    reconciled_message,
    session_values,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "opencode"
SES = "ses_de99cb776ffeanXOCVNaqIDQUa"
A1 = "msg_216635073001WS5xe1v7thCCxh"  # assistant: reasoning + text
A2 = "msg_216635fa2001R6EfBuSVGENvpP"  # assistant: text + bash tool
A3 = "msg_2166361f0001Kc7wzRbVn3Ys5T"  # assistant: final answer, with cache tokens and cost


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def listed(message_id: str) -> dict[str, Any]:
    """A message as ``GET /session/{id}/message`` lists it in the snapshot fixture."""
    messages = load("api_snapshot.json")["messages"]
    return next(m for ms in messages.values() for m in ms if m["info"]["id"] == message_id)


def events_of(name: str, kind: str) -> list[dict[str, Any]]:
    return [e["properties"] for e in load(name) if e["type"] == kind]


def at(ms: int) -> datetime:
    return ms_to_datetime(ms) or datetime.min


# --------------------------------------------------------------------------- sessions


def test_session_created_maps_id_title_and_upstream_times() -> None:
    info = events_of("full_chat.events.json", "session.created")[0]["info"]
    values = session_values(info)
    assert values.source == "opencode"
    assert values.external_session_id == SES
    assert values.title == "New session - 2026-11-26T05:45:35.113Z"
    assert values.parent_external_session_id is None
    assert values.upstream_created_at == datetime(2026, 11, 26, 5, 45, 35, 113000, tzinfo=UTC)
    assert values.upstream_updated_at == values.upstream_created_at


def test_session_updated_and_deleted_carry_the_newer_time() -> None:
    updated = session_values(events_of("full_chat.events.json", "session.updated")[-1]["info"])
    deleted = session_values(events_of("session_deleted.events.json", "session.deleted")[0]["info"])
    assert updated.title == "Fake title"
    assert deleted.title == "renamed by probe"
    assert updated.upstream_updated_at and deleted.upstream_updated_at
    assert deleted.upstream_updated_at > updated.upstream_updated_at


def test_child_session_keeps_its_parent_upstream_id() -> None:
    info = events_of("child_session.events.json", "session.created")[0]["info"]
    assert session_values(info).parent_external_session_id == SES


def test_epoch_milliseconds_convert_exactly() -> None:
    assert ms_to_datetime(1795671939491) == datetime(2026, 11, 26, 5, 45, 39, 491000, tzinfo=UTC)
    assert ms_to_datetime(None) is None
    assert ms_to_datetime(True) is None
    assert ms_to_datetime("1795671939491") is None


# --------------------------------------------------------------------------- messages


def test_user_message_takes_model_from_info_model() -> None:
    message = listed("msg_216634aea001sqtuKyFwUB2Thv")
    values = message_values(message["info"], message["parts"])
    assert (values.role, values.source, values.status) == ("user", "opencode", "complete")
    assert values.text == "Say hello"
    assert (values.model_provider, values.model_id, values.agent_id) == ("fake", "fake-model", "build")
    assert values.upstream_created_at == at(1795671935722)
    assert values.upstream_completed_at is None
    assert values.thinking is None and values.tool_calls is None and values.tool_results is None
    assert (values.input_tokens, values.output_tokens, values.cost) == (0, 0, Decimal(0))


def test_assistant_just_created_is_streaming_with_top_level_model() -> None:
    info = events_of("full_chat.events.json", "message.updated")[1]["info"]
    assert info["id"] == A1 and "completed" not in info["time"]
    values = message_values(info, [])
    assert (values.role, values.status) == ("assistant", "streaming")
    assert (values.model_provider, values.model_id) == ("fake", "fake-model")
    assert values.text is None


def test_completed_assistant_projects_reasoning_text_tokens_and_raw_content() -> None:
    message = listed(A1)
    values = message_values(message["info"], list(reversed(message["parts"])))  # order given must not matter
    assert values.status == "complete"
    assert values.thinking == "The user wants a greeting."
    assert values.text == "Hello from the fake LLM. This reply is streamed. "
    assert (values.input_tokens, values.output_tokens, values.reasoning_tokens) == (100, 10, 0)
    assert values.upstream_completed_at == at(1795671939491)
    # content keeps the raw upstream objects, parts ordered by their (time-ordered) ids
    assert values.content["info"] == message["info"]
    assert [p["id"] for p in values.content["parts"]] == sorted(p["id"] for p in message["parts"])
    assert [p["type"] for p in values.content["parts"]] == ["step-start", "reasoning", "text", "step-finish"]


def test_tool_part_becomes_a_call_and_a_result() -> None:
    message = listed(A2)
    values = message_values(message["info"], message["parts"])
    call = {"id": "prt_21663607a001Es6gHxfOoP1Bq6", "call_id": "call_5aa0fd7befe9", "tool": "bash"}
    assert values.tool_calls == [
        {**call, "input": {"command": "echo hello-from-tool", "description": "Echo a greeting"}, "status": "completed"}
    ]
    assert values.tool_results == [
        {**call, "status": "completed", "output": "hello-from-tool\n", "error": None, "title": "echo hello-from-tool"}
    ]
    assert values.text == "Running a command."


@pytest.mark.parametrize(
    ("state", "calls", "results"),
    [
        ({"status": "pending", "input": {}, "raw": ""}, 1, 0),
        ({"status": "running", "input": {"command": "ls"}, "time": {"start": 1}}, 1, 0),
        ({"status": "error", "input": {"command": "ls"}, "error": "boom", "time": {"start": 1, "end": 2}}, 1, 1),
    ],
)
def test_tool_states_pending_running_error(state: dict[str, Any], calls: int, results: int) -> None:
    part = {"id": "prt_1", "messageID": "msg_1", "type": "tool", "tool": "bash", "callID": "c1", "state": state}
    values = message_values({"id": "msg_1", "role": "assistant", "time": {"created": 1}}, [part])
    assert len(values.tool_calls or []) == calls
    assert len(values.tool_results or []) == results
    assert (values.tool_calls or [{}])[0]["status"] == state["status"]
    if results:
        assert (values.tool_results or [{}])[0]["error"] == "boom"


def test_own_tokens_cache_and_cost_win_once_present() -> None:
    message = listed(A3)
    values = message_values(message["info"], message["parts"])
    assert (values.input_tokens, values.output_tokens) == (200, 8)
    assert (values.cache_read_tokens, values.cache_write_tokens) == (64, 16)
    assert values.cost == Decimal("0.00125")


def test_mid_turn_tokens_come_from_finished_steps() -> None:
    message = listed(A2)
    info = copy.deepcopy(message["info"])
    del info["time"]["completed"]
    info["tokens"] = {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}}
    values = message_values(info, message["parts"])
    assert values.status == "streaming"
    assert (values.input_tokens, values.output_tokens) == (150, 20)  # the step-finish part


def test_provider_error_and_abort_statuses() -> None:
    error = events_of("error_turn.events.json", "message.updated")[-1]["info"]
    aborted = events_of("abort_turn.events.json", "message.updated")[-1]["info"]
    assert message_status(error) == ("error", "fake bad request")
    assert message_status(aborted) == ("cancelled", None)
    assert message_status({"role": "assistant", "error": {"name": "ProviderAuthError"}}) == (
        "error",
        "ProviderAuthError",
    )
    values = message_values(aborted, [listed("msg_2166369a0001Cv5Nl9Mq3Rt7Su")["parts"][0]])
    assert (values.status, values.text) == ("cancelled", "Once upon a time")


def test_synthetic_text_is_not_what_was_said() -> None:
    info = {"id": "msg_1", "role": "user", "time": {"created": 1}}
    parts: list[dict[str, Any]] = [
        {"id": "prt_1", "messageID": "msg_1", "type": "text", "text": "Read this file"},
        {"id": "prt_2", "messageID": "msg_1", "type": "text", "text": "<file contents>", "synthetic": True},
    ]
    assert message_values(info, parts).text == "Read this file"


def test_parts_before_their_message_make_a_placeholder() -> None:
    part = {"id": "prt_9", "messageID": "msg_9", "sessionID": SES, "type": "text", "text": "Hi"}
    values = message_values({}, [part])
    assert (values.external_message_id, values.role, values.status) == ("msg_9", "assistant", "streaming")
    assert values.upstream_created_at is None
    with pytest.raises(ValueError):
        message_values({}, [])


def test_content_is_canonical_so_key_order_never_looks_like_a_change() -> None:
    message = listed(A2)
    shuffled_info = dict(reversed(list(message["info"].items())))
    shuffled_parts = [dict(reversed(list(p.items()))) for p in message["parts"]]
    a = message_values(message["info"], message["parts"])
    b = message_values(shuffled_info, shuffled_parts)
    assert a == b
    assert json.dumps(a.content) == json.dumps(b.content)
    assert canonical({"b": 1, "a": [{"d": 1, "c": 2}]}) == {"a": [{"c": 2, "d": 1}], "b": 1}


def test_content_values_rederives_the_columns() -> None:
    message = listed(A1)
    values = message_values(message["info"], message["parts"])
    assert content_values(values.content) == values


# --------------------------------------------------------------------------- which state is newer


def test_part_progress_orders_upstream_states() -> None:
    text = {"id": "p", "type": "text"}
    assert part_progress({**text, "text": ""}) < part_progress({**text, "text": "Hel"})
    assert part_progress({**text, "text": "Hello, longer"}) < part_progress({**text, "text": "", "time": {"end": 1}})
    tool = {"id": "t", "type": "tool"}
    ranks = [part_progress({**tool, "state": {"status": s}}) for s in ("pending", "running", "completed")]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3
    assert part_progress({**tool, "state": {"status": "error"}}) == ranks[-1]


def test_merge_never_undoes_a_completion_or_a_finished_part() -> None:
    done = listed(A1)["info"]
    running = {**done, "time": {"created": done["time"]["created"]}}
    assert merge_info(done, running) is done
    assert merge_info(running, done) is done
    assert merge_info(done, None) is done

    final = {"id": "p1", "type": "text", "text": "Hello world", "time": {"start": 1, "end": 2}}
    partial = {"id": "p1", "type": "text", "text": "Hello", "time": {"start": 1}}
    other = {"id": "p0", "type": "step-start"}
    assert merge_parts([final], [partial]) == [final]
    assert merge_parts([partial], [final, other]) == [other, final]  # ordered by part id


def test_reconcile_takes_final_messages_whole_and_merges_unfinished_ones() -> None:
    message = listed(A1)
    # final upstream: authoritative, a part we hold but upstream dropped goes
    stored = {"info": message["info"], "parts": [*message["parts"], {"id": "prt_zzz", "type": "text", "text": "x"}]}
    info, parts = reconciled_message(stored, message)
    assert info == message["info"] and parts == sorted(message["parts"], key=lambda p: p["id"])

    # unfinished upstream: OpenCode persists streamed text only at the part's end, our live copy is ahead
    upstream_info = {**message["info"], "time": {"created": 1}}
    upstream_part = {"id": "prt_t", "messageID": A1, "type": "text", "text": "", "time": {"start": 1}}
    live_part = {**upstream_part, "text": "Hello from the live stream"}
    info, parts = reconciled_message(
        {"info": upstream_info, "parts": [live_part]}, {"info": upstream_info, "parts": [upstream_part]}
    )
    assert parts == [live_part]
