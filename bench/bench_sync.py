"""Chat sync: an OpenCode event stream through the real mirror into SQLite and PostgreSQL.

Three measurements (chat-sync issue), each against a baseline measured in the same run:

1. **Throughput.** A generated stream shaped like the recorded fixtures (``tests/fixtures/opencode``):
   ``TURNS`` turns of session.updated, user message + part, assistant message, step-start, a text part
   streamed as ``CHUNKS`` ``message.part.delta`` events, the final part, step-finish, the completed
   message and session.idle (≈ 20,500 events). It is fed at full speed exactly as the live loop in
   ``agentpod/chat_mirror/segment.py`` does: ``feed`` per event under the mirror's lock, ``flush_due`` from a
   background task every 100 ms, a final ``flush``. Baseline: the same code with a flush interval of
   0, i.e. one transaction (and commit) per event, on the first ``NAIVE_TURNS`` turns only,
   extrapolated linearly (it gets no faster with more turns: each commit rewrites one message).
   ``mirror.apply([event])`` per event is *not* used as the baseline: a one-event batch has no
   delta base, so it drops every delta and would measure nothing for 98 % of the stream. The stored
   message texts of both paths are compared with each other and with the generated text.
2. **Lag at 2,000 events/s.** The stream is paced at 2,000 events/s for ``LAG_SECONDS``; an event's
   lag runs from its scheduled arrival to the end of the commit of the flush that wrote it. Baseline:
   one commit per event at the same pace for ``NAIVE_LAG_SECONDS`` (if it cannot keep up, its lag grows).
3. **Idle subscriptions.** A tiny SSE server in a child process sends ``server.connected`` then a
   ``server.heartbeat`` every 10 s. Another child process opens ``IDLE_STREAMS``
   ``OpenCodeClient(...).events()`` consumers (one client each, as the sync does per sandbox), holds
   them ``IDLE_HOLD_SECONDS`` and reports ``(VmRSS after - VmRSS before) / IDLE_STREAMS``. Baseline:
   the same with raw asyncio sockets holding an idle ``GET /event`` response.

Targets per worker process: ≥ 20,000 events/s on SQLite; lag p99 ≤ 250 ms at 2,000 events/s;
an idle subscription ≤ 1 MB. PostgreSQL needs ``AGENTPOD_TEST_POSTGRES_URL`` (a scratch database is
created and dropped); without it the PostgreSQL rows are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.chat_mirror.opencode import OpenCodeMirror
from agentpod.chat_mirror.segment import FLUSH_TICK_SECONDS
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import upgrade_database
from agentpod.store.tables import ChatMessage, ChatSession
from bench._result import Result, console
from tests.helpers import Owner, make_owner

JSON = dict[str, Any]

TURNS = int(os.environ.get("AGENTPOD_BENCH_SYNC_TURNS", "50"))
CHUNKS = 400  # text deltas per assistant reply
NAIVE_TURNS = int(os.environ.get("AGENTPOD_BENCH_SYNC_NAIVE_TURNS", "3"))
LAG_RATE = 2_000.0  # events/s
LAG_SECONDS = 5.0
NAIVE_LAG_SECONDS = 1.0
IDLE_STREAMS = 500
IDLE_HOLD_SECONDS = 11.0  # longer than one heartbeat interval
HEARTBEAT_SECONDS = 10.0

TARGET_EVENTS_PER_S = 20_000.0
TARGET_LAG_P99_MS = 250.0
TARGET_IDLE_MB = 1.0

# --------------------------------------------------------------------------- the generated stream

_WORDS = ("the ", "function ", "returns ", "a ", "list ", "of ", "items; ", "then ", "we ", "check ", "it.\n")


class _Ids:
    """OpenCode-like ids that sort in creation order (part order is by part id)."""

    def __init__(self) -> None:
        self.n = 0x2166_3000_0000

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:012x}bench{self.n % 100000:05d}"


def _event(kind: str, props: JSON) -> JSON:
    return {"id": f"evt_{uuid.uuid4().hex[:24]}", "type": kind, "properties": props}


def generate(turns: int, *, chunks: int = CHUNKS) -> tuple[list[JSON], dict[str, str]]:
    """A stream of ``turns`` chat turns in one session, and the text each message must end up with."""
    ids = _Ids()
    ses = ids.next("ses")
    t = 1_795_671_935_000
    info: JSON = {
        "id": ses,
        "slug": "bench-session",
        "version": "1.18.34",
        "projectID": "d91babf23a5156a0724ffe06c37633a3ff43d6ed",
        "directory": "/workspace/proj",
        "title": "Benchmark session",
        "time": {"created": t, "updated": t},
    }
    events = [_event("session.created", {"sessionID": ses, "info": dict(info)})]
    expected: dict[str, str] = {}
    for turn in range(turns):
        t += 1000
        info = {**info, "time": {"created": info["time"]["created"], "updated": t}}
        events.append(_event("session.updated", {"sessionID": ses, "info": info}))
        user, assistant = ids.next("msg"), ids.next("msg")
        prompt = f"Prompt {turn}: explain the code"
        events.append(
            _event(
                "message.updated",
                {
                    "sessionID": ses,
                    "info": {
                        "id": user,
                        "role": "user",
                        "sessionID": ses,
                        "time": {"created": t},
                        "agent": "build",
                        "model": {"providerID": "fake", "modelID": "fake-model"},
                    },
                },
            )
        )
        user_part = {"type": "text", "text": prompt, "messageID": user, "sessionID": ses, "id": ids.next("prt")}
        events.append(_event("message.part.updated", {"sessionID": ses, "part": user_part, "time": t}))
        expected[user] = prompt
        a_info: JSON = {
            "id": assistant,
            "parentID": user,
            "role": "assistant",
            "mode": "build",
            "agent": "build",
            "cost": 0,
            "tokens": {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}},
            "modelID": "fake-model",
            "providerID": "fake",
            "time": {"created": t + 10},
            "sessionID": ses,
        }
        events.append(_event("message.updated", {"sessionID": ses, "info": a_info}))
        base = {"messageID": assistant, "sessionID": ses}
        events.append(
            _event(
                "message.part.updated",
                {"sessionID": ses, "part": {**base, "id": ids.next("prt"), "type": "step-start"}, "time": t + 20},
            )
        )
        part_id = ids.next("prt")
        events.append(
            _event(
                "message.part.updated",
                {
                    "sessionID": ses,
                    "part": {**base, "id": part_id, "type": "text", "text": "", "time": {"start": t + 30}},
                    "time": t + 30,
                },
            )
        )
        pieces = [_WORDS[(turn + i) % len(_WORDS)] for i in range(chunks)]
        for piece in pieces:
            events.append(
                _event(
                    "message.part.delta",
                    {"sessionID": ses, "messageID": assistant, "partID": part_id, "field": "text", "delta": piece},
                )
            )
        reply = "".join(pieces)
        expected[assistant] = reply
        final = {**base, "id": part_id, "type": "text", "text": reply, "time": {"start": t + 30, "end": t + 900}}
        events.append(_event("message.part.updated", {"sessionID": ses, "part": final, "time": t + 900}))
        tokens = {"total": 1100, "input": 1000, "output": 100, "reasoning": 0, "cache": {"write": 0, "read": 0}}
        finish = {**base, "id": ids.next("prt"), "type": "step-finish", "reason": "stop", "tokens": tokens, "cost": 0}
        events.append(_event("message.part.updated", {"sessionID": ses, "part": finish, "time": t + 910}))
        done = {**a_info, "tokens": tokens, "finish": "stop", "time": {"created": t + 10, "completed": t + 920}}
        events.append(_event("message.updated", {"sessionID": ses, "info": done}))
        events.append(_event("session.idle", {"sessionID": ses}))
    return events, expected


# --------------------------------------------------------------------------- databases


async def stored_texts(sessions: async_sessionmaker[AsyncSession], owner: Owner) -> dict[str, str]:
    async with sessions() as db:
        rows = await db.execute(
            select(ChatMessage.external_message_id, ChatMessage.text)
            .join(ChatSession, ChatSession.id == ChatMessage.session_id)
            .where(ChatSession.sandbox_id == owner.sandbox_id)
        )
        return {str(key): value or "" for key, value in rows.all()}


async def _scratch_postgres() -> tuple[str, str] | None:
    admin_url = os.environ.get("AGENTPOD_BENCH_POSTGRES_URL") or os.environ.get("AGENTPOD_TEST_POSTGRES_URL")
    if not admin_url:
        return None
    name = f"agentpod_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return admin_url, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres(admin_url: str, url: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = make_url(url).database
    try:
        for _ in range(40):
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return
            except DBAPIError:
                await asyncio.sleep(0.5)
        console.print(f"[yellow]could not drop the scratch database {name}; drop it by hand[/yellow]")
    finally:
        await admin.dispose()


# --------------------------------------------------------------------------- feeding


async def feed_live(mirror: OpenCodeMirror, events: Sequence[JSON]) -> float:
    """Feed as ``stream_segment`` does (lock, 100 ms ``flush_due`` task, final flush); seconds taken."""
    lock = asyncio.Lock()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_TICK_SECONDS)
            async with lock:
                await mirror.flush_due()

    began = time.perf_counter()
    task = asyncio.create_task(flusher())
    try:
        for event in events:
            async with lock:
                await mirror.feed(event)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with lock:
        await mirror.flush()
    return time.perf_counter() - began


class TimedMirror(OpenCodeMirror):
    """Records, for every event fed, when it was due and when the flush that wrote it committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[float] = []
        self.lags: list[float] = []

    async def feed_at(self, event: JSON, arrival: float) -> int:
        self._pending.append(arrival)  # before feed: a flush it triggers includes this event
        return await self.feed(event)

    async def flush(self) -> int:
        batch, self._pending = self._pending, []
        written = await super().flush()
        committed = time.perf_counter()
        self.lags += [committed - arrival for arrival in batch]
        return written


