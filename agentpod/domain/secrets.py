"""What a running agent needs from the key store, and the interface that provides it.

The sandbox workflow hands these to the agent after it is healthy, through OpenCode's API or a file
in the container's tmpfs — never through environment variables or labels, which ``docker inspect``
shows to anyone with access to the engine.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field


class ProviderAuth(BaseModel):
    """One provider's credential in OpenCode's ``PUT /auth/{providerID}`` shape."""

    type: str = "api"
    key: str


class AgentCredentials(BaseModel):
    """Every secret a user's agents need."""

    providers: dict[str, ProviderAuth] = Field(default_factory=dict)
    opencode_config: dict[str, Any] | None = None  # full opencode.json, secrets included
    # The user's AGENTS.md: instructions every agent of the user follows.
    instructions: str | None = None
    # Custom agents and commands as OpenCode reads them from its config dir: "agent/<name>.md" → text.
    config_files: dict[str, str] = Field(default_factory=dict)

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"AgentCredentials(providers={sorted(self.providers)})"

    __str__ = __repr__


class SecretsProvider(Protocol):
    """Source of a user's agent credentials (the encrypted key store implements it)."""

    async def agent_credentials(self, user_id: str) -> AgentCredentials:
        """Decrypted credentials for ``user_id``'s agents."""
        ...


class NoSecrets:
    """Provider for installations (and tests) without a key store: agents get nothing."""

    async def agent_credentials(self, user_id: str) -> AgentCredentials:
        """No credentials."""
        return AgentCredentials()
