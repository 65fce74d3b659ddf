""" "Sync now": a stopped sandbox answers from our store; a session is reconciled through the mirror it comes from.

The reconciles run in real sync workflows on the dev server, with fake agent activities that name the
mirror they belong to (tests/fakes/mirror_activities.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agentpod.domain.chat import SyncStatus, SyncTarget, SyncWorkflowInput
from agentpod.settings import Settings
from agentpod.store.sync_state import commit_sync_status
from agentpod.store.tables import AcpSyncState, ChatSession, ChatSyncState, Sandbox
from api.app import create_app
from tests.fakes.mirror_activities import FakeMirrors
from tests.helpers import assert_error, auth_header, sign_up
from workflows.acp_sync import AcpSyncWorkflow
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

BASE = "/api/v2/sandboxes"
RECONCILED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _owner(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def _sandbox(sessions: async_sessionmaker[AsyncSession], user_id: str, status: str) -> str:
    async with sessions() as db:
        slug = f"sb-{uuid.uuid4().hex[:8]}"
        row = Sandbox(
            user_id=user_id,
            name=slug,
            slug=slug,
            repo_name="demo",
            resource_tier_id="starter",
            flavor_id="js",
            status=status,
            opencode_internal_url="http://127.0.0.1:41000" if status == "running" else None,
            acp_internal_url="http://127.0.0.1:41001" if status == "running" else None,
        )
        db.add(row)
        await db.commit()
        return row.id


async def _session(sessions: async_sessionmaker[AsyncSession], sandbox_id: str, user_id: str, source: str) -> str:
    """A chat session row of ``source`` (``opencode`` or ``acp_gateway``)."""
    key = "acp_session_id" if source == "acp_gateway" else "opencode_session_id"
    async with sessions() as db:
        row = ChatSession(sandbox_id=sandbox_id, user_id=user_id, source=source, **{key: f"ses_{uuid.uuid4().hex}"})
        db.add(row)
        await db.commit()
        return row.id


@pytest.mark.parametrize("status", ["stopped", "created", "error"])
async def test_sync_now_on_a_sandbox_that_is_not_running_answers_from_our_store(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], status: str
) -> None:
    headers, user_id = await _owner(client)
    sandbox_id = await _sandbox(sessions, user_id, status)
    await commit_sync_status(
        sessions, ChatSyncState, sandbox_id, SyncStatus(last_reconcile_at=RECONCILED_AT, reconnects=3)
    )
    await commit_sync_status(sessions, AcpSyncState, sandbox_id, SyncStatus(events_applied=7))
    acp_session = await _session(sessions, sandbox_id, user_id, "acp_gateway")
    opencode_session = await _session(sessions, sandbox_id, user_id, "opencode")

    for path, mirror in (
        (f"{BASE}/{sandbox_id}/chat/sync", "opencode"),
        (f"{BASE}/{sandbox_id}/chat/sessions/{opencode_session}/sync", "opencode"),
        (f"{BASE}/{sandbox_id}/chat/sessions/{acp_session}/sync", "acp"),
    ):
        # Temporal is unreachable in this test: the answer comes from our database alone.
        response = await client.post(path, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["reconciled"], body["mirror"], body["sandbox_status"]) == (False, mirror, status)
        assert body["notes"] == [f"nothing to reconcile: the sandbox is {status}"]
        assert body["messages_upserted"] == body["sessions_upserted"] == 0
        assert body["sync"]["reconnects"] == 3
        assert datetime.fromisoformat(body["sync"]["last_reconcile_at"]) == RECONCILED_AT
        assert body["acp"]["events_applied"] == 7

    # Ownership is still checked first.
    stranger, _ = await _owner(client)
    assert_error(await client.post(f"{BASE}/{sandbox_id}/chat/sync", headers=stranger), 404, "sandbox_not_found")
    missing = f"{BASE}/{sandbox_id}/chat/sessions/{uuid.uuid4()}/sync"
    assert_error(await client.post(missing, headers=headers), 404, "chat_session_not_found")


@pytest_asyncio.fixture
async def live_client(
    temporal_dev_env: WorkflowEnvironment, settings: Settings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """The API against the dev server, and a worker running both mirrors with fake agent activities."""
    live = settings.model_copy(update={"temporal_address": temporal_dev_env.client.service_client.config.target_host})
    app = create_app(live)
    worker = Worker(
        temporal_dev_env.client,
        task_queue=live.temporal_task_queue,
        workflows=[OpenCodeSyncWorkflow, AcpSyncWorkflow],
        activities=FakeMirrors().activities(),
    )
    async with (
        worker,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        yield client


@pytest.mark.temporal
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_session_sync_reconciles_through_the_mirror_of_the_sessions_source(
    live_client: httpx.AsyncClient,
    temporal_dev_env: WorkflowEnvironment,
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    client, temporal = live_client, temporal_dev_env.client
    headers, user_id = await _owner(client)
    sandbox_id = await _sandbox(sessions, user_id, "running")
    acp_session = await _session(sessions, sandbox_id, user_id, "acp_gateway")
    opencode_session = await _session(sessions, sandbox_id, user_id, "opencode")
    target = SyncTarget(
        sandbox_id=sandbox_id,
        user_id=user_id,
        opencode_url="http://127.0.0.1:41000",
        acp_url="http://127.0.0.1:41001",
    )
    started: list[str] = []
    try:
        # Only the OpenCode mirror runs: an ACP session cannot be reconciled yet, an OpenCode one can.
        await temporal.start_workflow(
            OpenCodeSyncWorkflow.run,
            SyncWorkflowInput(target=target),
            id=sandbox_sync_workflow_id(sandbox_id),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        started.append(sandbox_sync_workflow_id(sandbox_id))
        acp_url = f"{BASE}/{sandbox_id}/chat/sessions/{acp_session}/sync"
        assert_error(await client.post(acp_url, headers=headers), 409, "sync_not_running")

        response = await client.post(f"{BASE}/{sandbox_id}/chat/sessions/{opencode_session}/sync", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["reconciled"], body["mirror"], body["sandbox_status"]) == (True, "opencode", "running")
        assert body["notes"] == [f"opencode_reconcile of {sandbox_id}"]

        # With the ACP mirror running, the ACP session's pull-to-refresh goes through it.
        await temporal.start_workflow(
            AcpSyncWorkflow.run,
            SyncWorkflowInput(target=target),
            id=acp_sync_workflow_id(sandbox_id),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        started.append(acp_sync_workflow_id(sandbox_id))
        response = await client.post(acp_url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["reconciled"], body["mirror"]) == (True, "acp")
        assert body["notes"] == [f"acp_reconcile of {sandbox_id}"]

        # The whole-sandbox "sync now" is the OpenCode mirror's, as before.
        response = await client.post(f"{BASE}/{sandbox_id}/chat/sync", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["notes"] == [f"opencode_reconcile of {sandbox_id}"]
    finally:
        for workflow_id in started:
            with contextlib.suppress(RPCError):
                await temporal.get_workflow_handle(workflow_id).terminate("test finished")
