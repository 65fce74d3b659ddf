"""Running the gateway's ASGI app under uvicorn, with a shutdown that lets turns end first."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from agentpod_gateway.core import Gateway
from agentpod_gateway.events import DEFAULT_HEARTBEAT_SECONDS
from agentpod_gateway.http import SecretSource, create_app

log = logging.getLogger(__name__)

# Backstop only: the gateway ends its SSE streams itself during shutdown.
GRACEFUL_SHUTDOWN_TIMEOUT = 10


class _Server(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT also starts :meth:`Gateway.close`.

    uvicorn waits for open connections before its lifespan shutdown runs, and an SSE stream never
    ends by itself; closing the gateway right away cancels the turns (their ``session_end_turn`` still
    goes out), ends the streams and so lets uvicorn finish.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._drain: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None:
            loop = asyncio.get_event_loop()
            # A signal handler may run between two steps of the loop: hand the work to the loop.
            loop.call_soon_threadsafe(self._start_drain)
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.ensure_future(self.gateway.close())


class GatewayServer:
    """The gateway's HTTP server on ``host:port`` (port 0: a free one, see :attr:`port`)."""

    def __init__(
        self,
        gateway: Gateway,
        secret: SecretSource,
        *,
        host: str = "0.0.0.0",
        port: int = 4097,
        heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
        log_level: str = "info",
    ) -> None:
        self.gateway = gateway
        app = create_app(gateway, secret, heartbeat=heartbeat)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            # Pure-Python choices: the same code runs from the standalone build in the image.
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            log_level=log_level,
            # Leave logging alone: uvicorn's records go through the handlers the caller configured.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT,
        )
        self._server = _Server(config, gateway)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self._task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`)."""
        await self._server.serve(sockets=[self._socket])

    async def start(self) -> None:
        """Serve in a background task; returns once the port accepts connections."""
        self._task = asyncio.create_task(self.serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the gateway server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Orderly stop, as on SIGTERM: turns cancelled, streams ended, agents stopped."""
        await self.gateway.close()
        self._server.should_exit = True
        if self._task is not None:
            await self._task
