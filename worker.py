"""The Temporal worker process: registers every workflow and activity, shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.worker import Worker

from activities import build_activities
from activities.resources import WorkerResources
from agentpod import temporal
from agentpod.heap import settle_heap
from agentpod.logging import configure_logging
from agentpod.security.keyring import load_keyring
from agentpod.settings import Settings, get_settings
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import assert_schema_current
from workflows.archival_client import ensure_archival_schedule
from workflows.mirror_reconciler_client import ensure_mirror_reconcile_schedule, start_pass_at_worker_start
from workflows.registry import ALL_WORKFLOWS

log = logging.getLogger("agentpod.worker")


async def build_worker(settings: Settings, resources: WorkerResources) -> Worker:
    """A worker on the configured task queue with everything the project defines."""
    assert resources.temporal is not None
    return Worker(
        resources.temporal,
        task_queue=settings.temporal_task_queue,
        workflows=ALL_WORKFLOWS,
        activities=build_activities(resources),
        # Temporal's default (100) would leave all but 50 running sandboxes unmirrored: each holds two
        # long-running stream activities.
        max_concurrent_activities=settings.worker_max_activities,
        # Lets running activities (e.g. a Docker start) finish before the process exits.
        graceful_shutdown_timeout=timedelta(seconds=20),
    )


async def run_worker(settings: Settings | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    configure_logging()
    settings = settings or get_settings()
    engine = create_engine(settings.resolved_database_url)
    try:
        await assert_schema_current(engine)
        client = await temporal.connect(settings)
        sessions = session_factory(engine)
        keyring = load_keyring(settings)
        resources = WorkerResources(
            settings=settings,
            sessions=sessions,
            temporal=client,
            secrets=EncryptedSecretsProvider(sessions, keyring),
            keyring=keyring,
        )
        # Created or brought up to date, never un-paused: an operator's pause survives restarts.
        await ensure_archival_schedule(
            client,
            task_queue=settings.temporal_task_queue,
            hour=settings.archival_hour,
            time_zone=settings.archival_timezone,
            retention_days=settings.activity_retention_days,
        )
        reconciler_paused = await ensure_mirror_reconcile_schedule(
            client,
            task_queue=settings.temporal_task_queue,
            every=timedelta(minutes=settings.mirror_reconcile_minutes),
        )
        worker = await build_worker(settings, resources)
        frozen = settle_heap()  # before the first workflow: only process-long objects exist yet
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            # One pass now (mirrors lost while no worker ran come back at once), beside the worker:
            # start-up does not wait for it. An operator's pause of the schedule stops this one too.
            reconcile = (
                None
                if reconciler_paused
                else asyncio.create_task(start_pass_at_worker_start(client, task_queue=settings.temporal_task_queue))
            )
            log.info(
                "worker polling task queue %r on %s (%d startup objects frozen)",
                settings.temporal_task_queue,
                settings.temporal_address,
                frozen,
            )
            await stop.wait()
            log.info("shutting down worker")
            if reconcile is not None and not reconcile.done():
                reconcile.cancel()
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(run_worker())
