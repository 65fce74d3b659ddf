"""``AccountDeletionWorkflow``: the saga that deletes an account and proves nothing is left.

Steps (one idempotent activity each): lock the account → anonymize its activity → delete every
sandbox through its own workflow → delete the user's data → delete the user → verify that no row,
container or volume still references the user → write one anonymized audit record.

Saga shape (compensatable → pivot → forward): a cancel before the sandbox step unlocks the account
again; from the sandbox step on the deletion only moves forward (unlimited retries, a cancel request
is logged and ignored), so an account is never left half deleted. A crash anywhere resumes by replay.

Progress is visible without a worker: memo ``progress`` (read by the API through ``describe``), the
Web UI's current details, and the ``AgentpodStatus`` search attribute. The bottom of this module is
the caller side (start, status), used by the API.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError, is_cancelled_exception
from temporalio.service import RPCError, RPCStatusCode

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.account import (
        STEP_TITLES,
        AccountDeletionInput,
        AccountInventory,
        DeletionProgress,
        DeletionRecord,
        DeletionState,
        DeletionStatus,
        DeletionStep,
        SandboxesDeleted,
        VerifyInput,
    )
    from workflows.ids import account_deletion_workflow_id

USER_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodUserId")
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")
PROGRESS_MEMO = "progress"
# Cleanup passes before giving up; a second one runs only if the verification found something
# (e.g. a sandbox created by a request that was already past authentication when the lock came).
MAX_ROUNDS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class _Profile:
    """Timeouts and retries for one kind of activity."""

    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None


# Forward recovery: every step retries until it succeeds (database or Docker back), never gives up.
_DB = _Profile(timedelta(seconds=60), RetryPolicy(maximum_interval=timedelta(seconds=30)))
_SANDBOXES = _Profile(
    timedelta(minutes=10), RetryPolicy(maximum_interval=timedelta(minutes=1)), heartbeat=timedelta(seconds=20)
)
_VERIFY = _Profile(timedelta(minutes=2), RetryPolicy(maximum_interval=timedelta(seconds=30)), timedelta(seconds=20))


@workflow.defn
class AccountDeletionWorkflow:
    """Delete one account completely (id ``account-deletion-<user id>``)."""

    @workflow.init
    def __init__(self, data: AccountDeletionInput) -> None:
        self._progress = DeletionProgress(user_id=data.user_id)

    @workflow.run
    async def run(self, data: AccountDeletionInput) -> DeletionProgress:
        """Run every step; returns the final progress (counts of what was removed)."""
        user_id = data.user_id
        try:
            inventory = await self._step(DeletionStep.LOCK, "account_lock", user_id, result_type=AccountInventory)
            # Counts come from the inventory: a step retried after its work was done reports zero.
            self._progress.counts.update(inventory.counts, sessions_revoked=inventory.sessions_revoked)
            await self._step(DeletionStep.ANONYMIZE, "account_anonymize_activity", user_id, result_type=int)
        except BaseException as error:
            if is_cancelled_exception(error):
                # Nothing destroyed yet: give the account back. Shielded, so the cancel cannot stop it.
                await asyncio.shield(asyncio.ensure_future(self._unlock(user_id)))
            raise
        finishing = asyncio.ensure_future(self._finish(user_id, inventory.sandbox_ids))
        while not finishing.done():
            try:
                await asyncio.shield(finishing)
            except asyncio.CancelledError:
                if finishing.done():
                    raise
                workflow.logger.warning("cancel of the deletion of %s ignored: data is already going", user_id)
        return finishing.result()

    @workflow.query
    def progress(self) -> DeletionProgress:
        """What has been done so far."""
        return self._progress

    async def _finish(self, user_id: str, known_sandboxes: list[str]) -> DeletionProgress:
        sandbox_ids = list(known_sandboxes)
        for round_number in range(1, MAX_ROUNDS + 1):
            self._progress.rounds = round_number
            deleted = await self._step(
                DeletionStep.SANDBOXES,
                "account_delete_sandboxes",
                user_id,
                result_type=SandboxesDeleted,
                profile=_SANDBOXES,
            )
            sandbox_ids += [sandbox_id for sandbox_id in deleted.sandbox_ids if sandbox_id not in sandbox_ids]
            self._progress.counts["sandboxes"] = len(sandbox_ids)
            self._count("stray_containers", deleted.orphans_removed)
            await self._step(DeletionStep.DATA, "account_delete_data", user_id, result_type=dict)
            await self._step(DeletionStep.USER, "account_delete_user", user_id, result_type=bool)
            scan = VerifyInput(user_id=user_id, sandbox_ids=sandbox_ids)
            leftovers: list[str] = await self._step(
                DeletionStep.VERIFY, "account_verify_deleted", scan, result_type=list, profile=_VERIFY
            )
            self._progress.leftovers = leftovers
            if not leftovers:
                break
            if round_number == MAX_ROUNDS:
                self._publish()
                raise ApplicationError(
                    f"still referencing the user after {MAX_ROUNDS} rounds: {'; '.join(leftovers)}",
                    type="DeletionIncomplete",
                )
            workflow.logger.warning("deletion of %s: %s left; another round", user_id, "; ".join(leftovers))
        record = DeletionRecord(event_id=str(workflow.uuid4()), counts=dict(self._progress.counts))
        await self._step(DeletionStep.AUDIT, "account_record_deletion", record, result_type=type(None))
        self._progress.current = None
        self._progress.done = True
        self._publish()
        return self._progress

    async def _unlock(self, user_id: str) -> None:
        await workflow.execute_activity(
            "account_unlock", user_id, start_to_close_timeout=_DB.start_to_close, retry_policy=_DB.retry
        )

    async def _step(
        self, step: DeletionStep, activity: str, arg: Any, *, result_type: type[T], profile: _Profile = _DB
    ) -> T:
        """Run one step's activity by name (the workflow never imports activity code, which does I/O)."""
        self._progress.current = step
        self._publish()
        result: T = await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=profile.start_to_close,
            heartbeat_timeout=profile.heartbeat,
            retry_policy=profile.retry,
        )
        if step not in self._progress.completed:
            self._progress.completed.append(step)
        return result

    def _count(self, name: str, value: int) -> None:
        self._progress.counts[name] = self._progress.counts.get(name, 0) + value

    def _publish(self) -> None:
        """Show progress to the API (memo), and to operators (current details, search attribute)."""
        progress = self._progress
        workflow.upsert_memo({PROGRESS_MEMO: progress})
        status = "deleted" if progress.done else f"deleting: {progress.current or 'starting'}"
        workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status)])

        def mark(step: DeletionStep) -> str:
            if step == progress.current:
                return "…"
            return "✓" if step in progress.completed else " "

        lines = [f"- [{mark(step)}] {STEP_TITLES[step]}" for step in DeletionStep]
        counts = ", ".join(f"{name} {count}" for name, count in sorted(progress.counts.items())) or "-"
        leftovers = f"\n\n**Still found:** {'; '.join(progress.leftovers)}" if progress.leftovers else ""
        workflow.set_current_details("\n".join(lines) + f"\n\n**Removed:** {counts}{leftovers}")


