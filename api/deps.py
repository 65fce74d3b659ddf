"""Every FastAPI dependency of the API, as ``Annotated`` aliases routes take as parameters.

Process (context, settings, database, Temporal, notifier), caller (token, user, IP, actor), ownership
(sandbox, chat session in a sandbox or in the user's list, ACP session, OpenCode file: another user's
is a 404 like a missing one), the sandbox workflow's transitions, preference writes (``If-Match``), the
agents' clients (OpenCode, ACP gateway) and the live streams (timing, the per-user cap and access
re-check, chat change wake-ups). Tests replace some through ``app.dependency_overrides[<function>]``.
Audit entries are dependencies too, but each endpoint declares its own with :func:`api.audit.audit`.

Every dependency is ``async def``, even those that never await: FastAPI runs a plain ``def``
dependency in its thread pool, one thread hand-off per request for a dict lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from agentpod.clients.acp import AcpGatewayClient
from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.sandbox import Actor
from agentpod.notify import Notifier
from agentpod.notify.chat_feed import ChatChanges
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.settings import Settings
from agentpod.store import chat, opencode_config, sandboxes, user_chats
from agentpod.store.tables import AuthSession, ChatSession, Sandbox, User, UserOpencodeFile
from agentpod.store.user_chats import UserSession
from agentpod.store.users import resolve_token
from api.chat_stream import StreamTiming
from api.client_ip import client_ip
from api.context import AppContext
from api.errors import Conflict, NotFound, Unauthorized
from api.live_streams import LiveStreams
from api.sandbox_workflows import AgentConfigPush, SandboxTransitions

# --------------------------------------------------------------------------- the process


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


async def get_notifier(ctx: Context) -> Notifier:
    """The process's notifier (``AppContext.notifier``, started and closed by the app lifespan)."""
    return ctx.notifier


NotifierDep = Annotated[Notifier, Depends(get_notifier)]

# --------------------------------------------------------------------------- the caller

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


async def get_actor(request: Request, ip: ClientIp) -> Actor:
    """The caller, as recorded in the audit trail of a sandbox transition."""
    return Actor(kind="user", ip_address=ip, user_agent=request.headers.get("user-agent"))


RequestActor = Annotated[Actor, Depends(get_actor)]

# --------------------------------------------------------------------------- what the caller owns


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


async def get_chat_session(sandbox_id: str, session_id: str, user: CurrentUser, db: DbSession) -> ChatSession:
    """The session ``session_id`` of the caller's sandbox ``sandbox_id`` (404 naming which is missing).

    One query for both checks (the busiest routes are a session's): not :data:`OwnedSandbox` and then the session.
    """
    owns_sandbox, session = await chat.get_owned_session(db, user.id, sandbox_id, session_id)
    if not owns_sandbox:
        raise sandbox_not_found()
    if session is None:
        raise NotFound("chat session not found", code="chat_session_not_found")
    return session


OwnedChatSession = Annotated[ChatSession, Depends(get_chat_session)]


async def get_user_chat_session(session_id: str, user: CurrentUser, db: DbSession) -> UserSession:
    """The caller's chat session ``session_id`` in any of their sandboxes, live or deleted (404 otherwise)."""
    found = await user_chats.get_session(db, user.id, session_id)
    if found is None:
        raise NotFound("chat session not found", code="chat_session_not_found")
    return found


OwnedUserChatSession = Annotated[UserSession, Depends(get_user_chat_session)]


async def get_acp_session(session: OwnedChatSession) -> ChatSession:
    """The caller's chat session, which must be an ACP one (404 otherwise, 409 if the agent lost it)."""
    if session.source != "acp_gateway" or not session.acp_session_id:
        raise NotFound("ACP session not found", code="acp_session_not_found")
    if session.missing_upstream_at is not None:
        raise Conflict("the gateway no longer has this session", code="upstream_session_missing")
    return session


OwnedAcpSession = Annotated[ChatSession, Depends(get_acp_session)]


async def get_owned_file(file_id: str, user: CurrentUser, db: DbSession) -> UserOpencodeFile:
    """The caller's OpenCode file ``file_id`` (another user's is a 404 like a missing one)."""
    row = await opencode_config.get_file(db, user.id, file_id)
    if row is None:
        raise NotFound("file not found", code="file_not_found")
    return row


OwnedFile = Annotated[UserOpencodeFile, Depends(get_owned_file)]

# --------------------------------------------------------------------------- the sandbox workflow


# --- Session lists ---------------------------------------------------------------------------------


async def get_session_filter(
    status_filter: Annotated[chat.SessionStatus, Query(alias="status")] = "active",
    include_children: bool = False,
    source: Annotated[
        Literal["opencode", "acp_gateway"] | None, Query(description="Only sessions from this source.")
    ] = None,
    agent_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="Only conversations with this ACP agent (`claude-code`, …)."),
    ] = None,
) -> chat.SessionFilter:
    """The filters a session list takes (a sandbox's list and the user's list alike)."""
    return chat.SessionFilter(status=status_filter, include_children=include_children, source=source, agent_id=agent_id)


