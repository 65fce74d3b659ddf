"""Bad bodies get a 4xx in the error shape and store nothing."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store.tables import User
from tests.helpers import assert_error

GOOD = {"email": "new@example.com", "password": "long enough password", "name": "New"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "new@example.com", "password": "long enough password"}, 422),  # missing name
        ({**GOOD, "email": "not-an-email"}, 422),
        ({**GOOD, "password": "short"}, 422),
        ({**GOOD, "name": ""}, 422),
        ({**GOOD, "name": 42}, 422),  # wrong type
        ({**GOOD, "password": ["a", "list"]}, 422),
        ({**GOOD, "is_admin": True}, 422),  # unknown field
        ({**GOOD, "name": "x" * 1_000_000}, 422),  # a 1 MB string: over the field limit
        ({**GOOD, "name": "x" * 1_100_000}, 413),  # over the 1 MiB body limit
        ({**GOOD, "name": "x" * 500_000}, 422),  # under the body limit, over the field limit
        ({**GOOD, "name": "nul\u0000byte"}, 422),  # PostgreSQL text cannot hold NUL: refused everywhere
        ({**GOOD, "name": "\u202e RTL \U0001f600 \u00e9\u0301"}, 201),  # odd unicode is data, not an error
    ],
)
async def test_bad_sign_up_bodies(
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    body: dict[str, object],
    status: int,
) -> None:
    response = await client.post("/api/auth/sign-up", json=body)
    async with sessions() as db:
        stored = await db.scalar(select(func.count()).select_from(User))
    if status == 201:
        assert response.status_code == 201
        assert response.json()["user"]["name"] == body["name"]
        assert stored == 1
        return
    error = assert_error(response, status)
    assert stored == 0
    # Validation errors say where, and never echo the submitted values back.
    assert "long enough password" not in response.text
    if status == 422:
        assert error["code"] == "validation_error" and error["details"]


async def test_malformed_json_and_wrong_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/sign-up", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "validation_error")
    response = await client.post("/api/auth/sign-up", content=b"email=a", headers={"content-type": "text/plain"})
    assert_error(response, 422)


async def test_unknown_route_and_wrong_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/nope"), 404, "not_found")
    assert_error(await client.get("/api/auth/sign-in"), 405, "method_not_allowed")


async def test_request_id_is_echoed_when_safe_and_replaced_when_not(client: httpx.AsyncClient) -> None:
    kept = await client.get("/api/nope", headers={"X-Request-ID": "phone-42.abc"})
    assert kept.headers["x-request-id"] == "phone-42.abc"
    assert kept.json()["error"]["request_id"] == "phone-42.abc"
    replaced = await client.get("/api/nope", headers={"X-Request-ID": "bad id\nwith newline"})
    assert replaced.headers["x-request-id"] != "bad id\nwith newline"
    assert len(replaced.headers["x-request-id"]) == 32
