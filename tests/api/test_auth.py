"""Auth as the mobile app uses it: sign-up, sign-in, me, refresh, sign-out, bad tokens."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.security import passwords
from agentpod.security.tokens import token_digest
from agentpod.settings import Settings
from agentpod.store.base import utcnow
from agentpod.store.tables import AuthSession, User
from api.app import create_app
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


# --------------------------------------------------------------------------- argon2 off the event loop


class RecordingHasher:
    """The real argon2 hasher, noting which thread ran each call and how many ran at once."""

    def __init__(self, real: PasswordHasher, pause: float = 0.0) -> None:
        self.real, self.pause = real, pause
        self.calls: list[tuple[str, int]] = []  # (hash | verify, thread id)
        self.niceness: list[int] = []  # of the thread of each call (Linux: niceness is per thread)
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def _enter(self, kind: str) -> None:
        with self._lock:
            self.calls.append((kind, threading.get_ident()))
            if sys.platform == "linux":
                self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        # Holds the thread a moment so that calls arriving together overlap if they can.
        time.sleep(self.pause)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def hash(self, password: str) -> str:
        self._enter("hash")
        try:
            return self.real.hash(password)
        finally:
            self._leave()

    def verify(self, hash: str, password: str) -> bool:
        self._enter("verify")
        try:
            return self.real.verify(hash, password)
        finally:
            self._leave()


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> RecordingHasher:
    recording = RecordingHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", recording)
    return recording


async def test_passwords_are_hashed_and_checked_off_the_event_loop(
    client: httpx.AsyncClient, hasher: RecordingHasher
) -> None:
    # On the loop, every sign-in froze all other requests of the process for its ~50 ms of argon2.
    loop_thread = threading.get_ident()
    await sign_up(client, "pool@example.com")
    right = await client.post(
        "/api/auth/sign-in", json={"email": "pool@example.com", "password": "correct horse battery"}
    )
    assert right.status_code == 200
    wrong = await client.post("/api/auth/sign-in", json={"email": "pool@example.com", "password": "wrong-wrong"})
    unknown = await client.post("/api/auth/sign-in", json={"email": "ghost@example.com", "password": "wrong-wrong"})
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(unknown, 401, "invalid_credentials")
    # An unknown email costs a verification too (against a dummy hash): its timing matches a wrong password.
    assert [kind for kind, _ in hasher.calls] == ["hash", "verify", "verify", "verify"]
    assert loop_thread not in {thread for _, thread in hasher.calls}
    if sys.platform == "linux":  # the lowest CPU priority: the loop's requests go first when both want a core
        assert set(hasher.niceness) == {19}


@pytest_asyncio.fixture
async def two_worker_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with a password pool of two threads."""
    app = create_app(settings.model_copy(update={"password_workers": 2}))
    async with app.router.lifespan_context(app):
        yield app


async def test_concurrent_sign_ins_share_a_pool_of_the_configured_size(
    two_worker_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = RecordingHasher(passwords._hasher, pause=0.05)
    monkeypatch.setattr(passwords, "_hasher", hasher)
    transport = httpx.ASGITransport(app=two_worker_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await sign_up(client, "burst@example.com")
        burst = await asyncio.gather(
            *(
                client.post("/api/auth/sign-in", json={"email": "burst@example.com", "password": f"guess-{n:04d}"})
                for n in range(8)
            )
        )
        assert [response.status_code for response in burst] == [401] * 8
        # Excess sign-ins waited for a thread: two at a time, in two threads, none on the loop.
        assert hasher.most_at_once == 2
        assert len({thread for _, thread in hasher.calls}) == 2
        right = await client.post(
            "/api/auth/sign-in", json={"email": "burst@example.com", "password": "correct horse battery"}
        )
        assert right.status_code == 200


class BlockingVerifier(RecordingHasher):
    """Hashes for real; every verification waits for ``release`` and then fails, using no argon2 memory."""

    def __init__(self, real: PasswordHasher) -> None:
        super().__init__(real)
        self.release = threading.Event()

    def verify(self, hash: str, password: str) -> bool:
        self._enter("verify")
        try:
            self.release.wait(60)
            raise VerifyMismatchError
        finally:
            self._leave()


@pytest_asyncio.fixture
async def wide_pool_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with more password threads than its database pool has connections."""
    app = create_app(settings.model_copy(update={"password_workers": 32}))
    async with app.router.lifespan_context(app):
        yield app


async def test_sign_ins_waiting_on_a_password_check_hold_no_database_connection(
    wide_pool_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst of sign-ins whose checks are still running used to hold one pooled connection each, so
    # every other request waited for a connection until the burst was over (SQLite pool 15, PostgreSQL 30).
    hasher = BlockingVerifier(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", hasher)
    transport = httpx.ASGITransport(app=wide_pool_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        token = (await sign_up(client, "busy@example.com"))["token"]
        burst = [
            asyncio.create_task(
                client.post("/api/auth/sign-in", json={"email": "busy@example.com", "password": f"guess-{n:04d}"})
            )
            for n in range(32)
        ]
        try:
            async with asyncio.timeout(20):  # a deadlock guard, not a speed target
                while hasher.running < 32:  # all 32 read the user and are in their password check
                    assert not any(task.done() for task in burst)
                    await asyncio.sleep(0.01)
            me = await asyncio.wait_for(client.get("/api/users/me", headers=auth_header(token)), 20)
            assert me.status_code == 200
        finally:
            hasher.release.set()
            answers = await asyncio.gather(*burst)
        assert [answer.status_code for answer in answers] == [401] * 32
