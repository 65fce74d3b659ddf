"""Per-user app settings, versioned so a stale device can never overwrite newer ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String, true
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin

THEME_MODES = ("light", "dark", "system")
AUTO_REFRESH_MIN_SECONDS = 5
AUTO_REFRESH_MAX_SECONDS = 300


class UserPreferences(IdMixin, TimestampsMixin, Base):
    """The current settings of one user (one row per user)."""

    __tablename__ = "user_preferences"
    __table_args__ = (
        CheckConstraint("theme_mode IN ('light', 'dark', 'system')", name="theme_mode_valid"),
        CheckConstraint(
            f"auto_refresh_interval BETWEEN {AUTO_REFRESH_MIN_SECONDS} AND {AUTO_REFRESH_MAX_SECONDS}",
            name="auto_refresh_interval_range",
        ),
        CheckConstraint("settings_version >= 1", name="settings_version_positive"),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), unique=True)
    theme_mode: Mapped[str] = mapped_column(String(16), default="system", server_default="system")
    theme_preset: Mapped[str] = mapped_column(String(64), default="default-neutral", server_default="default-neutral")
    auto_refresh_interval: Mapped[int] = mapped_column(default=30, server_default="30")
    in_app_notifications: Mapped[bool] = mapped_column(default=True, server_default=true())
    system_notifications: Mapped[bool] = mapped_column(default=True, server_default=true())
    default_resource_tier_id: Mapped[str | None] = mapped_column(ForeignKey("resource_tiers.id", ondelete="SET NULL"))
    default_flavor_id: Mapped[str | None] = mapped_column(ForeignKey("container_flavors.id", ondelete="SET NULL"))
    default_addon_ids: Mapped[list[Any]] = mapped_column(default=list)
    default_agent_id: Mapped[str] = mapped_column(String(64), default="opencode", server_default="opencode")
    settings_version: Mapped[int] = mapped_column(default=1, server_default="1")
