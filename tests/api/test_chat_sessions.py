"""``/api/v2/chat/sessions``: the user's chats across sandboxes, kept when a sandbox is deleted, until
purged; archive and unarchive; and ``last_accessed_at`` written by prompts and starts, coarsely."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.sandbox import SandboxTransition
from agentpod.store.base import utcnow
from agentpod.store.sandboxes import delete_row
from agentpod.store.tables import ActivityLog, ChatMessage, ChatSession, Sandbox
from api import deps
from api.sandbox_workflows import SandboxTransitions
from tests.api.test_chat_read import (
    T0,
    FakeOpenCode,
    add_messages,
    add_provider_key,
    chat_url,
    inject,
    new_sandbox,
    new_session,
    new_user,
)
from tests.helpers import assert_error

BASE = "/api/v2/chat/sessions"
HOUR = timedelta(hours=1)


async def sandbox_name(sessions: async_sessionmaker[AsyncSession], sandbox_id: str) -> str:
    """The sandbox's name."""
    async with sessions() as db:
        name = await db.scalar(select(Sandbox.name).where(Sandbox.id == sandbox_id))
    assert name is not None
    return name


async def new_acp_session(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str, user_id: str, **fields: Any
) -> str:
    """An ACP chat session row."""
    async with sessions() as db:
        fields.setdefault("acp_session_id", "acp-1")
        row = ChatSession(sandbox_id=sandbox_id, user_id=user_id, source="acp_gateway", **fields)
        db.add(row)
        await db.commit()
        return row.id


async def delete_sandbox(sessions: async_sessionmaker[AsyncSession], sandbox_id: str) -> None:
    """What the sandbox workflow's delete does last, once container and volumes are gone."""
    async with sessions() as db:
        await delete_row(db, sandbox_id)
        await db.commit()


async def actions(sessions: async_sessionmaker[AsyncSession], action: str) -> list[ActivityLog]:
    """The activity rows of ``action``, oldest first."""
    async with sessions() as db:
        query = select(ActivityLog).where(ActivityLog.action == action).order_by(ActivityLog.created_at)
        return list((await db.scalars(query)).all())


async def message_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    """Messages in the database, of anyone."""
    async with sessions() as db:
        return await db.scalar(select(func.count()).select_from(ChatMessage)) or 0


