"""``GET /api/v2/sandboxes/{id}/acp/agents`` and agent availability: an agent needs its provider's key."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.api.test_chat_read import new_sandbox, new_user
from tests.helpers import assert_error


def agents_url(sandbox_id: str) -> str:
    return f"/api/v2/sandboxes/{sandbox_id}/acp/agents"


async def test_agents_are_listed_with_why_they_cannot_run_until_a_key_arrives(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user = await new_user(client)
    sandbox = await new_sandbox(sessions, user, status="stopped")

    response = await client.get(agents_url(sandbox), headers=headers)
    assert response.status_code == 200, response.text
    listed = {agent["id"]: agent for agent in response.json()["agents"]}
    assert list(listed) == ["opencode", "claude-code", "codex"]
    assert listed["opencode"]["available"] is True and listed["opencode"]["state"] == "stopped"
    claude = listed["claude-code"]
    assert claude["available"] is False and claude["provider"] == "anthropic"
    assert "PUT /api/users/me/providers/anthropic" in claude["unavailable_reason"]

    refused = await client.post(
        f"/api/v2/sandboxes/{sandbox}/acp/sessions", json={"agent_id": "claude-code"}, headers=headers
    )
    assert_error(refused, 409, "acp_agent_unavailable")
    unknown = await client.post(
        f"/api/v2/sandboxes/{sandbox}/acp/sessions", json={"agent_id": "gemini"}, headers=headers
    )
    assert_error(unknown, 404, "acp_not_found")

    put = await client.put("/api/users/me/providers/anthropic", json={"api_key": "sk-ant-test-key"}, headers=headers)
    assert put.status_code in (200, 201), put.text
    listed = {agent["id"]: agent for agent in (await client.get(agents_url(sandbox), headers=headers)).json()["agents"]}
    assert listed["claude-code"]["available"] is True and listed["claude-code"]["unavailable_reason"] is None
    assert listed["codex"]["available"] is False  # still no OpenAI key
    # Available now; the sandbox not running is the next thing to fix.
    stopped = await client.post(
        f"/api/v2/sandboxes/{sandbox}/acp/sessions", json={"agent_id": "claude-code"}, headers=headers
    )
    assert_error(stopped, 409, "sandbox_not_running")
    assert "sk-ant-test-key" not in response.text + stopped.text


async def test_another_users_sandbox_agents_are_404(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    _, owner = await new_user(client)
    sandbox = await new_sandbox(sessions, owner, status="stopped")
    intruder, _ = await new_user(client)
    assert_error(await client.get(agents_url(sandbox), headers=intruder), 404, "sandbox_not_found")
