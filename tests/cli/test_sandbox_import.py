"""`agentpod sandboxes import-docker`: labelled containers become rows and workflows, idempotently."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from agentpod.cli.sandbox_import import import_from_docker
from agentpod.domain.sandbox import container_name
from agentpod.domain.sandbox_import import from_labels
from agentpod.settings import Settings
from agentpod.store.tables import Sandbox, User
from tests.docker_helpers import SANDBOX_IMAGE, docker_client, purge
from workflows.ids import sandbox_workflow_id
from workflows.sandbox import SandboxWorkflow
from workflows.sandbox_client import SANDBOX_ATTRIBUTE


def test_origin_labels_are_understood() -> None:
    labels = {
        "agentpod.managed": "true",
        "agentpod.sandbox.id": "Ab3_xYz",
        "agentpod.sandbox.user": "u1",
        "agentpod.sandbox.name": "My Project",
        "agentpod.sandbox.repo": "my-project-Ab3",
        "agentpod.flavor": "js",
        "agentpod.tier": "builder",
        "agentpod.addon.code-server": "true",
        "agentpod.addon.gui": "false",
    }
    found = from_labels("cid", "agentpod-Ab3_xYz", "exited", labels)
    assert found is not None
    assert (found.sandbox_id, found.user_id, found.name, found.addon_ids, found.status.value) == (
        "Ab3_xYz",
        "u1",
        "My Project",
        ["code-server"],
        "stopped",
    )
    assert from_labels("cid", "x", "running", {"agentpod.managed": "true"}) is None


@pytest.fixture
def labelled_containers() -> Iterator[tuple[Any, str, str]]:
    docker = docker_client()
    user_id, known_id, orphan_id = (
        str(uuid.uuid4()),
        f"imp{uuid.uuid4().hex[:10]}",
        f"imp{uuid.uuid4().hex[:10]}",
    )
    for sandbox_id, owner in ((known_id, user_id), (orphan_id, "nobody-here")):
        docker.containers.create(
            SANDBOX_IMAGE,
            name=container_name(sandbox_id),
            labels={
                "agentpod.managed": "true",
                "agentpod.sandbox.id": sandbox_id,
                "agentpod.sandbox.user": owner,
                "agentpod.sandbox.name": "Legacy App",
                "agentpod.flavor": "python",
                "agentpod.tier": "no-such-tier",
                "agentpod.addon.code-server": "true",
            },
        )
    try:
        yield docker, user_id, known_id
    finally:
        purge(docker, known_id)
        purge(docker, orphan_id)


@pytest.mark.docker
@pytest.mark.temporal
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_import_creates_rows_and_workflows_once(
    labelled_containers: tuple[Any, str, str],
    sessions: async_sessionmaker[AsyncSession],
    temporal_dev_env: WorkflowEnvironment,
    database_url: str,
    tmp_path: Path,
) -> None:
    docker, user_id, sandbox_id = labelled_containers
    async with sessions() as db:
        db.add(User(id=user_id, email=f"{user_id}@example.com", name="Legacy"))
        await db.commit()
    settings = Settings(
        dev_mode=True,
        data_dir=tmp_path,
        database_url=database_url,
        temporal_address=temporal_dev_env.client.service_client.config.target_host,
        temporal_task_queue=f"import-{uuid.uuid4().hex[:6]}",
    )
    first = await import_from_docker(settings, show_progress=False)
    assert first.imported >= 1 and any("nobody-here" in p for p in first.problems)
    async with sessions() as db:
        row = await db.get(Sandbox, sandbox_id)
    assert row is not None
    assert (row.user_id, row.name, row.flavor_id, row.resource_tier_id, row.addon_ids, row.status) == (
        user_id,
        "Legacy App",
        "python",
        "starter",
        ["code-server"],
        "created",
    )
    handle = temporal_dev_env.client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox_id))
    described = await handle.describe()  # no worker needed: the execution exists and runs
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert described.typed_search_attributes.get(SANDBOX_ATTRIBUTE) == sandbox_id

    second = await import_from_docker(settings, show_progress=False)
    assert second.imported == 0 and second.known >= 1
    await handle.terminate("test finished")
