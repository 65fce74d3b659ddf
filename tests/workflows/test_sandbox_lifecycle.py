"""A sandbox's whole life on real Docker, real Temporal and real OpenCode in the container."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from agentpod.domain.sandbox import SandboxWorkflowState, container_name
from agentpod.domain.secrets import AgentCredentials, ProviderAuth
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_password
from agentpod.store.tables import ActivityLog
from tests.docker_helpers import leftovers
from tests.helpers import assert_error, eventually
from tests.histories import save_history_if_asked
from tests.workflows.conftest import Stack
from workflows.ids import sandbox_workflow_id
from workflows.registry import ALL_WORKFLOWS
from workflows.sandbox import SandboxWorkflow

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

BASE = "/api/v2/sandboxes"


async def _healthy(stack: Stack, sandbox: dict[str, Any]) -> bool:
    """OpenCode answers through the stored URL, to the sandbox's server password (and only to it)."""
    password = opencode_password(load_keyring(stack.settings), sandbox["id"])
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        refused = await client.get(f"{sandbox['opencode_url']}/global/health")
        answer = await client.get(f"{sandbox['opencode_url']}/global/health", auth=("opencode", password))
    return refused.status_code == 401 and bool(answer.json()["healthy"])


async def _state(stack: Stack, sandbox_id: str) -> SandboxWorkflowState:
    handle = stack.temporal.client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox_id))
    return await handle.query(SandboxWorkflow.describe)


async def test_full_life_create_start_stop_start_delete(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(addon_ids=["code-server"], github_url="https://github.com/a/b")
    url = f"{BASE}/{sandbox['id']}"

    started = await stack.client.post(f"{url}/start", headers=stack.headers)
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] == "running" and body["error_message"] is None
    assert await _healthy(stack, body)
    assert body["code_server_url"] and body["acp_gateway_url"] and body["vnc_url"] is None
    container = stack.docker.containers.get(container_name(sandbox["id"]))
    assert container.labels["agentpod.sandbox.id"] == sandbox["id"]
    assert container.attrs["HostConfig"]["Memory"] == 2 * 1024**3  # starter tier

    again = await stack.client.post(f"{url}/start", headers=stack.headers)  # repeated start is harmless
    assert again.status_code == 200 and again.json()["status"] == "running"
    assert stack.docker.containers.get(container_name(sandbox["id"])).id == container.id

    stopped = await stack.client.post(f"{url}/stop", headers=stack.headers)
    assert stopped.json()["status"] == "stopped"
    assert stack.docker.containers.get(container.id).status == "exited"
    stopped_again = await stack.client.post(f"{url}/stop", headers=stack.headers)
    assert stopped_again.json()["status"] == "stopped"

    restarted = await stack.client.post(f"{url}/start", headers=stack.headers)
    assert restarted.json()["status"] == "running"
    assert await _healthy(stack, restarted.json())

    deleted = await stack.client.delete(url, headers=stack.headers)
    assert deleted.status_code == 204
    assert leftovers(stack.docker, sandbox["id"]) == ([], [])
    assert_error(await stack.client.get(url, headers=stack.headers), 404)
    async with stack.sessions() as db:
        actions = (
            await db.scalars(
                select(ActivityLog.action)
                .where(ActivityLog.entity_id == sandbox["id"])
                .order_by(ActivityLog.created_at)
            )
        ).all()
    assert actions == ["sandbox.create", "sandbox.start", "sandbox.stop", "sandbox.start", "sandbox.delete"]

    # The finished history replays against today's workflow code (no non-determinism).
    handle = stack.temporal.client.get_workflow_handle(sandbox_workflow_id(sandbox["id"]))
    history = await handle.fetch_history()
    await Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(history)
    save_history_if_asked("sandbox_full_life", history)


