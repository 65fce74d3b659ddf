"""Sandboxes (``/api/v2/sandboxes``): rows in the database, containers driven by each sandbox's workflow."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response, status

from agentpod.domain.sandbox import SandboxTransition
from agentpod.settings import Settings
from agentpod.store import sandboxes
from agentpod.store.tables import Sandbox
from api.audit import AuditEntry, audit
from api.deps import CurrentUser, DbSession, OwnedSandbox, SettingsDep, Transitions
from api.errors import ERROR_RESPONSES, BadRequest, Conflict
from api.schemas.sandboxes import SandboxCreate, SandboxList, SandboxOut, SandboxUpdate

router = APIRouter(prefix="/api/v2/sandboxes", tags=["sandboxes"], responses=ERROR_RESPONSES)

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": SandboxOut, "description": "Accepted; still in progress (poll the sandbox)"}
}


def _catalog_error(error: sandboxes.CatalogError) -> BadRequest:
    return BadRequest(str(error), code="unknown_catalog_item", details={"field": error.field, "value": error.value})


def _duplicate_name(name: str) -> Conflict:
    return Conflict(f"you already have a sandbox named {name!r}", code="duplicate_name")


def _quota(settings: Settings) -> sandboxes.SandboxQuota:
    return sandboxes.SandboxQuota(settings.max_sandboxes_per_user, settings.max_sandboxes_per_tier)


def _quota_exceeded(error: sandboxes.QuotaExceededError) -> Conflict:
    if error.resource_tier_id is None:
        message = f"you have {error.count} sandboxes and the limit is {error.limit}: delete one to create another"
    else:
        message = (
            f"you have {error.count} sandboxes on the {error.resource_tier_id!r} tier and its limit is "
            f"{error.limit}: delete one or move it to another tier first"
        )
    details = {"limit": error.limit, "count": error.count, "resource_tier_id": error.resource_tier_id}
    return Conflict(message, code="sandbox_quota_exceeded", details=details)


async def _answer(db: DbSession, sandbox: Sandbox, response: Response, *, finished: bool) -> SandboxOut:
    """The sandbox as stored now; 202 when the transition asked for is still in progress."""
    if not finished:
        response.status_code = status.HTTP_202_ACCEPTED
    # The workflow wrote the status through its own session: read the row again, never trust a cache.
    await db.refresh(sandbox)
    return SandboxOut.model_validate(sandbox)


@router.get("")
async def list_sandboxes(user: CurrentUser, db: DbSession) -> SandboxList:
    """The caller's sandboxes, newest first."""
    rows = await sandboxes.list_owned(db, user.id)
    return SandboxList(sandboxes=[SandboxOut.model_validate(row) for row in rows])


@router.post("", status_code=status.HTTP_201_CREATED, responses=_ACCEPTED)
async def create_sandbox(
    body: SandboxCreate,
    user: CurrentUser,
    db: DbSession,
    settings: SettingsDep,
    transition: Transitions,
    response: Response,
    entry: Annotated[AuditEntry, audit("sandbox.create", entity="sandbox", with_request_id=False)],
) -> SandboxOut:
    """Create a sandbox (and start it when ``auto_start``)."""
    try:
        tier, flavor, addons = await sandboxes.resolve_defaults(
            db,
            user.id,
            resource_tier_id=body.resource_tier_id,
            flavor_id=body.flavor_id,
            addon_ids=body.addon_ids,
        )
        sandbox = await sandboxes.create(
            db,
            user_id=user.id,
            name=body.name,
            description=body.description,
            repo_name=body.repo_name,
            github_url=body.github_url,
            resource_tier_id=tier,
            flavor_id=flavor,
            addon_ids=addons,
            quota=_quota(settings),
        )
    except sandboxes.CatalogError as error:
        raise _catalog_error(error) from None
    except sandboxes.DuplicateNameError:
        raise _duplicate_name(body.name) from None
    except sandboxes.QuotaExceededError as error:
        raise _quota_exceeded(error) from None
    # In the creating transaction: the row exists exactly when the sandbox does. A refused create (above)
    # commits nothing and starts no workflow.
    await entry.record(db, entity_id=sandbox.id, name=sandbox.name, auto_start=body.auto_start)
    await db.commit()
    finished = not body.auto_start or await transition(sandbox, SandboxTransition.START)
    return await _answer(db, sandbox, response, finished=finished)


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox: OwnedSandbox) -> SandboxOut:
    """One sandbox."""
    return SandboxOut.model_validate(sandbox)


