"""The FastAPI application factory (``uvicorn --factory api.app:create_app``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agentpod import temporal
from agentpod.heap import settle_heap
from agentpod.logging import install_log_redaction
from agentpod.notify import create_notifier
from agentpod.security import passwords
from agentpod.security.keyring import load_keyring
from agentpod.settings import Settings, get_settings
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import assert_schema_current
from api.audit import running_audit_writer
from api.client_ip import parse_networks
from api.context import AppContext
from api.errors import install_error_handlers
from api.live_streams import running_live_streams
from api.middleware import BodySizeLimitMiddleware, RejectNulMiddleware, RequestIdMiddleware
from api.routes import ROUTERS

log = logging.getLogger(__name__)

API_TITLE = "AgentPod Control Plane"
API_VERSION = "1.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Startup refuses a weak keyring or an out-of-date schema, with the fix in the message."""
    settings = settings or get_settings()
    # Whichever server runs the app (`agentpod api`, uvicorn --factory, tests), its access log and ours
    # never carry the deletion-status credential.
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keyring = load_keyring(settings)
        engine = create_engine(settings.resolved_database_url)
        # Change notifications (preference pushes): LISTEN/NOTIFY on PostgreSQL, in-process on SQLite.
        notifier = create_notifier(settings.resolved_database_url)
        passwords.start_workers(settings.password_workers)
        try:
            await assert_schema_current(engine)
            await notifier.start()
            app.state.ctx = AppContext(
                settings=settings,
                engine=engine,
                sessions=session_factory(engine),
                keyring=keyring,
                # Lazy: the API serves (and reports Temporal down in /api/health) while Temporal starts.
                temporal=await temporal.connect(settings, lazy=True),
                trusted_proxies=parse_networks(settings.trusted_proxies),
                notifier=notifier,
            )
            settle_heap()  # everything built so far lives as long as the process
            async with running_audit_writer(app, app.state.ctx.sessions), running_live_streams(app, app.state.ctx):
                yield
        finally:
            passwords.stop_workers()
            await notifier.close()
            await engine.dispose()

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="REST API of the AgentPod control plane for the mobile app. "
        'Every error uses the shape `{"error": {"code", "message", "details", "request_id"}}`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Added last = outermost: the request id exists before anything else can fail.
    app.add_middleware(RejectNulMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