async def test_container_removed_behind_our_back_is_repaired(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(auto_start=True)
    first = stack.docker.containers.get(container_name(sandbox["id"])).id
    stack.docker.containers.get(first).remove(force=True)

    async def repaired() -> dict[str, Any] | None:
        state = await _state(stack, sandbox["id"])
        if not state.repairs or state.in_progress is not None:
            return None
        body: dict[str, Any] = (await stack.client.get(f"{BASE}/{sandbox['id']}", headers=stack.headers)).json()
        return body if body["status"] == "running" else None

    body = await eventually(repaired, timeout=60, what="repaired", interval=0.25)
    assert stack.docker.containers.get(container_name(sandbox["id"])).id != first
    assert await _healthy(stack, body)


async def test_worker_killed_mid_start_ends_with_exactly_one_running_container(stack: Stack) -> None:
    sandbox = await stack.create_sandbox()
    url = f"{BASE}/{sandbox['id']}"
    task = asyncio.create_task(stack.client.post(f"{url}/start", headers=stack.headers))

    async def container_created() -> bool:
        return bool(leftovers(stack.docker, sandbox["id"])[0])

    await eventually(container_created, timeout=60, what="container created", interval=0.25)
    await stack.kill_worker()
    await asyncio.sleep(1)
    await stack.start_worker()
    response = await task
    assert response.status_code in (200, 202)

    async def running() -> bool:
        return bool((await stack.client.get(url, headers=stack.headers)).json()["status"] == "running")

    await eventually(running, timeout=120, what="running", interval=0.25)
    containers = stack.docker.containers.list(all=True, filters={"label": f"agentpod.sandbox.id={sandbox['id']}"})
    assert len(containers) == 1 and containers[0].status == "running"


async def test_conflicting_transition_is_a_409(stack: Stack) -> None:
    sandbox = await stack.create_sandbox()
    url = f"{BASE}/{sandbox['id']}"
    starting = asyncio.create_task(stack.client.post(f"{url}/start", headers=stack.headers))

    async def in_progress() -> bool:
        return bool((await stack.client.get(url, headers=stack.headers)).json()["status"] == "starting")

    await eventually(in_progress, timeout=60, what="in progress", interval=0.25)
    assert_error(await stack.client.post(f"{url}/stop", headers=stack.headers), 409, "illegal_transition")
    assert (await starting).json()["status"] == "running"


@pytest.fixture
def secrets_provider() -> Any:
    class OneKey:
        async def agent_credentials(self, user_id: str) -> AgentCredentials:
            return AgentCredentials(providers={"anthropic": ProviderAuth(key="sk-test-SECRET-4242")})

    return OneKey()


async def test_provider_keys_reach_the_agent_but_not_docker_inspect(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(auto_start=True)
    container = stack.docker.containers.get(container_name(sandbox["id"]))
    assert "sk-test-SECRET-4242" not in json.dumps(container.attrs)
    exit_code, output = container.exec_run(["sh", "-c", "cat /data/.local/share/opencode/auth.json"])
    assert exit_code == 0 and b"sk-test-SECRET-4242" in output


async def test_reconfigure_recreates_a_running_container_and_keeps_its_data(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(auto_start=True)
    url = f"{BASE}/{sandbox['id']}"
    before = stack.docker.containers.get(container_name(sandbox["id"]))
    assert before.exec_run(["sh", "-c", "echo kept > /data/marker && echo kept > /workspace/marker"]).exit_code == 0

    changed = await stack.client.patch(
        url, json={"resource_tier_id": "builder", "addon_ids": ["vnc"]}, headers=stack.headers
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["status"], body["resource_tier_id"], body["addon_ids"]) == ("running", "builder", ["vnc"])
    assert body["vnc_url"] and await _healthy(stack, body)
    after = stack.docker.containers.get(container_name(sandbox["id"]))
    assert after.id != before.id
    assert after.attrs["HostConfig"]["Memory"] == 4 * 1024**3 and after.attrs["HostConfig"]["NanoCpus"] == 2 * 10**9
    assert after.exec_run(["cat", "/data/marker", "/workspace/marker"]).output == b"kept\nkept\n"


async def test_operator_signal_stops_a_sandbox(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(auto_start=True)
    handle = stack.temporal.client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox["id"]))
    await handle.signal(SandboxWorkflow.operator_stop)

    async def stopped() -> bool:
        body = (await stack.client.get(f"{BASE}/{sandbox['id']}", headers=stack.headers)).json()
        return bool(body["status"] == "stopped")

    await eventually(stopped, timeout=60, what="stopped", interval=0.25)
    assert stack.docker.containers.get(container_name(sandbox["id"])).status == "exited"

    async def recorded() -> dict[str, Any] | None:
        # The workflow records the stop right after writing the status: the row may trail it a moment.
        async with stack.sessions() as db:
            found: dict[str, Any] | None = await db.scalar(
                select(ActivityLog.metadata_).where(
                    ActivityLog.entity_id == sandbox["id"], ActivityLog.action == "sandbox.stop"
                )
            )
        return found

    actor = await eventually(recorded, timeout=10, what="the operator's stop in the activity log")
    assert actor["actor"] == "operator"


async def test_long_lived_workflow_continues_as_new_keeping_its_state(stack: Stack) -> None:
    sandbox = await stack.create_sandbox(auto_start=True)
    handle = stack.temporal.client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox["id"]))
    first_run = (await handle.describe()).run_id

    async def new_run() -> bool:
        return (await handle.describe()).run_id != first_run

    await eventually(
        new_run, timeout=60, what="new run", interval=0.25
    )  # the drift check every second fills the history
    state = await handle.query(SandboxWorkflow.describe)
    assert (state.status.value, state.desired.value) == ("running", "running")
    stopped = await stack.client.post(f"{BASE}/{sandbox['id']}/stop", headers=stack.headers)
    assert stopped.json()["status"] == "stopped"
