"""What the scripted fake LLM servers share: the keyword vocabulary, request recording and the HTTP plumbing.

Each fake (:mod:`~tests.fakes.fake_llm` for OpenAI chat completions, :mod:`~tests.fakes.fake_anthropic` for
Anthropic Messages, :mod:`~tests.fakes.fake_responses` for OpenAI Responses) turns a prompt into an
API-neutral :class:`Script` with :func:`choose` and renders it in its own wire format, so a test reads the
same whichever agent it drives.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self, TypeVar

MODEL_ID = "fake-model"
PLAIN_REPLY = "Hello from the fake LLM. This reply is streamed."
REASONING = "Let me think about this step by step."
REASONED_REPLY = "After thinking: the answer is 42."
TOOL_PREAMBLE = "Running a command."
# Not a read-only command (it writes a file): Claude Code and Codex run read-only ones (echo, ls, ...)
# without asking, and the tests need the permission request.
TOOL_COMMAND = "printf hello-from-tool | tee tool-output.txt"
TOOL_DESCRIPTION = "Echo a greeting"
TITLE = "Fake title"
BURST_DEFAULT = 2000

_BURST = re.compile(r"BURST(?:\s+(\d+))?")
# Context the agents wrap around the user's words (Claude Code's reminders, Codex's environment and
# AGENTS.md messages): it may quote anything, so keywords are never looked for inside it.
_CONTEXT = re.compile(r"<(system-reminder|environment_context|user_instructions|INSTRUCTIONS)>.*?</\1>", re.S)
_AGENTS_HEADER = re.compile(r"^# AGENTS\.md instructions for .*$", re.M)
# Where the command's own output starts in the agents' tool results ("Output:\n" from Codex,
# "Final output:\n\n" from claude-code-acp's terminal tool).
_OUTPUT_MARK = re.compile(r"output:[ \t]*\n", re.I)

T = TypeVar("T")

# One piece of a reply: ("text" | "reasoning", text).
Piece = tuple[str, str]


@dataclass
class Script:
    """What to answer to one request, before it is put in an API's wire format."""

    behaviour: str
    status: int = 200
    message: str = ""  # the error message when status is not 200
    pieces: list[Piece] = field(default_factory=list)
    delay: float = 0.0  # between streamed pieces
    tool_call: bool = False  # after the pieces, call the shell tool


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received, and what it chose to do."""

    path: str
    body: dict[str, Any]
    behaviour: str
    status: int
    last_user_text: str = ""
    api_key: str | None = None  # from ``x-api-key`` or ``authorization: Bearer``
    method: str = "POST"
    main: bool = False  # part of the agent's conversation, not a side request (title, token count...)


def words(text: str, kind: str = "text") -> list[Piece]:
    """``text`` in word pieces, each with its trailing space (how the fakes have always chunked)."""
    return [(kind, word + " ") for word in text.split(" ")]


def prompt_text(text: str) -> str:
    """``text`` without the context agents wrap around the user's words."""
    return _AGENTS_HEADER.sub("", _CONTEXT.sub("", text)).strip()


