"""One ACP agent subprocess (e.g. ``opencode acp``), shared by all of its sessions.

The process is started on first use, spoken to over stdio with the ``agent-client-protocol`` SDK
(the gateway is the ACP *client*), and watched: when it exits, the gateway is told so it can fail
the turns and permission requests that were waiting on it; the next use starts a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from acp import PROTOCOL_VERSION, Client, connect_to_agent
from acp.client.connection import ClientSideConnection
from acp.schema import ClientCapabilities, FileSystemCapabilities, Implementation, InitializeResponse

from agentpod_gateway import __version__
from agentpod_gateway.config import AgentSpec
from agentpod_gateway.errors import AgentUnavailable

log = logging.getLogger(__name__)

AgentState = Literal["stopped", "starting", "running", "exited", "failed"]

# ACP messages are single JSON lines; tool output or embedded files can make one far larger than
# asyncio's 64 KiB default line limit (the SDK itself uses 50 MiB for stdio).
STDIO_LIMIT = 50 * 1024 * 1024
INITIALIZE_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0


class AcpHandler(Protocol):
    """What the gateway does with the requests and notifications an agent sends it."""

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any) -> Any: ...

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None: ...


class AgentProcess:
    """Lifecycle of one agent's subprocess and its ACP connection."""

    def __init__(
        self,
        spec: AgentSpec,
        workspace: Path,
        handler: AcpHandler,
        on_exit: Callable[[AgentProcess, int | None], None],
    ) -> None:
        self.spec = spec
        self.workspace = workspace
        self.state: AgentState = "stopped"
        self.error: str | None = None
        self.info: InitializeResponse | None = None
        # Sessions this process knows: created here, or resumed/loaded since it started.
        self.attached: set[str] = set()
        self._handler = handler
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._conn: ClientSideConnection | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def can_resume(self) -> bool:
        caps = self.info.agent_capabilities if self.info else None
        return bool(caps and caps.session_capabilities and caps.session_capabilities.resume is not None)

    @property
    def can_load(self) -> bool:
        caps = self.info.agent_capabilities if self.info else None
        return bool(caps and caps.load_session)

    def describe(self) -> dict[str, Any]:
        info = self.info.agent_info if self.info else None
        return {
            "id": self.spec.id,
            "name": self.spec.display_name,
            "state": self.state,
            "error": self.error,
            "agent_info": info.model_dump(mode="json", by_alias=True, exclude_none=True) if info else None,
        }

    @property
    def live_connection(self) -> ClientSideConnection | None:
        """The connection if the process runs now (never starts one)."""
        return self._conn if self.state == "running" else None

    async def connection(self) -> ClientSideConnection:
        """The live connection, starting the process first if needed."""
        if self._conn is not None and self.state == "running":
            return self._conn
        async with self._lock:
            if self._conn is None or self.state != "running":
                await self._start()
            assert self._conn is not None
            return self._conn

    async def _start(self) -> None:
        self.state, self.error, self._stopping = "starting", None, False
        env = {**child_environment(), **self.spec.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.spec.command,
                *self.spec.args,
                cwd=self.workspace,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the agent's own diagnostics go to the gateway's stderr (container log)
                limit=STDIO_LIMIT,
                # Own process group, so stopping the agent also stops what its tools started.
                start_new_session=True,
            )
        except OSError as exc:
            self.state, self.error = "failed", f"cannot start {self.spec.command!r}: {exc}"
            raise AgentUnavailable(self.error) from exc
        assert proc.stdin is not None and proc.stdout is not None
        # The SDK's router answers "method not found" for the client methods this handler lacks
        # (fs/*, terminal/*): the capabilities sent below tell the agent not to use them.
        conn = connect_to_agent(cast(Client, self._handler), proc.stdin, proc.stdout)
        try:
            self.info = await asyncio.wait_for(
                conn.initialize(
                    protocol_version=PROTOCOL_VERSION,
                    client_capabilities=ClientCapabilities(
                        fs=FileSystemCapabilities(read_text_file=False, write_text_file=False), terminal=False
                    ),
                    client_info=Implementation(name="agentpod-gateway", version=__version__),
                ),
                INITIALIZE_TIMEOUT,
            )
        except (Exception, asyncio.CancelledError) as exc:
            await conn.close()
            await _terminate(proc)
            self.state, self.error = "failed", f"{self.spec.id}: initialize failed: {exc!r}"
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise AgentUnavailable(self.error) from exc
        self._proc, self._conn = proc, conn
        self.attached = set()
        self.state = "running"
        self._watcher = asyncio.create_task(self._watch(proc, conn), name=f"agent-{self.spec.id}-watch")
        log.info("agent %s started (pid %s)", self.spec.id, proc.pid)

    async def _watch(self, proc: asyncio.subprocess.Process, conn: ClientSideConnection) -> None:
        code = await proc.wait()
        # Fails every request still waiting for an answer from this process (ConnectionError).
        await conn.close()
        if self._proc is proc:
            self._proc, self._conn = None, None
            self.attached = set()
            if self._stopping:
                self.state = "stopped"
            else:
                self.state, self.error = "exited", f"{self.spec.id} exited with code {code}"
                log.warning("agent %s (pid %s) exited with code %s", self.spec.id, proc.pid, code)
        if not self._stopping:
            self._on_exit(self, code)

    async def stop(self) -> None:
        """Close stdin (ACP agents exit on EOF), then SIGTERM, then SIGKILL the process group."""
        self._stopping = True
        proc, conn, watcher = self._proc, self._conn, self._watcher
        if conn is not None:
            await conn.close()
        if proc is not None:
            await _terminate(proc)
        if watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self.state = "stopped"


def child_environment() -> dict[str, str]:
    """The gateway's environment as an agent should see it.

    Frozen by PyInstaller, the gateway runs with ``LD_LIBRARY_PATH`` pointing at its bundled
    libraries (and ``_PYI_*`` markers); an agent and the tools it runs must get the system's own.
    """
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
            del env[key]
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = original
    return env


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            break
    # Tools the agent started may still be in its group after the agent itself left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
