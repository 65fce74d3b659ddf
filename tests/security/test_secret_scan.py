"""Secrets go in through the API and never come out: not in a response, a log line, an export or a
database column.

A recognisable provider key, MCP header token and password are sent through every route that takes
them (also in requests that fail validation or conflict), with every logger at DEBUG and the process's
stdout/stderr captured. Then the account export, the activity export (JSON and CSV), every response
body seen and every row of every table are searched for the raw values. The bearer token may appear
only in the responses that hand it out.

Docker is covered elsewhere: the keys reach the agent but not ``docker inspect``
(``tests/workflows/test_sandbox_lifecycle.py::test_provider_keys_reach_the_agent_but_not_docker_inspect``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store.base import Base
from tests.security.conftest import SECRET_ANTHROPIC_KEY, SECRET_API_KEY, SECRET_MCP_TOKEN, SECRET_PASSWORD

TOKEN_ROUTES = {"/api/auth/sign-up", "/api/auth/sign-in", "/api/auth/refresh"}


async def test_secrets_never_leave_through_responses_logs_exports_or_rows(
    app: FastAPI,
    sessions: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    seen: list[tuple[str, int, str]] = []
    email = f"secret-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:

        async def call(method: str, url: str, expect: int, body: Any = None, token: str | None = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.request(method, url, json=body, headers=headers)
            seen.append((url, response.status_code, response.text))
            assert response.status_code == expect, (method, url, response.text)
            return response.json() if response.content and "json" in response.headers["content-type"] else None

        signed_up = await call(
            "POST", "/api/auth/sign-up", 201, {"email": email, "password": SECRET_PASSWORD, "name": "Secretive"}
        )
        token = signed_up["token"]
        # Failures carrying the secrets: a duplicate, a bad email, a wrong password, unknown fields.
        await call("POST", "/api/auth/sign-up", 409, {"email": email, "password": SECRET_PASSWORD, "name": "Again"})
        await call("POST", "/api/auth/sign-up", 422, {"email": "nope", "password": SECRET_PASSWORD, "name": "X"})
        await call("POST", "/api/auth/sign-in", 401, {"email": email, "password": SECRET_PASSWORD + "-wrong"})
        await call("POST", "/api/auth/sign-in", 422, {"email": email, "password": SECRET_PASSWORD, "otp": 1})
        signed_in = await call("POST", "/api/auth/sign-in", 200, {"email": email, "password": SECRET_PASSWORD})

        providers = "/api/users/me/providers"
        await call("PUT", f"{providers}/openai", 201, {"api_key": SECRET_API_KEY}, token)
        await call("PUT", f"{providers}/openai", 200, {"api_key": SECRET_API_KEY, "is_default": True}, token)
        await call("PUT", f"{providers}/anthropic", 422, {"api_key": SECRET_API_KEY, "extra": True}, token)
        await call("PUT", f"{providers}/anthropic", 422, {"api_key": SECRET_API_KEY, "is_default": "maybe"}, token)
        await call("PUT", f"{providers}/Bad Id", 422, {"api_key": SECRET_API_KEY}, token)
        await call("PUT", f"{providers}/mistral", 422, {"api_key": SECRET_API_KEY * 200}, token)  # over the limit
        await call("PUT", f"{providers}/anthropic", 201, {"api_key": SECRET_ANTHROPIC_KEY}, token)
        listed = await call("GET", providers, 200, token=token)
        hints = {provider["provider_id"]: provider["key_hint"] for provider in listed["providers"]}
        assert hints == {"anthropic": SECRET_ANTHROPIC_KEY[-4:], "openai": SECRET_API_KEY[-4:]}
        await call("GET", f"{providers}/openai", 200, token=token)

        mcp = {
            "mcp": {
                "tools": {
                    "type": "remote",
                    "url": "https://mcp.example.com",
                    "headers": {"Authorization": f"Bearer {SECRET_MCP_TOKEN}"},
                }
            }
        }
        await call("PUT", "/api/users/me/opencode/config", 200, {"settings": mcp, "agents_md": "be careful"}, token)
        await call("GET", "/api/users/me/opencode/config", 200, token=token)
        await call("PUT", "/api/users/me/opencode/config", 422, {"settings": {"mcp": 1}, "x": SECRET_MCP_TOKEN}, token)
        created = await call("POST", "/api/v2/sandboxes", 201, {"name": "secrets", "repo_name": "secrets"}, token)
        # Both keys make their ACP agents available (Claude Code: Anthropic; Codex: OpenAI).
        agents = await call("GET", f"/api/v2/sandboxes/{created['id']}/acp/agents", 200, token=token)
        assert all(agent["available"] for agent in agents["agents"])

        refreshed = await call("POST", "/api/auth/refresh", 200, token=signed_in["token"])
        await app.state.audit_writer.drain()
        await call("GET", "/api/account", 200, token=token)
        await call("GET", "/api/users/me/activity", 200, token=token)
        bearer = {"Authorization": f"Bearer {token}"}
        exports = {
            "account export": await client.get("/api/account/data-export", headers=bearer),
            "activity export (json)": await client.get("/api/users/me/activity/export", headers=bearer),
            "activity export (csv)": await client.get("/api/users/me/activity/export?format=csv", headers=bearer),
        }
        await call("POST", "/api/auth/sign-out", 204, token=token)

    for name, export in exports.items():
        assert export.status_code == 200, (name, export.text)
        seen.append((name, 200, export.text))
    # The exports really hold the account: the provider by name, the actions that handled the key.
    assert "openai" in exports["account export"].text
    assert "provider.configure" in exports["activity export (json)"].text

    tokens = [signed_up["token"], signed_in["token"], refreshed["token"]]
    secrets = {
        "provider key": SECRET_API_KEY,
        "Anthropic key": SECRET_ANTHROPIC_KEY,
        "MCP token": SECRET_MCP_TOKEN,
        "password": SECRET_PASSWORD,
    }
    for where, status, text in seen:
        for name, secret in secrets.items():
            assert secret not in text, f"{name} in the answer of {where} ({status})"
        if where not in TOKEN_ROUTES:
            for issued in tokens:
                assert issued not in text, f"a bearer token in the answer of {where} ({status})"

    captured = capfd.readouterr()
    logs = "\n".join([caplog.text, captured.out, captured.err])
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG and caplog.records  # it really listened
    for name, secret in {**secrets, **{f"token {i}": issued for i, issued in enumerate(tokens)}}.items():
        assert secret not in logs, f"{name} in the logs"

    # At rest: keys and MCP values are encrypted, the password is an argon2 hash, tokens are SHA-256.
    async with sessions() as db:
        for table in Base.metadata.sorted_tables:
            for row in (await db.execute(select(table))).all():
                text = repr(tuple(row))
                for name, secret in {**secrets, **{f"token {i}": issued for i, issued in enumerate(tokens)}}.items():
                    assert secret not in text, f"{name} stored in clear in {table.name}"
