"""Sandboxes (``/api/v2/sandboxes``): rows in the database, containers driven by each sandbox's workflow."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from agentpod.domain.activity import ActivityEvent
from agentpod.domain.sandbox import Actor
from agentpod.store import sandboxes
from agentpod.store.activity import record_activity
from agentpod.store.tables import Sandbox
from api.audit import audit
from api.deps import CurrentUser, DbSession, OwnedSandbox, RequestActor
from api.errors import ERROR_RESPONSES, BadRequest, Conflict
from api.sandbox_workflows import Transitions
from api.schemas.sandboxes import SandboxCreate, SandboxList, SandboxOut, SandboxUpdate

router = APIRouter(prefix="/api/v2/sandboxes", tags=["sandboxes"], responses=ERROR_RESPONSES)

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": SandboxOut, "description": "Accepted; still in progress (poll the sandbox)"}
}


def _catalog_error(error: sandboxes.CatalogError) -> BadRequest:
    return BadRequest(str(error), code="unknown_catalog_item", details={"field": error.field, "value": error.value})


async def _fresh(db: DbSession, sandbox: Sandbox) -> SandboxOut:
    # The workflow wrote the status through its own session: read the row again, never trust a cache.
    await db.refresh(sandbox)
    return SandboxOut.model_validate(sandbox)


@router.get("")
async def list_sandboxes(user: CurrentUser, db: DbSession) -> SandboxList:
    """The caller's sandboxes, newest first."""
    rows = await sandboxes.list_owned(db, user.id)
    return SandboxList(sandboxes=[SandboxOut.model_validate(row) for row in rows])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.create", entity="sandbox", recorded_by="handler")],
)
async def create_sandbox(
    body: SandboxCreate,
    user: CurrentUser,
    db: DbSession,
    transition: Transitions,
    actor: RequestActor,
    response: Response,
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
        )
    except sandboxes.CatalogError as error:
        raise _catalog_error(error) from None
    except sandboxes.DuplicateNameError:
        raise Conflict(f"you already have a sandbox named {body.name!r}", code="duplicate_name") from None
    await record_activity(db, _event(user.id, "sandbox.create", sandbox, actor, {"auto_start": body.auto_start}))
    await db.commit()
    if body.auto_start and not await transition(sandbox, "start"):
        response.status_code = status.HTTP_202_ACCEPTED
    return await _fresh(db, sandbox)


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox: OwnedSandbox) -> SandboxOut:
    """One sandbox."""
    return SandboxOut.model_validate(sandbox)


@router.patch(
    "/{sandbox_id}",
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.update", entity="sandbox", id_param="sandbox_id", recorded_by="handler")],
)
async def update_sandbox(
    body: SandboxUpdate,
    sandbox: OwnedSandbox,
    db: DbSession,
    transition: Transitions,
    actor: RequestActor,
    response: Response,
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
    if "name" in changes and await sandboxes.name_taken(db, sandbox.user_id, changes["name"], exclude_id=sandbox.id):
        raise Conflict(f"you already have a sandbox named {changes['name']!r}", code="duplicate_name")
    if "addon_ids" in changes:
        changes["addon_ids"] = sorted(set(changes["addon_ids"] or []))
    changed = [field for field, value in changes.items() if getattr(sandbox, field) != value]
    for field in changed:
        setattr(sandbox, field, changes[field])
    if changed:
        await record_activity(db, _event(sandbox.user_id, "sandbox.update", sandbox, actor, {"fields": changed}))
    await db.commit()
    reshaping = {"resource_tier_id", "flavor_id", "addon_ids"} & set(changed)
    has_container = sandbox.status != "created"
    if reshaping and has_container and not await transition(sandbox, "reconfigure", changed_fields=sorted(reshaping)):
        response.status_code = status.HTTP_202_ACCEPTED
    return await _fresh(db, sandbox)


@router.post(
    "/{sandbox_id}/start",
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.start", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def start_sandbox(
    sandbox: OwnedSandbox, db: DbSession, transition: Transitions, response: Response
) -> SandboxOut:
    """Start the container; answers when OpenCode is healthy (202 if that takes unusually long)."""
    if not await transition(sandbox, "start"):
        response.status_code = status.HTTP_202_ACCEPTED
    return await _fresh(db, sandbox)


@router.post(
    "/{sandbox_id}/stop",
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.stop", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def stop_sandbox(sandbox: OwnedSandbox, db: DbSession, transition: Transitions, response: Response) -> SandboxOut:
    """Stop the container (workspace and agent data are kept)."""
    if not await transition(sandbox, "stop"):
        response.status_code = status.HTTP_202_ACCEPTED
    return await _fresh(db, sandbox)


@router.delete(
    "/{sandbox_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ACCEPTED,
    dependencies=[audit("sandbox.delete", entity="sandbox", id_param="sandbox_id", recorded_by="workflow")],
)
async def delete_sandbox(sandbox: OwnedSandbox, transition: Transitions) -> Response:
    """Delete the sandbox: container, volumes and row (chat history goes with it)."""
    if not await transition(sandbox, "delete"):
        return Response(status_code=status.HTTP_202_ACCEPTED)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _event(user_id: str, action: str, sandbox: Sandbox, actor: Actor, metadata: dict[str, object]) -> ActivityEvent:
    return ActivityEvent(
        user_id=user_id,
        action=action,
        entity_type="sandbox",
        entity_id=sandbox.id,
        metadata={"name": sandbox.name, **metadata},
        ip_address=actor.ip_address,
        user_agent=actor.user_agent,
    )
