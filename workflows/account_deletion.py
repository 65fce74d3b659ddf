"""``AccountDeletionWorkflow``: the saga that deletes an account and proves nothing is left.

Steps (one idempotent activity each): lock the account → anonymize its activity → delete every
sandbox through its own workflow → delete the user's data → delete the user → verify that no row,
container or volume still references the user → write one anonymized audit record.

Saga shape (compensatable → pivot → forward): a cancel before the sandbox step unlocks the account
again; from the sandbox step on the deletion only moves forward (unlimited retries, a cancel request
is logged and ignored), so an account is never left half deleted. A crash anywhere resumes by replay.

Progress is visible without a worker: memo ``progress`` (read by the API through ``describe``), the
Web UI's current details, and the ``AgentpodStatus`` search attribute. The caller side (start,
status) is :mod:`workflows.account_deletion_client`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ApplicationError, is_cancelled_exception

from workflows.activity_options import ActivityOptions, execute

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.account import (
        STEP_TITLES,
        AccountDeletionInput,
        DeletionProgress,
        DeletionRecord,
        DeletionStep,
        VerifyInput,
    )
    from agentpod.domain.contracts import (
        ACCOUNT_ANONYMIZE_ACTIVITY,
        ACCOUNT_DELETE_DATA,
        ACCOUNT_DELETE_SANDBOXES,
        ACCOUNT_DELETE_USER,
        ACCOUNT_LOCK,
        ACCOUNT_RECORD_DELETION,
        ACCOUNT_UNLOCK,
        ACCOUNT_VERIFY_DELETED,
        ActivityContract,
    )

STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")
PROGRESS_MEMO = "progress"
# Cleanup passes before giving up; a second one runs only if the verification found something
# (e.g. a sandbox created by a request that was already past authentication when the lock came).
MAX_ROUNDS = 3

A = TypeVar("A")
R = TypeVar("R")

# Forward recovery: every step retries until it succeeds (database or Docker back), never gives up.
_DB = ActivityOptions(timedelta(seconds=60), RetryPolicy(maximum_interval=timedelta(seconds=30)))
_SANDBOXES = ActivityOptions(
    timedelta(minutes=10), RetryPolicy(maximum_interval=timedelta(minutes=1)), heartbeat=timedelta(seconds=20)
)
_VERIFY = ActivityOptions(
    timedelta(minutes=2), RetryPolicy(maximum_interval=timedelta(seconds=30)), timedelta(seconds=20)
)


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
            inventory = await self._step(DeletionStep.LOCK, ACCOUNT_LOCK, user_id)
            # Counts come from the inventory: a step retried after its work was done reports zero.
            self._progress.counts.update(inventory.counts, sessions_revoked=inventory.sessions_revoked)
            await self._step(DeletionStep.ANONYMIZE, ACCOUNT_ANONYMIZE_ACTIVITY, user_id)
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
            deleted = await self._step(DeletionStep.SANDBOXES, ACCOUNT_DELETE_SANDBOXES, user_id, options=_SANDBOXES)
            sandbox_ids += [sandbox_id for sandbox_id in deleted.sandbox_ids if sandbox_id not in sandbox_ids]
            self._progress.counts["sandboxes"] = len(sandbox_ids)
            self._count("stray_containers", deleted.orphans_removed)
            await self._step(DeletionStep.DATA, ACCOUNT_DELETE_DATA, user_id)
            await self._step(DeletionStep.USER, ACCOUNT_DELETE_USER, user_id)
            scan = VerifyInput(user_id=user_id, sandbox_ids=sandbox_ids)
            leftovers = await self._step(DeletionStep.VERIFY, ACCOUNT_VERIFY_DELETED, scan, options=_VERIFY)
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
        await self._step(DeletionStep.AUDIT, ACCOUNT_RECORD_DELETION, record)
        self._progress.current = None
        self._progress.done = True
        self._publish()
        return self._progress

    async def _unlock(self, user_id: str) -> None:
        await execute(ACCOUNT_UNLOCK, user_id, options=_DB)

    async def _step(
        self, step: DeletionStep, contract: ActivityContract[A, R], arg: A, *, options: ActivityOptions = _DB
    ) -> R:
        """Run one step's activity, showing the step as current while it runs."""
        self._progress.current = step
        self._publish()
        result = await execute(contract, arg, options=options)
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