SessionFilters = Annotated[chat.SessionFilter, Depends(get_session_filter)]


async def get_transitions(client: TemporalClient, settings: SettingsDep, actor: RequestActor) -> SandboxTransitions:
    """Transitions of sandbox workflows on behalf of the current request."""
    return SandboxTransitions(client, settings, actor)


Transitions = Annotated[SandboxTransitions, Depends(get_transitions)]


async def get_agent_config_push(ctx: Context, user: CurrentUser) -> AgentConfigPush:
    """Pushes a change of the caller's agent config to their running sandboxes (flag, commit, push)."""
    return AgentConfigPush(ctx.temporal, user.id)


AgentConfigPushDep = Annotated[AgentConfigPush, Depends(get_agent_config_push)]

# --------------------------------------------------------------------------- preference writes


@dataclass(frozen=True)
class PreferencesWrite:
    """What every write of the caller's preferences works with (the audit entry is the endpoint's own)."""

    user: User
    db: AsyncSession
    notifier: Notifier  # tells the caller's other devices
    response: Response  # carries the new ETag
    if_match: str | None


IfMatch = Annotated[
    str | None,
    Header(
        description='`"<version>"`, `W/"<version>"` (a comma-separated list matches any) or `*`. '
        "A stale value gets 412 with the current state, and nothing changes."
    ),
]


async def get_preferences_write(
    user: CurrentUser, db: DbSession, notifier: NotifierDep, response: Response, if_match: IfMatch = None
) -> PreferencesWrite:
    """A write of the caller's preferences, honouring ``If-Match``."""
    return PreferencesWrite(user, db, notifier, response, if_match)


PreferencesWriter = Annotated[PreferencesWrite, Depends(get_preferences_write)]

# --------------------------------------------------------------------------- the agents (tests substitute fakes)


class OpenCodeChat(Protocol):
    """The part of :class:`OpenCodeClient` the chat routes use (tests substitute a fake)."""

    async def create_session(self, title: str | None = None) -> dict[str, Any]:
        """``POST /session``; returns OpenCode's Session object."""
        ...

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        model: tuple[str, str] | None = None,
        agent: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """``POST /session/{id}/prompt_async``: answers once queued; the reply arrives as events."""
        ...

    async def abort(self, session_id: str) -> bool:
        """``POST /session/{id}/abort``."""
        ...

    async def aclose(self) -> None:
        """Release the connection pool."""
        ...


# (base URL, sandbox id) -> a client that sends the sandbox's OpenCode server password.
OpenCodeFactory = Callable[[str, str], OpenCodeChat]


async def get_opencode_factory(ctx: Context) -> OpenCodeFactory:
    """Builds an OpenCode client for a sandbox, with its server passwords (derived from the keyring)."""

    def connect(base_url: str, sandbox_id: str) -> OpenCodeChat:
        return OpenCodeClient(base_url, opencode_passwords(ctx.keyring, sandbox_id))

    return connect


OpenCodeClients = Annotated[OpenCodeFactory, Depends(get_opencode_factory)]

AcpGatewayFactory = Callable[[str, Sequence[str]], AcpGatewayClient]


async def get_acp_factory() -> AcpGatewayFactory:
    """Builds an ACP gateway client for a base URL and its candidate secrets."""
    return AcpGatewayClient


AcpClients = Annotated[AcpGatewayFactory, Depends(get_acp_factory)]

# --------------------------------------------------------------------------- live streams (tests speed them up)


async def get_heartbeat_seconds(settings: SettingsDep) -> float:
    """Idle seconds between heartbeats of the preferences stream (``AGENTPOD_SSE_HEARTBEAT_SECONDS``)."""
    return settings.sse_heartbeat_seconds


HeartbeatSeconds = Annotated[float, Depends(get_heartbeat_seconds)]


async def get_stream_timing() -> StreamTiming:
    """How often the chat stream beats and how it reads: the production timing."""
    return StreamTiming()


ChatStreamTiming = Annotated[StreamTiming, Depends(get_stream_timing)]


async def get_live_streams(request: Request) -> LiveStreams:
    """The process's open streams: the per-user cap and the shared access re-check (``api/live_streams.py``)."""
    streams: LiveStreams = request.app.state.live_streams
    return streams


LiveStreamsDep = Annotated[LiveStreams, Depends(get_live_streams)]


async def get_chat_changes(request: Request) -> ChatChanges:
    """What wakes the process's chat streams when their sandbox's rows change (``agentpod/notify/chat_feed.py``)."""
    changes: ChatChanges = request.app.state.chat_changes
    return changes


ChatChangesDep = Annotated[ChatChanges, Depends(get_chat_changes)]
