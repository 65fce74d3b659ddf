"""Test helpers for the ACP gateway: an SSE reader and a reference consumer (``Transcript``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Frame:
    """One SSE frame: an event (``event`` set) or a comment such as the heartbeat."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    comment: str | None = None

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id.rpartition("-")[2])

    @property
    def epoch(self) -> str:
        assert self.id is not None
        return self.id.rpartition("-")[0]


class EventStream:
    """Reads ``GET /events`` in a background task; frames land in :attr:`frames`.

    ``async with EventStream(client, last_event_id=...) as stream:`` returns once the first frame
    arrived (``reset``, a replayed event or a heartbeat): from then on every new event is seen.
    """

    def __init__(self, client: httpx.AsyncClient, last_event_id: str | None = None) -> None:
        self.client = client
        self.last_event_id = last_event_id
        self.frames: list[Frame] = []
        self.status: int | None = None
        self.ended = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._run())
        await self.wait_for(lambda _: True, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        try:
            async with self.client.stream("GET", "/events", headers=headers, timeout=None) as response:
                self.status = response.status_code
                fields: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "":
                            await self._add(Frame(comment=value))
                        else:
                            fields[name] = fields[name] + "\n" + value if name in fields else value
                        continue
                    if "event" in fields:
                        await self._add(
                            Frame(fields.get("id"), fields["event"], json.loads(fields.get("data", "null")))
                        )
                    fields = {}
        except (httpx.HTTPError, OSError):
            pass  # the gateway went away: `ended` tells the test
        finally:
            self.ended.set()
            async with self._changed:
                self._changed.notify_all()

    async def _add(self, frame: Frame) -> None:
        self.frames.append(frame)
        async with self._changed:
            self._changed.notify_all()

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.event is not None]

    def mark(self) -> int:
        return len(self.frames)

    async def wait_for(self, predicate: Callable[[Frame], bool], *, since: int = 0, timeout: float = 30.0) -> Frame:
        """The first frame from index ``since`` on that matches; fails if the stream ends first."""
        found: list[Frame] = []

        def ready() -> bool:
            found[:] = [f for f in self.frames[since:] if predicate(f)][:1]
            return bool(found) or self.ended.is_set()

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                seen = [f.event or f": {f.comment}" for f in self.frames[since:]]
                raise AssertionError(f"no matching frame within {timeout} s; got {seen}") from None
        if not found:
            raise AssertionError(f"the event stream ended before a matching frame; got {self.frames[since:]}")
        return found[0]

    async def wait_event(self, event: str, session_id: str | None = None, **kw: Any) -> Frame:
        return await self.wait_for(
            lambda f: f.event == event and (session_id is None or f.data.get("session_id") == session_id), **kw
        )

    def of_session(self, session_id: str, *, since: int = 0) -> list[Frame]:
        return [
            f
            for f in self.frames[since:]
            if f.event and isinstance(f.data, dict) and f.data.get("session_id") == session_id
        ]


def agent_text(frames: list[Frame]) -> str:
    """The agent's reply text streamed in ``session_update`` frames."""
    return "".join(
        f.data["update"]["content"].get("text", "")
        for f in frames
        if f.event == "session_update" and f.data["update"].get("sessionUpdate") == "agent_message_chunk"
    )


class Transcript:
    """What a consumer persisting chats keeps: the reference for "nothing lost, nothing duplicated".

    Live events and a replayed history are applied the same way: agent messages are keyed by their
    ``messageId`` (chunks append), tool calls by ``toolCallId`` (updates merge), user messages come
    from ``turn_start`` (live) or ``user_message_chunk`` (history). After a ``reset`` the consumer
    replaces the session's transcript with the history.
    """

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def replace(self, history: list[dict[str, Any]]) -> None:
        self.items = []
        for update in history:
            self.apply_update(update)

    def apply(self, frame: Frame) -> None:
        if frame.event == "turn_start":
            text = "".join(block.get("text", "") for block in frame.data["prompt"])
            self.items.append({"kind": "user", "text": text})
        elif frame.event == "session_update":
            self.apply_update(frame.data["update"])

    def apply_update(self, update: dict[str, Any]) -> None:
        kind = update.get("sessionUpdate")
        if kind == "user_message_chunk":
            self.items.append({"kind": "user", "text": update["content"].get("text", "")})
        elif kind == "agent_message_chunk":
            key = update.get("messageId")
            item = next((i for i in self.items if i["kind"] == "agent" and i["id"] == key), None)
            if item is None:
                self.items.append({"kind": "agent", "id": key, "text": update["content"].get("text", "")})
            else:
                item["text"] += update["content"].get("text", "")
        elif kind in ("tool_call", "tool_call_update"):
            key = update["toolCallId"]
            item = next((i for i in self.items if i["kind"] == "tool" and i["id"] == key), None)
            if item is None:
                self.items.append({"kind": "tool", "id": key, "status": update.get("status")})
            elif update.get("status"):
                item["status"] = update["status"]

    def normalized(self) -> list[tuple[str, str]]:
        """(kind, text or status) per item, whitespace-trimmed: what a chat view shows."""
        return [(i["kind"], (i.get("text") or i.get("status") or "").strip()) for i in self.items]
