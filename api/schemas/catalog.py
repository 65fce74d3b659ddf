"""Bodies of the catalog endpoints."""

from __future__ import annotations

from decimal import Decimal

from api.schemas.base import ResponseBody


class TierOut(ResponseBody):
    """A resource tier."""

    id: str
    name: str
    description: str | None
    cpu_cores: int
    memory_gb: int
    storage_gb: int
    price_monthly: Decimal
    is_default: bool


class FlavorOut(ResponseBody):
    """A container flavor."""

    id: str
    name: str
    description: str | None
    languages: list[str]
    image_size_mb: int
    is_default: bool


class AddonOut(ResponseBody):
    """An optional add-on."""

    id: str
    name: str
    description: str | None
    category: str
    port: int | None
    image_size_mb: int
    requires_gpu: bool
    price_monthly: Decimal
