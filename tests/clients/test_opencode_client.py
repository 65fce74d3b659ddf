"""OpenCodeClient against a real ``opencode serve`` (the pinned binary) and the fake LLM."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from agentpod.chat_mirror.opencode_api import OpenCodeApi
from agentpod.clients.opencode import (
    JSON,
    OpenCodeClient,
    OpenCodeError,
    OpenCodeNotFound,
    OpenCodeUnavailable,
)
from tests.fakes import opencode_server
from tests.fakes.fake_llm import PLAIN_REPLY, REASONED_REPLY, REASONING, TITLE, FakeLLM
from tests.fakes.opencode_server import MODEL, EventTap, OpenCodeProcess, free_port

# The shared fixtures (module attributes are what pytest collects). Redundant, but harmless, once
# tests/conftest.py lists "tests.fakes.opencode_server" in pytest_plugins.
fake_llm = opencode_server.fake_llm
opencode_binary = opencode_server.opencode_binary
opencode = opencode_server.opencode


class CountingTransport(httpx.AsyncBaseTransport):
    """Passes requests through and remembers them (to prove pagination really pages)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest_asyncio.fixture(scope="module")
async def server(
    opencode_binary: str, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpenCodeProcess]:
    """One server for the tests that neither kill nor dispose it (a start costs ~2-3 s)."""
    process = OpenCodeProcess(opencode_binary, tmp_path_factory.mktemp("opencode"), fake_llm.base_url)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture
async def client(server: OpenCodeProcess) -> AsyncIterator[OpenCodeClient]:
    async with OpenCodeClient(server.base_url) as oc:
        yield oc


