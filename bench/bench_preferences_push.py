"""Preferences push: 1,000 connected streams on one API process, one change, time until every stream has it.

The API runs as its own uvicorn process (the production shape: the load generator does not share
its event loop or CPU time slice). The load generator opens 1,000 ``GET .../preferences/stream``
connections of one user with raw asyncio sockets (lighter than an HTTP client library, so the
client side adds as little as possible), waits for each stream's first event (the current state),
then sends one ``PATCH`` and timestamps, per stream, the arrival of the event with the new
version. Latency = arrival - the moment the ``PATCH`` was sent: the write, the commit, the
publish, the fan-out and 1,000 socket writes are all in it.

Baselines, measured in the same run:

* **single stream** (the ratio's baseline): the same ``PATCH`` → event path with one connected
  stream, so the ratio is the cost of fanning out to 1,000;
* **raw fan-out** (information): the in-process notifier delivering one payload to 1,000
  subscribers, no HTTP and no database: the floor of the fan-out itself.

Target (preferences issue): p99 ≤ 200 ms with 1,000 streams. SQLite always; PostgreSQL
(LISTEN/NOTIFY) too when ``AGENTPOD_TEST_POSTGRES_URL`` points at a server that lets us create a
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from agentpod.notify import LocalNotifier, Subscription
from agentpod.settings import Settings
from agentpod.store.engine import create_engine
from agentpod.store.migrate import upgrade_database
from bench._result import Result, console
from tests.notify.servers import STREAM_PATH, serve_process, server_environment

STREAMS = 1000
ROUNDS = 5  # measured changes with all streams connected (5 x 1,000 samples)
SINGLE_ROUNDS = 30  # measured changes with one stream connected
WARMUP = 2  # changes thrown away first (first-request caches, JIT-less but cold paths)
CONNECT_CONCURRENCY = 100
TARGET_P99_MS = 200.0
PREFERENCES = "/api/users/me/preferences"
POSTGRES_ENV = "AGENTPOD_TEST_POSTGRES_URL"


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Stream:
    """One SSE connection over a raw socket; finds events by their ``id:`` line."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = b""

    async def open(self) -> None:
        """Connect and read up to the first event (the current state)."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {head[:200]!r}")
        await self.arrival(None)

    async def arrival(self, version: int | None) -> float:
        """``perf_counter()`` when the event with ``version`` (None: any event) has arrived."""
        assert self.reader is not None
        marker = b"\nid: " if version is None else f"\nid: {version}\n".encode()
        while marker not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.buffer += chunk
        arrived = time.perf_counter()
        self.buffer = self.buffer[self.buffer.index(marker) + len(marker) :]
        return arrived

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def push_round(http: httpx.AsyncClient, headers: dict[str, str], streams: list[Stream], n: int) -> list[float]:
    """One change (version ``n + 1`` after ``n`` rounds): per-stream latency in ms."""
    response = await http.get(f"{PREFERENCES}/version", headers=headers)
    version = response.json()["settings_version"] + 1
    waiting = [asyncio.create_task(stream.arrival(version)) for stream in streams]
    await asyncio.sleep(0.05)  # every reader is parked on its socket before the change is sent
    sent = time.perf_counter()
    response = await http.patch(PREFERENCES, json={"auto_refresh_interval": 5 + n % 290}, headers=headers)
    if response.json()["settings_version"] != version:
        raise RuntimeError(f"expected version {version}: {response.text}")
    async with asyncio.timeout(30):
        arrivals = await asyncio.gather(*waiting)
    return [(arrived - sent) * 1000 for arrived in arrivals]


async def measure(url: str, samples: dict[str, Any]) -> None:
    """Single-stream rounds, then all streams connected and the fan-out rounds."""
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        response = await http.post(
            "/api/auth/sign-up", json={"email": email, "password": "correct horse battery", "name": "Bench"}
        )
        token = response.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}

        single = Stream(host, int(port), token)
        await single.open()
        rounds = 0
        for n in range(WARMUP + SINGLE_ROUNDS):
            latencies = await push_round(http, headers, [single], rounds)
            rounds += 1
            if n >= WARMUP:
                samples["single"] += latencies
        await single.close()

        streams = [Stream(host, int(port), token) for _ in range(STREAMS)]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(stream: Stream) -> None:
            async with gate:
                await stream.open()

        began = time.perf_counter()
        await asyncio.gather(*(connect(stream) for stream in streams))
        samples["connect_s"] = time.perf_counter() - began
        console.print(f"  {STREAMS} streams connected in {samples['connect_s']:.1f} s")
        try:
            for n in range(WARMUP + ROUNDS):
                latencies = await push_round(http, headers, streams, rounds)
                rounds += 1
                label = "warm-up" if n < WARMUP else f"round {n - WARMUP + 1}"
                console.print(
                    f"  {label}: p50 {statistics.median(latencies):.1f} ms, "
                    f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms"
                )
                if n >= WARMUP:
                    samples["fanout"] += latencies
        finally:
            await asyncio.gather(*(stream.close() for stream in streams))


async def _arrival(subscription: Subscription) -> float:
    await subscription.get()
    return time.perf_counter()


async def raw_fanout() -> list[float]:
    """The in-process notifier alone: one publish to ``STREAMS`` subscribers, per-subscriber ms."""
    notifier = LocalNotifier()
    payload = "x" * 350  # about one preferences event
    latencies: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = [await stack.enter_async_context(notifier.subscribe("bench")) for _ in range(STREAMS)]
        for n in range(WARMUP + ROUNDS):
            waiting = [asyncio.create_task(_arrival(subscription)) for subscription in subscriptions]
            await asyncio.sleep(0.01)
            sent = time.perf_counter()
            await notifier.publish("bench", payload)
            arrivals = await asyncio.gather(*waiting)
            if n >= WARMUP:
                latencies += [(arrived - sent) * 1000 for arrived in arrivals]
    return latencies


@asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the configured server, dropped afterwards."""
    admin_url = make_url(os.environ[POSTGRES_ENV])
    name = f"agentpod_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def database(kind: str, tmp: Path) -> AsyncIterator[str]:
    """A migrated, empty database of ``kind``."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp / 'agentpod.db'}"
        else:
            url = await stack.enter_async_context(scratch_postgres())
        engine = create_engine(url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()
        yield url


async def run_case(kind: str) -> dict[str, Any]:
    """Start an API process on a fresh ``kind`` database and measure both paths."""
    samples: dict[str, Any] = {"single": [], "fanout": [], "load_average_1m_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="agentpod-bench-") as tmp:
        async with database(kind, Path(tmp)) as url:
            settings = Settings(
                _env_file=None,  # a developer's .env must not shape the benchmark
                dev_mode=True,
                data_dir=Path(tmp) / "var",
                database_url=url,
                temporal_address="127.0.0.1:1",  # nothing listens: Temporal is not involved
            )
            # One user holds every stream here: lift the per-user cap (a product limit) for the measurement.
            environment = server_environment(settings, AGENTPOD_MAX_STREAMS_PER_USER=str(STREAMS + 1))
            async with serve_process(environment) as api_url:
                await measure(api_url, samples)
    samples["load_average_1m_at_end"] = os.getloadavg()[0]
    return samples


def results(kind: str, samples: dict[str, Any]) -> list[Result]:
    """Table rows for one database."""
    fanout, single = samples["fanout"], samples["single"]
    p99 = percentile(fanout, 99)
    details = {
        "streams": STREAMS,
        "rounds": ROUNDS,
        "single_rounds": SINGLE_ROUNDS,
        "connect_seconds": round(samples["connect_s"], 2),
        "load_average_1m": [samples["load_average_1m_at_start"], samples["load_average_1m_at_end"]],
        "fanout_ms": {"p50": statistics.median(fanout), "p99": p99, "max": max(fanout)},
        "single_ms": {"p50": statistics.median(single), "p99": percentile(single, 99), "max": max(single)},
    }
    return [
        Result(
            f"push {kind}: {STREAMS:,} streams p99 (vs 1 stream)",
            p99,
            "ms",
            baseline=percentile(single, 99),
            target=f"≤ {TARGET_P99_MS:.0f} ms",
            passed=p99 <= TARGET_P99_MS,
            details=details,
        ),
        Result(
            f"push {kind}: {STREAMS:,} streams p50 (vs 1 stream)",
            statistics.median(fanout),
            "ms",
            baseline=statistics.median(single),
            target="info",
        ),
        Result(
            f"push {kind}: {STREAMS:,} streams max (vs 1 stream)",
            max(fanout),
            "ms",
            baseline=max(single),
            target="info",
        ),
        Result(f"  {kind}: connect {STREAMS:,} streams", samples["connect_s"] * 1000, "ms", target="info"),
    ]


async def run() -> list[Result]:
    """1,000-stream push latency on SQLite (and PostgreSQL when configured), with same-run baselines."""
    kinds = ["sqlite"] + (["postgres"] if os.environ.get(POSTGRES_ENV) else [])
    console.print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {STREAMS} streams, {ROUNDS} measured "
        f"changes after {WARMUP} warm-up; single-stream baseline {SINGLE_ROUNDS} changes; "
        f"databases: {', '.join(kinds)}"
    )
    rows: list[Result] = []
    for kind in kinds:
        console.print(f"[bold]{kind}[/bold]")
        rows += results(kind, await run_case(kind))
    raw = await raw_fanout()
    rows.append(
        Result(
            f"  raw notifier fan-out to {STREAMS:,} (no HTTP, no DB) p99",
            percentile(raw, 99),
            "ms",
            target="info",
            details={"p50": statistics.median(raw), "max": max(raw)},
        )
    )
    return rows
