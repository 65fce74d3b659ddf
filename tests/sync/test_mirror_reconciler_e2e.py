"""The mirror reconciler end to end: a running sandbox (real container, agent on the fake LLM) whose chat
mirrors an operator terminated is mirrored again after one pass, through the real worker; so is one that
looks imported from Docker labels (no address stored: the pass reads the container's published ports).
"""

from __future__ import annotations

import pytest
from sqlalchemy import update
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.mirror_reconciler import MirrorReconcileReport
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.store.tables import Sandbox
from tests.helpers import eventually
from tests.sync.conftest import assert_mirrored, prompt_and_wait
from tests.workflows.conftest import Stack
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.mirror_reconciler_client import start_reconcile_pass

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


SYNC_TIMEOUT = 60.0


async def _status(stack: Stack, workflow_id: str) -> WorkflowExecutionStatus | None:
    try:
        return (await stack.temporal.client.get_workflow_handle(workflow_id).describe()).status
    except RPCError:
        return None


async def _terminate_mirrors(stack: Stack, sandbox_id: str) -> None:
    """What an operator does in the Web UI; then wait until the listing the pass reads shows it."""
    mirrors = (sandbox_sync_workflow_id(sandbox_id), acp_sync_workflow_id(sandbox_id))
    for workflow_id in mirrors:
        await stack.temporal.client.get_workflow_handle(workflow_id).terminate("operator: terminated by hand")

    async def gone_from_listing() -> bool:
        query = f"ExecutionStatus = 'Running' AND WorkflowId IN ('{mirrors[0]}', '{mirrors[1]}')"
        return not [w async for w in stack.temporal.client.list_workflows(query)]

    await eventually(gone_from_listing, timeout=10, what="the terminated mirrors to leave the running list")


async def _one_pass(stack: Stack, name: str) -> MirrorReconcileReport:
    handle = await start_reconcile_pass(
        stack.temporal.client, task_queue=stack.settings.temporal_task_queue, workflow_id=name, why="test"
    )
    return await handle.result()


async def test_a_running_sandbox_whose_mirrors_were_terminated_is_mirrored_again_after_one_pass(
    sync_stack: Stack,
) -> None:
    stack = sync_stack
    sandbox = await stack.create_sandbox(auto_start=True)
    sandbox_id = sandbox["id"]
    assert sandbox["status"] == "running", sandbox
    mirrors = (sandbox_sync_workflow_id(sandbox_id), acp_sync_workflow_id(sandbox_id))

    async def both_running() -> bool:
        return all([await _status(stack, w) == WorkflowExecutionStatus.RUNNING for w in mirrors])

    await eventually(both_running, timeout=30, what="the sandbox workflow to start both mirrors")
    async with stack.sessions() as db:
        row = await db.get(Sandbox, sandbox_id)
        assert row is not None and row.opencode_internal_url is not None
        url = row.opencode_internal_url
    passwords = opencode_passwords(load_keyring(stack.settings), sandbox_id)

    # 1. An operator terminates both mirrors; a chat happens while nothing mirrors it.
    await _terminate_mirrors(stack, sandbox_id)
    async with OpenCodeClient(url, passwords) as agent:
        session_id = (await agent.create_session())["id"]
        await prompt_and_wait(agent, session_id, "hello")

        report = await _one_pass(stack, f"mirror-reconciler-{sandbox_id}-1")
        assert (report.checked, report.started, report.no_address, report.failed) == (1, 1, 0, 0), report
        assert report.started_sandboxes == [sandbox_id]
        assert await both_running()
        # The missed turn arrives through the restarted mirror's reconcile, and a new one through its stream.
        await assert_mirrored(stack.sessions, sandbox_id, agent, session_id, timeout=SYNC_TIMEOUT)
        await prompt_and_wait(agent, session_id, "hello again")
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, session_id, timeout=SYNC_TIMEOUT)
        assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]

    # 2. Looks imported: no address stored, mirrors gone. The pass finds the container's published ports.
    await _terminate_mirrors(stack, sandbox_id)
    async with stack.sessions() as db:
        await db.execute(
            update(Sandbox).where(Sandbox.id == sandbox_id).values(opencode_internal_url=None, acp_internal_url=None)
        )
        await db.commit()
    report = await _one_pass(stack, f"mirror-reconciler-{sandbox_id}-2")
    assert (report.checked, report.started, report.no_address) == (1, 1, 0), report
    assert await both_running()
    async with OpenCodeClient(url, passwords) as agent:
        await prompt_and_wait(agent, session_id, "third")
        rows = await assert_mirrored(stack.sessions, sandbox_id, agent, session_id, timeout=SYNC_TIMEOUT)
    assert len(rows) == 6
