"""One ACP agent subprocess (e.g. ``opencode acp``), shared by all of its sessions.

The process is started on first use, spoken to over stdio with the ``agent-client-protocol`` SDK
(the gateway is the ACP *client*), and watched: when it exits, the gateway is told so it can fail
the turns and permission requests that were waiting on it; the next use starts a new process.

``spec`` may be replaced while the process runs: it applies from the next start. :meth:`AgentProcess.recycle`
stops the process (when the gateway knows nothing uses it) so that the next use starts it with the new spec.
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
        # The spec for the next start; the running process may have been started with an older one.
        self.spec = spec
        self.started_spec: AgentSpec | None = None
        self.workspace = workspace
        self.state: AgentState = "stopped"
        self.error: str | None = None
        self.info: InitializeResponse | None = None
        # Sessions this process knows: created here, or resumed/loaded since it started.
        self.attached: set[str] = set()
        # session/new, /load and /resume calls this process answered: some agents keep a whole process
        # for each (Claude Code), also when the same session is loaded again.
        self.opened = 0
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
    def active(self) -> bool:
        """A process is starting or running."""
        return self.state in ("starting", "running")

    @property
    def stopping(self) -> bool:
        """A stop was asked for and the process has not left yet."""
        return self._stopping and self.active

    @property
    def outdated(self) -> bool:
        """The running process was started with another command, args or env than :attr:`spec`."""
        return self.started_spec is not None and not self.started_spec.same_launch(self.spec)

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
        # Capabilities of the last process that initialized (None before the first one did).
        known = self.info is not None
        return {
            "id": self.spec.id,
            "name": self.spec.display_name,
            "state": self.state,
            "error": self.error,
            "agent_info": info.model_dump(mode="json", by_alias=True, exclude_none=True) if info else None,
            "load_session": self.can_load if known else None,
            "resume": self.can_resume if known else None,
            "restart_pending": self.outdated,
        }

    @property
    def live_connection(self) -> ClientSideConnection | None:
        """The connection if the process runs now (never starts one)."""
        return self._conn if self.state == "running" else None

    async def connection(self) -> ClientSideConnection:
        """The live connection, starting the process first if needed."""
        if self._conn is not None and self.state == "running" and not self._stopping:
            return self._conn
        async with self._lock:
            if self._stopping and self._proc is not None:
                # recycle() was asked for but has not run yet: finish it before starting anew.
                await self.stop()
            if self._conn is None or self.state != "running":
                await self._start()
            assert self._conn is not None
            return self._conn

    async def _start(self) -> None:
        self.state, self.error, self._stopping = "starting", None, False
        # The spec may change while this process starts; `outdated` compares with this one.
        spec = self.spec
        env = {**child_environment(), **spec.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.command,
                *spec.args,
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
            self.state, self.error = "failed", f"cannot start {spec.command!r}: {exc}"
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
        self._proc, self._conn, self.started_spec = proc, conn, spec
        # A new process knows no session: the gateway re-attaches each one on its next use.
        self.attached = set()
        self.opened = 0
        self.state = "running"
        self._watcher = asyncio.create_task(self._watch(proc, conn), name=f"agent-{self.spec.id}-watch")
        log.info("agent %s started (pid %s)", self.spec.id, proc.pid)

    async def _watch(self, proc: asyncio.subprocess.Process, conn: ClientSideConnection) -> None:
        code = await proc.wait()
        # Fails every request still waiting for an answer from this process (ConnectionError).
        await conn.close()
        if self._proc is proc:
            self._proc, self._conn, self.started_spec = None, None, None
            self.attached = set()
            self.opened = 0
            if self._stopping:
                self.state = "stopped"
            else:
                self.state, self.error = "exited", f"{self.spec.id} exited with code {code}"
                log.warning("agent %s (pid %s) exited with code %s", self.spec.id, proc.pid, code)
        if not self._stopping:
            self._on_exit(self, code)

    def recycle(self) -> asyncio.Task[None]:
        """Stop the running process so that the next use starts one with the current :attr:`spec`.

        The caller makes sure nothing uses the process. From this call on no new use picks it: a
        :meth:`connection` waits for the stop, then starts a new process.
        """
        self._stopping = True
        return asyncio.create_task(self._recycle(), name=f"agent-{self.spec.id}-recycle")

    async def _recycle(self) -> None:
        async with self._lock:
            # A connection() that got the lock first has already stopped (and maybe restarted) it.
            if self._stopping and self._proc is not None:
                log.info("agent %s (pid %s): stopping it, its configuration changed", self.spec.id, self._proc.pid)
                await self.stop()

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
