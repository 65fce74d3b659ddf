"""Small helpers for API tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


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
