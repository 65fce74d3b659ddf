"""The ACP end-to-end stack: the whole stack of tests/workflows (dev server, worker, API in-process, Docker)
with sandboxes from the real image, whose agents talk to fake model servers of ours through the sandbox
bridge: the OpenAI-compatible chat fake for OpenCode, an Anthropic Messages fake for Claude Code, an OpenAI
Responses fake for Codex. OpenCode is configured to *ask* before running bash (the other agents ask by
themselves), so tool calls wait for an answer given through our API. Keys come from the real key store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.secrets import SecretsProvider
from agentpod.security.keyring import load_keyring
from agentpod.settings import Settings
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from tests.docker_helpers import use_fake_llm_in_sandboxes
from tests.fakes._fake_server import FakeServer
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.fake_responses import FakeResponses
from tests.helpers import eventually
from tests.workflows import conftest as workflow_stack
from tests.workflows.conftest import Stack

BASE = "/api/v2/sandboxes"
TIMEOUT = 60.0
# SIGKILL every process of the gateway (the image has no pkill), printing their pids. The bracket keeps
# the pattern from matching this shell's own command line.
KILL_GATEWAY = (
    'for p in /proc/[0-9]*; do case "$(cat $p/cmdline 2>/dev/null | tr "\\0" " ")" in '
    '*agentpod-gatewa[y]*) kill -9 "${p#/proc/}" && echo "${p#/proc/}";; esac; done'
)

stack = workflow_stack.stack


@pytest.fixture(scope="module")
def model_servers() -> Iterator[dict[str, FakeServer]]:
    """The fake Anthropic and Responses servers on every interface (sandboxes reach them over the bridge)."""
    servers: dict[str, FakeServer] = {
        "anthropic": FakeAnthropic.start(host="0.0.0.0"),
        "openai": FakeResponses.start(host="0.0.0.0"),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def agent_base_config(
    bridge_llm: FakeLLM, model_servers: dict[str, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The fake providers as the installation's config names them, and OpenCode's bash only on permission."""
    ports = {provider: server.port for provider, server in model_servers.items()}
    return use_fake_llm_in_sandboxes(monkeypatch, bridge_llm.port, providers=ports, permission={"bash": "ask"})


@pytest.fixture
def secrets_provider(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, agent_base_config: dict[str, Any]
) -> SecretsProvider:
    """The real key store (the dev key the stack's API loads from the same directory)."""
    return EncryptedSecretsProvider(sessions, load_keyring(Settings(dev_mode=True, data_dir=tmp_path / "var")))


@pytest_asyncio.fixture
async def acp_stack(agent_base_config: dict[str, Any], stack: Stack) -> AsyncIterator[Stack]:
    """The stack with agents on the fake model servers; ends the sync workflows it started."""
    assert stack.settings.agent_base_config == agent_base_config
    try:
        yield stack
    finally:
        await stack.end_chat_mirrors()


class Chat:
    """One ACP conversation driven through our API."""

    def __init__(self, stack: Stack, sandbox_id: str, session: dict[str, Any]) -> None:
        self.stack, self.sandbox_id, self.session = stack, sandbox_id, session
        self.acp = f"{BASE}/{sandbox_id}/acp"
        self.messages_url = f"{BASE}/{sandbox_id}/chat/sessions/{session['id']}/messages"

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.stack.client.post(self.acp + path, json=body, headers=self.stack.headers)

    async def prompt(self, text: str) -> str:
        response = await self.post(f"/sessions/{self.session['id']}/prompt", {"text": text})
        assert response.status_code == 202, response.text
        return str(response.json()["turn_id"])

    async def messages(self) -> list[dict[str, Any]]:
        page = await self.stack.client.get(self.messages_url, params={"limit": 200}, headers=self.stack.headers)
        assert page.status_code == 200, page.text
        messages: list[dict[str, Any]] = page.json()["messages"]
        return messages

    async def wait(self, count: int, status: str, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The first moment there are ``count`` messages and the last one has ``status``."""

        async def ready() -> list[dict[str, Any]] | None:
            messages = await self.messages()
            return messages if len(messages) == count and messages[-1]["status"] == status else None

        return await eventually(ready, timeout=timeout, what=f"{count} messages, the last {status}")

    async def permission(self) -> dict[str, Any]:
        """The one permission request waiting in the sandbox."""

        async def asked() -> list[dict[str, Any]] | None:
            response = await self.stack.client.get(f"{self.acp}/permissions", headers=self.stack.headers)
            assert response.status_code == 200, response.text
            return response.json()["permissions"] or None

        try:
            [request] = await eventually(asked, timeout=TIMEOUT, what="the permission request")
        except AssertionError as error:  # say what the agent did instead
            raise AssertionError(f"{error}; the conversation: {summary(await self.messages())}") from None
        return dict(request)


async def start_chat(stack: Stack, agent_id: str, *, sandbox_id: str | None = None) -> Chat:
    """A conversation with ``agent_id`` in a new running sandbox (or in ``sandbox_id``)."""
    if sandbox_id is None:
        sandbox = await stack.create_sandbox(auto_start=True)
        assert sandbox["status"] == "running", sandbox
        sandbox_id = sandbox["id"]
    created = await stack.client.post(
        f"{BASE}/{sandbox_id}/acp/sessions", json={"agent_id": agent_id}, headers=stack.headers
    )
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["source"] == "acp_gateway" and session["acp_agent_id"] == agent_id
    return Chat(stack, sandbox_id, session)


def summary(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, status, text) of each message."""
    return [(m["role"], m["status"], (m["text"] or "").strip()) for m in messages]
