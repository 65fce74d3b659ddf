"""Provider keys through the API: encrypted at rest, bound to their row, shown as hints only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from agentpod.security.encryption import decrypt
from agentpod.security.keyring import Keyring
from agentpod.settings import Settings
from agentpod.store.agent_secrets import EncryptedSecretsProvider
from agentpod.store.providers import where
from agentpod.store.tables import ActivityLog, ProviderCredential
from api.app import create_app
from api.routes import ROUTERS
from api.routes import providers as provider_routes
from tests.helpers import assert_error, auth_header, sign_up

BASE = "/api/users/me/providers"
SECRET = "sk-test-SECRET-0123456789-wxyz"
# Behaviour that does not depend on the database runs on SQLite only (keeps the suite fast).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
OTHER_SECRET = "sk-ant-OTHER-9876543210-abcd"


@pytest_asyncio.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with the provider routes mounted (until they join ``ROUTERS``)."""
    app = create_app(settings)
    if provider_routes.router not in ROUTERS:
        app.include_router(provider_routes.router)
    async with app.router.lifespan_context(app):
        yield app


def _keyring(app: FastAPI) -> Keyring:
    keyring: Keyring = app.state.ctx.keyring
    return keyring


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def test_put_get_list_delete_show_hints_never_keys(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    created = await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"provider_id", "auth_type", "key_hint", "is_default", "created_at", "updated_at"}
    assert (body["provider_id"], body["auth_type"], body["key_hint"], body["is_default"]) == (
        "openai",
        "api_key",
        "wxyz",
        True,  # the first provider becomes the default
    )

    replaced = await client.put(f"{BASE}/openai", json={"api_key": OTHER_SECRET}, headers=headers)
    assert replaced.status_code == 200 and replaced.json()["key_hint"] == "abcd"
    short = await client.put(f"{BASE}/groq", json={"api_key": "gsk-short"}, headers=headers)
    assert short.status_code == 201 and short.json()["key_hint"] is None  # 4 of 9 characters would be too many

    assert (await client.get(f"{BASE}/openai", headers=headers)).json()["key_hint"] == "abcd"
    listed = (await client.get(BASE, headers=headers)).json()
    assert [p["provider_id"] for p in listed["providers"]] == ["groq", "openai"]
    assert listed["default_provider_id"] == "openai"

    assert (await client.delete(f"{BASE}/openai", headers=headers)).status_code == 204
    assert_error(await client.get(f"{BASE}/openai", headers=headers), 404, "provider_not_found")
    assert_error(await client.delete(f"{BASE}/openai", headers=headers), 404, "provider_not_found")
    assert (await client.get(BASE, headers=headers)).json()["default_provider_id"] is None


async def test_the_default_provider_is_per_user(client: httpx.AsyncClient) -> None:
    ada, _ = await _user(client)
    bob, _ = await _user(client)
    await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=ada)
    anthropic = await client.put(f"{BASE}/anthropic", json={"api_key": OTHER_SECRET}, headers=ada)
    assert anthropic.json()["is_default"] is False

    switched = await client.put(f"{BASE}/anthropic/default", headers=ada)
    assert switched.status_code == 200 and switched.json()["is_default"] is True
    assert (await client.get(BASE, headers=ada)).json()["default_provider_id"] == "anthropic"
    assert (await client.get(f"{BASE}/openai", headers=ada)).json()["is_default"] is False

    # Bob's providers and default are his own (the origin system kept one default for everybody).
    assert (await client.get(BASE, headers=bob)).json() == {"providers": [], "default_provider_id": None}
    assert (await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=bob)).json()["is_default"] is True
    assert (await client.get(BASE, headers=ada)).json()["default_provider_id"] == "anthropic"
    assert_error(await client.put(f"{BASE}/mistral/default", headers=bob), 404, "provider_not_found")

    cleared = await client.put(f"{BASE}/anthropic", json={"api_key": SECRET, "is_default": False}, headers=ada)
    assert cleared.json()["is_default"] is False
    assert (await client.get(BASE, headers=ada)).json()["default_provider_id"] is None
    made = await client.put(f"{BASE}/openai", json={"api_key": SECRET, "is_default": True}, headers=ada)
    assert made.json()["is_default"] is True


