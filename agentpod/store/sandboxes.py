"""Queries for sandboxes: owner-scoped reads, creation with catalog defaults and quota, status writes.

A user's sandbox names are unique by :func:`sandbox_name_key` (a unique index, so parallel requests
cannot both win). Creates and renames through the API first take :func:`lock_owner`, so the quota
count and the name check they make hold until their transaction commits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from agentpod.domain.sandbox import SandboxStatus, SandboxUrls
from agentpod.domain.sandbox_import import LabelledSandbox
from agentpod.store.base import utcnow
from agentpod.store.sqlite_inline import inline_reads
from agentpod.store.tables import (
    ChatSession,
    ContainerAddon,
    ContainerFlavor,
    ResourceTier,
    Sandbox,
    User,
    UserPreferences,
)
from agentpod.store.tables.sandboxes import sandbox_name_key
from agentpod.store.write_gate import begin_write

SLUG_MAX = 48
# last_accessed_at is this coarse: a user chatting all day costs one write a minute per sandbox.
ACCESS_RESOLUTION = timedelta(minutes=1)
# The add-ons of a new sandbox when neither the request nor the user's preferences choose any.
DEFAULT_ADDON_IDS = ("code-server",)


class CatalogError(ValueError):
    """A tier, flavor or add-on id that the catalog does not offer."""

    def __init__(self, field: str, value: Any) -> None:
        super().__init__(f"unknown {field}: {value!r}")
        self.field = field
        self.value = value


class DuplicateNameError(ValueError):
    """The user already has a sandbox with this name."""


@dataclass(frozen=True)
class SandboxQuota:
    """How many sandboxes one user may hold: ``total`` in all, and at most ``per_tier[t]`` on tier ``t``."""

    total: int
    per_tier: Mapping[str, int] = field(default_factory=dict)


class QuotaExceededError(Exception):
    """Creating (or moving) the sandbox would put the user over a limit of :class:`SandboxQuota`."""

    def __init__(self, limit: int, count: int, resource_tier_id: str | None) -> None:
        where = f" on the {resource_tier_id!r} tier" if resource_tier_id else ""
        super().__init__(f"{count} sandbox(es){where}, limit {limit}")
        self.limit = limit
        self.count = count
        self.resource_tier_id = resource_tier_id  # None: the overall limit


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
    """Fill unset choices from the user's preferences, else the catalog defaults (add-ons:
    :data:`DEFAULT_ADDON_IDS`); validate all three."""
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
        # Not chosen in the request: an add-on the catalog has since withdrawn is left out rather than
        # failing the create over a choice the user did not make in it.
        wanted = list(prefs.default_addon_ids) if prefs else list(DEFAULT_ADDON_IDS)
        offered = select(ContainerAddon.id).where(ContainerAddon.id.in_(wanted), ContainerAddon.enabled)
        addon_ids = list((await db.scalars(offered)).all()) if wanted else []
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
    """Whether the user already has a sandbox called ``name`` (by :func:`sandbox_name_key`)."""
    query = select(Sandbox.id).where(Sandbox.user_id == user_id, Sandbox.name_key == sandbox_name_key(name))
    if exclude_id is not None:
        query = query.where(Sandbox.id != exclude_id)
    return await db.scalar(query) is not None


async def lock_owner(db: AsyncSession, user_id: str) -> None:
    """Serialize the user's sandbox creates, renames and tier moves until this transaction ends.

    Must come before the transaction's first write. PostgreSQL: a transaction-scoped advisory lock
    on the user (other users are not blocked). SQLite: the database's single write lock, taken up
    front (:func:`store.write_gate.begin_write`), so the count read under it is still true at commit.
    """
    conn = await db.connection()
    if conn.dialect.name == "postgresql":
        key = func.hashtextextended(f"agentpod.sandboxes:{user_id}", 0)
        await conn.execute(select(func.pg_advisory_xact_lock(key)))
    else:
        await begin_write(db)


async def check_quota(
    db: AsyncSession, user_id: str, quota: SandboxQuota, *, resource_tier_id: str, new: bool = True
) -> None:
    """Raise :class:`QuotaExceededError` if one more sandbox (``new``) or one more on the tier would not fit.

    Call under :func:`lock_owner`. Every row counts, whatever its status, until its deletion finishes
    (the row goes last), so a sandbox being deleted still holds its slot.
    """
    owned = select(func.count()).select_from(Sandbox).where(Sandbox.user_id == user_id)
    if new:
        count = await db.scalar(owned) or 0
        if count >= quota.total:
            raise QuotaExceededError(quota.total, count, None)
    tier_limit = quota.per_tier.get(resource_tier_id)
    if tier_limit is not None:
        count = await db.scalar(owned.where(Sandbox.resource_tier_id == resource_tier_id)) or 0
        if count >= tier_limit:
            raise QuotaExceededError(tier_limit, count, resource_tier_id)


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


async def create(
    db: AsyncSession, *, user_id: str, name: str, quota: SandboxQuota | None = None, **fields: Any
) -> Sandbox:
    """Insert a sandbox with a slug unique for its owner.

    With ``quota`` (API requests) the owner is locked and the quota checked first. Raises
    :class:`DuplicateNameError`, :class:`QuotaExceededError`; on either nothing has been written.
    """
    if quota is not None:
        await lock_owner(db, user_id)
        await check_quota(db, user_id, quota, resource_tier_id=fields["resource_tier_id"])
    if await name_taken(db, user_id, name):
        raise DuplicateNameError(name)
    base = slugify(name)
    for _ in range(5):  # a writer that skipped the lock may take the slug between our read and insert
        sandbox = Sandbox(user_id=user_id, name=name, slug=await _free_slug(db, user_id, base), **fields)
        try:
            async with db.begin_nested():
                db.add(sandbox)
            return sandbox
        except IntegrityError:  # the savepoint's rollback took the pending row out of the session
            # The unique index on the name decides between parallel creates; only a slug is worth retrying.
            if await name_taken(db, user_id, name):
                raise DuplicateNameError(name) from None
    raise DuplicateNameError(name)


async def rename(db: AsyncSession, sandbox: Sandbox, name: str) -> None:
    """Give ``sandbox`` a new name (written now); raises :class:`DuplicateNameError` if the user has it.

    Call under :func:`lock_owner`; the unique index still refuses a writer that skipped the lock.
    After the error the caller answers and lets the transaction roll back (``sandbox`` is expired).
    """
    if await name_taken(db, sandbox.user_id, name, exclude_id=sandbox.id):
        raise DuplicateNameError(name)
    sandbox.name = name
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise DuplicateNameError(name) from None


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
    if status == SandboxStatus.RUNNING:
        values["config_pending"] = False  # every start and repair delivers the user's latest config
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


async def note_access(db: AsyncSession, sandbox: Sandbox, *, now: datetime | None = None) -> bool:
    """Record in ``last_accessed_at`` that the user used ``sandbox`` (a prompt, a start), coarsely.

    At most one write per :data:`ACCESS_RESOLUTION`: the row the request already loaded tells whether
    the stored time is older, so a request within the minute writes nothing, and of parallel requests
    the condition lets one write. ``updated_at`` stays: using a sandbox does not change it. The caller
    commits; returns whether it wrote.
    """
    now = now or utcnow()
    if sandbox.last_accessed_at is not None and now - sandbox.last_accessed_at < ACCESS_RESOLUTION:
        return False
    stale = or_(Sandbox.last_accessed_at.is_(None), Sandbox.last_accessed_at <= now - ACCESS_RESOLUTION)
    result = await db.execute(
        update(Sandbox)
        .where(Sandbox.id == sandbox.id, stale)
        .values(last_accessed_at=now, updated_at=Sandbox.updated_at)
        .execution_options(synchronize_session=False)
    )
    set_committed_value(sandbox, "last_accessed_at", now)
    return bool(getattr(result, "rowcount", 0))


async def mark_config_pending(db: AsyncSession, user_id: str) -> list[str]:
    """The user's agent config changed: flag their running sandboxes (ids returned) until they reload it."""
    result = await db.execute(
        update(Sandbox)
        .where(Sandbox.user_id == user_id, Sandbox.status == SandboxStatus.RUNNING.value)
        .values(config_pending=True)
        .returning(Sandbox.id)
    )
    return list(result.scalars())


