"""Sandbox rows through the API (no container involved): defaults, validation, ownership."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.store.tables import ActivityLog, Sandbox, UserPreferences
from tests.helpers import assert_error, auth_header, sign_up

BASE = "/api/v2/sandboxes"


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def test_create_uses_catalog_defaults_and_logs_activity(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    response = await client.post(BASE, json={"name": "My App", "repo_name": "my-app"}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["slug"], body["status"], body["resource_tier_id"], body["flavor_id"], body["addon_ids"]) == (
        "my-app",
        "created",
        "starter",
        "fullstack",
        [],
    )
    assert set(body) >= {"opencode_url", "acp_gateway_url", "code_server_url", "vnc_url", "error_message"}
    async with sessions() as db:
        actions = (
            await db.scalars(
                select(ActivityLog.action).where(ActivityLog.user_id == user_id, ActivityLog.entity_type == "sandbox")
            )
        ).all()
    assert actions == ["sandbox.create"]

    listed = (await client.get(BASE, headers=headers)).json()["sandboxes"]
    assert [s["id"] for s in listed] == [body["id"]]


async def test_defaults_come_from_preferences(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    async with sessions() as db:
        db.add(
            UserPreferences(
                user_id=user_id,
                default_resource_tier_id="builder",
                default_flavor_id="python",
                default_addon_ids=["vnc", "code-server"],
            )
        )
        await db.commit()
    body = (await client.post(BASE, json={"name": "p", "repo_name": "p"}, headers=headers)).json()
    assert (body["resource_tier_id"], body["flavor_id"], body["addon_ids"]) == (
        "builder",
        "python",
        ["code-server", "vnc"],
    )


async def test_slugs_are_unique_per_user_and_names_are_not_duplicated(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    first = (await client.post(BASE, json={"name": "My App", "repo_name": "a"}, headers=headers)).json()
    second = (await client.post(BASE, json={"name": "my-app!", "repo_name": "b"}, headers=headers)).json()
    assert (first["slug"], second["slug"]) == ("my-app", "my-app-2")
    duplicate = await client.post(BASE, json={"name": "MY APP", "repo_name": "c"}, headers=headers)
    assert_error(duplicate, 409, "duplicate_name")
    # Another user may use the same name and gets the plain slug.
    other, _ = await _user(client)
    assert (await client.post(BASE, json={"name": "My App", "repo_name": "a"}, headers=other)).json()[
        "slug"
    ] == "my-app"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "x", "repo_name": "x", "resource_tier_id": "gigantic"}, 400, "unknown_catalog_item"),
        ({"name": "x", "repo_name": "x", "flavor_id": "cobol"}, 400, "unknown_catalog_item"),
        ({"name": "x", "repo_name": "x", "addon_ids": ["vnc", "teleporter"]}, 400, "unknown_catalog_item"),
        ({"name": "", "repo_name": "x"}, 422, "validation_error"),
        ({"name": "   ", "repo_name": "x"}, 422, "validation_error"),
        ({"name": "x" * 101, "repo_name": "x"}, 422, "validation_error"),
        ({"name": "x", "repo_name": "x", "description": "d" * 2001}, 422, "validation_error"),
        ({"name": "x", "repo_name": "../etc"}, 422, "validation_error"),
        ({"name": "x", "repo_name": "x", "github_url": "javascript:alert(1)"}, 422, "validation_error"),
        ({"name": "bell\x07", "repo_name": "x"}, 422, "validation_error"),
        ({"repo_name": "x"}, 422, "validation_error"),
    ],
)
async def test_invalid_create_is_rejected_and_stores_nothing(
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    body: dict[str, object],
    status: int,
    code: str,
) -> None:
    headers, _ = await _user(client)
    error = assert_error(await client.post(BASE, json=body, headers=headers), status, code)
    if code == "unknown_catalog_item":
        assert error["details"]["field"] in ("resource_tier_id", "flavor_id", "addon_ids")
    async with sessions() as db:
        assert await db.scalar(select(func.count()).select_from(Sandbox)) == 0
        sandbox_rows = select(func.count()).select_from(ActivityLog).where(ActivityLog.entity_type == "sandbox")
        assert await db.scalar(sandbox_rows) == 0


async def test_patch_renames_and_validates(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    created = (await client.post(BASE, json={"name": "a", "repo_name": "a"}, headers=headers)).json()
    await client.post(BASE, json={"name": "b", "repo_name": "b"}, headers=headers)
    url = f"{BASE}/{created['id']}"
    renamed = await client.patch(url, json={"name": "renamed", "description": "hello"}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert_error(await client.patch(url, json={"name": "B"}, headers=headers), 409, "duplicate_name")
    assert_error(await client.patch(url, json={"flavor_id": "cobol"}, headers=headers), 400, "unknown_catalog_item")
    assert_error(await client.patch(url, json={"name": None}, headers=headers), 400, "null_not_allowed")
    assert_error(await client.patch(url, json={"status": "running"}, headers=headers), 422, "validation_error")
    assert (await client.get(url, headers=headers)).json()["name"] == "renamed"


async def test_another_users_sandbox_is_a_404_on_every_route(client: httpx.AsyncClient) -> None:
    owner, _ = await _user(client)
    intruder, _ = await _user(client)
    sandbox = (await client.post(BASE, json={"name": "secret", "repo_name": "s"}, headers=owner)).json()
    url = f"{BASE}/{sandbox['id']}"
    attempts = [
        client.get(url, headers=intruder),
        client.patch(url, json={"name": "pwned"}, headers=intruder),
        client.delete(url, headers=intruder),
        client.post(f"{url}/start", headers=intruder),
        client.post(f"{url}/stop", headers=intruder),
    ]
    for attempt in attempts:
        assert_error(await attempt, 404, "sandbox_not_found")
    assert (await client.get(BASE, headers=intruder)).json()["sandboxes"] == []
    assert (await client.get(url, headers=owner)).json()["name"] == "secret"
    for path in (BASE, url):
        assert_error(await client.get(path), 401)