@router.patch("/{sandbox_id}", responses=_ACCEPTED)
async def update_sandbox(
    body: SandboxUpdate,
    sandbox: OwnedSandbox,
    db: DbSession,
    settings: SettingsDep,
    transition: Transitions,
    response: Response,
    entry: Annotated[
        AuditEntry, audit("sandbox.update", entity="sandbox", id_param="sandbox_id", with_request_id=False)
    ],
) -> SandboxOut:
    """Rename or reconfigure; a running container is recreated with the new tier / flavor / add-ons."""
    changes = body.model_dump(exclude_unset=True)
    nulled = [
        field for field in ("name", "resource_tier_id", "flavor_id") if field in changes and changes[field] is None
    ]
    if nulled:
        raise BadRequest(f"{', '.join(nulled)} cannot be null", code="null_not_allowed", details={"fields": nulled})
    try:
        await sandboxes.validate_catalog_choices(
            db,
            resource_tier_id=changes.get("resource_tier_id"),
            flavor_id=changes.get("flavor_id"),
            addon_ids=changes.get("addon_ids"),
        )
    except sandboxes.CatalogError as error:
        raise _catalog_error(error) from None
    if "addon_ids" in changes:
        changes["addon_ids"] = sorted(set(changes["addon_ids"] or []))
    changed = [field for field, value in changes.items() if getattr(sandbox, field) != value]
    if {"name", "resource_tier_id"} & set(changed):
        # Under the owner's lock, like a create: a parallel create or move cannot slip past these checks.
        await sandboxes.lock_owner(db, sandbox.user_id)
        try:
            if "resource_tier_id" in changed:
                tier = changes["resource_tier_id"]
                await sandboxes.check_quota(db, sandbox.user_id, _quota(settings), resource_tier_id=tier, new=False)
            if "name" in changed:
                await sandboxes.rename(db, sandbox, changes["name"])
        except sandboxes.DuplicateNameError:
            raise _duplicate_name(changes["name"]) from None
        except sandboxes.QuotaExceededError as error:
            raise _quota_exceeded(error) from None
    for field in changed:
        setattr(sandbox, field, changes[field])
    if changed:
        await entry.record(db, name=sandbox.name, fields=changed)
    else:
        entry.skip()  # nothing changed: nothing to record
    await db.commit()
    reshaping = {"resource_tier_id", "flavor_id", "addon_ids"} & set(changed)
    finished = True
    if reshaping and sandbox.status != "created":  # a container to recreate
        finished = await transition(sandbox, SandboxTransition.RECONFIGURE, changed_fields=sorted(reshaping))
    return await _answer(db, sandbox, response, finished=finished)


@router.post(
    "/{sandbox_id}/start",
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.start", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def start_sandbox(
    sandbox: OwnedSandbox, db: DbSession, transition: Transitions, response: Response
) -> SandboxOut:
    """Start the container; answers when OpenCode is healthy (202 if that takes unusually long)."""
    finished = await transition(sandbox, SandboxTransition.START)
    if await sandboxes.note_access(db, sandbox):
        await db.commit()
    return await _answer(db, sandbox, response, finished=finished)


@router.post(
    "/{sandbox_id}/stop",
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.stop", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def stop_sandbox(sandbox: OwnedSandbox, db: DbSession, transition: Transitions, response: Response) -> SandboxOut:
    """Stop the container (workspace and agent data are kept)."""
    return await _answer(db, sandbox, response, finished=await transition(sandbox, SandboxTransition.STOP))


@router.delete(
    "/{sandbox_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.delete", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def delete_sandbox(sandbox: OwnedSandbox, transition: Transitions) -> Response:
    """Delete the sandbox: container, volumes and row. Its chat history is kept (``/api/v2/chat/sessions``)
    until you purge it."""
    if not await transition(sandbox, SandboxTransition.DELETE):
        return Response(status_code=status.HTTP_202_ACCEPTED)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
