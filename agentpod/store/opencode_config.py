"""Queries for the user's OpenCode config (settings JSON, AGENTS.md) and custom agent/command files.

Secrets inside the settings — every value under ``mcp.<server>.environment`` and
``mcp.<server>.headers`` — are lifted out and stored as one encrypted JSON blob (context
``<user id>|opencode|mcp_secrets``). The stored settings keep a mask in their place (``****`` plus
the last four characters of a long value), which is also what reads return; a write that sends a
mask back unchanged keeps the stored secret, so read → edit → write never loses or leaks one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.security.encryption import DecryptionError, context, decrypt, encrypt, hint
from agentpod.security.keyring import Keyring
from agentpod.store.base import new_id, utcnow
from agentpod.store.dialect_insert import dialect_of, insert_for
from agentpod.store.tables import UserOpencodeConfig, UserOpencodeFile

SECRET_SECTIONS = ("environment", "headers")
MASK = "****"
FILE_TYPES = ("agent", "command")
MAX_FILES = 100

# server -> section ("environment" / "headers") -> name -> value
Secrets = dict[str, dict[str, dict[str, str]]]


class DuplicateFileError(Exception):
    """The user already has a file of this type and name."""


class FileLimitError(Exception):
    """The user has :data:`MAX_FILES` files already."""


def secrets_where(user_id: str) -> str:
    """The encryption context of a user's MCP secrets."""
    return context(user_id, "opencode", "mcp_secrets")


def mask(value: str) -> str:
    """What reads show instead of a secret value."""
    return MASK + (hint(value) or "")


