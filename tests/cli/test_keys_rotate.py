"""``agentpod keys rotate``: every secret moves to the first key, round-trips, and reruns are no-ops."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.cli.keys_rotate import pending, rotate, rotate_command
from agentpod.security.encryption import encrypt, key_id_of
from agentpod.security.keyring import Keyring, generate_entry, parse_key
from agentpod.settings import Settings
from agentpod.store import opencode_config, providers
from agentpod.store.tables import ProviderCredential, User, UserOpencodeConfig

OLD, NEW, LOST = generate_entry("k_1"), generate_entry("k2"), generate_entry("k0")
BEFORE = Keyring((parse_key(OLD),))
AFTER = Keyring((parse_key(NEW), parse_key(OLD)))  # the new key first; the old one still decrypts
ONLY_NEW = Keyring((parse_key(NEW),))
SETTINGS = {"mcp": {"github": {"type": "local", "environment": {"TOKEN": "ghp_0123456789abcdefgh"}}}}


async def _seed(sessions: async_sessionmaker[AsyncSession], users: int = 3) -> dict[str, dict[str, str]]:
    """Users with two provider keys and MCP secrets each, all sealed with the old key."""
    keys: dict[str, dict[str, str]] = {}
    async with sessions() as db:
        for number in range(users):
            user = User(email=f"rotate-{number}@example.com", name="R", password_hash="x")
            db.add(user)
            await db.flush()
            keys[user.id] = {"openai": f"sk-openai-{number}-0123456789", "anthropic": f"sk-ant-{number}-0123456789"}
            for provider_id, key in keys[user.id].items():
                await providers.put_api_key(db, BEFORE, user.id, provider_id, key, make_default=None)
            await opencode_config.put_config(db, BEFORE, user.id, SETTINGS, None)
        await db.commit()
    return keys


async def _everything_reads_back(sessions: async_sessionmaker[AsyncSession], keys: dict[str, dict[str, str]]) -> None:
    async with sessions() as db:
        for user_id, expected in keys.items():
            assert await providers.api_keys(db, ONLY_NEW, user_id) == expected
            assert await opencode_config.agent_settings(db, ONLY_NEW, user_id) == SETTINGS


async def test_rotation_round_trips_and_is_idempotent(sessions: async_sessionmaker[AsyncSession]) -> None:
    keys = await _seed(sessions)
    assert await pending(sessions, BEFORE) == 0
    assert await pending(sessions, AFTER) == 9  # 3 users x (2 keys + 1 MCP blob)

    advanced: list[int] = []
    result = await rotate(sessions, AFTER, batch_size=2, advance=advanced.append)
    assert (result.rotated, result.failed, sum(advanced)) == (9, [], 9)
    async with sessions() as db:
        stored = [*(await db.scalars(select(ProviderCredential.api_key_encrypted))).all()]
        stored += (await db.scalars(select(UserOpencodeConfig.secrets_encrypted))).all()
    assert {key_id_of(value) for value in stored if value} == {"k2"}
    await _everything_reads_back(sessions, keys)  # with the new key alone

    again = await rotate(sessions, AFTER)
    assert (again.rotated, again.failed, await pending(sessions, AFTER)) == (0, [], 0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_command_shows_progress_and_reports_what_it_cannot_decrypt(
    database_url: str, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    keys = await _seed(sessions, users=2)
    lost = next(iter(keys))
    async with sessions() as db:  # sealed with a key nobody kept
        sealed = encrypt(Keyring((parse_key(LOST),)), "sk-gone-0123456789", where=providers.where(lost, "openai"))
        await db.execute(
            update(ProviderCredential)
            .where(ProviderCredential.user_id == lost, ProviderCredential.provider_id == "openai")
            .values(api_key_encrypted=sealed)
        )
        await db.commit()
    settings = Settings(data_dir=tmp_path, database_url=database_url, encryption_keys=[NEW, OLD])
    output = io.StringIO()
    code = await rotate_command(settings, console=Console(file=output, width=200, force_terminal=False))
    text = output.getvalue()
    assert code == 1
    assert "Re-encrypted 5 secret(s) with key 'k2'" in text
    assert "provider_credentials.api_key_encrypted of row" in text and "'k0' is not in the keyring" in text
    assert "sk-" not in text  # secrets never printed

    output = io.StringIO()
    assert await rotate_command(settings, console=Console(file=output)) == 1  # still reported, nothing else to do
    assert "Re-encrypted 0 secret(s)" in output.getvalue()
