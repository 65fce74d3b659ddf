"""Real HTTP servers and SSE clients for push tests and the push benchmark.

Streams need a real server: ``httpx.ASGITransport`` buffers a whole response, so an endless SSE
response never arrives through it. :func:`serve` runs uvicorn in this process on a free port,
:func:`serve_process` runs it as a separate process (separate notifier, separate database pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from agentpod.notify import create_notifier
from agentpod.security.keyring import generate_entry
from agentpod.settings import Settings, get_settings
from api.app import create_app
from api.routes import preferences

REPO_ROOT = Path(__file__).resolve().parents[2]
STREAM_PATH = "/api/users/me/preferences/stream"


def preferences_app(settings: Settings) -> FastAPI:
    """The API app with the preferences router and a notifier on the context.

    ``api.app.create_app`` mounts and starts both once they are wired in; until then this adds
    them, and afterwards it changes nothing.
    """
    app = create_app(settings)
    if not any(getattr(route, "path", None) == STREAM_PATH for route in app.routes):
        app.include_router(preferences.router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        async with inner(app_):
            if getattr(app_.state.ctx, "notifier", None) is not None:
                yield
                return
            notifier = create_notifier(settings.resolved_database_url)
            await notifier.start()
            app_.state.ctx.notifier = notifier
            try:
                yield
            finally:
                await notifier.close()

    app.router.lifespan_context = lifespan
    return app


def create_test_app() -> FastAPI:
    """``uvicorn --factory`` entry point: settings from the environment."""
    return preferences_app(get_settings())


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` (lifespan included) under uvicorn in this event loop; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def server_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a server process with ``settings``' database, data dir and Temporal address."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENTPOD_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "AGENTPOD_DEV_MODE": "true",
            "AGENTPOD_DATA_DIR": str(settings.data_dir),
            "AGENTPOD_DATABASE_URL": settings.resolved_database_url,
            "AGENTPOD_TEMPORAL_ADDRESS": settings.temporal_address,
            # One explicit key: processes sharing a data dir must not race to generate a dev key.
            "AGENTPOD_ENCRYPTION_KEYS": generate_entry("test"),
            **extra,
        }
    )
    return env


@asynccontextmanager
async def serve_process(env: dict[str, str], *, startup_seconds: float = 30.0) -> AsyncIterator[str]:
    """Run the API as its own uvicorn process; yields its base URL once it answers."""
    port = free_port()
    # Started outside the repository, so a developer's .env cannot shape the server.
    workdir = Path(env.get("AGENTPOD_DATA_DIR", REPO_ROOT))
    workdir.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.notify.servers:create_test_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "1",
        env=env,
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_seconds
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=2) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"API process exited with {process.returncode} during startup")
                with contextlib.suppress(httpx.TransportError):
                    await client.get("/api/health")  # any answer (503 without Temporal) means it serves
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"API process on port {port} not answering after {startup_seconds} s")
                await asyncio.sleep(0.1)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class Device:
    """One connected ``/stream``: a background reader collecting ``preferences`` events."""

    base_url: str
    token: str
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    ended: bool = False

    async def start(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Connect; returns the first event (the current state)."""
        self._task = asyncio.create_task(self._read())
        return await self.next_event(timeout=timeout)

    async def next_event(self, *, timeout: float = 1.0) -> dict[str, Any]:
        """The next event's data (with ``_id`` and ``_received`` (monotonic) added)."""
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def wait_ended(self, *, timeout: float) -> None:
        """Wait until the server ends the stream (fails after ``timeout`` s)."""
        assert self._task is not None, "start() first"
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)
        assert self.ended

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            httpx.AsyncClient(base_url=self.base_url, trust_env=False, timeout=httpx.Timeout(10, read=None)) as client,
            aconnect_sse(client, "GET", STREAM_PATH, headers=headers) as source,
        ):
            source.response.raise_for_status()
            self.connected.set()
            async for event in source.aiter_sse():
                if event.event == "preferences":
                    data = json.loads(event.data)
                    data["_id"] = event.id
                    data["_received"] = time.monotonic()
                    await self.events.put(data)
        self.ended = True
