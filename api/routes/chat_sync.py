"""The chat mirrors' controls: their status, and "sync now" (a full reconcile through a sync workflow).

"Sync now" on a sandbox that is not running answers from our store (200, ``reconciled: false``): its
history was reconciled one last time when it stopped, so there is nothing to ask the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from agentpod.domain.chat import ReconcileReport, SyncStatus
from agentpod.store.acp_sync import SOURCE as ACP_SOURCE
from agentpod.store.acp_sync import load_acp_status
from agentpod.store.sync_state import load_sync_status
from agentpod.store.tables import ChatSession, Sandbox
from api.audit import not_audited
from api.deps import DbSession, OwnedSandbox, TemporalClient
from api.errors import ERROR_RESPONSES, Conflict, NotFound, temporal_unavailable_as_503
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.stream_sync import StreamSyncWorkflow

router = APIRouter(prefix="/api/v2/sandboxes/{sandbox_id}/chat", tags=["chat"], responses=ERROR_RESPONSES)


class SyncStatusOut(BaseModel):
    """Both mirrors' state next to the sandbox's."""

    sandbox_status: str
    sync: SyncStatus = Field(description="The OpenCode mirror (OpenCode's own sessions).")
    acp: SyncStatus = Field(description="The ACP gateway mirror (sessions of agents driven over ACP).")


Mirror = Literal["opencode", "acp"]


class SyncNowOut(ReconcileReport):
    """What "sync now" did (the reconcile's report), with both mirrors' stored state after it."""

    reconciled: bool = Field(
        description="False when nothing was asked of the agent: the sandbox is not running, and the stored "
        "history (reconciled when it stopped) is the whole answer; `notes` says why."
    )
    mirror: Mirror = Field(description="The mirror that reconciled (or would have): `opencode` or `acp`.")
    sandbox_status: str
    sync: SyncStatus = Field(description="The OpenCode mirror's stored state.")
    acp: SyncStatus = Field(description="The ACP gateway mirror's stored state.")


@router.get("/sync/status")
async def sync_status(sandbox: OwnedSandbox, db: DbSession) -> SyncStatusOut:
    """Connected, last event, last reconcile, reconnects and last error of each live mirror."""
    return SyncStatusOut(
        sandbox_status=sandbox.status,
        sync=await load_sync_status(db, sandbox.id),
        acp=await load_acp_status(db, sandbox.id),
    )


# Each mirror's sync workflow (both answer the update ``reconcile_now`` of their shared base).
_WORKFLOW_IDS: dict[Mirror, Callable[[str], str]] = {"opencode": sandbox_sync_workflow_id, "acp": acp_sync_workflow_id}


@temporal_unavailable_as_503()  # what the handler lets through: the lazy client could not connect
async def _reconcile_now(temporal: TemporalClient, sandbox_id: str, mirror: Mirror) -> ReconcileReport:
    handle = temporal.get_workflow_handle(_WORKFLOW_IDS[mirror](sandbox_id))
    try:
        return await handle.execute_update(StreamSyncWorkflow.reconcile_now, rpc_timeout=timedelta(minutes=2))
    except (RPCError, WorkflowUpdateFailedError):
        raise Conflict("the chat sync is not running for this sandbox right now", code="sync_not_running") from None


async def _sync_now(db: DbSession, temporal: TemporalClient, sandbox: Sandbox, mirror: Mirror) -> SyncNowOut:
    """Reconcile through ``mirror``'s sync workflow; on a sandbox that is not running, the stored state."""
    sandbox_id, status = sandbox.id, sandbox.status
    running = status == "running"
    if running:
        # A reconcile may take a while: the request must not pin a pooled connection meanwhile.
        await db.close()
        report = await _reconcile_now(temporal, sandbox_id, mirror)
    else:
        report = ReconcileReport(notes=[f"nothing to reconcile: the sandbox is {status}"])
    return SyncNowOut(
        **report.model_dump(),
        reconciled=running,
        mirror=mirror,
        sandbox_status=status,
        sync=await load_sync_status(db, sandbox_id),
        acp=await load_acp_status(db, sandbox_id),
    )


@router.post("/sync", dependencies=[not_audited("refreshes our mirror from the agent; changes nothing the user owns")])
async def sync_now(sandbox: OwnedSandbox, db: DbSession, temporal: TemporalClient) -> SyncNowOut:
    """Reconcile every OpenCode session now (a sandbox that is not running: its stored state)."""
    return await _sync_now(db, temporal, sandbox, "opencode")


@router.post(
    "/sessions/{session_id}/sync",
    dependencies=[not_audited("refreshes our mirror from the agent; changes nothing the user owns")],
)
async def sync_session(session_id: str, sandbox: OwnedSandbox, db: DbSession, temporal: TemporalClient) -> SyncNowOut:
    """Reconcile now, for the app's per-session pull-to-refresh: through the mirror the session comes from
    (OpenCode or the ACP gateway; the reconcile covers the whole sandbox). A sandbox that is not running
    answers with its stored state."""
    source = await db.scalar(
        select(ChatSession.source).where(ChatSession.id == session_id, ChatSession.sandbox_id == sandbox.id)
    )
    if source is None:
        raise NotFound("chat session not found", code="chat_session_not_found")
    return await _sync_now(db, temporal, sandbox, "acp" if source == ACP_SOURCE else "opencode")
