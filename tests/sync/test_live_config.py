"""A running sandbox gets its user's changed instructions, commands and keys within seconds, no restart.

API, worker, Temporal, Docker and OpenCode in the container, the agent on the fake LLM: what the model
is sent shows what the agent was told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.secrets import SecretsProvider
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.settings import Settings
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from tests.docker_helpers import use_fake_llm_in_sandboxes
from tests.fakes.fake_llm import FakeLLM
from tests.helpers import eventually
from tests.sync.conftest import prompt_and_wait
from tests.workflows import conftest as workflow_stack
from tests.workflows.conftest import Stack

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

stack = workflow_stack.stack
CONFIG = "/api/users/me/opencode"
FIRST = "Sign every answer with the word alpha-7."
SECOND = "Sign every answer with the word omega-9 instead."


@pytest.fixture
def secrets_provider(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, bridge_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> SecretsProvider:
    """The real key store (the dev key the stack's API loads from the same directory)."""
    use_fake_llm_in_sandboxes(monkeypatch, bridge_llm.port)
    keyring = load_keyring(Settings(dev_mode=True, data_dir=tmp_path / "var"))
    return EncryptedSecretsProvider(sessions, keyring)


def _system_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")


async def _sandbox(stack: Stack, sandbox_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/api/v2/sandboxes/{sandbox_id}", headers=stack.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_changes_reach_a_running_agent_without_a_restart(stack: Stack, bridge_llm: FakeLLM) -> None:
    put = await stack.client.put(f"{CONFIG}/config", json={"settings": {}, "agents_md": FIRST}, headers=stack.headers)
    assert put.status_code == 200, put.text
    sandbox = await stack.create_sandbox(auto_start=True)
    assert sandbox["status"] == "running" and sandbox["config_pending"] is False, sandbox
    container = stack.docker.containers.get(f"agentpod-{sandbox['id']}")
    started_at = container.attrs["State"]["StartedAt"]
    passwords = opencode_passwords(load_keyring(stack.settings), sandbox["id"])
    url = str(sandbox["opencode_url"])

    async with OpenCodeClient(url, passwords) as agent:
        session = await agent.create_session()
        bridge_llm.clear()
        await prompt_and_wait(agent, session["id"], "first question")
        assert FIRST in _system_text(bridge_llm.requests_for("first question")[0].body)

        # The user rewrites AGENTS.md, adds a command and a key: flagged at once, applied within seconds.
        changed = await stack.client.put(
            f"{CONFIG}/config", json={"settings": {}, "agents_md": SECOND}, headers=stack.headers
        )
        assert changed.status_code == 200, changed.text
        command = {"type": "command", "name": "ship", "content": "---\ndescription: Ship\n---\nShip build 42 now.\n"}
        assert (await stack.client.post(f"{CONFIG}/files", json=command, headers=stack.headers)).status_code == 201
        key = {"api_key": "sk-live-change-test-0123456789"}
        assert (await stack.client.put("/api/users/me/providers/openai", json=key, headers=stack.headers)).is_success
        assert (await _sandbox(stack, sandbox["id"]))["config_pending"] is True

        async def applied() -> bool:
            return (await _sandbox(stack, sandbox["id"]))["config_pending"] is False

        await eventually(applied, timeout=30, what="the running sandbox to apply the changed config")
        bridge_llm.clear()
        await prompt_and_wait(agent, session["id"], "second question")
        system = _system_text(bridge_llm.requests_for("second question")[0].body)
        assert SECOND in system and FIRST not in system
        assert "ship" in {c["name"] for c in await agent._json("GET", "/command")}
        assert "openai" in (await agent._json("GET", "/provider"))["connected"]

        # The key is deleted: the agent loses it too.
        assert (await stack.client.delete("/api/users/me/providers/openai", headers=stack.headers)).status_code == 204
        await eventually(applied, timeout=30, what="the key's removal to be applied")

        async def key_gone() -> bool:
            return "openai" not in (await agent._json("GET", "/provider"))["connected"]

        await eventually(key_gone, timeout=10, what="the deleted key to leave the agent")
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started_at  # no restart: the same container process
