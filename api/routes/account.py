"""The caller's account (``/api/account``): profile and counts, the full data export, and deletion.

Deletion runs as ``AccountDeletionWorkflow``. Its first step revokes the caller's tokens, so progress
is read without one: the deletion id returned by ``DELETE /api/account`` is ``<user id>.<MAC>``, a
keyed tag only the server can make, and ``GET /api/account/deletion/{id}`` answers whoever holds it
— also after the user row is gone, since the status comes from Temporal, not the database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from fastapi.responses import StreamingResponse

from agentpod.domain.account import DELETION_PHRASE, STEP_TITLES, DeletionStatus, DeletionStep
from agentpod.security.encryption import mac, mac_matches
from agentpod.security.keyring import Keyring
from agentpod.store import account
from api.audit import audit
from api.deps import Context, CurrentUser, DbSession, SettingsDep
from api.errors import ERROR_RESPONSES, BadRequest, NotFound, temporal_unavailable_as_503
from api.schemas.account import (
    AccountCounts,
    AccountDeleteIn,
    AccountOut,
    DeletionAccepted,
    DeletionStatusOut,
    DeletionStepOut,
)
from api.schemas.auth import UserOut
from workflows.account_deletion_client import deletion_status, start_deletion

router = APIRouter(prefix="/api/account", tags=["account"], responses=ERROR_RESPONSES)

_MAC_PURPOSE = "account-deletion-id"
_TEMPORAL_TIMEOUT_SECONDS = 15.0
_ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"model": DeletionAccepted, "description": "Deletion under way"}}


def deletion_id(keyring: Keyring, user_id: str) -> str:
    """The unguessable id of a user's deletion (the same for every request of that user)."""
    return f"{user_id}.{mac(keyring, _MAC_PURPOSE, user_id)}"


def deletion_user(keyring: Keyring, value: str) -> str | None:
    """The user a deletion id was made for, or None if the server did not make it."""
    user_id, _, tag = value.rpartition(".")
    # compare_digest refuses non-ASCII text (a TypeError: a 500 on this public route); no MAC of ours has any.
    return user_id if user_id and tag.isascii() and mac_matches(keyring, _MAC_PURPOSE, user_id, tag) else None


@router.get("")
async def get_account(user: CurrentUser, db: DbSession) -> AccountOut:
    """The caller's profile and how much their account holds."""
    return AccountOut(user=UserOut.model_validate(user), counts=AccountCounts(**await account.counts(db, user.id)))


@router.get(
    "/data-export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}, "description": "Everything the account holds"}},
    dependencies=[audit("account.export", entity="user")],
)
async def export_account(user: CurrentUser, ctx: Context) -> StreamingResponse:
    """Everything the caller owns as one JSON document, streamed (layout: docs/account.md). Keys are
    never part of it: providers are listed by name."""
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return StreamingResponse(
        account.export_document(ctx.sessions, user.id),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="agentpod-account-{stamp}.json"'},
    )


@router.delete(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_ACCEPTED,
    # The workflow writes the one (anonymized) record of the deletion when it is done.
    dependencies=[audit("account.delete", entity="user", recorded_by="workflow")],
)
async def delete_account(
    body: AccountDeleteIn, user: CurrentUser, ctx: Context, settings: SettingsDep
) -> DeletionAccepted:
    """Delete the account and everything in it. Answers at once; poll ``status_url`` for progress.

    A repeated request joins the deletion under way and gets the same id.
    """
    if body.confirmation != DELETION_PHRASE:
        raise BadRequest(f"type exactly {DELETION_PHRASE!r} to confirm", code="confirmation_mismatch")
    async with temporal_unavailable_as_503():
        start = start_deletion(ctx.temporal, user.id, task_queue=settings.temporal_task_queue)
        await asyncio.wait_for(start, _TEMPORAL_TIMEOUT_SECONDS)
    found = deletion_id(ctx.keyring, user.id)
    return DeletionAccepted(deletion_id=found, status_url=f"{router.prefix}/deletion/{found}")


@router.get("/deletion/{deletion_id}")
async def get_deletion(deletion_id: Annotated[str, Path(max_length=200)], ctx: Context) -> DeletionStatusOut:
    """Progress of a deletion. No token: the id returned by ``DELETE /api/account`` is the credential."""
    user_id = deletion_user(ctx.keyring, deletion_id)
    if user_id is None:
        raise NotFound("no such deletion", code="deletion_not_found")
    async with temporal_unavailable_as_503():
        found = await asyncio.wait_for(deletion_status(ctx.temporal, user_id), _TEMPORAL_TIMEOUT_SECONDS)
    if found is None:
        raise NotFound("no such deletion", code="deletion_not_found")
    return _status_out(deletion_id, found)


def _status_out(deletion_id: str, found: DeletionStatus) -> DeletionStatusOut:
    progress = found.progress
    completed = set(progress.completed) if progress else set()
    current = progress.current if progress else None

    def state(step: DeletionStep) -> str:
        if step == current and not (progress and progress.done):
            return "running"
        return "done" if step in completed else "pending"

    return DeletionStatusOut(
        deletion_id=deletion_id,
        state=found.state,
        current_step=current,
        steps=[DeletionStepOut(step=step, title=STEP_TITLES[step], state=state(step)) for step in DeletionStep],
        removed=progress.counts if progress else {},
        started_at=found.started_at,
        finished_at=found.finished_at,
    )
