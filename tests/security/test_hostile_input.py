"""Oversized, malformed and unusual input on every route: the one error shape, and nothing stored changes.

``tests/api/test_bad_input.py`` covers sign-up bodies (types, limits, NUL, one unicode name), malformed
JSON, unknown routes and request ids. This file goes wider, with the routes taken from the app so new
ones are included: bodies over the size limit (declared and streamed), deep nesting, invalid UTF-8,
NUL characters in paths and query strings, very long query and path values, and text from every
corner of Unicode that must come back exactly as sent.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers import assert_error
from tests.security.conftest import (
    HEALTH,
    Endpoint,
    Reply,
    Seeded,
    api_endpoints,
    asgi_call,
    build_request,
    error_shape_problem,
    fresh_token,
    seed_account,
    server_error_problem,
    snapshot,
)

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

# Text that must survive storage and every read unchanged (no normalization, no stripping inside).
UNICODE_SAMPLES = {
    "emoji": "rocket 🚀 and 😀",
    "astral math": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    "arabic (RTL)": "مرحبا بالعالم",
    "hebrew (RTL)": "שלום עולם",
    "combining (NFD)": "Cafe\u0301 nai\u0308ve",
    "precomposed (NFC)": "Café naïve",
    "hangul jamo": "\u1112\u1161\u11ab",
    "cjk": "沙盒 サンドボックス",
}
# Invisible format characters: fine in free text, refused in sandbox names (which must be printable).
FORMAT_SAMPLES = {
    "zwj emoji": "dev 👩🏽\u200d💻",
    "rtl override": "abc\u202edcba",
    "bom and zero width": "\ufeffzero\u200bwidth",
}


def _url(endpoint: Endpoint, owner: Seeded, override: str | None = None) -> str:
    values = {
        "sandbox_id": owner.running_sandbox_id,
        "session_id": owner.chat_session_id,
        "file_id": owner.file_id,
        "provider_id": owner.provider_id,
        "version": str(owner.preferences_version),
        "entity_type": "sandbox",
        "entity_id": owner.sandbox_id,
        "deletion_id": owner.deletion_id,
    }
    url = endpoint.path
    for param in endpoint.path_params:
        url = url.replace(f"{{{param}}}", override if override is not None else values.get(param, "x"))
    return url


def _problems(reply: Reply, key: str, note: str = "", *, expect: set[int] | None = None) -> list[str]:
    """What is wrong with ``reply`` to ``key`` ("METHOD /path"); ``note`` says what was sent."""
    label = f"{key} {note}".strip()
    found: list[str] = []
    if expect is not None and reply.status not in expect:
        found.append(f"{label}: {reply.status}, expected {sorted(expect)}: {reply.text[:200]!r}")
    if server := server_error_problem(reply, key):
        found.append(f"{label}: {server}")
    if reply.status >= 400 and not (key == HEALTH and not server) and (shape := error_shape_problem(reply)):
        found.append(f"{label}: {shape}")
    return found


async def _unchanged(
    sessions: async_sessionmaker[AsyncSession],
    owner: Seeded,
    before: dict[str, Any],
    ignore: frozenset[str] = frozenset(),
) -> None:
    after = await snapshot(sessions, owner.user_id)
    changed = sorted(t for t in (set(before) | set(after)) - ignore if before.get(t) != after.get(t))
    assert not changed, f"rejected input changed stored rows in {changed}"


# --------------------------------------------------------------------------- size


async def test_bodies_over_the_limit_are_413_on_every_mutating_route(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await seed_account(app, sessions, label="big")
    before = await snapshot(sessions, owner.user_id)
    limit = app.state.ctx.settings.max_request_bytes
    padding = "x" * (limit + 1 - len('{"name": ""}'))
    oversized = json.dumps({"name": padding}).encode()
    assert len(oversized) == limit + 1
    problems: list[str] = []
    routes = [endpoint for endpoint in api_endpoints(app) if endpoint.method in MUTATING]

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 64 * 1024):  # no Content-Length: chunked, counted as it arrives
            yield oversized[start : start + 64 * 1024]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for endpoint in routes:
            url = _url(endpoint, owner)
            headers = {**owner.headers, "content-type": "application/json"}
            declared = await asgi_call(app, build_request(endpoint.method, url, headers=headers, content=oversized))
            problems += _problems(declared, endpoint.key, "(declared)", expect={413})
            response = await client.request(endpoint.method, url, headers=headers, content=streamed())
            chunked = Reply(response.status_code, dict(response.headers), response.content)
            problems += _problems(chunked, endpoint.key, "(chunked)", expect={413})
            if declared.status == 413:
                assert declared.json()["error"]["code"] == "payload_too_large"
    assert not problems, "\n".join(problems)
    await _unchanged(sessions, owner, before)
    # Exactly at the limit is still read (and then judged by the schema, not the size).
    at_limit = json.dumps({"type": "agent", "name": "big", "content": "x" * (limit - 100)}).encode()
    at_limit = at_limit[:-2] + b" " * (limit - len(at_limit)) + at_limit[-2:]
    assert len(at_limit) == limit
    reply = await asgi_call(
        app,
        build_request(
            "POST",
            "/api/users/me/opencode/files",
            headers={**owner.headers, "content-type": "application/json"},
            content=at_limit,
        ),
    )
    assert reply.status == 422 and reply.json()["error"]["code"] == "validation_error", reply.text[:300]


# --------------------------------------------------------------------------- structure and encoding


async def test_deeply_nested_json_is_refused_and_stores_nothing(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """~1,000 levels parse but used to overflow the stack in validation: a 500 on every JSON route."""
    owner = await seed_account(app, sessions, label="deep")
    before = await snapshot(sessions, owner.user_id)
    problems: list[str] = []
    for depth in (33, 200, 900, 990, 5_000, 100_000):
        objects = '{"a":' * depth + "1" + "}" * depth
        arrays = "[" * depth + "]" * depth
        bodies = {
            "PUT /api/users/me/opencode/config": [
                f'{{"settings": {{"n": {objects}}}}}',
                f'{{"settings": {{"n": {arrays}}}}}',
            ],
            "POST /api/v2/sandboxes": [f'{{"name": {arrays}, "repo_name": "r"}}'],
            "PATCH /api/users/me/preferences": [f'{{"default_addon_ids": {arrays}}}'],
            "POST /api/auth/sign-up": [objects, arrays],
            "PUT /api/users/me/providers/{provider_id}": [f'{{"api_key": {objects}}}'],
        }
        for key, payloads in bodies.items():
            method, path = key.split(" ", 1)
            url = path.replace("{provider_id}", "openai")
            for payload in payloads:
                headers = {**owner.headers, "content-type": "application/json"}
                reply = await asgi_call(app, build_request(method, url, headers=headers, content=payload.encode()))
                problems += _problems(reply, key, f"nested {depth} deep", expect={400, 422})
    assert not problems, "\n".join(problems)
    await _unchanged(sessions, owner, before)


async def test_settings_as_deep_as_allowed_are_stored_and_read_back(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await seed_account(app, sessions, label="deepok")
    nested: Any = "leaf"
    for _ in range(31):
        nested = {"n": nested}
    settings = {"experimental": nested}  # 32 levels with the outer object
    headers = owner.headers
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        saved = await client.put("/api/users/me/opencode/config", json={"settings": settings}, headers=headers)
        assert saved.status_code == 200, saved.text
        assert (await client.get("/api/users/me/opencode/config", headers=headers)).json()["settings"] == settings
        assert (await client.get("/api/account/data-export", headers=headers)).status_code == 200


async def test_invalid_utf8_anywhere_is_a_clean_4xx(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> None:
    owner = await seed_account(app, sessions, label="utf8")
    before = await snapshot(sessions, owner.user_id)
    json_type = {"content-type": "application/json"}
    requests = [
        ("POST", "/api/v2/sandboxes", b'{"name": "caf\xe9", "repo_name": "r"}', json_type),
        ("POST", "/api/v2/sandboxes", b"\xff\xfe\x00\x00", json_type),
        ("PUT", "/api/users/me/opencode/config", b'{"settings": {"\xc3\x28": 1}}', json_type),
        ("PUT", "/api/users/me/providers/openai", b'{"api_key": "sk-\xed\xa0\x80"}', json_type),  # a surrogate
        (
            "POST",
            "/api/auth/sign-in",
            b'{"email": "a@example.com", "password": "\x80\x81\x82\x83\x84\x85\x86\x87"}',
            {},
        ),
        ("PATCH", "/api/users/me/preferences", b'{"theme_mode": "\xf0\x28\x8c\x28"}', json_type),
        ("GET", f"/api/v2/sandboxes/{owner.running_sandbox_id}/chat/sessions?cursor=%FF%FE", b"", {}),
        ("GET", "/api/users/me/activity?action=%C3%28&entity_type=%FF", b"", {}),
        ("GET", "/api/v2/sandboxes/%FF%FE%FD", b"", {}),
        ("GET", "/api/users/me/opencode/files/%C3%28", b"", {}),
    ]
    problems: list[str] = []
    for method, url, content, extra in requests:
        reply = await asgi_call(
            app, build_request(method, url, headers={**owner.headers, **extra}, content=content or None)
        )
        problems += _problems(reply, f"{method} {url.split('?')[0]}", "with invalid UTF-8", expect={400, 401, 404, 422})
    # A token that is not even text.
    raw = httpx.Request("GET", "http://testserver/api/users/me", headers=[(b"Authorization", b"Bearer \xff\xfe\x80")])
    problems += _problems(await asgi_call(app, raw), "GET /api/users/me", "with a binary token", expect={401})
    assert not problems, "\n".join(problems)
    await _unchanged(sessions, owner, before)


# --------------------------------------------------------------------------- NUL


async def test_nul_in_any_path_parameter_or_query_is_refused(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """PostgreSQL cannot compare text with NUL: this was a 500 there on every route taking an id."""
    owner = await seed_account(app, sessions, label="nul")
    before = await snapshot(sessions, owner.user_id)
    problems: list[str] = []
    with_params = [endpoint for endpoint in api_endpoints(app) if endpoint.path_params]
    for endpoint in with_params:
        url = _url(endpoint, owner, override="abc%00def")
        body: dict[str, Any] | None = {} if endpoint.method in MUTATING else None
        reply = await asgi_call(app, build_request(endpoint.method, url, headers=owner.headers, json_body=body))
        problems += _problems(reply, endpoint.key, "with NUL in the path", expect={400})
    for endpoint in api_endpoints(app):
        url = _url(endpoint, owner) + "?cursor=a%00b&last_event_id=%00&action=x%00"
        body = {} if endpoint.method in MUTATING else None
        reply = await asgi_call(app, build_request(endpoint.method, url, headers=owner.headers, json_body=body))
        problems += _problems(reply, endpoint.key, "with NUL in the query", expect={400})
    assert not problems, "\n".join(problems)
    assert len(with_params) >= 20
    await _unchanged(sessions, owner, before)


NUL_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v2/sandboxes", {"name": "a\u0000b", "repo_name": "r"}),
    ("POST", "/api/v2/sandboxes", {"name": "ok", "repo_name": "r", "description": "\u0000"}),
    ("PATCH", "/api/v2/sandboxes/{sandbox_id}", {"description": "before\u0000after"}),
    ("PUT", "/api/users/me/providers/{provider_id}", {"api_key": "sk-\u0000-key"}),
    ("PUT", "/api/users/me/opencode/config", {"settings": {"k\u0000": 1}}),
    ("PUT", "/api/users/me/opencode/config", {"settings": {}, "agents_md": "\u0000"}),
    ("POST", "/api/users/me/opencode/files", {"type": "agent", "name": "n", "content": "\u0000"}),
    ("PUT", "/api/users/me/opencode/files/{file_id}", {"name": "n", "content": "a\u0000"}),
    ("PATCH", "/api/users/me/preferences", {"theme_preset": "a\u0000"}),
    ("POST", "/api/auth/sign-in", {"email": "a@example.com", "password": "\u0000" * 8}),
    ("DELETE", "/api/account", {"confirmation": "DELETE MY ACCOUNT\u0000"}),
]


async def test_nul_in_any_body_field_is_a_422(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> None:
    owner = await seed_account(app, sessions, label="nulbody")
    before = await snapshot(sessions, owner.user_id)
    problems: list[str] = []
    for method, path, body in NUL_BODIES:
        url = path.format(sandbox_id=owner.sandbox_id, provider_id="openai", file_id=owner.file_id)
        reply = await asgi_call(app, build_request(method, url, headers=owner.headers, json_body=body))
        problems += _problems(reply, f"{method} {path}", f"with NUL in {sorted(body)}", expect={422})
        if reply.status == 422 and reply.json()["error"]["code"] != "validation_error":
            problems.append(f"{method} {path}: code {reply.json()['error']['code']}")
    assert not problems, "\n".join(problems)
    await _unchanged(sessions, owner, before)


def _forged(payload: dict[str, Any] | bytes) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_cursors_and_out_of_range_times_are_a_clean_4xx(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Cursors are opaque but client-held: NUL, lone surrogates and dates UTC cannot hold were 500s."""
    owner = await seed_account(app, sessions, label="forged")
    before = await snapshot(sessions, owner.user_id)
    chat = f"/api/v2/sandboxes/{owner.running_sandbox_id}/chat"
    messages = f"{chat}/sessions/{owner.chat_session_id}/messages"
    urls = [
        f"{chat}/sessions?cursor=" + _forged({"k": "s", "l": None, "c": None, "i": "a\u0000b"}),
        f"{chat}/sessions?cursor=" + _forged({"k": "s", "l": 1, "c": 1, "i": "\ud800"}),
        f"{chat}/sessions?cursor=" + _forged({"k": "s", "l": 10**30, "c": -(10**30), "i": "x"}),
        f"{messages}?before=" + _forged({"k": "m", "t": 1, "x": "a\u0000b"}),
        f"{messages}?after=" + _forged({"k": "m", "t": None, "x": "\udfff"}),
        f"{messages}?after=" + _forged({"k": "s", "l": 1, "c": 1, "i": "x"}),  # another list's cursor
        "/api/users/me/activity?cursor=" + _forged(b"0001-01-01T00:00:00+01:00|abc"),
        "/api/users/me/activity?cursor=" + _forged(b"9999-12-31T23:59:59-01:00|abc"),
        "/api/users/me/activity?cursor=" + _forged(b"2020-01-01T00:00:00+00:00|a\x00b"),
        "/api/users/me/activity?until=0001-01-01T00:00:00%2B01:00",
        "/api/users/me/activity/stats?since=9999-12-31T23:59:59-01:00",
        "/api/users/me/activity/export?since=0001-01-01T00:30:00%2B00:45&format=csv",
    ]
    problems: list[str] = []
    for url in urls:
        reply = await asgi_call(app, build_request("GET", url, headers=owner.headers))
        problems += _problems(reply, f"GET {url.split('?')[0]}", url.split("?")[1][:60], expect={400, 422})
    assert not problems, "\n".join(problems)
    await _unchanged(sessions, owner, before)


