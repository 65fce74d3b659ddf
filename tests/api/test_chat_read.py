"""Chat API over rows inserted directly (no agent): listing, filters, keyset pages, archive, ownership,
and the prompt routes against a fake OpenCode."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.clients.opencode import OpenCodeError, OpenCodeNotFound, OpenCodeUnavailable
from agentpod.store import chat as chat_store
from agentpod.store.base import utcnow
from agentpod.store.tables import ActivityLog, ChatMessage, ChatSession, Sandbox
from api import deps
from api.routes import chat as chat_routes
from tests.helpers import assert_error, auth_header, sign_up

T0 = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
OPENCODE_PORT = 41234


def chat_url(sandbox_id: str, rest: str = "") -> str:
    """URL of a chat route."""
    return f"/api/v2/sandboxes/{sandbox_id}/chat{rest}"


def mount_chat(app: FastAPI) -> None:
    """Serve the chat routes even before they are registered with the app's routers."""
    if not any(getattr(route, "path", "").startswith("/api/v2/sandboxes/{sandbox_id}/chat") for route in app.routes):
        app.include_router(chat_routes.router)


async def new_user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    """Sign up; returns (auth headers, user id)."""
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def new_sandbox(
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
    *,
    status: str = "running",
    opencode_url: str | None = f"http://localhost:{OPENCODE_PORT}",
) -> str:
    """A sandbox row (no container)."""
    slug = f"sb-{uuid.uuid4().hex[:8]}"
    async with sessions() as db:
        sandbox = Sandbox(
            user_id=user_id,
            name=slug,
            slug=slug,
            repo_name=slug,
            resource_tier_id="starter",
            flavor_id="fullstack",
            addon_ids=[],
            status=status,
            opencode_url=opencode_url,
        )
        db.add(sandbox)
        await db.commit()
        return sandbox.id


async def new_session(sessions: async_sessionmaker[AsyncSession], sandbox_id: str, user_id: str, **fields: Any) -> str:
    """A chat session row."""
    async with sessions() as db:
        fields.setdefault("opencode_session_id", f"ses_{uuid.uuid4().hex}")
        row = ChatSession(sandbox_id=sandbox_id, user_id=user_id, source="opencode", **fields)
        db.add(row)
        await db.commit()
        return row.id


async def add_messages(
    sessions: async_sessionmaker[AsyncSession], session_id: str, specs: list[dict[str, Any]]
) -> list[str]:
    """Message rows, inserted in the given order; returns their ids."""
    async with sessions() as db:
        rows = [
            ChatMessage(
                session_id=session_id,
                source="opencode",
                role=spec.pop("role", "assistant"),
                content=spec.pop("content", {"parts": []}),
                status=spec.pop("status", "complete"),
                **spec,
            )
            for spec in specs
        ]
        db.add_all(rows)
        await db.commit()
        return [row.id for row in rows]


