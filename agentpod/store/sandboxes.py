"""Queries for sandboxes: owner-scoped reads, creation with catalog defaults, status writes."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.domain.sandbox import SandboxStatus, SandboxUrls
from agentpod.domain.sandbox_import import LabelledSandbox
from agentpod.store.base import utcnow
from agentpod.store.sqlite_inline import inline_reads
from agentpod.store.tables import ContainerAddon, ContainerFlavor, ResourceTier, Sandbox, User, UserPreferences

SLUG_MAX = 48


class CatalogError(ValueError):
    """A tier, flavor or add-on id that the catalog does not offer."""

    def __init__(self, field: str, value: Any) -> None:
        super().__init__(f"unknown {field}: {value!r}")
        self.field = field
        self.value = value


class DuplicateNameError(ValueError):
    """The user already has a sandbox with this name."""


def slugify(name: str) -> str:
    """A DNS- and path-safe slug: ASCII lower-case letters, digits and single dashes."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "sandbox"


# Built once: every request on a sandbox runs it (see store.users._TOKEN_LOOKUP).
_OWNED_SANDBOX = select(Sandbox).where(Sandbox.id == bindparam("sandbox_id"), Sandbox.user_id == bindparam("user_id"))


async def get_owned(db: AsyncSession, user_id: str, sandbox_id: str) -> Sandbox | None:
    """The sandbox if it exists *and* belongs to ``user_id`` (else None: callers answer 404)."""
    with inline_reads():
        return await db.scalar(_OWNED_SANDBOX, {"sandbox_id": sandbox_id, "user_id": user_id})


async def list_owned(db: AsyncSession, user_id: str) -> Sequence[Sandbox]:
    """The user's sandboxes, newest first."""
    return (
        await db.scalars(
            select(Sandbox).where(Sandbox.user_id == user_id).order_by(Sandbox.created_at.desc(), Sandbox.id)
        )
    ).all()


async def resolve_defaults(
    db: AsyncSession,
    user_id: str,
    *,
    resource_tier_id: str | None,
    flavor_id: str | None,
    addon_ids: list[str] | None,
) -> tuple[str, str, list[str]]:
    """Fill unset choices from the user's preferences, else the catalog defaults; validate all three."""
    prefs = await db.scalar(select(UserPreferences).where(UserPreferences.user_id == user_id))
    if resource_tier_id is None:
        resource_tier_id = (prefs.default_resource_tier_id if prefs else None) or await db.scalar(
            select(ResourceTier.id).where(ResourceTier.is_default, ResourceTier.enabled)
        )
    if flavor_id is None:
        flavor_id = (prefs.default_flavor_id if prefs else None) or await db.scalar(
            select(ContainerFlavor.id).where(ContainerFlavor.is_default, ContainerFlavor.enabled)
        )
    if addon_ids is None:
        addon_ids = list(prefs.default_addon_ids) if prefs else []
    await validate_catalog_choices(db, resource_tier_id=resource_tier_id, flavor_id=flavor_id, addon_ids=addon_ids)
    assert resource_tier_id is not None and flavor_id is not None  # validated above
    return resource_tier_id, flavor_id, sorted(set(addon_ids))


async def validate_catalog_choices(
    db: AsyncSession,
    *,
    resource_tier_id: str | None = None,
    flavor_id: str | None = None,
    addon_ids: list[str] | None = None,
) -> None:
    """Raise :class:`CatalogError` for any id the catalog does not offer (disabled entries included)."""
    if resource_tier_id is not None and not await db.scalar(
        select(ResourceTier.id).where(ResourceTier.id == resource_tier_id, ResourceTier.enabled)
    ):
        raise CatalogError("resource_tier_id", resource_tier_id)
    if flavor_id is not None and not await db.scalar(
        select(ContainerFlavor.id).where(ContainerFlavor.id == flavor_id, ContainerFlavor.enabled)
    ):
        raise CatalogError("flavor_id", flavor_id)
    if addon_ids:
        known = set(
            (
                await db.scalars(
                    select(ContainerAddon.id).where(ContainerAddon.id.in_(addon_ids), ContainerAddon.enabled)
                )
            ).all()
        )
        unknown = sorted(set(addon_ids) - known)
        if unknown:
            raise CatalogError("addon_ids", unknown)


