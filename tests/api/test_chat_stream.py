"""The live chat stream.

httpx's ASGI transport buffers a whole response, so the SSE tests run the app in a real uvicorn server
on a free loopback port, in this event loop, and read the stream as a phone would. The change feed's
cursor rules (ties, late commits, batches) are tested directly on :class:`ChangeFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.store import chat as chat_store
from agentpod.store.base import utcnow
from agentpod.store.chat import STREAM_START, ChangeKey, InvalidCursor
from agentpod.store.chat_sync import lock_sandbox_chats
from agentpod.store.tables import ChatMessage, ChatSession
from api.chat_stream import ChangeFeed, StreamTiming
from api.deps import get_stream_timing
from tests.api.test_chat_read import add_messages, chat_url, mount_chat, new_sandbox, new_session, new_user

FAST = StreamTiming(heartbeat_seconds=0.4)


@dataclass
class Live:
    """A uvicorn server running the app."""

    url: str
    server: uvicorn.Server
    http: httpx.AsyncClient


@pytest_asyncio.fixture
async def live(app: FastAPI) -> AsyncIterator[Live]:
    """The app (chat routes mounted, fast heartbeat) served on a free loopback port."""
    mount_chat(app)
    app.dependency_overrides[get_stream_timing] = lambda: FAST
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The app fixture already ran the lifespan; uvicorn only serves requests.
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as http:
            yield Live(url, server, http)
    finally:
        server.should_exit = True
        await task
        sock.close()


class EventReader:
    """Reads SSE frames off a streaming response (a pump task, so a timed-out wait loses nothing)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: asyncio.Queue[dict[str, str] | None] = asyncio.Queue()
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if fields:
                        await self.frames.put(fields)
                    fields = {}
                elif line.startswith(":"):
                    fields["comment"] = line[1:].strip()
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        finally:
            await self.frames.put(None)  # end of stream

    async def frame(self, timeout: float = 3.0) -> dict[str, str] | None:
        """The next frame (events and comments alike); None once the stream ended."""
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def event(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next event, skipping heartbeat comments; its ``data`` parsed."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.frame(max(0.0, deadline - time.monotonic()))
            assert frame is not None, "stream ended"
            if "event" in frame:
                return {**frame, "data": json.loads(frame["data"])}

    async def no_event(self, seconds: float) -> None:
        """Nothing but heartbeats arrives for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            frame = await self.event(seconds)
            raise AssertionError(f"unexpected event {frame}")

    async def close(self) -> None:
        """Hang up, as a phone losing its connection does."""
        await self.response.aclose()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._pump


@contextlib.asynccontextmanager
async def open_stream(live: Live, url: str, headers: dict[str, str]) -> AsyncIterator[EventReader]:
    """Connect to ``url`` and check the response is an event stream."""
    async with live.http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        reader = EventReader(response)
        try:
            yield reader
        finally:
            await reader.close()


async def _message(sessions: async_sessionmaker[AsyncSession], session_id: str, external_id: str, text: str) -> str:
    [message_id] = await add_messages(
        sessions, session_id, [{"external_message_id": external_id, "upstream_created_at": utcnow(), "text": text}]
    )
    return message_id


async def test_stream_relays_rows_within_a_second_and_resumes_from_last_event_id(
    live: Live, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user, title="before")
    await _message(sessions, session, "msg_old", "stored before connecting")
    url = chat_url(sandbox, "/stream")

    async with open_stream(live, url, headers) as stream:
        ready = await stream.event()
        assert ready["event"] == "ready" and ready["retry"] == str(FAST.retry_ms)
        assert ready["data"] == {"cursor": ready["id"]}

        inserted_at = time.monotonic()
        new_id = await _message(sessions, session, "msg_new", "hello from the agent")
        relayed = await stream.event()
        assert time.monotonic() - inserted_at < 1.0
        assert relayed["event"] == "message"
        assert (relayed["data"]["id"], relayed["data"]["session_id"], relayed["data"]["text"]) == (
            new_id,
            session,
            "hello from the agent",
        )
        assert relayed["id"] > ready["id"]

        async with sessions() as db:
            await db.execute(
                update(ChatSession).where(ChatSession.id == session).values(title="after", updated_at=utcnow())
            )
            await db.commit()
        renamed = await stream.event()
        assert (renamed["event"], renamed["data"]["id"], renamed["data"]["title"]) == ("session", session, "after")
        assert renamed["id"] > relayed["id"]
        last_seen = renamed["id"]

    missed = await _message(sessions, session, "msg_missed", "written while the phone was away")
    async with open_stream(live, url, {**headers, "Last-Event-ID": last_seen}) as stream:
        resumed = await stream.event()
        assert (resumed["event"], resumed["id"]) == ("ready", last_seen)
        got = await stream.event()
        assert (got["event"], got["data"]["id"]) == ("message", missed)
        await stream.no_event(0.8)  # nothing it already had comes again

    # The query parameter works for clients that cannot set headers.
    async with open_stream(live, f"{url}?last_event_id={last_seen}", headers) as stream:
        assert (await stream.event())["id"] == last_seen
        assert (await stream.event())["data"]["id"] == missed


async def test_stream_relays_rows_another_process_writes(
    live: Live, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    writer = (
        "import asyncio, sys\n"
        "from agentpod.store.base import utcnow\n"
        "from agentpod.store.engine import create_engine, session_factory\n"
        "from agentpod.store.tables import ChatMessage\n"
        "async def main(url, session_id):\n"
        "    engine = create_engine(url)\n"
        "    async with session_factory(engine)() as db:\n"
        "        db.add(ChatMessage(session_id=session_id, external_message_id='msg_worker', source='opencode',\n"
        "                           role='assistant', content={}, text='from the worker', status='complete',\n"
        "                           upstream_created_at=utcnow()))\n"
        "        await db.commit()\n"
        "    await engine.dispose()\n"
        "asyncio.run(main(sys.argv[1], sys.argv[2]))\n"
    )
    async with open_stream(live, chat_url(sandbox, "/stream"), headers) as stream:
        assert (await stream.event())["event"] == "ready"
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, database_url, session)
        assert await process.wait() == 0
        relayed = await stream.event(timeout=1.5)
        assert (relayed["event"], relayed["data"]["text"]) == ("message", "from the worker")


async def test_stream_beats_while_idle_and_ends_when_the_client_hangs_up(
    live: Live, app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    async with open_stream(live, chat_url(sandbox, "/stream"), headers) as stream:
        ready = await stream.event()
        assert ready["event"] == "ready"
        assert await stream.frame(timeout=2) == {"comment": "heartbeat"}
        assert live.server.server_state.tasks  # the stream's request is running
    # Hung up: the request task ends and no database connection is left checked out.
    deadline = time.monotonic() + 3
    while live.server.server_state.tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not live.server.server_state.tasks
    assert app.state.ctx.engine.pool.checkedout() == 0
    # The starting id of a sandbox without chat rows resumes too.
    async with open_stream(live, chat_url(sandbox, "/stream"), {**headers, "Last-Event-ID": ready["id"]}) as stream:
        assert (await stream.event())["id"] == ready["id"]


async def test_stream_ends_when_the_token_is_revoked(
    live: Live, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    async with open_stream(live, chat_url(sandbox, "/stream"), headers) as stream:
        assert (await stream.event())["event"] == "ready"
        assert (await client.post("/api/auth/sign-out", headers=headers)).status_code in (200, 204)
        end = await stream.event(timeout=2)
        assert (end["event"], end["data"]) == ("end", {"reason": "access_revoked"})
        assert await stream.frame(timeout=2) is None  # the server closed the stream


class StatementCounter:
    """Counts the statements an engine sends to the database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1

    async def over(self, seconds: float) -> int:
        """Statements sent during the next ``seconds``."""
        before = self.count
        await asyncio.sleep(seconds)
        return self.count - before

    def stop(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


async def test_idle_streams_cost_no_query_each_and_an_update_still_arrives_at_once(
    live: Live, app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    sandboxes = [await new_sandbox(sessions, user) for _ in range(4)]
    session = await new_session(sessions, sandboxes[0], user)
    counter = StatementCounter(app.state.ctx.engine)
    async with contextlib.AsyncExitStack() as stack:

        async def connect(sandbox: str) -> EventReader:
            stream = await stack.enter_async_context(open_stream(live, chat_url(sandbox, "/stream"), headers))
            assert (await stream.event())["event"] == "ready"
            return stream

        streams = [await connect(sandboxes[0])]
        await asyncio.sleep(1)  # settle: the first read after connecting
        one = await counter.over(2)
        streams += [await connect(sandboxes[i % 4]) for i in range(1, 12)]
        await asyncio.sleep(1)
        twelve = await counter.over(2)
        counter.stop()
        # Polling each stream cost ~16 statements per stream per second; now the process's one poll
        # and one access check serve every stream, however many are open.
        assert twelve - one < 11, (one, twelve)

        async with sessions() as db:  # written as the mirror writes: its transaction takes the chat lock first
            await lock_sandbox_chats(db, sandboxes[0])
            row = ChatMessage(
                session_id=session, external_message_id="msg_live", source="opencode", role="assistant", content={}
            )
            db.add(row)
            await db.commit()
            message = row.id
        watching = [stream for i, stream in enumerate(streams) if i % 4 == 0]
        for stream in watching:
            got = await stream.event(timeout=1.0)
            assert (got["event"], got["data"]["id"]) == ("message", message)
        for stream in streams:
            if stream not in watching:
                await stream.no_event(0.1)  # the other sandboxes' streams got nothing


async def test_stream_needs_an_owned_sandbox(
    live: Live, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    mine, _ = await new_user(client)
    _, other = await new_user(client)
    theirs = await new_sandbox(sessions, other)
    response = await live.http.get(chat_url(theirs, "/stream"), headers=mine)
    assert response.status_code == 404 and response.json()["error"]["code"] == "sandbox_not_found"
    assert (await live.http.get(chat_url(theirs, "/stream"))).status_code == 401


# --- The change feed's cursor ------------------------------------------------------------------------


def _feed(sessions: async_sessionmaker[AsyncSession], sandbox: str, start: ChangeKey, batch: int = 200) -> ChangeFeed:
    return ChangeFeed(sessions, sandbox, start, lookback=timedelta(seconds=5), batch=batch)


async def _drain(feed: ChangeFeed) -> list[tuple[str, str]]:
    """(event id, row id) of everything the feed has now."""
    sent: list[tuple[str, str]] = []
    while True:
        frames, backlog = await feed.poll()
        sent += [(frame.id, frame.data["id"]) for frame in frames]
        if not backlog:
            return sent


async def test_feed_pages_through_rows_sharing_one_timestamp(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    _, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    stamp = utcnow()
    async with sessions() as db:
        await db.execute(update(ChatSession).where(ChatSession.id == session).values(updated_at=stamp))
        db.add_all(
            ChatMessage(
                session_id=session,
                external_message_id=f"msg_{i:02d}",
                source="opencode",
                role="assistant",
                content={},
                status="complete",
                updated_at=stamp,  # 30 rows and the session in one microsecond
            )
            for i in range(30)
        )
        await db.commit()
    sent = await _drain(_feed(sessions, sandbox, STREAM_START, batch=7))
    row_ids = [row_id for _, row_id in sent]
    assert len(row_ids) == 31 and len(set(row_ids)) == 31
    assert row_ids == sorted(row_ids)  # ties are ordered by id
    event_ids = [event_id for event_id, _ in sent]
    assert event_ids == sorted(event_ids) and len(set(event_ids)) == 31

    # Resuming from the middle of the tie yields exactly the rest.
    rest = await _drain(_feed(sessions, sandbox, ChangeKey.decode(event_ids[11])))
    assert [row_id for _, row_id in rest] == row_ids[12:]
    assert await _drain(_feed(sessions, sandbox, ChangeKey.decode(event_ids[-1]))) == []


async def test_feed_relays_a_row_committed_after_later_stamped_ones(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    _, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user)
    # The stream starts after this session's last write, three seconds ago.
    session = await new_session(sessions, sandbox, user, updated_at=utcnow() - timedelta(seconds=3))
    async with sessions() as db:
        start = await chat_store.latest_change(db, sandbox)
    feed = _feed(sessions, sandbox, start)
    first = await _message(sessions, session, "msg_a", "a")
    [(first_event, first_row)] = await _drain(feed)
    assert first_row == first

    # A writer stamped this row a second earlier but committed only now.
    async with sessions() as db:
        late = ChatMessage(
            session_id=session,
            external_message_id="msg_late",
            source="opencode",
            role="assistant",
            content={},
            status="complete",
            updated_at=ChangeKey.decode(first_event).updated_at - timedelta(seconds=1),
        )
        db.add(late)
        await db.commit()
    [(late_event, late_row)] = await _drain(feed)
    assert late_row == late.id
    assert late_event == first_event  # ids never go backwards
    assert await _drain(feed) == []

    # An update of a row already sent is sent again, with the new content.
    async with sessions() as db:
        await db.execute(
            update(ChatMessage).where(ChatMessage.id == first).values(text="a, edited", updated_at=utcnow())
        )
        await db.commit()
    frames, _ = await feed.poll()
    assert [(frame.event, frame.data["text"]) for frame in frames] == [("message", "a, edited")]
    assert frames[0].id > late_event

    # Rows of other sandboxes never appear.
    elsewhere = await new_sandbox(sessions, user)
    await new_session(sessions, elsewhere, user)
    assert await _drain(feed) == []
    async with sessions() as db:
        assert (await db.scalar(select(ChatMessage.text).where(ChatMessage.id == first))) == "a, edited"


@pytest.mark.parametrize("value", ["", "abc", "12", "_id", "1" * 20 + "_id", "1_a b", "1_" + "x" * 65, "-1_a"])
def test_change_key_rejects_malformed_ids(value: str) -> None:
    with pytest.raises(InvalidCursor):
        ChangeKey.decode(value)


def test_change_key_round_trips_and_sorts_as_text() -> None:
    now = utcnow()
    keys = [ChangeKey(now, "b"), ChangeKey(now, "a"), ChangeKey(now + timedelta(microseconds=1), "a"), STREAM_START]
    assert [ChangeKey.decode(key.encode()) for key in keys] == keys
    assert sorted(key.encode() for key in keys) == [key.encode() for key in sorted(keys)]
