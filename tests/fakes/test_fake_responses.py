"""The fake OpenAI Responses API, over real HTTP: keywords, Codex's shell tools, key capture, streamed and not."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes._fake_server import parse_sse
from tests.fakes.fake_responses import (
    PLAIN_REPLY,
    REASONED_REPLY,
    REASONING,
    TITLE,
    TOOL_COMMAND,
    TOOL_PREAMBLE,
    FakeResponses,
    script_for,
)

KEY = "sk-test-key"
MODEL = "gpt-5-codex"


def function(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "strict": False, "parameters": {"type": "object", "properties": {}}}


TOOLS = [function("shell"), function("update_plan"), {"type": "custom", "name": "apply_patch"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeResponses]:
    """A private instance: these tests look at exactly the requests they sent."""
    server = FakeResponses.start()
    yield server
    server.stop()


@pytest.fixture
def http(fake: FakeResponses) -> Iterator[httpx.Client]:
    fake.clear()
    with httpx.Client(base_url=fake.base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as client:
        yield client


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def body(text: str, *, stream: bool = True, tools: Any = None, **extra: Any) -> dict[str, Any]:
    """A request shaped like Codex's: instructions, context messages, then the prompt."""
    return {
        "model": MODEL,
        "instructions": "You are Codex.",
        "input": [user("<environment_context>\n  <cwd>/work</cwd>\n</environment_context>"), user(text)],
        "tools": TOOLS if tools is None else tools,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "store": False,
        "stream": stream,
        **extra,
    }


