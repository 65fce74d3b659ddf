"""Body of the health endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ComponentHealth(BaseModel):
    """One dependency's state."""

    ok: bool
    detail: str | None = None


class HealthOut(BaseModel):
    """Overall status plus each dependency."""

    status: Literal["ok", "degraded"]
    database: ComponentHealth
    temporal: ComponentHealth
    version: str
