"""Every agent of the image, driven and persisted alike: OpenCode (``opencode acp``), Claude Code
(``claude-code-acp``) and Codex (``codex-acp``), the real programs, through our API → the sandbox's ACP
gateway, mirrored back into our database by the ACP sync workflow alone and served by the chat API.

One journey per agent, in one sandbox: Claude Code and Codex are unavailable until the user's key for their
provider arrives (it reaches the running sandbox with the config push); a plain reply streams into our
store, with the user's own key at the model; a tool call waits for a permission answered through our API
(never by itself), then runs; a cancel mid-turn is mirrored as cancelled; the gateway killed mid-turn
leaves ours equal to the agent's history (its ``session/load`` rebuilds the conversation), nothing twice,
and the next turn goes on; the model's thinking is kept beside its reply; the chat list filters by agent;
another user can touch none of it; and the conversation is still ours after the container is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from agentpod.chat_mirror.acp_transcript import fold_history
from agentpod.clients.acp import AcpGatewayClient
from agentpod.domain.sandbox import container_name
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import gateway_secrets
from agentpod.store.tables import ActivityLog, Sandbox
from tests.acp.conftest import BASE, KILL_GATEWAY, TIMEOUT, Chat, start_chat, summary
from tests.fakes._fake_server import FakeServer
from tests.fakes.fake_llm import PLAIN_REPLY, REASONED_REPLY, REASONING, TOOL_COMMAND, FakeLLM
from tests.helpers import auth_header, eventually, sign_up
from tests.workflows.conftest import Stack
from workflows.ids import sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


@dataclass(frozen=True)
class Agent:
    id: str
    provider: str | None = None  # whose key it needs (None: OpenCode's own config)
    key: str = ""


AGENTS = [
    Agent("opencode"),
    Agent("claude-code", "anthropic", "sk-ant-e2e-5d1c0b2a9f"),
    Agent("codex", "openai", "sk-openai-e2e-7e3a91c4d2"),
]


async def _agents(stack: Stack, sandbox_id: str) -> dict[str, dict[str, Any]]:
    response = await stack.client.get(f"{BASE}/{sandbox_id}/acp/agents", headers=stack.headers)
    assert response.status_code == 200, response.text
    return {agent["id"]: agent for agent in response.json()["agents"]}


async def _give_key(stack: Stack, sandbox_id: str, agent: Agent) -> Chat:
    """Before the key the agent is unavailable; after it, the gateway runs it once the push arrived: the
    first conversation it takes."""
    assert (await _agents(stack, sandbox_id))[agent.id]["available"] is False
    put = await stack.client.put(
        f"/api/users/me/providers/{agent.provider}", json={"api_key": agent.key}, headers=stack.headers
    )
    assert put.status_code in (200, 201), put.text
    assert (await _agents(stack, sandbox_id))[agent.id]["available"] is True

    async def created() -> dict[str, Any] | None:
        # The gateway knows an agent of the registry only once the push has rewritten it.
        response = await stack.client.post(
            f"{BASE}/{sandbox_id}/acp/sessions", json={"agent_id": agent.id}, headers=stack.headers
        )
        assert response.status_code in (201, 404), response.text
        return dict(response.json()) if response.status_code == 201 else None

    session = await eventually(created, timeout=TIMEOUT, what=f"{agent.id} in the sandbox's gateway")
    assert session["acp_agent_id"] == agent.id
    return Chat(stack, sandbox_id, session)


async def _tool_turn(stack: Stack, chat: Chat, agent: Agent) -> list[dict[str, Any]]:
    await chat.prompt("TOOL please")
    request = await chat.permission()
    assert request["session_id"] == chat.session["id"] and request["agent_id"] == agent.id
    assert TOOL_COMMAND in json.dumps(request["tool_call"])
    # Waiting for us: the reply is not complete, and the request is in the activity log.
    assert [m["status"] for m in await chat.messages() if m["role"] == "assistant"][2:] in ([], ["streaming"])

    async def logged() -> ActivityLog | None:
        async with stack.sessions() as db:
            query = select(ActivityLog).where(ActivityLog.action == "acp.permission_request")
            return await db.scalar(query.where(ActivityLog.entity_id == chat.session["id"]))

    entry = await eventually(logged, timeout=10, what="the permission request in the activity log")
    assert entry.metadata_["request_id"] == request["request_id"]
    refused = await chat.post(f"/permissions/{request['request_id']}", {"option_id": "not-offered"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "validation_error"
    allow = next(option for option in request["options"] if option["kind"] == "allow_once")
    answered = await chat.post(f"/permissions/{request['request_id']}", {"option_id": allow["optionId"]})
    assert answered.status_code == 200, answered.text
    again = await chat.post(f"/permissions/{request['request_id']}", {"option_id": allow["optionId"]})
    assert again.status_code == 404
    messages = await chat.wait(4, "complete")
    assert "hello-from-tool" in json.dumps(messages[3]["tool_results"])
    return messages


async def _cancelled_turn(chat: Chat) -> list[dict[str, Any]]:
    await chat.prompt("SLOW please")

    async def streaming() -> list[dict[str, Any]] | None:
        messages = await chat.messages()
        return messages if len(messages) == 6 and messages[5]["text"] else None

    await eventually(streaming, timeout=TIMEOUT, what="the slow reply to start streaming")
    busy = await chat.post(f"/sessions/{chat.session['id']}/prompt", {"text": "again"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "acp_busy"
    cancelled = await chat.post(f"/sessions/{chat.session['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    messages = await chat.wait(6, "cancelled")
    assert messages[5]["text"]  # what was said before the cancel is kept
    nothing = await chat.post(f"/sessions/{chat.session['id']}/cancel")
    assert nothing.status_code == 409
    return messages


async def _gateway_killed_mid_turn(stack: Stack, chat: Chat, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kill the gateway while a reply streams: the entrypoint starts a new one (a new event epoch) and the
    sync rebuilds the conversation from the agent's history (``session/load``): ours ends equal to it, with
    nothing twice, and the conversation goes on."""
    await chat.prompt("SLOW please")
    count = len(before) + 2

    async def streaming() -> list[dict[str, Any]] | None:
        messages = await chat.messages()
        return messages if len(messages) == count and messages[-1]["text"] else None

    await eventually(streaming, timeout=TIMEOUT, what="the slow reply to start streaming")
    container = stack.docker.containers.get(container_name(chat.sandbox_id))
    exit_code, output = container.exec_run(["sh", "-c", KILL_GATEWAY])
    assert exit_code == 0 and output.split(), output

    async with stack.sessions() as db:
        sandbox = await db.get(Sandbox, chat.sandbox_id)
        assert sandbox is not None and sandbox.acp_internal_url
        url = sandbox.acp_internal_url
    secrets = gateway_secrets(load_keyring(stack.settings), chat.sandbox_id)

    async def agent_history() -> list[tuple[str, str]] | None:
        try:
            async with AcpGatewayClient(url, secrets) as gateway:
                updates = await gateway.history(chat.session["acp_session_id"])
        except Exception:
            return None  # the new gateway is still starting, or the turn is still being cut
        return [(d.role, d.key) for d in fold_history(updates)]

    seen: list[Any] = []

    async def settled() -> list[dict[str, Any]] | None:
        upstream = await agent_history()
        messages = await chat.messages()
        ours = [(m["role"], m["external_message_id"]) for m in messages]
        seen[:] = [ours, upstream]
        final = all(m["status"] != "streaming" for m in messages)
        return messages if upstream is not None and final and ours == upstream else None

    try:
        messages = await eventually(settled, timeout=TIMEOUT, what="our copy to match the agent's history")
    except AssertionError as error:
        raise AssertionError(f"{error}: ours, the agent's: {seen}") from None
    # The two whole turns before are kept as they were. What the agent kept of the cancelled and the cut
    # turn is its own business (Claude Code folds "[Request interrupted by user]" into the prompt and drops
    # the cut reply; OpenCode keeps both): ours is exactly that, nothing twice.
    assert [m["id"] for m in messages[:4]] == [m["id"] for m in before[:4]]
    assert (messages[4]["role"], messages[4]["text"].startswith("SLOW please")) == ("user", True)
    assert len({m["external_message_id"] for m in messages}) == len(messages)

    # The conversation goes on where it was.
    await chat.prompt("Say hello")
    after = await chat.wait(len(messages) + 2, "complete")
    assert [m["id"] for m in after[: len(messages)]] == [m["id"] for m in messages]
    assert PLAIN_REPLY in (after[-1]["text"] or "")
    return after


