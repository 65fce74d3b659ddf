"""A running stack for workflow tests: real dev server, real worker, real Docker, API in-process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.resources import WorkerResources
from agentpod.domain.secrets import NoSecrets, SecretsProvider
from agentpod.settings import Settings
from api.app import create_app
from tests.docker_helpers import SANDBOX_IMAGE, docker_client, purge
from tests.helpers import auth_header, sign_up
from worker import build_worker
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id, sandbox_workflow_id


@dataclass
class Stack:
    """Everything a lifecycle test drives."""

    settings: Settings
    client: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    temporal: WorkflowEnvironment
    docker: Any
    start_worker: Callable[[], Awaitable[None]]
    kill_worker: Callable[[], Awaitable[None]]
    headers: dict[str, str] = field(default_factory=dict)
    sandbox_ids: list[str] = field(default_factory=list)

    async def end_chat_mirrors(self) -> None:
        """Terminate the OpenCode and ACP sync workflows of every sandbox this test created."""
        for sandbox_id in self.sandbox_ids:
            for workflow_id in (sandbox_sync_workflow_id(sandbox_id), acp_sync_workflow_id(sandbox_id)):
                with contextlib.suppress(RPCError):  # never started, or already finished
                    await self.temporal.client.get_workflow_handle(workflow_id).terminate("test finished")

    async def create_sandbox(self, **extra: Any) -> dict[str, Any]:
        """Create a sandbox through the API (and remember it for cleanup)."""
        body = {"name": f"sb-{uuid.uuid4().hex[:6]}", "repo_name": "demo", **extra}
        response = await self.client.post("/api/v2/sandboxes", json=body, headers=self.headers)
        assert response.status_code in (201, 202), response.text
        created: dict[str, Any] = response.json()
        self.sandbox_ids.append(created["id"])
        return created


@pytest.fixture
def secrets_provider() -> SecretsProvider:
    """Key store the worker uses; tests override it to hand keys to agents."""
    return NoSecrets()


@pytest_asyncio.fixture
async def stack(
    temporal_dev_env: WorkflowEnvironment,
    database_url: str,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    secrets_provider: SecretsProvider,
) -> AsyncIterator[Stack]:
    """API + worker against one database, one dev server and the local Docker engine."""
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
    resources = WorkerResources(
        settings=settings, sessions=sessions, temporal=temporal_dev_env.client, secrets=secrets_provider
    )
    running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}

    async def start_worker() -> None:
        worker = await build_worker(settings, resources)
        running["worker"] = (worker, asyncio.create_task(worker.run()))

    async def kill_worker() -> None:
        # Cancelling run() abandons in-flight activities mid-call: the closest in-process stand-in for
        # a killed worker process (its tasks time out on the server and are retried elsewhere).
        worker, task = running.pop("worker")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    await start_worker()
    app: FastAPI = create_app(settings)
    stack: Stack | None = None
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=120
            ) as client,
        ):
            stack = Stack(settings, client, sessions, temporal_dev_env, docker, start_worker, kill_worker)
            stack.headers = auth_header((await sign_up(client))["token"])
            yield stack
    finally:
        if "worker" in running:
            worker, task = running.pop("worker")
            await worker.shutdown()
            await asyncio.gather(task, return_exceptions=True)
        for sandbox_id in stack.sandbox_ids if stack else []:
            handle = temporal_dev_env.client.get_workflow_handle(sandbox_workflow_id(sandbox_id))
            with contextlib.suppress(RPCError):  # already completed (deleted)
                await handle.terminate("test finished")
            purge(docker, sandbox_id)