async def test_a_deleted_sandboxs_chats_stay_readable_with_its_name(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    doomed, live = await new_sandbox(sessions, user), await new_sandbox(sessions, user)
    doomed_name, live_name = await sandbox_name(sessions, doomed), await sandbox_name(sessions, live)
    opencode = await new_session(sessions, doomed, user, title="opencode chat", last_message_at=T0 + 3 * HOUR)
    acp = await new_acp_session(sessions, doomed, user, title="acp chat", last_message_at=T0 + 2 * HOUR)
    child = await new_session(sessions, doomed, user, title="subagent", parent_session_id=opencode)
    other = await new_session(sessions, live, user, title="live chat", last_message_at=T0 + HOUR)
    specs = [{"external_message_id": f"m{i}", "text": f"t{i}", "upstream_created_at": T0 + i * HOUR} for i in range(3)]
    for session in (opencode, acp, child):
        await add_messages(sessions, session, [dict(spec) for spec in specs])
    before = (await client.get(chat_url(doomed, f"/sessions/{opencode}/messages"), headers=headers)).json()

    await delete_sandbox(sessions, doomed)

    # The sandbox is gone (its own chat routes with it) but not its chats.
    assert_error(await client.get(chat_url(doomed, "/sessions"), headers=headers), 404, "sandbox_not_found")
    body = (await client.get(BASE, headers=headers)).json()
    assert [s["id"] for s in body["sessions"]] == [opencode, acp, other]
    assert (body["total"], body["next_cursor"]) == (3, None)
    by_id = {s["id"]: s for s in body["sessions"]}
    assert {key: by_id[opencode][key] for key in ("sandbox_id", "sandbox_name", "sandbox_exists")} == {
        "sandbox_id": doomed,
        "sandbox_name": doomed_name,
        "sandbox_exists": False,
    }
    assert by_id[opencode]["sandbox_deleted_at"] is not None and by_id[opencode]["child_count"] == 1
    assert (by_id[acp]["source"], by_id[acp]["sandbox_exists"]) == ("acp_gateway", False)
    assert (by_id[other]["sandbox_name"], by_id[other]["sandbox_exists"]) == (live_name, True)
    assert by_id[other]["sandbox_deleted_at"] is None

    # The same messages, in the same shape, as the sandbox's own route gave.
    after = (await client.get(f"{BASE}/{opencode}/messages", headers=headers)).json()
    assert after == before and [m["text"] for m in after["messages"]] == ["t0", "t1", "t2"]
    detail = (await client.get(f"{BASE}/{opencode}", headers=headers)).json()
    assert detail["session"]["sandbox_name"] == doomed_name
    assert [c["id"] for c in detail["children"]] == [child]
    assert [m["text"] for m in detail["messages"]] == ["t0", "t1", "t2"]

    # Filters: one sandbox (live or deleted), and live or deleted sandboxes.
    only_doomed = (await client.get(BASE, params={"sandbox_id": doomed}, headers=headers)).json()
    assert [s["id"] for s in only_doomed["sessions"]] == [opencode, acp]
    only_live = (await client.get(BASE, params={"sandbox_id": live}, headers=headers)).json()
    assert [s["id"] for s in only_live["sessions"]] == [other]
    deleted_only = (await client.get(BASE, params={"sandbox_exists": "false"}, headers=headers)).json()
    assert [s["id"] for s in deleted_only["sessions"]] == [opencode, acp]
    with_children = (await client.get(BASE, params={"include_children": "true"}, headers=headers)).json()
    assert with_children["total"] == 4


async def test_the_list_pages_across_sandboxes_without_gaps_or_repeats(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    boxes = [await new_sandbox(sessions, user) for _ in range(3)]
    made = [
        await new_session(sessions, boxes[n % 3], user, last_message_at=T0 + (n // 2) * HOUR if n % 4 else None)
        for n in range(11)
    ]
    await delete_sandbox(sessions, boxes[0])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(BASE, params=params, headers=headers)).json()
        assert page["total"] == 11
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    assert_error(await client.get(BASE, params={"cursor": "not-a-cursor"}, headers=headers), 400, "invalid_cursor")
    assert_error(await client.get(BASE, params={"limit": 101}, headers=headers), 422, "validation_error")


async def test_purging_a_kept_session_takes_its_messages_and_subagents_for_good(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    doomed, live = await new_sandbox(sessions, user), await new_sandbox(sessions, user)
    parent = await new_session(sessions, doomed, user)
    child = await new_session(sessions, doomed, user, parent_session_id=parent)
    grandchild = await new_session(sessions, doomed, user, parent_session_id=child)
    sibling = await new_session(sessions, doomed, user)
    living = await new_session(sessions, live, user)
    for session in (parent, child, grandchild, sibling, living):
        await add_messages(sessions, session, [{"external_message_id": "m1"}, {"external_message_id": "m2"}])
    await delete_sandbox(sessions, doomed)

    refused = assert_error(await client.delete(f"{BASE}/{parent}", headers=headers), 400, "purge_required")
    assert "purge=true" in refused["message"]
    not_confirmed = await client.delete(f"{BASE}/{parent}", params={"purge": "false"}, headers=headers)
    assert_error(not_confirmed, 400, "purge_required")
    assert_error(
        await client.delete(f"{BASE}/{living}", params={"purge": "true"}, headers=headers), 409, "sandbox_exists"
    )
    assert await message_count(sessions) == 10

    purged = await client.delete(f"{BASE}/{parent}", params={"purge": "true"}, headers=headers)
    assert purged.status_code == 200 and purged.json() == {"sessions_purged": 3, "messages_purged": 6}
    listed = (await client.get(BASE, params={"include_children": "true"}, headers=headers)).json()
    assert sorted(s["id"] for s in listed["sessions"]) == sorted([sibling, living])
    assert await message_count(sessions) == 4
    again = await client.delete(f"{BASE}/{parent}", params={"purge": "true"}, headers=headers)
    assert_error(again, 404, "chat_session_not_found")
    logged = await actions(sessions, "chat.session_purge")
    assert [(row.user_id, row.entity_id) for row in logged] == [(user, parent)]
    assert {key: logged[0].metadata_[key] for key in ("sandbox_id", "sessions", "messages")} == {
        "sandbox_id": doomed,
        "sessions": 3,
        "messages": 6,
    }


async def test_purging_a_deleted_sandboxs_chats_takes_only_those(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    _, someone = await new_user(client)
    doomed, other_doomed, live = [await new_sandbox(sessions, user) for _ in range(3)]
    theirs = await new_sandbox(sessions, someone)
    for sandbox, owner in ((doomed, user), (doomed, user), (other_doomed, user), (live, user), (theirs, someone)):
        session = await new_session(sessions, sandbox, owner)
        await add_messages(sessions, session, [{"external_message_id": "m1"}])
    for sandbox in (doomed, other_doomed, theirs):
        await delete_sandbox(sessions, sandbox)

    def purge(sandbox_id: str, confirm: bool = True) -> Any:
        params = {"sandbox_id": sandbox_id, **({"purge": "true"} if confirm else {})}
        return client.delete(BASE, params=params, headers=headers)

    assert_error(await purge(doomed, confirm=False), 400, "purge_required")
    assert_error(await purge(live), 409, "sandbox_exists")
    assert_error(await purge("no-such-sandbox"), 404, "sandbox_not_found")
    assert_error(await purge(theirs), 404, "sandbox_not_found")  # another user's: as if there were none
    assert_error(await client.delete(BASE, params={"purge": "true"}, headers=headers), 422, "validation_error")
    assert await message_count(sessions) == 5

    done = await purge(doomed)
    assert done.status_code == 200 and done.json() == {"sessions_purged": 2, "messages_purged": 2}
    remaining = (await client.get(BASE, headers=headers)).json()["sessions"]
    assert sorted(s["sandbox_id"] for s in remaining) == sorted([other_doomed, live])
    assert await message_count(sessions) == 3  # the other deleted sandbox's, the live one's, and theirs
    assert_error(await purge(doomed), 404, "sandbox_not_found")
    logged = await actions(sessions, "chat.sandbox_purge")
    assert [(row.user_id, row.entity_type, row.entity_id) for row in logged] == [(user, "sandbox", doomed)]
    assert (logged[0].metadata_["sessions"], logged[0].metadata_["messages"]) == (2, 2)


async def test_archive_and_unarchive_in_a_live_and_a_deleted_sandbox(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    live, doomed = await new_sandbox(sessions, user), await new_sandbox(sessions, user)
    live_session = await new_session(sessions, live, user)
    kept = await new_session(sessions, doomed, user)
    # Archived while its sandbox lived, then the sandbox went: it can still be brought back.
    assert (await client.delete(chat_url(doomed, f"/sessions/{kept}"), headers=headers)).status_code == 204
    await delete_sandbox(sessions, doomed)
    archived = (await client.get(BASE, params={"status": "archived"}, headers=headers)).json()
    assert [s["id"] for s in archived["sessions"]] == [kept]

    for _ in range(2):  # idempotent
        back = await client.post(f"{BASE}/{kept}/unarchive", headers=headers)
        assert back.status_code == 200 and back.json()["status"] == "active", back.text
    assert [
        s["id"]
        for s in (await client.get(BASE, params={"sandbox_exists": "false"}, headers=headers)).json()["sessions"]
    ] == [kept]
    hidden = await client.post(f"{BASE}/{kept}/archive", headers=headers)
    assert hidden.status_code == 200 and hidden.json()["status"] == "archived"

    # The inverse of a sandbox's DELETE .../sessions/{id}, on the sandbox's own routes.
    assert (await client.delete(chat_url(live, f"/sessions/{live_session}"), headers=headers)).status_code == 204
    for _ in range(2):
        restored = await client.post(chat_url(live, f"/sessions/{live_session}/unarchive"), headers=headers)
        assert restored.status_code == 200 and restored.json()["status"] == "active"
    listed = (await client.get(chat_url(live, "/sessions"), headers=headers)).json()
    assert [s["id"] for s in listed["sessions"]] == [live_session]

    unarchived = await actions(sessions, "chat.session_unarchive")
    assert [row.entity_id for row in unarchived] == [kept, live_session]  # once each: repeats change nothing
    assert [row.entity_id for row in await actions(sessions, "chat.session_archive")] == [kept, kept, live_session]


ROUTES = [
    ("GET", "/{session}", None),
    ("GET", "/{session}/messages", None),
    ("POST", "/{session}/archive", None),
    ("POST", "/{session}/unarchive", None),
    ("DELETE", "/{session}?purge=true", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_another_users_kept_sessions_are_404(
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    mine, _ = await new_user(client)
    _, other = await new_user(client)
    theirs = await new_sandbox(sessions, other)
    kept = await new_session(sessions, theirs, other, title="their secret chat", status="archived")
    await add_messages(sessions, kept, [{"external_message_id": "m1", "text": "their secret"}])
    await delete_sandbox(sessions, theirs)

    response = await client.request(method, BASE + path.format(session=kept), json=body, headers=mine)
    assert_error(response, 404, "chat_session_not_found")
    listed = (await client.get(BASE, params={"sandbox_id": theirs}, headers=mine)).json()
    assert listed == {"sessions": [], "next_cursor": None, "total": 0}
    async with sessions() as db:
        row = await db.get(ChatSession, kept)
    assert row is not None and row.status == "archived" and await message_count(sessions) == 1


async def test_a_prompt_stamps_last_accessed_at_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    inject(app, FakeOpenCode())
    headers, user = await new_user(client)
    await add_provider_key(client, headers)
    sandbox = await new_sandbox(sessions, user)
    session = await new_session(sessions, sandbox, user, opencode_session_id="ses_upstream")

    async def stamps() -> tuple[Any, Any]:
        async with sessions() as db:
            row = (
                await db.execute(select(Sandbox.last_accessed_at, Sandbox.updated_at).where(Sandbox.id == sandbox))
            ).one()
        return row[0], row[1]

    untouched, updated_at = await stamps()
    assert untouched is None
    url = chat_url(sandbox, f"/sessions/{session}/messages")
    assert (await client.post(url, json={"text": "one"}, headers=headers)).status_code == 202
    first, first_updated = await stamps()
    assert first is not None and first_updated == updated_at  # an access is not a change of the sandbox
    assert (await client.post(url, json={"text": "two"}, headers=headers)).status_code == 202
    assert (await stamps())[0] == first  # within the minute: no write
    shown = (await client.get(f"/api/v2/sandboxes/{sandbox}", headers=headers)).json()
    assert shown["last_accessed_at"] is not None

    async with sessions() as db:  # two minutes later
        await db.execute(
            update(Sandbox).where(Sandbox.id == sandbox).values(last_accessed_at=first - 2 * timedelta(minutes=1))
        )
        await db.commit()
    assert (await client.post(url, json={"text": "three"}, headers=headers)).status_code == 202
    assert (await stamps())[0] > first


async def test_a_start_stamps_last_accessed_at(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    class Started(SandboxTransitions):
        def __init__(self) -> None:
            self.asked: list[SandboxTransition] = []

        async def __call__(
            self, sandbox: Sandbox, update: SandboxTransition, *, changed_fields: list[str] | None = None
        ) -> bool:
            self.asked.append(update)
            return True

    started = Started()

    async def transitions() -> SandboxTransitions:
        return started

    app.dependency_overrides[deps.get_transitions] = transitions
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user, status="stopped")
    before = utcnow()
    response = await client.post(f"/api/v2/sandboxes/{sandbox}/start", headers=headers)
    assert response.status_code == 200, response.text
    assert started.asked == [SandboxTransition.START]
    async with sessions() as db:
        stamped = await db.scalar(select(Sandbox.last_accessed_at).where(Sandbox.id == sandbox))
    assert stamped is not None and stamped >= before


async def test_both_lists_filter_by_source_and_acp_agent(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    box = await new_sandbox(sessions, user)
    native = await new_session(sessions, box, user)
    claude = await new_acp_session(sessions, box, user, acp_agent_id="claude-code")
    codex = await new_acp_session(sessions, box, user, acp_agent_id="codex", acp_session_id="acp-2")

    async def listed(url: str, **params: str) -> list[str]:
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["sessions"])
        return sorted(s["id"] for s in body["sessions"])

    for url in (BASE, chat_url(box, "/sessions")):
        assert await listed(url) == sorted([native, claude, codex])
        assert await listed(url, source="opencode") == [native]
        assert await listed(url, source="acp_gateway") == sorted([claude, codex])
        assert await listed(url, agent_id="claude-code") == [claude]
        assert await listed(url, agent_id="codex", status="archived") == []
        assert_error(await client.get(url, params={"source": "telnet"}, headers=headers), 422, "validation_error")
