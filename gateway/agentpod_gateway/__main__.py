"""``agentpod-gateway`` / ``python -m agentpod_gateway``: the ACP gateway of one sandbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from agentpod_gateway import __version__
from agentpod_gateway.config import load_agents
from agentpod_gateway.core import Gateway
from agentpod_gateway.events import DEFAULT_BUFFER_SIZE, DEFAULT_HEARTBEAT_SECONDS, EventLog
from agentpod_gateway.http import SecretSource
from agentpod_gateway.server import GatewayServer
from agentpod_gateway.watch import DEFAULT_POLL_SECONDS, AgentsFileWatcher

DEFAULT_SECRET_FILE = "/run/agentpod/gateway-secret"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "agentpod-gateway"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentpod-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4097)
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=Path(DEFAULT_SECRET_FILE),
        help="file holding the bearer secret (re-read when it changes; until it exists: 503)",
    )
    parser.add_argument(
        "--agents",
        type=Path,
        help="JSON file adding or replacing agents (see config.py); followed while the gateway runs, may appear later",
    )
    parser.add_argument(
        "--agents-poll",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help="how often the agents file is checked for changes, in seconds (0: read it once at start)",
    )
    parser.add_argument("--workspace", type=Path, default=None, help="default session cwd (default: current dir)")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="where the session index lives (default: $XDG_STATE_HOME/…)"
    )
    parser.add_argument("--buffer-size", type=int, default=DEFAULT_BUFFER_SIZE, help="events kept for replay")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_SECONDS, help="SSE keep-alive (s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    watcher = AgentsFileWatcher(args.agents, interval=args.agents_poll) if args.agents is not None else None
    # Missing or invalid at start: the built-in agents, until a version that loads appears.
    agents = (watcher.poll() if watcher is not None else None) or load_agents(None)
    gateway = Gateway(
        agents,
        workspace=(args.workspace or Path.cwd()).resolve(),
        state_dir=args.state_dir or _default_state_dir(),
        events=EventLog(args.buffer_size),
    )
    server = GatewayServer(
        gateway,
        SecretSource(path=args.secret_file),
        host=args.host,
        port=args.port,
        heartbeat=args.heartbeat,
        log_level=args.log_level,
    )
    logging.getLogger("gateway").info(
        "agentpod-gateway %s on %s:%s, epoch %s", __version__, args.host, server.port, gateway.events.epoch
    )
    follow = (
        asyncio.create_task(watcher.follow(gateway), name="agents-file")
        if watcher is not None and args.agents_poll > 0
        else None
    )
    try:
        await server.serve()
    finally:
        if follow is not None:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