async def feed_paced(mirror: TimedMirror, events: Sequence[JSON], rate: float) -> float:
    """Feed events as they would arrive at ``rate`` events/s (live loop shape); seconds taken."""
    lock = asyncio.Lock()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_TICK_SECONDS)
            async with lock:
                await mirror.flush_due()

    task = asyncio.create_task(flusher())
    start = time.perf_counter()
    try:
        for i, event in enumerate(events):
            arrival = start + i / rate
            wait = arrival - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            async with lock:
                await mirror.feed_at(event, arrival)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with lock:
        await mirror.flush()
    return time.perf_counter() - start


def _quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- one database


async def _measure_db(label: str, url: str) -> list[Result]:
    engine: AsyncEngine = create_engine(url)
    try:
        await upgrade_database(engine)
        sessions = session_factory(engine)
        rows: list[Result] = []

        # 1. throughput: live path on the full stream, naive path on a sample
        events, expected = generate(TURNS)
        owner = await make_owner(sessions)
        live = OpenCodeMirror(sessions, sandbox_id=owner.sandbox_id, user_id=owner.user_id)
        live_s = await feed_live(live, events)
        live_rate = len(events) / live_s
        live_texts = await stored_texts(sessions, owner)

        sample, sample_expected = generate(NAIVE_TURNS)
        naive_owner = await make_owner(sessions)
        naive = OpenCodeMirror(sessions, sandbox_id=naive_owner.sandbox_id, user_id=naive_owner.user_id)
        naive.coalescer.interval = 0.0  # every event is due at once: one transaction per event
        naive_s = await feed_live(naive, sample)
        naive_rate = len(sample) / naive_s
        naive_texts = await stored_texts(sessions, naive_owner)

        live_ok = live_texts == expected
        # The sample is the first NAIVE_TURNS turns of the same generator: same ids, same texts.
        naive_ok = naive_texts == sample_expected and all(live_texts.get(k) == v for k, v in naive_texts.items())
        if not (live_ok and naive_ok):
            raise RuntimeError(f"{label}: stored texts differ (live ok: {live_ok}, naive ok: {naive_ok})")
        console.print(
            f"{label}: live {len(events):,} events in {live_s:.2f} s ({live_rate:,.0f}/s, "
            f"{live.coalescer.stats.flushes} flushes); naive {len(sample):,} events in {naive_s:.2f} s "
            f"({naive_rate:,.0f}/s, ~{len(events) / naive_rate:.0f} s extrapolated to the full stream); "
            f"{len(live_texts)} message texts equal on both paths"
        )
        is_sqlite = label == "SQLite"
        rows.append(
            Result(
                f"sync {label} events/s (vs 1 commit/event)",
                live_rate / 1000,
                "k events/s",
                baseline=naive_rate / 1000,
                target="≥ 20 k events/s" if is_sqlite else "info",
                passed=(live_rate >= TARGET_EVENTS_PER_S) if is_sqlite else None,
                details={
                    "events": len(events),
                    "live_seconds": live_s,
                    "live_flushes": live.coalescer.stats.flushes,
                    "naive_sample_events": len(sample),
                    "naive_seconds": naive_s,
                    "naive_extrapolated_seconds": len(events) / naive_rate,
                    "messages_compared": len(live_texts),
                },
            )
        )

        # 2. lag at 2,000 events/s
        lag_events, _ = generate(round(LAG_RATE * LAG_SECONDS / (CHUNKS + 10)))
        lag_owner = await make_owner(sessions)
        timed = TimedMirror(sessions, sandbox_id=lag_owner.sandbox_id, user_id=lag_owner.user_id)
        lag_s = await feed_paced(timed, lag_events, LAG_RATE)
        naive_events, _ = generate(max(1, round(LAG_RATE * NAIVE_LAG_SECONDS / (CHUNKS + 10))))
        naive_lag_owner = await make_owner(sessions)
        slow = TimedMirror(sessions, sandbox_id=naive_lag_owner.sandbox_id, user_id=naive_lag_owner.user_id)
        slow.coalescer.interval = 0.0
        slow_s = await feed_paced(slow, naive_events, LAG_RATE)
        lags = [lag * 1000 for lag in timed.lags]
        slow_lags = [lag * 1000 for lag in slow.lags]
        p50, p99 = statistics.median(lags), _quantile(lags, 0.99)
        s50, s99 = statistics.median(slow_lags), _quantile(slow_lags, 0.99)
        console.print(
            f"{label}: paced {len(lag_events):,} events in {lag_s:.2f} s (due {len(lag_events) / LAG_RATE:.2f} s), "
            f"lag p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lags):.0f} ms, {timed.coalescer.stats.flushes} "
            f"flushes; naive {len(naive_events):,} events in {slow_s:.2f} s (due "
            f"{len(naive_events) / LAG_RATE:.2f} s), lag p50 {s50:.0f} ms, p99 {s99:.0f} ms"
        )
        rows += [
            Result(
                f"  {label} lag p50 @2,000 ev/s",
                p50,
                "ms",
                baseline=s50,
                target="info",
                details={"events": len(lag_events), "seconds": lag_s, "max_ms": max(lags)},
            ),
            Result(
                f"  {label} lag p99 @2,000 ev/s",
                p99,
                "ms",
                baseline=s99,
                target=f"≤ {TARGET_LAG_P99_MS:.0f} ms",
                passed=p99 <= TARGET_LAG_P99_MS,
                details={
                    "flushes": timed.coalescer.stats.flushes,
                    "naive_events": len(naive_events),
                    "naive_seconds": slow_s,
                    "naive_due_seconds": len(naive_events) / LAG_RATE,
                },
            ),
        ]
        return rows
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- idle subscriptions

