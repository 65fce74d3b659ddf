"""ArchivalWorkflow on the time-skipping server, and its Schedule and operator controls on the dev server.

The Java time-skipping server does not implement Schedules, so the schedule's spec, policy, pause
handling and firing time (through a backfill) are checked on the real dev server.
"""

from __future__ import annotations

import asyncio
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, ScheduleBackfill, ScheduleOverlapPolicy, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.archival import ArchivalActivities
from activities.resources import WorkerResources
from agentpod.cli.archive import run_now, show_status
from agentpod.domain.archival import ArchivalInput, ArchiveBatchInput, ArchiveBatchResult
from agentpod.settings import Settings
from agentpod.store.tables import ActivityLog, ActivityLogArchive
from workflows.archival import ArchivalWorkflow
from workflows.archival_client import ARCHIVAL_CATCHUP_WINDOW, archival_status, ensure_archival_schedule

pytestmark = pytest.mark.temporal


def _worker(client: Client, task_queue: str, activities: list[Callable[..., Any]]) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=[ArchivalWorkflow], activities=activities)


async def _seed(sessions: async_sessionmaker[AsyncSession], now: datetime, ages: list[timedelta]) -> list[str]:
    async with sessions.begin() as db:
        rows = [ActivityLog(user_id=None, action="sandbox.start", created_at=now - age) for age in ages]
        db.add_all(rows)
    return [row.id for row in rows]


async def _ids(sessions: async_sessionmaker[AsyncSession], table: Any) -> list[str]:
    async with sessions() as db:
        return sorted((await db.scalars(select(table.id))).all())


# --------------------------------------------------------------------------- the workflow (time-skipping)


@contextmanager
def _real_time(env: WorkflowEnvironment) -> Iterator[None]:
    """Time moves only when the test says so (``env.sleep``). Left on, the test server skips ahead
    whenever it sees nothing scheduled, even while an activity does real database I/O, and can jump
    past the activity's timeout (or years ahead)."""
    with env.auto_time_skipping_disabled():
        yield


