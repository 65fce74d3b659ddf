"""Temporal plumbing on real servers: the worker polls, health sees Temporal, activities are idempotent."""

from __future__ import annotations

import ast
import asyncio
import inspect
import pkgutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio import activity, workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

import activities
import workflows
from activities import build_activities
from activities.activity_log import ActivityLogActivities
from activities.resources import WorkerResources
from agentpod.domain.activity import ActivityEvent, RecordActivityInput
from agentpod.settings import Settings
from agentpod.store.tables import ActivityLog
from api.app import create_app
from worker import build_worker
from workflows.registry import ALL_WORKFLOWS


def _defined_in(package: object, predicate: str) -> set[str]:
    """Names of every workflow class / activity method defined anywhere in ``package``."""
    names: set[str] = set()
    path = Path(package.__file__).parent  # type: ignore[attr-defined]
    for module_info in pkgutil.iter_modules([str(path)]):
        module = __import__(f"{package.__name__}.{module_info.name}", fromlist=["_"])  # type: ignore[attr-defined]
        for _, obj in inspect.getmembers(module):
            if predicate == "workflow" and inspect.isclass(obj) and workflow._Definition.from_class(obj):
                names.add(str(workflow._Definition.must_from_class(obj).name))
            if predicate == "activity" and inspect.isclass(obj):
                for _, member in inspect.getmembers(obj, inspect.isfunction):
                    if definition := activity._Definition.from_callable(member):
                        names.add(str(definition.name))
    return names


def test_worker_registers_every_workflow_and_activity(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    registered_activities = {
        str(activity._Definition.must_from_callable(fn).name)
        for fn in build_activities(WorkerResources(settings=settings, sessions=sessions))
    }
    assert registered_activities == _defined_in(activities, "activity")
    registered_workflows = {workflow._Definition.must_from_class(cls).name for cls in ALL_WORKFLOWS}
    assert registered_workflows == _defined_in(workflows, "workflow")


def test_a_workflow_module_does_not_pull_in_the_others() -> None:
    """Temporal's sandbox re-imports a workflow's module (and its package) for every workflow it runs:
    a sync loop must not carry private copies of the sandbox, deletion and archival workflows."""
    probe = "import sys, workflows.opencode_sync; print(sorted(m for m in sys.modules if m.startswith('workflows')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(loaded) == ["workflows", "workflows.opencode_sync", "workflows.stream_sync"]


async def test_worker_polls_and_health_is_green_with_a_real_dev_server(
    temporal_dev_env: WorkflowEnvironment,
    database_url: str,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    address = temporal_dev_env.client.service_client.config.target_host
    settings = Settings(
        dev_mode=True,
        data_dir=tmp_path,
        database_url=database_url,
        temporal_address=address,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:8]}",
    )
    resources = WorkerResources(settings=settings, sessions=sessions, temporal=temporal_dev_env.client)
    async with await build_worker(settings, resources):
        pollers: list[object] = []
        for _ in range(50):
            described = await temporal_dev_env.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=temporal_dev_env.client.namespace,
                    task_queue=TaskQueue(name=settings.temporal_task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
            pollers = list(described.pollers)
            if pollers:
                break
            await asyncio.sleep(0.1)
        assert pollers, "the worker never polled its task queue"

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/api/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


async def test_record_activity_is_idempotent_under_retries(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    activities_ = ActivityLogActivities(WorkerResources(settings=settings, sessions=sessions))
    data = RecordActivityInput(
        event_id=str(uuid.uuid4()),
        event=ActivityEvent(user_id=None, action="sandbox.stop", entity_type="sandbox", entity_id="sb-1"),
    )
    env = ActivityEnvironment()
    for _ in range(3):  # Temporal may deliver the same attempt more than once
        await env.run(activities_.record_activity, data)
    async with sessions() as db:
        assert await db.scalar(select(func.count()).select_from(ActivityLog)) == 1
