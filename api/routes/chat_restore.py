"""Restore one chat session into the sandbox's OpenCode on request (``POST .../chat/sessions/{id}/restore``).

A session the sandbox's OpenCode lost (new container, lost ``/data`` volume) is put back by the session
restore (``SessionRestoreWorkflow``), which the mirror starts by itself; this asks for one session ahead of
the others and waits a little for it: 200 when OpenCode has it (again), 202 while it is under way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Response
from temporalio.client import WorkflowUpdateFailedError

from agentpod.domain.session_restore import RestoreOutcome
from agentpod.store.sync_state import load_sync_status
from api.audit import audit
from api.deps import DbSession, OwnedChatSession, OwnedSandbox, SettingsDep, TemporalClient
from api.errors import ERROR_RESPONSES, ApiError, Conflict, temporal_unavailable_as_503
from api.schemas.chat_restore import ChatSessionRestoreOut
from workflows.session_restore_client import restore_session

router = APIRouter(prefix="/api/v2/sandboxes/{sandbox_id}/chat", tags=["chat"], responses=ERROR_RESPONSES)

# How long the request waits for the session's import (one `opencode import`: a second or two).
RESTORE_WAIT = timedelta(seconds=10)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "OpenCode has the session: it was there, or it was restored now"},
    202: {"model": ChatSessionRestoreOut, "description": "The restore is under way"},
}


@router.post(
    "/sessions/{session_id}/restore",
    responses=_RESPONSES,
    dependencies=[audit("chat.session_restore", entity="chat_session", id_param="session_id")],
)
async def restore_chat_session(
    sandbox: OwnedSandbox,
    session: OwnedChatSession,
    db: DbSession,
    temporal: TemporalClient,
    settings: SettingsDep,
    response: Response,
) -> ChatSessionRestoreOut:
    """Put the session back into the sandbox's OpenCode (ids kept) if it lacks it, ahead of other lost ones."""
    if sandbox.status != "running":
        raise Conflict(
            f"the sandbox is {sandbox.status}; start it first",
            code="sandbox_not_running",
            details={"status": sandbox.status},
        )
    if session.source != "opencode" or not session.opencode_session_id:
        raise Conflict("only OpenCode sessions are restored here", code="not_an_opencode_session")
    if session.status == "deleted":
        raise Conflict("the session was deleted in the agent", code="chat_session_deleted")
    try:
        async with temporal_unavailable_as_503():
            result = await restore_session(
                temporal,
                sandbox.id,
                session.opencode_session_id,
                task_queue=settings.temporal_task_queue,
                concurrency=settings.session_restore_concurrency,
                wait=RESTORE_WAIT,
                user_id=sandbox.user_id,
            )
    except WorkflowUpdateFailedError:
        # Refused: the sandbox's restore found the sandbox stopped.
        raise Conflict("the sandbox stopped; start it first", code="sandbox_not_running") from None
    out = {"session_id": session.id, "opencode_session_id": session.opencode_session_id}
    if result is None:
        response.status_code = 202
        progress = (await load_sync_status(db, sandbox.id)).restore
        return ChatSessionRestoreOut(**out, state="restoring", progress=progress)
    if result.outcome == RestoreOutcome.PRESENT:
        return ChatSessionRestoreOut(**out, state="present")
    if result.outcome == RestoreOutcome.RESTORED:
        return ChatSessionRestoreOut(**out, state="restored")
    if result.outcome == RestoreOutcome.SKIPPED:
        raise Conflict(f"nothing to restore: {result.detail}", code="nothing_to_restore")
    raise ApiError(
        "the agent did not take the session back",
        status=502,
        code="session_restore_failed",
        details={"detail": result.detail},
    )
