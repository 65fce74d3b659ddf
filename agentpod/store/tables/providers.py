"""LLM provider credentials, encrypted at rest (AES-256-GCM, see ``security.encryption``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin


class ProviderCredential(IdMixin, TimestampsMixin, Base):
    """One user's key or OAuth tokens for one LLM provider. Never returned in clear."""

    __tablename__ = "provider_credentials"
    __table_args__ = (
        UniqueConstraint("user_id", "provider_id"),
        CheckConstraint("auth_type IN ('api_key', 'oauth', 'device_flow')", name="auth_type_valid"),
        # At most one default provider per user (the origin system kept one global default).
        Index(
            "uq_provider_credentials_default_per_user",
            "user_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    provider_id: Mapped[str] = mapped_column(String(64))
    auth_type: Mapped[str] = mapped_column(String(16), default="api_key", server_default="api_key")
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    refresh_token_encrypted: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None]
    oauth_provider: Mapped[str | None] = mapped_column(String(64))
    oauth_scopes: Mapped[list[Any] | None]
    # Last four characters of the secret, so the app can show "sk-…abcd" without decrypting.
    key_hint: Mapped[str | None] = mapped_column(String(8))
    is_default: Mapped[bool] = mapped_column(default=False, server_default=false())
