"""Chat (``/api/v2/sandboxes/{sandbox_id}/chat``): history read from our database, prompts sent to the
sandbox's OpenCode, and a live stream of what the sync stores.

Everything is owner-scoped: another user's sandbox, or a session of another sandbox, is a 404.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from agentpod.clients.opencode import OpenCodeError, OpenCodeNotFound, OpenCodeUnavailable
from agentpod.settings import Settings
from agentpod.store import chat, providers, sandboxes
from agentpod.store.chat import ChangeKey, InvalidCursor, MessageKey, SessionKey
from agentpod.store.tables import ChatSession, Sandbox
from api.audit import AuditEntry, audit
from api.chat_stream import STREAM_HEADERS, ChangeFeed, EventStreamResponse, relay
from api.deps import (
    Auth,
    ChatChangesDep,
    ChatStreamTiming,
    Context,
    DbSession,
    LiveStreamsDep,
    OpenCodeChat,
    OpenCodeClients,
    OpenCodeFactory,
    OwnedChatSession,
    OwnedSandbox,
    SessionFilters,
    SettingsDep,
)
from api.errors import ERROR_RESPONSES, ApiError, BadRequest, Conflict, ErrorResponse
from api.schemas.chat import (
    ChatAbortAccepted,
    ChatMessageAccepted,
    ChatMessageCreate,
    ChatMessagePage,
    ChatSessionCreate,
    ChatSessionDetail,
    ChatSessionList,
    ChatSessionOut,
    message_page_data,
)

router = APIRouter(
    prefix="/api/v2/sandboxes/{sandbox_id}/chat",
    tags=["chat"],
    responses={**ERROR_RESPONSES, 502: {"model": ErrorResponse, "description": "The sandbox's agent failed"}},
)

DETAIL_MESSAGES = 50

# --- OpenCode access (the client factory is a dependency: tests substitute a fake) -------------------

_LOCAL_DOMAINS = ("localhost", "127.0.0.1")


def internal_opencode_url(opencode_url: str | None, public_domain: str) -> str | None:
    """Where the control plane reaches a sandbox's OpenCode, or None when the stored row cannot tell.

    On a local install the stored URL is the published loopback port (``http://localhost:<port>``);
    behind a proxy it is a public hostname that does not carry the published port.
    """
    if not opencode_url or public_domain not in _LOCAL_DOMAINS:
        return None
    try:
        port = urlsplit(opencode_url).port
    except ValueError:
        return None
    return f"http://127.0.0.1:{port}" if port else None


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_last_ms = 0
_counter = 0


def new_message_id(now_ms: int | None = None) -> str:
    """An ascending OpenCode message id (``msg_`` + 12 hex of ms*4096+counter + 14 base62).

    OpenCode orders a session's messages by id, so a client-chosen id must sort after earlier ones;
    the format matches OpenCode's ``Identifier.ascending``.
    """
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if now_ms != _last_ms:
        _last_ms, _counter = now_ms, 0
    _counter += 1
    value = (now_ms * 0x1000 + _counter) & (2**48 - 1)
    return "msg_" + value.to_bytes(6, "big").hex() + "".join(secrets.choice(_BASE62) for _ in range(14))


@asynccontextmanager
async def _opencode(clients: OpenCodeFactory, sandbox: Sandbox, public_domain: str) -> AsyncIterator[OpenCodeChat]:
    """A client for the sandbox's OpenCode; its failures become 409 / 502 in the error shape."""
    if sandbox.status != "running":
        raise Conflict(
            f"the sandbox is {sandbox.status}; start it first",
            code="sandbox_not_running",
            details={"status": sandbox.status},
        )
    base_url = sandbox.opencode_internal_url or internal_opencode_url(sandbox.opencode_url, public_domain)
    if base_url is None:
        raise Conflict("the sandbox's agent address is not known yet", code="opencode_address_unknown")
    client = clients(base_url, sandbox.id)
    try:
        yield client
    except OpenCodeNotFound:
        raise Conflict("the agent no longer has this session", code="upstream_session_missing") from None
    except OpenCodeUnavailable:
        raise ApiError("the sandbox's agent is not reachable", status=502, code="opencode_unavailable") from None
    except OpenCodeError as error:
        raise ApiError(
            "the sandbox's agent refused the request",
            status=502,
            code="opencode_error",
            details={"status": error.status},
        ) from None
    finally:
        await client.aclose()


async def require_model_source(db: DbSession, sandbox: Sandbox, settings: Settings) -> None:
    """409 when the agent has no model at all: OpenCode would retry its unreachable default forever."""
    if not await providers.has_model_source(db, sandbox.user_id, settings.agent_base_config):
        raise Conflict(
            "no model provider is set up, so the agent has no model to answer with: add an API key "
            "(PUT /api/users/me/providers/{provider}) or an OpenAI-compatible provider in your OpenCode "
            "config (PUT /api/users/me/opencode/config), then restart the sandbox",
            code="no_model_provider",
        )


# --- Shared helpers --------------------------------------------------------------------------------


Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]
MessageLimit = Annotated[int, Query(ge=1, le=200, description="Page size (1-200).")]
Cursor = Annotated[str | None, Query(max_length=1024)]