async def name_taken(db: AsyncSession, user_id: str, name: str, *, exclude_id: str | None = None) -> bool:
    """Whether the user already has a sandbox called ``name`` (case-insensitive)."""
    query = select(Sandbox.id).where(Sandbox.user_id == user_id, func.lower(Sandbox.name) == name.lower())
    if exclude_id is not None:
        query = query.where(Sandbox.id != exclude_id)
    return await db.scalar(query) is not None


async def _free_slug(db: AsyncSession, user_id: str, base: str) -> str:
    taken = set(
        (await db.scalars(select(Sandbox.slug).where(Sandbox.user_id == user_id, Sandbox.slug.like(f"{base}%")))).all()
    )
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


async def create(db: AsyncSession, *, user_id: str, name: str, **fields: Any) -> Sandbox:
    """Insert a sandbox with a slug unique for its owner; raises :class:`DuplicateNameError`."""
    if await name_taken(db, user_id, name):
        raise DuplicateNameError(name)
    base = slugify(name)
    for _ in range(5):  # a concurrent create may take the slug between our read and insert
        sandbox = Sandbox(user_id=user_id, name=name, slug=await _free_slug(db, user_id, base), **fields)
        try:
            async with db.begin_nested():
                db.add(sandbox)
            return sandbox
        except IntegrityError:
            continue
    raise DuplicateNameError(name)


async def set_status(
    db: AsyncSession,
    sandbox_id: str,
    status: SandboxStatus,
    *,
    error_message: str | None = None,
    container_id: str | None = None,
    urls: SandboxUrls | None = None,
    internal_opencode_url: str | None = None,
    internal_acp_url: str | None = None,
) -> bool:
    """Write the observed status (and what came with it); False when the row no longer exists."""
    values: dict[str, Any] = {"status": status.value, "error_message": error_message, "updated_at": utcnow()}
    if container_id is not None:
        values["container_id"] = container_id
    if urls is not None:
        values.update(urls.model_dump())
    if internal_opencode_url is not None:
        values["opencode_internal_url"] = internal_opencode_url
    if internal_acp_url is not None:
        values["acp_internal_url"] = internal_acp_url
    result = await db.execute(update(Sandbox).where(Sandbox.id == sandbox_id).values(**values))
    return bool(getattr(result, "rowcount", 0))


async def delete_row(db: AsyncSession, sandbox_id: str) -> None:
    """Remove the row (chat history cascades with it: deleting a sandbox is the user's explicit choice)."""
    await db.execute(delete(Sandbox).where(Sandbox.id == sandbox_id))


async def import_labelled(db: AsyncSession, found: LabelledSandbox) -> Sandbox | None:
    """Insert a row for a container the database does not know; the existing row if it does.

    Returns None when the owner does not exist here (nothing may be created for an unknown user).
    Catalog choices the labels name but the catalog lacks fall back to the defaults.
    """
    existing = await db.get(Sandbox, found.sandbox_id)
    if existing is not None:
        return existing
    if await db.get(User, found.user_id) is None:
        return None
    tier, flavor, addons = await resolve_defaults(
        db,
        found.user_id,
        resource_tier_id=await _offered(db, resource_tier_id=found.tier_id),
        flavor_id=await _offered(db, flavor_id=found.flavor_id),
        addon_ids=[addon for addon in found.addon_ids if await _offered(db, addon_ids=[addon])],
    )
    name = found.name[:100]
    suffix = 2
    while await name_taken(db, found.user_id, name):
        name = f"{found.name[:90]} ({suffix})"
        suffix += 1
    sandbox = await create(
        db,
        user_id=found.user_id,
        name=name,
        id=found.sandbox_id,
        repo_name=found.repo_name or slugify(found.name),
        github_url=found.github_url,
        resource_tier_id=tier,
        flavor_id=flavor,
        addon_ids=addons,
        status=found.status.value,
        container_id=found.container_id,
        container_name=found.container_name,
    )
    return sandbox


async def _offered(db: AsyncSession, **choice: Any) -> Any:
    """The single catalog choice given if the catalog offers it, else None (labels may be stale)."""
    try:
        await validate_catalog_choices(db, **choice)
    except CatalogError:
        return None
    value = next(iter(choice.values()))
    return value[0] if isinstance(value, list) else value
