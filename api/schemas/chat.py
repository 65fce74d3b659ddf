"""Bodies of the chat endpoints: a sandbox's chat (``/api/v2/sandboxes/{sandbox_id}/chat``) and the user's
sessions across sandboxes, deleted ones included (``/api/v2/chat/sessions``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import Row

from agentpod.store.tables import ChatMessage, ChatSession
from agentpod.store.user_chats import Purged, UserSession
from api.schemas.base import RequestBody, ResponseBody

MAX_MESSAGE_CHARS = 100_000


class ChatSessionOut(ResponseBody):
    """A conversation. Subagent sessions carry ``parent_session_id``; parents count them in ``child_count``."""

    id: str
    source: str = Field(description="`opencode` or `acp_gateway`.")
    opencode_session_id: str | None
    acp_session_id: str | None
    acp_agent_id: str | None
    title: str | None
    status: str = Field(description="`active`, `archived` (by the user) or `deleted` (deleted in the agent).")
    parent_session_id: str | None
    child_count: int
    message_count: int
    user_message_count: int
    assistant_message_count: int
    total_input_tokens: int
    total_output_tokens: int
    last_message_at: datetime | None
    upstream_created_at: datetime | None
    upstream_updated_at: datetime | None
    missing_upstream: bool = Field(description="The agent no longer has this session; our copy is kept.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: ChatSession, child_count: int = 0) -> ChatSessionOut:
        """Build from a row plus its number of subagent sessions."""
        return cls.model_validate(
            {
                **{name: getattr(row, name) for name in cls.model_fields if hasattr(row, name)},
                "child_count": child_count,
                "missing_upstream": row.missing_upstream_at is not None,
            }
        )


class TokenUsage(BaseModel):
    """Tokens one message used."""

    input: int
    output: int
    reasoning: int
    cache_read: int
    cache_write: int


class ChatMessageOut(ResponseBody):
    """One message, normalized; the agent's raw parts are in ``content`` only with ``include_raw=true``."""

    id: str
    session_id: str
    external_message_id: str = Field(description="The agent's own id (`msg_…` for OpenCode).")
    source: str
    role: str
    status: str = Field(description="`streaming`, `complete`, `error`, `cancelled` or `interrupted`.")
    text: str | None
    thinking: str | None
    tool_calls: list[Any] | None
    tool_results: list[Any] | None
    model_provider: str | None
    model_id: str | None
    agent_id: str | None
    tokens: TokenUsage
    cost: Decimal = Field(description="USD, as a decimal string.")
    error_message: str | None
    upstream_created_at: datetime | None
    upstream_completed_at: datetime | None
    missing_upstream: bool
    updated_at: datetime
    content: dict[str, Any] | None = Field(None, description="Raw upstream parts; null unless `include_raw=true`.")

    @classmethod
    def from_row(cls, row: ChatMessage, *, include_raw: bool = False) -> ChatMessageOut:
        """Build from a stored message."""
        return cls.model_validate(_message_data(functools.partial(getattr, row), include_raw))


# The fields of ChatMessageOut read straight from a chat_messages row (a test keeps the list complete).
_MESSAGE_COLUMNS = tuple(
    name for name in ChatMessageOut.model_fields if name not in ("tokens", "missing_upstream", "content")
)


def _message_data(get: Callable[[str], Any], include_raw: bool) -> dict[str, Any]:
    data: dict[str, Any] = {name: get(name) for name in _MESSAGE_COLUMNS}
    data["tokens"] = {
        "input": get("input_tokens"),
        "output": get("output_tokens"),
        "reasoning": get("reasoning_tokens"),
        "cache_read": get("cache_read_tokens"),
        "cache_write": get("cache_write_tokens"),
    }
    data["missing_upstream"] = get("missing_upstream_at") is not None
    data["content"] = get("content") if include_raw else None
    return data


def message_page_data(rows: Sequence[Row[Any]], *, include_raw: bool) -> list[dict[str, Any]]:
    """A page's rows as the plain data of :class:`ChatMessageOut`, for the page body to validate in one call.

    The hot path of every chat page: the column names are read once per page (a row's ``_asdict`` and
    a validation per message were a fifth of a page's CPU).
    """
    if not rows:
        return []
    names = rows[0]._fields
    return [_message_data(dict(zip(names, row, strict=True)).__getitem__, include_raw) for row in rows]


