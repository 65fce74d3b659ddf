"""The fake Anthropic Messages API, over real HTTP: keywords, side requests, key capture, streamed and not."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes._fake_server import parse_sse
from tests.fakes.fake_anthropic import (
    PLAIN_REPLY,
    REASONED_REPLY,
    REASONING,
    SIGNATURE,
    TITLE,
    TOOL_COMMAND,
    TOOL_DESCRIPTION,
    TOOL_PREAMBLE,
    TOPIC_REPLY,
    FakeAnthropic,
    script_for,
)

KEY = "sk-ant-test-key"
BASH = {
    "name": "Bash",
    "description": "Run a command",
    "input_schema": {
        "type": "object",
        "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command"],
    },
}
READ = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    """A private instance: these tests look at exactly the requests they sent."""
    server = FakeAnthropic.start()
    yield server
    server.stop()


@pytest.fixture
def http(fake: FakeAnthropic) -> Iterator[httpx.Client]:
    fake.clear()
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=fake.base_url, headers=headers, timeout=10) as client:
        yield client


def body(text: str | list[dict[str, Any]], *, stream: bool = True, tools: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{"role": "user", "content": text}],
        "tools": [READ, BASH] if tools is None else tools,
        **extra,
    }


def stream(http: httpx.Client, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed message (checks the SSE framing: each ``event:`` names its data's type)."""
    response = http.post("/v1/messages?beta=true", json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_sse(response.text)
    assert all(name == data["type"] for name, data in events)
    return [data for _, data in events]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """Event types, runs of deltas squeezed into one."""
    squeezed: list[str] = []
    for event in events:
        kind = event["type"] if event["type"] != "content_block_delta" else event["delta"]["type"]
        if not squeezed or squeezed[-1] != kind or not kind.endswith("_delta"):
            squeezed.append(kind)
    return squeezed


def joined(events: list[dict[str, Any]], delta_type: str, key: str) -> str:
    return "".join(
        e["delta"][key] for e in events if e["type"] == "content_block_delta" and e["delta"]["type"] == delta_type
    )


def stop_reason(events: list[dict[str, Any]]) -> str:
    [delta] = [e for e in events if e["type"] == "message_delta"]
    reason: str = delta["delta"]["stop_reason"]
    return reason


def test_plain_reply_streams_the_event_sequence(http: httpx.Client, fake: FakeAnthropic) -> None:
    events = stream(http, body("Say hello"))
    assert kinds(events) == [
        "message_start", "ping", "content_block_start", "text_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]  # fmt: skip
    start = events[0]["message"]
    assert (start["role"], start["model"], start["content"], start["stop_reason"]) == (
        "assistant", "claude-sonnet-4-5", [], None,
    )  # fmt: skip
    assert start["id"].startswith("msg_") and start["usage"]["input_tokens"] == 100
    assert events[2]["content_block"] == {"type": "text", "text": ""}
    assert joined(events, "text_delta", "text").strip() == PLAIN_REPLY
    assert len(events) > 10  # really chunked, one word each
    assert stop_reason(events) == "end_turn" and events[-2]["usage"]["output_tokens"] > 0
    [recorded] = fake.requests
    assert (recorded.behaviour, recorded.status, recorded.last_user_text) == ("plain", 200, "Say hello")
    assert (recorded.path, recorded.api_key, recorded.main) == ("/v1/messages?beta=true", KEY, True)


def test_plain_reply_without_streaming(http: httpx.Client) -> None:
    response = http.post("/v1/messages", json=body("Say hello", stream=False))
    assert response.status_code == 200
    data = response.json()
    assert (data["type"], data["role"], data["stop_reason"]) == ("message", "assistant", "end_turn")
    assert [b["type"] for b in data["content"]] == ["text"]
    assert data["content"][0]["text"].strip() == PLAIN_REPLY
    assert set(data["usage"]) >= {"input_tokens", "output_tokens"}


def test_reason_streams_a_signed_thinking_block_before_text(http: httpx.Client, fake: FakeAnthropic) -> None:
    events = stream(http, body("REASON about it"))
    assert kinds(events)[2:-2] == [
        "content_block_start", "thinking_delta", "signature_delta", "content_block_stop",
        "content_block_start", "text_delta", "content_block_stop",
    ]  # fmt: skip
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": ""}, {"type": "text", "text": ""}]
    assert joined(events, "thinking_delta", "thinking").strip() == REASONING
    assert joined(events, "signature_delta", "signature") == SIGNATURE
    assert joined(events, "text_delta", "text").strip() == REASONED_REPLY
    assert fake.requests[-1].behaviour == "reason"

    whole = http.post("/v1/messages", json=body("REASON", stream=False)).json()
    assert whole["content"][0] == {"type": "thinking", "thinking": REASONING + " ", "signature": SIGNATURE}


def test_tool_use_then_answer_from_the_tool_result(http: httpx.Client, fake: FakeAnthropic) -> None:
    events = stream(http, body("use a TOOL"))
    assert joined(events, "text_delta", "text") == TOOL_PREAMBLE
    [_, tool_start] = [e for e in events if e["type"] == "content_block_start"]
    block = tool_start["content_block"]
    assert (tool_start["index"], block["type"], block["name"], block["input"]) == (1, "tool_use", "Bash", {})
    assert block["id"].startswith("toolu_")
    pieces = [e for e in events if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert len(pieces) > 2  # the input arrives in pieces
    tool_input = json.loads(joined(events, "input_json_delta", "partial_json"))
    assert tool_input == {"command": TOOL_COMMAND, "description": TOOL_DESCRIPTION}
    assert stop_reason(events) == "tool_use"

    # Claude Code runs the tool and sends the result back as a user message.
    follow_up = body("use a TOOL")
    assistant = [{"type": "text", "text": TOOL_PREAMBLE}, {**block, "input": tool_input}]
    result = {
        "type": "tool_result",
        "tool_use_id": block["id"],
        "content": [{"type": "text", "text": "hello-from-tool\n"}],
    }
    follow_up["messages"] += [{"role": "assistant", "content": assistant}, {"role": "user", "content": [result]}]
    answer = stream(http, follow_up)
    assert joined(answer, "text_delta", "text").strip() == "The tool said: hello-from-tool. Done."
    assert stop_reason(answer) == "end_turn"
    assert [r.behaviour for r in fake.requests] == ["tool_call", "tool_result"]
    assert [r.last_user_text for r in fake.requests_for("TOOL")] == ["use a TOOL", "use a TOOL"]


def test_tool_use_without_streaming(http: httpx.Client) -> None:
    data = http.post("/v1/messages", json=body("TOOL", stream=False)).json()
    assert data["stop_reason"] == "tool_use"
    assert [b["type"] for b in data["content"]] == ["text", "tool_use"]
    assert data["content"][1]["input"]["command"] == TOOL_COMMAND


def test_tool_falls_back_to_claude_code_acps_bash_and_fills_its_schema(http: httpx.Client) -> None:
    # claude-code-acp replaces Bash with its MCP tool, whose schema requires a timeout.
    acp_bash = {
        "name": "mcp__acp__Bash",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command", "timeout"],
        },
    }
    output = {"name": "mcp__acp__BashOutput", "input_schema": {"type": "object"}}
    events = stream(http, body("TOOL", tools=[READ, output, acp_bash]))
    [tool_start] = [e["content_block"] for e in events if e.get("content_block", {}).get("type") == "tool_use"]
    assert tool_start["name"] == "mcp__acp__Bash"
    assert json.loads(joined(events, "input_json_delta", "partial_json")) == {
        "command": TOOL_COMMAND,
        "timeout": 120000,
    }

    # Its result wraps the output: the quote keeps only the command's own.
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": "Exited with code 0.Final output:\n\nhello-from-tool\n",
    }
    answer = body("TOOL", tools=[acp_bash])
    answer["messages"] += [{"role": "assistant", "content": []}, {"role": "user", "content": [result]}]
    assert "The tool said: hello-from-tool." in joined(stream(http, answer), "text_delta", "text")


def test_tool_keyword_without_a_bash_tool_is_a_plain_reply(http: httpx.Client) -> None:
    assert joined(stream(http, body("TOOL", tools=[READ])), "text_delta", "text").strip() == PLAIN_REPLY


def test_keywords_come_from_the_last_user_turn_text_only(http: httpx.Client, fake: FakeAnthropic) -> None:
    # Claude Code's reminders may quote anything (CLAUDE.md, todo lists): they never pick the behaviour.
    reminder = {"type": "text", "text": "<system-reminder>\nERROR400 TOOL SLOW\n</system-reminder>"}
    payload = body([reminder, {"type": "text", "text": "REASON first"}])
    payload["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [reminder, {"type": "text", "text": "plain now"}]},
    ]
    assert joined(stream(http, payload), "text_delta", "text").strip() == PLAIN_REPLY
    assert fake.requests[-1].last_user_text == "plain now"


def test_error400_is_an_invalid_request_error(http: httpx.Client, fake: FakeAnthropic) -> None:
    response = http.post("/v1/messages", json=body("please ERROR400"))
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "fake bad request"},
    }
    assert (fake.requests[-1].behaviour, fake.requests[-1].status) == ("error400", 400)


