"""The mirror reconciler on the dev server: real sync workflows (fake agent activities), the real pass, a real
database; and its schedule. The end-to-end run with a container is in tests/sync/test_mirror_reconciler_e2e.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.mirror_reconciler import MirrorReconcilerActivities
from activities.resources import WorkerResources
from agentpod.domain.chat import SyncTarget, SyncWorkflowInput
from agentpod.domain.mirror_reconciler import MirrorReconcileReport
from agentpod.settings import Settings
from agentpod.store.tables import Sandbox, User
from tests.fakes.mirror_activities import FakeMirrors
from tests.helpers import eventually
from tests.histories import save_history_if_asked
from workflows.acp_sync import AcpSyncWorkflow
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.mirror_reconciler import MirrorReconcilerWorkflow
from workflows.mirror_reconciler_client import (
    MIRROR_RECONCILE_CATCHUP_WINDOW,
    SUMMARY,
    ensure_mirror_reconcile_schedule,
    start_reconcile_pass,
)
from workflows.opencode_sync import OpenCodeSyncWorkflow

pytestmark = pytest.mark.temporal


@dataclass
class Fleet:
    """A worker running the reconciler and both mirrors (fake agent activities) on its own task queue."""

    client: Client
    queue: str
    sessions: async_sessionmaker[AsyncSession]
    activities: MirrorReconcilerActivities
    mirrors: FakeMirrors
    user_id: str
    sandbox_ids: list[str] = field(default_factory=list)

    async def sandbox(self, status: str, *, opencode: bool = True, acp: bool = True) -> str:
        """A sandbox row with internal addresses as the sandbox workflow writes them (or none)."""
        port = 20000 + uuid.uuid4().int % 10000
        async with self.sessions() as db:
            row = Sandbox(
                user_id=self.user_id,
                name=f"sb-{uuid.uuid4().hex[:8]}",
                slug=f"sb-{uuid.uuid4().hex[:8]}",
                repo_name="demo",
                resource_tier_id="starter",
                flavor_id="js",
                status=status,
                opencode_internal_url=f"http://127.0.0.1:{port}" if opencode else None,
                acp_internal_url=f"http://127.0.0.1:{port + 1}" if opencode and acp else None,
            )
            db.add(row)
            await db.commit()
            self.sandbox_ids.append(row.id)
            return row.id

    async def target(self, sandbox_id: str) -> SyncTarget:
        async with self.sessions() as db:
            row = await db.get(Sandbox, sandbox_id)
            assert row is not None and row.opencode_internal_url is not None
            return SyncTarget(
                sandbox_id=row.id,
                user_id=row.user_id,
                opencode_url=row.opencode_internal_url,
                acp_url=row.acp_internal_url,
            )

    async def start_mirror(self, workflow: type[OpenCodeSyncWorkflow | AcpSyncWorkflow], sandbox_id: str) -> None:
        """A mirror started as the sandbox workflow starts it (before the reconciler looks)."""
        ids = {OpenCodeSyncWorkflow: sandbox_sync_workflow_id, AcpSyncWorkflow: acp_sync_workflow_id}
        await self.client.start_workflow(
            workflow.run,
            SyncWorkflowInput(target=await self.target(sandbox_id)),
            id=ids[workflow](sandbox_id),
            task_queue=self.queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    async def running(self, workflow_id: str) -> bool:
        try:
            return (await self.client.get_workflow_handle(workflow_id).describe()).status == (
                WorkflowExecutionStatus.RUNNING
            )
        except RPCError:
            return False

    async def listed(self, *workflow_ids: str) -> None:
        """Wait until the visibility listing (what the pass reads) shows these mirrors running."""

        async def shown() -> bool:
            query = " OR ".join(f"WorkflowId = '{workflow_id}'" for workflow_id in workflow_ids)
            found = {w.id async for w in self.client.list_workflows(f"ExecutionStatus = 'Running' AND ({query})")}
            return found == set(workflow_ids)

        await eventually(shown, timeout=10, what=f"{workflow_ids} in the visibility listing")

    async def run_pass(self) -> tuple[MirrorReconcileReport, str]:
        handle = await start_reconcile_pass(
            self.client, task_queue=self.queue, workflow_id=f"mirror-reconciler-{uuid.uuid4().hex[:8]}", why="test"
        )
        return await handle.result(), handle.id


@pytest_asyncio.fixture
async def fleet(
    temporal_dev_env: WorkflowEnvironment, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Fleet]:
    client = temporal_dev_env.client
    resources = WorkerResources(settings=settings, sessions=sessions, temporal=client)
    activities = MirrorReconcilerActivities(resources)
    mirrors = FakeMirrors()
    async with sessions() as db:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", name="Owner", password_hash=None)
        db.add(user)
        await db.commit()
        user_id = user.id
    worker = Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[MirrorReconcilerWorkflow, OpenCodeSyncWorkflow, AcpSyncWorkflow],
        activities=[*activities.all(), *mirrors.activities()],
    )
    fleet = Fleet(client, settings.temporal_task_queue, sessions, activities, mirrors, user_id)
    async with worker:
        try:
            yield fleet
        finally:
            for sandbox_id in fleet.sandbox_ids:
                for mirror_id in (sandbox_sync_workflow_id(sandbox_id), acp_sync_workflow_id(sandbox_id)):
                    with contextlib.suppress(RPCError):
                        await client.get_workflow_handle(mirror_id).terminate("test finished")


async def test_a_pass_starts_exactly_the_missing_mirrors_of_running_sandboxes(fleet: Fleet) -> None:
    unmirrored = await fleet.sandbox("running")  # imported, or both mirrors terminated
    acp_lost = await fleet.sandbox("running")  # an operator terminated its ACP mirror
    mirrored = await fleet.sandbox("running", acp=False)  # no gateway: the OpenCode mirror is all it needs
    stopped = await fleet.sandbox("stopped")
    no_address = await fleet.sandbox("running", opencode=False)  # no address stored, no container either
    await fleet.start_mirror(OpenCodeSyncWorkflow, acp_lost)
    await fleet.start_mirror(OpenCodeSyncWorkflow, mirrored)
    await fleet.listed(sandbox_sync_workflow_id(acp_lost), sandbox_sync_workflow_id(mirrored))

    report, workflow_id = await fleet.run_pass()

    assert (report.checked, report.already_mirrored, report.started, report.no_address, report.failed) == (
        4,
        1,
        2,
        1,
        0,
    )
    assert report.started_sandboxes == sorted([unmirrored, acp_lost])
    assert [problem.split(":")[0] for problem in report.problems] == [no_address]
    for workflow_id_running in (
        sandbox_sync_workflow_id(unmirrored),
        acp_sync_workflow_id(unmirrored),
        sandbox_sync_workflow_id(acp_lost),
        acp_sync_workflow_id(acp_lost),
        sandbox_sync_workflow_id(mirrored),
    ):
        assert await fleet.running(workflow_id_running), workflow_id_running
    for workflow_id_absent in (
        acp_sync_workflow_id(mirrored),
        sandbox_sync_workflow_id(stopped),
        sandbox_sync_workflow_id(no_address),
    ):
        assert not await fleet.running(workflow_id_absent), workflow_id_absent
    # The mirrors follow the addresses the sandbox workflow stored.
    unmirrored_target = await fleet.target(unmirrored)
    await eventually(
        lambda: _async(("acp_stream_segment", unmirrored, unmirrored_target.acp_url) in fleet.mirrors.segments),
        timeout=10,
        what="the restarted ACP mirror to follow the stored gateway address",
    )

    # What an operator sees in the Web UI: the counts as current details.
    handle = fleet.client.get_workflow_handle(workflow_id)
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "**Checked:** 4 running sandboxes" in metadata.current_details
    assert "**started:** 2" in metadata.current_details
    save_history_if_asked("mirror_reconciler", await handle.fetch_history())

    # A second pass finds nothing to do: every start joined, nothing twice.
    await fleet.listed(acp_sync_workflow_id(unmirrored), acp_sync_workflow_id(acp_lost))
    again, _ = await fleet.run_pass()
    assert (again.checked, again.already_mirrored, again.started, again.no_address) == (4, 3, 0, 1)


async def test_a_sandbox_stopped_or_moved_during_the_pass_ends_with_the_right_mirror(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    stops = await fleet.sandbox("running")
    moves = await fleet.sandbox("running", acp=False)
    moved_to = "http://127.0.0.1:39999"
    sync = fleet.activities._sync
    real_ensure = sync.ensure_sync

    async def sandbox_workflow_acts_meanwhile(target: SyncTarget) -> None:
        """Right after the pass starts a mirror, the sandbox workflow (done with its own mirror work) stops
        the sandbox, or recreates its container on another port."""
        await real_ensure(target)
        async with fleet.sessions() as db:
            values = {"status": "stopped"} if target.sandbox_id == stops else {"opencode_internal_url": moved_to}
            await db.execute(update(Sandbox).where(Sandbox.id == target.sandbox_id).values(**values))
            await db.commit()

    monkeypatch.setattr(sync, "ensure_sync", sandbox_workflow_acts_meanwhile)
    report, _ = await fleet.run_pass()

    assert (report.checked, report.started, report.finished_again) == (2, 1, 1)
    assert report.started_sandboxes == [moves]
    # The stopped sandbox's new mirror took a last look and ended; the moved one follows the new address.
    finished = fleet.client.get_workflow_handle(sandbox_sync_workflow_id(stops))
    assert (await finished.result()) is not None
    assert ("opencode_reconcile", stops) in fleet.mirrors.reconciles
    await eventually(
        lambda: _async(("opencode_stream_segment", moves, moved_to) in fleet.mirrors.segments),
        timeout=10,
        what="the mirror of the moved sandbox to follow its new address",
    )
    assert await fleet.running(sandbox_sync_workflow_id(moves))


async def test_schedule_runs_every_few_minutes_and_a_worker_restart_keeps_an_operator_pause(
    temporal_dev_env: WorkflowEnvironment,
) -> None:
    client, schedule_id = temporal_dev_env.client, f"test-mirror-reconcile-{uuid.uuid4().hex[:8]}"
    queue = f"nobody-polls-{uuid.uuid4().hex[:8]}"
    handle = client.get_schedule_handle(schedule_id)
    paused = await ensure_mirror_reconcile_schedule(
        client, task_queue=queue, every=timedelta(minutes=5), schedule_id=schedule_id
    )
    try:
        assert paused is False
        described = await handle.describe()
        schedule = described.schedule
        assert [interval.every for interval in schedule.spec.intervals] == [timedelta(minutes=5)]
        assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert schedule.policy.catchup_window == MIRROR_RECONCILE_CATCHUP_WINDOW
        assert isinstance(schedule.action, ScheduleActionStartWorkflow)
        assert (schedule.action.workflow, schedule.action.task_queue) == ("MirrorReconcilerWorkflow", queue)
        summary = schedule.action.static_summary
        assert summary is not None and not isinstance(summary, str)  # as described: the stored payload
        assert client.data_converter.payload_converter.from_payload(summary, str) == SUMMARY
        assert "restarts the chat mirrors" in (schedule.state.note or "")
        assert "description" in (await described.memo())

        # An operator pauses it; a worker restart with a new interval updates the spec but keeps the pause.
        await handle.pause(note="paused by ops: mirror storm")
        paused = await ensure_mirror_reconcile_schedule(
            client, task_queue=queue, every=timedelta(minutes=7), schedule_id=schedule_id
        )
        described = await handle.describe()
        assert paused is True
        assert (described.schedule.state.paused, described.schedule.state.note) == (True, "paused by ops: mirror storm")
        assert [interval.every for interval in described.schedule.spec.intervals] == [timedelta(minutes=7)]

        await handle.unpause()
        assert (
            await ensure_mirror_reconcile_schedule(
                client, task_queue=queue, every=timedelta(minutes=7), schedule_id=schedule_id
            )
            is False
        )
    finally:
        await handle.delete()


async def _async(value: bool) -> bool:
    return value