SSE_SERVER = r"""
import asyncio, json, sys

HEARTBEAT = float(sys.argv[1])

async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                     b"connection: close\r\n\r\n")
        writer.write(b"data: " + json.dumps({"type": "server.connected", "properties": {}}).encode() + b"\n\n")
        await writer.drain()
        while True:
            await asyncio.sleep(HEARTBEAT)
            writer.write(b"data: " + json.dumps({"type": "server.heartbeat", "properties": {}}).encode() + b"\n\n")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _hold_raw(port: int, ready: asyncio.Event, done: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /event HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # headers
        await reader.readuntil(b"\n\n")  # the server.connected frame
        ready.set()
        while not done.is_set():
            await reader.readuntil(b"\n\n")  # heartbeats
    finally:
        writer.close()


async def _hold_client(port: int, ready: asyncio.Event, done: asyncio.Event) -> None:
    from agentpod.clients.opencode import OpenCodeClient

    async with OpenCodeClient(f"http://127.0.0.1:{port}") as client:
        async for event in client.events():
            if event.get("type") == "server.connected":
                ready.set()
            if done.is_set():
                break


async def idle_child(mode: str, port: int, streams: int, hold: float) -> JSON:
    """In a fresh process: RSS before and after opening ``streams`` idle subscriptions."""
    holder = _hold_client if mode == "client" else _hold_raw
    done = asyncio.Event()
    first = asyncio.Event()
    tasks = [asyncio.create_task(holder(port, first, done))]  # warm-up: imports, first-use allocations
    await asyncio.wait_for(first.wait(), 10)
    gc.collect()
    before = rss_kb()
    ready = [asyncio.Event() for _ in range(streams)]
    for event in ready:
        tasks.append(asyncio.create_task(holder(port, event, done)))
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 60)
    await asyncio.sleep(hold)
    gc.collect()
    after = rss_kb()
    alive = sum(1 for task in tasks if not task.done())
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"before_kb": before, "after_kb": after, "streams": streams, "alive": alive}


async def _run_idle_child(mode: str, port: int) -> JSON:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_sync",
        "idle",
        mode,
        str(port),
        str(IDLE_STREAMS),
        str(IDLE_HOLD_SECONDS),
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"idle child ({mode}) failed: {err.decode()[-2000:]}")
    result: JSON = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _measure_idle() -> list[Result]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SSE_SERVER, str(HEARTBEAT_SECONDS), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int((await asyncio.wait_for(server.stdout.readline(), 10)).decode())
        raw = await _run_idle_child("raw", port)
        client = await _run_idle_child("client", port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        await server.wait()
    per_client = (client["after_kb"] - client["before_kb"]) / IDLE_STREAMS / 1024
    per_raw = (raw["after_kb"] - raw["before_kb"]) / IDLE_STREAMS / 1024
    console.print(
        f"idle streams: {IDLE_STREAMS} OpenCodeClient streams {client['before_kb'] / 1024:.1f} → "
        f"{client['after_kb'] / 1024:.1f} MB RSS ({per_client * 1024:.0f} KB each, {client['alive']} alive); "
        f"raw sockets {raw['before_kb'] / 1024:.1f} → {raw['after_kb'] / 1024:.1f} MB ({per_raw * 1024:.0f} KB each)"
    )
    return [
        Result(
            "sync idle stream RSS (vs raw socket)",
            per_client,
            "MB",
            baseline=per_raw,
            target=f"≤ {TARGET_IDLE_MB:.0f} MB",
            passed=per_client <= TARGET_IDLE_MB and client["alive"] == IDLE_STREAMS + 1,
            details={"client": client, "raw": raw, "hold_seconds": IDLE_HOLD_SECONDS},
        )
    ]


# --------------------------------------------------------------------------- entry points


async def run() -> list[Result]:
    """Throughput and lag on SQLite and PostgreSQL, then idle-stream memory."""
    console.print(
        f"{os.cpu_count()} CPUs; {TURNS} turns × {CHUNKS} deltas; naive sample {NAIVE_TURNS} turns; "
        f"lag at {LAG_RATE:,.0f} events/s for {LAG_SECONDS:.0f} s; {IDLE_STREAMS} idle streams"
    )
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="agentpod-bench-") as tmp:
        rows += await _measure_db("SQLite", f"sqlite+aiosqlite:///{Path(tmp) / 'agentpod.db'}")
    scratch = await _scratch_postgres()
    if scratch is None:
        console.print("[yellow]PostgreSQL skipped: set AGENTPOD_TEST_POSTGRES_URL[/yellow]")
    else:
        admin_url, url = scratch
        try:
            rows += await _measure_db("PostgreSQL", url)
        finally:
            await _drop_postgres(admin_url, url)
    rows += await _measure_idle()
    return rows


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "idle":
    _, _, _mode, _port, _streams, _hold = sys.argv
    print(json.dumps(asyncio.run(idle_child(_mode, int(_port), int(_streams), float(_hold)))))