class ChatSessionList(ResponseBody):
    """A page of sessions; pass ``next_cursor`` as ``cursor`` for the next one (null: last page)."""

    sessions: list[ChatSessionOut]
    next_cursor: str | None
    total: int = Field(description="Sessions matching the filters, over all pages.")


class ChatMessagePage(ResponseBody):
    """Messages in chronological order.

    Pass ``older_cursor`` as ``before`` to go back in time and ``newer_cursor`` as ``after`` to go forward
    (also later, to fetch what arrived since). Cursors are null only when the page is empty and no
    cursor was given.
    """

    messages: list[ChatMessageOut]
    has_older: bool
    has_newer: bool
    older_cursor: str | None
    newer_cursor: str | None


class ChatSessionDetail(ResponseBody):
    """A session, its newest messages (chronological) and its subagent sessions."""

    session: ChatSessionOut
    messages: list[ChatMessageOut]
    has_more: bool = Field(description="Older messages exist: page with `older_cursor` as `before`.")
    older_cursor: str | None
    newer_cursor: str | None
    children: list[ChatSessionOut]


class ChatSessionCreate(RequestBody):
    """Start a conversation in the sandbox's OpenCode."""

    title: Annotated[str, Field(min_length=1, max_length=500)] | None = None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be blank")
    return value


# What a user types to an agent (OpenCode or ACP): sent as typed, never blank.
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS), AfterValidator(_not_blank)]


class ChatMessageCreate(RequestBody):
    """A prompt for the agent. ``text`` is sent as typed (whitespace kept)."""

    model_config = ConfigDict(str_strip_whitespace=False)

    text: PromptText
    model: Annotated[str, Field(max_length=400, pattern=r"^[^/\s]+/\S+$")] | None = Field(
        None, description="`provider/model`, e.g. `anthropic/claude-sonnet-4`; the agent's default when absent."
    )
    agent: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None = None


class ChatMessageAccepted(ResponseBody):
    """The prompt was handed to the agent; the reply arrives through the stream and the message list."""

    session_id: str
    message_id: str = Field(description="The user message's upstream id: its `external_message_id` once synced.")


class ChatAbortAccepted(ResponseBody):
    """The agent was asked to stop the current turn."""

    session_id: str


# --- The user's sessions across sandboxes (/api/v2/chat/sessions) -------------------------------------


class UserChatSessionOut(ChatSessionOut):
    """A session of one of the user's sandboxes, live or deleted, with the sandbox it was held in."""

    sandbox_id: str | None = Field(
        description="The sandbox, live or deleted; null only for a session kept without that record."
    )
    sandbox_name: str | None = Field(description="The sandbox's name now, or the name it had when it was deleted.")
    sandbox_exists: bool = Field(description="False: the sandbox was deleted and this session was kept.")
    sandbox_deleted_at: datetime | None

    @classmethod
    def from_user_session(cls, item: UserSession, child_count: int = 0) -> UserChatSessionOut:
        """Build from a session and what the user sees of its sandbox."""
        return cls.model_validate(
            {
                **ChatSessionOut.from_row(item.row, child_count).model_dump(),
                "sandbox_id": item.sandbox_id,
                "sandbox_name": item.sandbox_name,
                "sandbox_exists": item.sandbox_exists,
                "sandbox_deleted_at": item.row.sandbox_deleted_at,
            }
        )


class UserChatSessionList(ResponseBody):
    """A page of the user's sessions; pass ``next_cursor`` as ``cursor`` for the next one (null: last page)."""

    sessions: list[UserChatSessionOut]
    next_cursor: str | None
    total: int = Field(description="Sessions matching the filters, over all pages.")


class UserChatSessionDetail(ResponseBody):
    """A session, its newest messages (chronological) and its subagent sessions."""

    session: UserChatSessionOut
    messages: list[ChatMessageOut]
    has_more: bool = Field(description="Older messages exist: page with `older_cursor` as `before`.")
    older_cursor: str | None
    newer_cursor: str | None
    children: list[UserChatSessionOut]


class ChatPurged(ResponseBody):
    """What a purge deleted for good (subagent sessions count as sessions)."""

    sessions_purged: int
    messages_purged: int

    @classmethod
    def of(cls, purged: Purged) -> ChatPurged:
        """Build from the store's count."""
        return cls(sessions_purged=purged.sessions, messages_purged=purged.messages)
