"""Authorization matrix: user B, signed in, calls every route of the app with user A's ids.

The routes come from the app itself (``app.routes``), so a route added later is in the matrix the day
it is mounted. For each one B sends a *valid* request (so a missing ownership check would succeed, not
fail validation), with A's ids in the path:

* a parameter naming one of A's resources (sandbox, chat session, file) must answer 404 in the error
  shape — also when B puts A's chat session under B's own sandbox. A parameter this suite does not know
  yet is covered when the route also takes ``{sandbox_id}`` (A's sandbox makes it a 404); otherwise
  the test fails until the parameter is given a value of A's here, or the route is listed in
  :data:`NOT_OWNER_SCOPED` with the reason;
* a parameter that names something in the caller's own namespace (a provider name, a preferences
  version, an activity filter) acts on B's data only;
* every answer: never a server error, and never one of A's ids, names, texts or secrets in the body;
* afterwards every row A owns, in every table, is exactly as before.
"""

from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Route

from agentpod.domain.account import DELETION_PHRASE
from agentpod.settings import Settings
from api.app import create_app
from tests.security.conftest import (
    HEALTH,
    SECRET_API_KEY,
    SECRET_MCP_TOKEN,
    SECRET_PASSWORD,
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

log = logging.getLogger(__name__)

# Parameters naming a resource that belongs to one user: another user gets 404.
OWNED_PARAMS = {"sandbox_id", "session_id", "file_id"}
# Parameters naming something inside the caller's own account (there is no "A's" version of them).
CALLER_SCOPED_PARAMS = {"provider_id", "version", "entity_type", "entity_id"}
# Routes whose path parameter is deliberately not tied to the caller, and why.
NOT_OWNER_SCOPED = {
    "GET /api/account/deletion/{deletion_id}": "the id is a server-made MAC (user id + tag): whoever holds it may "
    "read the deletion's progress without a token (docs/account.md). B gets A's bare user id, a forgery: 404.",
}

ENTITY_ACTIVITY = "GET /api/users/me/activity/entity/{entity_type}/{entity_id}"

# Valid bodies for the routes that take one (a route added later gets one built from its schema).
BODIES: dict[str, Any] = {
    "POST /api/auth/sign-up": lambda: {
        "email": f"matrix-{uuid.uuid4().hex[:8]}@example.com",
        "password": "long enough password",
        "name": "Matrix",
    },
    "POST /api/v2/sandboxes": lambda: {"name": f"b-{uuid.uuid4().hex[:6]}", "repo_name": "b", "auto_start": False},
    "PATCH /api/v2/sandboxes/{sandbox_id}": {"name": "taken-over", "description": "taken over"},
    "POST /api/v2/sandboxes/{sandbox_id}/chat/sessions": {"title": "taken over"},
    "POST /api/v2/sandboxes/{sandbox_id}/chat/sessions/{session_id}/messages": {"text": "taken over"},
    "PUT /api/users/me/preferences": {"theme_mode": "light"},
    "PATCH /api/users/me/preferences": {"theme_mode": "light"},
    "PUT /api/users/me/providers/{provider_id}": {"api_key": "sk-intruder-000000000000", "is_default": False},
    "PUT /api/users/me/opencode/config": {"settings": {}, "agents_md": "intruder"},
    "POST /api/users/me/opencode/files": lambda: {
        "type": "command",
        "name": f"intruder-{uuid.uuid4().hex[:6]}",
        "content": "x",
    },
    "PUT /api/users/me/opencode/files/{file_id}": {"name": "taken-over", "content": "taken over"},
    "DELETE /api/account": {"confirmation": DELETION_PHRASE},
}


@dataclass
class Call:
    """One cell of the matrix."""

    endpoint: Endpoint
    url: str
    variant: str
    expect_404: bool
    sent: str = ""


def _value(param: str, endpoint: Endpoint, owner: Seeded, variant: str, intruder: Seeded) -> str | None:
    if param == "sandbox_id":
        if variant == "own-sandbox":
            return intruder.running_sandbox_id
        return owner.sandbox_id if variant == "created" else owner.running_sandbox_id
    known = {
        "session_id": owner.acp_chat_session_id if "/acp/" in endpoint.path else owner.chat_session_id,
        "file_id": owner.file_id,
        "provider_id": owner.provider_id,
        "version": str(owner.preferences_version),
        "entity_type": "sandbox",
        "entity_id": owner.running_sandbox_id,
        "deletion_id": owner.user_id,  # no MAC: a forgery
    }
    if param in known:
        return known[param]
    if "sandbox_id" in endpoint.path_params:
        return f"unknown-{uuid.uuid4().hex[:8]}"  # behind A's sandbox: the sandbox check answers first
    return None


def matrix(app: FastAPI, owner: Seeded, intruder: Seeded) -> tuple[list[Call], list[str]]:
    """Every cell, and the routes that cannot be placed (a failure to fix here)."""
    calls: list[Call] = []
    unplaced: list[str] = []
    for endpoint in api_endpoints(app):
        params = endpoint.path_params
        owned = [p for p in params if p in OWNED_PARAMS]
        variants = ["running"]
        if "sandbox_id" in params:
            variants.append("created")
            if len(owned) > 1:
                variants.append("own-sandbox")  # B's sandbox, A's chat session
        for variant in variants:
            values: dict[str, str] = {}
            for param in params:
                value = _value(param, endpoint, owner, variant, intruder)
                if value is None:
                    unplaced.append(f"{endpoint.key}: path parameter {{{param}}}")
                    break
                values[param] = value
            else:
                url = endpoint.path
                for param, value in values.items():
                    url = url.replace(f"{{{param}}}", value)
                expect_404 = bool(owned) or endpoint.key in NOT_OWNER_SCOPED
                calls.append(Call(endpoint, url, variant, expect_404))
    for route in app.routes:
        # Anything mounted outside the API routers (docs pages, a sub-app) must not take ids either.
        if isinstance(route, Route) and "{" in route.path and not route.path.startswith("/api/"):
            unplaced.append(f"{route.path}: not an API route but takes a path parameter")
    return calls, unplaced


# --------------------------------------------------------------------------- valid requests


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example_of(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """The smallest value that satisfies the simple parts of a JSON schema (enough for a 404 probe)."""
    schema = _resolve(schema, components)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, components).get("type") != "null"]
            return example_of(options[0] if options else schema[key][0], components)
    if "allOf" in schema:
        return example_of(schema["allOf"][0], components)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_of(props[name], components) for name in schema.get("required", []) if name in props}
    if kind == "array":
        return [example_of(schema.get("items", {}), components) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "a" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return None


def request_parts(app: FastAPI, endpoint: Endpoint) -> tuple[Any, dict[str, Any]]:
    """(JSON body or None, required query parameters) for a valid call of ``endpoint``."""
    document = app.openapi()
    components = document.get("components", {}).get("schemas", {})
    operation = document["paths"][endpoint.path][endpoint.method.lower()]
    query = {
        param["name"]: example_of(param.get("schema", {}), components)
        for param in operation.get("parameters", [])
        if param.get("in") == "query" and param.get("required")
    }
    known = BODIES.get(endpoint.key)
    if known is not None:
        return (known() if callable(known) else known), query
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        return example_of(content["application/json"].get("schema", {}), components), query
    return None, query


# --------------------------------------------------------------------------- the test


def _leaks(reply: Reply, owner: Seeded, sent: str) -> list[str]:
    secrets = [SECRET_API_KEY, SECRET_PASSWORD, SECRET_MCP_TOKEN]
    # An id B put in the request may be echoed in an error message; anything else of A's may not appear.
    found = [marker for marker in owner.markers if marker in reply.text and marker not in sent]
    return found + [secret for secret in secrets if secret in reply.text]


async def test_user_b_gets_nothing_of_user_a_on_any_route(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await seed_account(app, sessions, label="alice")
    intruder = await seed_account(app, sessions, label="mallory", password="mallory's own password")
    before = await snapshot(sessions, owner.user_id)
    calls, unplaced = matrix(app, owner, intruder)
    assert not unplaced, (
        "routes with path parameters this matrix cannot aim at another user's resources; give the parameter "
        "a value of A's in _value() or list the route in NOT_OWNER_SCOPED with the reason:\n" + "\n".join(unplaced)
    )

    problems: list[str] = []
    exercised: set[str] = set()
    for call in calls:
        body, query = request_parts(app, call.endpoint)
        token = await fresh_token(sessions, intruder.user_id)  # a sign-out in the matrix revokes only its own
        request = build_request(
            call.endpoint.method,
            call.url,
            headers={"Authorization": f"Bearer {token}"},
            params=query or None,
            json_body=body,
        )
        sent = f"{request.url} {request.content.decode('utf-8', 'replace')}"
        reply = await asgi_call(app, request, stream_grace=0.3)
        exercised.add(call.endpoint.key)
        where = f"{call.endpoint.key} [{call.variant}] -> {reply.status}"
        if call.expect_404:
            if reply.status != 404:
                problems.append(f"{where}: expected 404, got {reply.text[:300]!r}")
            elif shape := error_shape_problem(reply):
                problems.append(f"{where}: {shape}")
        else:
            if server := server_error_problem(reply, call.endpoint.key):
                problems.append(f"{where}: {server}")
            if reply.status >= 400 and call.endpoint.key != HEALTH and (shape := error_shape_problem(reply)):
                problems.append(f"{where}: {shape}")
        if leaked := _leaks(reply, owner, sent):
            problems.append(f"{where}: A's data in the answer: {leaked}")
        # Filtered by the caller: A's sandbox has no history in B's trail.
        if call.endpoint.key == ENTITY_ACTIVITY and (reply.status != 200 or reply.json()["activities"] != []):
            problems.append(f"{where}: B sees activity on A's sandbox: {reply.text[:300]!r}")

    log.info(
        "authorization matrix: %d routes, %d calls (%d expecting 404)",
        len(exercised),
        len(calls),
        sum(call.expect_404 for call in calls),
    )
    writer = getattr(app.state, "audit_writer", None)
    if writer is not None:
        await writer.drain()
    after = await snapshot(sessions, owner.user_id)
    changed = sorted(table for table in set(before) | set(after) if before.get(table) != after.get(table))
    assert not problems, f"{len(problems)} authorization problems:\n" + "\n".join(problems)
    assert not changed, f"B's calls changed A's rows in {changed}"
    # Every route was called, and the ones taking A's resource ids were checked for 404.
    assert exercised == {endpoint.key for endpoint in api_endpoints(app)}
    assert sum(call.expect_404 for call in calls) >= 20
    # The snapshot really covers A's account (a broken snapshot would compare two empty dicts).
    assert {"user", "sandboxes", "chat_sessions", "chat_messages", "provider_credentials"} <= {
        table for table, rows in before.items() if rows
    }


def test_the_matrix_fails_on_an_unknown_path_parameter(tmp_path: Path) -> None:
    """A route outside any sandbox taking an id the matrix cannot aim must make the matrix fail."""
    app = create_app(Settings(dev_mode=True, data_dir=tmp_path))  # no lifespan: only the route table is read
    router = APIRouter()

    @router.get("/api/users/me/widgets/{widget_id}")
    async def widget(widget_id: str) -> dict[str, str]:
        return {"id": widget_id}

    app.include_router(router)
    dummy = Seeded(
        user_id="u",
        email="e",
        token="t",
        sandbox_id="s",
        running_sandbox_id="r",
        chat_session_id="c",
        acp_chat_session_id="a",
        message_ids=[],
        file_id="f",
        provider_id="p",
        preferences_version=1,
        deletion_id="d",
    )
    _, unplaced = matrix(app, dummy, dummy)
    assert unplaced == ["GET /api/users/me/widgets/{widget_id}: path parameter {widget_id}"]
