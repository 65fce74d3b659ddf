"""The user's OpenCode configuration (settings JSON, AGENTS.md) and custom agent/command files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin


class UserOpencodeConfig(IdMixin, TimestampsMixin, Base):
    """``opencode.json`` settings and AGENTS.md. Secrets inside settings are stored encrypted apart."""

    __tablename__ = "user_opencode_config"

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # MCP environment values and headers, lifted out of ``settings`` and encrypted as one blob.
    secrets_encrypted: Mapped[str | None] = mapped_column(Text)
    agents_md: Mapped[str | None] = mapped_column(Text)


class UserOpencodeFile(IdMixin, TimestampsMixin, Base):
    """A custom agent, command, tool or plugin file placed in the user's OpenCode config dir."""

    __tablename__ = "user_opencode_files"
    __table_args__ = (
        UniqueConstraint("user_id", "type", "name"),
        CheckConstraint("type IN ('agent', 'command', 'tool', 'plugin')", name="type_valid"),
        CheckConstraint("extension IN ('md', 'ts', 'js')", name="extension_valid"),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    extension: Mapped[str] = mapped_column(String(4), default="md", server_default="md")
    content: Mapped[str] = mapped_column(Text)
    is_system: Mapped[bool] = mapped_column(default=False, server_default=false())
