"""A simulated OpenCode fleet for ``bench_fleet``: many sandboxes' servers in one cheap asyncio process.

Run as ``python -m bench._fleet_sim <sandboxes> <messages per sandbox> <heartbeat seconds>``; it
prints its port, then serves sandbox ``i`` under ``http://127.0.0.1:<port>/sb/<i>``, with just what
the chat sync uses (see ``integrations/opencode/client.py`` and ``protocol.py``):

* ``GET /event`` — SSE: ``server.connected`` first, ``server.heartbeat`` every ``heartbeat`` seconds
  (per connection, as OpenCode does), and the sandbox's chat events while traffic is on;
* ``GET /experimental/session?limit&archived[&cursor]`` — the sandbox's one session (none archived);
* ``GET /session/status`` — ``{}`` (every session idle);
* ``GET /session/<id>/message?limit[&before]`` — its messages with parts, newest page first, paged
  with ``X-Next-Cursor`` like OpenCode.

Each sandbox starts with one session and ``messages`` messages (half user, half completed assistant
replies). While traffic is on, every sandbox plays one chat turn every ``period`` seconds (phases
spread evenly): ``session.updated``, the user ``message.updated`` + text part, the assistant
``message.updated``, step-start, an empty text part, ``DELTAS`` ``message.part.delta``, the final text
part, step-finish, the completed ``message.updated`` and ``session.idle`` (shapes as in
``tests/fixtures/opencode`` and ``bench/bench_sync.py``). The user message's ``time.created`` is the
wall-clock millisecond the turn was emitted, the assistant's one more: that is the embedded timestamp
the benchmark's lag starts from. The REST listing always reflects every emitted turn, so a reconcile
agrees with the stream.

Control (not OpenCode): ``POST /control/traffic?period=<s>[&sandboxes=<k>]`` starts turns in every
sandbox (or the first ``k``; ``period=0`` stops them),
``GET /control/stats`` reports connected streams, turns, events and requests so far.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

JSON = dict[str, Any]

DELTAS = 4
EVENTS_PER_TURN = 10 + DELTAS
_WORDS = ("the ", "function ", "returns ", "a ", "list ", "of ", "items; ", "then ", "we ", "check ", "it.\n")


@dataclass
class SandboxState:
    """One simulated OpenCode server: one session, its messages, its open event streams."""

    index: int
    session: JSON
    messages: list[JSON] = field(default_factory=list)
    streams: set[asyncio.StreamWriter] = field(default_factory=set)
    seq: int = 0

    def next_id(self, prefix: str) -> str:
        # OpenCode ids sort in creation order (part order is by part id); unique per sandbox is enough.
        self.seq += 1
        return f"{prefix}_{time.time_ns() // 1000:014x}{self.index:05d}{self.seq:06d}"


def _event(kind: str, props: JSON) -> JSON:
    return {"type": kind, "properties": props}


def _session(index: int, now_ms: int) -> JSON:
    return {
        "id": f"ses_fleet{index:06d}",
        "slug": f"fleet-{index}",
        "version": "1.18.34",
        "projectID": "d91babf23a5156a0724ffe06c37633a3ff43d6ed",
        "directory": "/workspace/proj",
        "title": f"Fleet session {index}",
        "time": {"created": now_ms, "updated": now_ms},
        "project": {"id": "d91babf23a5156a0724ffe06c37633a3ff43d6ed", "worktree": "/workspace/proj"},
    }


def play_turn(sb: SandboxState, now_ms: int) -> list[JSON]:
    """One chat turn: the events it streams (and the messages it leaves in the REST listing)."""
    ses = sb.session["id"]
    sb.session["time"]["updated"] = now_ms
    events = [_event("session.updated", {"sessionID": ses, "info": json.loads(json.dumps(sb.session))})]
    user, assistant = sb.next_id("msg"), sb.next_id("msg")
    u_info: JSON = {
        "id": user,
        "role": "user",
        "sessionID": ses,
        "time": {"created": now_ms},
        "agent": "build",
        "model": {"providerID": "fake", "modelID": "fake-model"},
    }
    u_part = {
        "type": "text",
        "text": f"Prompt at {now_ms}",
        "messageID": user,
        "sessionID": ses,
        "id": sb.next_id("prt"),
    }
    events.append(_event("message.updated", {"sessionID": ses, "info": u_info}))
    events.append(_event("message.part.updated", {"sessionID": ses, "part": u_part, "time": now_ms}))
    a_info: JSON = {
        "id": assistant,
        "parentID": user,
        "role": "assistant",
        "mode": "build",
        "agent": "build",
        "cost": 0,
        "tokens": {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}},
        "modelID": "fake-model",
        "providerID": "fake",
        "time": {"created": now_ms + 1},
        "sessionID": ses,
    }
    events.append(_event("message.updated", {"sessionID": ses, "info": a_info}))
    base = {"messageID": assistant, "sessionID": ses}
    step = {**base, "id": sb.next_id("prt"), "type": "step-start"}
    events.append(_event("message.part.updated", {"sessionID": ses, "part": step, "time": now_ms + 1}))
    part_id = sb.next_id("prt")
    start = {**base, "id": part_id, "type": "text", "text": "", "time": {"start": now_ms + 1}}
    events.append(_event("message.part.updated", {"sessionID": ses, "part": start, "time": now_ms + 1}))
    pieces = [_WORDS[(sb.seq + i) % len(_WORDS)] for i in range(DELTAS)]
    for piece in pieces:
        delta = {"sessionID": ses, "messageID": assistant, "partID": part_id, "field": "text", "delta": piece}
        events.append(_event("message.part.delta", delta))
    final = {**start, "text": "".join(pieces), "time": {"start": now_ms + 1, "end": now_ms + 2}}
    events.append(_event("message.part.updated", {"sessionID": ses, "part": final, "time": now_ms + 2}))
    tokens = {"total": 110, "input": 100, "output": 10, "reasoning": 0, "cache": {"write": 0, "read": 0}}
    finish = {**base, "id": sb.next_id("prt"), "type": "step-finish", "reason": "stop", "tokens": tokens, "cost": 0}
    events.append(_event("message.part.updated", {"sessionID": ses, "part": finish, "time": now_ms + 2}))
    done = {**a_info, "tokens": tokens, "finish": "stop", "time": {"created": now_ms + 1, "completed": now_ms + 2}}
    events.append(_event("message.updated", {"sessionID": ses, "info": done}))
    events.append(_event("session.idle", {"sessionID": ses}))
    sb.messages.append({"info": u_info, "parts": [u_part]})
    sb.messages.append({"info": done, "parts": [step, final, finish]})
    return events


class Fleet:
    """Every simulated sandbox, the traffic generator and the HTTP front."""

    def __init__(self, count: int, messages: int, heartbeat: float) -> None:
        now_ms = int(time.time() * 1000) - 3_600_000
        self.sandboxes = [SandboxState(i, _session(i, now_ms)) for i in range(count)]
        for sb in self.sandboxes:
            for turn in range(messages // 2):
                play_turn(sb, now_ms + turn * 1000)
        self.heartbeat = heartbeat
        self.period = 0.0
        self.turns = 0
        self.events = 0
        self.requests: dict[str, int] = {}
        self.streams_opened = 0
        self._traffic: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ traffic

    def set_traffic(self, period: float, sandboxes: int) -> None:
        if self._traffic is not None:
            self._traffic.cancel()
            self._traffic = None
        self.period = period
        if period > 0 and sandboxes > 0:
            self._traffic = asyncio.create_task(self._play(period, min(sandboxes, len(self.sandboxes))))

    async def _play(self, period: float, count: int) -> None:
        began = time.monotonic()
        due = [began + period * i / count for i in range(count)]  # phases spread evenly
        while True:
            now = time.monotonic()
            for i, when in enumerate(due):
                if when <= now:
                    due[i] = when + period
                    self._publish(self.sandboxes[i], play_turn(self.sandboxes[i], int(time.time() * 1000)))
            await asyncio.sleep(max(0.0, min(due) - time.monotonic()))

    def _publish(self, sb: SandboxState, events: list[JSON]) -> None:
        self.turns += 1
        frame = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
        for writer in list(sb.streams):
            if writer.is_closing():
                sb.streams.discard(writer)
                continue
            writer.write(frame)
            self.events += len(events)

    def stats(self) -> JSON:
        return {
            "streams": sum(len(sb.streams) for sb in self.sandboxes),
            "sandboxes_connected": sum(1 for sb in self.sandboxes if sb.streams),
            "streams_opened": self.streams_opened,
            "turns": self.turns,
            "events": self.events,
            "requests": dict(self.requests),
            "period": self.period,
        }

    # ------------------------------------------------------------------ HTTP

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: httpx reuses the connection for REST calls
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if int(headers.get("content-length", "0") or 0):
                    await reader.readexactly(int(headers["content-length"]))
                url = urlsplit(target)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if await self._route(method, url.path, query, reader, writer):
                    return  # an event stream: the connection is done when it ends
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _count(self, key: str) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"{extra}\r\n".encode()
            + data
        )

    async def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; True when it was an event stream (held until the client leaves)."""
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:1] == ["control"]:
            if parts[1:] == ["traffic"] and method == "POST":
                self.set_traffic(float(query.get("period", "0")), int(query.get("sandboxes", len(self.sandboxes))))
            self._respond(writer, 200, self.stats())
            return False
        if len(parts) < 3 or parts[0] != "sb" or not parts[1].isdigit() or int(parts[1]) >= len(self.sandboxes):
            self._respond(writer, 404, {"name": "NotFoundError", "data": {"message": path}})
            return False
        sb, rest = self.sandboxes[int(parts[1])], parts[2:]
        if rest == ["event"]:
            self._count("event")
            await self._stream(sb, reader, writer)
            return True
        if rest == ["experimental", "session"]:
            self._count("sessions")
            self._respond(writer, 200, [] if query.get("archived") == "true" else [sb.session])
        elif rest == ["session", "status"]:
            self._count("status")
            self._respond(writer, 200, {})
        elif len(rest) == 3 and rest[0] == "session" and rest[2] == "message" and rest[1] == sb.session["id"]:
            self._count("messages")
            limit = int(query.get("limit", "100"))
            end = int(query["before"]) if "before" in query else len(sb.messages)
            start = max(0, end - limit)
            self._respond(writer, 200, sb.messages[start:end], {"x-next-cursor": str(start)} if start else None)
        else:
            self._respond(writer, 404, {"name": "NotFoundError", "data": {"message": path}})
        return False

    async def _stream(self, sb: SandboxState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
            b'data: {"type":"server.connected","properties":{}}\n\n'
        )
        await writer.drain()
        self.streams_opened += 1
        sb.streams.add(writer)
        gone = asyncio.create_task(reader.read(1))  # the client sends nothing more: b"" means it left
        try:
            while not writer.is_closing():
                done, _ = await asyncio.wait({gone}, timeout=self.heartbeat)
                if done:
                    return
                writer.write(b'data: {"type":"server.heartbeat","properties":{}}\n\n')
                await writer.drain()
        finally:
            gone.cancel()
            sb.streams.discard(writer)


async def main(count: int, messages: int, heartbeat: float) -> None:
    fleet = Fleet(count, messages, heartbeat)
    server = await asyncio.start_server(fleet.handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
