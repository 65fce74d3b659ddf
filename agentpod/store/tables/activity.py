"""The audit trail (90 days hot) and its anonymized permanent archive."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, false
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, utcnow


class ActivityLog(IdMixin, Base):
    """One thing a user (or the system on their behalf) did."""

    __tablename__ = "activity_log"
    __table_args__ = (
        # Keyset pagination of one user's trail, newest first.
        Index("ix_activity_log_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_activity_log_action", "action"),
        Index("ix_activity_log_entity_type_entity_id", "entity_type", "entity_id"),
        Index("ix_activity_log_created_at", "created_at"),
    )

    # SET NULL: the deletion saga anonymizes rows; they outlive the user until archival.
    user_id: Mapped[str | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str | None] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(128))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    anonymized: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ActivityLogArchive(Base):
    """An archived activity row with every personal field removed. The id is the original row's."""

    __tablename__ = "activity_log_archive"
    __table_args__ = (
        Index("ix_activity_log_archive_original_created_at", "original_created_at"),
        Index("ix_activity_log_archive_action", "action"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str | None] = mapped_column(String(32))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    original_created_at: Mapped[datetime]
    archived_at: Mapped[datetime] = mapped_column(default=utcnow)
