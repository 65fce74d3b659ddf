"""A scripted Anthropic Messages API server (stdlib only) for driving a real Claude Code offline.

``POST /v1/messages`` answers like Anthropic's Messages API, streamed (SSE with ``event:`` lines,
``stream: true``, which is what Claude Code sends) or as one JSON body. The behaviour is chosen by an upper-case
keyword in the **last user turn's text** (text blocks only: ``tool_result`` blocks and the
``<system-reminder>`` context Claude Code adds are left out); first match in this order wins:

==============  ===========================================================================================
``ERROR400``    HTTP 400 ``invalid_request_error`` -> a non-retryable API error
``RETRY``       the first request for a given prompt text gets HTTP 503 (``RETRY429``: HTTP 429), later ones
                a plain reply -> the client retries. Failures are counted per distinct prompt text.
``TOOL``        a text block, then a ``tool_use`` block calling ``Bash`` (:data:`TOOL_COMMAND`;
                without a ``Bash`` tool the first tool named like ``*__Bash`` or containing "bash"), stop
                reason ``tool_use``; once the tool result comes back (the last message is a user message
                with a ``tool_result`` block) a text reply quoting the tool output
``REASON``      a ``thinking`` block (with a signature), then a text block
``SLOW``        100 text deltas 100 ms apart (~10 s; time to abort or kill mid-reply)
``LONG``        400 text deltas 5 ms apart (~2 s)
``BURST N``     N text deltas back to back (``BURST`` alone: 2000)
(none)          "Hello from the fake LLM. This reply is streamed." in word deltas
==============  ===========================================================================================

Requests **without tools** are Claude Code's side requests and never follow the keywords: ``max_tokens: 1``
(quota check) gets ``OK``, a topic check (system prompt about ``isNewTopic``) a JSON verdict, a command prefix
check (``Command: ...``) the command's first word, a file paths extraction empty ``<filepaths>`` tags, and
anything else ``Fake title``. ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}``,
``GET /v1/models`` lists the models, other ``GET`` and ``HEAD`` requests get an empty 200.

Every request is recorded (:attr:`FakeAnthropic.requests`, with the API key from ``x-api-key`` or
``authorization: Bearer``); :meth:`FakeAnthropic.main_requests` keeps the conversation (messages requests
carrying tools).

In-process::

    fake = FakeAnthropic.start()   # 127.0.0.1, free port, background thread (require_key="k": 401 for others)
    fake.base_url                  # "http://127.0.0.1:PORT" -> ANTHROPIC_BASE_URL (no /v1: the client adds it)
    fake.stop()

By hand: ``python -m tests.fakes.fake_anthropic PORT [--host 0.0.0.0] [--require-key KEY]``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

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
    prompt_text,
    quote_tool_output,
    serve_main,
    split_pieces,
    tool_result_script,
)

__all__ = [
    "BURST_DEFAULT",
    "FILE_PATHS_REPLY",
    "MODEL_ID",
    "PLAIN_REPLY",
    "REASONED_REPLY",
    "REASONING",
    "SIGNATURE",
    "TITLE",
    "TOOL_COMMAND",
    "TOOL_DESCRIPTION",
    "TOOL_PREAMBLE",
    "TOPIC_REPLY",
    "FakeAnthropic",
    "RecordedRequest",
    "Script",
    "bash_tool",
    "last_user_text",
    "message_body",
    "script_for",
    "side_script",
    "tool_input",
    "tool_result",
]

SIGNATURE = "ZmFrZS10aGlua2luZy1zaWduYXR1cmU="  # thinking blocks carry one; nobody checks the fake's
TOPIC_REPLY = json.dumps({"isNewTopic": True, "title": TITLE})
FILE_PATHS_REPLY = "<filepaths>\n</filepaths>"

_COMMAND_LINE = re.compile(r"^Command:\s*(\S+)", re.M)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_BLOCK_TYPES = {"text": "text", "reasoning": "thinking"}


def _blocks_of(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _text_of(content: Any) -> str:
    return "\n".join(str(b.get("text", "")) for b in _blocks_of(content) if b.get("type") == "text")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn that has any (tool results carry none), without context blocks."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = prompt_text(_text_of(message.get("content")))
            if text:
                return text
    return ""


def tool_result(messages: list[dict[str, Any]]) -> str | None:
    """The output in the last message when it brings a tool result back, else None."""
    if not messages or messages[-1].get("role") != "user":
        return None
    results = [b for b in _blocks_of(messages[-1].get("content")) if b.get("type") == "tool_result"]
    if not results:
        return None
    content = results[-1].get("content")
    return content if isinstance(content, str) else _text_of(content)


def bash_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool ``TOOL`` calls: ``Bash``, else an MCP ``*__Bash`` (claude-code-acp's), else any "bash"."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("name"), str)]
    for matches in (
        lambda name: name == "Bash",
        lambda name: name.split("__")[-1].lower() == "bash",
        lambda name: "bash" in name.lower(),
    ):
        found = next((t for t in tools if matches(t["name"])), None)
        if found is not None:
            return found
    return None


def _filler(name: str, schema: dict[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return 120_000 if "timeout" in name.lower() else 0
    return {"boolean": False, "array": [], "object": {}}.get(str(kind), "")


def tool_input(tool: dict[str, Any]) -> dict[str, Any]:
    """``{"command": ..., "description": ...}``, fitted to the tool's schema (required fields filled in)."""
    schema = tool.get("input_schema") or {}
    properties: dict[str, Any] = schema.get("properties") or {}
    wanted = {"command": TOOL_COMMAND, "description": TOOL_DESCRIPTION}
    args = {k: v for k, v in wanted.items() if not properties or k in properties}
    for name in schema.get("required") or []:
        if name not in args:
            args[name] = _filler(name, properties.get(name) or {})
    return args


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    return system if isinstance(system, str) else _text_of(system)


