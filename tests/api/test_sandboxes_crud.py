"""Sandbox rows through the API (no container involved): defaults, validation, ownership, names, quota."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.sandbox import SandboxTransition
from agentpod.store.sandboxes import delete_row
from agentpod.store.tables import ActivityLog, Sandbox, UserPreferences
from api.deps import get_transitions
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
        ["code-server"],  # the default add-on when neither the request nor the preferences choose
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


class RecordingTransitions:
    """Stands in for the sandbox workflow: records every transition asked for, finishes at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, SandboxTransition]] = []

    async def __call__(
        self, sandbox: Sandbox, update: SandboxTransition, *, changed_fields: list[str] | None = None
    ) -> bool:
        self.calls.append((sandbox.id, update))
        return True


@pytest.fixture
def transitions(app: FastAPI) -> RecordingTransitions:
    """Workflow transitions recorded instead of sent to Temporal."""
    recorder = RecordingTransitions()

    async def _recorder() -> RecordingTransitions:
        return recorder

    app.dependency_overrides[get_transitions] = _recorder
    return recorder


def _limits(app: FastAPI, **limits: object) -> None:
    """Run the app with other sandbox limits (the settings the routes read)."""
    ctx = app.state.ctx
    ctx.settings = ctx.settings.model_copy(update=limits)


async def _rows(sessions: async_sessionmaker[AsyncSession], user_id: str) -> list[Sandbox]:
    async with sessions() as db:
        return list((await db.scalars(select(Sandbox).where(Sandbox.user_id == user_id))).all())


async def test_parallel_creates_with_one_name_make_exactly_one_sandbox(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], transitions: RecordingTransitions
) -> None:
    headers, user_id = await _user(client)
    body = {"name": "rt-dup", "repo_name": "r", "auto_start": True}
    responses = await asyncio.gather(*(client.post(BASE, json=body, headers=headers) for _ in range(10)))
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    for response in responses:
        if response is not created[0]:
            assert_error(response, 409, "duplicate_name")
    rows = await _rows(sessions, user_id)
    assert [(row.id, row.name, row.slug) for row in rows] == [(created[0].json()["id"], "rt-dup", "rt-dup")]
    # Only the winner's container was asked for, and only the winner left an audit row.
    assert transitions.calls == [(rows[0].id, SandboxTransition.START)]
    async with sessions() as db:
        logged = select(func.count()).select_from(ActivityLog).where(ActivityLog.action == "sandbox.create")
        assert await db.scalar(logged) == 1


async def test_names_differing_only_in_case_or_unicode_form_are_the_same_name(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    assert (await client.post(BASE, json={"name": "Café Straße", "repo_name": "c"}, headers=headers)).status_code == 201
    for same in ("CAFÉ STRASSE", "cafe\u0301 straße"):
        assert_error(
            await client.post(BASE, json={"name": same, "repo_name": "c"}, headers=headers), 409, "duplicate_name"
        )


async def test_parallel_renames_into_one_name_leave_one_sandbox_with_it(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    ids = [
        (await client.post(BASE, json={"name": f"n{n}", "repo_name": "r"}, headers=headers)).json()["id"]
        for n in range(4)
    ]
    responses = await asyncio.gather(
        *(client.patch(f"{BASE}/{sandbox_id}", json={"name": "Shared"}, headers=headers) for sandbox_id in ids)
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "duplicate_name")
    names = sorted(row.name for row in await _rows(sessions, user_id))
    assert names.count("Shared") == 1 and len(names) == 4


async def test_parallel_creates_never_exceed_the_quota_and_deleting_frees_a_slot(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    transitions: RecordingTransitions,
) -> None:
    _limits(app, max_sandboxes_per_user=3)
    headers, user_id = await _user(client)
    responses = await asyncio.gather(
        *(client.post(BASE, json={"name": f"q{n}", "repo_name": "r"}, headers=headers) for n in range(10))
    )
    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 7
    refused = [assert_error(r, 409, "sandbox_quota_exceeded") for r in responses if r.status_code == 409]
    assert refused[0]["details"] == {"limit": 3, "count": 3, "resource_tier_id": None}
    assert "3" in refused[0]["message"] and "delete" in refused[0]["message"]
    rows = await _rows(sessions, user_id)
    assert len(rows) == 3
    # Another user has their own quota.
    other, _ = await _user(client)
    assert (await client.post(BASE, json={"name": "q0", "repo_name": "r"}, headers=other)).status_code == 201
    # Deletion ends with the workflow removing the row: from then on the slot is free again.
    async with sessions() as db:
        await delete_row(db, rows[0].id)
        await db.commit()
    assert (await client.post(BASE, json={"name": rows[0].name, "repo_name": "r"}, headers=headers)).status_code == 201
    assert_error(await client.post(BASE, json={"name": "q-more", "repo_name": "r"}, headers=headers), 409)


async def test_tier_limits_cap_creates_and_moves_into_a_tier(
    app: FastAPI, client: httpx.AsyncClient, transitions: RecordingTransitions
) -> None:
    _limits(app, max_sandboxes_per_tier={"power": 1})
    headers, _ = await _user(client)
    power = {"repo_name": "r", "resource_tier_id": "power"}
    responses = await asyncio.gather(
        *(client.post(BASE, json={"name": f"p{n}", **power}, headers=headers) for n in range(5))
    )
    assert sorted(r.status_code for r in responses) == [201] + [409] * 4
    error = next(assert_error(r, 409, "sandbox_quota_exceeded") for r in responses if r.status_code == 409)
    assert error["details"] == {"limit": 1, "count": 1, "resource_tier_id": "power"}
    first = next(r.json() for r in responses if r.status_code == 201)
    small = (await client.post(BASE, json={"name": "small", "repo_name": "r"}, headers=headers)).json()
    move = {"resource_tier_id": "power"}
    assert_error(await client.patch(f"{BASE}/{small['id']}", json=move, headers=headers), 409, "sandbox_quota_exceeded")
    # Moving the power sandbox away frees the tier's slot.
    away = await client.patch(f"{BASE}/{first['id']}", json={"resource_tier_id": "builder"}, headers=headers)
    assert away.status_code == 200, away.text
    moved = await client.patch(f"{BASE}/{small['id']}", json=move, headers=headers)
    assert moved.status_code == 200 and moved.json()["resource_tier_id"] == "power"
