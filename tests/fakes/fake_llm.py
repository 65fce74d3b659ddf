"""A scripted OpenAI-compatible LLM server (stdlib only) for driving a real OpenCode offline.

``POST /v1/chat/completions`` answers like OpenAI's chat completions, streamed (SSE, ``stream: true``,
which is what OpenCode sends) or as one JSON body. The behaviour is chosen by an upper-case keyword in the
**last user message** (first match in this order wins):

==============  ===========================================================================================
``ERROR400``    HTTP 400 ``invalid_request_error`` -> OpenCode records a non-retryable ``APIError``
``RETRY``       the first request for a given prompt text gets HTTP 503 (``RETRY429``: HTTP 429), later ones
                a plain reply -> OpenCode shows ``session.status`` ``retry`` and retries (after ~2 s).
                Failures are counted per distinct prompt text: put a unique token in the prompt to repeat.
``TOOL``        a streamed ``bash`` tool call (:data:`TOOL_COMMAND`); once the tool result comes back
                (last message has role ``tool``) a text reply quoting the tool output
``REASON``      ``reasoning_content`` chunks, then text chunks
``SLOW``        100 text chunks 100 ms apart (~10 s; time to abort or kill mid-reply)
``LONG``        400 text chunks 5 ms apart (~2 s)
``BURST N``     N text chunks back to back (``BURST`` alone: 2000)
(none)          "Hello from the fake LLM. This reply is streamed." in word chunks
==============  ===========================================================================================

Requests without tools whose system prompt mentions a title (OpenCode's title generation, sent to the
``small_model``) always get ``Fake title``, whatever the prompt says. Every request is recorded
(:attr:`FakeLLM.requests`) for assertions.

In-process::

    llm = FakeLLM.start()          # 127.0.0.1, free port, background thread (require_key="k": 401 for others)
    llm.base_url                   # "http://127.0.0.1:PORT/v1" -> the provider's baseURL
    llm.stop()

By hand: ``python -m tests.fakes.fake_llm PORT [--host 0.0.0.0]`` (``0.0.0.0`` lets containers reach it).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from tests.fakes._fake_server import (
    BURST_DEFAULT,
    MODEL_ID,
    PLAIN_REPLY,
    REASONED_REPLY,
    REASONING,
    TITLE,
    TOOL_COMMAND,
    TOOL_DESCRIPTION,
    TOOL_PREAMBLE,
    FakeHandler,
    FakeServer,
    Frame,
    RecordedRequest,
    Script,
    choose,
    in_pieces,
    serve_main,
    tool_result_script,
)

__all__ = [
    "BURST_DEFAULT",
    "MODEL_ID",
    "PLAIN_REPLY",
    "REASONED_REPLY",
    "REASONING",
    "TITLE",
    "TOOL_COMMAND",
    "TOOL_PREAMBLE",
    "FakeLLM",
    "Plan",
    "RecordedRequest",
    "completion_body",
    "is_title_request",
    "plan_for",
]

# One streamed chunk: (delta, finish_reason); the delay between chunks belongs to the whole plan.
Delta = dict[str, Any]

_DELTA_KEYS = {"text": "content", "reasoning": "reasoning_content"}


@dataclass
class Plan:
    """What to answer to one request."""

    behaviour: str
    status: int = 200
    error: dict[str, Any] | None = None
    chunks: list[tuple[Delta, str | None]] = field(default_factory=list)
    delay: float = 0.0


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")


def is_title_request(body: dict[str, Any]) -> bool:
    """OpenCode's title generation: no tools, and a system prompt about titles."""
    messages = body.get("messages", [])
    system = " ".join(_text_of(m) for m in messages if m.get("role") == "system").lower()
    return not body.get("tools") and "title" in system