def side_script(body: dict[str, Any]) -> Script:
    """A short, sensible answer to a request without tools (never keyword-driven)."""
    system = _system_text(body)
    asked = _text_of(body.get("messages", [{}])[-1].get("content")) if body.get("messages") else ""
    both = f"{system}\n{asked}"
    if body.get("max_tokens") == 1:
        return Script("quota", pieces=[("text", "OK")])
    if "isnewtopic" in system.lower():
        return Script("topic", pieces=[("text", TOPIC_REPLY)])
    if "<filepaths>" in both:
        return Script("file_paths", pieces=[("text", FILE_PATHS_REPLY)])
    commands = _COMMAND_LINE.findall(both)
    if commands and "prefix" in both.lower():
        return Script("command_prefix", pieces=[("text", commands[-1])])
    return Script("title", pieces=[("text", TITLE)])


def script_for(body: dict[str, Any], seen: Counter[str] | None = None) -> Script:
    """Pick the behaviour for a Messages request body.

    ``seen`` counts earlier requests per prompt text (for ``RETRY``); it is updated here.
    """
    messages: list[dict[str, Any]] = body.get("messages", [])
    if not body.get("tools"):
        return side_script(body)
    result = tool_result(messages)
    if result is not None:
        return tool_result_script(quote_tool_output(result))
    seen = Counter() if seen is None else seen
    return choose(last_user_text(messages), seen, tool=bash_tool(body) is not None)


# A content block to send: (type, delta pieces, the block as content_block_start announces it).
_Block = tuple[str, list[str], dict[str, Any]]


def _blocks(script: Script, body: dict[str, Any]) -> list[_Block]:
    blocks: list[_Block] = []
    for kind, pieces in split_pieces(script.pieces):
        block_type = _BLOCK_TYPES[kind]
        blocks.append((block_type, pieces, {"type": block_type, block_type: ""}))
    tool = bash_tool(body) if script.tool_call else None
    if tool is not None:
        start = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": tool["name"], "input": {}}
        blocks.append(("tool_use", in_pieces(json.dumps(tool_input(tool))), start))
    return blocks