def stream(http: httpx.Client, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response (checks the framing, the event names and the sequence numbers)."""
    response = http.post("/responses", json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_sse(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return [data for _, data in events]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """Event types without the ``response.`` prefix, runs of deltas squeezed into one."""
    squeezed: list[str] = []
    for event in events:
        kind = event["type"].removeprefix("response.")
        if not squeezed or squeezed[-1] != kind or not kind.endswith(".delta"):
            squeezed.append(kind)
    return squeezed


def joined(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == f"response.{kind}.delta")


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "response.completed"
    response: dict[str, Any] = events[-1]["response"]
    return response


def test_plain_reply_streams_the_event_sequence(http: httpx.Client, fake: FakeResponses) -> None:
    events = stream(http, body("Say hello"))
    assert kinds(events) == [
        "created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
        "output_text.done", "content_part.done", "output_item.done", "completed",
    ]  # fmt: skip
    created = events[0]["response"]
    assert (created["object"], created["status"], created["model"], created["output"]) == (
        "response", "in_progress", MODEL, [],
    )  # fmt: skip
    assert joined(events, "output_text").strip() == PLAIN_REPLY
    assert len(events) > 10  # really chunked, one word each
    item = events[-2]["item"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert item["content"] == [{"type": "output_text", "text": PLAIN_REPLY + " ", "annotations": []}]
    response = completed(events)
    assert (response["id"], response["status"], response["output"]) == (created["id"], "completed", [item])
    usage = response["usage"]
    assert usage["input_tokens"] == 100 and usage["total_tokens"] == 100 + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    [recorded] = fake.requests
    assert (recorded.behaviour, recorded.status, recorded.last_user_text) == ("plain", 200, "Say hello")
    assert (recorded.path, recorded.api_key, recorded.main) == ("/v1/responses", KEY, True)


def test_plain_reply_without_streaming(http: httpx.Client) -> None:
    data = http.post("/responses", json=body("Say hello", stream=False)).json()
    assert (data["object"], data["status"]) == ("response", "completed")
    assert data["output"][0]["content"][0]["text"].strip() == PLAIN_REPLY


def test_reason_streams_a_reasoning_summary_before_text(http: httpx.Client, fake: FakeResponses) -> None:
    events = stream(http, body("REASON about it"))
    assert kinds(events)[2:8] == [
        "output_item.added", "reasoning_summary_part.added", "reasoning_summary_text.delta",
        "reasoning_summary_text.done", "reasoning_summary_part.done", "output_item.done",
    ]  # fmt: skip
    assert joined(events, "reasoning_summary_text").strip() == REASONING
    assert joined(events, "output_text").strip() == REASONED_REPLY
    reasoning, message = completed(events)["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"][0]["type"] == "summary_text"
    assert message["type"] == "message"
    assert {e["summary_index"] for e in events if "summary_index" in e} == {0}
    assert completed(events)["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert fake.requests[-1].behaviour == "reason"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("shell", {"command": ["bash", "-lc", TOOL_COMMAND]}),
        ("shell_command", {"command": TOOL_COMMAND}),
        ("exec_command", {"cmd": TOOL_COMMAND}),
    ],
)
def test_function_call_then_answer_from_its_output(
    http: httpx.Client, fake: FakeResponses, tool: str, arguments: dict[str, Any]
) -> None:
    tools = [function("update_plan"), function(tool), function("write_stdin")]
    events = stream(http, body("use a TOOL", tools=tools))
    assert joined(events, "output_text") == TOOL_PREAMBLE
    assert kinds(events)[-5:] == [
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.done", "output_item.done",
        "completed",
    ]  # fmt: skip
    assert len([e for e in events if e["type"].endswith("function_call_arguments.delta")]) > 1
    assert json.loads(joined(events, "function_call_arguments")) == arguments
    call = completed(events)["output"][-1]
    assert (call["type"], call["name"], json.loads(call["arguments"])) == ("function_call", tool, arguments)
    assert call["call_id"].startswith("call_")

    # Codex runs the command and sends its output back as the last input item.
    follow_up = body("use a TOOL", tools=tools)
    output = "Exit code: 0\nWall time: 0.1 seconds\nOutput:\nhello-from-tool\n"
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": output}
    follow_up["input"] += [*completed(events)["output"], result]
    answer = stream(http, follow_up)
    assert joined(answer, "output_text").strip() == "The tool said: hello-from-tool. Done."
    assert [r.behaviour for r in fake.requests] == ["tool_call", "tool_result"]
    assert [r.last_user_text for r in fake.requests_for("TOOL")] == ["use a TOOL", "use a TOOL"]


@pytest.mark.parametrize(
    "output",
    [
        json.dumps({"output": "hello-from-tool\n", "metadata": {"exit_code": 0, "duration_seconds": 0.1}}),
        [{"type": "input_text", "text": "hello-from-tool\n"}],
        "hello-from-tool\n",
    ],
)
def test_tool_outputs_in_every_shape_are_quoted(http: httpx.Client, output: Any) -> None:
    payload = body("TOOL")
    payload["input"].append({"type": "function_call_output", "call_id": "call_1", "output": output})
    assert joined(stream(http, payload), "output_text").strip() == "The tool said: hello-from-tool. Done."


def test_local_shell_tool_gets_a_local_shell_call(http: httpx.Client) -> None:
    events = stream(http, body("TOOL", tools=[{"type": "local_shell"}]))
    call = completed(events)["output"][-1]
    assert (call["type"], call["status"]) == ("local_shell_call", "completed")
    assert call["action"]["type"] == "exec" and call["action"]["command"] == ["bash", "-lc", TOOL_COMMAND]


def test_tool_keyword_without_a_shell_tool_is_a_plain_reply(http: httpx.Client) -> None:
    events = stream(http, body("TOOL", tools=[function("update_plan")]))
    assert joined(events, "output_text").strip() == PLAIN_REPLY


def test_keywords_come_from_the_last_user_message_only(http: httpx.Client, fake: FakeResponses) -> None:
    # Codex's context messages (AGENTS.md, environment) may quote anything: they never pick the behaviour.
    payload = body("REASON first")
    agents = "# AGENTS.md instructions for /work\n\n<INSTRUCTIONS>\nSay ERROR400 TOOL SLOW\n</INSTRUCTIONS>"
    payload["input"] += [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        user("plain now"),
        user(agents),
        user("<environment_context>ERROR400</environment_context>"),
    ]
    assert joined(stream(http, payload), "output_text").strip() == PLAIN_REPLY
    assert fake.requests[-1].last_user_text == "plain now"
    # The Responses API also takes the input as one string.
    assert joined(stream(http, {**body(""), "input": "REASON"}), "output_text").strip() == REASONED_REPLY


def test_error400_is_an_invalid_request_error(http: httpx.Client, fake: FakeResponses) -> None:
    response = http.post("/responses", json=body("please ERROR400"))
    assert response.status_code == 400
    error = {"message": "fake bad request", "type": "invalid_request_error", "param": None, "code": None}
    assert response.json() == {"error": error}
    assert (fake.requests[-1].behaviour, fake.requests[-1].status) == ("error400", 400)


@pytest.mark.parametrize(("keyword", "status"), [("RETRY", 503), ("RETRY429", 429)])
def test_retry_fails_once_per_prompt_then_succeeds(http: httpx.Client, keyword: str, status: int) -> None:
    assert http.post("/responses", json=body(f"{keyword} a")).status_code == status
    assert joined(stream(http, body(f"{keyword} a")), "output_text").strip() == PLAIN_REPLY
    assert http.post("/responses", json=body(f"{keyword} b")).status_code == status


def test_burst_and_the_slow_and_long_plans(http: httpx.Client) -> None:
    started = time.monotonic()
    events = stream(http, body("BURST 300"))
    assert joined(events, "output_text").split() == [f"b{i}" for i in range(300)]
    assert time.monotonic() - started < 2
    slow, long = script_for(body("SLOW")), script_for(body("LONG"))
    assert (slow.behaviour, len(slow.pieces), slow.delay) == ("slow", 100, 0.1)
    assert (long.behaviour, len(long.pieces), long.delay) == ("long", 400, 0.005)


def test_requests_without_tools_are_side_requests(http: httpx.Client, fake: FakeResponses) -> None:
    side = body("RETRY c ERROR400 TOOL", tools=[])
    assert joined(stream(http, side), "output_text") == TITLE
    assert (fake.requests[-1].behaviour, fake.requests[-1].main) == ("title", False)
    # It did not use up the conversation's RETRY failure.
    assert http.post("/responses", json=body("RETRY c")).status_code == 503
    assert [r.behaviour for r in fake.main_requests()] == ["retry_fail"]


def test_models_listing_has_the_model_used_and_unknown_routes_are_404(http: httpx.Client, fake: FakeResponses) -> None:
    stream(http, body("Say hello"))
    listing = http.get("/models", params={"client_version": "0.50.0"}).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake-model", MODEL]
    assert http.post("/chat/completions", json={}).status_code == 404
    assert http.get("/responses/abc").status_code == 404
    assert [r.behaviour for r in fake.requests] == ["plain", "models", "not_found", "not_found"]


def test_require_key_answers_401_to_other_keys() -> None:
    with FakeResponses.start(require_key=KEY) as strict:
        url = f"{strict.base_url}/responses"
        wrong = httpx.post(url, json=body("hi"), headers={"authorization": "Bearer sk-wrong"}, timeout=10)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{strict.base_url}/models", timeout=10).status_code == 401
        ok = httpx.post(url, json=body("hi", stream=False), headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        assert ok.status_code == 200
        assert [(r.behaviour, r.api_key) for r in strict.requests] == [
            ("unauthorized", "sk-wrong"), ("unauthorized", None), ("plain", KEY),
        ]  # fmt: skip


def test_command_line_entry_point() -> None:
    command = [sys.executable, "-m", "tests.fakes.fake_responses", "0", "--require-key", KEY]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake Responses on 127.0.0.1:")
        base_url = line.rsplit("baseURL ", 1)[1].strip()
        assert base_url.endswith("/v1")
        assert httpx.get(f"{base_url}/models", timeout=5).status_code == 401
        assert httpx.get(f"{base_url}/models", headers={"authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=5)
