"""Caller side of ``ArchivalWorkflow``: its Temporal Schedule (created or updated when a worker starts,
triggered and described by ``agentpod archive``) and the progress of its runs.

An update keeps the schedule's current *state* (paused flag and note): an operator who paused the
archival in the Web UI stays paused across deployments. Replacing the whole schedule, the obvious
way to update it, would silently un-pause it.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from collections.abc import Iterable
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecution,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from agentpod.domain.archival import ArchivalInput, ArchivalProgress, ArchivalRun, ArchivalScheduleStatus
from workflows.archival import ArchivalWorkflow
from workflows.ids import ARCHIVAL_SCHEDULE_ID

# Scheduled runs are named "<this>-<scheduled time>" by the server.
ARCHIVAL_WORKFLOW_ID = "activity-archival"
# If Temporal itself was down at the scheduled time, still run when it is back within this window;
# later than that, the next day's run comes sooner and archives the same rows.
ARCHIVAL_CATCHUP_WINDOW = timedelta(hours=12)

# A query waits for a worker to answer; with none polling, status must not hang.
_QUERY_TIMEOUT = timedelta(seconds=3)

log = logging.getLogger(__name__)


def archival_schedule(*, task_queue: str, hour: int, time_zone: str, retention_days: int) -> Schedule:
    """Daily at ``hour``:00 in ``time_zone`` (IANA name; DST-aware), skipping a run while one is active."""
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {time_zone!r} for the archival schedule (use an IANA name)") from None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ArchivalWorkflow.run,
            ArchivalInput(retention_days=retention_days),
            id=ARCHIVAL_WORKFLOW_ID,
            task_queue=task_queue,
            static_summary=f"Activity-log archival (rows older than {retention_days} days)",
        ),
        spec=ScheduleSpec(
            calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(hour)], comment=f"daily at {hour:02d}:00")],
            time_zone_name=time_zone,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=ARCHIVAL_CATCHUP_WINDOW),
        state=ScheduleState(note="Managed by the worker: spec and action are rewritten at every worker start."),
    )


async def ensure_archival_schedule(
    client: Client,
    *,
    task_queue: str,
    hour: int,
    time_zone: str,
    retention_days: int,
    schedule_id: str = ARCHIVAL_SCHEDULE_ID,
) -> None:
    """Create the archival schedule, or bring an existing one up to date without touching its state."""
    desired = archival_schedule(task_queue=task_queue, hour=hour, time_zone=time_zone, retention_days=retention_days)
    try:
        await client.create_schedule(schedule_id, desired)
        log.info("created schedule %s (daily %02d:00 %s)", schedule_id, hour, time_zone)
        return
    except ScheduleAlreadyRunningError:
        pass

    def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        desired.state = current.description.schedule.state
        return ScheduleUpdate(schedule=desired)

    await client.get_schedule_handle(schedule_id).update(keep_state)
    log.info("updated schedule %s (daily %02d:00 %s)", schedule_id, hour, time_zone)


def _workflow_ids(actions: Iterable[ScheduleActionExecution]) -> list[str]:
    return [action.workflow_id for action in actions if isinstance(action, ScheduleActionExecutionStartWorkflow)]


class ScheduleMissingError(Exception):
    """The archival schedule does not exist yet (no worker has started)."""


async def trigger_archival(
    client: Client, *, schedule_id: str = ARCHIVAL_SCHEDULE_ID, timeout: timedelta = timedelta(seconds=30)
) -> str:
    """Start an archival run now through the schedule (even a paused one); returns its workflow id.

    If a run is already in progress that run's id is returned: the overlap policy would skip a
    second one anyway.
    """
    handle = client.get_schedule_handle(schedule_id)
    try:
        before = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleMissingError(f"schedule {schedule_id} does not exist; start a worker once") from None
        raise
    if running := _workflow_ids(before.info.running_actions):
        return running[0]
    known = set(_workflow_ids([result.action for result in before.info.recent_actions]))
    await handle.trigger()
    deadline = asyncio.get_running_loop().time() + timeout.total_seconds()
    while asyncio.get_running_loop().time() < deadline:
        info = (await handle.describe()).info
        started = _workflow_ids([*info.running_actions, *(result.action for result in info.recent_actions)])
        new = [workflow_id for workflow_id in started if workflow_id not in known]
        if new:
            return new[0]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"schedule {schedule_id} did not start a run within {timeout}")


async def run_progress(client: Client, workflow_id: str) -> ArchivalRun:
    """A run's status and progress (the ``progress`` query; the result once it completed)."""
    handle = client.get_workflow_handle_for(ArchivalWorkflow.run, workflow_id)
    description = await handle.describe()
    status = description.status
    progress: ArchivalProgress | None = None
    if status == WorkflowExecutionStatus.COMPLETED:
        progress = await handle.result()
    elif status == WorkflowExecutionStatus.RUNNING:
        try:
            progress = await handle.query(ArchivalWorkflow.progress, rpc_timeout=_QUERY_TIMEOUT)
        except RPCError:
            progress = None  # no worker answering right now: the status still says RUNNING
    return ArchivalRun(
        workflow_id=workflow_id,
        status=status.name if status is not None else "UNKNOWN",
        started_at=description.start_time,
        progress=progress,
    )


async def archival_status(
    client: Client, *, schedule_id: str = ARCHIVAL_SCHEDULE_ID, recent: int = 3
) -> ArchivalScheduleStatus:
    """The schedule (paused? when next?) and its running and latest runs."""
    try:
        description = await client.get_schedule_handle(schedule_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleMissingError(f"schedule {schedule_id} does not exist; start a worker once") from None
        raise
    schedule, info = description.schedule, description.info
    calendars = schedule.spec.calendars
    hour = calendars[0].hour[0].start if calendars and calendars[0].hour else None
    retention_days: int | None = None
    if isinstance(schedule.action, ScheduleActionStartWorkflow) and schedule.action.args:
        payloads = list(schedule.action.args)
        decoded = await client.data_converter.decode(payloads, [ArchivalInput])
        retention_days = decoded[0].retention_days
    running = _workflow_ids(info.running_actions)
    recent_results = list(reversed(info.recent_actions))
    latest = _workflow_ids(result.action for result in recent_results)
    scheduled_at = {
        result.action.workflow_id: result.scheduled_at
        for result in recent_results
        if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
    }
    runs: list[ArchivalRun] = []
    for workflow_id in list(dict.fromkeys(running + latest))[: recent + len(running)]:
        run = await run_progress(client, workflow_id)
        run.scheduled_at = scheduled_at.get(workflow_id)
        runs.append(run)
    return ArchivalScheduleStatus(
        schedule_id=schedule_id,
        paused=schedule.state.paused,
        note=schedule.state.note or "",
        hour=hour,
        time_zone=schedule.spec.time_zone_name or "UTC",
        retention_days=retention_days,
        next_runs=list(info.next_action_times),
        runs=runs,
        skipped_overlap=info.num_actions_skipped_overlap,
        missed_catchup=info.num_actions_missed_catchup_window,
    )
