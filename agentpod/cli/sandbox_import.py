"""Importing sandboxes whose metadata lived only in Docker labels (the origin system's migration 18)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rich.progress import Progress

from agentpod import temporal
from agentpod.clients.docker_engine import DockerEngine
from agentpod.domain.sandbox import SandboxRecord
from agentpod.domain.sandbox_import import from_labels
from agentpod.settings import Settings, get_settings
from agentpod.store import sandboxes
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import assert_schema_current
from agentpod.store.tables import Sandbox
from workflows.sandbox_client import ensure_workflow


@dataclass
class ImportReport:
    """What an import run did."""

    imported: int = 0
    known: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


async def import_from_docker(settings: Settings | None = None, *, show_progress: bool = True) -> ImportReport:
    """Import every labelled container; running it twice imports nothing new."""
    settings = settings or get_settings()
    engine = create_engine(settings.resolved_database_url)
    report = ImportReport()
    try:
        await assert_schema_current(engine)
        sessions = session_factory(engine)
        client = await temporal.connect(settings)
        docker = DockerEngine(settings.docker_host or None)
        containers = await asyncio.to_thread(docker.list_managed)
        with Progress(disable=not show_progress) as progress:
            task = progress.add_task("importing sandboxes", total=len(containers))
            for container in containers:
                progress.advance(task)
                found = from_labels(container["id"], container["name"], container["status"], container["labels"])
                if found is None:
                    report.skipped += 1
                    continue
                async with sessions() as db:
                    known = await db.get(Sandbox, found.sandbox_id) is not None
                    row = await sandboxes.import_labelled(db, found)
                    await db.commit()
                if row is None:
                    report.skipped += 1
                    report.problems.append(f"{container['name']}: owner {found.user_id} does not exist here")
                    continue
                report.known += known
                report.imported += not known
                # Also for known rows: a row whose workflow was lost gets one again.
                await ensure_workflow(
                    client,
                    SandboxRecord.model_validate(row),
                    task_queue=settings.temporal_task_queue,
                    drift_check_seconds=settings.sandbox_drift_check_seconds,
                )
    finally:
        await engine.dispose()
    return report
