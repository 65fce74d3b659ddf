"""Fleet scale: one real worker process holding ``SANDBOXES`` OpenCode sync loops (default 500).

Stands up, each as its own process: a Temporal dev server (in memory, free ports), a simulated
OpenCode fleet (``bench/_fleet_sim.py``: one asyncio process serving every sandbox's ``/event``
stream and the REST calls the reconcile makes, under ``/sb/<i>``), and the project's worker
(``agentpod worker`` with ``AGENTPOD_WORKER_MAX_ACTIVITIES`` sized to the fleet; the last phase
checks that the stock settings hold the whole fleet too). The database is
a SQLite file in a temporary directory (``AGENTPOD_BENCH_FLEET_DB=postgresql`` uses a scratch
database next to ``AGENTPOD_TEST_POSTGRES_URL`` instead). One user and ``SANDBOXES`` sandbox rows
are seeded; the benchmark starts one ``OpenCodeSyncWorkflow`` per sandbox (ids from
``workflows/ids.py``) as ``sync_ensure_started`` would.

Phases (the worker's RSS and CPU come from ``/proc/<pid>``, sampled every second):

1. **0 loops** — the idle worker: the memory and CPU baseline.
2. **1 loop** — one sandbox, one chat turn per second: the lag baseline.
3. **ramp** — the other loops start at once (as after a worker restart): time and CPU until every
   sandbox is connected and its history reconciled.
4. **idle** — ``SANDBOXES`` loops, heartbeats only.
5. **busy** — every sandbox plays one chat turn (``_fleet_sim.EVENTS_PER_TURN`` events) every
   ``TURN_SECONDS``, phases spread evenly.
6. **stock worker** — the worker is stopped and ``agentpod worker`` (unchanged) takes over the same
   workflows: how many streams does it hold?

Lag: the simulator stamps each turn's messages with the wall-clock millisecond it emitted them
(``time.created``); the benchmark polls the database every ``POLL_SECONDS`` for rows by
``updated_at`` and records when each message first became visible. The poll interval bounds the
error (lag is overstated by at most ``POLL_SECONDS``). The rows' own ``created_at`` (the writer's
clock at the start of its transaction) gives a second, poll-free figure that leaves out the commit.

Per-sync figures are ``(with N loops - with 0 loops) / N``. The projection to ``PROJECTION``
sandboxes is arithmetic on these figures, printed with its inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from agentpod.domain.chat import SyncTarget, SyncWorkflowInput
from agentpod.settings import Settings
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import upgrade_database
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox, User
from bench._fleet_sim import EVENTS_PER_TURN
from bench._result import Result, console
from bench._stack import SEARCH_ATTRIBUTES, temporal_binary
from bench.bench_sync import _drop_postgres, _scratch_postgres
from workflows.ids import sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

JSON = dict[str, Any]

SANDBOXES = int(os.environ.get("AGENTPOD_BENCH_FLEET_SANDBOXES", "500"))
TURN_SECONDS = float(os.environ.get("AGENTPOD_BENCH_FLEET_TURN_SECONDS", "10"))  # busy: one turn per sandbox
HISTORY = int(os.environ.get("AGENTPOD_BENCH_FLEET_HISTORY", "10"))  # messages per sandbox before the run
IDLE_SECONDS = float(os.environ.get("AGENTPOD_BENCH_FLEET_IDLE_SECONDS", "30"))
BUSY_SECONDS = float(os.environ.get("AGENTPOD_BENCH_FLEET_BUSY_SECONDS", "60"))
DATABASE = os.environ.get("AGENTPOD_BENCH_FLEET_DB", "sqlite")
BASELINE_SECONDS = 15.0
WARMUP_SECONDS = 10.0
SINGLE_SECONDS = 20.0
SINGLE_TURN_SECONDS = 1.0
SETTLE_SECONDS = 10.0
RAMP_LIMIT_SECONDS = 240.0
DRAIN_LIMIT_SECONDS = 90.0  # after the traffic stops, how long to wait for the last rows
STOCK_HOLD_SECONDS = 40.0
HEARTBEAT_SECONDS = 10.0  # OpenCode's server.heartbeat interval
POLL_SECONDS = 0.05
# Sandboxes one stock worker mirrors: each holds two long-running activities (OpenCode and ACP streams).
STOCK_ACTIVITY_SLOTS = Settings().worker_max_activities // 2
PROJECTION = 10_000
CPU_BUDGET = 70.0  # % of one core a worker's event loop may use before lag grows (planning figure)
SEGMENT_SECONDS = SyncWorkflowInput.model_fields["segment_seconds"].default

TARGET_PER_SYNC_MB = 1.0
TARGET_LAG_P99_MS = 250.0

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Loopback only: no proxy may sit between the worker and the simulated sandboxes.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


@dataclass
class Sample:
    at: float
    rss_kb: int
    cpu_s: float


def proc_sample(pid: int) -> Sample:
    """RSS and user+system CPU seconds of a process, from ``/proc``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return Sample(time.monotonic(), rss, (int(fields[11]) + int(fields[12])) / CLK_TCK)


