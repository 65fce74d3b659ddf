"""``/api/account``: profile counts, the complete streamed export, and a deletion request refused."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.settings import Settings
from agentpod.store import account
from agentpod.store.sandboxes import delete_row
from agentpod.store.tables import ActivityLog, ChatMessage, ChatSession, User
from api.app import create_app
from api.routes import ROUTERS
from api.routes import account as account_routes
from api.routes import opencode_config as opencode_routes
from api.routes import providers as provider_routes
from tests.helpers import assert_error, auth_header, sign_up

SECRET = "sk-test-EXPORT-0123456789-wxyz"
MCP_SECRET = "ghp_MCPSECRET0123456789abcd"
MESSAGES = 1203  # more than two export batches
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest_asyncio.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with the account, provider and OpenCode routes mounted (until they join ``ROUTERS``)."""
    app = create_app(settings)
    for router in (account_routes.router, provider_routes.router, opencode_routes.router):
        if router not in ROUTERS:
            app.include_router(router)
    async with app.router.lifespan_context(app):
        yield app


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def _chat(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str, user_id: str, sizes: list[int]
) -> list[list[str]]:
    """Chat sessions with ``sizes`` messages each; returns their message ids in conversation order."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids: list[list[str]] = []
    async with sessions() as db:
        for number, size in enumerate(sizes):
            session = ChatSession(
                sandbox_id=sandbox_id, user_id=user_id, source="opencode", opencode_session_id=f"ses_{number}"
            )
            db.add(session)
            await db.flush()
            rows = [
                ChatMessage(
                    session_id=session.id,
                    external_message_id=f"msg_{number}_{index:05d}",
                    source="opencode",
                    role="user" if index % 2 == 0 else "assistant",
                    text=f"message {index} of session {number}",
                    content={"parts": [{"type": "text", "text": f"message {index}"}]},
                    status="complete",
                    upstream_created_at=start + timedelta(seconds=index),
                )
                for index in range(size)
            ]
            db.add_all(rows)
            await db.flush()
            ids.append([row.id for row in rows])
        await db.commit()
    return ids


async def _filled_account(client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    headers, user_id = await _user(client)
    sandbox = (
        await client.post("/api/v2/sandboxes", json={"name": "Demo", "repo_name": "demo"}, headers=headers)
    ).json()
    message_ids = await _chat(sessions, sandbox["id"], user_id, [MESSAGES, 3])
    assert (await client.patch("/api/users/me/preferences", json={"theme_mode": "dark"}, headers=headers)).is_success
    assert (await client.put("/api/users/me/providers/openai", json={"api_key": SECRET}, headers=headers)).is_success
    settings = {"mcp": {"github": {"type": "local", "environment": {"GITHUB_TOKEN": MCP_SECRET}}}}
    put = await client.put(
        "/api/users/me/opencode/config", json={"settings": settings, "agents_md": "# Hi"}, headers=headers
    )
    assert put.is_success
    agent = {"type": "agent", "name": "reviewer", "content": "Review it."}
    assert (await client.post("/api/users/me/opencode/files", json=agent, headers=headers)).is_success
    return {"headers": headers, "user_id": user_id, "sandbox": sandbox, "message_ids": message_ids}


async def test_the_export_holds_everything_the_user_owns_and_no_secret(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    owner = await _filled_account(client, sessions)
    other = await _filled_account(client, sessions)  # must not leak into the first user's export
    headers = owner["headers"]

    counts = (await client.get("/api/account", headers=headers)).json()
    assert counts["user"]["id"] == owner["user_id"]
    assert counts["counts"] == {
        "sandboxes": 1,
        "chat_sessions": 2,
        "chat_messages": MESSAGES + 3,
        "providers": 1,
        "opencode_files": 1,
        # sandbox.create, provider.configure, opencode.config_update, opencode.file_create (auth: other issue)
        "activity": counts["counts"]["activity"],
    }
    assert counts["counts"]["activity"] >= 4

    response = await client.get("/api/account/data-export", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"].startswith('attachment; filename="agentpod-account-')
    raw = response.text
    for secret in (SECRET, MCP_SECRET, "wxyz", "password_hash", "token_hash", "v1:"):
        assert secret not in raw, f"{secret!r} leaked into the export"
    assert other["user_id"] not in raw and other["sandbox"]["id"] not in raw
    assert SECRET not in caplog.text and MCP_SECRET not in caplog.text

    document = json.loads(raw)
    assert (document["format"], document["version"]) == ("agentpod-account-export", 1)
    assert document["profile"]["id"] == owner["user_id"]
    assert [s["id"] for s in document["sandboxes"]] == [owner["sandbox"]["id"]]
    exported = [[m["id"] for m in session["messages"]] for session in document["chat_sessions"]]
    assert exported == owner["message_ids"]  # every message, in conversation order
    first = document["chat_sessions"][0]["messages"][0]
    assert first["text"] == "message 0 of session 0" and first["content"]["parts"][0]["text"] == "message 0"
    assert document["preferences"]["theme_mode"] == "dark"
    assert [h["version"] for h in document["preferences_history"]] == [1, 2]
    assert [(p["provider_id"], p["is_default"]) for p in document["providers"]] == [("openai", True)]
    assert set(document["providers"][0]) >= {"provider_id", "auth_type", "created_at"}
    assert document["opencode_config"]["settings"]["mcp"]["github"]["environment"] == {"GITHUB_TOKEN": "****abcd"}
    assert document["opencode_config"]["agents_md"] == "# Hi"
    assert [(f["type"], f["name"], f["content"]) for f in document["opencode_files"]] == [
        ("agent", "reviewer", "Review it.")
    ]
    assert {"sandbox.create", "provider.configure", "opencode.config_update"} <= {
        row["action"] for row in document["activity"]
    }
    assert len(document["devices"]) == 1 and "ip_address" in document["devices"][0]


async def test_a_deleted_sandboxs_chats_stay_in_the_counts_and_the_export(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await _filled_account(client, sessions)
    headers, sandbox = owner["headers"], owner["sandbox"]
    async with sessions() as db:
        await delete_row(db, sandbox["id"])  # what the sandbox's workflow does last
        await db.commit()

    counts = (await client.get("/api/account", headers=headers)).json()["counts"]
    assert (counts["sandboxes"], counts["chat_sessions"], counts["chat_messages"]) == (0, 2, MESSAGES + 3)
    document = json.loads((await client.get("/api/account/data-export", headers=headers)).text)
    assert document["sandboxes"] == []
    exported = document["chat_sessions"]
    assert [[m["id"] for m in session["messages"]] for session in exported] == owner["message_ids"]
    assert {(s["sandbox_id"], s["deleted_sandbox_id"], s["deleted_sandbox_name"]) for s in exported} == {
        (None, sandbox["id"], "Demo")
    }
    assert all(s["sandbox_deleted_at"] for s in exported)


@sqlite_only
async def test_a_wrong_confirmation_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    for phrase in ("delete my account", "DELETE MY ACCOUNT!", "", "DELETE"):
        wrong = await client.request("DELETE", "/api/account", json={"confirmation": phrase}, headers=headers)
        assert_error(wrong, 400, "confirmation_mismatch")
    missing = await client.request("DELETE", "/api/account", json={}, headers=headers)
    assert_error(missing, 422, "validation_error")
    assert_error(await client.request("DELETE", "/api/account", json={"confirmation": "DELETE MY ACCOUNT"}), 401)
    async with sessions() as db:
        user = await db.get(User, user_id)
        trail = (await db.scalars(select(ActivityLog.action).where(ActivityLog.action.like("account.%")))).all()
    assert user is not None and user.locked_at is None and trail == []
    assert (await client.get("/api/account", headers=headers)).status_code == 200  # the token still works


@sqlite_only
async def test_deletion_ids_are_unforgeable(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, user_id = await _user(client)
    real = account_routes.deletion_id(app.state.ctx.keyring, user_id)
    assert account_routes.deletion_user(app.state.ctx.keyring, real) == user_id
    tampered = real[:-1] + ("y" if real.endswith("x") else "x")  # one character off, never the real id
    for forged in (user_id, f"{user_id}.{'A' * 32}", f"account-deletion-{user_id}", tampered, "x.y"):
        assert_error(await client.get(f"/api/account/deletion/{forged}"), 404, "deletion_not_found")


@sqlite_only
async def test_a_deletion_request_while_temporal_is_down_is_a_503(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    answer = await client.request("DELETE", "/api/account", json={"confirmation": "DELETE MY ACCOUNT"}, headers=headers)
    assert_error(answer, 503, "temporal_unavailable")
    async with sessions() as db:
        user = await db.get(User, user_id)
    assert user is not None and user.locked_at is None


async def test_the_deletion_steps_in_the_database_are_idempotent(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The saga's database steps on both databases, each run twice (a retry after a lost completion)."""
    filled = await _filled_account(client, sessions)
    user_id, sandbox_id = filled["user_id"], filled["sandbox"]["id"]
    bystander = await _filled_account(client, sessions)
    before = await _everything_of(sessions, bystander["user_id"])

    async with sessions() as db:
        assert await account.lock(db, user_id) == 1
        assert await account.lock(db, user_id) == 0
        assert await account.anonymize_activity(db, user_id) >= 4
        assert await account.anonymize_activity(db, user_id) == 0
        await db.flush()
        # Nothing the user typed survives in the trail (the sandbox's name was in sandbox.create's metadata).
        kept = (await db.scalars(select(ActivityLog.metadata_).where(ActivityLog.anonymized.is_(True)))).all()
        assert kept and filled["sandbox"]["name"] not in json.dumps(list(kept))
        assert not await account.delete_user(db, user_id)  # a sandbox row is still there
        await db.commit()
    assert_error(await client.get("/api/account", headers=filled["headers"]), 401)
    async with sessions() as db:
        await delete_row(db, sandbox_id)  # what its workflow does last: the sandbox's chats stay the user's
        await db.commit()
        first = await account.delete_data(db, user_id)
        assert await account.delete_data(db, user_id) == dict.fromkeys(first, 0)
        # The chats kept from the deleted sandbox go with the account.
        assert (first["chat_sessions"], first["chat_messages"]) == (2, MESSAGES + 3)
        assert (first["provider_keys"], first["opencode_files"], first["preferences_history"]) == (1, 1, 2)
        assert await account.delete_user(db, user_id) and await account.delete_user(db, user_id)
        await account.record_deletion(db, "event-1", {"sandboxes": 1})
        await account.record_deletion(db, "event-1", {"sandboxes": 1})
        await db.commit()
        assert await account.references(db, user_id) == []
        records = (await db.scalars(select(ActivityLog).where(ActivityLog.action == "account.delete"))).all()
    assert [(r.user_id, r.anonymized, r.metadata_) for r in records] == [(None, True, {"removed": {"sandboxes": 1}})]
    assert await _everything_of(sessions, bystander["user_id"]) == before  # nobody else lost anything


async def _everything_of(sessions: async_sessionmaker[AsyncSession], user_id: str) -> dict[str, int]:
    async with sessions() as db:
        return {**await account.counts(db, user_id), "references": len(await account.references(db, user_id))}
