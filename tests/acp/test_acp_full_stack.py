"""ACP end to end: API → the sandbox's ACP gateway → real ``opencode acp`` on the fake LLM, mirrored back into
our database by the ACP sync workflow alone, and served by the chat API.

Runs the whole stack of tests/workflows (dev server, worker, API in-process, Docker) with a sandbox built
from the real image; OpenCode is configured to *ask* before running bash, so tool calls wait for an
answer given through our API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus

from agentpod.chat_mirror.acp_transcript import fold_history
from agentpod.clients.acp import AcpGatewayClient
from agentpod.domain.sandbox import container_name
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import gateway_secrets
from agentpod.store.tables import ActivityLog, Sandbox
from tests.docker_helpers import use_fake_llm_in_sandboxes
from tests.fakes.fake_llm import PLAIN_REPLY, TOOL_COMMAND, FakeLLM
from tests.helpers import auth_header, eventually, sign_up
from tests.workflows import conftest as workflow_stack
from tests.workflows.conftest import Stack
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]

stack = workflow_stack.stack
secrets_provider = workflow_stack.secrets_provider

BASE = "/api/v2/sandboxes"
# SIGKILL every process of the gateway (the image has no pkill), printing their pids. The bracket keeps
# the pattern from matching this shell's own command line.
KILL_GATEWAY = (
    'for p in /proc/[0-9]*; do case "$(cat $p/cmdline 2>/dev/null | tr "\\0" " ")" in '
    '*agentpod-gatewa[y]*) kill -9 "${p#/proc/}" && echo "${p#/proc/}";; esac; done'
)
TIMEOUT = 60.0


@pytest.fixture
def agent_base_config(bridge_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The fake provider, and bash only after the user's permission."""
    return use_fake_llm_in_sandboxes(monkeypatch, bridge_llm.port, permission={"bash": "ask"})


@pytest_asyncio.fixture
async def acp_stack(agent_base_config: dict[str, Any], stack: Stack) -> AsyncIterator[Stack]:
    """The stack with agents on the fake LLM; ends the sync workflows it started."""
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


async def _start(stack: Stack) -> Chat:
    sandbox = await stack.create_sandbox(auto_start=True)
    assert sandbox["status"] == "running", sandbox
    created = await stack.client.post(
        f"{BASE}/{sandbox['id']}/acp/sessions", json={"agent_id": "opencode"}, headers=stack.headers
    )
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["source"] == "acp_gateway" and session["acp_agent_id"] == "opencode"
    assert session["acp_session_id"].startswith("ses_")
    return Chat(stack, sandbox["id"], session)


def _summary(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["role"], m["status"], (m["text"] or "").strip()) for m in messages]


