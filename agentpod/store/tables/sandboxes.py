"""Sandboxes: the database row is the source of truth, Docker is reconciled to it."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column, validates

from agentpod.store.base import Base, IdMixin, TimestampsMixin

SANDBOX_STATUSES = ("created", "starting", "running", "stopping", "stopped", "error")
# A name of 100 characters folds to at most 400 code points (one folds to at most four).
NAME_KEY_MAX = 400


def sandbox_name_key(name: str) -> str:
    """What makes two of a user's sandbox names the same: Unicode caseless, canonical-equivalent.

    ``App``, ``APP`` and ``app`` are one name, and so are ``Straße`` / ``STRASSE`` and a precomposed
    ``é`` / ``e`` + combining accent. Computed here rather than by the database's ``lower()``, which
    folds only ASCII on SQLite and follows the collation on PostgreSQL.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def _name_key_default(context: DefaultExecutionContext) -> str:
    # Core inserts (bulk loads) that give only the name still get the right key.
    parameters = context.get_current_parameters()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
    return sandbox_name_key(parameters["name"])


class Sandbox(IdMixin, TimestampsMixin, Base):
    """One user's cloud sandbox (a container running OpenCode and the ACP gateway)."""

    __tablename__ = "sandboxes"
    __table_args__ = (
        UniqueConstraint("user_id", "slug"),
        # The database, not a read before the insert, keeps a user's names distinct: parallel creates
        # and renames all passed such a read. Rows are deleted outright, so a name is free once its
        # sandbox's deletion has finished.
        Index("uq_sandboxes_user_id_name_key", "user_id", "name_key", unique=True),
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in SANDBOX_STATUSES) + ")", name="status_valid"),
        Index("ix_sandboxes_user_id_created_at", "user_id", "created_at"),
        Index("ix_sandboxes_status", "status"),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    # sandbox_name_key(name), kept by the ORM. The server default only lets SQLite add the NOT NULL
    # column in place (rebuilding the table would cascade-delete chat history); nothing relies on it.
    name_key: Mapped[str] = mapped_column(String(NAME_KEY_MAX), default=_name_key_default, server_default="")
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
    # The user changed their agent config, files or keys and the running agent has not reloaded yet.
    config_pending: Mapped[bool] = mapped_column(default=False, server_default=false())

    @validates("name")
    def _keep_name_key(self, _field: str, name: str) -> str:
        """Every ORM write of the name (create, rename) writes its key with it."""
        self.name_key = sandbox_name_key(name)
        return name
