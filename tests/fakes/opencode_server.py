"""A real ``opencode serve`` on the host, wired to the fake LLM, for integration tests.

The binary is the pinned one ``images/build.sh`` extracts (``make image``), or ``AGENTPOD_OPENCODE_BIN``,
or an ``opencode`` on ``PATH`` of the pinned version. Each :class:`OpenCodeProcess` gets its own HOME and
XDG dirs (so its own SQLite store) and a project directory whose ``opencode.json`` points the provider
``fake`` at a :class:`~tests.fakes.fake_llm.FakeLLM`; nothing is downloaded.

Fixtures (import them into a test module, or list this module in ``pytest_plugins``):

* ``fake_llm`` (session): one fake LLM for the whole run; filter its requests by prompt text.
* ``opencode_binary`` (session): path of the binary, or skip (fail under ``CI=true``).
* ``opencode`` (function): a started server in the test's ``tmp_path``, stopped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from agentpod.clients.opencode import JSON, OpenCodeClient
from tests.fakes.fake_llm import MODEL_ID, FakeLLM
from tests.requirements import missing

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "images" / "build.sh"
FALLBACK_VERSION = "1.18.34"
PROVIDER_ID = "fake"
MODEL = (PROVIDER_ID, MODEL_ID)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


@cache
def pinned_version() -> str:
    """The OpenCode version images/build.sh pins (the image and these tests must agree)."""
    env = os.environ.get("AGENTPOD_OPENCODE_VERSION")
    if env:
        return env
    with contextlib.suppress(OSError):
        found = re.search(r"^DEFAULT_OPENCODE_VERSION=(\S+)", BUILD_SCRIPT.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return FALLBACK_VERSION


def _version_of(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[-1].strip() if lines else None


@cache
def find_opencode_binary() -> str | None:
    """``AGENTPOD_OPENCODE_BIN``, else the binary build.sh extracted, else ``opencode`` on PATH if its
    version is the pinned one (a different version would test another API)."""
    explicit = os.environ.get("AGENTPOD_OPENCODE_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    extracted = REPO_ROOT / "images" / ".build" / "opencode" / pinned_version() / "opencode"
    if os.access(extracted, os.X_OK):
        return str(extracted)
    on_path = shutil.which("opencode")
    if on_path and _version_of(on_path) == pinned_version():
        return on_path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def opencode_config(llm_base_url: str) -> dict[str, Any]:
    """Project config: the fake provider as both model and small_model (title generation)."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake LLM",
                "options": {"baseURL": llm_base_url, "apiKey": "sk-fake"},
                "models": {
                    MODEL_ID: {
                        "name": "Fake Model",
                        "tool_call": True,
                        "reasoning": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
        "model": f"{PROVIDER_ID}/{MODEL_ID}",
        "small_model": f"{PROVIDER_ID}/{MODEL_ID}",
        "autoupdate": False,
        "share": "disabled",
    }


class OpenCodeProcess:
    """One ``opencode serve`` child process with its own state under ``root``.

    ``root/state`` is HOME + XDG dirs (OpenCode's SQLite store lives there), ``root/project`` the
    working directory with ``opencode.json``, ``root/serve.log`` stdout+stderr of every run.
    The port is chosen once, so :meth:`restart` keeps the URL and the store.
    """

    def __init__(
        self,
        binary: str,
        root: Path,
        llm_base_url: str,
        *,
        port: int | None = None,
        password: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.root = root
        self.state_dir = root / "state"
        self.project_dir = root / "project"
        self.log_path = root / "serve.log"
        self.port = port or free_port()
        self.password = password
        self.llm_base_url = llm_base_url
        self.extra_env = dict(extra_env or {})
        self.start_seconds: float | None = None  # spawn -> healthy, of the last start
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def auth(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth("opencode", self.password) if self.password else None

    def env(self) -> dict[str, str]:
        home = self.state_dir / "home"
        # The developer's own OPENCODE_* settings must not leak into the test server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            OPENCODE_DISABLE_MODELS_FETCH="1",
            OPENCODE_DISABLE_AUTOUPDATE="1",
            OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        )
        # OpenCode downloads ripgrep on first grep unless one is on PATH.
        rg = shutil.which("rg")
        if rg and os.path.dirname(rg) not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = os.pathsep.join([os.path.dirname(rg), env.get("PATH", "")])
        if self.password:
            env["OPENCODE_SERVER_PASSWORD"] = self.password
        env.update(self.extra_env)
        return env

    def _prepare(self) -> None:
        (self.state_dir / "home").mkdir(parents=True, exist_ok=True)
        self.project_dir.mkdir(parents=True, exist_ok=True)
        config = opencode_config(self.llm_base_url)
        (self.project_dir / "opencode.json").write_text(json.dumps(config, indent=2))

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn and wait until ``GET /global/health`` says healthy."""
        if self.running:
            raise RuntimeError("opencode is already running")
        self._prepare()
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary,
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                str(self.port),
                cwd=self.project_dir,
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: stop/kill also reaches what the agent's tools spawned.
                start_new_session=True,
            )
        try:
            await self._wait_healthy(started + timeout)
        except BaseException:
            await self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    async def _wait_healthy(self, deadline: float) -> None:
        # Short per-request timeouts: a request that lands while the server is still binding can hang.
        async with httpx.AsyncClient(base_url=self.base_url, auth=self.auth(), timeout=1.0) as http:
            while True:
                if not self.running:
                    raise RuntimeError(f"opencode exited with {self.returncode()} during start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await http.get("/global/health")
                    if response.status_code == 200 and response.json().get("healthy") is True:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"opencode not healthy at {self.base_url}:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (SIGKILL = crash, SIGTERM = orderly stop) and reap it."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        await proc.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            await self.kill(signal.SIGKILL)
        # Whatever the tools left in the group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def restart(self) -> None:
        """Stop if running, then start again on the same port with the same store."""
        await self.stop()
        await self.start()


class EventTap:
    """Reads ``client.events()`` in a background task so a test can prompt, then wait for events.

    ``async with EventTap(client) as tap:`` returns once ``server.connected`` arrived (so nothing the
    test does afterwards is missed). :attr:`events` holds everything so far; :attr:`error` the exception
    the stream raised, if any; :attr:`ended` is set when the stream stopped (EOF or error).
    """

    def __init__(self, client: OpenCodeClient) -> None:
        self.client = client
        self.events: list[JSON] = []
        self.error: BaseException | None = None
        self.ended = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventTap:
        self._task = asyncio.create_task(self._run())
        await self.wait_for(lambda e: e["type"] == "server.connected")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            async for event in self.client.events():
                self.events.append(event)
                async with self._changed:
                    self._changed.notify_all()
        except Exception as exc:  # recorded for the test to assert on
            self.error = exc
        finally:
            self.ended.set()
            async with self._changed:
                self._changed.notify_all()

    def mark(self) -> int:
        """Index to pass as ``since`` to only look at events after this point."""
        return len(self.events)

    async def wait_for(self, predicate: Callable[[JSON], bool], *, since: int = 0, timeout: float = 30.0) -> JSON:
        """The first event from index ``since`` on that matches; raises if the stream ends or times out."""
        found: list[JSON] = []

        def ready() -> bool:
            found[:] = [e for e in self.events[since:] if predicate(e)][:1]
            return bool(found) or self.ended.is_set()

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                seen = [e["type"] for e in self.events[since:]]
                raise TimeoutError(f"no matching event within {timeout} s; got {seen}") from None
        if not found:
            raise AssertionError(f"event stream ended ({self.error!r}) before a matching event")
        return found[0]

    async def wait_idle(self, session_id: str, *, since: int = 0, timeout: float = 30.0) -> JSON:
        """The ``session.idle`` that ends a turn of ``session_id``."""
        return await self.wait_for(
            lambda e: e["type"] == "session.idle" and e["properties"].get("sessionID") == session_id,
            since=since,
            timeout=timeout,
        )

    def of_session(self, session_id: str, *, since: int = 0) -> list[JSON]:
        """Events after ``since`` that concern ``session_id``."""
        return [e for e in self.events[since:] if session_of(e) == session_id]


def session_of(event: JSON) -> str | None:
    """The session an ``/event`` frame is about, if any."""
    props = event.get("properties", {})
    sid = props.get("sessionID") or props.get("info", {}).get("sessionID") or props.get("part", {}).get("sessionID")
    return sid if isinstance(sid, str) else None


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    """The fake OpenAI-compatible LLM, shared by the whole test run."""
    llm = FakeLLM.start()
    try:
        yield llm
    finally:
        llm.stop()


@pytest.fixture(scope="session")
def opencode_binary() -> str:
    binary = find_opencode_binary()
    if binary is None:
        missing(
            f"the OpenCode {pinned_version()} binary was not found: run `make image` (extracts it into "
            "images/.build/), or set AGENTPOD_OPENCODE_BIN"
        )
    return binary


@pytest_asyncio.fixture
async def opencode(opencode_binary: str, fake_llm: FakeLLM, tmp_path: Path) -> AsyncIterator[OpenCodeProcess]:
    """A started OpenCode server with its own store, talking to ``fake_llm``; stopped afterwards."""
    process = OpenCodeProcess(opencode_binary, tmp_path / "opencode", fake_llm.base_url)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()
