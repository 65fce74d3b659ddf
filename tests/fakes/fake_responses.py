"""A scripted OpenAI Responses API server (stdlib only) for driving a real Codex offline.

``POST /v1/responses`` answers like OpenAI's Responses API, streamed (SSE, ``stream: true``, which is what Codex
always sends: ``response.created`` ... ``response.completed``, each event with ``type`` and ``sequence_number``)
or as one JSON response object. The behaviour is chosen by an upper-case keyword in the **last user message**
of ``input`` (Codex's ``<environment_context>`` and AGENTS.md messages are left out); first match in this order
wins:

==============  ===========================================================================================
``ERROR400``    HTTP 400 ``invalid_request_error`` -> a non-retryable API error
``RETRY``       the first request for a given prompt text gets HTTP 503 (``RETRY429``: HTTP 429), later ones
                a plain reply -> the client retries. Failures are counted per distinct prompt text.
``TOOL``        a message item, then a ``function_call`` item running :data:`TOOL_COMMAND` through
                Codex's shell tool, whichever the request offers: ``shell`` (``{"command": ["bash", "-lc",
                ...]}``), ``shell_command`` (``{"command": ...}``), ``exec_command`` (``{"cmd": ...}``), or
                a ``local_shell_call`` for a ``local_shell`` tool; once a ``function_call_output`` comes
                back (the last ``input`` item) a text reply quoting the tool output
``REASON``      a ``reasoning`` item (summary text deltas), then a message item
``SLOW``        100 text deltas 100 ms apart (~10 s; time to abort or kill mid-reply)
``LONG``        400 text deltas 5 ms apart (~2 s)
``BURST N``     N text deltas back to back (``BURST`` alone: 2000)
(none)          "Hello from the fake LLM. This reply is streamed." in word deltas
==============  ===========================================================================================

Requests **without tools** are side requests and never follow the keywords: they get ``Fake title``.
``GET /v1/models`` lists ``fake-model`` and every model asked for. Every request is recorded
(:attr:`FakeResponses.requests`, with the ``authorization: Bearer`` key); :meth:`FakeResponses.main_requests`
keeps the conversation (responses requests carrying tools).

In-process::

    fake = FakeResponses.start()   # 127.0.0.1, free port, background thread (require_key="k": 401 for others)
    fake.base_url                  # "http://127.0.0.1:PORT/v1" -> the model provider's base_url
    fake.stop()

By hand: ``python -m tests.fakes.fake_responses PORT [--host 0.0.0.0] [--require-key KEY]``.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
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
    "MODEL_ID",
    "PLAIN_REPLY",
    "REASONED_REPLY",
    "REASONING",
    "SHELL_ARGV",
    "SHELL_TOOLS",
    "TITLE",
    "TOOL_COMMAND",
    "TOOL_DESCRIPTION",
    "TOOL_PREAMBLE",
    "FakeResponses",
    "RecordedRequest",
    "Script",
    "last_user_text",
    "response_body",
    "script_for",
    "shell_tool",
    "tool_output",
]

SHELL_ARGV = ["bash", "-lc", TOOL_COMMAND]
# Codex's shell tools by name (older first), with the arguments each takes.
SHELL_TOOLS: dict[str, dict[str, Any]] = {
    "shell": {"command": SHELL_ARGV},
    "shell_command": {"command": TOOL_COMMAND},
    "exec_command": {"cmd": TOOL_COMMAND},
}
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("input")
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    return [i for i in items or [] if isinstance(i, dict)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(p.get("text", "")) for p in content or [] if isinstance(p, dict))


def last_user_text(items: list[dict[str, Any]]) -> str:
    """The text of the last user message, without the context messages Codex adds."""
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            text = prompt_text(_text_of(item.get("content")))
            if text:
                return text
    return ""


def tool_output(items: list[dict[str, Any]]) -> str | None:
    """The output when the last input item brings a tool's result back, else None."""
    if not items or items[-1].get("type") not in _OUTPUT_ITEMS:
        return None
    output = items[-1].get("output")
    if isinstance(output, dict):  # {"content": ...} in some versions
        output = output.get("content", json.dumps(output))
    return _text_of(output)


def shell_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The shell tool ``TOOL`` calls: (name, arguments), name ``local_shell`` for the built-in tool type."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    names = {t.get("name") or (t.get("function") or {}).get("name") for t in tools}
    for name, arguments in SHELL_TOOLS.items():
        if name in names:
            return name, arguments
    if any(t.get("type") == "local_shell" for t in tools):
        return "local_shell", {"type": "exec", "command": SHELL_ARGV, "env": {}}
    return None


def script_for(body: dict[str, Any], seen: Counter[str] | None = None) -> Script:
    """Pick the behaviour for a Responses request body.

    ``seen`` counts earlier requests per prompt text (for ``RETRY``); it is updated here.
    """
    items = _input_items(body)
    if not body.get("tools"):
        return Script("title", pieces=[("text", TITLE)])
    output = tool_output(items)
    if output is not None:
        return tool_result_script(quote_tool_output(output))
    seen = Counter() if seen is None else seen
    return choose(last_user_text(items), seen, tool=shell_tool(body) is not None)


