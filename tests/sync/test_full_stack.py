"""The chat mirror end to end: API, Temporal worker, sync workflow, Docker and OpenCode in the container.

The sandbox's agent talks to the fake LLM on the host (bound to 0.0.0.0, reached through the Docker
bridge gateway) via the installation's ``agent_base_config``. We chat with the container's OpenCode
directly, and our database must follow through the sync workflow alone; the history must survive the
container being deleted behind our back (drift repair recreates it on the same /data volume, the sync
follows the new address) and the sandbox being stopped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import WorkflowExecutionStatus

from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.sandbox import container_name
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from api.routes import ROUTERS
from tests.fakes.fake_llm import PLAIN_REPLY
from tests.helpers import auth_header, eventually, sign_up
from tests.sync.conftest import assert_mirrored, prompt_and_wait, stored_session
from tests.workflows.conftest import Stack
from workflows.ids import sandbox_sync_workflow_id, sandbox_workflow_id
from workflows.sandbox import SandboxWorkflow

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    # One database is enough here (the mirror tests cover both); PostgreSQL is the scaled-out setup.
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


BASE = "/api/v2/sandboxes"
CHAT_SESSIONS = BASE + "/{sandbox_id}/chat/sessions"
# Container start + first prompt in a fresh agent are slow-ish; the sync must keep up within this.
SYNC_TIMEOUT = 60.0


def _passwords(stack: Stack, sandbox_id: str) -> list[str]:
    """The sandbox's OpenCode server passwords: without them OpenCode answers 401."""
    return opencode_passwords(load_keyring(stack.settings), sandbox_id)


def _internal_url(sandbox: dict[str, Any]) -> str:
    # A local install publishes OpenCode on a loopback port; the control plane talks to that.
    port = urlsplit(str(sandbox["opencode_url"])).port
    assert port, sandbox
    return f"http://127.0.0.1:{port}"


def _chat_api_mounted() -> bool:
    return CHAT_SESSIONS in {getattr(route, "path", "") for router in ROUTERS for route in router.routes}


async def _sandbox(stack: Stack, sandbox_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"{BASE}/{sandbox_id}", headers=stack.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _history_matches(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str, session_id: str, expected: list[tuple[str, str, str]]
) -> None:
    """Our rows of the session are exactly ``expected`` (id, role, status), in order."""
    row, rows = await stored_session(sessions, sandbox_id, session_id)
    assert row is not None and row.status == "active" and row.message_count == len(expected)
    assert [(m.external_message_id, m.role, m.status) for m in rows] == expected


async def _check_chat_api(stack: Stack, sandbox_id: str, session_id: str, expected: list[tuple[str, str, str]]) -> None:
    """The chat REST API serves the same history, and only to the sandbox's owner."""
    sessions_url = CHAT_SESSIONS.format(sandbox_id=sandbox_id)
    listed = await stack.client.get(sessions_url, headers=stack.headers)
    assert listed.status_code == 200, listed.text
    ours = [s for s in listed.json()["sessions"] if s["opencode_session_id"] == session_id]
    assert len(ours) == 1 and ours[0]["message_count"] == len(expected), listed.json()
    messages_url = f"{sessions_url}/{ours[0]['id']}/messages"
    page = await stack.client.get(messages_url, params={"limit": 200}, headers=stack.headers)
    assert page.status_code == 200, page.text
    served = [(m["external_message_id"], m["role"], m["status"]) for m in page.json()["messages"]]
    assert served == expected

    stranger = auth_header((await sign_up(stack.client))["token"])
    assert (await stack.client.get(sessions_url, headers=stranger)).status_code == 404
    assert (await stack.client.get(messages_url, headers=stranger)).status_code == 404


async def test_chats_are_mirrored_and_survive_container_loss_and_stop(sync_stack: Stack) -> None:
    stack = sync_stack
    sandbox = await stack.create_sandbox(auto_start=True)
    sandbox_id = sandbox["id"]
    assert sandbox["status"] == "running", sandbox
    sync = stack.temporal.client.get_workflow_handle(sandbox_sync_workflow_id(sandbox_id))

    # 1. Chat with the container's OpenCode directly; the sync workflow alone fills our database.
    async with OpenCodeClient(_internal_url(sandbox), _passwords(stack, sandbox_id)) as agent:
        session = await agent.create_session()
        session_id = session["id"]
        await prompt_and_wait(agent, session_id, "hello")
        await prompt_and_wait(agent, session_id, "TOOL please")
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, session_id, timeout=SYNC_TIMEOUT)
    # hello -> reply; TOOL -> the call with its result, then the answer
    assert [m.role for m in rows] == ["user", "assistant", "user", "assistant", "assistant"]
    assert {m.status for m in rows} == {"complete"}
    assert rows[1].text is not None and rows[1].text.strip() == PLAIN_REPLY
    assert rows[3].tool_results is not None and "hello-from-tool" in rows[3].tool_results[0]["output"]
    history = [(m.external_message_id, m.role, m.status) for m in rows]
    if _chat_api_mounted():
        await _check_chat_api(stack, sandbox_id, session_id, history)

    # 2. The container is deleted behind our back: our history stays, drift repair brings it back.
    first = stack.docker.containers.get(container_name(sandbox_id)).id
    stack.docker.containers.get(first).remove(force=True)
    await _history_matches(stack.sessions, sandbox_id, session_id, history)
    handle = stack.temporal.client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox_id))

    async def repaired() -> dict[str, Any] | None:
        state = await handle.query(SandboxWorkflow.describe)
        if not state.repairs or state.in_progress is not None:
            return None
        body = await _sandbox(stack, sandbox_id)
        return body if body["status"] == "running" else None

    body = await eventually(repaired, timeout=90, what="drift repair to recreate the container")
    assert stack.docker.containers.get(container_name(sandbox_id)).id != first

    # 3. Same /data volume, so OpenCode still has the session; the sync follows the new address.
    async with OpenCodeClient(_internal_url(body), _passwords(stack, sandbox_id)) as agent:
        assert [m["info"]["id"] for m in await agent.list_messages(session_id)] == [m[0] for m in history]
        await prompt_and_wait(agent, session_id, "hello again")
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, session_id, timeout=SYNC_TIMEOUT)
    assert len(rows) == len(history) + 2 and [m[0] for m in history] == [m.external_message_id for m in rows][:-2]
    history = [(m.external_message_id, m.role, m.status) for m in rows]

    # 4. Stopped: the sync finished with a last reconcile, and the history is still read from our database.
    stopped = await stack.client.post(f"{BASE}/{sandbox_id}/stop", headers=stack.headers)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
    assert (await sync.describe()).status == WorkflowExecutionStatus.COMPLETED
    await _history_matches(stack.sessions, sandbox_id, session_id, history)
    if _chat_api_mounted():
        await _check_chat_api(stack, sandbox_id, session_id, history)
