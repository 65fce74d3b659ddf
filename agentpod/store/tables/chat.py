"""Chat history mirrored from the agents (OpenCode and ACP), keyed by upstream ids."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin, utcnow

CHAT_SOURCES = ("opencode", "acp_gateway")
SESSION_STATUSES = ("active", "archived", "deleted")
MESSAGE_ROLES = ("user", "assistant", "system")
# "interrupted": an assistant turn the agent never completed (its server was killed mid-reply).
MESSAGE_STATUSES = ("streaming", "complete", "error", "cancelled", "interrupted")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class ChatSession(IdMixin, TimestampsMixin, Base):
    """A conversation in one sandbox. Survives container recreation, upstream loss and the sandbox itself.

    Deleting a sandbox keeps its sessions (the user's until purged or the account goes):
    ``store.sandboxes.delete_row`` copies the sandbox's id and name into ``deleted_sandbox_*`` and the
    foreign key then sets ``sandbox_id`` to NULL. So a live sandbox's session has ``sandbox_id`` and no
    ``deleted_sandbox_id``; a kept one the other way round.
    """

    __tablename__ = "chat_sessions"
    __table_args__ = (
        # Upserts from the sync are keyed on these: never two rows for one upstream session.
        UniqueConstraint("sandbox_id", "opencode_session_id"),
        UniqueConstraint("sandbox_id", "acp_session_id"),
        CheckConstraint(_one_of("source", CHAT_SOURCES), name="source_valid"),
        CheckConstraint(_one_of("status", SESSION_STATUSES), name="status_valid"),
        CheckConstraint(
            "message_count >= 0 AND user_message_count >= 0 AND assistant_message_count >= 0",
            name="counts_not_negative",
        ),
        Index("ix_chat_sessions_sandbox_id_last_message_at", "sandbox_id", "last_message_at"),
        Index("ix_chat_sessions_user_id", "user_id"),
        Index("ix_chat_sessions_parent_session_id", "parent_session_id"),
        # The chat stream polls "what changed since (updated_at, id)" per sandbox.
        Index("ix_chat_sessions_sandbox_id_updated_at_id", "sandbox_id", "updated_at", "id"),
        # The sessions kept from one deleted sandbox: listed, and purged, together.
        Index("ix_chat_sessions_deleted_sandbox_id", "deleted_sandbox_id"),
    )

    # NULL once the sandbox is deleted (its sessions stay; the sandbox's name and quota slot are freed).
    sandbox_id: Mapped[str | None] = mapped_column(ForeignKey("sandboxes.id", ondelete="SET NULL"))
    # What the deleted sandbox was: written with the deletion, NULL while the sandbox exists. Not a
    # foreign key: the sandbox row is gone.
    deleted_sandbox_id: Mapped[str | None] = mapped_column(String(36))
    deleted_sandbox_name: Mapped[str | None] = mapped_column(String(100))
    sandbox_deleted_at: Mapped[datetime | None]
    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    opencode_session_id: Mapped[str | None] = mapped_column(String(128))
    acp_session_id: Mapped[str | None] = mapped_column(String(128))
    acp_agent_id: Mapped[str | None] = mapped_column(String(64))
    # Subagent sessions link to the session that spawned them instead of leaking into the list.
    parent_session_id: Mapped[str | None] = mapped_column(ForeignKey("chat_sessions.id", ondelete="SET NULL"))
    title: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    message_count: Mapped[int] = mapped_column(default=0, server_default="0")
    user_message_count: Mapped[int] = mapped_column(default=0, server_default="0")
    assistant_message_count: Mapped[int] = mapped_column(default=0, server_default="0")
    total_input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    total_output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    upstream_created_at: Mapped[datetime | None]
    upstream_updated_at: Mapped[datetime | None]
    # Set when the agent's own store no longer has this session (e.g. recreated container):
    # our copy is kept and flagged, never deleted.
    missing_upstream_at: Mapped[datetime | None]
    last_message_at: Mapped[datetime | None]
    last_synced_at: Mapped[datetime | None]


class ChatMessage(IdMixin, TimestampsMixin, Base):
    """One message: raw upstream parts in ``content`` plus normalized columns for fast reads."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        UniqueConstraint("session_id", "external_message_id"),
        CheckConstraint(_one_of("role", MESSAGE_ROLES), name="role_valid"),
        CheckConstraint(_one_of("status", MESSAGE_STATUSES), name="status_valid"),
        CheckConstraint(_one_of("source", CHAT_SOURCES), name="source_valid"),
        # Reads page by upstream time then upstream id, never by insert time.
        Index("ix_chat_messages_session_id_upstream_created_at", "session_id", "upstream_created_at", "id"),
        Index("ix_chat_messages_updated_at_id", "updated_at", "id"),
    )

    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"))
    external_message_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    text: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[Any] | None]
    tool_results: Mapped[list[Any] | None]
    thinking: Mapped[str | None] = mapped_column(Text)
    model_provider: Mapped[str | None] = mapped_column(String(128))
    model_id: Mapped[str | None] = mapped_column(String(256))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cache_read_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cost: Mapped[Decimal] = mapped_column(Numeric(14, 6), default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="streaming", server_default="streaming")
    error_message: Mapped[str | None] = mapped_column(Text)
    upstream_created_at: Mapped[datetime | None]
    upstream_completed_at: Mapped[datetime | None]
    missing_upstream_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class ChatSyncState(Base):
    """The live mirror's status per sandbox (connected, last event, lag, reconnects, last error)."""

    __tablename__ = "chat_sync_state"

    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AcpSyncState(Base):
    """Where the ACP mirror of a sandbox stands: the gateway event it committed last, and its status.

    ``last_event_id`` is written in the same transaction as the rows that event produced, so a
    resumed stream (``Last-Event-ID``) never applies an event twice nor skips one.
    """

    __tablename__ = "acp_sync_state"

    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True)
    last_event_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