def quote_tool_output(raw: str) -> str:
    """The command's output inside a tool result, short enough to quote in a reply."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    # Older Codex sends {"output": ..., "metadata": ...}.
    if isinstance(parsed, dict) and isinstance(parsed.get("output"), str):
        raw = parsed["output"]
    marks = list(_OUTPUT_MARK.finditer(raw))
    if marks:
        raw = raw[marks[-1].end() :]
    return raw.strip()[:60]


def tool_result_script(output: str) -> Script:
    """The answer once the tool result comes back: a text reply quoting ``output``."""
    return Script("tool_result", pieces=words(f"The tool said: {output}. Done."), delay=0.005)


def choose(prompt: str, seen: Counter[str], *, tool: bool) -> Script:
    """Pick the behaviour from the keywords in ``prompt`` (the last user turn's text).

    ``seen`` counts earlier requests per prompt text (for ``RETRY``) and is updated here; ``tool`` says
    whether the request offers a tool ``TOOL`` can call.
    """
    if "ERROR400" in prompt:
        return Script("error400", status=400, message="fake bad request")
    if "RETRY" in prompt:
        seen[prompt] += 1
        if seen[prompt] == 1:
            status = 429 if "RETRY429" in prompt else 503
            return Script("retry_fail", status=status, message=f"fake upstream failure {status}")
        return Script("retry_ok", pieces=words(PLAIN_REPLY), delay=0.005)
    if "TOOL" in prompt and tool:
        return Script("tool_call", pieces=[("text", TOOL_PREAMBLE)], delay=0.005, tool_call=True)
    if "REASON" in prompt:
        return Script("reason", pieces=words(REASONING, "reasoning") + words(REASONED_REPLY), delay=0.005)
    if "SLOW" in prompt:
        return Script("slow", pieces=[("text", f"s{i} ") for i in range(100)], delay=0.1)
    if "LONG" in prompt:
        return Script("long", pieces=[("text", f"w{i} ") for i in range(400)], delay=0.005)
    burst = _BURST.search(prompt)
    if burst:
        n = int(burst.group(1) or BURST_DEFAULT)
        return Script("burst", pieces=[("text", f"b{i} ") for i in range(n)])
    return Script("plain", pieces=words(PLAIN_REPLY), delay=0.005)


def split_pieces(pieces: list[Piece]) -> list[tuple[str, list[str]]]:
    """Consecutive pieces of one kind grouped: one content block (or output item) per group."""
    groups: list[tuple[str, list[str]]] = []
    for kind, text in pieces:
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(text)
        else:
            groups.append((kind, [text]))
    return groups


def in_pieces(text: str, size: int = 16) -> list[str]:
    """``text`` cut in ``size``-character pieces: tool arguments stream in pieces from real providers."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def api_key_of(headers: Message[str, str]) -> str | None:
    """The credential a client sent: Anthropic's ``x-api-key`` or an ``authorization: Bearer`` token."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization") or ""
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


# One server-sent event: (``event:`` name or None, ``data:`` payload (JSON or raw), pause after it).
Frame = tuple[str | None, dict[str, Any] | str, float]


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer


class FakeHandler(BaseHTTPRequestHandler):
    """Request handling shared by the fakes: JSON in and out, SSE streams, the API key check."""

    protocol_version = "HTTP/1.1"
    server: FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeServer:
        return self.server.fake

    @property
    def route(self) -> str:
        """The path without its query (Claude Code adds ``?beta=true``) or trailing slash."""
        return self.path.split("?", 1)[0].rstrip("/")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The API's error shape (OpenAI's here; the Anthropic fake has its own)."""
        kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
        return {"error": {"message": message, "type": kind}}

    def read_json(self) -> dict[str, Any] | None:
        """The JSON request body, or None after answering 400 when it is not JSON."""
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.send_json(400, self.error_body(400, "body is not JSON"))
            return None
        return body

    def user_text(self, body: dict[str, Any]) -> str:
        """The last user turn's text in a request body (each API has its own shape)."""
        return ""

    def record(self, body: dict[str, Any], behaviour: str, status: int = 200, *, main: bool = False) -> None:
        key = api_key_of(self.headers)
        text = self.user_text(body)
        self.fake.record(RecordedRequest(self.path, body, behaviour, status, text, key, self.command, main))

    def authorized(self, body: dict[str, Any]) -> bool:
        """False (after answering 401) when the fake requires a key and got another one."""
        required = self.fake.require_key
        if required is None or api_key_of(self.headers) == required:
            return True
        self.record(body, "unauthorized", 401)
        self.send_json(401, self.error_body(401, "invalid API key"))
        return False

    def not_found(self, body: dict[str, Any]) -> None:
        self.record(body, "not_found", 404)
        self.send_json(404, self.error_body(404, f"no route {self.path}"))

    def answer(
        self,
        body: dict[str, Any],
        planner: Callable[[dict[str, Any], Counter[str]], Script],
        frames: Callable[[Script, dict[str, Any]], Iterable[Frame]],
        whole: Callable[[Script, dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Answer a model request: plan it, record it (conversation when it carries tools), then reply
        with an error, ``frames`` (``stream: true``) or ``whole``."""
        script = self.fake.decide(planner, body)
        self.record(body, script.behaviour, script.status, main=bool(body.get("tools")))
        if script.status != 200:
            self.send_json(script.status, self.error_body(script.status, script.message))
        elif body.get("stream"):
            self.send_stream(frames(script, body))
        else:
            self.send_json(200, whole(script, body))

    def send_json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, frames: Iterable[Frame]) -> None:
        """Stream ``frames`` as SSE, ending early when the fake stops or the client goes away."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        # No chunked encoding: the body ends when the connection closes, like many real providers.
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        stopping = self.fake.stopping
        try:
            for event, data, pause in frames:
                if stopping.is_set():
                    return
                head = f"event: {event}\n".encode() if event else b""
                payload = data if isinstance(data, str) else json.dumps(data)
                self.wfile.write(head + b"data: " + payload.encode() + b"\n\n")
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            # The client (the agent) aborted the reply or died: nothing to clean up.
            return

    def answer_probe(self) -> None:
        """Answer a ``HEAD`` connectivity probe, with nothing to say."""
        self.record({}, "probe")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


class FakeServer:
    """A fake served from a background thread; subclasses name their handler and describe themselves."""

    handler_class: ClassVar[type[FakeHandler]]
    label: ClassVar[str] = "fake LLM"  # for the command line's first line
    url_suffix: ClassVar[str] = "/v1"  # what base_url ends in: what the agent's base URL setting expects

    def __init__(self, server: FakeHTTPServer, require_key: str | None = None) -> None:
        self._server = server
        name = self.label.replace(" ", "-").lower()
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._seen: Counter[str] = Counter()
        self.require_key = require_key
        self.stopping = threading.Event()
        server.fake = self

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, *, require_key: str | None = None) -> Self:
        """Listen on ``host:port`` (0 = a free port) and serve in a daemon thread.

        With ``require_key``, requests carrying another key (or none) get HTTP 401.
        """
        fake = cls(FakeHTTPServer((host, port), cls.handler_class), require_key)
        fake._thread.start()
        return fake

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The base URL to configure the agent with."""
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}{self.url_suffix}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def main_requests(self) -> list[RecordedRequest]:
        """The agent's conversation requests, without side requests (titles, token counts, probes...)."""
        return [r for r in self.requests if r.main]

    def requests_for(self, keyword: str) -> list[RecordedRequest]:
        """Conversation requests whose last user text contains ``keyword``."""
        return [r for r in self.main_requests() if keyword in r.last_user_text]

    def models(self) -> list[str]:
        """:data:`MODEL_ID` and every model asked for so far: what the models listings answer."""
        asked = [str(r.body["model"]) for r in self.requests if r.body.get("model")]
        return list(dict.fromkeys([MODEL_ID, *asked]))

    def decide(self, planner: Callable[[dict[str, Any], Counter[str]], T], body: dict[str, Any]) -> T:
        """``planner(body, seen)`` with this fake's RETRY counts, one request at a time."""
        with self._lock:
            return planner(body, self._seen)

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_main(cls: type[FakeServer], description: str, default_port: int, argv: list[str] | None) -> None:
    """The ``python -m`` entry point: serve until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int, nargs="?", default=default_port)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let containers reach it")
    parser.add_argument("--require-key", help="answer 401 to requests carrying another API key")
    args = parser.parse_args(argv)
    fake = cls.start(args.host, args.port, require_key=args.require_key)
    sys.stdout.write(f"{cls.label} on {args.host}:{fake.port}, baseURL {fake.base_url}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


def parse_sse(text: str) -> list[tuple[str | None, Any]]:
    """A whole SSE body as (``event:`` name or None, ``data:`` parsed as JSON when it is JSON): for tests."""
    events: list[tuple[str | None, Any]] = []
    for frame in filter(None, text.split("\n\n")):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = fields.get("data", "")
        try:
            events.append((fields.get("event"), json.loads(data)))
        except ValueError:
            events.append((fields.get("event"), data))
    return events
