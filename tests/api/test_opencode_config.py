"""OpenCode config through the API: MCP secrets encrypted and masked, files with limits, per user."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from agentpod.security.keyring import Keyring
from agentpod.settings import Settings
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from agentpod.store.opencode_config import MAX_FILES
from agentpod.store.tables import ActivityLog, UserOpencodeConfig
from api.app import create_app
from api.routes import ROUTERS
from api.routes import opencode_config as opencode_routes
from tests.helpers import assert_error, auth_header, sign_up

CONFIG = "/api/users/me/opencode/config"
FILES = "/api/users/me/opencode/files"
GITHUB_TOKEN = "ghp_SECRETTOKEN0123456789abcd"
BEARER = "Bearer SECRET-HEADER-9876543210-wxyz"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _settings(token: str = GITHUB_TOKEN, bearer: str = BEARER) -> dict[str, Any]:
    return {
        "$schema": "https://opencode.ai/config.json",
        "model": "anthropic/claude-sonnet-4-5",
        "mcp": {
            "github": {"type": "local", "command": ["gh-mcp"], "environment": {"GITHUB_TOKEN": token, "DEBUG": "1"}},
            "docs": {"type": "remote", "url": "https://mcp.example.com", "headers": {"Authorization": bearer}},
        },
    }


@pytest_asyncio.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with the OpenCode config routes mounted (until they join ``ROUTERS``)."""
    app = create_app(settings)
    if opencode_routes.router not in ROUTERS:
        app.include_router(opencode_routes.router)
    async with app.router.lifespan_context(app):
        yield app