async def set_config_pending(db: AsyncSession, sandbox_id: str, pending: bool) -> None:
    """Mark whether the running agent still waits for the user's changed configuration."""
    await db.execute(update(Sandbox).where(Sandbox.id == sandbox_id).values(config_pending=pending))


async def delete_row(db: AsyncSession, sandbox_id: str) -> None:
    """Remove the row, keeping its chat sessions and messages: they stay the user's, readable through
    ``/api/v2/chat/sessions``, until purged or the account is deleted.

    The sessions first get the sandbox's id, name and the time (``deleted_sandbox_*``), then the
    foreign key sets their ``sandbox_id`` to NULL, so the name and quota slot are free at once. The row
    is locked first (PostgreSQL): a session inserted for this sandbox meanwhile would otherwise lose
    its sandbox without the snapshot; on SQLite the write lock is taken up front for the same reason.
    Idempotent: a deleted row leaves nothing to do. Call it first in its transaction.
    """
    await begin_write(db)
    name = await db.scalar(select(Sandbox.name).where(Sandbox.id == sandbox_id).with_for_update())
    if name is None:
        return
    await db.execute(
        update(ChatSession)
        .where(ChatSession.sandbox_id == sandbox_id)
        .values(deleted_sandbox_id=sandbox_id, deleted_sandbox_name=name, sandbox_deleted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
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