@pytest.mark.parametrize(
    ("keyword", "status", "kind"), [("RETRY", 503, "api_error"), ("RETRY429", 429, "rate_limit_error")]
)
def test_retry_fails_once_per_prompt_then_succeeds(http: httpx.Client, keyword: str, status: int, kind: str) -> None:
    first = http.post("/v1/messages", json=body(f"{keyword} a"))
    assert first.status_code == status
    assert first.json()["error"]["type"] == kind
    assert joined(stream(http, body(f"{keyword} a")), "text_delta", "text").strip() == PLAIN_REPLY
    assert http.post("/v1/messages", json=body(f"{keyword} b")).status_code == status


def test_burst_and_the_slow_and_long_plans(http: httpx.Client) -> None:
    started = time.monotonic()
    events = stream(http, body("BURST 300"))
    assert joined(events, "text_delta", "text").split() == [f"b{i}" for i in range(300)]
    assert time.monotonic() - started < 2
    # Timing only via the plan: streaming SLOW for real takes 10 s.
    slow, long = script_for(body("SLOW")), script_for(body("LONG"))
    assert (slow.behaviour, len(slow.pieces), slow.delay) == ("slow", 100, 0.1)
    assert (long.behaviour, len(long.pieces), long.delay) == ("long", 400, 0.005)


