"""Queries for user preferences: race-free get-or-create, versioned writes, history and restore.

Every write is a compare-and-swap on ``settings_version`` (``UPDATE ... WHERE settings_version =
<the version read>``), so two writers can never both build on the same version, on SQLite or
PostgreSQL, whatever the isolation level. A write pinned to a version (``If-Match``) that no longer
holds raises :class:`StaleVersionError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.store.base import new_id, utcnow
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.sandboxes import DEFAULT_ADDON_IDS, validate_catalog_choices
from agentpod.store.tables import UserPreferences
from agentpod.store.tables.preferences_history import UserPreferencesHistory

# The user-settable values, in display order (everything else on the row is bookkeeping).
FIELDS = (
    "theme_mode",
    "theme_preset",
    "auto_refresh_interval",
    "in_app_notifications",
    "system_notifications",
    "default_resource_tier_id",
    "default_flavor_id",
    "default_addon_ids",
    "default_agent_id",
)
# None for tier and flavor means "whatever the catalog marks as default" at sandbox creation.
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "theme_mode": "system",
        "theme_preset": "default-neutral",
        "auto_refresh_interval": 30,
        "in_app_notifications": True,
        "system_notifications": True,
        "default_resource_tier_id": None,
        "default_flavor_id": None,
        "default_addon_ids": list(DEFAULT_ADDON_IDS),
        "default_agent_id": "opencode",
    }
)
HISTORY_LIMIT = 20
# Compare-and-swap retries for unpinned writes; each lost race means another write just succeeded.
_ATTEMPTS = 10

Values = dict[str, Any]


class StaleVersionError(Exception):
    """The write was pinned to versions the preferences are no longer at; ``current`` is what is stored."""

    def __init__(self, current: UserPreferences) -> None:
        super().__init__(f"preferences are at version {current.settings_version}")
        self.current = current


class ConcurrentWriteError(RuntimeError):
    """Other writes kept winning the compare-and-swap (pathological contention)."""


@dataclass(frozen=True)
class Written:
    """The outcome of a write: the row as stored now, and which fields changed (empty: no new version)."""

    row: UserPreferences
    changed: list[str]
    new_version: bool


def defaults() -> Values:
    """A fresh copy of the defaults (the list inside is the caller's to keep)."""
    return {**DEFAULTS, "default_addon_ids": list(DEFAULTS["default_addon_ids"])}


def values_of(row: UserPreferences) -> Values:
    """The user-settable values of ``row``."""
    values = {field: getattr(row, field) for field in FIELDS}
    values["default_addon_ids"] = list(values["default_addon_ids"])
    return values


def from_snapshot(snapshot: Mapping[str, Any]) -> Values:
    """Values from a history snapshot; fields added after it was taken get their defaults."""
    return {**defaults(), **{field: snapshot[field] for field in FIELDS if field in snapshot}}


async def get(db: AsyncSession, user_id: str) -> UserPreferences | None:
    """The stored row, read fresh (never a stale copy from the session's identity map)."""
    return await db.scalar(
        select(UserPreferences).where(UserPreferences.user_id == user_id).execution_options(populate_existing=True)
    )


async def get_or_create(db: AsyncSession, user_id: str) -> UserPreferences:
    """The user's preferences, created with the defaults (version 1) on first use. Caller commits.

    Race-free: two first requests at once both ``INSERT ... ON CONFLICT DO NOTHING``; one inserts, the
    other's insert does nothing, and both read the same row.
    """
    row = await get(db, user_id)
    if row is not None:
        return row
    now = utcnow()
    inserted = await db.scalar(
        insert_for(dialect_of(db), UserPreferences)
        .values(id=new_id(), user_id=user_id, settings_version=1, created_at=now, updated_at=now, **defaults())
        .on_conflict_do_nothing(index_elements=[UserPreferences.user_id])
        .returning(UserPreferences.id)
    )
    if inserted is not None:
        db.add(_history(user_id, 1, defaults(), "create", [], None))
        await db.flush()
    row = await get(db, user_id)
    assert row is not None  # inserted above, or by the concurrent request we lost to
    return row


async def write(
    db: AsyncSession,
    user_id: str,
    target: Callable[[Values], Values],
    *,
    action: str,
    expected: Collection[int] | None = None,
    always_new_version: bool = False,
    restored_from: int | None = None,
) -> Written:
    """Apply ``target`` (current values → wanted values) as one new version. Caller commits.

    ``expected``: versions the write is pinned to (``If-Match``); None writes on top of whatever is
    current. A write that changes nothing creates no version unless ``always_new_version`` (reset,
    restore). Changed catalog choices are validated (``store.sandboxes.CatalogError``).
    """
    for _ in range(_ATTEMPTS):
        row = await get_or_create(db, user_id)
        if expected is not None and row.settings_version not in expected:
            raise StaleVersionError(row)
        current = values_of(row)
        wanted = {**current, **target(current)}
        changed = [field for field in FIELDS if wanted[field] != current[field]]
        if not changed and not always_new_version:
            return Written(row, [], new_version=False)
        await _validate_catalog(db, wanted, changed)
        version = await db.scalar(
            update(UserPreferences)
            .where(UserPreferences.user_id == user_id, UserPreferences.settings_version == row.settings_version)
            .values(**wanted, settings_version=row.settings_version + 1, updated_at=utcnow())
            .returning(UserPreferences.settings_version)
            .execution_options(synchronize_session=False)
        )
        if version is None:
            continue  # another write won the race: build on what it stored (or answer 412 if pinned)
        db.add(_history(user_id, version, wanted, action, changed, restored_from))
        await db.flush()
        await db.execute(
            delete(UserPreferencesHistory).where(
                UserPreferencesHistory.user_id == user_id, UserPreferencesHistory.version <= version - HISTORY_LIMIT
            )
        )
        stored = await get(db, user_id)
        assert stored is not None
        return Written(stored, changed, new_version=True)
    raise ConcurrentWriteError(f"preferences of {user_id} changed {_ATTEMPTS} times during one write")


async def history(db: AsyncSession, user_id: str) -> Sequence[UserPreferencesHistory]:
    """The kept versions, newest first."""
    return (
        await db.scalars(
            select(UserPreferencesHistory)
            .where(UserPreferencesHistory.user_id == user_id)
            .order_by(UserPreferencesHistory.version.desc())
        )
    ).all()


async def snapshot(db: AsyncSession, user_id: str, version: int) -> Values | None:
    """The values of ``version``, if it is still kept."""
    entry = await db.get(UserPreferencesHistory, (user_id, version))
    return None if entry is None else from_snapshot(entry.snapshot)


async def _validate_catalog(db: AsyncSession, wanted: Values, changed: list[str]) -> None:
    # Only choices that change are checked: a tier retired from the catalog must not block
    # unrelated edits (say, the theme) of a user who still has it selected.
    await validate_catalog_choices(
        db,
        resource_tier_id=wanted["default_resource_tier_id"] if "default_resource_tier_id" in changed else None,
        flavor_id=wanted["default_flavor_id"] if "default_flavor_id" in changed else None,
        addon_ids=wanted["default_addon_ids"] if "default_addon_ids" in changed else None,
    )


def _history(
    user_id: str, version: int, values: Values, action: str, changed: list[str], restored_from: int | None
) -> UserPreferencesHistory:
    return UserPreferencesHistory(
        user_id=user_id,
        version=version,
        snapshot=values,
        action=action,
        changed_fields=changed,
        restored_from=restored_from,
    )