async def test_prompt_is_answered_persisted_and_owned(acp_stack: Stack) -> None:
    stack = acp_stack
    chat = await _start(stack)
    await chat.prompt("Say hello")
    messages = await chat.wait(2, "complete")
    assert _summary(messages) == [("user", "complete", "Say hello"), ("assistant", "complete", PLAIN_REPLY)]
    assert {m["source"] for m in messages} == {"acp_gateway"}
    assert messages[1]["tokens"]["output"] > 0  # the turn's usage reached the reply

    # The app sees both mirrors live, the ACP one having applied the turn's events.
    async def both_connected() -> dict[str, Any] | None:
        response = await stack.client.get(f"{BASE}/{chat.sandbox_id}/chat/sync/status", headers=stack.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        live = body["sync"]["connected"] and body["acp"]["connected"] and body["acp"]["events_applied"] > 0
        return body if live else None

    status = await eventually(both_connected, timeout=45, what="both mirrors connected")
    assert status["sandbox_status"] == "running" and status["acp"]["last_error"] is None

    # Listed once, as an ACP session, even after the OpenCode mirror reconciled the same OpenCode store.
    sync = stack.temporal.client.get_workflow_handle_for(
        OpenCodeSyncWorkflow.run, sandbox_sync_workflow_id(chat.sandbox_id)
    )
    await sync.execute_update(OpenCodeSyncWorkflow.reconcile_now)
    listed = await stack.client.get(f"{BASE}/{chat.sandbox_id}/chat/sessions", headers=stack.headers)
    assert [(s["id"], s["source"]) for s in listed.json()["sessions"]] == [(chat.session["id"], "acp_gateway")]

    # Another user sees none of it, and can drive none of it.
    stranger = auth_header((await sign_up(stack.client))["token"])
    session_path = f"{chat.acp}/sessions/{chat.session['id']}"
    for method, path, body in [
        ("GET", chat.messages_url, None),
        ("POST", f"{session_path}/prompt", {"text": "hi"}),
        ("POST", f"{session_path}/cancel", None),
        ("POST", f"{chat.acp}/sessions", {"agent_id": "opencode"}),
        ("GET", f"{chat.acp}/permissions", None),
        ("POST", f"{chat.acp}/permissions/perm-1", {"option_id": "once"}),
        ("GET", f"{chat.acp}/agents", None),
    ]:
        response = await stack.client.request(method, path, json=body, headers=stranger)
        assert response.status_code == 404, (path, response.text)
    assert len(await chat.messages()) == 2


async def test_tool_permission_is_answered_through_our_api(acp_stack: Stack) -> None:
    stack = acp_stack
    chat = await _start(stack)
    await chat.prompt("TOOL please")

    async def asked() -> list[dict[str, Any]] | None:
        response = await stack.client.get(f"{chat.acp}/permissions", headers=stack.headers)
        assert response.status_code == 200, response.text
        return response.json()["permissions"] or None

    [request] = await eventually(asked, timeout=TIMEOUT, what="the permission request")
    assert request["session_id"] == chat.session["id"] and request["tool_call"]["title"] == TOOL_COMMAND
    assert {o["optionId"] for o in request["options"]} >= {"once", "reject"}
    # Waiting for us: the reply is not complete, and the request is in the activity log.
    assert [m["status"] for m in await chat.messages() if m["role"] == "assistant"] in ([], ["streaming"])

    async def logged() -> ActivityLog | None:
        async with stack.sessions() as db:
            return await db.scalar(select(ActivityLog).where(ActivityLog.action == "acp.permission_request"))

    entry = await eventually(logged, timeout=10, what="the permission request in the activity log")
    assert entry.entity_id == chat.session["id"] and entry.metadata_["request_id"] == request["request_id"]

    refused = await chat.post(f"/permissions/{request['request_id']}", {"option_id": "not-offered"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "validation_error"
    answered = await chat.post(f"/permissions/{request['request_id']}", {"option_id": "once"})
    assert answered.status_code == 200, answered.text
    again = await chat.post(f"/permissions/{request['request_id']}", {"option_id": "once"})
    assert again.status_code == 404

    messages = await chat.wait(2, "complete")
    reply = messages[1]
    assert [c["title"] for c in reply["tool_calls"]] == [TOOL_COMMAND]
    assert "hello-from-tool" in json.dumps(reply["tool_results"])


async def test_cancel_mid_turn_is_mirrored_as_cancelled(acp_stack: Stack) -> None:
    chat = await _start(acp_stack)
    await chat.prompt("SLOW please")

    async def streaming() -> list[dict[str, Any]] | None:
        messages = await chat.messages()
        return messages if len(messages) == 2 and messages[1]["text"] else None

    await eventually(streaming, timeout=TIMEOUT, what="the slow reply to start streaming")
    busy = await chat.post(f"/sessions/{chat.session['id']}/prompt", {"text": "again"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "acp_busy"
    cancelled = await chat.post(f"/sessions/{chat.session['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    messages = await chat.wait(2, "cancelled")
    assert messages[1]["text"]  # what was said before the cancel is kept
    nothing = await chat.post(f"/sessions/{chat.session['id']}/cancel")
    assert nothing.status_code == 409


async def test_gateway_restart_mid_turn_loses_and_duplicates_nothing(acp_stack: Stack) -> None:
    stack = acp_stack
    chat = await _start(stack)
    await chat.prompt("Say hello")
    await chat.wait(2, "complete")
    await chat.prompt("SLOW please")

    async def streaming() -> list[dict[str, Any]] | None:
        messages = await chat.messages()
        return messages if len(messages) == 4 and messages[3]["text"] else None

    await eventually(streaming, timeout=TIMEOUT, what="the slow reply to start streaming")
    # Kill the gateway (the entrypoint starts a new one, with a new event epoch); its agent exits with it.
    container = stack.docker.containers.get(container_name(chat.sandbox_id))
    exit_code, output = container.exec_run(["sh", "-c", KILL_GATEWAY])
    assert exit_code == 0 and output.split(), output

    # The sync resumes against the new gateway: reset → rebuilt from the agent's history.
    async with stack.sessions() as db:
        sandbox = await db.get(Sandbox, chat.sandbox_id)
        assert sandbox is not None and sandbox.acp_internal_url
        url = sandbox.acp_internal_url
    secrets = gateway_secrets(load_keyring(stack.settings), chat.sandbox_id)

    async def history() -> list[tuple[str, str]] | None:
        try:
            async with AcpGatewayClient(url, secrets) as gateway:
                updates = await gateway.history(chat.session["acp_session_id"])
        except Exception:
            return None  # the new gateway is still starting
        drafts = fold_history(updates)
        return [(d.role, d.key) for d in drafts] if len(drafts) >= 3 else None

    upstream = await eventually(history, timeout=TIMEOUT, what="the restarted gateway's history")

    seen: list[Any] = []

    async def settled() -> list[dict[str, Any]] | None:
        messages = await chat.messages()
        seen[:] = [(m["role"], m["external_message_id"], m["status"]) for m in messages]
        final = all(m["status"] != "streaming" for m in messages)
        return messages if final and [(m["role"], m["external_message_id"]) for m in messages] == upstream else None

    try:
        messages = await eventually(settled, timeout=TIMEOUT, what="our copy to match the agent's history")
    except AssertionError as error:
        raise AssertionError(f"{error}: ours {seen}, the agent's {upstream}") from None
    assert _summary(messages)[:3] == [
        ("user", "complete", "Say hello"),
        ("assistant", "complete", PLAIN_REPLY),
        ("user", "complete", "SLOW please"),
    ]
    if len(messages) == 4:  # the agent had persisted part of the cut reply
        assert messages[3]["status"] in ("interrupted", "complete") and messages[3]["text"]

    # The conversation goes on where it was: the next turn is numbered after the others.
    await chat.prompt("Say hello")
    after = await chat.wait(len(messages) + 2, "complete")
    assert after[: len(messages)] == messages or [m["id"] for m in after[: len(messages)]] == [
        m["id"] for m in messages
    ]
    assert _summary(after)[-2:] == [("user", "complete", "Say hello"), ("assistant", "complete", PLAIN_REPLY)]
    sync = await stack.temporal.client.get_workflow_handle(acp_sync_workflow_id(chat.sandbox_id)).describe()
    assert sync.status == WorkflowExecutionStatus.RUNNING