# --------------------------------------------------------------------------- caller side


async def start_deletion(client: Client, user_id: str, *, task_queue: str) -> None:
    """Start the user's deletion, or join the one running (a repeated request is the same deletion)."""
    # Already started and completed: the account is gone, nothing to do.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            AccountDeletionWorkflow.run,
            AccountDeletionInput(user_id=user_id),
            id=account_deletion_workflow_id(user_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A failed or terminated deletion may be started again; a completed one is final.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=TypedSearchAttributes([SearchAttributePair(USER_ATTRIBUTE, user_id)]),
            static_summary=f"Deletion of account {user_id}",
            static_details="Query `progress` for the steps done and counts; cancelling only helps before "
            "the sandbox step (the account is unlocked again), afterwards the deletion completes anyway.",
        )


_STATES = {
    WorkflowExecutionStatus.RUNNING: DeletionState.RUNNING,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: DeletionState.RUNNING,
    WorkflowExecutionStatus.COMPLETED: DeletionState.COMPLETED,
    WorkflowExecutionStatus.CANCELED: DeletionState.CANCELLED,
}


async def deletion_status(client: Client, user_id: str) -> DeletionStatus | None:
    """The latest deletion of ``user_id`` (None if there never was one); needs no worker."""
    handle = client.get_workflow_handle(account_deletion_workflow_id(user_id))
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    progress: DeletionProgress | None = await description.memo_value(PROGRESS_MEMO, None, type_hint=DeletionProgress)
    state = _STATES.get(description.status, DeletionState.FAILED) if description.status else DeletionState.RUNNING
    return DeletionStatus(
        state=state, progress=progress, started_at=description.start_time, finished_at=description.close_time
    )
