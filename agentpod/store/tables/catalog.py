"""The product catalog: resource tiers, container flavors and add-ons (seeded by migration)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, Numeric, String, Text, false, true
from sqlalchemy.orm import Mapped, mapped_column

from agentpod.store.base import Base, TimestampsMixin


class ResourceTier(TimestampsMixin, Base):
    """CPU, memory and disk a sandbox gets."""

    __tablename__ = "resource_tiers"
    __table_args__ = (
        CheckConstraint("cpu_cores > 0", name="cpu_positive"),
        CheckConstraint("memory_gb > 0", name="memory_positive"),
        CheckConstraint("storage_gb > 0", name="storage_positive"),
        CheckConstraint("price_monthly >= 0", name="price_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    cpu_cores: Mapped[int]
    memory_gb: Mapped[int]
    storage_gb: Mapped[int]
    price_monthly: Mapped[Decimal] = mapped_column(Numeric(10, 2), server_default="0")
    is_default: Mapped[bool] = mapped_column(server_default=false())
    enabled: Mapped[bool] = mapped_column(server_default=true())
    sort_order: Mapped[int] = mapped_column(server_default="0")


class ContainerFlavor(TimestampsMixin, Base):
    """A language toolchain bundle; maps to a container image through configuration."""

    __tablename__ = "container_flavors"
    __table_args__ = (CheckConstraint("image_size_mb >= 0", name="size_not_negative"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    languages: Mapped[list[Any]] = mapped_column(default=list)
    image_size_mb: Mapped[int] = mapped_column(server_default="0")
    is_default: Mapped[bool] = mapped_column(server_default=false())
    enabled: Mapped[bool] = mapped_column(server_default=true())
    sort_order: Mapped[int] = mapped_column(server_default="0")


class ContainerAddon(TimestampsMixin, Base):
    """An optional extra in a sandbox (code-server, VNC desktop); ``port`` is published when chosen."""

    __tablename__ = "container_addons"
    __table_args__ = (
        CheckConstraint("port IS NULL OR (port > 0 AND port < 65536)", name="port_range"),
        CheckConstraint("price_monthly >= 0", name="price_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32))
    port: Mapped[int | None]
    image_size_mb: Mapped[int] = mapped_column(server_default="0")
    requires_gpu: Mapped[bool] = mapped_column(server_default=false())
    price_monthly: Mapped[Decimal] = mapped_column(Numeric(10, 2), server_default="0")
    enabled: Mapped[bool] = mapped_column(server_default=true())
    sort_order: Mapped[int] = mapped_column(server_default="0")