async def raw_get(base_url: str, path: str, **params: Any) -> httpx.Response:
    """OpenCode's own answer, without the client under test."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get(path, params=params)
    response.raise_for_status()
    return response


def texts(message: JSON, part_type: str = "text") -> str:
    return "".join(p.get("text", "") for p in message["parts"] if p["type"] == part_type)


def types(events: list[JSON]) -> list[str]:
    return [e["type"] for e in events]


async def turn(
    tap: EventTap, client: OpenCodeClient, session_id: str, text: str, *, timeout: float = 30, **kwargs: Any
) -> list[JSON]:
    """Prompt and wait for the turn to end; the events of that session during the turn."""
    mark = tap.mark()
    await client.prompt_async(session_id, text, **kwargs)
    await tap.wait_idle(session_id, since=mark, timeout=timeout)
    return tap.of_session(session_id, since=mark)


def test_client_satisfies_the_protocol() -> None:
    api: OpenCodeApi = OpenCodeClient("http://oc")  # mypy checks the structural match
    assert callable(api.events)


async def test_health(client: OpenCodeClient, server: OpenCodeProcess) -> None:
    assert await client.health() is True
    assert server.start_seconds is not None and server.start_seconds < 15


async def test_plain_turn_streams_events_and_lists_messages(client: OpenCodeClient, fake_llm: FakeLLM) -> None:
    session = await client.create_session()
    assert session["id"].startswith("ses_") and "parentID" not in session
    prompt = f"hello {uuid.uuid4().hex[:8]}"
    async with EventTap(client) as tap:
        events = await turn(tap, client, session["id"], prompt)

    seen = types(events)
    for expected in ("message.updated", "message.part.updated", "message.part.delta", "session.status", "session.idle"):
        assert expected in seen
    deltas = "".join(e["properties"]["delta"] for e in events if e["type"] == "message.part.delta")
    assert deltas.strip() == PLAIN_REPLY
    assert [r.behaviour for r in fake_llm.requests_for(prompt)] == ["plain"]

    messages = await client.list_messages(session["id"])
    assert [m["info"]["role"] for m in messages] == ["user", "assistant"]
    assert texts(messages[0]) == prompt
    assert texts(messages[1]).strip() == PLAIN_REPLY
    assert messages[1]["info"]["finish"] == "stop" and "completed" in messages[1]["info"]["time"]
    # The paged read equals OpenCode's own unpaged answer.
    raw = (await raw_get(client.base_url, f"/session/{session['id']}/message")).json()
    assert messages == raw
    assert await client.get_message(session["id"], messages[1]["info"]["id"]) == messages[1]
    assert await client.session_status() == {}
    listed = {s["id"]: s for s in await client.list_sessions()}
    assert listed[session["id"]]["title"] == TITLE  # generated by the small model


async def test_tool_and_reasoning_turns(client: OpenCodeClient) -> None:
    session = await client.create_session(title="tools")
    async with EventTap(client) as tap:
        tool_events = await turn(tap, client, session["id"], "run a TOOL please")
        await turn(tap, client, session["id"], "REASON it out")
    statuses = [
        e["properties"]["part"]["state"]["status"]
        for e in tool_events
        if e["properties"].get("part", {}).get("type") == "tool"
    ]
    assert statuses[0] == "pending" and statuses[-1] == "completed"

    messages = await client.list_messages(session["id"])
    # user, assistant (tool call, finish tool-calls), assistant (answer), user, assistant (reasoning + text)
    assert [m["info"]["role"] for m in messages] == ["user", "assistant", "assistant", "user", "assistant"]
    [tool] = [p for p in messages[1]["parts"] if p["type"] == "tool"]
    assert tool["tool"] == "bash" and tool["state"]["output"].strip() == "hello-from-tool"
    assert messages[1]["info"]["finish"] == "tool-calls"
    assert "hello-from-tool" in texts(messages[2])
    assert texts(messages[4], "reasoning").strip() == REASONING
    assert texts(messages[4]).strip() == REASONED_REPLY


async def test_provider_error_and_retry(client: OpenCodeClient, fake_llm: FakeLLM) -> None:
    session = await client.create_session(title="errors")
    async with EventTap(client) as tap:
        failed = await turn(tap, client, session["id"], "ERROR400 now")
        [error] = [e for e in failed if e["type"] == "session.error"]
        assert error["properties"]["error"]["name"] == "APIError"
        assert error["properties"]["error"]["data"]["statusCode"] == 400

        prompt = f"RETRY {uuid.uuid4().hex[:8]}"
        retried = await turn(tap, client, session["id"], prompt)
    retry = [e["properties"]["status"] for e in retried if e["type"] == "session.status"]
    assert any(s["type"] == "retry" and s["attempt"] == 1 for s in retry)
    assert [r.status for r in fake_llm.requests_for(prompt)] == [503, 200]

    messages = await client.list_messages(session["id"])
    assert messages[1]["info"]["error"]["name"] == "APIError" and not messages[1]["parts"]
    assert texts(messages[-1]).strip() == PLAIN_REPLY


async def test_abort_mid_reply(client: OpenCodeClient) -> None:
    session = await client.create_session(title="abort")
    async with EventTap(client) as tap:
        mark = tap.mark()
        await client.prompt_async(session["id"], "SLOW please")
        await tap.wait_for(lambda e: e["type"] == "message.part.delta", since=mark)
        assert (await client.session_status())[session["id"]]["type"] == "busy"
        started = time.monotonic()
        assert await client.abort(session["id"]) is True
        await tap.wait_idle(session["id"], since=mark)
        assert time.monotonic() - started < 5  # not the whole 10 s reply
        errors = [e for e in tap.of_session(session["id"], since=mark) if e["type"] == "session.error"]
    assert errors[0]["properties"]["error"]["name"] == "MessageAbortedError"
    assistant = (await client.list_messages(session["id"]))[-1]
    assert assistant["info"]["error"]["name"] == "MessageAbortedError"
    assert texts(assistant).startswith("s0 ")  # the partial text is kept


async def test_list_messages_pages_oldest_first_without_duplicates(
    server: OpenCodeProcess, client: OpenCodeClient, fake_llm: FakeLLM
) -> None:
    session = await client.create_session(title="long")
    tag = uuid.uuid4().hex[:8]
    async with EventTap(client) as tap:
        for i in range(25):
            # noReply stores the user message and runs no agent turn.
            await client.prompt_async(session["id"], f"note {tag} {i}", no_reply=True)
        await turn(tap, client, session["id"], f"and now answer {tag}")
    assert fake_llm.requests_for(f"note {tag}") == []  # no turn ran for them

    expected = (await raw_get(server.base_url, f"/session/{session['id']}/message")).json()
    assert len(expected) == 27
    assert [texts(m) for m in expected[:25]] == [f"note {tag} {i}" for i in range(25)]
    for page_size in (1, 10, 26, 27, 200):
        counting = CountingTransport()
        async with OpenCodeClient(server.base_url, transport=counting) as paged:
            messages = await paged.list_messages(session["id"], page_size=page_size)
        assert messages == expected, page_size
        assert len({m["info"]["id"] for m in messages}) == 27
        assert len(counting.requests) == math.ceil(27 / page_size)
        assert all(r.url.params["limit"] == str(page_size) for r in counting.requests)


async def test_list_sessions_includes_children_and_archived_across_pages(
    server: OpenCodeProcess, client: OpenCodeClient
) -> None:
    parent = await client.create_session(title="parent")
    child = await client.create_session(title="child", parent_id=parent["id"])
    archived = await client.create_session(title="archived")
    others = [await client.create_session(title=f"s{i}") for i in range(5)]
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        patch = await http.patch(f"/session/{archived['id']}", json={"time": {"archived": 1}})
    assert patch.status_code == 200

    counting = CountingTransport()
    async with OpenCodeClient(server.base_url, transport=counting) as paged:
        sessions = await paged.list_sessions(page_size=3)
    by_id = {s["id"]: s for s in sessions}
    assert len(by_id) == len(sessions)
    for made in [parent, child, archived, *others]:
        assert made["id"] in by_id
    assert by_id[child["id"]]["parentID"] == parent["id"]
    assert by_id[archived["id"]]["time"]["archived"] == 1
    updated = [s["time"]["updated"] for s in sessions]
    assert updated == sorted(updated, reverse=True)
    assert len(counting.requests) > len(sessions) / 3  # really paged
    # Same set as the unpaged call, and as OpenCode's per-directory listing (all live in one directory).
    assert {s["id"] for s in await client.list_sessions()} == set(by_id)
    directory = (await raw_get(server.base_url, "/session", limit=100000)).json()
    assert {s["id"] for s in directory} == set(by_id)


async def test_session_paging_survives_equal_timestamps() -> None:
    """Sessions sharing ``time.updated`` at a page edge are not skipped (server semantics emulated)."""
    sessions: list[JSON] = [{"id": f"ses_{i:02}", "time": {"updated": 1000 - (i // 4)}} for i in range(11)]

    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.url.path == "/experimental/session"
        if request.url.params["archived"] == "true":
            return httpx.Response(200, json=[])
        limit = int(request.url.params["limit"])
        cursor = request.url.params.get("cursor")
        rows = [s for s in sessions if cursor is None or s["time"]["updated"] < int(cursor)]
        # Newest first; the order within one millisecond is not something to rely on.
        rows = sorted(rows, key=lambda s: (-s["time"]["updated"], random.random()))[:limit]
        headers = {"x-next-cursor": str(rows[-1]["time"]["updated"])} if len(rows) == limit else {}
        return httpx.Response(200, json=rows, headers=headers)

    async with OpenCodeClient("http://oc", transport=httpx.MockTransport(handler)) as oc:
        for page_size in (1, 2, 3, 4, 5, 11, 12):
            calls = len(requests)
            got = await oc.list_sessions(page_size=page_size)
            assert sorted(s["id"] for s in got) == [s["id"] for s in sessions], page_size
            # Every full page brings page_size new sessions; +1 last page, +1 for the archived walk.
            assert len(requests) - calls <= math.ceil(len(sessions) / page_size) + 2


async def test_delete_and_not_found(client: OpenCodeClient) -> None:
    session = await client.create_session(title="doomed")
    assert await client.delete_session(session["id"]) is True
    assert session["id"] not in {s["id"] for s in await client.list_sessions()}
    for call in (
        client.get_session(session["id"]),
        client.list_messages(session["id"]),
        client.get_message(session["id"], "msg_doesnotexist"),
        client.delete_session(session["id"]),
        client.prompt_async(session["id"], "hello?"),
    ):
        with pytest.raises(OpenCodeNotFound) as caught:
            await call
        assert caught.value.status == 404
        assert "not found" in str(caught.value).lower()
    assert isinstance(caught.value, OpenCodeError)


async def test_sync_history_returns_events_after_a_seq(client: OpenCodeClient) -> None:
    session = await client.create_session(title="history")
    async with EventTap(client) as tap:
        await turn(tap, client, session["id"], "hello history")
    full = [e for e in await client.sync_history({}) if e["aggregate_id"] == session["id"]]
    seqs = [e["seq"] for e in full]
    assert seqs == list(range(len(seqs))) and full[0]["type"] == "session.created.1"
    later = await client.sync_history({session["id"]: 3})
    assert [e["seq"] for e in later if e["aggregate_id"] == session["id"]] == seqs[4:]


async def test_prompt_options_are_passed(client: OpenCodeClient, fake_llm: FakeLLM) -> None:
    session = await client.create_session(title="options")
    # Ids sort by time; a caller-chosen one must sort after the existing ones to stay in order.
    message_id = "msg_" + "f" * 12 + uuid.uuid4().hex[:14]
    prompt = f"options {uuid.uuid4().hex[:8]}"
    async with EventTap(client) as tap:
        await turn(tap, client, session["id"], prompt, model=MODEL, agent="plan", message_id=message_id)
    user = (await client.list_messages(session["id"]))[0]["info"]
    assert user["id"] == message_id
    assert user["agent"] == "plan"
    assert user["model"] == {"providerID": "fake", "modelID": "fake-model"}
    assert fake_llm.requests_for(prompt)[0].body["model"] == "fake-model"


async def test_unknown_route_is_an_error_not_a_success(server: OpenCodeProcess) -> None:
    # OpenCode serves its web UI (200 text/html) for unknown paths.
    async with OpenCodeClient(server.base_url + "/no-such-prefix") as oc:
        with pytest.raises(OpenCodeError, match="expected JSON") as caught:
            await oc.session_status()
        assert not isinstance(caught.value, OpenCodeUnavailable)
        with pytest.raises(OpenCodeError, match="event-stream"):
            async for _ in oc.events():
                pass


async def test_unreachable_server() -> None:
    async with OpenCodeClient(f"http://127.0.0.1:{free_port()}", timeout=2) as oc:
        assert await oc.health() is False
        with pytest.raises(OpenCodeUnavailable):
            await oc.list_sessions()
        with pytest.raises(OpenCodeUnavailable):
            async for _ in oc.events():
                pass


async def test_events_end_on_dispose_and_fail_on_kill_and_restart_keeps_the_store(
    opencode: OpenCodeProcess,
) -> None:
    async with OpenCodeClient(opencode.base_url) as oc:
        # Disposing the directory instance ends /event cleanly. (A dispose that lands before the stream
        # carried any event may leave it open, still working: OpenCode attaches it lazily. So first
        # make it carry one.)
        async with EventTap(oc) as tap:
            session = await oc.create_session(title="survivor")
            await tap.wait_for(lambda e: e["type"] == "session.created")
            async with httpx.AsyncClient(base_url=opencode.base_url) as http:
                # Under heavy load a dispose has been seen to race the stream's (lazy) attachment and
                # leave it open; the stream must still end on a dispose, so a second one may be sent.
                for _ in range(2):
                    assert (await http.post("/instance/dispose")).json() is True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(tap.ended.wait(), 10)
                    if tap.ended.is_set():
                        break
            assert tap.ended.is_set() and tap.error is None
            assert tap.events[-1]["type"] == "server.instance.disposed"

        # A crash cuts it: that is an error, not an end.
        async with EventTap(oc) as tap:
            await opencode.kill(signal.SIGKILL)
            await asyncio.wait_for(tap.ended.wait(), 10)
            assert isinstance(tap.error, OpenCodeUnavailable)
        assert await oc.health() is False

        # Same port, same store.
        await opencode.restart()
        assert await oc.health() is True
        assert session["id"] in {s["id"] for s in await oc.list_sessions()}
        async with EventTap(oc) as tap:
            assert tap.events[0]["type"] == "server.connected"


async def test_password_protected_server(opencode_binary: str, fake_llm: FakeLLM, tmp_path: Path) -> None:
    process = OpenCodeProcess(opencode_binary, tmp_path, fake_llm.base_url, password="s3cret")
    await process.start()
    try:
        async with OpenCodeClient(process.base_url) as anonymous:
            with pytest.raises(OpenCodeError) as caught:
                await anonymous.health()
            assert caught.value.status == 401
        # The current password is tried first; a sandbox still holding an older key's one answers to
        # that, and the client keeps using it (the event stream too).
        async with OpenCodeClient(process.base_url, ["made-with-the-new-key", "s3cret"]) as oc:
            assert await oc.health() is True
            session = await oc.create_session(title="secret")
            async with EventTap(oc) as tap:
                await turn(tap, oc, session["id"], "hello behind a password")
            assert len(await oc.list_messages(session["id"])) == 2
    finally:
        await process.stop()