def _secret_maps(settings: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(server, section, the mapping holding secret values) for every MCP server in ``settings``."""
    found = []
    mcp = settings.get("mcp")
    if isinstance(mcp, dict):
        for server, config in mcp.items():
            if not isinstance(config, dict):
                continue
            for section in SECRET_SECTIONS:
                values = config.get(section)
                if isinstance(values, dict):
                    found.append((server, section, values))
    return found


def has_masks(settings: dict[str, Any]) -> bool:
    """Whether ``settings`` sends back any masked secret (so the stored ones must be read)."""
    return any(
        isinstance(value, str) and value.startswith(MASK)
        for _, _, values in _secret_maps(settings)
        for value in values.values()
    )


def split_secrets(settings: dict[str, Any], stored: Secrets) -> tuple[dict[str, Any], Secrets]:
    """(settings with masks in place of secrets, the secrets). An unchanged mask keeps ``stored``'s value."""
    public = copy.deepcopy(settings)
    secrets: Secrets = {}
    for server, section, values in _secret_maps(public):
        for name, value in values.items():
            if not isinstance(value, str):
                continue
            previous = stored.get(server, {}).get(section, {}).get(name)
            if previous is not None and value == mask(previous):
                value = previous
            secrets.setdefault(server, {}).setdefault(section, {})[name] = value
            values[name] = mask(value)
    return public, secrets


def merge_secrets(public: dict[str, Any], secrets: Secrets) -> dict[str, Any]:
    """The full settings: ``public`` with every secret put back."""
    full = copy.deepcopy(public)
    for server, section, values in _secret_maps(full):
        for name, value in secrets.get(server, {}).get(section, {}).items():
            if name in values:
                values[name] = value
    return full


async def get_config(db: AsyncSession, user_id: str) -> UserOpencodeConfig | None:
    """The user's config row (settings hold masks, never secrets)."""
    return await db.scalar(
        select(UserOpencodeConfig)
        .where(UserOpencodeConfig.user_id == user_id)
        .execution_options(populate_existing=True)
    )


def stored_secrets(keyring: Keyring, row: UserOpencodeConfig) -> Secrets:
    """The row's MCP secrets, decrypted (``DecryptionError`` if tampered or moved)."""
    if not row.secrets_encrypted:
        return {}
    try:
        plaintext = decrypt(keyring, row.secrets_encrypted, where=secrets_where(row.user_id))
    except DecryptionError as error:
        raise DecryptionError(f"the stored MCP secrets: {error}") from None
    secrets: Secrets = json.loads(plaintext)
    return secrets


async def put_config(
    db: AsyncSession, keyring: Keyring, user_id: str, settings: dict[str, Any], agents_md: str | None
) -> UserOpencodeConfig:
    """Replace the user's settings and AGENTS.md (upsert). Caller commits."""
    row = await get_config(db, user_id)
    stored = stored_secrets(keyring, row) if row is not None and has_masks(settings) else {}
    public, secrets = split_secrets(settings, stored)
    sealed = encrypt(keyring, json.dumps(secrets), where=secrets_where(user_id)) if secrets else None
    now = utcnow()
    values = {"settings": public, "secrets_encrypted": sealed, "agents_md": agents_md, "updated_at": now}
    await db.execute(
        insert_for(dialect_of(db), UserOpencodeConfig)
        .values(id=new_id(), user_id=user_id, created_at=now, **values)
        .on_conflict_do_update(index_elements=["user_id"], set_=values)
    )
    written = await get_config(db, user_id)
    assert written is not None  # just written
    return written


async def agent_settings(db: AsyncSession, keyring: Keyring, user_id: str) -> dict[str, Any] | None:
    """The full ``opencode.json`` for the user's agents (secrets included), or None if there is none."""
    row = await get_config(db, user_id)
    if row is None or not row.settings:
        return None
    return merge_secrets(row.settings, stored_secrets(keyring, row))


# --------------------------------------------------------------------------- files


async def list_files(db: AsyncSession, user_id: str) -> Sequence[UserOpencodeFile]:
    """The user's files, by type then name."""
    query = select(UserOpencodeFile).where(UserOpencodeFile.user_id == user_id)
    return (await db.scalars(query.order_by(UserOpencodeFile.type, UserOpencodeFile.name))).all()


async def get_file(db: AsyncSession, user_id: str, file_id: str) -> UserOpencodeFile | None:
    """One of the user's files (another user's is indistinguishable from none)."""
    return await db.scalar(
        select(UserOpencodeFile).where(UserOpencodeFile.id == file_id, UserOpencodeFile.user_id == user_id)
    )


async def create_file(db: AsyncSession, user_id: str, *, type: str, name: str, content: str) -> UserOpencodeFile:
    """Add a file; :class:`DuplicateFileError` / :class:`FileLimitError` refuse it. Caller commits."""
    count = await db.scalar(select(func.count()).where(UserOpencodeFile.user_id == user_id))
    if (count or 0) >= MAX_FILES:
        raise FileLimitError(f"at most {MAX_FILES} files")
    now = utcnow()
    # ON CONFLICT DO NOTHING: a duplicate is an answer, not an aborted transaction.
    file_id = await db.scalar(
        insert_for(dialect_of(db), UserOpencodeFile)
        .values(
            id=new_id(),
            user_id=user_id,
            type=type,
            name=name,
            extension="md",
            content=content,
            is_system=False,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "type", "name"])
        .returning(UserOpencodeFile.id)
    )
    if file_id is None:
        raise DuplicateFileError(f"you already have a {type} named {name!r}")
    created = await get_file(db, user_id, file_id)
    assert created is not None  # just inserted
    return created


async def update_file(db: AsyncSession, row: UserOpencodeFile, *, name: str, content: str) -> bool:
    """Rename and/or rewrite a file; False if nothing changed. Caller commits."""
    if (row.name, row.content) == (name, content):
        return False
    message = f"you already have a {row.type} named {name!r}"  # the row is expired after a rollback
    row.name, row.content = name, content
    try:
        await db.flush()
    except IntegrityError as exc:
        await db.rollback()
        raise DuplicateFileError(message) from exc
    return True


async def delete_file(db: AsyncSession, row: UserOpencodeFile) -> None:
    """Delete a file. Caller commits."""
    await db.delete(row)
    await db.flush()