# --------------------------------------------------------------------------- length


async def test_very_long_query_and_path_values_never_break_a_route(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await seed_account(app, sessions, label="long")
    before = await snapshot(sessions, owner.user_id)
    document = app.openapi()
    long_value = "z" * 6_000  # per query parameter (a whole URL stays under 64 KiB)
    long_path = "z" * 32_000
    problems: list[str] = []
    for endpoint in api_endpoints(app):
        headers = {"Authorization": f"Bearer {await fresh_token(sessions, owner.user_id)}"}
        body: dict[str, Any] | None = {} if endpoint.method in MUTATING else None
        if endpoint.method == "GET":  # reads only: a write with an ignored long parameter would just succeed
            operation = document["paths"][endpoint.path][endpoint.method.lower()]
            names = [param["name"] for param in operation.get("parameters", []) if param.get("in") == "query"]
            params = dict.fromkeys([*names, "unknown_parameter"], long_value)
            url = _url(endpoint, owner)
            reply = await asgi_call(app, build_request("GET", url, headers=headers, params=params))
            problems += _problems(reply, endpoint.key, "with 6 KB query values")
        if endpoint.path_params:
            url = _url(endpoint, owner, override=long_path)
            reply = await asgi_call(app, build_request(endpoint.method, url, headers=headers, json_body=body))
            problems += _problems(reply, endpoint.key, "with a 32 KB path value", expect={400, 404, 422})
    assert not problems, "\n".join(problems)
    # Reads leave an audit entry (the export) and the test's own tokens; nothing else moves.
    await _unchanged(sessions, owner, before, ignore=frozenset({"activity_log", "session"}))


# --------------------------------------------------------------------------- unicode round trips


async def test_unicode_text_round_trips_unchanged(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> None:
    samples = {**UNICODE_SAMPLES, **FORMAT_SAMPLES}
    name = " · ".join(UNICODE_SAMPLES.values())
    assert len(name) <= 200
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        email = f"unicode-{uuid.uuid4().hex[:8]}@example.com"
        created = await client.post(
            "/api/auth/sign-up", json={"email": email, "password": "long enough password", "name": name}
        )
        assert created.status_code == 201, created.text
        headers = {"Authorization": f"Bearer {created.json()['token']}"}
        assert (await client.get("/api/users/me", headers=headers)).json()["name"] == name
        assert (await client.get("/api/account", headers=headers)).json()["user"]["name"] == name

        sandboxes: dict[str, str] = {}
        for label, text in UNICODE_SAMPLES.items():
            response = await client.post(
                "/api/v2/sandboxes",
                json={"name": text, "repo_name": f"r{len(sandboxes)}", "description": "".join(samples.values())},
                headers=headers,
            )
            if label == "precomposed (NFC)":
                # Stored as typed, but the NFC and NFD spellings of one name are one name: the second is
                # refused, not a look-alike sandbox beside the first.
                assert_error(response, 409, "duplicate_name")
                continue
            assert response.status_code == 201, (label, response.text)
            body = response.json()
            assert (body["name"], body["description"]) == (text, "".join(samples.values())), label
            sandboxes[body["id"]] = text
        assert UNICODE_SAMPLES["combining (NFD)"] in sandboxes.values()  # kept exactly as typed
        listed = (await client.get("/api/v2/sandboxes", headers=headers)).json()["sandboxes"]
        assert {row["id"]: row["name"] for row in listed} == sandboxes
        first = next(iter(sandboxes))
        patched = await client.patch(f"/api/v2/sandboxes/{first}", json={"name": "🚀 renamed ✓"}, headers=headers)
        assert patched.status_code == 200 and patched.json()["name"] == "🚀 renamed ✓"
        for label, text in FORMAT_SAMPLES.items():
            refused = await client.post("/api/v2/sandboxes", json={"name": text, "repo_name": "fmt"}, headers=headers)
            assert refused.status_code == 422, (label, refused.text)

        content = "\n".join(f"{label}: {text}" for label, text in samples.items())
        file = await client.post(
            "/api/users/me/opencode/files",
            json={"type": "agent", "name": "unicode", "content": content},
            headers=headers,
        )
        assert file.status_code == 201, file.text
        assert (await client.get(f"/api/users/me/opencode/files/{file.json()['id']}", headers=headers)).json()[
            "content"
        ] == content
        config = {
            "settings": {"theme": samples["arabic (RTL)"], samples["cjk"]: samples["zwj emoji"]},
            "agents_md": content,
        }
        assert (await client.put("/api/users/me/opencode/config", json=config, headers=headers)).status_code == 200
        read = (await client.get("/api/users/me/opencode/config", headers=headers)).json()
        assert (read["settings"], read["agents_md"]) == (config["settings"], content)

        # Preferences take identifiers only: unicode is refused and the stored version stays.
        version = (await client.get("/api/users/me/preferences/version", headers=headers)).json()["settings_version"]
        for text in samples.values():
            refused = await client.patch("/api/users/me/preferences", json={"theme_preset": text}, headers=headers)
            assert refused.status_code == 422 and error_shape_problem(_reply(refused)) is None, refused.text
        assert (await client.get("/api/users/me/preferences/version", headers=headers)).json()[
            "settings_version"
        ] == version

        # The exports carry the same text: JSON decodes to it, CSV parses back to it.
        await app.state.audit_writer.drain()
        export = json.loads((await client.get("/api/account/data-export", headers=headers)).text)
        assert export["profile"]["name"] == name
        assert [row["content"] for row in export["opencode_files"]] == [content]
        assert export["opencode_config"]["agents_md"] == content
        assert {row["name"] for row in export["sandboxes"]} == {"🚀 renamed ✓", *list(sandboxes.values())[1:]}
        csv_text = (await client.get("/api/users/me/activity/export?format=csv", headers=headers)).text
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        names = {json.loads(row["metadata"]).get("name") for row in rows if row["action"] == "sandbox.create"}
        assert names == set(sandboxes.values())


def _reply(response: httpx.Response) -> Reply:
    return Reply(response.status_code, dict(response.headers), response.content)


# --------------------------------------------------------------------------- regressions found by this suite


async def test_an_unexpected_error_still_carries_the_request_id_header(app: FastAPI) -> None:
    router = APIRouter()

    @router.get("/api/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.include_router(router)
    reply = await asgi_call(app, build_request("GET", "/api/test-only/boom", headers={"X-Request-ID": "trace-me-1"}))
    assert reply.status == 500 and isinstance(reply.error, RuntimeError)
    assert error_shape_problem(reply) is None
    assert reply.headers["x-request-id"] == "trace-me-1" == reply.json()["error"]["request_id"]


async def test_a_deletion_id_with_non_ascii_text_is_a_404(app: FastAPI) -> None:
    """Found by the longer fuzz: the MAC comparison raised on non-ASCII input (a 500, without a token)."""
    for forged in ("%C3%85S.%C2%B7%C2%BB%14", "user.%F0%9F%9A%80", "%E2%80%AE.abc"):
        reply = await asgi_call(app, build_request("GET", f"/api/account/deletion/{forged}"))
        assert not _problems(reply, "GET /api/account/deletion/{deletion_id}", forged, expect={404})


async def test_restoring_a_version_beyond_any_integer_is_a_404(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await seed_account(app, sessions, label="overflow")
    before = await snapshot(sessions, owner.user_id)
    for version in (2**31 - 1, 2**31, 2**63, 10**30):
        reply = await asgi_call(
            app, build_request("POST", f"/api/users/me/preferences/restore/{version}", headers=owner.headers)
        )
        assert not _problems(reply, "POST /api/users/me/preferences/restore/{version}", str(version), expect={404})
        assert reply.json()["error"]["code"] == "version_not_found"
    await _unchanged(sessions, owner, before)
