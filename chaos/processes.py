"""The stack as real processes: the Temporal dev server, worker(s) and API(s), each killable and restartable.

Every process is a child in its own process group with its output appended to a log file in the run's
temporary directory. A supervisor restarts any process that died without the monkey killing it (as a
process manager would) and counts those exits: an unexpected exit is a finding, never hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_ATTRIBUTES = ("AgentpodUserId", "AgentpodSandboxId", "AgentpodStatus")
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def temporal_binary() -> str:
    """The ``temporal`` CLI next to this interpreter (``make venv`` installs it), else on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which("temporal", path=str(here)) or shutil.which("temporal")
    if found is None:
        raise RuntimeError("the `temporal` CLI is not installed: run `make venv`")
    return found


@dataclass
class Managed:
    """One long-running process of the stack."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    port: int | None = None  # the port it serves on, if any (readiness)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    killed_on_purpose: bool = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Spawn the process (appending to its log)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                process_group=0,
            )
        self.starts += 1
        self.killed_on_purpose = False

    def kill(self) -> None:
        """SIGKILL the whole process group (no shutdown hooks run: a crash, not a stop)."""
        if self.proc is None:
            return
        self.killed_on_purpose = True
        self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """A polite stop (SIGINT, then SIGKILL after ``grace``), for the end of the run."""
        if not self.alive():
            return
        assert self.proc is not None
        self.killed_on_purpose = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def ready(self) -> bool:
        return self.alive() and (self.port is None or port_open(self.port))

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """Temporal + workers + APIs of one chaos run, sharing one environment."""

    def __init__(self, root: Path, env: dict[str, str], *, workers: int, apis: int) -> None:
        self.root = root
        self.env = env
        self.logs = root / "logs"
        self.temporal_port = free_port()
        python = sys.executable
        temporal_cmd = [
            temporal_binary(), "server", "start-dev",
            "--ip", "127.0.0.1",
            "--port", str(self.temporal_port),
            "--headless",
            "--db-filename", str(root / "temporal.db"),
            "--namespace", "default",
            "--log-level", "warn",
        ]  # fmt: skip
        for attribute in SEARCH_ATTRIBUTES:
            temporal_cmd += ["--search-attribute", f"{attribute}=Keyword"]
        self.temporal_address = f"127.0.0.1:{self.temporal_port}"
        base = {**env, "AGENTPOD_TEMPORAL_ADDRESS": self.temporal_address, "PYTHONUNBUFFERED": "1"}
        self.temporal = Managed("temporal", temporal_cmd, base, root, self.logs / "temporal.log", self.temporal_port)
        self.workers = [
            Managed(f"worker{i}", [python, "-m", "agentpod.cli", "worker"], base, root, self.logs / f"worker{i}.log")
            for i in range(workers)
        ]
        self.apis: list[Managed] = []
        for i in range(apis):
            port = free_port()
            api_env = {**base, "AGENTPOD_API_HOST": "127.0.0.1", "AGENTPOD_API_PORT": str(port)}
            cmd = [python, "-m", "agentpod.cli", "api"]
            self.apis.append(Managed(f"api{i}", cmd, api_env, root, self.logs / f"api{i}.log", port))
        self._supervisor: asyncio.Task[None] | None = None
        self._paused: set[str] = set()  # processes the monkey has killed and will restart itself

    @property
    def all(self) -> list[Managed]:
        return [self.temporal, *self.workers, *self.apis]

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{api.port}" for api in self.apis]

    def migrate(self) -> None:
        """``agentpod db upgrade`` against the run's database."""
        out = subprocess.run(
            [sys.executable, "-m", "agentpod.cli", "db", "upgrade"],
            env={**self.env, "AGENTPOD_TEMPORAL_ADDRESS": self.temporal_address},
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"migration failed:\n{out.stdout}\n{out.stderr}")

    async def start(self) -> None:
        """Temporal first (the worker needs it), then workers and APIs; wait until all are ready."""
        self.temporal.start()
        await self.wait_ready([self.temporal])
        for process in [*self.workers, *self.apis]:
            process.start()
        await self.wait_ready(self.all)
        self._supervisor = asyncio.create_task(self._supervise(), name="chaos-supervisor")

    async def wait_ready(self, processes: list[Managed], timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not all(p.ready() for p in processes):
            for p in processes:
                if not p.alive() and p.name not in self._paused and p.proc is not None:
                    code = p.proc.poll()
                    if p.name == "temporal" or time.monotonic() > deadline:
                        raise RuntimeError(f"{p.name} exited ({code}) before it was ready:\n{p.tail()}")
            if time.monotonic() > deadline:
                late = [p.name for p in processes if not p.ready()]
                raise RuntimeError(f"not ready within {timeout:.0f} s: {', '.join(late)}")
            await asyncio.sleep(0.2)

    def pause(self, process: Managed) -> None:
        """The monkey is about to kill ``process`` and restarts it itself: the supervisor keeps off."""
        self._paused.add(process.name)

    def resume(self, process: Managed) -> None:
        self._paused.discard(process.name)

    async def _supervise(self) -> None:
        """Restart whatever died on its own (a crash the monkey did not cause), and note it."""
        while True:
            await asyncio.sleep(0.5)
            for process in self.all:
                if process.name in self._paused or process.alive() or process.proc is None:
                    continue
                code = process.proc.poll()
                if not process.killed_on_purpose:
                    process.unexpected_exits.append(f"exit code {code} at {time.strftime('%H:%M:%S')}")
                await asyncio.sleep(1.0)
                if process.name not in self._paused and not process.alive():
                    process.start()

    async def ensure_up(self) -> None:
        """Every process running and listening (after the monkey's last restart)."""
        self._paused.clear()
        for process in self.all:
            if not process.alive():
                process.start()
        await self.wait_ready(self.all)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for process in [*self.apis, *self.workers]:
            await asyncio.to_thread(process.stop)
        await asyncio.to_thread(self.temporal.stop)