@pytest.fixture
def chat_client(app: FastAPI, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The in-process client, with the chat routes mounted."""
    mount_chat(app)
    return client


# --- Session list ------------------------------------------------------------------------------------


async def test_list_orders_by_activity_nulls_last_and_links_children(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    h = timedelta(hours=1)
    never_spoken = await new_session(sessions, sandbox, user, title="never", upstream_created_at=T0 + 9 * h)
    no_times = await new_session(sessions, sandbox, user, title="no times")
    old = await new_session(sessions, sandbox, user, title="old", last_message_at=T0, upstream_created_at=T0)
    recent = await new_session(
        sessions, sandbox, user, title="recent", last_message_at=T0 + 5 * h, upstream_created_at=T0
    )
    # Same last activity: the later-created one first.
    tie_a = await new_session(sessions, sandbox, user, last_message_at=T0 + h, upstream_created_at=T0 + 2 * h)
    tie_b = await new_session(sessions, sandbox, user, last_message_at=T0 + h, upstream_created_at=T0 + 3 * h)
    child = await new_session(
        sessions, sandbox, user, title="subagent", parent_session_id=recent, last_message_at=T0 + 8 * h
    )

    body = (await chat_client.get(chat_url(sandbox, "/sessions"), headers=headers)).json()
    assert [s["id"] for s in body["sessions"]] == [recent, tie_b, tie_a, old, never_spoken, no_times]
    assert body["total"] == 6 and body["next_cursor"] is None
    by_id = {s["id"]: s for s in body["sessions"]}
    assert by_id[recent]["child_count"] == 1 and by_id[old]["child_count"] == 0
    assert by_id[recent]["missing_upstream"] is False and by_id[recent]["status"] == "active"

    everything = await chat_client.get(chat_url(sandbox, "/sessions?include_children=true"), headers=headers)
    assert [s["id"] for s in everything.json()["sessions"]][0] == child
    assert everything.json()["total"] == 7

    detail = (await chat_client.get(chat_url(sandbox, f"/sessions/{recent}"), headers=headers)).json()
    assert [c["id"] for c in detail["children"]] == [child]
    assert detail["children"][0]["parent_session_id"] == recent


async def test_status_filter_total_and_keyset_pages(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    other_sandbox = await new_sandbox(sessions, user)
    await new_session(sessions, other_sandbox, user, title="elsewhere")
    rng = random.Random(7)
    choices: list[datetime | None] = [None, T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    active = [
        await new_session(
            sessions, sandbox, user, last_message_at=rng.choice(choices), upstream_created_at=rng.choice(choices)
        )
        for _ in range(23)
    ]
    for state in ("archived", "archived", "deleted"):
        await new_session(sessions, sandbox, user, status=state, last_message_at=T0)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = f"/sessions?limit=4{f'&cursor={cursor}' if cursor else ''}"
        page = (await chat_client.get(chat_url(sandbox, query), headers=headers)).json()
        assert page["total"] == 23
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(active) and len(seen) == 23  # every row once, across NULL groups

    # The pages reproduce the documented order exactly.
    async with sessions() as db:
        rows = (await db.scalars(select(ChatSession).where(ChatSession.id.in_(active)))).all()

    def key(row: ChatSession) -> tuple[Any, ...]:
        def desc_nulls_last(value: datetime | None) -> tuple[int, float]:
            return (1, 0.0) if value is None else (0, -value.timestamp())

        return (*desc_nulls_last(row.last_message_at), *desc_nulls_last(row.upstream_created_at), row.id)

    assert seen == [row.id for row in sorted(rows, key=key)]

    archived = (await chat_client.get(chat_url(sandbox, "/sessions?status=archived"), headers=headers)).json()
    assert archived["total"] == 2 and {s["status"] for s in archived["sessions"]} == {"archived"}
    deleted = (await chat_client.get(chat_url(sandbox, "/sessions?status=deleted"), headers=headers)).json()
    assert deleted["total"] == 1


# --- Messages ----------------------------------------------------------------------------------------


async def test_messages_follow_upstream_time_not_insert_order(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    s = timedelta(seconds=1)
    # Inserted newest first; two share a millisecond and are ordered by their ascending upstream ids.
    await add_messages(
        sessions,
        session,
        [
            {"external_message_id": "msg_c", "upstream_created_at": T0 + 2 * s, "text": "third"},
            {"external_message_id": "msg_b2", "upstream_created_at": T0 + s, "text": "second b"},
            {"external_message_id": "msg_b1", "upstream_created_at": T0 + s, "text": "second a", "role": "user"},
            {"external_message_id": "msg_a", "upstream_created_at": T0, "text": "first", "role": "user"},
            {"external_message_id": "msg_z", "upstream_created_at": None, "text": "time unknown"},
        ],
    )
    page = (await chat_client.get(chat_url(sandbox, f"/sessions/{session}/messages"), headers=headers)).json()
    assert [m["text"] for m in page["messages"]] == ["first", "second a", "second b", "third", "time unknown"]
    assert (page["has_older"], page["has_newer"]) == (False, False)
    first = page["messages"][0]
    assert first["content"] is None  # raw parts only on request
    assert first["tokens"] == {"input": 0, "output": 0, "reasoning": 0, "cache_read": 0, "cache_write": 0}
    assert set(first) >= {
        "external_message_id",
        "role",
        "status",
        "thinking",
        "tool_calls",
        "tool_results",
        "model_provider",
        "model_id",
        "agent_id",
        "cost",
        "error_message",
        "upstream_created_at",
        "upstream_completed_at",
        "missing_upstream",
    }
    raw = await chat_client.get(chat_url(sandbox, f"/sessions/{session}/messages?include_raw=true"), headers=headers)
    assert raw.json()["messages"][0]["content"] == {"parts": []}


async def test_250_messages_page_both_ways_without_gaps_or_duplicates(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    specs = []
    for i in range(250):
        # Ties every 3 messages (same microsecond) and a few rows without an upstream time.
        stamp = None if i >= 245 else T0 + timedelta(milliseconds=i // 3)
        specs.append({"external_message_id": f"msg_{i:04d}", "upstream_created_at": stamp, "text": str(i)})
    random.Random(3).shuffle(specs)
    await add_messages(sessions, session, specs)
    expected = [str(i) for i in range(250)]
    url = chat_url(sandbox, f"/sessions/{session}/messages")

    # Backwards from the newest page.
    page = (await chat_client.get(f"{url}?limit=37", headers=headers)).json()
    backwards = [m["text"] for m in page["messages"]]
    assert page["has_newer"] is False
    while page["has_older"]:
        page = (await chat_client.get(f"{url}?limit=37&before={page['older_cursor']}", headers=headers)).json()
        assert page["has_newer"] is True
        backwards = [m["text"] for m in page["messages"]] + backwards
    assert backwards == expected

    # Forwards from the oldest page.
    forwards = [m["text"] for m in page["messages"]]
    while page["has_newer"]:
        page = (await chat_client.get(f"{url}?limit=200&after={page['newer_cursor']}", headers=headers)).json()
        assert page["has_older"] is True
        forwards += [m["text"] for m in page["messages"]]
    assert forwards == expected

    # At the end, `after` gives an empty page that keeps the cursor for polling later.
    tail = (await chat_client.get(f"{url}?after={page['newer_cursor']}", headers=headers)).json()
    assert tail["messages"] == [] and tail["newer_cursor"] == page["newer_cursor"] and tail["has_older"]


async def test_session_detail_has_the_newest_50_and_has_more(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user, title="long", missing_upstream_at=utcnow())
    await add_messages(
        sessions,
        session,
        [
            {"external_message_id": f"msg_{i:03d}", "upstream_created_at": T0 + timedelta(seconds=i), "text": str(i)}
            for i in range(60)
        ],
    )
    detail = (await chat_client.get(chat_url(sandbox, f"/sessions/{session}"), headers=headers)).json()
    assert detail["session"]["title"] == "long" and detail["session"]["missing_upstream"] is True
    assert [m["text"] for m in detail["messages"]] == [str(i) for i in range(10, 60)]
    assert detail["has_more"] is True
    older = await chat_client.get(
        chat_url(sandbox, f"/sessions/{session}/messages?before={detail['older_cursor']}"), headers=headers
    )
    assert [m["text"] for m in older.json()["messages"]] == [str(i) for i in range(10)]

    small = await new_session(sessions, sandbox, user)
    empty = (await chat_client.get(chat_url(sandbox, f"/sessions/{small}"), headers=headers)).json()
    assert (empty["messages"], empty["has_more"], empty["older_cursor"]) == ([], False, None)


# --- Archive -----------------------------------------------------------------------------------------


async def test_archive_is_idempotent_and_logged_once(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    for _ in range(2):
        response = await chat_client.delete(chat_url(sandbox, f"/sessions/{session}"), headers=headers)
        assert response.status_code == 204 and response.content == b""
    listed = (await chat_client.get(chat_url(sandbox, "/sessions"), headers=headers)).json()
    assert listed["total"] == 0
    archived = (await chat_client.get(chat_url(sandbox, "/sessions?status=archived"), headers=headers)).json()
    assert [s["id"] for s in archived["sessions"]] == [session]
    async with sessions() as db:
        logged = (await db.scalars(select(ActivityLog).where(ActivityLog.action == "chat.session_archive"))).all()
    assert [(row.user_id, row.entity_id) for row in logged] == [(user, session)]
    assert logged[0].metadata_["sandbox_id"] == sandbox


# --- Ownership and bad input -------------------------------------------------------------------------

ROUTES = [
    ("GET", "/sessions", None),
    ("POST", "/sessions", {}),
    ("GET", "/sessions/{session}", None),
    ("GET", "/sessions/{session}/messages", None),
    ("DELETE", "/sessions/{session}", None),
    ("POST", "/sessions/{session}/unarchive", None),
    ("POST", "/sessions/{session}/messages", {"text": "hi"}),
    ("POST", "/sessions/{session}/abort", None),
    ("GET", "/stream", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_other_users_sandboxes_and_sessions_are_404(
    app: FastAPI,
    chat_client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    fake = inject(app, FakeOpenCode())
    mine, me = await new_user(chat_client)
    _, other = await new_user(chat_client)
    my_sandbox = await new_sandbox(sessions, me)
    my_second = await new_sandbox(sessions, me)
    their_sandbox = await new_sandbox(sessions, other)
    their_session = await new_session(sessions, their_sandbox, other)
    my_other_session = await new_session(sessions, my_second, me)

    async def call(sandbox: str, session: str) -> httpx.Response:
        return await chat_client.request(
            method, chat_url(sandbox, path.format(session=session)), json=body, headers=mine
        )

    # Someone else's sandbox, with its own session id: the sandbox does not exist for me.
    assert_error(await call(their_sandbox, their_session), 404, "sandbox_not_found")
    if "{session}" in path:
        # My sandbox, but a session of another user or of my other sandbox.
        assert_error(await call(my_sandbox, their_session), 404, "chat_session_not_found")
        assert_error(await call(my_sandbox, my_other_session), 404, "chat_session_not_found")
    assert fake.calls == []
    async with sessions() as db:
        statuses = set((await db.scalars(select(ChatSession.status))).all())
        logged = await db.scalar(select(func.count()).select_from(ActivityLog).where(ActivityLog.action.like("chat.%")))
    assert statuses == {"active"} and logged == 0


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("/sessions?cursor=not-a-cursor", 400, "invalid_cursor"),
        ("/sessions?cursor={message_cursor}", 400, "invalid_cursor"),  # a cursor of another list
        ("/sessions?limit=101", 422, "validation_error"),
        ("/sessions?limit=0", 422, "validation_error"),
        ("/sessions?status=gone", 422, "validation_error"),
        ("/sessions/{session}/messages?limit=201", 422, "validation_error"),
        ("/sessions/{session}/messages?before=%%%", 400, "invalid_cursor"),
        ("/sessions/{session}/messages?after={session_cursor}", 400, "invalid_cursor"),
        ("/sessions/{session}/messages?after=eyJrIjoibSIsInQiOiJ4IiwieCI6MX0", 400, "invalid_cursor"),
        ("/sessions/{session}/messages?before={message_cursor}&after={message_cursor}", 400, "conflicting_cursors"),
        ("/stream?last_event_id=yesterday", 400, "invalid_cursor"),
    ],
)
async def test_bad_cursors_and_limits_are_rejected_in_the_error_shape(
    chat_client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    query: str,
    status: int,
    code: str,
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    message_cursor = chat_store.MessageKey(T0, "msg_1").encode()
    session_cursor = chat_store.SessionKey(T0, None, session).encode()
    url = chat_url(sandbox, query.format(session=session, message_cursor=message_cursor, session_cursor=session_cursor))
    assert_error(await chat_client.get(url, headers=headers), status, code)


async def test_stream_rejects_a_bad_last_event_id_header(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    response = await chat_client.get(chat_url(sandbox, "/stream"), headers={**headers, "Last-Event-ID": "1_x y"})
    assert_error(response, 400, "invalid_cursor")


# --- Create / send / abort against a fake OpenCode ---------------------------------------------------


class FakeOpenCode:
    """Speaks the OpenCode client interface the routes use, and records every call."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.error = error
        self.closed = 0

    def factory(self, base_url: str, sandbox_id: str) -> FakeOpenCode:
        self.calls.append(("connect", base_url))
        return self

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    async def create_session(self, title: str | None = None) -> dict[str, Any]:
        self.calls.append(("create_session", title))
        self._maybe_fail()
        return {
            "id": "ses_de99cb776ffeanXOCVNaqIDQUa",
            "title": title or "New session - 2026-03-01T12:00:00.000Z",
            "time": {"created": 1772366400000, "updated": 1772366400000},
        }

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        model: tuple[str, str] | None = None,
        agent: str | None = None,
        message_id: str | None = None,
    ) -> None:
        self.calls.append(
            ("prompt_async", {"session": session_id, "text": text, "id": message_id, "model": model, "agent": agent})
        )
        self._maybe_fail()

    async def abort(self, session_id: str) -> bool:
        self.calls.append(("abort", session_id))
        self._maybe_fail()
        return True

    async def aclose(self) -> None:
        self.closed += 1