def _provider(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> EncryptedSecretsProvider:
    keyring: Keyring = app.state.ctx.keyring
    return EncryptedSecretsProvider(sessions, keyring)


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def test_mcp_secrets_are_encrypted_masked_and_kept_across_a_round_trip(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    empty = (await client.get(CONFIG, headers=headers)).json()
    assert empty == {"settings": {}, "agents_md": None, "updated_at": None}

    saved = await client.put(CONFIG, json={"settings": _settings(), "agents_md": "# Be brief"}, headers=headers)
    assert saved.status_code == 200, saved.text
    shown = saved.json()
    mcp = shown["settings"]["mcp"]
    assert mcp["github"]["environment"] == {"GITHUB_TOKEN": "****abcd", "DEBUG": "****"}
    assert mcp["docs"]["headers"] == {"Authorization": "****wxyz"}
    assert shown["settings"]["model"] == "anthropic/claude-sonnet-4-5" and shown["agents_md"] == "# Be brief"
    assert (await client.get(CONFIG, headers=headers)).json() == shown
    async with sessions() as db:
        row = await db.scalar(select(UserOpencodeConfig).where(UserOpencodeConfig.user_id == user_id))
    assert row is not None and row.secrets_encrypted is not None and row.secrets_encrypted.startswith("v1:")
    stored = str(row.settings) + row.secrets_encrypted
    assert GITHUB_TOKEN not in stored and BEARER not in stored

    # The app edits what it read and sends it back: unchanged masks keep the stored secrets.
    edited = shown["settings"] | {"model": "openai/gpt-5"}
    edited["mcp"]["docs"]["headers"]["Authorization"] = "Bearer NEW-HEADER-000000000000"
    assert (await client.put(CONFIG, json={"settings": edited}, headers=headers)).status_code == 200
    config = (await _provider(app, sessions).agent_credentials(user_id)).opencode_config
    assert config is not None and config["model"] == "openai/gpt-5"
    assert config["mcp"]["github"]["environment"] == {"GITHUB_TOKEN": GITHUB_TOKEN, "DEBUG": "1"}
    assert config["mcp"]["docs"]["headers"] == {"Authorization": "Bearer NEW-HEADER-000000000000"}
    assert (await client.get(CONFIG, headers=headers)).json()["agents_md"] is None  # PUT replaces both

    # A server removed takes its secrets with it.
    del edited["mcp"]["github"]
    await client.put(CONFIG, json={"settings": edited}, headers=headers)
    config = (await _provider(app, sessions).agent_credentials(user_id)).opencode_config
    assert config is not None and set(config["mcp"]) == {"docs"}


async def test_files_crud_is_per_user(client: httpx.AsyncClient) -> None:
    ada, _ = await _user(client)
    bob, _ = await _user(client)
    reviewer = {"type": "agent", "name": "reviewer", "content": "---\ndescription: Reviews\n---\nReview the diff."}
    created = await client.post(FILES, json=reviewer, headers=ada)
    assert created.status_code == 201, created.text
    file = created.json()
    assert (file["type"], file["name"], file["extension"], file["size"]) == (
        "agent",
        "reviewer",
        "md",
        len(reviewer["content"]),
    )
    command = await client.post(
        FILES, json={"type": "command", "name": "test", "content": "Run the tests"}, headers=ada
    )
    assert command.status_code == 201
    assert_error(await client.post(FILES, json=reviewer, headers=ada), 409, "duplicate_file")
    # Same name, other type, or other user: fine.
    assert (await client.post(FILES, json=reviewer | {"type": "command"}, headers=ada)).status_code == 201
    assert (await client.post(FILES, json=reviewer, headers=bob)).status_code == 201

    listed = (await client.get(FILES, headers=ada)).json()["files"]
    assert [(f["type"], f["name"]) for f in listed] == [
        ("agent", "reviewer"),
        ("command", "reviewer"),
        ("command", "test"),
    ]
    assert all("content" not in f for f in listed)
    url = f"{FILES}/{file['id']}"
    assert (await client.get(url, headers=ada)).json()["content"] == reviewer["content"]
    assert_error(await client.get(url, headers=bob), 404, "file_not_found")
    assert_error(await client.delete(url, headers=bob), 404, "file_not_found")

    renamed = await client.put(url, json={"name": "critic", "content": "Be harsh."}, headers=ada)
    assert renamed.status_code == 200 and (renamed.json()["name"], renamed.json()["content"]) == ("critic", "Be harsh.")
    assert (await client.put(url, json={"name": "critic", "content": "Be harsh."}, headers=ada)).status_code == 200
    clash = await client.put(f"{FILES}/{command.json()['id']}", json={"name": "reviewer", "content": "x"}, headers=ada)
    assert_error(clash, 409, "duplicate_file")

    assert (await client.delete(url, headers=ada)).status_code == 204
    assert_error(await client.get(url, headers=ada), 404, "file_not_found")
    assert len((await client.get(FILES, headers=bob)).json()["files"]) == 1


@sqlite_only
async def test_size_and_shape_limits(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    bodies: list[dict[str, Any]] = [
        {"settings": {"instructions": ["x" * (64 * 1024)]}},  # over 64 KiB as JSON
        {"settings": {"mcp": {"github": {"environment": {"PORT": 8080}}}}},  # secrets are strings
        {"settings": {"mcp": []}},
        {"settings": {}, "agents_md": "x" * 65537},
        {"x": 1},
    ]
    for body in bodies:
        assert_error(await client.put(CONFIG, json=body, headers=headers), 422, "validation_error")
    for file in (
        {"type": "plugin", "name": "evil", "content": "export default {}"},  # code never runs from here
        {"type": "agent", "name": "../escape", "content": "x"},
        {"type": "agent", "name": ".hidden", "content": "x"},
        {"type": "agent", "name": "big", "content": "x" * 65537},
    ):
        assert_error(await client.post(FILES, json=file, headers=headers), 422, "validation_error")
    for index in range(MAX_FILES):
        created = await client.post(
            FILES, json={"type": "command", "name": f"c{index}", "content": "x"}, headers=headers
        )
        assert created.status_code == 201
    over = await client.post(FILES, json={"type": "command", "name": "one-more", "content": "x"}, headers=headers)
    assert_error(over, 409, "file_limit_reached")


@sqlite_only
async def test_secrets_stay_out_of_logs_and_the_audit_trail_and_tampering_is_loud(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers, user_id = await _user(client)
    shown = (await client.put(CONFIG, json={"settings": _settings()}, headers=headers)).json()
    assert GITHUB_TOKEN not in caplog.text and BEARER not in caplog.text
    async with sessions() as db:
        trail = (
            await db.execute(
                select(ActivityLog.action, ActivityLog.metadata_).where(
                    ActivityLog.user_id == user_id, ActivityLog.action.like("opencode.%")
                )
            )
        ).all()
    assert [action for action, _ in trail] == ["opencode.config_update"]
    assert GITHUB_TOKEN not in str(trail)

    async with sessions() as db:
        blob = await db.scalar(
            select(UserOpencodeConfig.secrets_encrypted).where(UserOpencodeConfig.user_id == user_id)
        )
        assert blob is not None
        tampered = blob[:-3] + ("A" if blob[-3] != "A" else "B") + blob[-2:]
        await db.execute(
            update(UserOpencodeConfig).where(UserOpencodeConfig.user_id == user_id).values(secrets_encrypted=tampered)
        )
        await db.commit()
    with pytest.raises(ApplicationError, match="MCP secrets") as raised:
        await _provider(app, sessions).agent_credentials(user_id)
    assert raised.value.non_retryable
    # Sending masks back cannot keep secrets nobody can read: say so instead of storing the masks.
    assert_error(
        await client.put(CONFIG, json={"settings": shown["settings"]}, headers=headers), 409, "secrets_unreadable"
    )
    # Sending every secret in full repairs it.
    assert (await client.put(CONFIG, json={"settings": _settings()}, headers=headers)).status_code == 200
    assert (await _provider(app, sessions).agent_credentials(user_id)).opencode_config == _settings()