async def test_a_day_later_the_next_run_archives_what_crossed_the_retention(
    temporal_time_skipping_env: WorkflowEnvironment, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    env, queue = temporal_time_skipping_env, f"archival-{uuid.uuid4().hex[:8]}"
    now = await env.get_current_time()  # the server's clock: earlier tests may have skipped it ahead
    day = timedelta(days=1)
    old = await _seed(sessions, now, [200 * day, 95 * day, 90 * day + timedelta(hours=1)])
    tomorrow = await _seed(sessions, now, [89 * day + timedelta(hours=12)])
    young = await _seed(sessions, now, [10 * day])
    data = ArchivalInput(retention_days=90, batch_size=2)
    worker = _worker(env.client, queue, ArchivalActivities(WorkerResources(settings, sessions)).all())
    async with worker:
        with _real_time(env):
            first = await env.client.execute_workflow(
                ArchivalWorkflow.run, data, id=f"archival-{uuid.uuid4()}", task_queue=queue
            )
        assert (first.archived, first.deleted, first.done) == (3, 3, True)
        assert first.cutoff is not None and abs(first.cutoff - (now - 90 * day)) < timedelta(minutes=1)
        assert await _ids(sessions, ActivityLogArchive) == sorted(old)

        await env.sleep(day)  # a day passes in milliseconds

        with _real_time(env):
            second = await env.client.execute_workflow(
                ArchivalWorkflow.run, data, id=f"archival-{uuid.uuid4()}", task_queue=queue
            )
    assert (second.archived, second.done) == (1, True)
    assert await _ids(sessions, ActivityLogArchive) == sorted(old + tomorrow)
    assert await _ids(sessions, ActivityLog) == sorted(young)


async def test_a_long_run_continues_as_new_with_its_cutoff_and_totals(
    temporal_time_skipping_env: WorkflowEnvironment, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    env, queue = temporal_time_skipping_env, f"archival-{uuid.uuid4().hex[:8]}"
    now = await env.get_current_time()
    ids = await _seed(sessions, now, [timedelta(days=100, minutes=i) for i in range(7)])
    async with _worker(env.client, queue, ArchivalActivities(WorkerResources(settings, sessions)).all()):
        with _real_time(env):
            handle = await env.client.start_workflow(
                ArchivalWorkflow.run,
                ArchivalInput(batch_size=1, max_batches_per_run=2),
                id=f"archival-{uuid.uuid4()}",
                task_queue=queue,
            )
            result = await handle.result()
        latest = await env.client.get_workflow_handle(handle.id).describe()
        progress = await env.client.get_workflow_handle_for(ArchivalWorkflow.run, handle.id).query(
            ArchivalWorkflow.progress
        )
    assert (result.archived, result.deleted, result.batches, result.done) == (7, 7, 8, True)
    assert latest.run_id != handle.first_execution_run_id  # 8 batches at 2 per run: 4 runs
    assert progress == result
    assert await _ids(sessions, ActivityLogArchive) == sorted(ids)


async def test_a_batch_whose_result_was_lost_is_retried_without_duplicates(
    temporal_time_skipping_env: WorkflowEnvironment, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    env, queue = temporal_time_skipping_env, f"archival-{uuid.uuid4().hex[:8]}"
    now = await env.get_current_time()
    ids = await _seed(sessions, now, [timedelta(days=100, minutes=i) for i in range(5)])
    real = ArchivalActivities(WorkerResources(settings, sessions))
    calls = 0

    @activity.defn(name="archive_activity_batch")
    async def commit_then_crash(data: ArchiveBatchInput) -> ArchiveBatchResult:
        # The worker dies after the database committed but before Temporal heard back.
        nonlocal calls
        calls += 1
        result = await real.archive_activity_batch(data)
        if calls == 2:
            raise RuntimeError("worker lost after commit")
        return result

    async with _worker(env.client, queue, [commit_then_crash]):
        with _real_time(env):
            result = await env.client.execute_workflow(
                ArchivalWorkflow.run, ArchivalInput(batch_size=2), id=f"archival-{uuid.uuid4()}", task_queue=queue
            )
    assert result.done
    assert await _ids(sessions, ActivityLog) == []
    assert await _ids(sessions, ActivityLogArchive) == sorted(ids)
    # The lost batch's rows are archived, just not counted by this run.
    assert result.deleted == 5 - 2


# --------------------------------------------------------------------------- the schedule (dev server)


def _next_local(hour: int, time_zone: str, after: datetime) -> datetime:
    """The next ``hour``:00 wall-clock time in ``time_zone`` after ``after``, in UTC."""
    zone = zoneinfo.ZoneInfo(time_zone)
    local = after.astimezone(zone)
    candidate = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate + timedelta(days=1)).replace(hour=hour)
    return candidate.astimezone(UTC)


async def test_schedule_fires_at_the_local_hour_and_a_worker_restart_keeps_an_operator_pause(
    temporal_dev_env: WorkflowEnvironment,
) -> None:
    client, schedule_id = temporal_dev_env.client, f"test-archival-{uuid.uuid4().hex[:8]}"
    queue = f"nobody-polls-{uuid.uuid4().hex[:8]}"
    handle = client.get_schedule_handle(schedule_id)
    await ensure_archival_schedule(
        client, task_queue=queue, hour=3, time_zone="Europe/Berlin", retention_days=90, schedule_id=schedule_id
    )
    try:
        described = await handle.describe()
        assert described.info.next_action_times[0] == _next_local(3, "Europe/Berlin", datetime.now(UTC))
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert described.schedule.policy.catchup_window == ARCHIVAL_CATCHUP_WINDOW

        # Yesterday, seen from Berlin: the only action in 00:00-23:59 local is at 03:00 local.
        yesterday = datetime.now(zoneinfo.ZoneInfo("Europe/Berlin")).replace(
            hour=0, minute=0, second=0, microsecond=0
        ) - timedelta(days=1)
        await handle.backfill(ScheduleBackfill(start_at=yesterday, end_at=yesterday + timedelta(hours=23, minutes=59)))
        actions = await _eventually_actions(client, schedule_id)
        assert [action.scheduled_at for action in actions] == [yesterday.replace(hour=3).astimezone(UTC)]

        # An operator pauses it; a worker restart with new settings updates the spec but not the pause.
        await handle.pause(note="paused by ops: disk full")
        await ensure_archival_schedule(
            client, task_queue=queue, hour=4, time_zone="America/New_York", retention_days=30, schedule_id=schedule_id
        )
        status = await archival_status(client, schedule_id=schedule_id)
        assert (status.paused, status.note) == (True, "paused by ops: disk full")
        assert (status.hour, status.time_zone, status.retention_days) == (4, "America/New_York", 30)

        await handle.unpause()
        described = await handle.describe()
        assert described.info.next_action_times[0] == _next_local(4, "America/New_York", datetime.now(UTC))
    finally:
        for run in (await handle.describe()).info.running_actions:
            await client.get_workflow_handle(run.workflow_id).terminate("test finished")  # type: ignore[attr-defined]
        await handle.delete()


async def _eventually_actions(client: Client, schedule_id: str) -> list[Any]:
    for _ in range(100):
        actions = (await client.get_schedule_handle(schedule_id).describe()).info.recent_actions
        if actions:
            return list(actions)
        await asyncio.sleep(0.1)
    raise AssertionError("the backfill started nothing")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_operators_run_it_now_even_when_paused_and_see_its_progress(
    temporal_dev_env: WorkflowEnvironment, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    client, schedule_id = temporal_dev_env.client, f"test-archival-{uuid.uuid4().hex[:8]}"
    queue = f"archival-{uuid.uuid4().hex[:8]}"
    ids = await _seed(sessions, datetime.now(UTC), [timedelta(days=91 + i) for i in range(4)])
    await ensure_archival_schedule(
        client, task_queue=queue, hour=3, time_zone="UTC", retention_days=90, schedule_id=schedule_id
    )
    handle = client.get_schedule_handle(schedule_id)
    await handle.pause(note="maintenance")
    try:
        async with _worker(client, queue, ArchivalActivities(WorkerResources(settings, sessions)).all()):
            lines: list[str] = []
            assert await run_now(client, lines.append, schedule_id=schedule_id) == 0
            assert lines[-1].startswith("archived 4, removed 4 in 1 batches") and lines[-1].endswith("done")
            assert await _ids(sessions, ActivityLogArchive) == sorted(ids)

            shown: list[str] = []
            assert await show_status(client, shown.append, schedule_id=schedule_id) == 0
        assert shown[0] == f"schedule {schedule_id}: PAUSED (maintenance)"
        assert "daily at 03:00 UTC; rows older than 90 days" in shown[1]
        assert any(line.strip().startswith("COMPLETED") and "archived 4" in line for line in shown)
        status = await archival_status(client, schedule_id=schedule_id)
        assert [run.status for run in status.runs] == [WorkflowExecutionStatus.COMPLETED.name]
    finally:
        await handle.delete()