def inject(app: FastAPI, fake: FakeOpenCode) -> FakeOpenCode:
    """Make the app's chat routes talk to ``fake``."""

    def factory() -> deps.OpenCodeFactory:
        return fake.factory

    app.dependency_overrides[deps.get_opencode_factory] = factory
    return fake


@pytest.fixture
def fake_opencode(app: FastAPI) -> FakeOpenCode:
    """A fake OpenCode injected into the app."""
    return inject(app, FakeOpenCode())


async def test_create_session_in_opencode_and_list_it_at_once(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], fake_opencode: FakeOpenCode
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    response = await chat_client.post(chat_url(sandbox, "/sessions"), json={"title": "Fix the build"}, headers=headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["title"], created["opencode_session_id"], created["status"]) == (
        "Fix the build",
        "ses_de99cb776ffeanXOCVNaqIDQUa",
        "active",
    )
    assert created["upstream_created_at"].startswith("2026-03-01T12:00:00")
    assert fake_opencode.calls == [
        ("connect", f"http://127.0.0.1:{OPENCODE_PORT}"),
        ("create_session", "Fix the build"),
    ]
    assert fake_opencode.closed == 1
    listed = (await chat_client.get(chat_url(sandbox, "/sessions"), headers=headers)).json()
    assert [s["id"] for s in listed["sessions"]] == [created["id"]]

    # The sync upserting the same upstream session later finds the row: still one.
    async with sessions() as db:
        row = await db.get(Sandbox, sandbox)
        assert row is not None
        again = await chat_store.upsert_opencode_session(db, row, {"id": created["opencode_session_id"]})
        await db.commit()
        assert again.id == created["id"]
        assert await db.scalar(select(func.count()).select_from(ChatSession)) == 1
        actions = (await db.scalars(select(ActivityLog.action))).all()
    assert "chat.session_create" in actions

    untitled = await chat_client.post(chat_url(sandbox, "/sessions"), headers=headers)  # no body at all
    assert untitled.status_code == 201 and fake_opencode.calls[-1] == ("create_session", None)


