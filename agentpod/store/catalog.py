"""Queries for the product catalog (read-mostly reference data)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.store.tables import ContainerAddon, ContainerFlavor, ResourceTier


async def list_tiers(db: AsyncSession) -> Sequence[ResourceTier]:
    """Enabled resource tiers, cheapest first."""
    return (await db.scalars(select(ResourceTier).where(ResourceTier.enabled).order_by(ResourceTier.sort_order))).all()


async def list_flavors(db: AsyncSession) -> Sequence[ContainerFlavor]:
    """Enabled container flavors in display order."""
    return (
        await db.scalars(select(ContainerFlavor).where(ContainerFlavor.enabled).order_by(ContainerFlavor.sort_order))
    ).all()


async def list_addons(db: AsyncSession) -> Sequence[ContainerAddon]:
    """Enabled add-ons in display order."""
    return (
        await db.scalars(select(ContainerAddon).where(ContainerAddon.enabled).order_by(ContainerAddon.sort_order))
    ).all()
