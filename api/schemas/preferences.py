"""Request and response bodies of ``/api/users/me/preferences``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints

from agentpod.store.preferences import DEFAULTS, HISTORY_LIMIT
from agentpod.store.tables.preferences import AUTO_REFRESH_MAX_SECONDS, AUTO_REFRESH_MIN_SECONDS
from api.schemas.base import RequestBody, ResponseBody

ThemeMode = Literal["light", "dark", "system"]
SyncStatus = Literal["current", "behind", "ahead"]
# Presets and agents are identifiers the app maps to themes and agents: no spaces, no markup.
_IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_IDENTIFIER)]
CatalogId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RefreshSeconds = Annotated[int, Field(ge=AUTO_REFRESH_MIN_SECONDS, le=AUTO_REFRESH_MAX_SECONDS)]
MAX_ADDONS = 16


def _sorted_unique(ids: list[str]) -> list[str]:
    # An add-on set, stored in one canonical order so equal choices compare (and version) as equal.
    return sorted(set(ids))


AddonIds = Annotated[list[CatalogId], Field(max_length=MAX_ADDONS), AfterValidator(_sorted_unique)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional() -> Any:
    """A PATCH field: may be left out, but not sent as null (the column has no "unset" state)."""
    return Field(default=None, json_schema_extra=_no_default)


class PreferencesReplace(RequestBody):
    """``PUT``: the whole document. A field left out gets its default; unknown fields are rejected."""

    # Strict: "30" is not a number and 1 is not a boolean (a client bug, not a preference).
    model_config = ConfigDict(strict=True)

    theme_mode: ThemeMode = DEFAULTS["theme_mode"]
    theme_preset: Identifier = DEFAULTS["theme_preset"]
    auto_refresh_interval: RefreshSeconds = DEFAULTS["auto_refresh_interval"]
    in_app_notifications: bool = DEFAULTS["in_app_notifications"]
    system_notifications: bool = DEFAULTS["system_notifications"]
    default_resource_tier_id: CatalogId | None = Field(
        default=None, description="A resource tier id from the catalog; null: the catalog's default tier."
    )
    default_flavor_id: CatalogId | None = Field(
        default=None, description="A container flavor id from the catalog; null: the catalog's default flavor."
    )
    default_addon_ids: AddonIds = Field(
        default_factory=lambda: list(DEFAULTS["default_addon_ids"]), description="Add-on ids from the catalog."
    )
    default_agent_id: Identifier = DEFAULTS["default_agent_id"]


class PreferencesPatch(RequestBody):
    """``PATCH``: only the fields sent change; unknown fields are rejected."""

    model_config = ConfigDict(strict=True)

    theme_mode: ThemeMode = _optional()
    theme_preset: Identifier = _optional()
    auto_refresh_interval: RefreshSeconds = _optional()
    in_app_notifications: bool = _optional()
    system_notifications: bool = _optional()
    default_resource_tier_id: CatalogId | None = Field(default=None, description="null: the catalog's default tier.")
    default_flavor_id: CatalogId | None = Field(default=None, description="null: the catalog's default flavor.")
    default_addon_ids: AddonIds = _optional()
    default_agent_id: Identifier = _optional()


class PreferencesValues(ResponseBody):
    """The user-settable values."""

    theme_mode: ThemeMode
    theme_preset: str
    auto_refresh_interval: int
    in_app_notifications: bool
    system_notifications: bool
    default_resource_tier_id: str | None
    default_flavor_id: str | None
    default_addon_ids: list[str]
    default_agent_id: str


class PreferencesOut(PreferencesValues):
    """The preferences as stored; ``settings_version`` is also the ``ETag``."""

    settings_version: int = Field(description="Increases with every change (resets included); never goes back.")
    updated_at: datetime


class PreferencesVersionOut(ResponseBody):
    """Just the version, for cheap polling."""

    settings_version: int


class PreferencesSyncOut(ResponseBody):
    """Whether a device holding ``client_version`` must update, and to what."""

    client_version: int
    settings_version: int
    status: SyncStatus = Field(
        description="`ahead` cannot happen with versions that never go back; a device that sees it "
        "holds data from elsewhere and must adopt the server's state too."
    )
    needs_sync: bool
    preferences: PreferencesOut | None = Field(description="The server's state when `needs_sync`, else null.")


class HistoryEntryOut(ResponseBody):
    """One kept version."""

    version: int
    action: str = Field(description="What made this version: `create`, `update`, `replace`, `reset` or `restore`.")
    changed_fields: list[str]
    restored_from: int | None
    created_at: datetime
    preferences: PreferencesValues


class PreferencesHistoryOut(ResponseBody):
    """The kept versions, newest first."""

    settings_version: int
    limit: int = Field(HISTORY_LIMIT, description="How many versions are kept.")
    versions: list[HistoryEntryOut]
