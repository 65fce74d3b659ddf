"""Sandboxes: the database row is the source of truth, Docker is reconciled to it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin

SANDBOX_STATUSES = ("created", "starting", "running", "stopping", "stopped", "error")


class Sandbox(IdMixin, TimestampsMixin, Base):
    """One user's cloud sandbox (a container running OpenCode and the ACP gateway)."""

    __tablename__ = "sandboxes"
    __table_args__ = (
        UniqueConstraint("user_id", "slug"),
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in SANDBOX_STATUSES) + ")", name="status_valid"),
        Index("ix_sandboxes_user_id_created_at", "user_id", "created_at"),
        Index("ix_sandboxes_status", "status"),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    repo_name: Mapped[str] = mapped_column(String(200))
    github_url: Mapped[str | None] = mapped_column(String(2048))
    resource_tier_id: Mapped[str] = mapped_column(ForeignKey("resource_tiers.id"))
    flavor_id: Mapped[str] = mapped_column(ForeignKey("container_flavors.id"))
    addon_ids: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="created", server_default="created")
    error_message: Mapped[str | None] = mapped_column(Text)
    container_id: Mapped[str | None] = mapped_column(String(128))
    container_name: Mapped[str | None] = mapped_column(String(128))
    opencode_url: Mapped[str | None] = mapped_column(String(2048))
    # Where the control plane itself reaches OpenCode (loopback port), whatever the public URL is.
    opencode_internal_url: Mapped[str | None] = mapped_column(String(2048))
    acp_gateway_url: Mapped[str | None] = mapped_column(String(2048))
    # Where the control plane reaches the sandbox's ACP gateway (loopback port).
    acp_internal_url: Mapped[str | None] = mapped_column(String(2048))
    code_server_url: Mapped[str | None] = mapped_column(String(2048))
    vnc_url: Mapped[str | None] = mapped_column(String(2048))
    last_accessed_at: Mapped[datetime | None]