def _final_block(block: _Block) -> dict[str, Any]:
    block_type, pieces, start = block
    joined = "".join(pieces)
    if block_type == "tool_use":
        return {**start, "input": json.loads(joined)}
    if block_type == "thinking":
        return {"type": "thinking", "thinking": joined, "signature": SIGNATURE}
    return {"type": "text", "text": joined}


def _delta(block_type: str, piece: str) -> dict[str, Any]:
    if block_type == "tool_use":
        return {"type": "input_json_delta", "partial_json": piece}
    if block_type == "thinking":
        return {"type": "thinking_delta", "thinking": piece}
    return {"type": "text_delta", "text": piece}


def _usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": 100,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _message(model: str, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(output_tokens),
    }


def _stop_reason(blocks: list[_Block]) -> str:
    return "tool_use" if any(b[0] == "tool_use" for b in blocks) else "end_turn"


def message_body(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer: the whole message at once."""
    blocks = _blocks(script, body)
    content = [_final_block(b) for b in blocks]
    return _message(str(body.get("model", MODEL_ID)), content, _stop_reason(blocks), len(script.pieces) + 1)


def _frames(script: Script, body: dict[str, Any]) -> Iterator[Frame]:
    blocks = _blocks(script, body)
    message = _message(str(body.get("model", MODEL_ID)), [], None, 1)
    yield "message_start", {"type": "message_start", "message": message}, 0.0
    yield "ping", {"type": "ping"}, 0.0
    for index, (block_type, pieces, start) in enumerate(blocks):
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}, 0.0
        for piece in pieces:
            delta = {"type": "content_block_delta", "index": index, "delta": _delta(block_type, piece)}
            yield "content_block_delta", delta, script.delay
        if block_type == "thinking":
            signature = {"type": "signature_delta", "signature": SIGNATURE}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": signature}, 0.0
        yield "content_block_stop", {"type": "content_block_stop", "index": index}, 0.0
    usage = {"input_tokens": 100, "output_tokens": len(script.pieces) + 1}
    end = {"stop_reason": _stop_reason(blocks), "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": end, "usage": usage}, 0.0
    yield "message_stop", {"type": "message_stop"}, 0.0


def _model_info(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}


class _Handler(FakeHandler):
    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}

    def user_text(self, body: dict[str, Any]) -> str:
        return last_user_text(body.get("messages") or [])

    def do_HEAD(self) -> None:
        self.answer_probe()

    def do_GET(self) -> None:
        if not self.authorized({}):
            return
        route = self.route
        if route.endswith("/models"):
            self.record({}, "models")
            models = self.fake.models()
            listing = {"data": [_model_info(m) for m in models], "has_more": False}
            self.send_json(200, {**listing, "first_id": models[0], "last_id": models[-1]})
        elif "/models/" in route:
            self.record({}, "models")
            self.send_json(200, _model_info(route.rsplit("/", 1)[1]))
        else:
            # Whatever else Claude Code looks up: an empty answer does no harm.
            self.record({}, "other")
            self.send_json(200, {})

    def do_POST(self) -> None:
        body = self.read_json()
        if body is None or not self.authorized(body):
            return
        route = self.route
        if route.endswith("/messages/count_tokens"):
            self.record(body, "count_tokens")
            self.send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if route.endswith("/messages"):
            self.answer(body, script_for, _frames, message_body)
        else:
            self.not_found(body)


class FakeAnthropic(FakeServer):
    """The fake served from a background thread; see the module docstring for behaviours.

    ``FakeAnthropic.start(host="127.0.0.1", port=0, *, require_key=None)``; ``base_url`` has no ``/v1``.
    """

    handler_class = _Handler
    label = "fake Anthropic"
    url_suffix = ""


def main(argv: list[str] | None = None) -> None:
    serve_main(FakeAnthropic, "Fake Anthropic Messages API for Claude Code tests.", 18081, argv)


if __name__ == "__main__":
    main()
