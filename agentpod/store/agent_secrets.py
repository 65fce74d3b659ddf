"""The encrypted key store as the sandbox workflow's :class:`~domain.secrets.SecretsProvider`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from agentpod.domain.secrets import AgentCredentials, ProviderAuth
from agentpod.security.encryption import DecryptionError
from agentpod.security.keyring import Keyring
from agentpod.store import opencode_config, providers


class EncryptedSecretsProvider:
    """Decrypts a user's provider keys and OpenCode settings for their agents, in the worker only."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        self._sessions = sessions
        self._keyring = keyring

    async def agent_credentials(self, user_id: str) -> AgentCredentials:
        """Every API key and the full ``opencode.json`` (MCP secrets included) of ``user_id``."""
        try:
            async with self._sessions() as db:
                keys = await providers.api_keys(db, self._keyring, user_id)
                config = await opencode_config.agent_settings(db, self._keyring, user_id)
                stored = await opencode_config.get_config(db, user_id)
                files = await opencode_config.list_files(db, user_id)
        except DecryptionError as error:
            # Retrying cannot repair a ciphertext: fail the start at once, saying what to re-enter.
            raise ApplicationError(
                f"cannot decrypt {error}; enter that secret again", type="DecryptionError", non_retryable=True
            ) from None
        return AgentCredentials(
            providers={provider_id: ProviderAuth(type="api", key=key) for provider_id, key in keys.items()},
            opencode_config=config,
            instructions=stored.agents_md if stored is not None else None,
            # OpenCode reads agents from <config dir>/agent/*.md and commands from command/*.md.
            config_files={
                f"{row.type}/{row.name}.md": row.content for row in files if row.type in ("agent", "command")
            },
        )
