"""The recent versions of each user's preferences, for history and undo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, utcnow

HISTORY_ACTIONS = ("create", "update", "replace", "reset", "restore")


class UserPreferencesHistory(Base):
    """One version of a user's preferences: the full values, and what produced them.

    Versions of a user are contiguous (every change adds exactly one); only the newest few are
    kept (``store.preferences.HISTORY_LIMIT``).
    """

    __tablename__ = "user_preferences_history"
    __table_args__ = (
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint(
            "action IN ('create', 'update', 'replace', 'reset', 'restore')",
            name="action_valid",
        ),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    snapshot: Mapped[dict[str, Any]]
    action: Mapped[str] = mapped_column(String(16))
    changed_fields: Mapped[list[Any]] = mapped_column(default=list)
    restored_from: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