async def _strangers_get_nothing(stack: Stack, chat: Chat, count: int) -> None:
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
    assert len(await chat.messages()) == count


@pytest.mark.parametrize("agent", AGENTS, ids=[agent.id for agent in AGENTS])
async def test_an_agent_is_driven_and_persisted_like_every_other(
    acp_stack: Stack, agent: Agent, bridge_llm: FakeLLM, model_servers: dict[str, FakeServer]
) -> None:
    stack = acp_stack
    model: FakeServer = model_servers[agent.provider] if agent.provider else bridge_llm
    model.clear()
    sandbox = await stack.create_sandbox(auto_start=True)
    assert sandbox["status"] == "running", sandbox
    if agent.provider:
        chat = await _give_key(stack, sandbox["id"], agent)
    else:
        chat = await start_chat(stack, agent.id, sandbox_id=sandbox["id"])

    await chat.prompt("Say hello")
    messages = await chat.wait(2, "complete")
    assert summary(messages)[0] == ("user", "complete", "Say hello")
    assert PLAIN_REPLY in (messages[1]["text"] or "")
    assert {m["source"] for m in messages} == {"acp_gateway"}
    if agent.provider:
        assert {request.api_key for request in model.main_requests()} == {agent.key}  # the user's own key

    # The app sees both mirrors live, the ACP one having applied the turn's events.
    async def both_connected() -> dict[str, Any] | None:
        response = await stack.client.get(f"{BASE}/{chat.sandbox_id}/chat/sync/status", headers=stack.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        live = body["sync"]["connected"] and body["acp"]["connected"] and body["acp"]["events_applied"] > 0
        return body if live else None

    status = await eventually(both_connected, timeout=45, what="both mirrors connected")
    assert status["sandbox_status"] == "running" and status["acp"]["last_error"] is None

    await _tool_turn(stack, chat, agent)
    messages = await _gateway_killed_mid_turn(stack, chat, await _cancelled_turn(chat))

    # The model's thinking is kept beside the reply, whichever agent relayed it.
    await chat.prompt("REASON please")
    messages = await chat.wait(len(messages) + 2, "complete")
    assert REASONING in (messages[-1]["thinking"] or "") and REASONED_REPLY in (messages[-1]["text"] or "")

    # Listed once, as a conversation with this agent, even after the OpenCode mirror reconciled its store
    # (`opencode acp` keeps its sessions where the OpenCode server does).
    sync = stack.temporal.client.get_workflow_handle_for(
        OpenCodeSyncWorkflow.run, sandbox_sync_workflow_id(chat.sandbox_id)
    )
    await sync.execute_update(OpenCodeSyncWorkflow.reconcile_now)
    listed = await stack.client.get(
        f"{BASE}/{chat.sandbox_id}/chat/sessions", params={"agent_id": agent.id}, headers=stack.headers
    )
    assert [(s["id"], s["source"]) for s in listed.json()["sessions"]] == [(chat.session["id"], "acp_gateway")]
    await _strangers_get_nothing(stack, chat, len(messages))

    container = container_name(sandbox["id"])
    if agent.key:  # in no container setting Docker shows, and nowhere in what our API answered
        inspected = json.dumps(stack.docker.api.inspect_container(container))
        assert agent.key not in inspected and agent.key not in json.dumps(messages)
    # The container goes; the conversation stays ours.
    stack.docker.containers.get(container).remove(force=True)
    assert [m["id"] for m in await chat.messages()] == [m["id"] for m in messages]
