"""The bridge from HTTP to each sandbox's Temporal workflow: start it, send it requests, map its errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import ApplicationError

from api.errors import Conflict
from core.settings import Settings
from domain.sandbox import (
    Actor,
    DesiredState,
    SandboxStatus,
    SandboxUrls,
    SandboxWorkflowInput,
    SandboxWorkflowState,
    TransitionRequest,
)
from store.tables import Sandbox
from workflows.ids import sandbox_workflow_id
from workflows.sandbox import ILLEGAL_TRANSITION, SandboxWorkflow

USER_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodUserId")
SANDBOX_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodSandboxId")
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")


class StillRunning(Exception):
    """The request was accepted but has not finished within the wait budget."""


def _initial_state(sandbox: Sandbox) -> SandboxWorkflowState:
    # A workflow (re)created for an existing row starts from what the row says, so a workflow an
    # operator terminated comes back knowing the container it is responsible for.
    status = SandboxStatus(sandbox.status)
    live = status in (SandboxStatus.RUNNING, SandboxStatus.STARTING)
    return SandboxWorkflowState(
        sandbox_id=sandbox.id,
        user_id=sandbox.user_id,
        status=status,
        desired=DesiredState.RUNNING if live else DesiredState.STOPPED,
        container_id=sandbox.container_id,
        urls=SandboxUrls(
            opencode_url=sandbox.opencode_url,
            acp_gateway_url=sandbox.acp_gateway_url,
            code_server_url=sandbox.code_server_url,
            vnc_url=sandbox.vnc_url,
        ),
    )


def start_operation(
    settings: Settings, sandbox: Sandbox
) -> WithStartWorkflowOperation[SandboxWorkflow, SandboxWorkflowState]:
    """Start the sandbox's workflow, or use the one already running (never two per sandbox)."""
    return WithStartWorkflowOperation(
        SandboxWorkflow.run,
        SandboxWorkflowInput(
            sandbox_id=sandbox.id,
            user_id=sandbox.user_id,
            name=sandbox.name,
            drift_check_seconds=settings.sandbox_drift_check_seconds,
            state=_initial_state(sandbox),
        ),
        id=sandbox_workflow_id(sandbox.id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(USER_ATTRIBUTE, sandbox.user_id),
                SearchAttributePair(SANDBOX_ATTRIBUTE, sandbox.id),
                SearchAttributePair(STATUS_ATTRIBUTE, sandbox.status),
            ]
        ),
        static_summary=f"Sandbox “{sandbox.name}” ({sandbox.slug}) of user {sandbox.user_id}",
        static_details=f"Sandbox id `{sandbox.id}`, repo `{sandbox.repo_name}`. "
        "Send the signal `operator_stop` / `operator_start` to stop or start it.",
    )


async def request_transition(
    client: Client,
    settings: Settings,
    sandbox: Sandbox,
    update: str,
    actor: Actor,
    *,
    changed_fields: list[str] | None = None,
    wait: timedelta | None = timedelta(seconds=90),
) -> SandboxWorkflowState | None:
    """Send ``update`` (start / stop / reconfigure / delete) and wait for it, up to ``wait``.

    Raises :class:`~api.errors.Conflict` when the workflow rejects the transition. Returns None when
    the request was accepted but is still running after ``wait`` (the caller answers 202).
    """
    request = TransitionRequest(actor=actor, changed_fields=changed_fields or [])
    try:
        handle = await client.start_update_with_start_workflow(
            update,
            request,
            start_workflow_operation=start_operation(settings, sandbox),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=SandboxWorkflowState,
        )
        if wait is None:
            return None
        result: SandboxWorkflowState = await asyncio.wait_for(handle.result(), wait.total_seconds())
        return result
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return None
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ILLEGAL_TRANSITION:
            raise Conflict(cause.message, code="illegal_transition") from None
        raise