async def test_send_message_returns_202_with_an_ascending_opencode_id(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], fake_opencode: FakeOpenCode
) -> None:
    headers, user = await new_user(chat_client)
    await add_provider_key(chat_client, headers)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user, opencode_session_id="ses_upstream")
    url = chat_url(sandbox, f"/sessions/{session}/messages")
    text = "  indented\n\tcode stays as typed  "
    first = await chat_client.post(
        url, json={"text": text, "model": "openrouter/anthropic/claude", "agent": "build"}, headers=headers
    )
    second = await chat_client.post(url, json={"text": "again"}, headers=headers)
    assert first.status_code == second.status_code == 202, first.text
    ids = [first.json()["message_id"], second.json()["message_id"]]
    assert all(re.fullmatch(r"msg_[0-9a-f]{12}[0-9A-Za-z]{14}", i) for i in ids)
    assert ids[0] < ids[1]
    prompts = [args for name, args in fake_opencode.calls if name == "prompt_async"]
    assert prompts[0] == {
        "session": "ses_upstream",
        "text": text,
        "id": ids[0],
        "model": ("openrouter", "anthropic/claude"),
        "agent": "build",
    }
    assert (prompts[1]["model"], prompts[1]["agent"]) == (None, None)
    async with sessions() as db:
        logged = (await db.scalars(select(ActivityLog).where(ActivityLog.action == "chat.message_send"))).all()
    assert [row.metadata_["message_id"] for row in logged] == ids
    assert all("text" not in row.metadata_ for row in logged)  # the audit trail keeps no prompt text

    abort = await chat_client.post(chat_url(sandbox, f"/sessions/{session}/abort"), headers=headers)
    assert abort.status_code == 202 and abort.json() == {"session_id": session}
    assert fake_opencode.calls[-1] == ("abort", "ses_upstream")
    # Aborts are audited after the response (possibly by the background writer): wait for the row.
    for _ in range(100):
        async with sessions() as db:
            aborted = await db.scalar(select(ActivityLog).where(ActivityLog.action == "chat.session_abort"))
        if aborted is not None:
            break
        await asyncio.sleep(0.05)
    assert aborted is not None and (aborted.user_id, aborted.entity_id) == (user, session)


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": " \n\t "},
        {"text": "x" * 100_001},
        {"text": "hi", "model": "no-slash"},
        {"text": "hi", "model": "a/b c"},
        {"text": "hi", "agent": "../etc"},
        {"text": "hi", "temperature": 2},
        {"text": "nul\u0000"},
        {},
    ],
)
async def test_bad_message_bodies_are_422_and_reach_no_agent(
    chat_client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    fake_opencode: FakeOpenCode,
    body: dict[str, Any],
) -> None:
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    response = await chat_client.post(chat_url(sandbox, f"/sessions/{session}/messages"), json=body, headers=headers)
    assert_error(response, 422, "validation_error")
    assert fake_opencode.calls == []


