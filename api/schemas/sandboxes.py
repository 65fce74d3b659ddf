"""Bodies of the sandbox endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, field_validator

from api.schemas.base import RequestBody, ResponseBody

Name = Annotated[str, Field(min_length=1, max_length=100)]
Description = Annotated[str, Field(max_length=2000)]
RepoName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]
GithubUrl = Annotated[str, Field(max_length=2048, pattern=r"^https://[^\s]+$")]
CatalogId = Annotated[str, Field(min_length=1, max_length=64)]
AddonIds = Annotated[list[CatalogId], Field(max_length=16)]


class SandboxCreate(RequestBody):
    """Create a sandbox; unset tier / flavor / add-ons come from preferences, else catalog defaults."""

    name: Name
    description: Description | None = None
    repo_name: RepoName
    github_url: GithubUrl | None = None
    resource_tier_id: CatalogId | None = None
    flavor_id: CatalogId | None = None
    addon_ids: AddonIds | None = None
    auto_start: bool = False

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("name must not contain control characters")
        return value


class SandboxUpdate(RequestBody):
    """Change a sandbox; tier, flavor and add-ons recreate a running container (volumes kept)."""

    name: Name | None = None
    description: Description | None = None
    github_url: GithubUrl | None = None
    resource_tier_id: CatalogId | None = None
    flavor_id: CatalogId | None = None
    addon_ids: AddonIds | None = None

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("name must not contain control characters")
        return value


class SandboxOut(ResponseBody):
    """A sandbox as the app shows it. ``status`` is what the container really is."""

    id: str
    name: str
    slug: str
    description: str | None
    repo_name: str
    github_url: str | None
    resource_tier_id: str
    flavor_id: str
    addon_ids: list[str]
    status: str
    error_message: str | None
    config_pending: bool = Field(
        description="The user's agent config, files or keys changed and this running sandbox's agent has not "
        "reloaded them yet (it does within seconds, once no turn is in progress)."
    )
    opencode_url: str | None
    acp_gateway_url: str | None
    code_server_url: str | None
    vnc_url: str | None
    created_at: datetime
    updated_at: datetime
    last_accessed_at: datetime | None


class SandboxList(ResponseBody):
    """The caller's sandboxes."""

    sandboxes: list[SandboxOut]
