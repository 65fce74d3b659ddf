"""Liveness and dependency health."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Response, status

from agentpod.store.migrate import SchemaOutOfDateError, assert_schema_current
from api.deps import Context
from api.schemas.health import ComponentHealth, HealthOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["health"])

_TIMEOUT_SECONDS = 3.0


def _version() -> str:
    try:
        return version("agentpod-control-plane")
    except PackageNotFoundError:
        return "dev"


def _unreachable(component: str, exc: BaseException) -> str:
    """The public reason (the endpoint needs no token: no hosts, ports or driver messages); the log has it all."""
    log.warning("health: %s unreachable: %s: %s", component, type(exc).__name__, exc)
    return f"unreachable ({type(exc).__name__})"


async def _database(ctx: Context) -> ComponentHealth:
    try:
        await asyncio.wait_for(assert_schema_current(ctx.engine), _TIMEOUT_SECONDS)
    except SchemaOutOfDateError as exc:
        return ComponentHealth(ok=False, detail=str(exc))
    except Exception as exc:  # any failure to reach the database is "not ok"
        return ComponentHealth(ok=False, detail=_unreachable("database", exc))
    return ComponentHealth(ok=True)


async def _temporal(ctx: Context) -> ComponentHealth:
    try:
        serving = await asyncio.wait_for(ctx.temporal.service_client.check_health(), _TIMEOUT_SECONDS)
    except Exception as exc:  # unreachable, timeout, auth: all mean "not ok"
        return ComponentHealth(ok=False, detail=_unreachable("Temporal", exc))
    return ComponentHealth(ok=serving, detail=None if serving else "not serving")


@router.get("/health", responses={503: {"model": HealthOut, "description": "A dependency is down"}})
async def health(ctx: Context, response: Response) -> HealthOut:
    """Whether the database (at the current schema) and Temporal are reachable. 503 when not."""
    database, temporal = await asyncio.gather(_database(ctx), _temporal(ctx))
    healthy = database.ok and temporal.ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(status="ok" if healthy else "degraded", database=database, temporal=temporal, version=_version())
