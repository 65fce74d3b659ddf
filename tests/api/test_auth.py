"""Auth as the mobile app uses it: sign-up, sign-in, me, refresh, sign-out, bad tokens."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.security.tokens import token_digest
from agentpod.store.base import utcnow
from agentpod.store.tables import AuthSession, User
from tests.helpers import assert_error, auth_header, sign_up


async def test_sign_up_sign_in_me_sign_out(client: httpx.AsyncClient) -> None:
    created = await sign_up(client, "Ada@Example.com")
    assert created["user"]["email"] == "ada@example.com"
    assert created["token"] and created["expires_at"]

    signed_in = await client.post(
        "/api/auth/sign-in", json={"email": "ADA@example.COM", "password": "correct horse battery"}
    )
    assert signed_in.status_code == 200
    token = signed_in.json()["token"]
    assert token != created["token"]

    me = await client.get("/api/users/me", headers=auth_header(token))
    assert me.status_code == 200
    assert me.json()["id"] == created["user"]["id"]
    assert "password_hash" not in me.json()

    out = await client.post("/api/auth/sign-out", headers=auth_header(token))
    assert out.status_code == 204
    assert_error(await client.get("/api/users/me", headers=auth_header(token)), 401, "unauthorized")
    # The other device's token is untouched by this sign-out.
    assert (await client.get("/api/users/me", headers=auth_header(created["token"]))).status_code == 200


async def test_duplicate_email_is_case_insensitive(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await sign_up(client, "dup@example.com")
    response = await client.post(
        "/api/auth/sign-up", json={"email": "DUP@example.com", "password": "another password", "name": "X"}
    )
    assert_error(response, 409, "email_taken")
    async with sessions() as db:
        assert await db.scalar(select(func.count()).select_from(User)) == 1


async def test_wrong_password_and_unknown_email_get_the_same_401(client: httpx.AsyncClient) -> None:
    await sign_up(client, "known@example.com")
    wrong = await client.post("/api/auth/sign-in", json={"email": "known@example.com", "password": "nope-nope"})
    unknown = await client.post("/api/auth/sign-in", json={"email": "ghost@example.com", "password": "nope-nope"})
    first, second = assert_error(wrong, 401), assert_error(unknown, 401)
    assert (first["code"], first["message"]) == (second["code"], second["message"])


async def test_expired_token_is_rejected(client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]) -> None:
    token = (await sign_up(client))["token"]
    async with sessions() as db:
        await db.execute(
            update(AuthSession)
            .where(AuthSession.token_hash == token_digest(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()
    assert_error(await client.get("/api/users/me", headers=auth_header(token)), 401)


async def test_refresh_issues_a_new_token_and_revokes_the_old(client: httpx.AsyncClient) -> None:
    old = (await sign_up(client))["token"]
    refreshed = await client.post("/api/auth/refresh", headers=auth_header(old))
    assert refreshed.status_code == 200
    new = refreshed.json()["token"]
    assert (await client.get("/api/users/me", headers=auth_header(new))).status_code == 200
    assert_error(await client.get("/api/users/me", headers=auth_header(old)), 401)
    assert_error(await client.post("/api/auth/refresh", headers=auth_header(old)), 401)


async def test_tokens_are_stored_only_as_hashes(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    token = (await sign_up(client))["token"]
    async with sessions() as db:
        stored = (await db.scalars(select(AuthSession.token_hash))).all()
        password_hashes = (await db.scalars(select(User.password_hash))).all()
    assert token not in stored and token_digest(token) in stored
    assert all(h and h.startswith("$argon2id$") for h in password_hashes)


async def test_locked_account_cannot_sign_in_or_use_tokens(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    created = await sign_up(client, "locked@example.com")
    async with sessions() as db:
        await db.execute(update(User).values(locked_at=utcnow()))
        await db.commit()
    assert_error(await client.get("/api/users/me", headers=auth_header(created["token"])), 401)
    response = await client.post(
        "/api/auth/sign-in", json={"email": "locked@example.com", "password": "correct horse battery"}
    )
    assert_error(response, 403, "account_locked")


async def test_missing_or_garbage_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/me")
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(await client.get("/api/users/me", headers=auth_header("apt_not-a-real-token")), 401)
    assert_error(await client.get("/api/users/me", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)
