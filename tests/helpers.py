"""Small helpers for API tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store.tables import Sandbox, User

T = TypeVar("T")


def auth_header(token: str) -> dict[str, str]:
    """Bearer header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


async def sign_up(
    client: httpx.AsyncClient, email: str | None = None, password: str = "correct horse battery"
) -> dict[str, Any]:
    """Create a user through the API; returns the token response."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = await client.post("/api/auth/sign-up", json={"email": email, "password": password, "name": "Test User"})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an error in the one shape, with a request id; returns the error object."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@dataclass
class Owner:
    """A user and one of their sandboxes, inserted directly (no API, no container)."""

    user_id: str
    sandbox_id: str


async def make_owner(sessions: async_sessionmaker[AsyncSession]) -> Owner:
    """Insert a user with a sandbox row (starter tier, js flavor)."""
    async with sessions() as db:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", name="Test user", password_hash=None)
        db.add(user)
        await db.flush()
        slug = f"sb-{uuid.uuid4().hex[:8]}"
        sandbox = Sandbox(
            user_id=user.id, name=slug, slug=slug, repo_name=slug, resource_tier_id="starter", flavor_id="js"
        )
        db.add(sandbox)
        await db.commit()
        return Owner(user.id, sandbox.id)


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
