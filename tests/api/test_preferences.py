"""Preferences: defaults, PUT/PATCH/DELETE, ETag and If-Match, sync, history and restore, audit, live push."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.settings import Settings
from agentpod.store import preferences as prefs
from agentpod.store.tables import ActivityLog, ResourceTier, UserPreferences
from agentpod.store.tables.preferences_history import UserPreferencesHistory
from api.deps import get_heartbeat_seconds
from tests.helpers import assert_error, auth_header, sign_up
from tests.notify.servers import STREAM_PATH, Device, preferences_app, serve, serve_process, server_environment

BASE = "/api/users/me/preferences"


@pytest_asyncio.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with the preferences router and a notifier (overrides the conftest ``app``)."""
    app = preferences_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


def _values(body: dict[str, Any]) -> dict[str, Any]:
    return {field: body[field] for field in prefs.FIELDS}


async def _count(sessions: async_sessionmaker[AsyncSession], table: Any, user_id: str) -> int:
    async with sessions() as db:
        return int(await db.scalar(select(func.count()).select_from(table).where(table.user_id == user_id)) or 0)


# --------------------------------------------------------------------------- reads and writes


async def test_first_get_creates_the_defaults_once_even_when_requests_race(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    responses = await asyncio.gather(*(client.get(BASE, headers=headers) for _ in range(8)))
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"1"'
        assert response.json()["settings_version"] == 1
    assert _values(responses[0].json()) == prefs.defaults()
    assert await _count(sessions, UserPreferences, user_id) == 1
    assert await _count(sessions, UserPreferencesHistory, user_id) == 1


async def test_patch_merges_and_put_replaces(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    first = await client.patch(BASE, json={"theme_mode": "dark", "theme_preset": "ocean"}, headers=headers)
    assert (first.status_code, first.headers["etag"]) == (200, '"2"'), first.text
    merged = (await client.patch(BASE, json={"auto_refresh_interval": 60}, headers=headers)).json()
    assert (merged["theme_mode"], merged["theme_preset"], merged["auto_refresh_interval"]) == ("dark", "ocean", 60)
    assert merged["settings_version"] == 3

    body = {"theme_mode": "light", "default_addon_ids": ["vnc", "code-server", "vnc"]}
    replaced = (await client.put(BASE, json=body, headers=headers)).json()
    assert _values(replaced) == {
        **prefs.defaults(),
        "theme_mode": "light",
        "default_addon_ids": ["code-server", "vnc"],  # a set, stored in one order
    }
    assert replaced["settings_version"] == 4

    chosen = await client.patch(
        BASE, json={"default_resource_tier_id": "builder", "default_flavor_id": "python"}, headers=headers
    )
    assert (chosen.json()["default_resource_tier_id"], chosen.json()["default_flavor_id"]) == ("builder", "python")
    # null on a catalog choice means "the catalog's default"; the other choice stays.
    cleared = (await client.patch(BASE, json={"default_resource_tier_id": None}, headers=headers)).json()
    assert (cleared["default_resource_tier_id"], cleared["default_flavor_id"]) == (None, "python")
    assert (await client.get(BASE, headers=headers)).json() == cleared


async def test_a_write_that_changes_nothing_creates_no_version(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    changed = (await client.patch(BASE, json={"theme_mode": "dark"}, headers=headers)).json()
    for method, body in [("PATCH", {"theme_mode": "dark"}), ("PATCH", {}), ("PUT", _values(changed))]:
        response = await client.request(method, BASE, json=body, headers=headers)
        assert (response.status_code, response.headers["etag"]) == (200, '"2"'), (method, body, response.text)
        assert response.json() == changed
    assert await _count(sessions, UserPreferencesHistory, user_id) == 2
    async with sessions() as db:
        actions = (await db.scalars(select(ActivityLog.action).where(ActivityLog.user_id == user_id))).all()
    assert actions.count("preferences.update") == 1


INVALID: list[tuple[str, Any, list[str]]] = [
    ("PATCH", {"theme": "dark"}, ["body", "theme"]),  # a typo is an unknown field, never ignored
    ("PUT", {"settings_version": 7}, ["body", "settings_version"]),  # read-only
    ("PATCH", {"theme_mode": "neon"}, ["body", "theme_mode"]),
    ("PATCH", {"theme_mode": None}, ["body", "theme_mode"]),
    ("PATCH", {"auto_refresh_interval": 4}, ["body", "auto_refresh_interval"]),
    ("PUT", {"auto_refresh_interval": 301}, ["body", "auto_refresh_interval"]),
    ("PATCH", {"auto_refresh_interval": "30"}, ["body", "auto_refresh_interval"]),
    ("PATCH", {"in_app_notifications": "yes"}, ["body", "in_app_notifications"]),
    ("PATCH", {"system_notifications": 1}, ["body", "system_notifications"]),
    ("PATCH", {"theme_preset": "two words"}, ["body", "theme_preset"]),
    ("PATCH", {"theme_preset": "x" * 65}, ["body", "theme_preset"]),
    ("PATCH", {"default_agent_id": ""}, ["body", "default_agent_id"]),
    ("PATCH", {"default_addon_ids": "vnc"}, ["body", "default_addon_ids"]),
    ("PATCH", {"default_addon_ids": ["vnc"] * 17}, ["body", "default_addon_ids"]),
    ("PUT", {"default_resource_tier_id": "no-such-tier"}, ["body", "default_resource_tier_id"]),
    ("PATCH", {"default_flavor_id": "cobol"}, ["body", "default_flavor_id"]),
    ("PATCH", {"default_addon_ids": ["vnc", "gpu-farm"]}, ["body", "default_addon_ids"]),
    ("PATCH", ["theme_mode", "dark"], ["body"]),
]


async def test_invalid_values_and_unknown_fields_are_422_and_change_nothing(client: httpx.AsyncClient) -> None:
    # One database for all cases: setting one up costs far more than the requests.
    headers, _ = await _user(client)
    for method, body, loc in INVALID:
        response = await client.request(method, BASE, json=body, headers=headers)
        error = assert_error(response, 422, "validation_error")
        assert any(detail["loc"][: len(loc)] == loc for detail in error["details"]), (method, body, error)
    after = await client.get(BASE, headers=headers)
    assert after.json()["settings_version"] == 1
    assert _values(after.json()) == prefs.defaults()


async def test_a_stale_if_match_gets_412_with_the_current_state_and_changes_nothing(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    assert (await client.get(BASE, headers=headers)).headers["etag"] == '"1"'
    phone = await client.patch(BASE, json={"theme_mode": "dark"}, headers={**headers, "If-Match": '"1"'})
    assert phone.headers["etag"] == '"2"'

    stale = {**headers, "If-Match": '"1"'}
    tablet = await client.patch(BASE, json={"theme_mode": "light"}, headers=stale)
    error = assert_error(tablet, 412, "precondition_failed")
    assert tablet.headers["etag"] == '"2"'
    assert error["details"]["current"] == phone.json()
    for method, path in [("PUT", BASE), ("DELETE", BASE), ("POST", f"{BASE}/restore/1")]:
        assert_error(await client.request(method, path, json={} if method == "PUT" else None, headers=stale), 412)
    assert (await client.get(BASE, headers=headers)).json() == phone.json()
    assert await _count(sessions, UserPreferencesHistory, user_id) == 2

    for if_match, version in [('W/"2"', 3), ('"1", "3"', 4), ("*", 5)]:
        response = await client.patch(
            BASE, json={"auto_refresh_interval": 100 + version}, headers={**headers, "If-Match": if_match}
        )
        assert response.headers["etag"] == f'"{version}"', (if_match, response.text)
    assert_error(await client.patch(BASE, json={}, headers={**headers, "If-Match": "5"}), 400, "invalid_if_match")


async def test_concurrent_writes_lose_nothing_and_only_one_pinned_write_wins(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    changes: list[dict[str, Any]] = [
        {"theme_mode": "dark"},
        {"theme_preset": "ocean"},
        {"auto_refresh_interval": 45},
        {"in_app_notifications": False},
        {"default_agent_id": "claude-code"},
    ]
    responses = await asyncio.gather(*(client.patch(BASE, json=change, headers=headers) for change in changes))
    assert [r.status_code for r in responses] == [200] * 5
    final = (await client.get(BASE, headers=headers)).json()
    assert final["settings_version"] == 6
    for change in changes:
        assert final.items() >= change.items()
    async with sessions() as db:
        versions = (
            await db.scalars(select(UserPreferencesHistory.version).where(UserPreferencesHistory.user_id == user_id))
        ).all()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]

    pinned = {**headers, "If-Match": '"6"'}
    racing = await asyncio.gather(
        *(client.patch(BASE, json={"theme_preset": f"preset-{n}"}, headers=pinned) for n in range(5))
    )
    assert sorted(r.status_code for r in racing) == [200, 412, 412, 412, 412]
    assert (await client.get(BASE, headers=headers)).json()["settings_version"] == 7


# --------------------------------------------------------------------------- versions, reset, sync


async def test_reset_bumps_the_version_and_sync_says_who_is_behind(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    await client.patch(BASE, json={"theme_mode": "dark"}, headers=headers)
    await client.patch(BASE, json={"auto_refresh_interval": 60}, headers=headers)
    reset = await client.delete(BASE, headers=headers)
    assert (reset.status_code, reset.headers["etag"]) == (200, '"4"')
    assert _values(reset.json()) == prefs.defaults()
    again = await client.delete(BASE, headers=headers)  # a reset is always a new version
    assert again.json()["settings_version"] == 5

    version = await client.get(f"{BASE}/version", headers=headers)
    assert (version.json(), version.headers["etag"]) == ({"settings_version": 5}, '"5"')

    behind = (await client.get(f"{BASE}/sync", params={"version": 3}, headers=headers)).json()
    assert (behind["status"], behind["needs_sync"], behind["client_version"]) == ("behind", True, 3)
    assert behind["preferences"] == again.json()
    current = (await client.get(f"{BASE}/sync", params={"version": 5}, headers=headers)).json()
    assert (current["status"], current["needs_sync"], current["preferences"]) == ("current", False, None)
    # The old reset bug made "ahead" devices think they were in sync: they must adopt the server's state.
    ahead = (await client.get(f"{BASE}/sync", params={"version": 9}, headers=headers)).json()
    assert (ahead["status"], ahead["needs_sync"], ahead["preferences"]["settings_version"]) == ("ahead", True, 5)
    for params in ({}, {"version": -1}, {"version": "x"}):
        assert_error(await client.get(f"{BASE}/sync", params=params, headers=headers), 422, "validation_error")


async def test_history_keeps_the_last_20_versions_and_restore_is_a_new_version(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    for n in range(24):  # versions 2..25, interval 10..33
        await client.patch(BASE, json={"auto_refresh_interval": 10 + n}, headers=headers)
    history = (await client.get(f"{BASE}/history", headers=headers)).json()
    assert (history["settings_version"], history["limit"]) == (25, 20)
    assert [entry["version"] for entry in history["versions"]] == list(range(25, 5, -1))
    newest = history["versions"][0]
    assert (newest["action"], newest["changed_fields"], newest["restored_from"]) == (
        "update",
        ["auto_refresh_interval"],
        None,
    )
    assert newest["preferences"]["auto_refresh_interval"] == 33

    restored = await client.post(f"{BASE}/restore/10", headers=headers)
    assert (restored.status_code, restored.headers["etag"]) == (200, '"26"'), restored.text
    assert restored.json()["auto_refresh_interval"] == 18
    entry = (await client.get(f"{BASE}/history", headers=headers)).json()["versions"][0]
    assert (entry["version"], entry["action"], entry["restored_from"]) == (26, "restore", 10)
    assert await _count(sessions, UserPreferencesHistory, user_id) == 20

    assert_error(await client.post(f"{BASE}/restore/3", headers=headers), 404, "version_not_found")  # trimmed
    assert_error(await client.post(f"{BASE}/restore/99", headers=headers), 404, "version_not_found")
    assert_error(await client.post(f"{BASE}/restore/0", headers=headers), 422, "validation_error")


async def test_a_retired_catalog_choice_blocks_only_its_restore(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, _ = await _user(client)
    await client.patch(BASE, json={"default_resource_tier_id": "builder"}, headers=headers)  # version 2
    async with sessions() as db:
        await db.execute(update(ResourceTier).where(ResourceTier.id == "builder").values(enabled=False))
        await db.commit()
    # Still selected but retired: unrelated edits go through.
    assert (await client.patch(BASE, json={"theme_mode": "dark"}, headers=headers)).status_code == 200
    await client.patch(BASE, json={"default_resource_tier_id": "micro"}, headers=headers)  # version 4
    error = assert_error(await client.post(f"{BASE}/restore/2", headers=headers), 409, "unknown_catalog_item")
    assert error["details"] == {"field": "default_resource_tier_id"}
    assert (await client.get(f"{BASE}/version", headers=headers)).json() == {"settings_version": 4}


async def test_changes_are_audited_with_field_names_only(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    body = {"theme_mode": "dark", "theme_preset": "secret-preset"}
    await client.patch(BASE, json=body, headers={**headers, "User-Agent": "phone/1.0"})
    await client.patch(BASE, json=body, headers=headers)  # no change, no row
    await client.delete(BASE, headers=headers)
    await client.post(f"{BASE}/restore/2", headers=headers)
    async with sessions() as db:
        rows = (
            await db.scalars(
                select(ActivityLog)
                .where(ActivityLog.user_id == user_id, ActivityLog.action == "preferences.update")
                .order_by(ActivityLog.created_at)
            )
        ).all()
    assert [row.metadata_ for row in rows] == [
        {"fields": ["theme_mode", "theme_preset"], "version": 2, "via": "update"},
        {"fields": ["theme_mode", "theme_preset"], "version": 3, "via": "reset"},
        {"fields": ["theme_mode", "theme_preset"], "version": 4, "via": "restore", "restored_from": 2},
    ]
    assert {row.entity_type for row in rows} == {"preferences"}
    assert rows[0].user_agent == "phone/1.0"
    assert "secret-preset" not in json.dumps([row.metadata_ for row in rows])


async def test_every_route_needs_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", BASE),
        ("PATCH", BASE),
        ("PUT", BASE),
        ("DELETE", BASE),
        ("GET", f"{BASE}/version"),
        ("GET", f"{BASE}/sync?version=1"),
        ("GET", f"{BASE}/history"),
        ("POST", f"{BASE}/restore/1"),
        ("GET", STREAM_PATH),
    ]:
        assert_error(await client.request(method, path), 401, "unauthorized")


# --------------------------------------------------------------------------- live push


async def test_a_change_from_one_device_reaches_the_other_devices_streams(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with serve(preferences_app(settings)) as url, httpx.AsyncClient(base_url=url, trust_env=False) as http:
        token = (await sign_up(http))["token"]
        headers = auth_header(token)
        phone, tablet, stranger = Device(url, token), Device(url, token), Device(url, (await sign_up(http))["token"])
        try:
            for device in (phone, tablet, stranger):
                first = await device.start()
                assert (first["settings_version"], first["_id"]) == (1, "1")

            sent = time.monotonic()
            changed = await http.patch(BASE, json={"theme_mode": "dark"}, headers=headers)
            for device in (tablet, phone):
                event = await device.next_event(timeout=1.0)
                assert event["_received"] - sent < 1.0
                assert (event["_id"], {key: event[key] for key in changed.json()}) == ("2", changed.json())

            await http.patch(BASE, json={"theme_mode": "dark"}, headers=headers)  # no change: nothing pushed
            reset = await http.delete(BASE, headers=headers)
            for device in (tablet, phone):
                assert (await device.next_event())["settings_version"] == reset.json()["settings_version"] == 3

            late = Device(url, token)  # connecting later starts from the current state
            assert (await late.start())["settings_version"] == 3
            await late.stop()
            assert stranger.events.empty()
        finally:
            for device in (phone, tablet, stranger):
                await device.stop()


async def test_the_stream_sends_heartbeats_and_ends_when_the_device_signs_out(
    settings: Settings, engine: AsyncEngine
) -> None:
    app = preferences_app(settings)
    app.dependency_overrides[get_heartbeat_seconds] = lambda: 0.2
    async with serve(app) as url, httpx.AsyncClient(base_url=url, trust_env=False) as http:
        headers = auth_header((await sign_up(http))["token"])
        received = ""
        async with asyncio.timeout(10), http.stream("GET", STREAM_PATH, headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            async for text in response.aiter_text():
                received += text
                if received.count(": keep-alive") == 2:
                    assert (await http.post("/api/auth/sign-out", headers=headers)).status_code in (200, 204)
        # The stream ended by itself (the timeout did not fire): a signed-out device gets no more pushes.
        assert received.startswith("retry: 3000\n\nevent: preferences\nid: 1\ndata: {")
        assert received.count(": keep-alive") >= 2 and "event: preferences\nid: 2" not in received


async def test_a_signed_out_device_gets_no_more_pushes_while_another_device_keeps_writing(
    settings: Settings, engine: AsyncEngine
) -> None:
    # The production heartbeat (15 s): device B writing every 2 s never lets device A's stream idle.
    async with serve(preferences_app(settings)) as url, httpx.AsyncClient(base_url=url, trust_env=False) as http:
        email = f"two-devices-{time.monotonic_ns()}@example.com"
        token_a = (await sign_up(http, email))["token"]
        signed_in = await http.post("/api/auth/sign-in", json={"email": email, "password": "correct horse battery"})
        token_b = signed_in.json()["token"]
        device_a, device_b = Device(url, token_a), Device(url, token_b)
        writes = 0

        async def keep_writing() -> None:
            nonlocal writes
            while True:
                theme = ("dark", "light")[writes % 2]
                response = await http.patch(BASE, json={"theme_mode": theme}, headers=auth_header(token_b))
                assert response.status_code == 200, response.text
                writes += 1
                await asyncio.sleep(2)

        writer: asyncio.Task[None] | None = None
        try:
            assert (await device_a.start())["settings_version"] == (await device_b.start())["settings_version"] == 1
            writer = asyncio.create_task(keep_writing())
            assert (await device_a.next_event(timeout=5))["settings_version"] == 2  # A is live
            assert (await device_b.next_event(timeout=5))["settings_version"] == 2

            assert (await http.post("/api/auth/sign-out", headers=auth_header(token_a))).status_code == 204
            await device_a.wait_ended(timeout=5)
            # B keeps writing and keeps receiving; A got nothing after signing out.
            assert (await device_b.next_event(timeout=5))["settings_version"] == 3
            assert writes >= 2 and device_a.events.empty()
        finally:
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            await device_a.stop()
            await device_b.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_api_processes_on_postgres_push_each_others_changes(settings: Settings, engine: AsyncEngine) -> None:
    env = server_environment(settings)
    async with (
        serve_process(env) as url_a,
        serve_process(env) as url_b,
        httpx.AsyncClient(base_url=url_a, trust_env=False) as api_a,
        httpx.AsyncClient(base_url=url_b, trust_env=False) as api_b,
    ):
        token = (await sign_up(api_a))["token"]
        headers = auth_header(token)
        on_a, on_b = Device(url_a, token), Device(url_b, token)
        try:
            assert (await on_a.start())["settings_version"] == (await on_b.start())["settings_version"] == 1

            sent = time.monotonic()
            await api_a.patch(BASE, json={"theme_mode": "dark"}, headers=headers)  # through A ...
            event = await on_b.next_event(timeout=1.0)  # ... pushed by B
            assert (event["settings_version"], event["theme_mode"]) == (2, "dark")
            assert event["_received"] - sent < 1.0
            assert (await on_a.next_event(timeout=1.0))["settings_version"] == 2

            await api_b.patch(BASE, json={"theme_mode": "light"}, headers=headers)  # and the other way round
            assert (await on_a.next_event(timeout=1.0))["theme_mode"] == "light"
            assert (await on_b.next_event(timeout=1.0))["theme_mode"] == "light"
        finally:
            await on_a.stop()
            await on_b.stop()
