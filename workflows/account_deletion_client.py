"""Caller side of ``AccountDeletionWorkflow``: start a deletion (or join the one under way) and read
its status. Used by the API; needs no worker (the status comes from Temporal's record of the workflow).
"""

from __future__ import annotations

import contextlib

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from agentpod.domain.account import AccountDeletionInput, DeletionProgress, DeletionState, DeletionStatus
from workflows.account_deletion import PROGRESS_MEMO, AccountDeletionWorkflow
from workflows.ids import account_deletion_workflow_id

USER_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodUserId")


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
    handle = client.get_workflow_handle_for(AccountDeletionWorkflow.run, account_deletion_workflow_id(user_id))
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