async def test_keys_are_stored_encrypted_and_reach_agents_decrypted(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=headers)
    await client.put(f"{BASE}/anthropic", json={"api_key": OTHER_SECRET}, headers=headers)
    keyring = _keyring(app)
    async with sessions() as db:
        stored = await db.scalar(
            select(ProviderCredential.api_key_encrypted).where(
                ProviderCredential.user_id == user_id, ProviderCredential.provider_id == "openai"
            )
        )
    assert stored is not None and stored.startswith(f"v1:{keyring.primary[0]}:") and SECRET not in stored
    assert decrypt(keyring, stored, where=where(user_id, "openai")) == SECRET

    credentials = await EncryptedSecretsProvider(sessions, keyring).agent_credentials(user_id)
    assert {pid: auth.model_dump() for pid, auth in credentials.providers.items()} == {
        "anthropic": {"type": "api", "key": OTHER_SECRET},
        "openai": {"type": "api", "key": SECRET},
    }
    assert SECRET not in repr(credentials) and SECRET not in str(credentials)


@sqlite_only
async def test_a_moved_or_tampered_ciphertext_fails_the_agent_start_loudly(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ada, ada_id = await _user(client)
    bob, bob_id = await _user(client)
    await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=ada)
    await client.put(f"{BASE}/openai", json={"api_key": OTHER_SECRET}, headers=bob)
    async with sessions() as db:
        adas = await db.scalar(select(ProviderCredential.api_key_encrypted).where(ProviderCredential.user_id == ada_id))
    assert adas is not None
    tampered = adas[:-6] + ("A" if adas[-6] != "A" else "B") + adas[-5:]
    for forged in (adas, tampered):  # Ada's ciphertext copied into Bob's row; one changed character
        async with sessions() as db:
            await db.execute(
                update(ProviderCredential).where(ProviderCredential.user_id == bob_id).values(api_key_encrypted=forged)
            )
            await db.commit()
        with pytest.raises(ApplicationError) as raised:
            await EncryptedSecretsProvider(sessions, _keyring(app)).agent_credentials(bob_id)
        assert raised.value.non_retryable and raised.value.type == "DecryptionError"
        assert "'openai'" in raised.value.message and "authentication" in raised.value.message
        assert SECRET not in raised.value.message


@sqlite_only
async def test_keys_never_reach_responses_logs_or_the_audit_trail(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers, user_id = await _user(client)
    responses = [
        await client.put(f"{BASE}/openai", json={"api_key": SECRET}, headers=headers),
        await client.get(f"{BASE}/openai", headers=headers),
        await client.get(BASE, headers=headers),
        await client.put(f"{BASE}/openai/default", headers=headers),
        # A rejected request must not echo the key back either.
        await client.put(f"{BASE}/openai", json={"api_key": SECRET, "oops": 1}, headers=headers),
        await client.put(f"{BASE}/OpenAI", json={"api_key": SECRET}, headers=headers),
        await client.delete(f"{BASE}/openai", headers=headers),
    ]
    assert [r.status_code for r in responses] == [201, 200, 200, 200, 422, 422, 204]
    assert all(SECRET not in r.text for r in responses)
    assert SECRET not in caplog.text
    async with sessions() as db:
        rows = (
            await db.execute(
                select(ActivityLog.action, ActivityLog.entity_type, ActivityLog.entity_id, ActivityLog.metadata_)
                .where(ActivityLog.user_id == user_id, ActivityLog.action.like("provider.%"))
                .order_by(ActivityLog.created_at)
            )
        ).all()
    trail = [(action, entity_type, entity_id) for action, entity_type, entity_id, _ in rows]
    assert trail == [
        ("provider.configure", "provider", "openai"),
        ("provider.set_default", "provider", "openai"),
        ("provider.remove", "provider", "openai"),
    ]
    assert all(SECRET not in str(metadata) for *_, metadata in rows)


@sqlite_only
async def test_bad_input_is_a_422(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    for path, body in [
        ("Open-AI", {"api_key": SECRET}),  # provider ids are lower case
        ("a" * 65, {"api_key": SECRET}),
        ("openai", {"api_key": ""}),
        ("openai", {"api_key": "x" * 4097}),
        ("openai", {}),
        ("openai", {"api_key": SECRET, "is_default": "yes please"}),
    ]:
        assert_error(await client.put(f"{BASE}/{path}", json=body, headers=headers), 422, "validation_error")
    assert (await client.get(BASE, headers=headers)).json()["providers"] == []


@sqlite_only
async def test_providers_need_a_token(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(BASE), 401, "unauthorized")
    assert_error(await client.put(f"{BASE}/openai", json={"api_key": SECRET}), 401, "unauthorized")