@dataclass
class Window:
    """One measured stretch of a process: median RSS, CPU as % of one core."""

    rss_mb: float
    rss_max_mb: float
    cpu_pct: float
    seconds: float

    def as_json(self) -> JSON:
        return {k: round(v, 2) for k, v in self.__dict__.items()}


class Monitor:
    """Samples named processes every second; windows are read off the samples."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {"bench": os.getpid()}
        self.samples: dict[str, list[Sample]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.samples[name] = []

    def _sample_all(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, StopIteration):
                self.samples.setdefault(name, []).append(proc_sample(pid))

    def mark(self) -> float:
        """Sample now (a window may start or end here); the time."""
        now = time.monotonic()
        self._sample_all()
        return now

    async def _run(self) -> None:
        while True:
            self._sample_all()
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def window(self, seconds: float) -> dict[str, Window]:
        """Measure every watched process over the next ``seconds``."""
        self._sample_all()
        began = time.monotonic()
        await asyncio.sleep(seconds)
        self._sample_all()
        return self.between(began, time.monotonic())

    def between(self, began: float, ended: float) -> dict[str, Window]:
        out: dict[str, Window] = {}
        for name, samples in self.samples.items():
            inside = [s for s in samples if began - 0.1 <= s.at <= ended + 0.1]
            if len(inside) < 2:
                continue
            first, last = inside[0], inside[-1]
            rss = [s.rss_kb / 1024 for s in inside]
            elapsed = max(1e-6, last.at - first.at)
            out[name] = Window(statistics.median(rss), max(rss), 100 * (last.cpu_s - first.cpu_s) / elapsed, elapsed)
        return out


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path | None = None

    async def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait (SIGKILL after ``timeout``); seconds it took to exit."""
        began = time.monotonic()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return time.monotonic() - began