def _tool_call_chunks() -> list[tuple[Delta, str | None]]:
    args = json.dumps({"command": TOOL_COMMAND, "description": TOOL_DESCRIPTION})
    call_id = "call_" + uuid.uuid4().hex[:12]
    chunks: list[tuple[Delta, str | None]] = [({"role": "assistant", "content": TOOL_PREAMBLE}, None)]
    start = {"index": 0, "id": call_id, "type": "function", "function": {"name": "bash", "arguments": ""}}
    chunks.append(({"tool_calls": [start]}, None))
    for piece in in_pieces(args):
        chunks.append(({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None))
    chunks.append(({}, "tool_calls"))
    return chunks


def _plan(script: Script) -> Plan:
    """A :class:`Script` in chat-completions terms."""
    if script.status != 200:
        kind = "invalid_request_error" if script.status == 400 else "server_error"
        return Plan(script.behaviour, script.status, {"error": {"message": script.message, "type": kind}})
    if script.tool_call:
        return Plan(script.behaviour, chunks=_tool_call_chunks(), delay=script.delay)
    chunks: list[tuple[Delta, str | None]] = [({_DELTA_KEYS[kind]: text}, None) for kind, text in script.pieces]
    return Plan(script.behaviour, chunks=chunks, delay=script.delay)


def plan_for(body: dict[str, Any], seen: Counter[str] | None = None) -> Plan:
    """Pick the behaviour for a chat-completions request body.

    ``seen`` counts earlier requests per prompt text (for ``RETRY``); it is updated here.
    """
    messages: list[dict[str, Any]] = body.get("messages", [])
    last_role = messages[-1].get("role") if messages else "user"

    if is_title_request(body):
        return Plan("title", chunks=[({"role": "assistant", "content": TITLE}, None)])
    if last_role == "tool":
        return _plan(tool_result_script(_text_of(messages[-1]).strip()[:60]))
    seen = Counter() if seen is None else seen
    return _plan(choose(_last_user_text(messages), seen, tool=bool(body.get("tools"))))


def completion_body(plan: Plan, model: str) -> dict[str, Any]:
    """The non-streaming answer: the plan's chunks folded into one message."""
    content = "".join(str(d.get("content", "")) for d, _ in plan.chunks)
    reasoning = "".join(str(d.get("reasoning_content", "")) for d, _ in plan.chunks)
    calls: dict[int, dict[str, Any]] = {}
    for delta, _ in plan.chunks:
        for call in delta.get("tool_calls", []):
            merged = calls.setdefault(
                call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            merged["id"] = call.get("id") or merged["id"]
            fn = call.get("function", {})
            merged["function"]["name"] += fn.get("name", "")
            merged["function"]["arguments"] += fn.get("arguments", "")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:10],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": len(plan.chunks), "total_tokens": 100},
    }


def _frames(plan: Plan, model: str) -> Iterator[Frame]:
    cid = "chatcmpl-" + uuid.uuid4().hex[:10]
    created = int(time.time())
    chunks = list(plan.chunks)
    if not chunks or chunks[-1][1] is None:
        chunks.append(({}, "stop"))
    for delta, finish in chunks:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
        yield None, chunk, plan.delay
    usage = {"prompt_tokens": 100, "completion_tokens": len(chunks), "total_tokens": 100 + len(chunks)}
    yield None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": usage}, 0.0  # fmt: skip
    yield None, "[DONE]", 0.0


class _Handler(FakeHandler):
    def user_text(self, body: dict[str, Any]) -> str:
        return _last_user_text(body.get("messages", []))

    def do_GET(self) -> None:
        if self.route.endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        body = self.read_json()
        if body is None or not self.authorized(body):
            return
        if not self.route.endswith("/chat/completions"):
            self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        plan = cast(FakeLLM, self.fake).plan(body)
        self.record(body, plan.behaviour, plan.status, main=plan.behaviour != "title")
        model = str(body.get("model", MODEL_ID))
        if plan.error is not None:
            self.send_json(plan.status, plan.error)
        elif body.get("stream"):
            self.send_stream(_frames(plan, model))
        else:
            self.send_json(200, completion_body(plan, model))


class FakeLLM(FakeServer):
    """The fake served from a background thread; see the module docstring for behaviours.

    ``FakeLLM.start(host="127.0.0.1", port=0, *, require_key=None)``; ``base_url`` ends in ``/v1``.
    """

    handler_class = _Handler
    label = "fake LLM"

    def plan(self, body: dict[str, Any]) -> Plan:
        return self.decide(plan_for, body)


def main(argv: list[str] | None = None) -> None:
    serve_main(FakeLLM, "Fake OpenAI-compatible LLM for OpenCode tests.", 18080, argv)


if __name__ == "__main__":
    main()
