"""``Annotated`` dependencies every route uses: context, database session, authenticated caller.

Every dependency is ``async def``, even those that never await: FastAPI runs a plain ``def``
dependency in its thread pool, one thread hand-off per request for a dict lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from agentpod.domain.sandbox import Actor
from agentpod.settings import Settings
from agentpod.store import sandboxes
from agentpod.store.tables import AuthSession, Sandbox, User
from agentpod.store.users import resolve_token
from api.client_ip import client_ip
from api.context import AppContext
from api.errors import NotFound, Unauthorized


async def get_context(request: Request) -> AppContext:
    """The process context created at startup."""
    ctx: AppContext = request.app.state.ctx
    return ctx


Context = Annotated[AppContext, Depends(get_context)]


async def get_settings(ctx: Context) -> Settings:
    """The process settings."""
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_db(ctx: Context) -> AsyncIterator[AsyncSession]:
    """A database session per request; routes commit explicitly, anything uncommitted rolls back."""
    # Give the loop up once before the queries. On SQLite a request's lookups run inline
    # (store/sqlite_inline.py), so without this it ran from first byte to last in one go and, with many
    # connections waiting, the order the loop happened to run them in decided the wait: page p99 at 16
    # connections 197 -> 63 ms, at no cost in throughput (docs/benchmarks.md).
    await asyncio.sleep(0)
    async with ctx.sessions() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(get_db)]


async def get_temporal(ctx: Context) -> Client:
    """The Temporal client (lazy: connects on first use)."""
    return ctx.temporal


TemporalClient = Annotated[Client, Depends(get_temporal)]

_bearer = HTTPBearer(auto_error=False, description="Token from sign-up, sign-in or refresh.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_auth(
    db: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> tuple[User, AuthSession]:
    """The caller's user and session, or 401 (one message for missing, bad, expired or revoked)."""
    if credentials is None:
        raise Unauthorized("missing bearer token", headers=_CHALLENGE)
    resolved = await resolve_token(db, credentials.credentials)
    if resolved is None:
        raise Unauthorized("invalid, expired or revoked token", headers=_CHALLENGE)
    return resolved


Auth = Annotated[tuple[User, AuthSession], Depends(get_auth)]


async def get_current_user(auth: Auth) -> User:
    """The authenticated user."""
    return auth[0]


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_client_ip(request: Request, ctx: Context) -> str | None:
    """The caller's IP (proxy-aware)."""
    return client_ip(request, ctx.trusted_proxies)


ClientIp = Annotated[str | None, Depends(get_client_ip)]


def sandbox_not_found() -> NotFound:
    """The one answer for a sandbox that is missing or someone else's."""
    return NotFound("sandbox not found", code="sandbox_not_found")


async def get_owned_sandbox(sandbox_id: str, user: CurrentUser, db: DbSession) -> Sandbox:
    """The caller's sandbox ``sandbox_id``; another user's sandbox is indistinguishable from none (404)."""
    sandbox = await sandboxes.get_owned(db, user.id, sandbox_id)
    if sandbox is None:
        raise sandbox_not_found()
    return sandbox


OwnedSandbox = Annotated[Sandbox, Depends(get_owned_sandbox)]


async def get_actor(request: Request, ip: ClientIp) -> Actor:
    """The caller, as recorded in the audit trail of a sandbox transition."""
    return Actor(kind="user", ip_address=ip, user_agent=request.headers.get("user-agent"))


RequestActor = Annotated[Actor, Depends(get_actor)]