# One output item: (the item when done, the pieces its deltas stream).
_Item = tuple[dict[str, Any], list[str]]


def _output_items(script: Script, body: dict[str, Any]) -> list[_Item]:
    items: list[_Item] = []
    for kind, pieces in split_pieces(script.pieces):
        text = "".join(pieces)
        if kind == "reasoning":
            item = {"id": _id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}
        else:
            part = {"type": "output_text", "text": text, "annotations": []}
            item = {"id": _id("msg"), "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        items.append((item, pieces))
    tool = shell_tool(body) if script.tool_call else None
    if tool is not None:
        name, arguments = tool
        call = {"id": _id("fc"), "type": "function_call", "status": "completed", "call_id": _id("call")}
        if name == "local_shell":
            items.append(({**call, "id": _id("lsh"), "type": "local_shell_call", "action": arguments}, []))
        else:
            args = json.dumps(arguments)
            items.append(({**call, "name": name, "arguments": args}, in_pieces(args)))
    return items


def _usage(script: Script) -> dict[str, Any]:
    output = len(script.pieces) + 1
    reasoning = sum(1 for kind, _ in script.pieces if kind == "reasoning")
    return {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": 100 + output,
    }


def _response(rid: str, model: str, status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "metadata": {},
        "usage": usage,
    }


def response_body(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer: the completed response object."""
    output = [item for item, _ in _output_items(script, body)]
    return _response(_id("resp"), str(body.get("model", MODEL_ID)), "completed", output, _usage(script))


# Builds one event: event(type, pause, **fields).
_Event = Callable[..., Frame]


def _item_events(event: _Event, index: int, item: dict[str, Any], pieces: list[str], delay: float) -> Iterator[Frame]:
    """The events that stream one output item, from ``output_item.added`` to ``output_item.done``."""
    at = {"item_id": item["id"], "output_index": index}
    kind = item["type"]
    if kind == "reasoning":
        yield event("response.output_item.added", output_index=index, item={**item, "summary": []})
        summary = {**at, "summary_index": 0}
        yield event("response.reasoning_summary_part.added", **summary, part={"type": "summary_text", "text": ""})
        for piece in pieces:
            yield event("response.reasoning_summary_text.delta", delay, **summary, delta=piece)
        text = item["summary"][0]["text"]
        yield event("response.reasoning_summary_text.done", **summary, text=text)
        yield event("response.reasoning_summary_part.done", **summary, part=item["summary"][0])
    elif kind == "message":
        added = {**item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=index, item=added)
        part = {**at, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": []}
        yield event("response.content_part.added", **part, part=empty)
        for piece in pieces:
            yield event("response.output_text.delta", delay, **part, delta=piece, logprobs=[])
        done = item["content"][0]
        yield event("response.output_text.done", **part, text=done["text"], logprobs=[])
        yield event("response.content_part.done", **part, part=done)
    elif kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        yield event("response.output_item.added", output_index=index, item=added)
        for piece in pieces:
            yield event("response.function_call_arguments.delta", delay, **at, delta=piece)
        yield event("response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])
    else:
        yield event("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
    yield event("response.output_item.done", output_index=index, item=item)


def _frames(script: Script, body: dict[str, Any]) -> Iterator[Frame]:
    sequence = itertools.count()

    def event(kind: str, pause: float = 0.0, **fields: Any) -> Frame:
        return kind, {"type": kind, "sequence_number": next(sequence), **fields}, pause

    rid, model = _id("resp"), str(body.get("model", MODEL_ID))
    yield event("response.created", response=_response(rid, model, "in_progress", [], None))
    yield event("response.in_progress", response=_response(rid, model, "in_progress", [], None))
    output: list[dict[str, Any]] = []
    for index, (item, pieces) in enumerate(_output_items(script, body)):
        yield from _item_events(event, index, item, pieces, script.delay)
        output.append(item)
    yield event("response.completed", response=_response(rid, model, "completed", output, _usage(script)))


class _Handler(FakeHandler):
    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind, code = {
            401: ("invalid_request_error", "invalid_api_key"),
            429: ("requests", "rate_limit_exceeded"),
        }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def user_text(self, body: dict[str, Any]) -> str:
        return last_user_text(_input_items(body))

    def do_HEAD(self) -> None:
        self.answer_probe()

    def do_GET(self) -> None:
        if not self.authorized({}):
            return
        if self.route.endswith("/models"):
            self.record({}, "models")
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.fake.models()]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.not_found({})

    def do_POST(self) -> None:
        body = self.read_json()
        if body is None or not self.authorized(body):
            return
        if self.route.endswith("/responses"):
            self.answer(body, script_for, _frames, response_body)
        else:
            self.not_found(body)


class FakeResponses(FakeServer):
    """The fake served from a background thread; see the module docstring for behaviours.

    ``FakeResponses.start(host="127.0.0.1", port=0, *, require_key=None)``; ``base_url`` ends in ``/v1``.
    """

    handler_class = _Handler
    label = "fake Responses"


def main(argv: list[str] | None = None) -> None:
    serve_main(FakeResponses, "Fake OpenAI Responses API for Codex tests.", 18082, argv)


if __name__ == "__main__":
    main()
