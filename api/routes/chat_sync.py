"""The chat mirror's controls: its status, and "sync now" (a full reconcile through the sync workflow)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from agentpod.domain.chat import ReconcileReport, SyncStatus
from agentpod.store.acp_sync import load_acp_status
from agentpod.store.sync_state import load_sync_status
from agentpod.store.tables import ChatSession, Sandbox
from api.audit import not_audited
from api.deps import DbSession, OwnedSandbox, TemporalClient
from api.errors import ERROR_RESPONSES, Conflict, NotFound, temporal_unavailable_as_503
from workflows.ids import sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

router = APIRouter(prefix="/api/v2/sandboxes/{sandbox_id}/chat", tags=["chat"], responses=ERROR_RESPONSES)


class SyncStatusOut(BaseModel):
    """Both mirrors' state next to the sandbox's."""

    sandbox_status: str
    sync: SyncStatus = Field(description="The OpenCode mirror (OpenCode's own sessions).")
    acp: SyncStatus = Field(description="The ACP gateway mirror (sessions of agents driven over ACP).")


@router.get("/sync/status")
async def sync_status(sandbox: OwnedSandbox, db: DbSession) -> SyncStatusOut:
    """Connected, last event, last reconcile, reconnects and last error of each live mirror."""
    return SyncStatusOut(
        sandbox_status=sandbox.status,
        sync=await load_sync_status(db, sandbox.id),
        acp=await load_acp_status(db, sandbox.id),
    )


@temporal_unavailable_as_503()  # what the handler lets through: the lazy client could not connect
async def _reconcile_now(temporal: TemporalClient, sandbox: Sandbox) -> ReconcileReport:
    if sandbox.status != "running":
        raise Conflict("the sandbox is not running; its stored history is already complete", code="sandbox_not_running")
    handle = temporal.get_workflow_handle_for(OpenCodeSyncWorkflow.run, sandbox_sync_workflow_id(sandbox.id))
    try:
        return await handle.execute_update(OpenCodeSyncWorkflow.reconcile_now, rpc_timeout=timedelta(minutes=2))
    except (RPCError, WorkflowUpdateFailedError):
        raise Conflict("the chat sync is not running for this sandbox right now", code="sync_not_running") from None


@router.post("/sync", dependencies=[not_audited("refreshes our mirror from the agent; changes nothing the user owns")])
async def sync_now(sandbox: OwnedSandbox, temporal: TemporalClient) -> ReconcileReport:
    """Reconcile every session with OpenCode now."""
    return await _reconcile_now(temporal, sandbox)


@router.post(
    "/sessions/{session_id}/sync",
    dependencies=[not_audited("refreshes our mirror from the agent; changes nothing the user owns")],
)
async def sync_session(
    session_id: str, sandbox: OwnedSandbox, db: DbSession, temporal: TemporalClient
) -> ReconcileReport:
    """Reconcile now, for the app's per-session pull-to-refresh (the reconcile covers the whole sandbox)."""
    owned = await db.scalar(
        select(ChatSession.id).where(ChatSession.id == session_id, ChatSession.sandbox_id == sandbox.id)
    )
    if owned is None:
        raise NotFound("chat session not found", code="chat_session_not_found")
    return await _reconcile_now(temporal, sandbox)
