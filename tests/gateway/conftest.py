"""Fixtures: a gateway in this process (or as a child process) running the real ``opencode acp``
against the fake LLM, with OpenCode set to *ask* before running bash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio
from agentpod_gateway.config import AgentSpec
from agentpod_gateway.core import Gateway
from agentpod_gateway.events import EventLog
from agentpod_gateway.http import SecretSource
from agentpod_gateway.server import GatewayServer

from tests.fakes.fake_llm import FakeLLM
from tests.fakes.opencode_server import free_port, opencode_config

SECRET = "test-gateway-secret-0123456789"
HEARTBEAT = 0.3
REPO_ROOT = Path(__file__).resolve().parents[2]


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Sandbox:
    """What a sandbox gives an agent: a workspace with the OpenCode config and a private HOME."""

    root: Path
    workspace: Path
    home: Path
    state_dir: Path

    def agent_env(self) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_STATE_HOME": str(self.home / ".local" / "state"),
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            # Makes OpenCode send session/request_permission before every bash tool call.
            "OPENCODE_PERMISSION": json.dumps({"bash": "ask"}),
        }
        rg = shutil.which("rg")
        if rg:  # OpenCode would otherwise try to download ripgrep
            env["PATH"] = os.pathsep.join([os.path.dirname(rg), os.environ.get("PATH", "")])
        return env

    def agents(self, binary: str) -> dict[str, AgentSpec]:
        spec = AgentSpec(id="opencode", name="OpenCode", command=binary, args=("acp",), env=self.agent_env())
        return {"opencode": spec}


def make_sandbox(root: Path, llm: FakeLLM) -> Sandbox:
    sandbox = Sandbox(root, root / "workspace", root / "home", root / "gateway-state")
    sandbox.workspace.mkdir(parents=True)
    sandbox.home.mkdir(parents=True)
    (sandbox.workspace / "opencode.json").write_text(json.dumps(opencode_config(llm.base_url)))
    return sandbox


@dataclass
class InProcessGateway:
    gateway: Gateway
    server: GatewayServer
    sandbox: Sandbox

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def client(self, secret: str | None = SECRET) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers=auth(secret) if secret else {}, timeout=30)


async def start_in_process(sandbox: Sandbox, binary: str, *, buffer_size: int = 10_000) -> InProcessGateway:
    gateway = Gateway(
        sandbox.agents(binary),
        workspace=sandbox.workspace,
        state_dir=sandbox.state_dir,
        events=EventLog(buffer_size),
    )
    server = GatewayServer(
        gateway, SecretSource(secret=SECRET), host="127.0.0.1", port=0, heartbeat=HEARTBEAT, log_level="warning"
    )
    await server.start()
    return InProcessGateway(gateway, server, sandbox)


@pytest_asyncio.fixture(scope="module")
async def gw(opencode_binary: str, fake_llm: FakeLLM, tmp_path_factory) -> AsyncIterator[InProcessGateway]:
    """One gateway (and so one ``opencode acp``) shared by a test module."""
    running = await start_in_process(make_sandbox(tmp_path_factory.mktemp("sandbox"), fake_llm), opencode_binary)
    try:
        yield running
    finally:
        await running.server.stop()


@pytest_asyncio.fixture
async def client(gw: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gw.client() as http:
        yield http


class GatewayProcess:
    """``python -m agentpod_gateway`` as a child process, the way the image runs it (secret from a file)."""

    def __init__(self, sandbox: Sandbox, binary: str) -> None:
        self.sandbox = sandbox
        self.port = free_port()
        self.secret_file = sandbox.root / "gateway-secret"
        self.secret_file.write_text(SECRET + "\n")
        self.agents_file = sandbox.root / "agents.json"
        spec = sandbox.agents(binary)["opencode"]
        self.agents_file.write_text(
            json.dumps({"agents": {"opencode": {"command": spec.command, "args": list(spec.args), "env": spec.env}}})
        )
        self.log_path = sandbox.root / "gateway.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers=auth(), timeout=30)

    async def start(self, timeout: float = 30.0) -> None:
        # The developer's own OpenCode settings must not reach the agent.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentpod_gateway",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--secret-file={self.secret_file}",
                f"--agents={self.agents_file}",
                f"--state-dir={self.sandbox.state_dir}",
                f"--workspace={self.sandbox.workspace}",
                f"--heartbeat={HEARTBEAT}",
                cwd=REPO_ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1) as http:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"gateway exited with {self._proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"gateway not healthy:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (what `docker stop` or the entrypoint sends) and wait for the exit."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"gateway ignored SIGTERM for {timeout} s:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
