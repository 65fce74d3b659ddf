"""The user's chat sessions across sandboxes (``/api/v2/chat/sessions``), deleted sandboxes included.

Deleting a sandbox keeps its sessions and messages; they are read here (a sandbox's own chat routes
end with the sandbox) until the user purges them or deletes the account. Purging is explicit
(``purge=true``) and only for sessions of deleted sandboxes: a live sandbox's agent still holds its
conversations, and its mirror would copy a purged one back (archive those instead).

Everything is owner-scoped: another user's session is a 404 like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentpod.store import chat, sandboxes, user_chats
from api.audit import AuditEntry, audit
from api.deps import CurrentUser, DbSession, OwnedUserChatSession, SessionFilters
from api.errors import ERROR_RESPONSES, BadRequest, Conflict, NotFound
from api.routes.chat import (
    DETAIL_MESSAGES,
    Cursor,
    Limit,
    MessageLimit,
    message_page_response,
    page_fields,
    session_cursor,
)
from api.schemas.chat import (
    ChatMessagePage,
    ChatPurged,
    UserChatSessionDetail,
    UserChatSessionList,
    UserChatSessionOut,
)

router = APIRouter(prefix="/api/v2/chat/sessions", tags=["chat"], responses=ERROR_RESPONSES)

SandboxId = Annotated[str, Query(min_length=1, max_length=64, description="A sandbox's id, live or deleted.")]
Purge = Annotated[bool, Query(description="Must be `true`: purging deletes for good, and cannot be undone.")]


def _purge_required(what: str) -> BadRequest:
    return BadRequest(
        f"purging deletes {what} for good and cannot be undone: repeat the request with purge=true to confirm "
        "(to only hide a session, archive it: POST /api/v2/chat/sessions/{session_id}/archive)",
        code="purge_required",
    )


def _sandbox_exists(sandbox_id: str | None) -> Conflict:
    return Conflict(
        "this sandbox still exists: its agent holds these conversations, and the chat sync would copy purged "
        "ones back. Archive them instead, or delete the sandbox first (its chats are kept, then purge them)",
        code="sandbox_exists",
        details={"sandbox_id": sandbox_id},
    )


async def _out(db: DbSession, item: user_chats.UserSession) -> UserChatSessionOut:
    counts = await chat.child_counts(db, [item.row.id])
    return UserChatSessionOut.from_user_session(item, counts.get(item.row.id, 0))


# --- Reads ----------------------------------------------------------------------------------------


@router.get("")
async def list_sessions(
    user: CurrentUser,
    db: DbSession,
    filters: SessionFilters,
    sandbox_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="Only this sandbox's sessions (live or deleted).")
    ] = None,
    sandbox_exists: Annotated[
        bool | None, Query(description="`true`: only live sandboxes' sessions; `false`: only deleted ones'.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> UserChatSessionList:
    """Your sessions in every sandbox, live and deleted, most recently active first; each names its sandbox."""
    after = session_cursor(cursor)
    page = await user_chats.list_sessions(
        db,
        user.id,
        sandbox_id=sandbox_id,
        sandbox_exists=sandbox_exists,
        filters=filters,
        limit=limit,
        after=after,
    )
    return UserChatSessionList(
        sessions=[
            UserChatSessionOut.from_user_session(item, page.child_counts.get(item.row.id, 0)) for item in page.sessions
        ],
        next_cursor=page.next_key.encode() if page.next_key else None,
        total=page.total,
    )


@router.get("/{session_id}")
async def get_session(session: OwnedUserChatSession, db: DbSession, include_raw: bool = False) -> UserChatSessionDetail:
    """One session with its newest messages (oldest first) and its subagent sessions."""
    page = await chat.message_page(db, session.row.id, limit=DETAIL_MESSAGES, with_content=include_raw)
    children = await user_chats.children(db, session.row)
    counts = await chat.child_counts(db, [session.row.id, *(child.row.id for child in children)])
    return UserChatSessionDetail(
        session=UserChatSessionOut.from_user_session(session, counts.get(session.row.id, 0)),
        has_more=page.has_older,
        children=[UserChatSessionOut.from_user_session(child, counts.get(child.row.id, 0)) for child in children],
        **page_fields(page, include_raw, None),
    )


@router.get("/{session_id}/messages", response_model=ChatMessagePage)
async def list_messages(
    session: OwnedUserChatSession,
    db: DbSession,
    before: Cursor = None,
    after: Cursor = None,
    limit: MessageLimit = 50,
    include_raw: bool = False,
) -> Response:
    """Messages in chronological order, paged like a sandbox's chat: the newest page, or ``before`` / ``after``."""
    return await message_page_response(db, session.row.id, before, after, limit, include_raw)


