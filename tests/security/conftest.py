"""Shared pieces of the security suite: a bounded in-process HTTP driver, the route table, a fully
seeded account, and a snapshot of everything one user owns.

The driver talks ASGI to the app directly (no socket), in the test's event loop, so the database
connections opened by the app's lifespan stay on their loop. Unlike httpx's ASGI transport it does
not wait for a response to end: an event stream is read for a moment, then the client "disconnects".
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import Message

from agentpod.store import users
from agentpod.store.base import Base
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox, User
from api.routes import account as account_routes
from tests.helpers import auth_header, sign_up

# Every 4xx/5xx body has exactly this shape (api/errors.py).
ERROR_KEYS = {"code", "message", "details", "request_id"}
# 5xx answers that are honest reports of a dependency the test setup does not run (no Temporal, an
# unreachable sandbox agent), by error code. Anything else at 500+ is a bug.
DEPENDENCY_DOWN = {
    "temporal_unavailable": 503,
    "opencode_unavailable": 502,
    "opencode_error": 502,
    "acp_unavailable": 502,
    "acp_error": 502,
}
UNREACHABLE_AGENT = "http://127.0.0.1:1"
# The one route documented to answer 503 with its own body (a health report) when a dependency is down.
HEALTH = "GET /api/health"


@dataclass
class Reply:
    """What the app answered (a stream is cut after a short look)."""

    status: int
    headers: dict[str, str]
    body: bytes
    streamed: bool = False
    error: BaseException | None = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Any = None,
    json_body: Any = None,
    content: bytes | None = None,
) -> httpx.Request:
    """An httpx request (it does the URL and body encoding); ``url`` may be relative."""
    if json_body is not None:
        return httpx.Request(
            method, httpx.URL("http://testserver").join(url), headers=headers, params=params, json=json_body
        )
    return httpx.Request(
        method, httpx.URL("http://testserver").join(url), headers=headers, params=params, content=content
    )


async def asgi_call(app: FastAPI, request: httpx.Request, *, stream_grace: float = 0.3, timeout: float = 30.0) -> Reply:
    """Send ``request`` to ``app``. A ``text/event-stream`` answer is read for ``stream_grace`` seconds,
    then the client disconnects; anything else is read to the end (at most ``timeout`` seconds)."""
    body = request.read()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": unquote(request.url.path),
        "raw_path": request.url.raw_path.split(b"?")[0],
        "query_string": request.url.query,
        "root_path": "",
        "headers": [(key.lower(), value) for key, value in request.headers.raw],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    sent_body = False
    disconnected = asyncio.Event()
    started = asyncio.Event()
    finished = asyncio.Event()
    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if disconnected.is_set():
            raise OSError("client disconnected")
        if message["type"] == "http.response.start":
            status = message["status"]
            for key, value in message.get("headers", []):
                headers[key.decode("latin-1").lower()] = value.decode("latin-1")
            started.set()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    task = asyncio.create_task(app(scope, receive, send))
    streamed = False
    error: BaseException | None = None
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait([asyncio.create_task(started.wait()), task], return_when=asyncio.FIRST_COMPLETED)
            if headers.get("content-type", "").startswith("text/event-stream"):
                streamed = True
                await asyncio.wait([task], timeout=stream_grace)
            else:
                await asyncio.wait([asyncio.create_task(finished.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            disconnected.set()
            await asyncio.wait([task], timeout=2)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif task.exception() is not None:
            # Starlette re-raises an unhandled error after sending the 500: keep it for the report.
            error = task.exception()
    return Reply(status=status, headers=headers, body=b"".join(chunks), streamed=streamed, error=error)


def error_shape_problem(reply: Reply) -> str | None:
    """Why ``reply`` (a 4xx/5xx) is not in the one error shape, or None when it is."""
    try:
        payload = reply.json()
    except ValueError:
        return f"{reply.status} body is not JSON: {reply.text[:200]!r}"
    if not isinstance(payload, dict) or set(payload) != {"error"} or not isinstance(payload["error"], dict):
        return f"{reply.status} body is not {{'error': {{...}}}}: {reply.text[:200]!r}"
    error = payload["error"]
    if set(error) != ERROR_KEYS:
        return f"{reply.status} error keys are {sorted(error)}"
    if not isinstance(error["code"], str) or not error["code"] or not isinstance(error["message"], str):
        return f"{reply.status} error code/message missing: {reply.text[:200]!r}"
    if error["request_id"] != reply.headers.get("x-request-id"):
        return (
            f"{reply.status} request_id {error['request_id']!r} != X-Request-ID {reply.headers.get('x-request-id')!r}"
        )
    return None


def server_error_problem(reply: Reply, key: str = "") -> str | None:
    """Why ``reply`` (to ``key``, "METHOD /path") counts as a server error, or None (a dependency-down
    answer is not one)."""
    if reply.status < 500 or (key == HEALTH and reply.status == 503 and "temporal" in reply.json()):
        return None
    try:
        code = reply.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if DEPENDENCY_DOWN.get(code) == reply.status and error_shape_problem(reply) is None:
        return None
    return f"server error {reply.status}: {reply.text[:300]!r}" + (f" ({reply.error!r})" if reply.error else "")


# --------------------------------------------------------------------------- the route table


@dataclass(frozen=True)
class Endpoint:
    """One method of one API route, as mounted on the app."""

    method: str
    path: str
    route: APIRoute

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[str]:
        # From the template: a parameter only a dependency reads (OwnedSandbox) is not in the dependant's list.
        return _template_params(self.path)

    @property
    def streams(self) -> bool:
        """Whether the answer is a stream (its response class is a StreamingResponse)."""
        response_class = getattr(self.route.response_class, "value", self.route.response_class)
        return isinstance(response_class, type) and issubclass(response_class, _streaming_types())


def _streaming_types() -> tuple[type, ...]:
    from starlette.responses import StreamingResponse

    return (StreamingResponse,)


def _template_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def api_endpoints(app: FastAPI) -> list[Endpoint]:
    """Every (method, path) of every API route, however the routers were included (HEAD/OPTIONS aside)."""
    found: list[Endpoint] = []
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes is flat
        pairs: Iterable[tuple[Any, str | None, Iterable[str] | None]] = (
            (route, getattr(route, "path", None), getattr(route, "methods", None)) for route in app.routes
        )
    else:
        pairs = ((ctx.original_route, ctx.path, ctx.methods) for ctx in iter_route_contexts(app.routes))
    for route, path, methods in pairs:
        if not isinstance(route, APIRoute) or path is None:
            continue
        for method in sorted(set(methods or ()) - {"HEAD", "OPTIONS"}):
            found.append(Endpoint(method, path, route))
    return found


# --------------------------------------------------------------------------- a fully seeded account

SECRET_API_KEY = "sk-proj-SECSUITE-" + "Zq7Xv9Lm2Np4Rt6Wy8Ab1Cd3Ef5Gh7Jk9"
SECRET_PASSWORD = "hunter2-SECSUITE-correct-horse-battery"
SECRET_MCP_TOKEN = "mcp-SECSUITE-Yb6Vc8Xn0Mq2Ws4Ed"
# Claude Code's provider (Codex uses the OpenAI key above).
SECRET_ANTHROPIC_KEY = "sk-ant-SECSUITE-" + "Hj3Kl5Zx7Cv9Bn1Mq3We5Rt7"


@dataclass
class Seeded:
    """A user with one of everything (ids of their resources, and strings only they own)."""

    user_id: str
    email: str
    token: str
    sandbox_id: str  # created through the API (status "created")
    running_sandbox_id: str  # a row marked running, its agent at an unreachable address
    chat_session_id: str  # an OpenCode chat with two messages, in the running sandbox
    acp_chat_session_id: str  # an ACP conversation, in the running sandbox
    message_ids: list[str]
    file_id: str
    provider_id: str
    preferences_version: int
    deletion_id: str
    markers: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return auth_header(self.token)


async def seed_account(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession], *, label: str = "owner", password: str = SECRET_PASSWORD
) -> Seeded:
    """Sign up and fill an account through the API; rows the API would need Docker or Temporal for
    (a running sandbox, chat history) are inserted directly."""
    transport = httpx.ASGITransport(app=app)
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        created = await sign_up(client, email=email, password=password)
        token, user_id = created["token"], created["user"]["id"]
        headers = auth_header(token)
        tag = uuid.uuid4().hex[:8]

        async def ok(method: str, url: str, body: Any = None) -> dict[str, Any]:
            response = await client.request(method, url, json=body, headers=headers)
            assert response.status_code < 300, (method, url, response.text)
            return response.json() if response.content else {}

        sandbox = await ok(
            "POST",
            "/api/v2/sandboxes",
            {"name": f"{label}-box-{tag}", "repo_name": f"{label}-repo-{tag}", "description": f"{label} secret plans"},
        )
        await ok("PUT", "/api/users/me/providers/openai", {"api_key": SECRET_API_KEY, "is_default": True})
        await ok("PATCH", "/api/users/me/preferences", {"theme_mode": "dark", "theme_preset": f"p{tag}"})
        prefs = await ok("PATCH", "/api/users/me/preferences", {"auto_refresh_interval": 120})
        await ok(
            "PUT",
            "/api/users/me/opencode/config",
            {
                "settings": {
                    "mcp": {
                        "tools": {
                            "type": "remote",
                            "url": "https://mcp.example.com",
                            "headers": {"Authorization": f"Bearer {SECRET_MCP_TOKEN}"},
                        }
                    }
                },
                "agents_md": f"{label} agents {tag}",
            },
        )
        file = await ok(
            "POST", "/api/users/me/opencode/files", {"type": "agent", "name": f"{label}-agent-{tag}", "content": "hi"}
        )
    async with sessions() as db:
        running = Sandbox(
            user_id=user_id,
            name=f"{label}-running-{tag}",
            slug=f"{label}-running-{tag}",
            repo_name=f"{label}-running-{tag}",
            resource_tier_id="starter",
            flavor_id="fullstack",
            addon_ids=[],
            status="running",
            opencode_url=UNREACHABLE_AGENT,
            opencode_internal_url=UNREACHABLE_AGENT,
        )
        for column in ("acp_gateway_url", "acp_internal_url"):
            if hasattr(Sandbox, column):  # the ACP gateway's address, where the schema has it
                setattr(running, column, UNREACHABLE_AGENT)
        db.add(running)
        await db.flush()
        chat = ChatSession(
            sandbox_id=running.id,
            user_id=user_id,
            source="opencode",
            opencode_session_id=f"ses_{uuid.uuid4().hex}",
            title=f"{label} chat {tag}",
        )
        acp_chat = ChatSession(
            sandbox_id=running.id,
            user_id=user_id,
            source="acp_gateway",
            acp_session_id=f"acp-{uuid.uuid4().hex}",
            acp_agent_id="opencode",
            title=f"{label} acp chat {tag}",
        )
        db.add_all([chat, acp_chat])
        await db.flush()
        messages = [
            ChatMessage(
                session_id=chat.id,
                source="opencode",
                role=role,
                content={"parts": [{"type": "text", "text": f"{label} {role} words {tag}"}]},
                text=f"{label} {role} words {tag}",
                status="complete",
                external_message_id=f"msg_{uuid.uuid4().hex}",
            )
            for role in ("user", "assistant")
        ]
        db.add_all(messages)
        await db.commit()
        running_id, chat_id, acp_chat_id = running.id, chat.id, acp_chat.id
        message_ids = [m.id for m in messages]
    writer = getattr(app.state, "audit_writer", None)
    if writer is not None:
        await writer.drain()
    return Seeded(
        user_id=user_id,
        email=email,
        token=token,
        sandbox_id=sandbox["id"],
        running_sandbox_id=running_id,
        chat_session_id=chat_id,
        acp_chat_session_id=acp_chat_id,
        message_ids=message_ids,
        file_id=file["id"],
        provider_id="openai",
        preferences_version=prefs["settings_version"],
        deletion_id=account_routes.deletion_id(app.state.ctx.keyring, user_id),
        markers=[user_id, email, sandbox["id"], running_id, chat_id, acp_chat_id, *message_ids, file["id"], tag],
    )


async def fresh_token(sessions: async_sessionmaker[AsyncSession], user_id: str) -> str:
    """A new bearer token for ``user_id``, minted in the store (no password hashing)."""
    async with sessions() as db:
        user = await db.get(User, user_id)
        assert user is not None
        token, _ = await users.issue_token(db, user, ttl=timedelta(hours=1), ip_address=None, user_agent="security")
        await db.commit()
    return token


# --------------------------------------------------------------------------- what a user owns


def _owned_filter(table: Table, user_id: str, sandbox_ids: list[str], session_ids: list[str]) -> Any:
    columns = table.c
    if table.name == User.__tablename__:
        return columns.id == user_id
    if "user_id" in columns:
        return columns.user_id == user_id
    if "sandbox_id" in columns:
        return columns.sandbox_id.in_(sandbox_ids)
    if "session_id" in columns and table.name == ChatMessage.__tablename__:
        return columns.session_id.in_(session_ids)
    return None


async def snapshot(sessions: async_sessionmaker[AsyncSession], user_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row ``user_id`` owns, in every table (found from the schema, so new tables count too)."""
    async with sessions() as db:
        sandbox_ids = list((await db.scalars(select(Sandbox.id).where(Sandbox.user_id == user_id))).all())
        session_ids = list((await db.scalars(select(ChatSession.id).where(ChatSession.user_id == user_id))).all())
        found: dict[str, list[dict[str, Any]]] = {}
        for table in Base.metadata.sorted_tables:
            where = _owned_filter(table, user_id, sandbox_ids, session_ids)
            if where is None:
                continue
            rows = (await db.execute(select(table).where(where))).mappings().all()
            found[table.name] = sorted((dict(row) for row in rows), key=repr)
    return found