async def test_the_longest_message_is_accepted(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], fake_opencode: FakeOpenCode
) -> None:
    headers, user = await new_user(chat_client)
    await add_provider_key(chat_client, headers)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    text = "é" * 100_000
    response = await chat_client.post(
        chat_url(sandbox, f"/sessions/{session}/messages"), json={"text": text}, headers=headers
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/sessions", {"title": "t"}),
        ("POST", "/sessions/{session}/messages", {"text": "hi"}),
        ("POST", "/sessions/{session}/abort", None),
    ],
)
async def test_agent_routes_need_a_running_sandbox(
    chat_client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    fake_opencode: FakeOpenCode,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    headers, user = await new_user(chat_client)
    for state in ("stopped", "starting", "created", "error"):
        sandbox = await new_sandbox(sessions, user, status=state)
        session = await new_session(sessions, sandbox, user)
        url = chat_url(sandbox, path.format(session=session))
        error = assert_error(await chat_client.request(method, url, json=body, headers=headers), 409)
        assert error["code"] == "sandbox_not_running" and error["details"] == {"status": state}
    assert fake_opencode.calls == []


async def test_agent_failures_map_to_the_error_shape(
    app: FastAPI, chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(chat_client)
    await add_provider_key(chat_client, headers)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    archived_elsewhere = await new_session(sessions, sandbox, user, status="deleted")
    cases: list[tuple[Exception, int, str]] = [
        (OpenCodeUnavailable("POST /session/x/prompt_async: ConnectError"), 502, "opencode_unavailable"),
        (OpenCodeNotFound("POST /session/x/prompt_async: HTTP 404", status=404), 409, "upstream_session_missing"),
        (OpenCodeError("POST /session/x/prompt_async: HTTP 400", status=400), 502, "opencode_error"),
    ]
    for exc, status, code in cases:
        fake = FakeOpenCode(error=exc)
        inject(app, fake)
        url = chat_url(sandbox, f"/sessions/{session}/messages")
        assert_error(await chat_client.post(url, json={"text": "hi"}, headers=headers), status, code)
        assert fake.closed == 1
    # A session the agent deleted takes no prompts (nothing is sent).
    fake = inject(app, FakeOpenCode())
    url = chat_url(sandbox, f"/sessions/{archived_elsewhere}/messages")
    assert_error(await chat_client.post(url, json={"text": "hi"}, headers=headers), 409, "upstream_session_missing")
    assert fake.calls == []
    # A sandbox whose agent address is unknown.
    nowhere = await new_sandbox(sessions, user, opencode_url=None)
    assert_error(
        await chat_client.post(chat_url(nowhere, "/sessions"), headers=headers), 409, "opencode_address_unknown"
    )
    async with sessions() as db:
        assert (
            await db.scalar(select(func.count()).select_from(ActivityLog).where(ActivityLog.action.like("chat.%"))) == 0
        )


async def test_a_prompt_with_no_model_provider_says_why_and_reaches_no_agent(
    chat_client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], fake_opencode: FakeOpenCode
) -> None:
    # Without any provider OpenCode falls back to its hosted default, which a sandbox cannot reach:
    # the reply would spin in retries forever. The user is told why, and what to set up, at once.
    headers, user = await new_user(chat_client)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user)
    url = chat_url(sandbox, f"/sessions/{session}/messages")
    error = assert_error(await chat_client.post(url, json={"text": "hi"}, headers=headers), 409, "no_model_provider")
    assert "/api/users/me/providers" in error["message"] and "opencode/config" in error["message"]
    assert [name for name, _ in fake_opencode.calls if name == "prompt_async"] == []

    # An OpenAI-compatible endpoint of the user's own, in the OpenCode config, is a model source.
    own = {"provider": {"local": {"npm": "@ai-sdk/openai-compatible", "options": {"baseURL": "http://llm:8080/v1"}}}}
    saved = await chat_client.put("/api/users/me/opencode/config", json={"settings": own}, headers=headers)
    assert saved.status_code == 200, saved.text
    assert (await chat_client.post(url, json={"text": "hi"}, headers=headers)).status_code == 202

    # So is a provider key alone (another user, nothing in their config).
    headers2, user2 = await new_user(chat_client)
    sandbox2 = await new_sandbox(sessions, user2)
    session2 = await new_session(sessions, sandbox2, user2)
    url2 = chat_url(sandbox2, f"/sessions/{session2}/messages")
    assert_error(await chat_client.post(url2, json={"text": "hi"}, headers=headers2), 409, "no_model_provider")
    await add_provider_key(chat_client, headers2)
    assert (await chat_client.post(url2, json={"text": "hi"}, headers=headers2)).status_code == 202


async def add_provider_key(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Give the user an API key, so their agent has a model to answer with."""
    response = await client.put("/api/users/me/providers/openai", json={"api_key": "sk-test-key"}, headers=headers)
    assert response.status_code in (200, 201), response.text


# --- Helpers -----------------------------------------------------------------------------------------


def test_message_ids_match_opencode_and_ascend() -> None:
    # The id OpenCode gave the first message of the captured session at 1795671935722 ms.
    assert chat_routes.new_message_id(1795671935722).startswith("msg_216634aea001")
    ids = [chat_routes.new_message_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("stored", "domain", "internal"),
    [
        ("http://localhost:49153", "localhost", "http://127.0.0.1:49153"),
        ("http://127.0.0.1:49153", "127.0.0.1", "http://127.0.0.1:49153"),
        ("http://localhost", "localhost", None),
        (None, "localhost", None),
        ("https://abc-api.example.com", "example.com", None),
    ],
)
def test_internal_opencode_url(stored: str | None, domain: str, internal: str | None) -> None:
    assert chat_routes.internal_opencode_url(stored, domain) == internal
