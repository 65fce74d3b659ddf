"""Caller side of ``MirrorReconcilerWorkflow``: its Temporal Schedule (every few minutes, created or updated
at every worker start) and the pass a worker starts when it comes up.

As with the archival schedule, an update keeps the schedule's *state*: an operator who paused the
reconciler in the Web UI stays paused across deployments, and a worker then starts no pass either
(the worker asks :func:`ensure_mirror_reconcile_schedule` whether it is paused).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from agentpod.domain.mirror_reconciler import MirrorReconcileInput, MirrorReconcileReport
from workflows.ids import MIRROR_RECONCILE_SCHEDULE_ID, MIRROR_RECONCILER_WORKFLOW_ID
from workflows.mirror_reconciler import MirrorReconcilerWorkflow

SUMMARY = "Chat-mirror reconciler: restarts the missing chat mirrors of running sandboxes"
DETAILS = (
    "Lists the sandboxes running in the database and the running `sandbox-sync-<id>` / `acp-sync-<id>` "
    "workflows, and starts the mirrors that are missing (a sandbox imported from Docker labels, or a mirror "
    "an operator terminated). Safe to run any time: a start joins a mirror that is already running."
)
# A pass missed while Temporal was down is not worth catching up: the next one comes within minutes.
MIRROR_RECONCILE_CATCHUP_WINDOW = timedelta(minutes=1)

log = logging.getLogger(__name__)


def mirror_reconcile_schedule(*, task_queue: str, every: timedelta) -> Schedule:
    """A pass every ``every``, skipped while the previous one still runs."""
    minutes = every.total_seconds() / 60
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MirrorReconcilerWorkflow.run,
            MirrorReconcileInput(),
            id=MIRROR_RECONCILER_WORKFLOW_ID,
            task_queue=task_queue,
            static_summary=SUMMARY,
            static_details=DETAILS,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=MIRROR_RECONCILE_CATCHUP_WINDOW),
        state=ScheduleState(
            note=f"Every {minutes:g} min: restarts the chat mirrors of running sandboxes that have none. "
            "Managed by the worker: spec and action are rewritten at every worker start; a pause is kept."
        ),
    )


async def ensure_mirror_reconcile_schedule(
    client: Client, *, task_queue: str, every: timedelta, schedule_id: str = MIRROR_RECONCILE_SCHEDULE_ID
) -> bool:
    """Create the schedule, or bring an existing one up to date without touching its state.

    Returns whether the schedule is paused (an operator's choice, kept).
    """
    desired = mirror_reconcile_schedule(task_queue=task_queue, every=every)
    try:
        await client.create_schedule(schedule_id, desired, memo={"description": DETAILS})
        log.info("created schedule %s (every %s)", schedule_id, every)
        return False
    except ScheduleAlreadyRunningError:
        pass
    paused = False

    def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        nonlocal paused
        desired.state = current.description.schedule.state
        paused = desired.state.paused
        return ScheduleUpdate(schedule=desired)

    await client.get_schedule_handle(schedule_id).update(keep_state)
    log.info("updated schedule %s (every %s%s)", schedule_id, every, ", paused" if paused else "")
    return paused


async def start_reconcile_pass(
    client: Client, *, task_queue: str, workflow_id: str = MIRROR_RECONCILER_WORKFLOW_ID, why: str = "worker start"
) -> WorkflowHandle[MirrorReconcilerWorkflow, MirrorReconcileReport]:
    """Start one pass now (a pass already running under ``workflow_id`` is joined); ``why`` goes in its summary."""
    return await client.start_workflow(
        MirrorReconcilerWorkflow.run,
        MirrorReconcileInput(),
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"{SUMMARY} ({why})",
        static_details=DETAILS,
    )


async def start_pass_at_worker_start(client: Client, *, task_queue: str) -> None:
    """Start one pass as the worker comes up (beside it: start-up never waits for this).

    A failure is only logged: the schedule's next pass, or the next worker start, tries again.
    """
    try:
        handle = await start_reconcile_pass(client, task_queue=task_queue)
    except RPCError as error:
        log.warning("no mirror reconcile pass at worker start: %s", error)
        return
    log.info("mirror reconcile pass %s started", handle.id)
