"""``SessionRestoreWorkflow`` on the dev server with fake activities: order, concurrency, parents before
children, the on-demand update jumping the queue, a stopped sandbox ending it, and continue-as-new (the test
server suggests it after 80 events) losing and repeating nothing. The restore against a real container is
in tests/sync/test_session_restore_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agentpod.domain.contracts import SESSION_RESTORE_PLAN, SESSION_RESTORE_SAVE_PROGRESS, SESSION_RESTORE_SESSION
from agentpod.domain.session_restore import (
    RestoreOutcome,
    RestoreSessionInput,
    SaveRestoreProgressInput,
    SessionRestoreInput,
    SessionRestoreItem,
    SessionRestorePlan,
    SessionRestorePlanInput,
    SessionRestoreProgress,
    SessionRestoreResult,
)
from tests.histories import save_history_if_asked
from workflows.ids import session_restore_workflow_id
from workflows.session_restore import SANDBOX_NOT_RUNNING, SessionRestoreWorkflow
from workflows.session_restore_client import request_restore, restore_session

pytestmark = pytest.mark.temporal


@dataclass
class FakeRestore:
    """The three activities, in memory: a plan of ``items``, restores that take ``seconds`` each."""

    items: list[SessionRestoreItem] = field(default_factory=list)
    cpu_cores: int | None = None
    seconds: float = 0.05
    stop_at: str | None = None
    present: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    most_at_once: int = 0
    saved: list[SessionRestoreProgress] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # "+id" when a restore starts, "-id" when it ends
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    @activity.defn(name=SESSION_RESTORE_PLAN.name)
    async def plan(self, data: SessionRestorePlanInput) -> SessionRestorePlan:
        known = {item.session_id for item in self.items}
        extra = [SessionRestoreItem(session_id=key) for key in data.requested if key not in known and key != "nope"]
        return SessionRestorePlan(items=[*self.items, *extra], cpu_cores=self.cpu_cores)

    @activity.defn(name=SESSION_RESTORE_SESSION.name)
    async def restore(self, data: RestoreSessionInput) -> SessionRestoreResult:
        if data.session_id == self.stop_at:
            raise ApplicationError("the sandbox is stopping", type=SANDBOX_NOT_RUNNING, non_retryable=True)
        self.started.append(data.session_id)
        self.log.append(f"+{data.session_id}")
        self.running.add(data.session_id)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            await self.gate.wait()
            await asyncio.sleep(self.seconds)
        finally:
            self.running.discard(data.session_id)
        self.finished.append(data.session_id)
        self.log.append(f"-{data.session_id}")
        if data.session_id in self.present:
            return SessionRestoreResult(session_id=data.session_id, outcome=RestoreOutcome.PRESENT)
        self.present.add(data.session_id)
        return SessionRestoreResult(session_id=data.session_id, outcome=RestoreOutcome.RESTORED, messages=3)

    @activity.defn(name=SESSION_RESTORE_SAVE_PROGRESS.name)
    async def save(self, data: SaveRestoreProgressInput) -> None:
        self.saved.append(data.progress)


@dataclass
class Rig:
    client: Client
    queue: str
    fake: FakeRestore
    sandbox_id: str = field(default_factory=lambda: f"sb-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture
async def rig(temporal_dev_env: WorkflowEnvironment) -> AsyncIterator[Rig]:
    fake = FakeRestore()
    queue = f"restore-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        temporal_dev_env.client,
        task_queue=queue,
        workflows=[SessionRestoreWorkflow],
        activities=[fake.plan, fake.restore, fake.save],
    )
    rig = Rig(temporal_dev_env.client, queue, fake)
    async with worker:
        try:
            yield rig
        finally:
            with contextlib.suppress(RPCError):  # finished already
                await rig.client.get_workflow_handle(session_restore_workflow_id(rig.sandbox_id)).terminate("done")


def family(count: int) -> list[SessionRestoreItem]:
    """``count`` sessions in plan order; every third one a child of the one before it."""
    items: list[SessionRestoreItem] = []
    for n in range(count):
        parent = items[-1].session_id if n % 3 == 2 else None
        items.append(SessionRestoreItem(session_id=f"ses_{n:04d}", parent_id=parent))
    return items


async def finished(rig: Rig) -> SessionRestoreProgress:
    handle = rig.client.get_workflow_handle_for(SessionRestoreWorkflow.run, session_restore_workflow_id(rig.sandbox_id))
    return await asyncio.wait_for(handle.result(), 60)


async def test_every_session_once_newest_first_a_few_at_a_time_across_continue_as_new(rig: Rig) -> None:
    rig.fake.items = family(40)  # ~6 events each: several runs at 80 events per run
    await request_restore(rig.client, rig.sandbox_id, task_queue=rig.queue, concurrency=3)
    progress = await finished(rig)

    assert sorted(rig.fake.started) == [item.session_id for item in rig.fake.items]  # each once, none lost
    assert rig.fake.started[:3] == ["ses_0000", "ses_0001", "ses_0003"]  # ses_0002 waits for its parent
    for item in rig.fake.items:
        if item.parent_id:
            assert rig.fake.finished.index(item.parent_id) < rig.fake.started.index(item.session_id)
    assert rig.fake.most_at_once == 3
    assert (progress.state, progress.total, progress.restored, progress.failed) == ("done", 40, 40, 0)
    assert progress.current == [] and progress.started_at and progress.finished_at
    assert rig.fake.saved[-1] == progress  # the sync status shows the end
    history = await rig.client.get_workflow_handle(session_restore_workflow_id(rig.sandbox_id)).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id  # the last run continued an earlier one
    save_history_if_asked("session_restore", history)


async def test_the_newest_goes_alone_then_no_more_at_once_than_the_sandbox_has_cpus(rig: Rig) -> None:
    rig.fake.items = [SessionRestoreItem(session_id=f"ses_{n}") for n in range(8)]
    rig.fake.cpu_cores = 2
    await request_restore(rig.client, rig.sandbox_id, task_queue=rig.queue, concurrency=4)
    progress = await finished(rig)
    assert rig.fake.log[:2] == ["+ses_0", "-ses_0"]  # the most recent one is usable soonest
    assert rig.fake.most_at_once == 2 and progress.restored == 8


async def test_a_requested_session_jumps_the_queue_and_gets_its_answer(rig: Rig) -> None:
    rig.fake.items = family(12)
    rig.fake.gate.clear()  # hold the first restores until the request is in
    await request_restore(rig.client, rig.sandbox_id, task_queue=rig.queue, concurrency=1)
    for _ in range(200):  # the first restore is under way
        if rig.fake.started:
            break
        await asyncio.sleep(0.05)
    answer = asyncio.ensure_future(
        restore_session(
            rig.client, rig.sandbox_id, "ses_0008", task_queue=rig.queue, concurrency=1, wait=timedelta(seconds=30)
        )
    )
    await asyncio.sleep(0.5)
    rig.fake.gate.set()
    result = await answer
    assert result is not None and result.outcome == RestoreOutcome.RESTORED
    # Behind the one already running: its parent (ses_0007), then itself, then the rest.
    assert rig.fake.started[:3] == ["ses_0000", "ses_0007", "ses_0008"]
    progress = await finished(rig)
    assert sorted(rig.fake.started) == [item.session_id for item in rig.fake.items]
    assert progress.restored == 12

    # Later: a session OpenCode has answers at once; one we do not hold is skipped.
    again = await restore_session(
        rig.client, rig.sandbox_id, "ses_0008", task_queue=rig.queue, concurrency=1, wait=timedelta(seconds=30)
    )
    assert again is not None and again.outcome == RestoreOutcome.PRESENT
    unknown = await restore_session(
        rig.client, rig.sandbox_id, "nope", task_queue=rig.queue, concurrency=1, wait=timedelta(seconds=30)
    )
    assert unknown is not None and unknown.outcome == RestoreOutcome.SKIPPED


async def test_a_stopped_sandbox_ends_the_restore_and_refuses_more(rig: Rig) -> None:
    rig.fake.items = family(6)
    rig.fake.stop_at = "ses_0003"
    await request_restore(rig.client, rig.sandbox_id, task_queue=rig.queue, concurrency=1)
    progress = await finished(rig)
    assert progress.state == "stopped" and "stopping" in (progress.last_error or "")
    assert rig.fake.started == ["ses_0000", "ses_0001", "ses_0002"]  # one at a time; nothing after the stop
    assert progress.failed == 1 and progress.failed_sessions == ["ses_0003"]
    # A new request starts a new restore (the one that stopped is closed).
    rig.fake.stop_at = None
    result = await restore_session(
        rig.client, rig.sandbox_id, "ses_0005", task_queue=rig.queue, concurrency=1, wait=timedelta(seconds=30)
    )
    assert result is not None and result.outcome == RestoreOutcome.RESTORED


def test_the_input_carries_everything_across_continue_as_new() -> None:
    data = SessionRestoreInput(sandbox_id="sb", queue=family(2), attempted=["x"], progress=SessionRestoreProgress())
    assert SessionRestoreInput.model_validate_json(data.model_dump_json()) == data
