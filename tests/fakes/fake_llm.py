"""A scripted OpenAI-compatible LLM server (stdlib only) for driving a real OpenCode offline.

``POST /v1/chat/completions`` answers like OpenAI's chat completions, streamed (SSE, ``stream: true``,
which is what OpenCode sends) or as one JSON body. The behaviour is chosen by an upper-case keyword in the
**last user message** (first match in this order wins):

==============  ===========================================================================================
``ERROR400``    HTTP 400 ``invalid_request_error`` -> OpenCode records a non-retryable ``APIError``
``RETRY``       the first request for a given prompt text gets HTTP 503 (``RETRY429``: HTTP 429), later ones
                a plain reply -> OpenCode shows ``session.status`` ``retry`` and retries (after ~2 s).
                Failures are counted per distinct prompt text: put a unique token in the prompt to repeat.
``TOOL``        a streamed ``bash`` tool call (``echo hello-from-tool``); once the tool result comes back
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

    llm = FakeLLM.start()          # 127.0.0.1, free port, background thread
    llm.base_url                   # "http://127.0.0.1:PORT/v1" -> the provider's baseURL
    llm.stop()

By hand: ``python -m tests.fakes.fake_llm PORT [--host 0.0.0.0]`` (``0.0.0.0`` lets containers reach it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "fake-model"
PLAIN_REPLY = "Hello from the fake LLM. This reply is streamed."
REASONING = "Let me think about this step by step."
REASONED_REPLY = "After thinking: the answer is 42."
TOOL_PREAMBLE = "Running a command."
TOOL_COMMAND = "echo hello-from-tool"
TITLE = "Fake title"
BURST_DEFAULT = 2000

_BURST = re.compile(r"BURST(?:\s+(\d+))?")

# One streamed chunk: (delta, finish_reason); the delay between chunks belongs to the whole plan.
Delta = dict[str, Any]


@dataclass
class Plan:
    """What to answer to one request."""

    behaviour: str
    status: int = 200
    error: dict[str, Any] | None = None
    chunks: list[tuple[Delta, str | None]] = field(default_factory=list)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, and what it chose to do."""

    path: str
    body: dict[str, Any]
    behaviour: str
    status: int

    @property
    def last_user_text(self) -> str:
        return _last_user_text(self.body.get("messages", []))


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")


def _words(text: str, key: str = "content") -> list[tuple[Delta, str | None]]:
    return [({key: word + " "}, None) for word in text.split(" ")]


def is_title_request(body: dict[str, Any]) -> bool:
    """OpenCode's title generation: no tools, and a system prompt about titles."""
    messages = body.get("messages", [])
    system = " ".join(_text_of(m) for m in messages if m.get("role") == "system").lower()
    return not body.get("tools") and "title" in system


