"""Identity: users, their OAuth links and their bearer-token sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, IdMixin, TimestampsMixin


class User(IdMixin, TimestampsMixin, Base):
    """A person using the mobile app. ``email`` is stored lower-cased, so uniqueness is case-insensitive."""

    __tablename__ = "user"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    email_verified: Mapped[bool] = mapped_column(default=False, server_default=false())
    image: Mapped[str | None] = mapped_column(String(2048))
    # Set by the account-deletion saga: a locked account cannot sign in or use old tokens.
    locked_at: Mapped[datetime | None]


class OAuthAccount(IdMixin, TimestampsMixin, Base):
    """A link between a user and an external identity (GitHub, Google, ...)."""

    __tablename__ = "account"
    __table_args__ = (UniqueConstraint("provider_id", "account_id"),)

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(255))
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    refresh_token_encrypted: Mapped[str | None] = mapped_column(Text)
    access_token_expires_at: Mapped[datetime | None]
    scope: Mapped[str | None] = mapped_column(String(1024))


class AuthSession(IdMixin, Base):
    """One signed-in device. Only the SHA-256 of the opaque bearer token is stored."""

    __tablename__ = "session"
    __table_args__ = (Index("ix_session_user_id_expires_at", "user_id", "expires_at"),)

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