TOPIC = "Analyze if this message indicates a new conversation topic ... 'isNewTopic' (boolean)"
PREFIX = "Your task is to process Bash commands and return the command prefix."
PATHS = "Extract any file paths that this command reads or modifies. <filepaths>"
SUMMARY = "Summarize this coding conversation in under 50 characters."
SIDE_REQUESTS = [
    ("", "quota", {"max_tokens": 1}, "quota", "OK"),
    (TOPIC, "RETRY c", {}, "topic", TOPIC_REPLY),
    (PREFIX, "Command: echo hi", {}, "command_prefix", "echo"),
    (PATHS, "Command: ls", {}, "file_paths", "<filepaths>\n</filepaths>"),
    (SUMMARY, "RETRY c ERROR400 TOOL", {}, "title", TITLE),
]


@pytest.mark.parametrize(("system", "text", "extra", "behaviour", "reply"), SIDE_REQUESTS)
def test_side_requests_get_short_replies_and_leave_keywords_alone(
    http: httpx.Client, fake: FakeAnthropic, system: str, text: str, extra: dict[str, Any], behaviour: str, reply: str
) -> None:
    side = body(text, tools=[], system=system, **extra)
    del side["tools"]
    assert joined(stream(http, side), "text_delta", "text") == reply
    assert (fake.requests[-1].behaviour, fake.requests[-1].main) == (behaviour, False)
    # The side request did not use up the conversation's RETRY failure.
    assert http.post("/v1/messages", json=body("RETRY c")).status_code == 503
    assert [r.behaviour for r in fake.main_requests()] == ["retry_fail"]
    assert [r.behaviour for r in fake.requests_for("RETRY c")] == ["retry_fail"]


def test_count_tokens_models_and_other_routes(http: httpx.Client, fake: FakeAnthropic) -> None:
    counted = http.post("/v1/messages/count_tokens?beta=true", json=body("TOOL ERROR400"))
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["fake-model", "claude-sonnet-4-5"]
    assert models["has_more"] is False and models["data"][0]["type"] == "model"
    assert http.get("/v1/models/claude-opus-4-1").json()["id"] == "claude-opus-4-1"
    assert http.head("/").status_code == 200
    assert http.get("/api/anything").json() == {}
    missing = http.post("/v1/complete", json={})
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")
    behaviours = [r.behaviour for r in fake.requests]
    assert behaviours == ["count_tokens", "models", "models", "probe", "other", "not_found"]
    assert fake.main_requests() == []


def test_bearer_tokens_are_recorded_too(fake: FakeAnthropic) -> None:
    fake.clear()
    headers = {"authorization": "Bearer oauth-token"}
    httpx.post(f"{fake.base_url}/v1/messages", json=body("hi", stream=False), headers=headers, timeout=10)
    assert fake.requests[-1].api_key == "oauth-token"


def test_require_key_answers_401_to_other_keys() -> None:
    with FakeAnthropic.start(require_key=KEY) as strict:
        url = f"{strict.base_url}/v1/messages"
        wrong = httpx.post(url, json=body("hi"), headers={"x-api-key": "sk-wrong"}, timeout=10)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.post(url, json=body("hi"), timeout=10).status_code == 401  # no key at all
        assert httpx.post(url, json=body("hi", stream=False), headers={"x-api-key": KEY}, timeout=10).status_code == 200
        assert [(r.behaviour, r.api_key) for r in strict.requests] == [
            ("unauthorized", "sk-wrong"), ("unauthorized", None), ("plain", KEY),
        ]  # fmt: skip


def test_stop_ends_a_reply_that_is_still_streaming() -> None:
    fake = FakeAnthropic.start()
    received: list[str] = []

    def read() -> None:
        try:
            with httpx.stream("POST", f"{fake.base_url}/v1/messages", json=body("SLOW"), timeout=20) as r:
                received.extend(r.iter_lines())
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    fake.stop()
    reader.join(timeout=5)
    assert not reader.is_alive()
    deltas = [line for line in received if line == "event: content_block_delta"]
    assert 0 < len(deltas) < 100 and "event: message_stop" not in received


def test_command_line_entry_point() -> None:
    command = [sys.executable, "-m", "tests.fakes.fake_anthropic", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake Anthropic on 127.0.0.1:")
        base_url = line.rsplit("baseURL ", 1)[1].strip()
        assert httpx.get(f"{base_url}/v1/models", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=5)
