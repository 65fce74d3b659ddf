"""The caller's LLM provider keys (``/api/users/me/providers``): stored encrypted, shown as hints only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from agentpod.store import providers
from api.audit import AuditEntry, audit
from api.deps import AgentConfigPushDep, Context, CurrentUser, DbSession
from api.errors import ERROR_RESPONSES, NotFound
from api.schemas.providers import PROVIDER_ID_PATTERN, ProviderKeyIn, ProviderList, ProviderOut

router = APIRouter(prefix="/api/users/me/providers", tags=["providers"], responses=ERROR_RESPONSES)

ProviderIdPath = Annotated[str, Path(pattern=PROVIDER_ID_PATTERN, description="OpenCode provider id, e.g. `openai`.")]
_CREATED: dict[int | str, dict[str, Any]] = {201: {"model": ProviderOut, "description": "Created"}}


def _not_found(provider_id: str) -> NotFound:
    return NotFound(f"no key configured for provider {provider_id!r}", code="provider_not_found")


@router.get("")
async def list_providers(user: CurrentUser, db: DbSession) -> ProviderList:
    """The caller's configured providers (hints, never keys) and the default one."""
    rows = await providers.list_for(db, user.id)
    default = next((row.provider_id for row in rows if row.is_default), None)
    return ProviderList(providers=[ProviderOut.model_validate(row) for row in rows], default_provider_id=default)


@router.get("/{provider_id}")
async def get_provider(provider_id: ProviderIdPath, user: CurrentUser, db: DbSession) -> ProviderOut:
    """One configured provider."""
    row = await providers.get(db, user.id, provider_id)
    if row is None:
        raise _not_found(provider_id)
    return ProviderOut.model_validate(row)


@router.put("/{provider_id}", responses=_CREATED)
async def put_provider(
    provider_id: ProviderIdPath,
    body: ProviderKeyIn,
    user: CurrentUser,
    db: DbSession,
    ctx: Context,
    response: Response,
    entry: Annotated[AuditEntry, audit("provider.configure", entity="provider", id_param="provider_id")],
    push: AgentConfigPushDep,
) -> ProviderOut:
    """Set or replace the provider's API key (201 when new). Running sandboxes get it within seconds
    (``config_pending`` until their agent has reloaded it)."""
    row, created = await providers.put_api_key(
        db, ctx.keyring, user.id, provider_id, body.api_key.get_secret_value(), make_default=body.is_default
    )
    await entry.record(db, created=created, is_default=row.is_default)
    await push.flag(db)
    await db.commit()
    await push.push()
    if created:
        response.status_code = status.HTTP_201_CREATED
    return ProviderOut.model_validate(row)


@router.put("/{provider_id}/default")
async def make_default(
    provider_id: ProviderIdPath,
    user: CurrentUser,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("provider.set_default", entity="provider", id_param="provider_id")],
) -> ProviderOut:
    """Make this provider the caller's default (the previous default stops being one)."""
    row = await providers.set_default(db, user.id, provider_id)
    if row is None:
        raise _not_found(provider_id)
    await entry.record(db)
    await db.commit()
    return ProviderOut.model_validate(row)


@router.delete("/{provider_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_provider(
    provider_id: ProviderIdPath,
    user: CurrentUser,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("provider.remove", entity="provider", id_param="provider_id")],
    push: AgentConfigPushDep,
) -> Response:
    """Delete the provider's key (and its default flag); running agents lose it within seconds."""
    if not await providers.delete(db, user.id, provider_id):
        raise _not_found(provider_id)
    await entry.record(db)
    await push.flag(db)
    await db.commit()
    await push.push()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
