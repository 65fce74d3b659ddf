"""Account deletion on real Docker, real Temporal and real OpenCode: nothing left, whatever dies when."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Replayer,
    Worker,
)

from activities import build_activities
from activities.account import AccountActivities
from activities.resources import WorkerResources
from agentpod.domain.sandbox import container_name, volume_names
from agentpod.security.keyring import Keyring, load_keyring
from agentpod.settings import Settings
from agentpod.store import account
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from agentpod.store.tables import ActivityLog, ChatMessage, ChatSession
from api.app import create_app
from api.routes import ROUTERS
from api.routes import account as account_routes
from api.routes import opencode_config as opencode_routes
from api.routes import providers as provider_routes
from tests.docker_helpers import SANDBOX_IMAGE, docker_client, purge
from tests.helpers import assert_error, auth_header, sign_up
from tests.histories import save_history_if_asked
from workflows.account_deletion import AccountDeletionWorkflow
from workflows.account_deletion_client import USER_ATTRIBUTE
from workflows.ids import account_deletion_workflow_id, sandbox_workflow_id
from workflows.registry import ALL_WORKFLOWS

pytestmark = [
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

SECRET = "sk-test-DELETE-ME-0123456789-wxyz"
MCP_SECRET = "ghp_MCPDELETEME0123456789abcd"
CONFIRM = {"confirmation": "DELETE MY ACCOUNT"}
STEPS = [
    "account_lock",
    "account_anonymize_activity",
    "account_delete_sandboxes",
    "account_delete_data",
    "account_delete_user",
    "account_verify_deleted",
    "account_record_deletion",
]


class HoldAfter(Interceptor):
    """Holds one activity after it did its work, never reporting it: the worker dies right there."""

    def __init__(self) -> None:
        self.activity: str | None = None
        self.reached = asyncio.Event()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Hold(next, self)


class _Hold(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: HoldAfter) -> None:
        super().__init__(next)
        self._owner = owner

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await self.next.execute_activity(input)
        if activity.info().activity_type == self._owner.activity:
            self._owner.reached.set()
            await asyncio.Event().wait()  # until the worker is killed
        return result


@dataclass
class World:
    """API, a worker we can kill, one user with keys, config and sandboxes."""

    settings: Settings
    client: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    temporal: WorkflowEnvironment
    docker: Any
    hold: HoldAfter
    start_worker: Callable[[], Awaitable[None]]
    kill_worker: Callable[[], Awaitable[None]]
    headers: dict[str, str] = field(default_factory=dict)
    user_id: str = ""
    email: str = ""
    sandbox_ids: list[str] = field(default_factory=list)

    async def create_sandbox(self, *, auto_start: bool) -> dict[str, Any]:
        body = {"name": f"sb-{uuid.uuid4().hex[:6]}", "repo_name": "demo", "auto_start": auto_start}
        response = await self.client.post("/api/v2/sandboxes", json=body, headers=self.headers)
        assert response.status_code in (201, 202), response.text
        created: dict[str, Any] = response.json()
        self.sandbox_ids.append(created["id"])
        return created

    async def delete_account(self) -> str:
        response = await self.client.request("DELETE", "/api/account", json=CONFIRM, headers=self.headers)
        assert response.status_code == 202, response.text
        deletion_id: str = response.json()["deletion_id"]
        assert response.json()["status_url"] == f"/api/account/deletion/{deletion_id}"
        return deletion_id

    async def wait_deleted(self, deletion_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status: dict[str, Any] = (await self.client.get(f"/api/account/deletion/{deletion_id}")).json()
            if status.get("state") == "completed":
                return status
            assert status.get("state") in ("running", None), status
            assert asyncio.get_running_loop().time() < deadline, f"deletion not finished: {status}"
            await asyncio.sleep(0.25)


def _registrations(resources: WorkerResources) -> tuple[list[type], list[Callable[..., Any]]]:
    workflows, activities = list(ALL_WORKFLOWS), build_activities(resources)
    if AccountDeletionWorkflow not in workflows:  # until the worker registers them itself
        workflows.append(AccountDeletionWorkflow)
        activities += AccountActivities(resources).all()
    return workflows, activities


@pytest_asyncio.fixture
async def world(
    temporal_dev_env: WorkflowEnvironment,
    database_url: str,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> AsyncIterator[World]:
    docker = docker_client()
    settings = Settings(
        dev_mode=True,
        data_dir=tmp_path / "var",
        database_url=database_url,
        temporal_address=temporal_dev_env.client.service_client.config.target_host,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:8]}",
        sandbox_image=SANDBOX_IMAGE,
        sandbox_drift_check_seconds=1.0,
    )
    keyring: Keyring = load_keyring(settings)  # the dev key the API will load too
    resources = WorkerResources(
        settings=settings,
        sessions=sessions,
        temporal=temporal_dev_env.client,
        secrets=EncryptedSecretsProvider(sessions, keyring),
    )
    workflows, activities = _registrations(resources)
    hold = HoldAfter()
    running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}

    async def start_worker() -> None:
        worker = Worker(
            temporal_dev_env.client,
            task_queue=settings.temporal_task_queue,
            workflows=workflows,
            activities=activities,
            interceptors=[hold],
            graceful_shutdown_timeout=timedelta(0),  # killed: running activities never finish
        )
        running["worker"] = (worker, asyncio.create_task(worker.run()))

    async def kill_worker() -> None:
        _, task = running.pop("worker")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    app: FastAPI = create_app(settings)
    for router in (account_routes.router, provider_routes.router, opencode_routes.router):
        if router not in ROUTERS:
            app.include_router(router)
    await start_worker()
    world: World | None = None
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=120
            ) as client,
        ):
            world = World(settings, client, sessions, temporal_dev_env, docker, hold, start_worker, kill_worker)
            world.email = f"gone-{uuid.uuid4().hex[:8]}@example.com"
            signed_up = await sign_up(client, world.email)
            world.headers, world.user_id = auth_header(signed_up["token"]), signed_up["user"]["id"]
            yield world
    finally:
        if "worker" in running:
            worker, task = running.pop("worker")
            await worker.shutdown()
            await asyncio.gather(task, return_exceptions=True)
        if world is not None:
            ids = [sandbox_workflow_id(s) for s in world.sandbox_ids] + [account_deletion_workflow_id(world.user_id)]
            for workflow_id in ids:
                with contextlib.suppress(RPCError):  # completed, as it should be
                    await temporal_dev_env.client.get_workflow_handle(workflow_id).terminate("test finished")
            for sandbox_id in world.sandbox_ids:
                purge(docker, sandbox_id)


async def _give_the_user_secrets(world: World) -> None:
    put = await world.client.put("/api/users/me/providers/openai", json={"api_key": SECRET}, headers=world.headers)
    assert put.status_code == 201, put.text
    settings = {"mcp": {"github": {"type": "local", "command": ["true"], "environment": {"TOKEN": MCP_SECRET}}}}
    config = await world.client.put("/api/users/me/opencode/config", json={"settings": settings}, headers=world.headers)
    assert config.status_code == 200, config.text


async def _assert_nothing_left(world: World) -> None:
    async with world.sessions() as db:
        assert await account.references(db, world.user_id) == []
        rows = (await db.scalars(select(ActivityLog))).all()
    # The trail outlives the user, anonymized: no user id, IP, user agent or the user's id as entity.
    assert rows and all(row.user_id is None for row in rows)
    assert all(row.anonymized and row.ip_address is None and row.user_agent is None for row in rows)
    assert all(row.entity_id != world.user_id for row in rows)
    deletions = [row for row in rows if row.action == "account.delete"]
    assert len(deletions) == 1 and deletions[0].metadata_["removed"]["sandboxes"] == len(world.sandbox_ids)
    for sandbox_id in world.sandbox_ids:
        assert not world.docker.containers.list(all=True, filters={"name": container_name(sandbox_id)})
        left = {volume.name for volume in world.docker.volumes.list()} & set(volume_names(sandbox_id))
        assert not left, left
        handle = world.temporal.client.get_workflow_handle(sandbox_workflow_id(sandbox_id))
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    owned = world.docker.containers.list(all=True, filters={"label": f"agentpod.sandbox.user={world.user_id}"})
    assert owned == []
    # The user is gone: old tokens and the password are worth nothing.
    assert_error(await world.client.get("/api/account", headers=world.headers), 401, "unauthorized")
    sign_in = await world.client.post(
        "/api/auth/sign-in", json={"email": world.email, "password": "correct horse battery"}
    )
    assert_error(sign_in, 401, "invalid_credentials")


async def test_deletion_with_running_sandboxes_leaves_nothing_behind(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _give_the_user_secrets(world)
    running = await asyncio.gather(*(world.create_sandbox(auto_start=True) for _ in range(2)))
    await world.create_sandbox(auto_start=False)
    assert [sandbox["status"] for sandbox in running] == ["running", "running"]

    # The key reached the agent through OpenCode's API, never through anything docker inspect shows.
    container = world.docker.containers.get(container_name(running[0]["id"]))
    assert SECRET not in json.dumps(container.attrs) and MCP_SECRET not in json.dumps(container.attrs)
    exit_code, output = container.exec_run(["sh", "-c", "cat /data/.local/share/opencode/auth.json"])
    assert exit_code == 0 and SECRET.encode() in output
    export = await world.client.get("/api/account/data-export", headers=world.headers)
    assert export.status_code == 200 and SECRET not in export.text and MCP_SECRET not in export.text

    # A wrong phrase changes nothing; then, with no worker, two requests are one deletion.
    wrong = await world.client.request("DELETE", "/api/account", json={"confirmation": "yes"}, headers=world.headers)
    assert_error(wrong, 400, "confirmation_mismatch")
    await world.kill_worker()
    first, second = await world.delete_account(), await world.delete_account()
    assert first == second
    handle = world.temporal.client.get_workflow_handle(account_deletion_workflow_id(world.user_id))
    description = await handle.describe()
    assert description.typed_search_attributes.get(USER_ATTRIBUTE) == world.user_id
    await world.start_worker()

    status = await world.wait_deleted(first)
    assert [step["state"] for step in status["steps"]] == ["done"] * len(STEPS)
    assert status["current_step"] is None and status["finished_at"] is not None
    removed = status["removed"]
    assert (removed["sandboxes"], removed["providers"], removed["stray_containers"]) == (3, 1, 0)
    assert removed["sessions_revoked"] >= 1
    await _assert_nothing_left(world)
    assert SECRET not in caplog.text and MCP_SECRET not in caplog.text

    history = await handle.fetch_history()
    save_history_if_asked("account_deletion", history)
    await Replayer(workflows=[AccountDeletionWorkflow], data_converter=pydantic_data_converter).replay_workflow(history)


async def test_worker_killed_at_each_step_still_finishes(world: World) -> None:
    await _give_the_user_secrets(world)
    await world.create_sandbox(auto_start=True)
    await world.create_sandbox(auto_start=False)

    world.hold.activity = STEPS[0]
    deletion_id = await world.delete_account()
    for following in [*STEPS[1:], None]:
        # The step did its work; the worker dies before Temporal hears of it. The next worker must
        # redo the step (idempotently) and carry on.
        await asyncio.wait_for(world.hold.reached.wait(), 90)
        await world.kill_worker()
        world.hold.reached.clear()
        world.hold.activity = following
        await world.start_worker()

    await world.wait_deleted(deletion_id)
    await _assert_nothing_left(world)
    handle = world.temporal.client.get_workflow_handle(account_deletion_workflow_id(world.user_id))
    attempts: dict[str, int] = {}
    scheduled: dict[int, str] = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            name = scheduled[started.scheduled_event_id]
            attempts[name] = max(attempts.get(name, 0), started.attempt)
    assert all(attempts[step] >= 2 for step in STEPS), attempts  # every step really was cut off once


async def test_a_cancel_before_the_sandboxes_unlocks_the_account_and_one_after_is_ignored(world: World) -> None:
    handle = world.temporal.client.get_workflow_handle(account_deletion_workflow_id(world.user_id))

    async def cancel_while_held() -> None:
        await asyncio.wait_for(world.hold.reached.wait(), 60)
        await world.kill_worker()  # the held step's outcome is lost; a new worker runs it again
        await handle.cancel()
        world.hold.reached.clear()
        world.hold.activity = None
        await world.start_worker()

    world.hold.activity = "account_anonymize_activity"
    deletion_id = await world.delete_account()
    await cancel_while_held()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert (await world.client.get(f"/api/account/deletion/{deletion_id}")).json()["state"] == "cancelled"
    # The compensation gave the account back: tokens were revoked, but the user can sign in again.
    sign_in = await world.client.post(
        "/api/auth/sign-in", json={"email": world.email, "password": "correct horse battery"}
    )
    assert sign_in.status_code == 200, sign_in.text
    world.headers = auth_header(sign_in.json()["token"])

    # Asked again (a cancelled deletion may be restarted); past the pivot a cancel changes nothing.
    world.hold.activity = "account_delete_sandboxes"
    assert await world.delete_account() == deletion_id
    await cancel_while_held()
    status = await world.wait_deleted(deletion_id)
    assert status["state"] == "completed"
    async with world.sessions() as db:
        assert await account.references(db, world.user_id) == []


async def test_a_deleted_sandboxs_chats_stay_until_the_account_goes(world: World) -> None:
    sandbox = await world.create_sandbox(auto_start=True)
    assert sandbox["status"] == "running", sandbox
    base = f"/api/v2/sandboxes/{sandbox['id']}"
    # A session created in the container's real OpenCode, and an ACP one with a message, as the mirrors write them.
    created = await world.client.post(f"{base}/chat/sessions", json={"title": "keep me"}, headers=world.headers)
    assert created.status_code == 201, created.text
    async with world.sessions() as db:
        acp = ChatSession(
            sandbox_id=sandbox["id"], user_id=world.user_id, source="acp_gateway", acp_session_id="acp-kept"
        )
        db.add(acp)
        await db.flush()
        db.add(
            ChatMessage(session_id=acp.id, external_message_id="m1", source="acp_gateway", role="user", text="hello")
        )
        await db.commit()

    deleted = await world.client.delete(base, headers=world.headers)
    assert deleted.status_code == 204, deleted.text
    world.sandbox_ids.remove(sandbox["id"])  # gone before the account deletion counts sandboxes
    assert not world.docker.containers.list(all=True, filters={"name": container_name(sandbox["id"])})
    assert not {volume.name for volume in world.docker.volumes.list()} & set(volume_names(sandbox["id"]))

    kept = (await world.client.get("/api/v2/chat/sessions", headers=world.headers)).json()["sessions"]
    assert sorted((s["id"], s["sandbox_name"], s["sandbox_exists"]) for s in kept) == sorted(
        [(created.json()["id"], sandbox["name"], False), (acp.id, sandbox["name"], False)]
    )
    messages = (await world.client.get(f"/api/v2/chat/sessions/{acp.id}/messages", headers=world.headers)).json()
    assert [m["text"] for m in messages["messages"]] == ["hello"]

    status = await world.wait_deleted(await world.delete_account())
    assert (status["removed"]["chat_sessions"], status["removed"]["chat_messages"]) == (2, 1)
    await _assert_nothing_left(world)
    async with world.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(ChatSession)) == 0
        assert await db.scalar(select(func.count()).select_from(ChatMessage)) == 0
