"""The user's AGENTS.md, custom agents and commands reach the agent in a real sandbox container.

Started by the real Docker activities on the real image, the agent on the fake LLM: what the model is
sent shows what the agent was told.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.docker import DockerActivities
from activities.resources import WorkerResources
from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.sandbox import OPENCODE_PORT, DeliverConfigInput, WaitHealthyInput
from agentpod.domain.secrets import AgentCredentials
from agentpod.security.keyring import Keyring, generate_entry, parse_key
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.settings import Settings
from tests.clients import docker_client, make_spec, new_sandbox_id, purge
from tests.docker_helpers import bridge_agent_config
from tests.fakes.fake_llm import FakeLLM
from tests.helpers import eventually
from tests.sync.conftest import prompt_and_wait

pytestmark = pytest.mark.docker

INSTRUCTIONS = "Answer like a pirate: the user's standing instruction 7f3a."
COMMAND = "---\ndescription: Ship the build\n---\nShip release candidate 42 to staging, then report.\n"
AGENT = "---\ndescription: Reviews diffs\nmode: subagent\n---\nYou review diffs for the user.\n"


class UserFiles:
    """The secrets provider of a user who wrote an AGENTS.md, one command and one agent."""

    async def agent_credentials(self, user_id: str) -> AgentCredentials:
        return AgentCredentials(
            instructions=INSTRUCTIONS, config_files={"command/ship.md": COMMAND, "agent/reviewer.md": AGENT}
        )


@pytest.fixture
async def agent(tmp_path: Path, bridge_llm: FakeLLM) -> AsyncIterator[OpenCodeClient]:
    settings = Settings(
        data_dir=tmp_path,
        agent_base_config=bridge_agent_config(bridge_llm.port),
        sandbox_host_services={"fake-llm": bridge_llm.port},
    )
    keyring = Keyring((parse_key(generate_entry()),))
    resources = WorkerResources(
        settings=settings, sessions=async_sessionmaker(class_=AsyncSession), keyring=keyring, secrets=UserFiles()
    )
    acts, env, sandbox_id = DockerActivities(resources), ActivityEnvironment(), new_sandbox_id()
    try:
        await env.run(acts.docker_ensure_container, make_spec(sandbox_id))
        state = await env.run(acts.docker_start_container, sandbox_id)
        await env.run(acts.docker_deliver_agent_config, DeliverConfigInput(sandbox_id=sandbox_id, user_id="u1"))
        url = f"http://127.0.0.1:{state.host_ports[OPENCODE_PORT]}"
        health = WaitHealthyInput(base_url=url, timeout_seconds=60, sandbox_id=sandbox_id)
        await env.run(acts.wait_opencode_healthy, health)
        async with OpenCodeClient(url, opencode_passwords(keyring, sandbox_id)) as client:
            yield client
    finally:
        purge(docker_client(), sandbox_id)


def _system_text(body: dict[str, object]) -> str:
    messages = body.get("messages")
    assert isinstance(messages, list)
    return " ".join(str(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "system")


async def test_agents_md_commands_and_agents_reach_the_agent(agent: OpenCodeClient, bridge_llm: FakeLLM) -> None:
    bridge_llm.clear()
    session = await agent.create_session()
    await prompt_and_wait(agent, session["id"], "hello")
    (request,) = bridge_llm.requests_for("hello")
    assert INSTRUCTIONS in _system_text(request.body)

    # The command is listed, and running it sends its template to the model.
    commands = await agent._json("GET", "/command")
    assert "ship" in {c["name"] for c in commands}
    assert "reviewer" in {a["name"] for a in await agent._json("GET", "/agent")}
    await agent._json("POST", f"/session/{session['id']}/command", body={"command": "ship", "arguments": ""})

    async def shipped() -> bool:
        return bool(bridge_llm.requests_for("Ship release candidate 42"))

    await eventually(shipped, timeout=30, what="the command's template to reach the model")
    await asyncio.sleep(0)