def invalid_cursor(error: InvalidCursor, parameter: str) -> BadRequest:
    """The 400 for a cursor this API did not produce."""
    return BadRequest(str(error), code="invalid_cursor", details={"parameter": parameter})


def session_cursor(cursor: str | None) -> SessionKey | None:
    """The position a session list's ``cursor`` names (``None``: the first page); 400 when it is not ours."""
    try:
        return SessionKey.decode(cursor) if cursor else None
    except InvalidCursor as error:
        raise invalid_cursor(error, "cursor") from None


def _upstream_id(session: ChatSession) -> str:
    if session.source != "opencode" or not session.opencode_session_id:
        raise Conflict("only OpenCode sessions take prompts here", code="not_an_opencode_session")
    if session.status == "deleted" or session.missing_upstream_at is not None:
        raise Conflict("the agent no longer has this session", code="upstream_session_missing")
    return session.opencode_session_id


def page_fields(page: chat.MessagePage, include_raw: bool, given: str | None) -> dict[str, Any]:
    """A message page's messages and cursors, as the page bodies carry them."""
    messages = page.messages
    return {
        "messages": message_page_data(messages, include_raw=include_raw),
        "older_cursor": MessageKey.of(messages[0]).encode() if messages else given,
        "newer_cursor": MessageKey.of(messages[-1]).encode() if messages else given,
    }


# --- Reads ----------------------------------------------------------------------------------------


@router.get("/sessions")
async def list_sessions(
    sandbox: OwnedSandbox,
    db: DbSession,
    filters: SessionFilters,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ChatSessionList:
    """The sandbox's sessions, most recently active first; subagent sessions only with ``include_children``."""
    page = await chat.list_sessions(db, sandbox.id, filters=filters, limit=limit, after=session_cursor(cursor))
    return ChatSessionList(
        sessions=[ChatSessionOut.from_row(row, page.child_counts.get(row.id, 0)) for row in page.sessions],
        next_cursor=page.next_key.encode() if page.next_key else None,
        total=page.total,
    )


@router.get("/sessions/{session_id}")
async def get_session(session: OwnedChatSession, db: DbSession, include_raw: bool = False) -> ChatSessionDetail:
    """One session with its newest messages (oldest first) and its subagent sessions."""
    page = await chat.message_page(db, session.id, limit=DETAIL_MESSAGES, with_content=include_raw)
    children = await chat.children_of(db, session)
    counts = await chat.child_counts(db, [session.id, *(child.id for child in children)])
    return ChatSessionDetail(
        session=ChatSessionOut.from_row(session, counts.get(session.id, 0)),
        has_more=page.has_older,
        children=[ChatSessionOut.from_row(child, counts.get(child.id, 0)) for child in children],
        **page_fields(page, include_raw, None),
    )


@router.get("/sessions/{session_id}/messages", response_model=ChatMessagePage)
async def list_messages(
    session: OwnedChatSession,
    db: DbSession,
    before: Cursor = None,
    after: Cursor = None,
    limit: MessageLimit = 50,
    include_raw: bool = False,
) -> Response:
    """Messages in chronological order: the newest page, or the page ``before`` / ``after`` a cursor."""
    return await message_page_response(db, session.id, before, after, limit, include_raw)


async def message_page_response(
    db: DbSession, session_id: str, before: str | None, after: str | None, limit: int, include_raw: bool
) -> Response:
    """A :class:`ChatMessagePage` of session ``session_id`` (ownership already checked), as the response."""
    if before and after:
        raise BadRequest("give either before or after, not both", code="conflicting_cursors")
    try:
        before_key = MessageKey.decode(before) if before else None
        after_key = MessageKey.decode(after) if after else None
    except InvalidCursor as error:
        raise invalid_cursor(error, "before" if before else "after") from None
    page = await chat.message_page(
        db, session_id, limit=limit, before=before_key, after=after_key, with_content=include_raw
    )
    body = ChatMessagePage(
        has_older=page.has_older, has_newer=page.has_newer, **page_fields(page, include_raw, before or after)
    )
    # Built and checked once here: returned as a model, FastAPI would dump, re-validate and re-encode it
    # (the busiest read of the app; a third of its CPU went there).
    return Response(body.model_dump_json(), media_type="application/json")


# --- Writes ---------------------------------------------------------------------------------------


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def archive_session(
    session: OwnedChatSession,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("chat.session_archive", entity="chat_session", id_param="session_id")],
) -> Response:
    """Archive the session (hidden from the default list, history kept; ``POST .../unarchive`` brings it
    back). Idempotent."""
    if await chat.archive_session(db, session):
        await entry.record(db, sandbox_id=session.sandbox_id)
        await db.commit()
    else:
        entry.skip()  # already archived (or deleted upstream): nothing changed
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sessions/{session_id}/unarchive")
async def unarchive_session(
    session: OwnedChatSession,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("chat.session_unarchive", entity="chat_session", id_param="session_id")],
) -> ChatSessionOut:
    """Make an archived session active again (listed by default). Idempotent: any other session is
    returned unchanged."""
    if await chat.unarchive_session(db, session):
        await entry.record(db, sandbox_id=session.sandbox_id)
        await db.commit()
    else:
        entry.skip()  # not archived: nothing changed
    counts = await chat.child_counts(db, [session.id])
    return ChatSessionOut.from_row(session, counts.get(session.id, 0))


