"""Long-running processes: the API, the worker, and the whole embedded dev stack."""

from __future__ import annotations

import asyncio
import os
import sys

import typer


def register(app: typer.Typer) -> None:
    """Attach the process commands to the root CLI."""

    @app.command()
    def api(
        host: str | None = typer.Option(None, help="Interface to bind (default from settings)."),
        port: int | None = typer.Option(None, help="Port to listen on (default from settings)."),
    ) -> None:
        """Serve the REST API with uvicorn."""
        import uvicorn

        from agentpod.settings import get_settings

        settings = get_settings()
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host or settings.api_host,
            port=port or settings.api_port,
            proxy_headers=False,  # X-Forwarded-For is judged by our own trusted-proxy list
            log_level="info",
        )

    @app.command()
    def worker() -> None:
        """Run the Temporal worker (every workflow and activity of the project)."""
        from worker import run_worker

        asyncio.run(run_worker())
        # The Temporal core can abort in interpreter teardown after a clean shutdown
        # (sdk-python#300, "PyGILState_Release"): leave without running it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    @app.command()
    def dev() -> None:
        """Run everything on the embedded defaults: migrate, Temporal dev server + UI, worker, API."""
        from agentpod.cli.dev import run_dev_stack

        raise typer.Exit(run_dev_stack())
