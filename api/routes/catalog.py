"""The product catalog the app shows when creating a sandbox (public: no token needed)."""

from __future__ import annotations

from fastapi import APIRouter

from agentpod.store import catalog
from api.deps import DbSession
from api.errors import ERROR_RESPONSES
from api.schemas.catalog import AddonOut, FlavorOut, TierOut

router = APIRouter(prefix="/api/catalog", tags=["catalog"], responses=ERROR_RESPONSES)


@router.get("/tiers")
async def tiers(db: DbSession) -> list[TierOut]:
    """Resource tiers (CPU, memory, disk)."""
    return [TierOut.model_validate(row) for row in await catalog.list_tiers(db)]


@router.get("/flavors")
async def flavors(db: DbSession) -> list[FlavorOut]:
    """Container flavors (language toolchains)."""
    return [FlavorOut.model_validate(row) for row in await catalog.list_flavors(db)]


@router.get("/addons")
async def addons(db: DbSession) -> list[AddonOut]:
    """Optional add-ons (code-server, VNC)."""
    return [AddonOut.model_validate(row) for row in await catalog.list_addons(db)]
