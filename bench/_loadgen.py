"""A closed-loop load generator, run as its own process (``python -m bench._loadgen plan.json``).

The benchmark process writes a plan, this process executes it and prints one JSON line with the
samples. Keeping the load out of the server's process (and out of the benchmark's) means the server
does not share an event loop with its clients, only the machine's cores.

Phases run one after another. In each, ``concurrency`` workers loop until the phase ends: an
``http`` worker owns one keep-alive HTTP/1.1 connection (raw asyncio streams: a client library
would spend more CPU per request than the server's own routing) and sends ``GET`` requests for
paths drawn at random from the phase's list; a ``sql`` worker calls :func:`store.chat.message_page`
directly on its own pooled session (the route's page query without HTTP, auth or serialization).
A request's latency runs from writing it to having read the whole body. Requests started during
the first ``warmup`` seconds are not counted; throughput is the requests counted over the rest of
the phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - installed with uvicorn[standard]
    uvloop = None  # type: ignore[assignment]

JSON = dict[str, Any]


@dataclass
class Phase:
    """One measured stretch of load (see the module docstring)."""

    label: str
    kind: str  # "http" or "sql"
    concurrency: int
    seconds: float
    warmup: float = 1.0
    paths: list[str] = field(default_factory=list)  # http: request paths (query string included)
    pages: list[list[str | None]] = field(default_factory=list)  # sql: [session id, before cursor | None]


@dataclass
class Samples:
    """What one phase measured."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    checked: int = 0  # bodies parsed and checked
    messages_seen: list[int] = field(default_factory=list)
    measured_seconds: float = 0.0
    total: int = 0  # requests including the warm-up
    server_cpu_ms: float | None = None  # CPU time the server process used over the whole phase

    def as_json(self) -> JSON:
        return {
            "total_requests": self.total,
            "server_cpu_ms": self.server_cpu_ms,
            "latencies_ms": [round(value, 4) for value in self.latencies_ms],
            "errors": self.errors,
            "checked": self.checked,
            "messages_seen": sorted(set(self.messages_seen)),
            "measured_seconds": self.measured_seconds,
        }


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry a Content-Length."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: (status, body). Reconnects when the server closed the connection."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length < 0:
            raise RuntimeError(f"response without Content-Length: {head[:300]!r}")
        body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


def _check_body(body: bytes, samples: Samples) -> None:
    data = json.loads(body)
    samples.checked += 1
    if isinstance(data, dict) and "messages" in data:
        samples.messages_seen.append(len(data["messages"]))


async def _http_worker(plan: JSON, phase: Phase, rng: random.Random, until: float, counted_from: float) -> Samples:
    samples = Samples()
    connection = Connection(plan["host"], plan["port"], plan["token"])
    n = 0
    try:
        while (began := time.perf_counter()) < until:
            path = rng.choice(phase.paths)
            status, body = await connection.get(path)
            elapsed = (time.perf_counter() - began) * 1000
            if status != 200:
                key = str(status)
                samples.errors[key] = samples.errors.get(key, 0) + 1
                if samples.errors[key] == 1:
                    samples.errors[f"{key} example"] = 1
                    print(f"{phase.label}: {status} for {path}: {body[:300]!r}", file=sys.stderr)
            elif n % 97 == 0:
                _check_body(body, samples)  # a sample of bodies: parsing every one would load this process
            n += 1
            samples.total += 1
            if began >= counted_from:
                samples.latencies_ms.append(elapsed)
    finally:
        await connection.close()
    return samples


async def _sql_workers(
    plan: JSON, phase: Phase, rng: random.Random, until: float, counted_from: float
) -> list[Samples]:
    from agentpod.store import chat
    from agentpod.store.engine import create_engine, session_factory

    engine = create_engine(plan["database_url"])
    sessions = session_factory(engine)

    async def worker() -> Samples:
        samples = Samples()
        while (began := time.perf_counter()) < until:
            session_id, cursor = rng.choice(phase.pages)
            assert session_id is not None
            before = chat.MessageKey.decode(cursor) if cursor else None
            async with sessions() as db:
                page = await chat.message_page(db, session_id, limit=50, before=before)
            elapsed = (time.perf_counter() - began) * 1000
            samples.messages_seen.append(len(page.messages))
            samples.total += 1
            if began >= counted_from:
                samples.latencies_ms.append(elapsed)
        return samples

    try:
        return list(await asyncio.gather(*(worker() for _ in range(phase.concurrency))))
    finally:
        await engine.dispose()


def cpu_ms(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def run_phase(plan: JSON, phase: Phase, rng: random.Random) -> Samples:
    """Run one phase; the merged samples of its workers."""
    cpu_before = cpu_ms(plan.get("server_pid"))
    start = time.perf_counter()
    counted_from = start + phase.warmup
    until = counted_from + phase.seconds
    if phase.kind == "http":
        parts = await asyncio.gather(
            *(
                _http_worker(plan, phase, random.Random(rng.random()), until, counted_from)
                for _ in range(phase.concurrency)
            )
        )
    elif phase.kind == "sql":
        parts = await _sql_workers(plan, phase, rng, until, counted_from)
    else:
        raise ValueError(f"unknown phase kind {phase.kind!r}")
    merged = Samples(measured_seconds=time.perf_counter() - counted_from)
    cpu_after = cpu_ms(plan.get("server_pid"))
    if cpu_before is not None and cpu_after is not None:
        merged.server_cpu_ms = cpu_after - cpu_before
    for part in parts:
        merged.total += part.total
        merged.latencies_ms += part.latencies_ms
        merged.checked += part.checked
        merged.messages_seen += part.messages_seen
        for key, count in part.errors.items():
            merged.errors[key] = merged.errors.get(key, 0) + count
    return merged


async def execute(plan: JSON) -> JSON:
    """Every phase of ``plan`` in order: {"phases": [{"label", ...samples}]}."""
    rng = random.Random(plan.get("seed", 1))
    out: list[JSON] = []
    for raw in plan["phases"]:
        phase = Phase(**raw)
        samples = await run_phase(plan, phase, rng)
        out.append({"label": phase.label, "kind": phase.kind, "concurrency": phase.concurrency, **samples.as_json()})
        print(f"{phase.label}: {len(samples.latencies_ms)} requests", file=sys.stderr, flush=True)
    return {"phases": out}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    # The server runs on uvloop (uvicorn's default when installed); so does the load.
    result = uvloop.run(execute(plan)) if uvloop is not None else asyncio.run(execute(plan))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
