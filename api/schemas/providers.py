"""Request and response bodies of ``/api/users/me/providers``. Keys go in; only hints come out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints

from api.schemas.base import RequestBody, ResponseBody

# OpenCode provider ids: "anthropic", "openai", "amazon-bedrock", "github-copilot", ...
PROVIDER_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ProviderId = Annotated[str, StringConstraints(pattern=PROVIDER_ID_PATTERN)]
MAX_KEY_LENGTH = 4096


class ProviderKeyIn(RequestBody):
    """Set (or replace) the API key of one provider."""

    # SecretStr: the key never shows in a repr, a log line or a validation error.
    api_key: SecretStr = Field(min_length=1, max_length=MAX_KEY_LENGTH, description="The provider's API key.")
    is_default: bool | None = Field(
        None,
        description="Make this the default provider (true) or not (false); null keeps it as it is. "
        "The first provider a user sets becomes the default.",
    )


class ProviderOut(ResponseBody):
    """A configured provider. The key itself is never returned, only its last four characters."""

    provider_id: str
    auth_type: str
    key_hint: str | None = Field(description="Last four characters of a key of 12 or more; null for shorter ones.")
    is_default: bool
    created_at: datetime
    updated_at: datetime


class ProviderList(ResponseBody):
    """The caller's providers and which one is the default."""

    providers: list[ProviderOut]
    default_provider_id: str | None
