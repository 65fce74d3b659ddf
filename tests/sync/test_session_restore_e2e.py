"""Picking up where you left off: a chat whose container *and* volumes are gone goes on in the same session.

Real stack (API in-process, Temporal dev server and worker, Docker, OpenCode in the container, the fake LLM):
chat through our API (a tool call included) → stop → container and both volumes destroyed → start → the
mirror's reconcile finds the session missing, the session restore imports it into the new OpenCode (same
session, message and part ids) → the next prompt through our API works in the same session, and the model
receives the earlier turns. OpenCode's own listing then equals our store, and nothing was duplicated.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from docker.errors import NotFound
from temporalio.client import WorkflowExecutionStatus

from agentpod.clients.opencode import OpenCodeClient, OpenCodeNotFound
from agentpod.domain.sandbox import container_name, volume_names
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from tests.fakes.fake_llm import FakeLLM
from tests.helpers import eventually
from tests.sync.conftest import assert_mirrored, count_rows, stored_session, wait_turn
from tests.workflows.conftest import Stack
from workflows.ids import session_restore_workflow_id

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


BASE = "/api/v2/sandboxes"
SYNC_TIMEOUT = 60.0
RESTORE_TIMEOUT = 60.0

log = logging.getLogger(__name__)


async def _sandbox(stack: Stack, sandbox_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"{BASE}/{sandbox_id}", headers=stack.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _agent(stack: Stack, sandbox: dict[str, Any]) -> OpenCodeClient:
    port = urlsplit(str(sandbox["opencode_url"])).port
    assert port, sandbox
    return OpenCodeClient(f"http://127.0.0.1:{port}", opencode_passwords(load_keyring(stack.settings), sandbox["id"]))


async def _prompt(stack: Stack, agent: OpenCodeClient, chat_url: str, upstream_id: str, text: str) -> None:
    """A prompt through our API; waits until OpenCode finished the reply."""
    before = len(await agent.list_messages(upstream_id))
    response = await stack.client.post(f"{chat_url}/messages", json={"text": text}, headers=stack.headers)
    assert response.status_code == 202, response.text
    await wait_turn(agent, upstream_id, after=before)


def _texts(request_messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in request_messages:
        content = message.get("content")
        if isinstance(content, list):
            parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        else:
            parts.append(str(content or ""))
    return "\n".join(parts)


async def test_a_chat_goes_on_in_the_same_session_after_container_and_volumes_are_lost(
    sync_stack: Stack, bridge_llm: FakeLLM
) -> None:
    stack = sync_stack
    sandbox = await stack.create_sandbox(auto_start=True)
    sandbox_id = sandbox["id"]
    assert sandbox["status"] == "running", sandbox

    # 1. A chat through our API, with a tool call.
    created = await stack.client.post(f"{BASE}/{sandbox_id}/chat/sessions", json={}, headers=stack.headers)
    assert created.status_code == 201, created.text
    ours, upstream_id = created.json()["id"], created.json()["opencode_session_id"]
    chat_url = f"{BASE}/{sandbox_id}/chat/sessions/{ours}"
    async with _agent(stack, sandbox) as agent:
        await _prompt(stack, agent, chat_url, upstream_id, "hello")
        await _prompt(stack, agent, chat_url, upstream_id, "TOOL please")
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, upstream_id, timeout=SYNC_TIMEOUT)
    history = [m.external_message_id for m in rows]
    assert [m.role for m in rows] == ["user", "assistant", "user", "assistant", "assistant"]
    assert rows[3].tool_results and "hello-from-tool" in str(rows[3].tool_results[0]["output"])
    counts = await count_rows(stack.sessions, sandbox_id)

    # 2. Stopped, then the container and both volumes are destroyed: OpenCode's store is gone.
    stopped = await stack.client.post(f"{BASE}/{sandbox_id}/stop", headers=stack.headers)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
    with contextlib.suppress(NotFound):
        stack.docker.containers.get(container_name(sandbox_id)).remove(force=True)
    for volume in volume_names(sandbox_id):
        stack.docker.volumes.get(volume).remove(force=True)

    # 3. Started again: `running` at once, the restore follows by itself.
    started_at = time.monotonic()
    started = await stack.client.post(f"{BASE}/{sandbox_id}/start", headers=stack.headers)
    assert started.status_code == 200 and started.json()["status"] == "running", started.text
    running_after = time.monotonic() - started_at
    body = await _sandbox(stack, sandbox_id)
    async with _agent(stack, body) as agent:

        async def restored() -> bool:
            try:
                listed = [m["info"]["id"] for m in await agent.list_messages(upstream_id)]
            except OpenCodeNotFound:
                return False
            row, _ = await stored_session(stack.sessions, sandbox_id, upstream_id)
            # Same session, same message ids, in OpenCode's own store; our flag cleared.
            return listed == history and row is not None and row.missing_upstream_at is None

        await eventually(restored, timeout=RESTORE_TIMEOUT, what="the session to be restored into the new OpenCode")
        usable_after = time.monotonic() - started_at
        log.info("running after %.1f s; session usable after %.1f s", running_after, usable_after)

        async def reported() -> dict[str, Any] | None:
            # The sync status shows the restore (written right after the session's import).
            url = f"{BASE}/{sandbox_id}/chat/sync/status"
            restore: dict[str, Any] | None = (await stack.client.get(url, headers=stack.headers)).json()["sync"][
                "restore"
            ]
            return restore if restore and restore["state"] == "done" else None

        restore = await eventually(reported, timeout=30, what="the sync status to show the finished restore")
        assert (restore["total"], restore["restored"], restore["failed"]) == (1, 1, 0), restore

        # 4. The conversation goes on in the same session, through our API; the model gets the earlier turns.
        bridge_llm.clear()
        await _prompt(stack, agent, chat_url, upstream_id, "hello again after the restore")
        request = bridge_llm.requests_for("after the restore")[0]
        sent = _texts(request.body["messages"])
        assert "hello" in sent and "TOOL please" in sent and "hello-from-tool" in sent, sent
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, upstream_id, timeout=SYNC_TIMEOUT)
        upstream_ids = [m["info"]["id"] for m in await agent.list_messages(upstream_id)]
    assert [m.external_message_id for m in rows] == upstream_ids
    assert upstream_ids[: len(history)] == history and len(upstream_ids) == len(history) + 2
    assert await count_rows(stack.sessions, sandbox_id) == (counts[0], counts[1] + 2)  # nothing duplicated

    # 5. Asked for again: OpenCode has it, nothing is imported.
    again = await stack.client.post(f"{chat_url}/restore", headers=stack.headers)
    assert again.status_code == 200 and again.json()["state"] == "present", again.text
    handle = stack.temporal.client.get_workflow_handle(session_restore_workflow_id(sandbox_id))
    await eventually(
        lambda: _completed(handle), timeout=30, what="the restore workflow to finish after the on-demand request"
    )


async def _completed(handle: Any) -> bool:
    return bool((await handle.describe()).status == WorkflowExecutionStatus.COMPLETED)
