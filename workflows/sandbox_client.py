"""Caller side of ``SandboxWorkflow``: start it (or join the running one) and send it requests.

Used by the API, the CLI and other workflows' activities. Like the workflow itself it depends only on
``temporalio`` and ``domain``, so any process can drive sandboxes without the web stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
from temporalio.service import RPCError
from temporalio.workflow import UpdateMethodMultiParam

from agentpod.domain.sandbox import (
    Actor,
    DesiredState,
    SandboxRecord,
    SandboxStatus,
    SandboxTransition,
    SandboxWorkflowInput,
    SandboxWorkflowState,
    TransitionRequest,
)
from workflows.ids import sandbox_workflow_id
from workflows.sandbox import ILLEGAL_TRANSITION, SandboxWorkflow

USER_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodUserId")
SANDBOX_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodSandboxId")
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")

TransitionUpdate = UpdateMethodMultiParam[[SandboxWorkflow, TransitionRequest], SandboxWorkflowState]

# The workflow update that carries each transition: handles, not names, so a renamed update or a changed
# argument fails the type check instead of a request in production.
TRANSITION_UPDATES: dict[SandboxTransition, TransitionUpdate] = {
    SandboxTransition.START: SandboxWorkflow.start,
    SandboxTransition.STOP: SandboxWorkflow.stop,
    SandboxTransition.RECONFIGURE: SandboxWorkflow.reconfigure,
    SandboxTransition.DELETE: SandboxWorkflow.delete,
}


class IllegalTransitionError(Exception):
    """The workflow refused the request (e.g. stop while starting, start while deleting)."""


def initial_state(sandbox: SandboxRecord) -> SandboxWorkflowState:
    """Workflow state matching the row: a re-created workflow (after an operator terminated one, or an
    import from Docker) starts out knowing the container it is responsible for."""
    status = SandboxStatus(sandbox.status)
    live = status in (SandboxStatus.RUNNING, SandboxStatus.STARTING)
    return SandboxWorkflowState(
        sandbox_id=sandbox.id,
        user_id=sandbox.user_id,
        status=status,
        desired=DesiredState.RUNNING if live else DesiredState.STOPPED,
        container_id=sandbox.container_id,
        urls=sandbox.urls,
    )


def _workflow_input(sandbox: SandboxRecord, drift_check_seconds: float) -> SandboxWorkflowInput:
    return SandboxWorkflowInput(
        sandbox_id=sandbox.id,
        user_id=sandbox.user_id,
        name=sandbox.name,
        drift_check_seconds=drift_check_seconds,
        state=initial_state(sandbox),
    )


def _search_attributes(sandbox: SandboxRecord) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(USER_ATTRIBUTE, sandbox.user_id),
            SearchAttributePair(SANDBOX_ATTRIBUTE, sandbox.id),
            SearchAttributePair(STATUS_ATTRIBUTE, sandbox.status),
        ]
    )


def _summary(sandbox: SandboxRecord) -> str:
    return f"Sandbox “{sandbox.name}” ({sandbox.slug}) of user {sandbox.user_id}"


_DETAILS = (
    "Send the signal `operator_stop` / `operator_start` to stop or start this sandbox; "
    "query `describe` for its desired and observed state."
)


def start_operation(
    sandbox: SandboxRecord, *, task_queue: str, drift_check_seconds: float
) -> WithStartWorkflowOperation[SandboxWorkflow, SandboxWorkflowState]:
    """Start the sandbox's workflow, or use the one already running (never two per sandbox)."""
    return WithStartWorkflowOperation(
        SandboxWorkflow.run,
        _workflow_input(sandbox, drift_check_seconds),
        id=sandbox_workflow_id(sandbox.id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(sandbox),
        static_summary=_summary(sandbox),
        static_details=_DETAILS,
    )


async def ensure_workflow(
    client: Client, sandbox: SandboxRecord, *, task_queue: str, drift_check_seconds: float
) -> None:
    """Make sure the sandbox has its workflow (idempotent: an existing one is kept as it is)."""
    await client.start_workflow(
        SandboxWorkflow.run,
        _workflow_input(sandbox, drift_check_seconds),
        id=sandbox_workflow_id(sandbox.id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(sandbox),
        static_summary=_summary(sandbox),
        static_details=_DETAILS,
    )


async def request_transition(
    client: Client,
    sandbox: SandboxRecord,
    transition: SandboxTransition,
    actor: Actor,
    *,
    task_queue: str,
    drift_check_seconds: float,
    changed_fields: list[str] | None = None,
    wait: timedelta | None = timedelta(seconds=90),
) -> SandboxWorkflowState | None:
    """Ask for ``transition`` (start / stop / reconfigure / delete) and wait for it, up to ``wait``.

    Raises :class:`IllegalTransitionError` when the workflow rejects the transition. Returns None when
    the request was accepted but is still in progress after ``wait``.
    """
    request = TransitionRequest(actor=actor, changed_fields=changed_fields or [])
    try:
        handle = await client.start_update_with_start_workflow(
            TRANSITION_UPDATES[transition],
            request,
            start_workflow_operation=start_operation(
                sandbox, task_queue=task_queue, drift_check_seconds=drift_check_seconds
            ),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        )
        if wait is None:
            return None
        return await asyncio.wait_for(handle.result(), wait.total_seconds())
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return None
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ILLEGAL_TRANSITION:
            raise IllegalTransitionError(cause.message) from None
        raise


async def agent_config_changed(client: Client, sandbox_ids: Sequence[str]) -> list[str]:
    """Tell each sandbox's workflow that its user's agent config, files or keys changed; returns the ids
    whose workflow could not be told (Temporal down, workflow gone). Best effort: the change is saved
    already, and every start delivers the latest config anyway."""
    missed = []
    for sandbox_id in sandbox_ids:
        handle = client.get_workflow_handle_for(SandboxWorkflow.run, sandbox_workflow_id(sandbox_id))
        try:
            await handle.signal(SandboxWorkflow.agent_config_changed)
        except (RPCError, RuntimeError, OSError):
            missed.append(sandbox_id)
    return missed