def plan_for(body: dict[str, Any], seen: Counter[str] | None = None) -> Plan:
    """Pick the behaviour for a chat-completions request body.

    ``seen`` counts earlier requests per prompt text (for ``RETRY``); it is updated here.
    """
    messages: list[dict[str, Any]] = body.get("messages", [])
    last_user = _last_user_text(messages)
    last_role = messages[-1].get("role") if messages else "user"
    seen = Counter() if seen is None else seen

    if is_title_request(body):
        return Plan("title", chunks=[({"role": "assistant", "content": TITLE}, None)])
    if last_role == "tool":
        output = _text_of(messages[-1]).strip()[:60]
        return Plan("tool_result", chunks=_words(f"The tool said: {output}. Done."), delay=0.005)
    if "ERROR400" in last_user:
        error = {"error": {"message": "fake bad request", "type": "invalid_request_error"}}
        return Plan("error400", status=400, error=error)
    if "RETRY" in last_user:
        seen[last_user] += 1
        if seen[last_user] == 1:
            status = 429 if "RETRY429" in last_user else 503
            error = {"error": {"message": f"fake upstream failure {status}", "type": "server_error"}}
            return Plan("retry_fail", status=status, error=error)
        return Plan("retry_ok", chunks=_words(PLAIN_REPLY), delay=0.005)
    if "TOOL" in last_user and body.get("tools"):
        args = json.dumps({"command": TOOL_COMMAND, "description": "Echo a greeting"})
        call_id = "call_" + uuid.uuid4().hex[:12]
        chunks: list[tuple[Delta, str | None]] = [({"role": "assistant", "content": TOOL_PREAMBLE}, None)]
        start = {"index": 0, "id": call_id, "type": "function", "function": {"name": "bash", "arguments": ""}}
        chunks.append(({"tool_calls": [start]}, None))
        # Arguments arrive in pieces, as real providers stream them.
        for i in range(0, len(args), 16):
            chunks.append(({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 16]}}]}, None))
        chunks.append(({}, "tool_calls"))
        return Plan("tool_call", chunks=chunks, delay=0.005)
    if "REASON" in last_user:
        chunks = _words(REASONING, "reasoning_content") + _words(REASONED_REPLY)
        return Plan("reason", chunks=chunks, delay=0.005)
    if "SLOW" in last_user:
        return Plan("slow", chunks=[({"content": f"s{i} "}, None) for i in range(100)], delay=0.1)
    if "LONG" in last_user:
        return Plan("long", chunks=[({"content": f"w{i} "}, None) for i in range(400)], delay=0.005)
    burst = _BURST.search(last_user)
    if burst:
        n = int(burst.group(1) or BURST_DEFAULT)
        return Plan("burst", chunks=[({"content": f"b{i} "}, None) for i in range(n)])
    return Plan("plain", chunks=_words(PLAIN_REPLY), delay=0.005)


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        plan = fake.plan(body)
        fake.record(RecordedRequest(self.path, body, plan.behaviour, plan.status))
        if plan.error is not None:
            self._json(plan.status, plan.error)
        elif body.get("stream"):
            self._stream(plan, str(body.get("model", MODEL_ID)), fake.stopping)
        else:
            self._json(200, completion_body(plan, str(body.get("model", MODEL_ID))))

    def _stream(self, plan: Plan, model: str, stopping: threading.Event) -> None:
        cid = "chatcmpl-" + uuid.uuid4().hex[:10]
        created = int(time.time())
        chunks = list(plan.chunks)
        if not chunks or chunks[-1][1] is None:
            chunks.append(({}, "stop"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        # No chunked encoding: the body ends when the connection closes, like many real providers.
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for delta, finish in chunks:
                if stopping.is_set():
                    return
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                self._event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [choice]})  # fmt: skip
                if plan.delay:
                    time.sleep(plan.delay)
            usage = {"prompt_tokens": 100, "completion_tokens": len(chunks), "total_tokens": 100 + len(chunks)}
            self._event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [], "usage": usage})  # fmt: skip
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client (OpenCode) aborted the reply or died: nothing to clean up.
            return

    def _event(self, obj: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeLLM:
    """The fake served from a background thread; see the module docstring for behaviours."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._seen: Counter[str] = Counter()
        self.stopping = threading.Event()
        server.fake = self

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0) -> FakeLLM:
        """Listen on ``host:port`` (0 = a free port) and serve in a daemon thread."""
        fake = cls(_Server((host, port), _Handler))
        fake._thread.start()
        return fake

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ends in ``/v1``) for the provider's ``baseURL`` option."""
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, keyword: str) -> list[RecordedRequest]:
        """Non-title requests whose last user message contains ``keyword``."""
        return [r for r in self.requests if r.behaviour != "title" and keyword in r.last_user_text]

    def plan(self, body: dict[str, Any]) -> Plan:
        with self._lock:
            return plan_for(body, self._seen)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def clear(self) -> None:
        """Forget recorded requests and RETRY counts."""
        with self._lock:
            self._requests.clear()
            self._seen.clear()

    def stop(self) -> None:
        """Stop serving; replies still streaming end at their next chunk."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM for OpenCode tests.")
    parser.add_argument("port", type=int, nargs="?", default=18080)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let containers reach it")
    args = parser.parse_args(argv)
    fake = FakeLLM.start(args.host, args.port)
    sys.stdout.write(f"fake LLM on {args.host}:{fake.port}, baseURL {fake.base_url}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
