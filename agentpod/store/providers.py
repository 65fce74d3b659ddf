"""Queries for a user's LLM provider keys: stored encrypted, listed with a hint only.

Each key is sealed with the context ``<user id>|<provider id>|api_key`` (see
:mod:`security.encryption`), so a ciphertext copied to another row does not decrypt. At most one
provider per user is the default (a partial unique index backs this up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.acp_agents import ACP_AGENTS, unavailable_reason
from agentpod.agent_config import merge_config
from agentpod.security.encryption import DecryptionError, context, decrypt, encrypt, hint
from agentpod.security.keyring import Keyring
from agentpod.store.base import new_id, utcnow
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.tables import ProviderCredential, UserOpencodeConfig

API_KEY = "api_key"
# Columns holding ciphertexts, with the field name each is sealed under.
ENCRYPTED_FIELDS = {
    "api_key_encrypted": "api_key",
    "access_token_encrypted": "access_token",
    "refresh_token_encrypted": "refresh_token",
}


def where(user_id: str, provider_id: str, field: str = "api_key") -> str:
    """The encryption context of one provider secret."""
    return context(user_id, provider_id, field)


async def list_for(db: AsyncSession, user_id: str) -> Sequence[ProviderCredential]:
    """The user's providers, by id."""
    query = select(ProviderCredential).where(ProviderCredential.user_id == user_id)
    return (await db.scalars(query.order_by(ProviderCredential.provider_id))).all()


async def get(db: AsyncSession, user_id: str, provider_id: str) -> ProviderCredential | None:
    """One of the user's providers."""
    return await db.scalar(
        select(ProviderCredential)
        .where(ProviderCredential.user_id == user_id, ProviderCredential.provider_id == provider_id)
        .execution_options(populate_existing=True)
    )


async def put_api_key(
    db: AsyncSession,
    keyring: Keyring,
    user_id: str,
    provider_id: str,
    api_key: str,
    *,
    make_default: bool | None,
) -> tuple[ProviderCredential, bool]:
    """Store (or replace) the key; returns the row and whether it was new. Caller commits.

    ``make_default``: True makes it the default, False clears that, None keeps it — except that the
    user's first provider becomes the default, so there always is one once any key is set.
    """
    existed = await get(db, user_id, provider_id) is not None
    has_default = await db.scalar(
        select(ProviderCredential.id).where(ProviderCredential.user_id == user_id, ProviderCredential.is_default)
    )
    if make_default is None and has_default is None:
        make_default = True
    if make_default:
        await _clear_default(db, user_id)
    now = utcnow()
    values: dict[str, Any] = {
        "auth_type": "api_key",
        "api_key_encrypted": encrypt(keyring, api_key, where=where(user_id, provider_id)),
        "access_token_encrypted": None,
        "refresh_token_encrypted": None,
        "token_expires_at": None,
        "key_hint": hint(api_key),
        "updated_at": now,
    }
    if make_default is not None:
        values["is_default"] = make_default
    # One statement, so two devices saving the same provider at once cannot both insert.
    await db.execute(
        insert_for(dialect_of(db), ProviderCredential)
        .values(id=new_id(), user_id=user_id, provider_id=provider_id, created_at=now, **values)
        .on_conflict_do_update(index_elements=["user_id", "provider_id"], set_=values)
    )
    row = await get(db, user_id, provider_id)
    assert row is not None  # just written
    return row, not existed


async def _clear_default(db: AsyncSession, user_id: str) -> None:
    await db.execute(
        update(ProviderCredential)
        .where(ProviderCredential.user_id == user_id, ProviderCredential.is_default)
        .values(is_default=False)
    )


async def set_default(db: AsyncSession, user_id: str, provider_id: str) -> ProviderCredential | None:
    """Make ``provider_id`` the user's default; None if the user has no such provider. Caller commits."""
    row = await get(db, user_id, provider_id)
    if row is None:
        return None
    if not row.is_default:
        await _clear_default(db, user_id)
        # flush the clear first: the partial unique index allows one default at a time
        await db.flush()
        row.is_default = True
        await db.flush()
    return row


async def delete(db: AsyncSession, user_id: str, provider_id: str) -> bool:
    """Delete the user's key for ``provider_id``; False if there was none. Caller commits."""
    row = await get(db, user_id, provider_id)
    if row is None:
        return False
    await db.delete(row)
    await db.flush()
    return True


async def api_keys(db: AsyncSession, keyring: Keyring, user_id: str) -> dict[str, str]:
    """Every API key of the user, decrypted (raises ``DecryptionError`` naming nothing secret)."""
    keys: dict[str, str] = {}
    for row in await list_for(db, user_id):
        if row.auth_type != "api_key" or not row.api_key_encrypted:
            continue
        try:
            keys[row.provider_id] = decrypt(keyring, row.api_key_encrypted, where=where(user_id, row.provider_id))
        except DecryptionError as error:
            raise DecryptionError(f"the stored key of provider {row.provider_id!r}: {error}") from None
    return keys


def names_a_model(config: Mapping[str, Any] | None) -> bool:
    """Whether an ``opencode.json`` picks a model or defines a provider of its own."""
    return config is not None and bool(config.get("model") or config.get("provider"))


async def has_model_source(db: AsyncSession, user_id: str, base_config: Mapping[str, Any]) -> bool:
    """Whether the user's agent has any model to talk to.

    Without one, OpenCode falls back to its own hosted provider, which a sandbox cannot reach: the
    turn retries forever and the user sees a reply that never comes. Sources: the installation's
    agent config, a stored provider key, or a provider or model in the user's OpenCode config.
    """
    if names_a_model(base_config):
        return True
    key = await db.scalar(select(ProviderCredential.id).where(ProviderCredential.user_id == user_id).limit(1))
    if key is not None:
        return True
    settings = await db.scalar(select(UserOpencodeConfig.settings).where(UserOpencodeConfig.user_id == user_id))
    return names_a_model(settings)


async def acp_agent_reasons(db: AsyncSession, user_id: str, base_config: Mapping[str, Any]) -> dict[str, str | None]:
    """Each ACP agent of the image → why it cannot run for this user (None: it can): an agent needs a
    key for its provider, stored here or named in the installation's or the user's OpenCode config."""
    provider_ids = [row.provider_id for row in await list_for(db, user_id)]
    settings = await db.scalar(select(UserOpencodeConfig.settings).where(UserOpencodeConfig.user_id == user_id))
    config = merge_config(dict(base_config), settings if isinstance(settings, dict) else {})
    return {agent.id: unavailable_reason(agent, provider_ids, config) for agent in ACP_AGENTS}