async def start_simulator() -> tuple[Child, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._fleet_sim",
        str(SANDBOXES),
        str(HISTORY),
        str(HEARTBEAT_SECONDS),
        cwd=REPO,
        env=_child_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    port = int((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
    return Child("simulator", proc), f"http://127.0.0.1:{port}"


async def start_temporal(tmp: Path) -> tuple[Child, str]:
    port = _free_port()
    log = tmp / "temporal.log"
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--http-port", str(_free_port()),
        "--metrics-port", str(_free_port()),
        "--headless",
        "--log-level", "error",
    ]  # fmt: skip
    for attribute in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{attribute}=Keyword"]
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*cmd, env=_child_env(), stdout=out, stderr=out)
    return Child("temporal", proc, log), f"127.0.0.1:{port}"


async def connect_temporal(address: str) -> Client:
    deadline = time.monotonic() + 60
    while True:
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def start_worker(tmp: Path, name: str, command: list[str], env: dict[str, str]) -> Child:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=tmp,  # no developer .env may shape the worker
            env=_child_env({**env, "PYTHONPATH": str(REPO)}),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    child = Child(name, proc, log)
    deadline = time.monotonic() + 60
    while b"worker polling task queue" not in log.read_bytes():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {log.read_text()[-3000:]}")
        await asyncio.sleep(0.2)
    return child


# --------------------------------------------------------------------------- database


async def seed(sessions: async_sessionmaker[AsyncSession], count: int) -> tuple[str, list[str]]:
    """One user owning ``count`` sandboxes; their ids in simulator order."""
    async with sessions() as db:
        user = User(email=f"fleet-{uuid.uuid4().hex[:8]}@example.com", name="Fleet bench", password_hash=None)
        db.add(user)
        await db.flush()
        rows = []
        for i in range(count):
            slug = f"fleet-{i:05d}"
            rows.append(
                Sandbox(
                    user_id=user.id, name=slug, slug=slug, repo_name=slug, resource_tier_id="starter", flavor_id="js"
                )
            )
        db.add_all(rows)
        await db.commit()
        return user.id, [row.id for row in rows]


async def db_counts(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """(sandboxes with a mirrored session, mirrored messages)."""
    async with sessions() as db:
        synced = await db.scalar(select(func.count(func.distinct(ChatSession.sandbox_id))))
        messages = await db.scalar(select(func.count(ChatMessage.id)))
        return int(synced or 0), int(messages or 0)


class LagPoller:
    """Records when each message stamped at or after ``since`` first became visible in the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], since: datetime) -> None:
        self._sessions = sessions
        self._since = since
        self.visible: dict[str, float] = {}  # message id -> seconds from its upstream stamp to visible
        self.written: dict[str, float] = {}  # message id -> seconds from its upstream stamp to row created_at
        self.polls = 0
        self._cursor = since
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        # Rows become visible at commit, but carry the writer's clock from before it: look back 2 s.
        since = max(self._since, self._cursor - timedelta(seconds=2))
        stmt = select(
            ChatMessage.external_message_id,
            ChatMessage.upstream_created_at,
            ChatMessage.created_at,
            ChatMessage.updated_at,
        ).where(ChatMessage.updated_at >= since, ChatMessage.upstream_created_at >= self._since)
        asked = time.time()  # a row this query sees was committed before it began
        async with self._sessions() as db:
            rows = (await db.execute(stmt)).all()
        self.polls += 1
        for key, upstream, created, updated in rows:
            self._cursor = max(self._cursor, updated)
            if key not in self.visible and upstream is not None:
                self.visible[key] = asked - upstream.timestamp()
                self.written[key] = (created - upstream).total_seconds()

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - began)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.poll()


def _quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Lag:
    p50_ms: float
    p99_ms: float
    max_ms: float
    written_p50_ms: float
    written_p99_ms: float
    messages: int
    expected: int
    polls: int
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, poller: LagPoller, expected: int) -> Lag:
        visible = [v * 1000 for v in poller.visible.values()] or [math.nan]
        written = [v * 1000 for v in poller.written.values()] or [math.nan]
        return cls(
            statistics.median(visible),
            _quantile(visible, 0.99),
            max(visible),
            statistics.median(written),
            _quantile(written, 0.99),
            len(poller.visible),
            expected,
            poller.polls,
            sorted(round(v, 1) for v in visible),
        )

    def as_json(self) -> JSON:
        data = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        data["samples_ms"] = self.samples_ms[:: max(1, len(self.samples_ms) // 200)]  # ≤ ~200 for the report
        return data


# --------------------------------------------------------------------------- the run

LOG_MARKERS = {
    "errors": " ERROR ",
    "warnings": " WARNING ",
    "disconnects": " disconnected (",
    "database locked": "database is locked",
    "pool timeouts": "QueuePool limit",
    "heartbeat timeouts": "Heartbeat timeout",
    "failed activities": "Completing activity as failed",
}


def scan_log(log: Path | None) -> JSON:
    """How often the worker's log mentions trouble, and the first few such lines."""
    if log is None or not log.exists():
        return {"counts": {}, "examples": {}}
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}  # the first line of each kind
    for line in log.read_text(errors="replace").splitlines():
        for name, marker in LOG_MARKERS.items():
            if marker in line:
                counts[name] = counts.get(name, 0) + 1
                examples.setdefault(name, line[:400])
    return {"counts": counts, "examples": examples}


class Fleet:
    """The simulator's control endpoint."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=30, trust_env=False)

    async def stats(self) -> JSON:
        response = await self.http.get("/control/stats")
        response.raise_for_status()
        data: JSON = response.json()
        return data

    async def traffic(self, period: float, sandboxes: int | None = None) -> JSON:
        params: dict[str, str] = {"period": str(period)}
        if sandboxes is not None:
            params["sandboxes"] = str(sandboxes)
        response = await self.http.post("/control/traffic", params=params)
        response.raise_for_status()
        data: JSON = response.json()
        return data


async def start_loops(
    client: Client, queue: str, base: str, user_id: str, sandbox_ids: Sequence[str], indexes: range
) -> None:
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        target = SyncTarget(sandbox_id=sandbox_ids[i], user_id=user_id, opencode_url=f"{base}/sb/{i}")
        async with gate:
            await client.start_workflow(
                OpenCodeSyncWorkflow.run,
                SyncWorkflowInput(target=target),
                id=sandbox_sync_workflow_id(sandbox_ids[i]),
                task_queue=queue,
            )

    await asyncio.gather(*(one(i) for i in indexes))


async def wait_synced(
    fleet: Fleet, sessions: async_sessionmaker[AsyncSession], sandboxes: int, messages: int, limit: float
) -> tuple[float, bool]:
    """Wait until ``sandboxes`` streams are connected and ``messages`` rows mirrored; (seconds, reached)."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        stats = await fleet.stats()
        synced, stored = await db_counts(sessions)
        if stats["sandboxes_connected"] >= sandboxes and synced >= sandboxes and stored >= messages:
            return time.monotonic() - began, True
        await asyncio.sleep(0.25)
    return time.monotonic() - began, False


async def measure_lag(
    fleet: Fleet,
    sessions: async_sessionmaker[AsyncSession],
    monitor: Monitor,
    period: float,
    sandboxes: int,
    seconds: float,
) -> tuple[Lag, dict[str, Window], JSON]:
    since = datetime.now(UTC)
    poller = LagPoller(sessions, since)
    poller.start()
    before = await fleet.stats()
    await fleet.traffic(period, sandboxes)
    windows = await monitor.window(seconds)
    after = await fleet.traffic(0)
    turns = after["turns"] - before["turns"]
    # Every turn leaves two messages; wait for the stragglers (a backlog shows up as lag, not as loss).
    stopped = time.monotonic()
    while len(poller.visible) < 2 * turns and time.monotonic() - stopped < DRAIN_LIMIT_SECONDS:
        await asyncio.sleep(0.5)
    drain = time.monotonic() - stopped
    await poller.stop()
    traffic = {"turns": turns, "events": after["events"] - before["events"], "seconds": seconds, "drain": drain}
    return Lag.of(poller, 2 * turns), windows, traffic


def _mb(window: dict[str, Window], name: str) -> float:
    return window[name].rss_mb if name in window else math.nan


def _cpu(window: dict[str, Window], name: str) -> float:
    return window[name].cpu_pct if name in window else math.nan


def _windows_json(windows: dict[str, Window]) -> JSON:
    return {name: w.as_json() for name, w in windows.items()}


async def run_fleet(tmp: Path, database_url: str) -> list[Result]:
    engine: AsyncEngine = create_engine(database_url)
    children: list[Child] = []
    monitor = Monitor()
    try:
        await upgrade_database(engine)
        sessions = session_factory(engine)
        user_id, sandbox_ids = await seed(sessions, SANDBOXES)
        sim, base = await start_simulator()
        children.append(sim)
        temporal, address = await start_temporal(tmp)
        children.append(temporal)
        client = await connect_temporal(address)
        fleet = Fleet(base)
        queue = f"fleet-{uuid.uuid4().hex[:8]}"
        env = {
            "AGENTPOD_DEV_MODE": "true",
            "AGENTPOD_DATA_DIR": str(tmp / "var"),
            "AGENTPOD_DATABASE_URL": database_url,
            "AGENTPOD_TEMPORAL_ADDRESS": address,
            "AGENTPOD_TEMPORAL_TASK_QUEUE": queue,
        }
        sized = {**env, "AGENTPOD_WORKER_MAX_ACTIVITIES": str(SANDBOXES + 50)}
        worker = await start_worker(tmp, "worker", [sys.executable, "-m", "agentpod.cli", "worker"], sized)
        children.append(worker)
        assert worker.proc.pid is not None and sim.proc.pid is not None and temporal.proc.pid is not None
        monitor.watch("worker", worker.proc.pid)
        monitor.watch("temporal", temporal.proc.pid)
        monitor.watch("simulator", sim.proc.pid)
        monitor.start()
        details: JSON = {"sandboxes": SANDBOXES, "history": HISTORY, "turn_seconds": TURN_SECONDS, "db": DATABASE}

        # 1. no loops
        await asyncio.sleep(WARMUP_SECONDS)
        zero = await monitor.window(BASELINE_SECONDS)
        console.print(
            f"0 loops: worker {_mb(zero, 'worker'):.1f} MB RSS, {_cpu(zero, 'worker'):.1f} % CPU; "
            f"temporal {_mb(zero, 'temporal'):.0f} MB, {_cpu(zero, 'temporal'):.1f} % CPU"
        )

        # 2. one loop: lag baseline
        await start_loops(client, queue, base, user_id, sandbox_ids, range(1))
        took, ok = await wait_synced(fleet, sessions, 1, HISTORY, 60)
        if not ok:
            raise RuntimeError(f"the first sync loop did not connect and reconcile within 60 s (see {worker.log})")
        one_lag, one, one_traffic = await measure_lag(fleet, sessions, monitor, SINGLE_TURN_SECONDS, 1, SINGLE_SECONDS)
        console.print(
            f"1 loop (up in {took:.1f} s): worker {_mb(one, 'worker'):.1f} MB, {_cpu(one, 'worker'):.1f} % CPU "
            f"at 1 turn/s; lag p50 {one_lag.p50_ms:.0f} ms, p99 {one_lag.p99_ms:.0f} ms "
            f"({one_lag.messages}/{one_lag.expected} messages)"
        )

        # 3. ramp: everything else at once
        _, stored = await db_counts(sessions)
        began = monitor.mark()
        await start_loops(client, queue, base, user_id, sandbox_ids, range(1, SANDBOXES))
        started = time.monotonic() - began
        took, ok = await wait_synced(fleet, sessions, SANDBOXES, stored + (SANDBOXES - 1) * HISTORY, RAMP_LIMIT_SECONDS)
        ramp_s = time.monotonic() - began
        ramp = monitor.between(began, monitor.mark())
        ramp_cpu_s = ramp["worker"].cpu_pct / 100 * ramp["worker"].seconds if "worker" in ramp else math.nan
        stats = await fleet.stats()
        console.print(
            f"ramp: {SANDBOXES - 1} workflows started in {started:.1f} s; all {stats['sandboxes_connected']} "
            f"connected and reconciled after {ramp_s:.1f} s{'' if ok else ' [red](limit reached)[/red]'}; "
            f"worker CPU {ramp_cpu_s:.1f} s ({1000 * ramp_cpu_s / max(1, SANDBOXES - 1):.1f} ms per loop)"
        )

        # 4. idle
        await asyncio.sleep(SETTLE_SECONDS)
        idle = await monitor.window(IDLE_SECONDS)
        stats = await fleet.stats()
        held = stats["sandboxes_connected"]
        console.print(
            f"{held} loops idle: worker {_mb(idle, 'worker'):.1f} MB, {_cpu(idle, 'worker'):.1f} % CPU; "
            f"temporal {_mb(idle, 'temporal'):.0f} MB, {_cpu(idle, 'temporal'):.1f} % CPU; "
            f"simulator {_cpu(idle, 'simulator'):.1f} % CPU"
        )

        # 5. busy
        busy_lag, busy, busy_traffic = await measure_lag(
            fleet, sessions, monitor, TURN_SECONDS, SANDBOXES, BUSY_SECONDS
        )
        rate = busy_traffic["events"] / BUSY_SECONDS
        console.print(
            f"{SANDBOXES} loops busy ({busy_traffic['turns']} turns, {rate:,.0f} events/s): worker "
            f"{_mb(busy, 'worker'):.1f} MB (max {busy['worker'].rss_max_mb:.1f}), {_cpu(busy, 'worker'):.1f} % CPU; "
            f"temporal {_cpu(busy, 'temporal'):.1f} % CPU; lag p50 {busy_lag.p50_ms:.0f} ms, p99 "
            f"{busy_lag.p99_ms:.0f} ms, max {busy_lag.max_ms:.0f} ms ({busy_lag.messages}/{busy_lag.expected} "
            f"messages seen, the last {busy_traffic['drain']:.1f} s after the traffic stopped; "
            f"row stamp p50 {busy_lag.written_p50_ms:.0f} ms, p99 {busy_lag.written_p99_ms:.0f} ms)"
        )

        # 6. the stock worker takes over
        log_notes = scan_log(worker.log)  # before the stop: shutdown fails every running segment, by design
        stop_s = await worker.stop()
        if log_notes["counts"]:
            console.print(f"worker log: {log_notes['counts']}")
        stock = await start_worker(tmp, "stock-worker", [sys.executable, "-m", "agentpod.cli", "worker"], env)
        children.append(stock)
        await asyncio.sleep(STOCK_HOLD_SECONDS)
        stock_held = (await fleet.stats())["sandboxes_connected"]
        console.print(
            f"stock `agentpod worker` after {STOCK_HOLD_SECONDS:.0f} s: {stock_held} of {SANDBOXES} sandboxes "
            f"streamed (measured worker stopped in {stop_s:.1f} s)"
        )

        details.update(
            {
                "zero": _windows_json(zero),
                "one": {"windows": _windows_json(one), "traffic": one_traffic, "lag": one_lag.as_json()},
                "ramp": {
                    "start_seconds": started,
                    "synced_seconds": ramp_s,
                    "complete": ok,
                    "worker_cpu_seconds": ramp_cpu_s,
                    "windows": _windows_json(ramp),
                },
                "idle": {"windows": _windows_json(idle), "held": held},
                "busy": {"windows": _windows_json(busy), "traffic": busy_traffic, "lag": busy_lag.as_json()},
                "stock_worker_held": stock_held,
                "worker_log": log_notes,
                "worker_stop_seconds": stop_s,
                "simulator": await fleet.stats(),
            }
        )
        await fleet.http.aclose()
        return report(details, zero, one_lag, idle, busy, busy_lag, ramp_cpu_s, held, stock_held, rate)
    finally:
        await monitor.stop()
        for child in reversed(children):
            await child.stop()
        await engine.dispose()


def report(
    details: JSON,
    zero: dict[str, Window],
    one_lag: Lag,
    idle: dict[str, Window],
    busy: dict[str, Window],
    busy_lag: Lag,
    ramp_cpu_s: float,
    held: int,
    stock_held: int,
    rate: float,
) -> list[Result]:
    n = SANDBOXES
    rss0, cpu0 = _mb(zero, "worker"), _cpu(zero, "worker")
    rss_idle, cpu_idle = _mb(idle, "worker"), _cpu(idle, "worker")
    rss_busy, cpu_busy = _mb(busy, "worker"), _cpu(busy, "worker")
    per_idle_mb, per_busy_mb = (rss_idle - rss0) / n, (rss_busy - rss0) / n
    per_idle_cpu, per_busy_cpu = (cpu_idle - cpu0) / n, (cpu_busy - cpu0) / n
    # Each loop re-connects and reconciles once per segment: the ramp's CPU per loop, spread over it.
    segment_cpu_pct = 100 * ramp_cpu_s / max(1, n - 1) / SEGMENT_SECONDS

    workers = math.ceil(PROJECTION / n)
    per_worker_cpu_limit = (CPU_BUDGET - cpu0) / (per_busy_cpu + segment_cpu_pct) if per_busy_cpu > 0 else math.inf
    projection = {
        "sandboxes": PROJECTION,
        "loops_per_worker": n,
        "workers": workers,
        "memory_gb": workers * rss_busy / 1024,
        "cpu_cores_busy": workers * (cpu_busy + n * segment_cpu_pct) / 100,
        "cpu_cores_idle": workers * (cpu_idle + n * segment_cpu_pct) / 100,
        "segment_cpu_pct_per_loop": segment_cpu_pct,
        "cpu_bound_loops_per_worker": per_worker_cpu_limit,
        "cpu_bound_workers": math.ceil(PROJECTION / per_worker_cpu_limit) if per_worker_cpu_limit > 0 else None,
        "stock_worker_workers": math.ceil(PROJECTION / STOCK_ACTIVITY_SLOTS),
        "status_writes_per_s": PROJECTION / 5.0,
        "fleet_events_per_s_busy": rate * PROJECTION / n,
    }
    details["projection"] = projection
    console.print(
        f"per sync: idle {per_idle_mb * 1024:.0f} KB, {per_idle_cpu * 10:.2f} ms CPU/s; busy "
        f"{per_busy_mb * 1024:.0f} KB, {per_busy_cpu * 10:.2f} ms CPU/s (+{segment_cpu_pct * 10:.3f} ms/s for the "
        f"reconnect and reconcile every {SEGMENT_SECONDS:.0f} s)"
    )
    console.print(
        f"projection for {PROJECTION:,} sandboxes: {workers} workers × {n} loops = "
        f"{workers} × {rss_busy:.0f} MB ≈ {projection['memory_gb']:.1f} GB, "
        f"{workers} × {(cpu_busy + n * segment_cpu_pct) / 100:.2f} cores ≈ {projection['cpu_cores_busy']:.1f} cores "
        f"busy ({projection['cpu_cores_idle']:.1f} idle); CPU-bound at {CPU_BUDGET:.0f} % of a core: "
        f"≤ {per_worker_cpu_limit:,.0f} busy loops per worker; stock worker ({STOCK_ACTIVITY_SLOTS} sandboxes): "
        f"{projection['stock_worker_workers']} workers"
    )
    return [
        Result(
            f"fleet worker RSS, {n} loops idle (vs 0 loops)",
            rss_idle,
            "MB",
            baseline=rss0,
            target="info",
            details=details,
        ),
        Result(
            "  RSS per sync loop, idle",
            per_idle_mb * 1024,
            "KB",
            target=f"≤ {TARGET_PER_SYNC_MB:.0f} MB",
            passed=per_idle_mb <= TARGET_PER_SYNC_MB and held == n,
            details={"held": held},
        ),
        Result(f"fleet worker CPU, {n} loops idle (vs 0 loops)", cpu_idle, "% CPU", baseline=cpu0, target="info"),
        Result(
            f"fleet worker RSS, {n} loops busy (vs 0 loops)",
            rss_busy,
            "MB",
            baseline=rss0,
            target="info",
            details={"per_sync_kb": per_busy_mb * 1024, "events_per_s": rate},
        ),
        Result(
            f"fleet worker CPU, {n} loops busy (vs 0 loops)",
            cpu_busy,
            "% CPU",
            baseline=cpu0,
            target="info",
            details={"per_sync_ms_per_s": per_busy_cpu * 10, "events_per_s": rate},
        ),
        Result(
            f"  fleet lag p50, {rate:,.0f} ev/s (vs 1 loop)",
            busy_lag.p50_ms,
            "ms",
            baseline=one_lag.p50_ms,
            target="info",
        ),
        Result(
            f"  fleet lag p99, {rate:,.0f} ev/s (vs 1 loop)",
            busy_lag.p99_ms,
            "ms",
            baseline=one_lag.p99_ms,
            target=f"≤ {TARGET_LAG_P99_MS:.0f} ms",
            passed=busy_lag.p99_ms <= TARGET_LAG_P99_MS and busy_lag.messages >= busy_lag.expected,
        ),
        Result(
            "fleet loops streamed by stock `agentpod worker`",
            stock_held,
            "loops",
            baseline=n,
            target=f"= {n}",
            passed=stock_held == n,
        ),
        Result(
            f"fleet projection {PROJECTION:,}: workers of {n}",
            workers,
            "workers",
            target="info",
            details=projection,
        ),
    ]


async def run() -> list[Result]:
    """The whole fleet run on SQLite (or PostgreSQL, see the module docstring)."""
    console.print(
        f"{os.cpu_count()} CPUs; {SANDBOXES} sandboxes × {HISTORY} messages; busy: one turn "
        f"({EVENTS_PER_TURN} events) per sandbox every {TURN_SECONDS:g} s for {BUSY_SECONDS:g} s; db {DATABASE}"
    )
    with tempfile.TemporaryDirectory(prefix="agentpod-bench-fleet-") as name:
        tmp = Path(name)
        if DATABASE == "postgresql":
            scratch = await _scratch_postgres()
            if scratch is None:
                raise RuntimeError("AGENTPOD_BENCH_FLEET_DB=postgresql needs AGENTPOD_TEST_POSTGRES_URL")
            admin_url, url = scratch
            try:
                return await run_fleet(tmp, url)
            finally:
                await _drop_postgres(admin_url, url)
        return await run_fleet(tmp, f"sqlite+aiosqlite:///{tmp / 'agentpod.db'}")


if __name__ == "__main__":
    for row in asyncio.run(run()):
        console.print(row.name, row.value, row.unit, row.baseline)