# --- Writes ---------------------------------------------------------------------------------------


@router.post("/{session_id}/archive")
async def archive_session(
    session: OwnedUserChatSession,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("chat.session_archive", entity="chat_session", id_param="session_id")],
) -> UserChatSessionOut:
    """Archive the session (hidden from the default list, history kept), in a live or a deleted sandbox.
    Idempotent."""
    if await chat.archive_session(db, session.row):
        await entry.record(db, sandbox_id=session.sandbox_id)
        await db.commit()
    else:
        entry.skip()  # already archived (or deleted upstream): nothing changed
    return await _out(db, session)


@router.post("/{session_id}/unarchive")
async def unarchive_session(
    session: OwnedUserChatSession,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("chat.session_unarchive", entity="chat_session", id_param="session_id")],
) -> UserChatSessionOut:
    """Make an archived session active again (listed by default). Idempotent."""
    if await chat.unarchive_session(db, session.row):
        await entry.record(db, sandbox_id=session.sandbox_id)
        await db.commit()
    else:
        entry.skip()  # not archived: nothing changed
    return await _out(db, session)


@router.delete("/{session_id}")
async def purge_session(
    session: OwnedUserChatSession,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("chat.session_purge", entity="chat_session", id_param="session_id")],
    purge: Purge = False,
) -> ChatPurged:
    """Delete a deleted sandbox's session for good, with its messages and subagent sessions.

    400 ``purge_required`` without ``purge=true``; 409 ``sandbox_exists`` while its sandbox exists.
    """
    if not purge:
        raise _purge_required("this session and its messages")
    if session.sandbox_exists:
        raise _sandbox_exists(session.sandbox_id)
    purged = await user_chats.purge_session(db, session.row)
    await entry.record(db, sandbox_id=session.sandbox_id, sessions=purged.sessions, messages=purged.messages)
    await db.commit()
    return ChatPurged.of(purged)


@router.delete("")
async def purge_deleted_sandbox(
    user: CurrentUser,
    db: DbSession,
    sandbox_id: SandboxId,
    entry: Annotated[AuditEntry, audit("chat.sandbox_purge", entity="sandbox")],
    purge: Purge = False,
) -> ChatPurged:
    """Delete for good every session and message kept from the deleted sandbox ``sandbox_id``.

    400 ``purge_required`` without ``purge=true``; 409 ``sandbox_exists`` for a live sandbox; 404
    ``sandbox_not_found`` when no deleted sandbox of yours with this id has sessions left.
    """
    if not purge:
        raise _purge_required("every chat session and message of this deleted sandbox")
    if await sandboxes.get_owned(db, user.id, sandbox_id) is not None:
        raise _sandbox_exists(sandbox_id)
    purged = await user_chats.purge_deleted_sandbox(db, user.id, sandbox_id)
    if not purged.sessions:
        raise NotFound("no deleted sandbox of yours with this id has chat sessions left", code="sandbox_not_found")
    await entry.record(db, entity_id=sandbox_id, sessions=purged.sessions, messages=purged.messages)
    await db.commit()
    return ChatPurged.of(purged)
