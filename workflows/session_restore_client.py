"""Caller side of ``SessionRestoreWorkflow``: start a sandbox's restore (or have the running one look
again), and restore one session on request. Used by the OpenCode mirror's activity and by the API.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from agentpod.domain.session_restore import SessionRestoreInput, SessionRestoreRequest, SessionRestoreResult
from workflows.ids import session_restore_workflow_id
from workflows.session_restore import SessionRestoreWorkflow

SANDBOX_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodSandboxId")
USER_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodUserId")
_DETAILS = (
    "Imports the OpenCode sessions we hold but the sandbox's OpenCode lacks (new container, lost /data "
    "volume), newest first, with `opencode import` in the container. Query `progress`; the chat API's sync "
    "status shows it too."
)


def _search_attributes(sandbox_id: str, user_id: str | None) -> TypedSearchAttributes:
    pairs = [SearchAttributePair(SANDBOX_ATTRIBUTE, sandbox_id)]
    if user_id:
        pairs.append(SearchAttributePair(USER_ATTRIBUTE, user_id))
    return TypedSearchAttributes(pairs)


async def request_restore(
    client: Client, sandbox_id: str, *, task_queue: str, concurrency: int, user_id: str | None = None
) -> None:
    """Start the sandbox's restore, or make the running one plan again (signal-with-start ``restore``)."""
    await client.start_workflow(
        SessionRestoreWorkflow.run,
        SessionRestoreInput(sandbox_id=sandbox_id, concurrency=concurrency),
        id=session_restore_workflow_id(sandbox_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(sandbox_id, user_id),
        static_summary=f"Session restore of sandbox {sandbox_id}",
        static_details=_DETAILS,
        start_signal="restore",
        start_signal_args=[SessionRestoreRequest()],
    )


async def restore_session(
    client: Client,
    sandbox_id: str,
    session_id: str,
    *,
    task_queue: str,
    concurrency: int,
    wait: timedelta,
    user_id: str | None = None,
) -> SessionRestoreResult | None:
    """Restore one session ahead of any others (update-with-start ``restore_session``); its outcome, or None
    when it takes longer than ``wait`` (it goes on). Raises ``TimeoutError`` when the request is not even
    accepted within ``wait``, ``WorkflowUpdateFailedError`` when the restore refuses (the sandbox stopped)."""
    operation = WithStartWorkflowOperation(
        SessionRestoreWorkflow.run,
        SessionRestoreInput(sandbox_id=sandbox_id, concurrency=concurrency),
        id=session_restore_workflow_id(sandbox_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(sandbox_id, user_id),
        static_summary=f"Session restore of sandbox {sandbox_id}",
        static_details=_DETAILS,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    # Not accepted in time (Temporal or every worker unreachable): the caller's TimeoutError.
    handle = await asyncio.wait_for(
        client.start_update_with_start_workflow(
            SessionRestoreWorkflow.restore_session,
            session_id,
            start_workflow_operation=operation,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        ),
        wait.total_seconds(),
    )
    try:
        return await asyncio.wait_for(handle.result(), max(0.0, deadline - loop.time()))
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return None