@router.post("/sessions", status_code=status.HTTP_201_CREATED)
async def create_session(
    sandbox: OwnedSandbox,
    db: DbSession,
    settings: SettingsDep,
    clients: OpenCodeClients,
    entry: Annotated[AuditEntry, audit("chat.session_create", entity="chat_session")],
    body: ChatSessionCreate | None = None,
) -> ChatSessionOut:
    """Create a session in the sandbox's OpenCode; it is listed at once (the sync fills in the rest)."""
    async with _opencode(clients, sandbox, settings.public_domain) as opencode:
        upstream = await opencode.create_session(body.title if body else None)
    session = await chat.upsert_opencode_session(db, sandbox, upstream)
    await entry.record(db, entity_id=session.id, sandbox_id=sandbox.id, opencode_session_id=session.opencode_session_id)
    await db.commit()
    return ChatSessionOut.from_row(session)


@router.post("/sessions/{session_id}/messages", status_code=status.HTTP_202_ACCEPTED)
async def send_message(
    body: ChatMessageCreate,
    sandbox: OwnedSandbox,
    session: OwnedChatSession,
    db: DbSession,
    settings: SettingsDep,
    clients: OpenCodeClients,
    entry: Annotated[AuditEntry, audit("chat.message_send", entity="chat_session", id_param="session_id")],
) -> ChatMessageAccepted:
    """Send a prompt; answers at once with the message id the synced user message will carry."""
    upstream_id = _upstream_id(session)
    message_id = new_message_id()
    model = None
    if body.model:
        provider, model_id = body.model.split("/", 1)
        model = (provider, model_id)
    async with _opencode(clients, sandbox, settings.public_domain) as opencode:
        await require_model_source(db, sandbox, settings)
        await opencode.prompt_async(upstream_id, body.text, model=model, agent=body.agent, message_id=message_id)
    await sandboxes.note_access(db, sandbox)
    # The prompt text stays in the chat tables; the audit trail records only its size.
    await entry.record(
        db, sandbox_id=sandbox.id, message_id=message_id, chars=len(body.text), model=body.model, agent=body.agent
    )
    await db.commit()
    return ChatMessageAccepted(session_id=session.id, message_id=message_id)


@router.post(
    "/sessions/{session_id}/abort",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[audit("chat.session_abort", entity="chat_session", id_param="session_id")],
)
async def abort_session(
    sandbox: OwnedSandbox, session: OwnedChatSession, settings: SettingsDep, clients: OpenCodeClients
) -> ChatAbortAccepted:
    """Ask the agent to stop the turn in progress (the sync records the outcome)."""
    upstream_id = _upstream_id(session)
    async with _opencode(clients, sandbox, settings.public_domain) as opencode:
        await opencode.abort(upstream_id)
    return ChatAbortAccepted(session_id=session.id)


# --- Live stream ----------------------------------------------------------------------------------


@router.get(
    "/stream",
    # Not EventStreamResponse: its media type would be documented for the JSON errors too.
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `ready`, `session`, `message`, `end`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        429: {
            "model": ErrorResponse,
            "description": "`too_many_streams`: the account holds the most live streams allowed",
        },
    },
)
async def stream(
    request: Request,
    sandbox: OwnedSandbox,
    auth: Auth,
    db: DbSession,
    ctx: Context,
    timing: ChatStreamTiming,
    streams: LiveStreamsDep,
    changes: ChatChangesDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=200, description="For clients that cannot set headers.")
    ] = None,
) -> EventStreamResponse:
    """Every session and message row of this sandbox that changes from now on (or after ``Last-Event-ID``)."""
    given = last_event_id_header or last_event_id
    try:
        start = ChangeKey.decode(given) if given else await chat.latest_change(db, sandbox.id)
    except InvalidCursor as error:
        raise invalid_cursor(error, "Last-Event-ID") from None
    sandbox_id, (user, auth_session) = sandbox.id, auth
    # The stream reads with its own short sessions; holding this one would pin a connection (and, on
    # SQLite, an old read snapshot) for as long as the phone stays connected.
    await db.close()
    slot = streams.open(user.id, auth_session.id, sandbox_id)  # 429 past the per-user cap
    feed = ChangeFeed(ctx.sessions, sandbox_id, start, lookback=timing.lookback, batch=timing.batch)
    events = relay(feed, timing, changes=changes, stream=slot, is_disconnected=request.is_disconnected)
    # The slot is also given back here: a client gone before the first byte never runs the body.
    return EventStreamResponse(events, headers=STREAM_HEADERS, background=BackgroundTask(slot.close))
