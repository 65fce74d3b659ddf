"""``POST /api/v2/sandboxes/{id}/chat/sessions/{sessionId}/restore`` against the dev server, with the restore's
activities faked (``FakeRestore``): 200 when OpenCode has the session or took it back, 202 while it is under
way, 409 in the error shape when the sandbox is not running or the session is not an OpenCode one, 404 for
another user's session.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agentpod.settings import Settings
from agentpod.store.tables import ChatSession, Sandbox
from api.app import create_app
from api.routes import chat_restore
from tests.helpers import assert_error, auth_header, sign_up
from tests.sync.test_session_restore_workflow import FakeRestore
from workflows.ids import session_restore_workflow_id
from workflows.session_restore import SessionRestoreWorkflow

pytestmark = [pytest.mark.temporal, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


@dataclass
class Api:
    client: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    temporal: WorkflowEnvironment
    fake: FakeRestore
    headers: dict[str, str]
    user_id: str
    sandbox_ids: list[str] = field(default_factory=list)

    async def sandbox(self, status: str = "running") -> str:
        async with self.sessions() as db:
            slug = f"sb-{uuid.uuid4().hex[:8]}"
            row = Sandbox(
                user_id=self.user_id,
                name=slug,
                slug=slug,
                repo_name=slug,
                resource_tier_id="starter",
                flavor_id="js",
                status=status,
                opencode_internal_url="http://127.0.0.1:1",
            )
            db.add(row)
            await db.commit()
            self.sandbox_ids.append(row.id)
            return row.id

    async def session(self, sandbox_id: str, **fields: object) -> tuple[str, str]:
        """A chat session row: (our id, OpenCode's id)."""
        upstream = f"ses_{uuid.uuid4().hex[:24]}"
        fields.setdefault("source", "opencode")
        fields.setdefault("opencode_session_id", upstream)
        async with self.sessions() as db:
            row = ChatSession(sandbox_id=sandbox_id, user_id=self.user_id, **fields)
            db.add(row)
            await db.commit()
            return row.id, upstream

    def url(self, sandbox_id: str, session_id: str) -> str:
        return f"/api/v2/sandboxes/{sandbox_id}/chat/sessions/{session_id}/restore"


@pytest_asyncio.fixture
async def api(
    temporal_dev_env: WorkflowEnvironment,
    database_url: str,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Api]:
    monkeypatch.setattr(chat_restore, "RESTORE_WAIT", timedelta(seconds=2))
    settings = Settings(
        dev_mode=True,
        data_dir=tmp_path / "var",
        database_url=database_url,
        temporal_address=temporal_dev_env.client.service_client.config.target_host,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:8]}",
    )
    fake = FakeRestore()
    worker = Worker(
        temporal_dev_env.client,
        task_queue=settings.temporal_task_queue,
        workflows=[SessionRestoreWorkflow],
        activities=[fake.plan, fake.restore, fake.save],
    )
    app = create_app(settings)
    async with (
        worker,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        created = await sign_up(client)
        rig = Api(client, sessions, temporal_dev_env, fake, auth_header(created["token"]), created["user"]["id"])
        try:
            yield rig
        finally:
            fake.gate.set()
            for sandbox_id in rig.sandbox_ids:
                with contextlib.suppress(RPCError):
                    handle = temporal_dev_env.client.get_workflow_handle(session_restore_workflow_id(sandbox_id))
                    await handle.terminate("test finished")


async def test_present_restored_or_under_way(api: Api) -> None:
    sandbox_id = await api.sandbox()
    ours, upstream = await api.session(sandbox_id, missing_upstream_at=None)

    api.fake.present.add(upstream)  # OpenCode has it: nothing to import
    response = await api.client.post(api.url(sandbox_id, ours), headers=api.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "session_id": ours,
        "opencode_session_id": upstream,
        "state": "present",
        "progress": None,
    }

    lost_ours, lost_upstream = await api.session(sandbox_id)
    response = await api.client.post(api.url(sandbox_id, lost_ours), headers=api.headers)
    assert response.status_code == 200 and response.json()["state"] == "restored", response.text
    assert lost_upstream in api.fake.started

    slow_ours, _ = await api.session(sandbox_id)
    api.fake.gate.clear()  # the import takes longer than the request waits
    response = await api.client.post(api.url(sandbox_id, slow_ours), headers=api.headers)
    assert response.status_code == 202 and response.json()["state"] == "restoring", response.text


async def test_refusals_in_the_error_shape(api: Api) -> None:
    stopped = await api.sandbox("stopped")
    ours, _ = await api.session(stopped)
    assert_error(await api.client.post(api.url(stopped, ours), headers=api.headers), 409, "sandbox_not_running")

    running = await api.sandbox()
    acp, _ = await api.session(running, source="acp_gateway", opencode_session_id=None, acp_session_id="acp-1")
    assert_error(await api.client.post(api.url(running, acp), headers=api.headers), 409, "not_an_opencode_session")

    ours, _ = await api.session(running)
    stranger = auth_header((await sign_up(api.client))["token"])
    assert_error(await api.client.post(api.url(running, ours), headers=stranger), 404, "sandbox_not_found")
    assert api.fake.started == []
