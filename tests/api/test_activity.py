"""The audit trail through the API: what is recorded, and the caller's own read side (list, stats, export, entity)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.activity import ActivityEvent
from agentpod.settings import Settings
from agentpod.store.tables import ActivityLog, User
from api.app import create_app
from api.audit import AuditSpec, AuditWriter, declared_actions
from tests.helpers import assert_error, auth_header, sign_up

BASE = "/api/users/me/activity"
SANDBOXES = "/api/v2/sandboxes"
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AgentPod/2.1"


async def settle(app: FastAPI) -> None:
    """Wait until the background writer committed everything queued so far."""
    writer: AuditWriter = app.state.audit_writer
    await writer.drain()


async def _user(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    created = await sign_up(client)
    return auth_header(created["token"]), created["user"]["id"]


async def _seed(
    sessions: async_sessionmaker[AsyncSession], user_id: str | None, rows: list[dict[str, Any]]
) -> list[str]:
    """Insert rows with chosen timestamps (the writer always stamps "now")."""
    async with sessions() as db:
        objects = [ActivityLog(user_id=user_id, **row) for row in rows]
        db.add_all(objects)
        await db.commit()
        return [row.id for row in objects]


# --------------------------------------------------------------------------- what is recorded


async def test_every_state_changing_endpoint_declares_its_audit_action(app: FastAPI) -> None:
    declared = declared_actions(app)
    undeclared = sorted(f"{method} {path}" for (method, path), spec in declared.items() if spec is None)
    assert not undeclared, f"state-changing endpoints without audit(...) or not_audited(...): {undeclared}"
    actions = {key: spec.action for key, spec in declared.items() if isinstance(spec, AuditSpec)}
    expected = {
        ("POST", "/api/auth/sign-up"): "auth.signup",
        ("POST", "/api/auth/sign-in"): "auth.login",
        ("POST", "/api/auth/refresh"): "auth.token_refresh",
        ("POST", "/api/auth/sign-out"): "auth.logout",
        ("POST", "/api/v2/sandboxes"): "sandbox.create",
        ("PATCH", "/api/v2/sandboxes/{sandbox_id}"): "sandbox.update",
        ("POST", "/api/v2/sandboxes/{sandbox_id}/start"): "sandbox.start",
        ("POST", "/api/v2/sandboxes/{sandbox_id}/stop"): "sandbox.stop",
        ("DELETE", "/api/v2/sandboxes/{sandbox_id}"): "sandbox.delete",
    }
    assert {key: actions.get(key) for key in expected} == expected


async def test_auth_and_sandbox_changes_are_recorded_with_entity_ip_and_user_agent(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    password = "correct horse battery"
    ua = {"User-Agent": BROWSER}
    signed_up = (
        await client.post("/api/auth/sign-up", json={"email": email, "password": password, "name": "Ada"}, headers=ua)
    ).json()
    user_id = signed_up["user"]["id"]
    token = (await client.post("/api/auth/sign-in", json={"email": email, "password": password}, headers=ua)).json()[
        "token"
    ]
    token = (await client.post("/api/auth/refresh", headers={**auth_header(token), **ua})).json()["token"]
    headers = {**auth_header(token), **ua}
    sandbox = (
        await client.post("/api/v2/sandboxes", json={"name": "Demo", "repo_name": "demo"}, headers=headers)
    ).json()
    assert (
        await client.patch(f"/api/v2/sandboxes/{sandbox['id']}", json={"name": "Demo 2"}, headers=headers)
    ).is_success
    # Nothing changed: nothing recorded.
    assert (
        await client.patch(f"/api/v2/sandboxes/{sandbox['id']}", json={"name": "Demo 2"}, headers=headers)
    ).is_success

    other = (await client.post("/api/auth/sign-in", json={"email": email, "password": password}, headers=ua)).json()
    assert (await client.post("/api/auth/sign-out", headers={**auth_header(other["token"]), **ua})).status_code == 204
    await settle(app)

    page = (await client.get(BASE, headers=headers)).json()["activities"]
    assert [row["action"] for row in page] == [
        "auth.logout",
        "auth.login",
        "sandbox.update",
        "sandbox.create",
        "auth.token_refresh",
        "auth.login",
        "auth.signup",
    ]
    by_action = {row["action"]: row for row in page}
    assert all(row["ip_address"] == "127.0.0.1" and row["user_agent"] == BROWSER for row in page)
    assert (by_action["auth.login"]["entity_type"], by_action["auth.login"]["entity_id"]) == ("user", user_id)
    assert (by_action["sandbox.update"]["entity_type"], by_action["sandbox.update"]["entity_id"]) == (
        "sandbox",
        sandbox["id"],
    )
    assert by_action["sandbox.update"]["metadata"]["fields"] == ["name"]
    assert by_action["sandbox.create"]["entity_id"] == sandbox["id"]
    # Request bodies never reach the log: no password, no email, anywhere.
    assert password not in str(page) and email not in str(page)


async def test_failed_requests_record_nothing(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    email = f"bob-{uuid.uuid4().hex[:6]}@example.com"
    headers = auth_header((await sign_up(client, email=email))["token"])
    bad = await client.post("/api/auth/sign-in", json={"email": email, "password": "wrong password!"})
    assert bad.status_code == 401
    body = {"name": "Twice", "repo_name": "twice"}
    assert (await client.post("/api/v2/sandboxes", json=body, headers=headers)).status_code == 201
    assert (await client.post("/api/v2/sandboxes", json=body, headers=headers)).status_code == 409
    await settle(app)
    async with sessions() as db:
        user_id = (await db.scalars(select(User.id).where(User.email == email))).one()
        actions = (await db.scalars(select(ActivityLog.action).where(ActivityLog.user_id == user_id))).all()
    assert sorted(actions) == ["auth.signup", "sandbox.create"]


@pytest_asyncio.fixture
async def proxied_app(settings: Settings, app: FastAPI) -> AsyncIterator[FastAPI]:
    """The API behind a trusted reverse proxy on 127.0.0.1 (the in-process client's address)."""
    proxied = create_app(settings.model_copy(update={"trusted_proxies": ["127.0.0.1/32"]}))
    async with proxied.router.lifespan_context(proxied):
        yield proxied


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "no-proxy-configured"])
async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    trusted: bool, app: FastAPI, proxied_app: FastAPI
) -> None:
    target = proxied_app if trusted else app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://testserver") as client:
        headers, _ = await _user(client)
        spoofed = {**headers, "X-Forwarded-For": "198.51.100.23, 203.0.113.9"}
        assert (await client.post("/api/auth/refresh", headers=spoofed)).status_code == 200
        await settle(target)
    async with target.state.ctx.sessions() as db:
        ip = (
            await db.scalars(
                select(ActivityLog.ip_address)
                .where(ActivityLog.action == "auth.token_refresh")
                .order_by(ActivityLog.created_at.desc())
            )
        ).first()
    # Behind the trusted proxy the client is the right-most untrusted hop; otherwise the header is ignored.
    assert ip == ("203.0.113.9" if trusted else "127.0.0.1")


