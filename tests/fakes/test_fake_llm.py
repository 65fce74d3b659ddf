"""The fake OpenAI-compatible LLM, over real HTTP: every behaviour keyword, streamed and not."""

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

from tests.fakes.fake_llm import (
    PLAIN_REPLY,
    REASONED_REPLY,
    REASONING,
    TITLE,
    TOOL_COMMAND,
    TOOL_PREAMBLE,
    FakeLLM,
    plan_for,
)

TOOLS = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    """A private instance: these tests look at exactly the requests they sent."""
    fake = FakeLLM.start()
    yield fake
    fake.stop()


@pytest.fixture
def http(llm: FakeLLM) -> Iterator[httpx.Client]:
    llm.clear()
    with httpx.Client(base_url=llm.base_url, timeout=10) as client:
        yield client


def body(text: str, *, stream: bool = True, tools: bool = True, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": text}]
    return {
        "model": "fake-model",
        "stream": stream,
        "messages": messages,
        **({"tools": TOOLS} if tools else {}),
        **extra,
    }


def stream(http: httpx.Client, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed completion (checks the SSE framing and the [DONE] end)."""
    response = http.post("/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    frames = [f for f in response.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]


def joined(chunks: list[dict[str, Any]], key: str) -> str:
    return "".join(c["choices"][0]["delta"].get(key, "") for c in chunks if c["choices"])


def finish_reason(chunks: list[dict[str, Any]]) -> str | None:
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert all(r is None for r in reasons[:-1])
    last: str | None = reasons[-1]
    return last


def test_plain_reply_streams_words_then_usage(http: httpx.Client, llm: FakeLLM) -> None:
    chunks = stream(http, body("Say hello"))
    assert joined(chunks, "content").strip() == PLAIN_REPLY
    assert len(chunks) > 5  # really chunked, one word each
    assert finish_reason(chunks) == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 100
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    [recorded] = llm.requests
    assert (recorded.behaviour, recorded.status, recorded.last_user_text) == ("plain", 200, "Say hello")
    assert recorded.path == "/v1/chat/completions"


def test_plain_reply_without_streaming(http: httpx.Client) -> None:
    response = http.post("/chat/completions", json=body("Say hello", stream=False))
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"].strip() == PLAIN_REPLY
    assert data["choices"][0]["finish_reason"] == "stop"


def test_reason_streams_reasoning_before_text(http: httpx.Client, llm: FakeLLM) -> None:
    chunks = stream(http, body("REASON about it"))
    assert joined(chunks, "reasoning_content").strip() == REASONING
    assert joined(chunks, "content").strip() == REASONED_REPLY
    kinds = [next(iter(c["choices"][0]["delta"]), None) for c in chunks if c["choices"]]
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning_content")
    assert llm.requests[-1].behaviour == "reason"


def test_tool_call_then_answer_from_tool_result(http: httpx.Client, llm: FakeLLM) -> None:
    chunks = stream(http, body("use a TOOL"))
    assert joined(chunks, "content") == TOOL_PREAMBLE
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "bash" and calls[0]["id"].startswith("call_")
    args = json.loads("".join(c["function"]["arguments"] for c in calls))
    assert args["command"] == TOOL_COMMAND
    assert len(calls) > 2  # arguments arrive in pieces
    assert finish_reason(chunks) == "tool_calls"

    # OpenCode runs the tool and calls again with the result as the last message.
    follow_up = body("use a TOOL")
    follow_up["messages"] += [
        {"role": "assistant", "content": TOOL_PREAMBLE, "tool_calls": [{"id": calls[0]["id"], "type": "function"}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "hello-from-tool\n"},
    ]
    answer = stream(http, follow_up)
    assert joined(answer, "content").strip() == "The tool said: hello-from-tool. Done."
    assert finish_reason(answer) == "stop"
    assert [r.behaviour for r in llm.requests] == ["tool_call", "tool_result"]


def test_tool_keyword_without_tools_is_a_plain_reply(http: httpx.Client) -> None:
    chunks = stream(http, body("TOOL but no tools offered", tools=False))
    assert joined(chunks, "content").strip() == PLAIN_REPLY


def test_tool_call_without_streaming(http: httpx.Client) -> None:
    data = http.post("/chat/completions", json=body("TOOL", stream=False)).json()
    message = data["choices"][0]["message"]
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"])["command"] == TOOL_COMMAND


def test_error400_is_a_provider_error(http: httpx.Client, llm: FakeLLM) -> None:
    response = http.post("/chat/completions", json=body("please ERROR400"))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (llm.requests[-1].behaviour, llm.requests[-1].status) == ("error400", 400)


@pytest.mark.parametrize(("keyword", "status"), [("RETRY", 503), ("RETRY429", 429)])
def test_retry_fails_once_per_prompt_then_succeeds(http: httpx.Client, keyword: str, status: int) -> None:
    first = http.post("/chat/completions", json=body(f"{keyword} a"))
    assert first.status_code == status
    assert first.json()["error"]["type"] == "server_error"
    assert joined(stream(http, body(f"{keyword} a")), "content").strip() == PLAIN_REPLY
    # Counted per prompt text: another prompt fails once again.
    assert http.post("/chat/completions", json=body(f"{keyword} b")).status_code == status


def test_burst_sends_n_chunks_back_to_back(http: httpx.Client) -> None:
    started = time.monotonic()
    chunks = stream(http, body("BURST 300"))
    assert joined(chunks, "content").split() == [f"b{i}" for i in range(300)]
    assert time.monotonic() - started < 2


def test_slow_and_long_plans() -> None:
    # Timing only via the plan: streaming SLOW for real takes 10 s.
    slow, long, burst = plan_for(body("SLOW")), plan_for(body("LONG")), plan_for(body("BURST"))
    assert (slow.behaviour, len(slow.chunks), slow.delay) == ("slow", 100, 0.1)
    assert (long.behaviour, len(long.chunks), long.delay) == ("long", 400, 0.005)
    assert (burst.behaviour, len(burst.chunks), burst.delay) == ("burst", 2000, 0.0)


def test_behaviour_follows_the_last_user_message(http: httpx.Client) -> None:
    payload = body("REASON first")
    payload["messages"] += [
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "plain now"}]},
    ]
    assert joined(stream(http, payload), "content").strip() == PLAIN_REPLY


def test_title_generation_gets_a_title_whatever_the_prompt(http: httpx.Client, llm: FakeLLM) -> None:
    payload = {
        "model": "fake-model",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are a title generator. You output ONLY a thread title."},
            {"role": "user", "content": "ERROR400 TOOL SLOW"},
        ],
    }
    assert joined(stream(http, payload), "content") == TITLE
    assert llm.requests[-1].behaviour == "title"
    assert llm.requests_for("ERROR400") == []  # title requests are left out


def test_models_listing_and_unknown_routes(http: httpx.Client) -> None:
    assert http.get("/models").json()["data"][0]["id"] == "fake-model"
    assert http.post("/embeddings", json={}).status_code == 404


def test_stop_ends_a_reply_that_is_still_streaming() -> None:
    fake = FakeLLM.start()
    received: list[str] = []

    def read() -> None:
        try:
            with httpx.stream("POST", f"{fake.base_url}/chat/completions", json=body("SLOW"), timeout=20) as r:
                received.extend(r.iter_lines())
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    started = time.monotonic()
    fake.stop()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 2
    assert 0 < len([line for line in received if line.startswith("data: ")]) < 100


def test_command_line_entry_point() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_llm", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake LLM on 127.0.0.1:")
        base_url = line.rsplit("baseURL ", 1)[1].strip()
        assert httpx.get(f"{base_url}/models", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=5)