# --------------------------------------------------------------------------- the read side


async def test_list_pages_with_a_keyset_cursor_newest_first_without_gaps_or_repeats(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    base = datetime(2025, 5, 1, tzinfo=UTC)
    # Several rows share a timestamp: the id breaks the tie, so pages never skip or repeat a row.
    stamps = [base, base, base, base + timedelta(seconds=1), base + timedelta(seconds=1), base - timedelta(days=1)]
    seeded = await _seed(sessions, user_id, [{"action": "sandbox.start", "created_at": at} for at in stamps])
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "action": "sandbox.start"}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(BASE, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["activities"]) <= 2
        seen += body["activities"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(row["id"] for row in seen) == sorted(seeded)
    keys = [(row["created_at"], row["id"]) for row in seen]
    assert keys == sorted(keys, reverse=True)


async def test_filters_by_action_entity_type_and_window(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    day = datetime(2025, 3, 10, tzinfo=UTC)
    await _seed(
        sessions,
        user_id,
        [
            {"action": "sandbox.start", "entity_type": "sandbox", "entity_id": "s1", "created_at": day},
            {"action": "sandbox.stop", "entity_type": "sandbox", "entity_id": "s1", "created_at": day + timedelta(1)},
            {"action": "preferences.update", "entity_type": "user", "created_at": day + timedelta(2)},
        ],
    )

    async def actions(**params: Any) -> list[str]:
        response = await client.get(BASE, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [row["action"] for row in response.json()["activities"] if row["action"] != "auth.signup"]

    assert await actions(action="sandbox.stop") == ["sandbox.stop"]
    assert await actions(entity_type="sandbox") == ["sandbox.stop", "sandbox.start"]
    window = {"since": (day + timedelta(1)).isoformat(), "until": (day + timedelta(2)).isoformat()}
    assert await actions(**window) == ["sandbox.stop"]  # since inclusive, until exclusive


BAD_FILTERS: list[tuple[str, dict[str, Any]]] = [
    (BASE, {"action": "Robert'); DROP TABLE"}),
    (BASE, {"action": "nodot"}),
    (BASE, {"entity_type": "Sandbox!"}),
    (BASE, {"since": "2025-01-01T00:00:00"}),  # no time zone: ambiguous
    (BASE, {"since": "yesterday"}),
    (BASE, {"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}),
    (BASE, {"limit": 0}),
    (BASE, {"limit": 101}),
    (BASE, {"acton": "sandbox.start"}),  # a typo is an error, not an ignored filter
    (f"{BASE}/stats", {"until": "2025-01-01"}),
    (f"{BASE}/export", {"format": "xml"}),
    (f"{BASE}/export", {"since": "2025-01-01T00:00:00"}),
    (f"{BASE}/entity/Not-A-Type/x", {}),
    (f"{BASE}/entity/sandbox/x", {"limit": 1000}),
]
# Not base64; base64 of text without a separator; base64 of "2025-01-01T00:00:00|x" (no time zone).
FORGED_CURSORS = ["garbage!", "bm90LWEtY3Vyc29y", "MjAyNS0wMS0wMVQwMDowMDowMHx4"]


async def test_bad_filters_and_cursors_are_4xx_in_the_error_shape(client: httpx.AsyncClient) -> None:
    headers, _ = await _user(client)
    for path, params in BAD_FILTERS:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 422, (path, params, response.text)
        assert_error(response, 422, "validation_error")
    for cursor in FORGED_CURSORS:
        assert_error(await client.get(BASE, params={"cursor": cursor}, headers=headers), 400, "invalid_cursor")


async def test_stats_count_only_the_callers_actions(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    mine, my_id = await _user(client)
    _, their_id = await _user(client)
    now = datetime.now(UTC)
    await _seed(sessions, my_id, [{"action": "sandbox.start", "created_at": now}] * 2)
    await _seed(sessions, their_id, [{"action": "sandbox.start", "created_at": now}] * 5)
    await _seed(sessions, their_id, [{"action": "provider.configure", "created_at": now}])
    await _seed(sessions, None, [{"action": "sandbox.stop", "created_at": now, "anonymized": True}])
    stats = (await client.get(f"{BASE}/stats", headers=mine)).json()
    assert stats["by_action"] == {"auth.signup": 1, "sandbox.start": 2}
    assert stats["total"] == 3
    since = (now + timedelta(hours=1)).isoformat()
    assert (await client.get(f"{BASE}/stats", params={"since": since}, headers=mine)).json()["total"] == 0


TRICKY = [
    'Name, with "quotes", commas',
    "line one\nline two\r\nline three",
    '"starts with a quote',
    "=SUM(A1:A2) ünïcødé ✓",
    "",
]


def _as_text_cell(value: object) -> str:
    """What the CSV export holds for a text value: a formula-looking one with a leading quote."""
    assert isinstance(value, str)
    return f"'{value}" if value.startswith("=") else value


async def test_csv_export_round_trips_every_row_with_commas_quotes_and_newlines(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    await settle(app)  # the sign-up row is written in the background
    base = datetime(2025, 1, 1, tzinfo=UTC)
    # More rows than one export page (1000): the stream must not stop at a page or a cap.
    rows = [
        {
            "action": "chat.message_send",
            "entity_type": "chat_session",
            "entity_id": TRICKY[i % len(TRICKY)],
            "metadata_": {"title": TRICKY[(i + 1) % len(TRICKY)], "n": i},
            "user_agent": TRICKY[(i + 2) % len(TRICKY)],
            "created_at": base + timedelta(seconds=i),
        }
        for i in range(2345)
    ]
    ids = await _seed(sessions, user_id, rows)
    response = await client.get(f"{BASE}/export", params={"format": "csv"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    parsed = list(csv.DictReader(io.StringIO(response.text, newline="")))
    exported = {row["id"]: row for row in parsed if row["action"] == "chat.message_send"}
    assert len(exported) == len(parsed) - 1 == 2345  # + the sign-up row
    for row_id, original in zip(ids, rows, strict=True):
        row = exported[row_id]
        assert row["entity_id"] == _as_text_cell(original["entity_id"])
        assert row["user_agent"] == _as_text_cell(original["user_agent"])
        assert json.loads(row["metadata"]) == original["metadata_"]
        assert datetime.fromisoformat(row["created_at"]) == original["created_at"]


# What OWASP lists as starting a spreadsheet formula: =, +, -, @, tab, carriage return.
HYPERLINK = '=HYPERLINK("http://e","click")'
HEADER_FORMULAS = [HYPERLINK, "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1:A2)"]


async def test_csv_export_neutralizes_spreadsheet_formulas_from_clients(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # The user agent of every request is the client's own text, written to the activity log as sent.
    email, password = f"csv-{uuid.uuid4().hex[:6]}@example.com", "correct horse battery"
    signed_up = await client.post(
        "/api/auth/sign-up",
        json={"email": email, "password": password, "name": "Ada"},
        headers={"User-Agent": HEADER_FORMULAS[0]},
    )
    assert signed_up.status_code == 201
    user_id, headers = signed_up.json()["user"]["id"], auth_header(signed_up.json()["token"])
    for agent in [*HEADER_FORMULAS[1:], BROWSER]:
        signed_in = await client.post(
            "/api/auth/sign-in", json={"email": email, "password": password}, headers={"User-Agent": agent}
        )
        assert signed_in.status_code == 200
    created = await client.post(
        SANDBOXES, json={"name": "=1+2 demo", "repo_name": "demo"}, headers={**headers, "User-Agent": BROWSER}
    )
    assert created.status_code == 201
    await settle(app)
    # A header cannot start with a tab or carry a carriage return: those two are seeded.
    await _seed(
        sessions,
        user_id,
        [
            {
                "action": "chat.message_send",
                "entity_type": "chat_session",
                "entity_id": "\t=1+1",
                "user_agent": "\r=1+1",
                "created_at": datetime.now(UTC),
            }
        ],
    )

    response = await client.get(f"{BASE}/export", params={"format": "csv"}, headers=headers)
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    agents = [row["user_agent"] for row in rows if row["action"] in ("auth.signup", "auth.login")]
    assert sorted(agents) == sorted([*(f"'{agent}" for agent in HEADER_FORMULAS), BROWSER])
    seeded = next(row for row in rows if row["action"] == "chat.message_send")
    assert (seeded["entity_id"], seeded["user_agent"]) == ("'\t=1+1", "'\r=1+1")
    # No cell of the file starts a formula; proper CSV quoting is kept around the quoted one.
    assert not [value for row in rows for value in row.values() if value[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert '"\'=HYPERLINK(""http://e"",""click"")"' in response.text
    # Everything else is exactly what was stored: ids, times, IPs, and metadata (JSON, never neutralized).
    create = next(row for row in rows if row["action"] == "sandbox.create")
    assert create["entity_id"] == created.json()["id"] and create["user_agent"] == BROWSER
    assert json.loads(create["metadata"])["name"] == "=1+2 demo"
    assert {row["ip_address"] for row in rows if row["action"] != "chat.message_send"} == {"127.0.0.1"}
    assert all(datetime.fromisoformat(row["created_at"]) for row in rows)
    # The JSON export is data, not a spreadsheet: it carries the values unchanged.
    exported = (await client.get(f"{BASE}/export", headers=headers)).json()
    assert HYPERLINK in {row["user_agent"] for row in exported}


async def test_json_export_streams_every_row_and_honours_filters(
    app: FastAPI, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers, user_id = await _user(client)
    await settle(app)  # the sign-up row is written in the background
    base = datetime(2025, 1, 1, tzinfo=UTC)
    await _seed(
        sessions, user_id, [{"action": "sandbox.start", "created_at": base + timedelta(seconds=i)} for i in range(1500)]
    )
    response = await client.get(f"{BASE}/export", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert len(response.json()) == 1501
    only = await client.get(f"{BASE}/export", params={"action": "auth.signup", "format": "json"}, headers=headers)
    assert [row["action"] for row in only.json()] == ["auth.signup"]


async def test_another_users_activity_is_never_visible(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    mine, my_id = await _user(client)
    theirs, their_id = await _user(client)
    now = datetime.now(UTC)
    secret = "their-private-entity"
    await _seed(
        sessions,
        their_id,
        [{"action": "sandbox.start", "entity_type": "sandbox", "entity_id": secret, "created_at": now}],
    )
    await _seed(
        sessions,
        my_id,
        [{"action": "sandbox.stop", "entity_type": "sandbox", "entity_id": secret, "created_at": now}],
    )
    listed = (await client.get(BASE, headers=mine)).json()["activities"]
    entity = (await client.get(f"{BASE}/entity/sandbox/{secret}", headers=mine)).json()["activities"]
    exported = (await client.get(f"{BASE}/export", headers=mine)).json()
    csv_text = (await client.get(f"{BASE}/export", params={"format": "csv"}, headers=mine)).text
    stats = (await client.get(f"{BASE}/stats", headers=mine)).json()
    assert [row["action"] for row in entity] == ["sandbox.stop"]
    for rows in (listed, exported):
        assert "sandbox.start" not in [row["action"] for row in rows]
    assert "sandbox.start" not in csv_text and their_id not in csv_text
    assert "sandbox.start" not in stats["by_action"]
    # And the other way round.
    their_entity = (await client.get(f"{BASE}/entity/sandbox/{secret}", headers=theirs)).json()["activities"]
    assert [row["action"] for row in their_entity] == ["sandbox.start"]


async def test_the_activity_api_needs_a_token(client: httpx.AsyncClient) -> None:
    for path in (BASE, f"{BASE}/stats", f"{BASE}/export", f"{BASE}/entity/sandbox/x"):
        assert_error(await client.get(path), 401, "unauthorized")


# --------------------------------------------------------------------------- the background writer


def _event(user_id: str | None, action: str = "sandbox.start", **extra: Any) -> ActivityEvent:
    return ActivityEvent(user_id=user_id, action=action, **extra)


async def _actions(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as db:
        return sorted((await db.scalars(select(ActivityLog.action))).all())


async def test_close_flushes_everything_queued(sessions: async_sessionmaker[AsyncSession]) -> None:
    writer = AuditWriter(sessions, batch_size=7)
    writer.start()
    for i in range(100):
        await writer.record(_event(None, f"test.event_{i:03d}"))
    await writer.close()  # a clean shutdown, right after a burst
    assert await _actions(sessions) == [f"test.event_{i:03d}" for i in range(100)]
    assert writer.direct_writes == 0


async def test_a_full_queue_writes_directly_instead_of_dropping(sessions: async_sessionmaker[AsyncSession]) -> None:
    writer = AuditWriter(sessions, capacity=1)  # never started: the queue never drains
    writer._task = object()  # type: ignore[assignment]  # pretend it runs, so the queue is used
    await writer.record(_event(None, "test.queued"))
    await writer.record(_event(None, "test.overflow"))
    assert writer.direct_writes == 1
    assert await _actions(sessions) == ["test.overflow"]


async def test_events_after_close_are_still_written(sessions: async_sessionmaker[AsyncSession]) -> None:
    writer = AuditWriter(sessions)
    writer.start()
    await writer.close()
    await writer.record(_event(None, "test.late"))
    assert await _actions(sessions) == ["test.late"]


async def test_an_event_for_a_user_deleted_meanwhile_is_kept_anonymized(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    writer = AuditWriter(sessions)
    writer.start()
    await writer.record(_event(None, "test.before"))
    await writer.record(_event(str(uuid.uuid4()), "account.delete", ip_address="203.0.113.1", user_agent="x"))
    await writer.record(_event(None, "test.after"))
    await writer.close()
    async with sessions() as db:
        rows = {row.action: row for row in (await db.scalars(select(ActivityLog))).all()}
    assert set(rows) == {"test.before", "account.delete", "test.after"}
    gone = rows["account.delete"]
    assert (gone.user_id, gone.ip_address, gone.user_agent) == (None, None, None)


async def test_secret_looking_metadata_keys_are_never_stored() -> None:
    from api.audit import AuditEntry

    entry = AuditEntry(
        action="provider.configure",
        metadata={"provider_id": "anthropic", "api_key": "sk-x", "nested": {"refresh_token": "t", "ok": 1}},
    )
    assert entry.event().metadata == {"provider_id": "anthropic", "nested": {"ok": 1}}
