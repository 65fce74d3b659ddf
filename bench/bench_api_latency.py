"""API latency at scale: a 50-message chat page out of 1,000,000 messages, over real HTTP.

Setup, per database (SQLite file; PostgreSQL scratch database when ``AGENTPOD_TEST_POSTGRES_URL``
is set): the schema comes from the project's migrations; the API runs as its own process, started
the way production starts it (``agentpod api``: uvicorn, one worker, on loopback); one user signs up
through it. The benchmark process then seeds ``MESSAGES`` chat messages (default 1,000,000) across
``SESSIONS`` sessions (1,000) of ``SANDBOXES`` sandboxes of that user, in bulk: SQLAlchemy core
``executemany`` on SQLite, ``COPY`` through asyncpg on PostgreSQL, one transaction per batch.
Messages alternate user / assistant, with texts of 40-1,500 characters, raw upstream parts in
``content``, tool calls on some assistant turns, as the sync stores them.

Load: a separate process (:mod:`bench._loadgen`) keeps ``CONCURRENCY`` keep-alive connections busy
(closed loop: each sends its next request when the previous answer is read). Every request is
``GET /api/v2/sandboxes/{id}/chat/sessions/{id}/messages?limit=50`` of a random session,
authenticated with the bearer token: half of them the newest page, half the page before a keyset
cursor at a random depth of the session (what scrolling back sends).

Reported, per database:

* the page's p99 (target ≤ 20 ms) and p50 at ``CONCURRENCY`` connections, and requests/s; baseline,
  same server, same connections, interleaved in ``ROUNDS`` rounds: ``GET /api/users/me`` (the same
  bearer-token authentication, one row, no chat data), so the ratio is the chat page's cost over
  the cheapest authenticated request;
* information: the route's page query alone (``store.chat.message_page``) timed in the load
  process at the same concurrency, vs the whole request (how much of it is the database); the page
  at 1 connection (no queueing) and at ``HIGH_CONCURRENCY`` connections (saturation); and the API
  process's CPU time per page vs per ``/users/me`` (read from ``/proc``: on a busy machine the
  figure that moves least, and with SQLite it includes the queries).

A closed loop of ``CONCURRENCY`` connections keeps the single API process busy all the time, so
the page's latency there is roughly ``CONCURRENCY`` × its CPU time per request.

Environment, for quick local runs: ``AGENTPOD_BENCH_API_MESSAGES`` (default 1000000),
``AGENTPOD_BENCH_API_SESSIONS`` (1000), ``AGENTPOD_BENCH_API_CONCURRENCY`` (4),
``AGENTPOD_BENCH_API_DATABASES`` (``sqlite,postgres``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from agentpod.security.keyring import generate_entry
from agentpod.settings import Settings
from agentpod.store.chat import MessageKey
from agentpod.store.engine import create_engine
from agentpod.store.migrate import upgrade_database
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox
from bench._result import Result, console

JSON = dict[str, Any]

MESSAGES = int(os.environ.get("AGENTPOD_BENCH_API_MESSAGES", "1000000"))
SESSIONS = int(os.environ.get("AGENTPOD_BENCH_API_SESSIONS", "1000"))
CONCURRENCY = int(os.environ.get("AGENTPOD_BENCH_API_CONCURRENCY", "4"))
DATABASES = [d.strip() for d in os.environ.get("AGENTPOD_BENCH_API_DATABASES", "sqlite,postgres").split(",") if d]
SANDBOXES = 4
HIGH_CONCURRENCY = 16
PAGE = 50
ROUNDS = 3  # baseline and page phases alternate, so load drift hits both
PAGE_SECONDS = 5.0
BASELINE_SECONDS = 3.0
INFO_SECONDS = 5.0
WARMUP_SECONDS = 1.0
SAMPLE_PATHS = 4000  # request paths the load generator draws from
BATCH_SQLITE = 20_000
BATCH_POSTGRES = 50_000
TARGET_P99_MS = 20.0
POSTGRES_ENV = "AGENTPOD_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 6, 1, tzinfo=UTC)

# --------------------------------------------------------------------------- the seeded data

_PROSE = (
    "the function returns a list of items then we check each one against the schema and write the "
    "result to the store; if the cursor is past the end the page is empty. Let me look at the tests "
    "first: they cover pagination, ownership and the error shape. I will run them now and fix what "
    "fails before touching the migration. "
)
_WORDS = _PROSE.split()
_TEXT = " ".join(_WORDS[i % len(_WORDS)] for i in range(4000))
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        n, digit = divmod(n, 62)
        out.append(_BASE62[digit])
    return "".join(out)


@functools.cache
def _suffix(n: int) -> str:
    """14 base62 characters derived from ``n`` (OpenCode ids end in random base62)."""
    return _base62((n * 2_654_435_761 + 0x5BD1E995) % 62**14, 14)


_TEXT_RNG = random.Random(7)
# Message texts: slices of _TEXT of varied length, picked by position (cheap to generate a million).
_USER_TEXTS = [
    _TEXT[start : start + length]
    for length, start in (
        (n, _TEXT_RNG.randrange(0, len(_TEXT) - 300)) for n in (_TEXT_RNG.randint(40, 300) for _ in range(257))
    )
]
_ASSISTANT_TEXTS = [
    _TEXT[start : start + length]
    for length, start in (
        (n, _TEXT_RNG.randrange(0, len(_TEXT) - 1500)) for n in (_TEXT_RNG.randint(100, 1500) for _ in range(263))
    )
]


@dataclass(frozen=True)
class SeedSession:
    """One seeded session: its ids and how many messages it holds."""

    index: int
    id: str
    sandbox_id: str
    messages: int

    def created_at(self, i: int) -> datetime:
        """Upstream creation time of message ``i`` (ascending; ms resolution, like OpenCode)."""
        return T0 + timedelta(hours=self.index, seconds=20 * i, milliseconds=(i * 37) % 1000)

    def external_id(self, i: int) -> str:
        """OpenCode-shaped message id of message ``i`` (ascending within the session)."""
        return f"msg_{self.index:05x}{i:07x}{_suffix(self.index)[:7]}{_suffix(i)[7:]}"

    def key(self, i: int) -> MessageKey:
        """The keyset position of message ``i``."""
        return MessageKey(self.created_at(i), self.external_id(i))


def plan_sessions(sandbox_ids: list[str], messages: int, sessions: int, rng: random.Random) -> list[SeedSession]:
    """``sessions`` sessions over the sandboxes, ``messages`` in all (remainder on the first ones)."""
    per, extra = divmod(messages, sessions)
    return [
        SeedSession(
            index=s,
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            sandbox_id=sandbox_ids[s % len(sandbox_ids)],
            messages=per + (1 if s < extra else 0),
        )
        for s in range(sessions)
    ]


def session_row(session: SeedSession, user_id: str, now: datetime) -> JSON:
    """The ``chat_sessions`` row, with statistics matching its messages."""
    n = session.messages
    assistants = n // 2
    return {
        "id": session.id,
        "sandbox_id": session.sandbox_id,
        "user_id": user_id,
        "source": "opencode",
        "opencode_session_id": f"ses_{session.index:08x}{_suffix(session.index)}",
        "acp_session_id": None,
        "acp_agent_id": None,
        "parent_session_id": None,
        "title": f"Benchmark session {session.index}",
        "status": "active",
        "message_count": n,
        "user_message_count": n - assistants,
        "assistant_message_count": assistants,
        "total_input_tokens": 1200 * assistants,
        "total_output_tokens": 300 * assistants,
        "upstream_created_at": session.created_at(0),
        "upstream_updated_at": session.created_at(max(0, n - 1)),
        "missing_upstream_at": None,
        "last_message_at": session.created_at(max(0, n - 1)),
        "last_synced_at": now,
        "created_at": now,
        "updated_at": now,
    }


MESSAGE_COLUMNS = (
    "id",
    "session_id",
    "external_message_id",
    "source",
    "role",
    "content",
    "text",
    "tool_calls",
    "tool_results",
    "thinking",
    "model_provider",
    "model_id",
    "agent_id",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "status",
    "error_message",
    "upstream_created_at",
    "upstream_completed_at",
    "missing_upstream_at",
    "completed_at",
    "created_at",
    "updated_at",
)
_JSON_COLUMNS = {"content", "tool_calls", "tool_results"}


def message_rows(session: SeedSession, rng: random.Random, now: datetime) -> Iterator[JSON]:
    """The session's messages: user prompts and assistant replies, shaped as the sync stores them."""
    upstream_session = f"ses_{session.index:08x}{_suffix(session.index)}"
    for i in range(session.messages):
        ext = session.external_id(i)
        created = session.created_at(i)
        user = i % 2 == 0
        pick = session.index * 31 + i * 7
        body = _USER_TEXTS[pick % len(_USER_TEXTS)] if user else _ASSISTANT_TEXTS[pick % len(_ASSISTANT_TEXTS)]
        created_ms = int(created.timestamp() * 1000)
        part = {"id": f"prt_{ext[4:]}", "type": "text", "text": body, "messageID": ext, "sessionID": upstream_session}
        info: JSON = {"id": ext, "role": "user" if user else "assistant", "sessionID": upstream_session}
        tool_calls: list[Any] | None = None
        tool_results: list[Any] | None = None
        if user:
            info["time"] = {"created": created_ms}
            parts: list[Any] = [part]
        else:
            info.update(
                providerID="anthropic",
                modelID="claude-sonnet-4",
                time={"created": created_ms, "completed": created_ms + 4000},
                tokens={"input": 1200, "output": 300, "reasoning": 0, "cache": {"read": 800, "write": 0}},
            )
            parts = [{"id": f"prt_{ext[4:]}0", "type": "step-start"}, part]
            if i % 10 == 1:
                call = {"id": f"call_{ext[4:]}", "tool": "bash", "input": {"command": "pytest -q tests/store"}}
                tool_calls = [call]
                tool_results = [{"id": call["id"], "output": "42 passed in 3.1s", "status": "completed"}]
                parts.append({"id": f"prt_{ext[4:]}t", "type": "tool", "state": {"status": "completed", **call}})
            parts.append({"id": f"prt_{ext[4:]}z", "type": "step-finish", "reason": "stop"})
        yield {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "session_id": session.id,
            "external_message_id": ext,
            "source": "opencode",
            "role": "user" if user else "assistant",
            "content": {"info": info, "parts": parts},
            "text": body,
            "tool_calls": tool_calls,
            "tool_results": tool_results,
            "thinking": None,
            "model_provider": None if user else "anthropic",
            "model_id": None if user else "claude-sonnet-4",
            "agent_id": "build",
            "input_tokens": 0 if user else 1200,
            "output_tokens": 0 if user else 300,
            "reasoning_tokens": 0,
            "cache_read_tokens": 0 if user else 800,
            "cache_write_tokens": 0,
            "cost": Decimal("0") if user else Decimal("0.008100"),
            "status": "complete",
            "error_message": None,
            "upstream_created_at": created,
            "upstream_completed_at": None if user else created + timedelta(seconds=4),
            "missing_upstream_at": None,
            "completed_at": None if user else created + timedelta(seconds=4),
            "created_at": now,
            "updated_at": now,
        }


def batches(sessions: list[SeedSession], size: int, rng: random.Random) -> Iterator[list[JSON]]:
    """Every message row of every session, ``size`` at a time."""
    now = datetime.now(UTC)
    batch: list[JSON] = []
    for session in sessions:
        for row in message_rows(session, rng, now):
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


async def seed(engine: AsyncEngine, kind: str, user_id: str, rng: random.Random) -> tuple[list[SeedSession], JSON]:
    """Sandboxes, sessions and messages of ``user_id``; returns the sessions and timings."""
    began = time.perf_counter()
    now = datetime.now(UTC)
    sandbox_rows: list[JSON] = []
    for n in range(SANDBOXES):
        slug = f"bench-{n}-{uuid.uuid4().hex[:6]}"
        sandbox_rows.append(
            {
                "id": str(uuid.uuid4()),
                "user_id": user_id,
                "name": slug,
                "slug": slug,
                "repo_name": slug,
                "resource_tier_id": "starter",
                "flavor_id": "js",
                "addon_ids": [],
                "status": "stopped",
                "created_at": now,
                "updated_at": now,
            }
        )
    sessions = plan_sessions([row["id"] for row in sandbox_rows], MESSAGES, SESSIONS, rng)
    async with engine.begin() as conn:
        await conn.execute(insert(Sandbox), sandbox_rows)
        await conn.execute(insert(ChatSession), [session_row(s, user_id, now) for s in sessions])
    written = 0
    if kind == "sqlite":

        async def write(batch: list[Any]) -> None:
            async with engine.begin() as conn:
                await conn.execute(insert(ChatMessage), batch)

        written = await _pipelined(batches(sessions, BATCH_SQLITE, rng), write, began)
        async with engine.connect() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        analyzed = False
    else:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg: Any = raw.driver_connection

            async def copy(batch: list[Any]) -> None:
                # One COPY is one transaction (asyncpg runs it outside SQLAlchemy's transaction).
                await pg.copy_records_to_table("chat_messages", records=batch, columns=list(MESSAGE_COLUMNS))

            records = (
                [
                    tuple(
                        json.dumps(row[c]) if c in _JSON_COLUMNS and row[c] is not None else row[c]
                        for c in MESSAGE_COLUMNS
                    )
                    for row in batch
                ]
                for batch in batches(sessions, BATCH_POSTGRES, rng)
            )
            written = await _pipelined(records, copy, began)
        # What autovacuum would do shortly after a bulk load: fresh planner statistics.
        auto = create_engine(engine.url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
        try:
            async with auto.connect() as conn:
                await conn.execute(text("VACUUM ANALYZE chat_messages"))
                await conn.execute(text("ANALYZE chat_sessions"))
        finally:
            await auto.dispose()
        analyzed = True
    seconds = time.perf_counter() - began
    console.print(
        f"  seeded {written:,} messages in {SESSIONS:,} sessions in {seconds:.1f} s ({written / seconds:,.0f}/s)"
    )
    return sessions, {"messages": written, "seconds": seconds, "rows_per_s": written / seconds, "analyzed": analyzed}


async def _pipelined(
    source: Iterator[list[Any]], write: Callable[[list[Any]], Coroutine[Any, Any, None]], began: float
) -> int:
    """Write every batch of ``source``, building the next one (in a thread) while one is written."""
    written = 0
    batch = await asyncio.to_thread(next, source, None)
    while batch is not None:
        writing = asyncio.create_task(write(batch))
        upcoming = await asyncio.to_thread(next, source, None)
        await writing
        written += len(batch)
        _progress(written, began)
        batch = upcoming
    return written


_last_progress = 0.0


def _progress(written: int, began: float) -> None:
    global _last_progress
    now = time.perf_counter()
    if now - _last_progress >= 10:
        _last_progress = now
        console.print(f"  … {written:,} messages ({written / (now - began):,.0f}/s)")


# --------------------------------------------------------------------------- databases and the API process


@asynccontextmanager
async def database(kind: str, tmp: Path) -> AsyncIterator[str]:
    """A migrated, empty database of ``kind`` (a PostgreSQL scratch database is dropped afterwards)."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'agentpod.db'}"
        engine = create_engine(url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()
        yield url
        return
    admin_url = make_url(os.environ[POSTGRES_ENV])
    name = f"agentpod_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin_url.set(database=name).render_as_string(hide_password=False)
        engine = create_engine(url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()
        yield url
    finally:
        for _ in range(20):
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:  # still in use for a moment after the API process exits
                await asyncio.sleep(0.5)
        else:
            console.print(f"[yellow]could not drop the scratch database {name}; drop it by hand[/yellow]")
        await admin.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def api_process(settings: Settings, workdir: Path) -> AsyncIterator[tuple[str, int]]:
    """``agentpod api`` on a free loopback port, as its own process; yields its base URL and pid."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENTPOD_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "AGENTPOD_DEV_MODE": "true",
            "AGENTPOD_DATA_DIR": str(settings.data_dir),
            "AGENTPOD_DATABASE_URL": settings.resolved_database_url,
            "AGENTPOD_TEMPORAL_ADDRESS": "127.0.0.1:1",  # nothing listens: reads never touch Temporal
            "AGENTPOD_ENCRYPTION_KEYS": generate_entry("bench"),
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)  # outside the repository: a developer's .env cannot apply
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentpod.cli",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the API process exited with {process.returncode} during startup")
                with contextlib.suppress(httpx.TransportError):
                    await client.get("/api/users/me")  # any answer (401) means it serves
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("the API process is not answering after 60 s")
                await asyncio.sleep(0.2)
        yield url, process.pid
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


# --------------------------------------------------------------------------- load


def page_requests(
    sessions: list[SeedSession], rng: random.Random, count: int
) -> tuple[list[str], list[list[str | None]]]:
    """``count`` request paths (half newest page, half before a cursor at a random depth), and the
    same pages as (session id, cursor) pairs for the direct-query phase."""
    paths: list[str] = []
    pages: list[list[str | None]] = []
    for n in range(count):
        session = rng.choice(sessions)
        base = f"/api/v2/sandboxes/{session.sandbox_id}/chat/sessions/{session.id}/messages?limit={PAGE}"
        cursor: str | None = None
        if n % 2 == 1 and session.messages > 1:
            low, high = (PAGE, session.messages - PAGE) if session.messages > 2 * PAGE else (1, session.messages - 1)
            cursor = session.key(rng.randint(low, high)).encode()
        paths.append(base if cursor is None else f"{base}&before={cursor}")
        pages.append([session.id, cursor])
    return paths, pages


async def check_pages(url: str, headers: dict[str, str], sessions: list[SeedSession]) -> JSON:
    """The route serves what was seeded: the newest page, then the page before it, in order."""
    session = sessions[len(sessions) // 2]
    base = f"/api/v2/sandboxes/{session.sandbox_id}/chat/sessions/{session.id}/messages"
    expected = min(PAGE, session.messages)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30, headers=headers) as client:
        newest = (await client.get(base, params={"limit": PAGE})).raise_for_status().json()
        ids = [m["external_message_id"] for m in newest["messages"]]
        want = [session.external_id(i) for i in range(session.messages - expected, session.messages)]
        if ids != want:
            raise RuntimeError(f"newest page differs from the seeded messages: {ids[:3]}... vs {want[:3]}...")
        older: JSON = {"messages": []}
        if newest["has_older"]:
            older = (
                (await client.get(base, params={"limit": PAGE, "before": newest["older_cursor"]}))
                .raise_for_status()
                .json()
            )
            older_ids = [m["external_message_id"] for m in older["messages"]]
            start = session.messages - expected - len(older_ids)
            if older_ids != [session.external_id(i) for i in range(start, start + len(older_ids))]:
                raise RuntimeError("the page before the newest one differs from the seeded messages")
        body = len((await client.get(base, params={"limit": PAGE})).content)
    return {"newest_messages": len(ids), "older_messages": len(older["messages"]), "page_bytes": body}


async def run_load(plan: JSON, tmp: Path) -> list[JSON]:
    """Run the load generator process on ``plan``; its phases' samples."""
    plan_path, out_path = tmp / "plan.json", tmp / "load.json"
    plan_path.write_text(json.dumps(plan))
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._loadgen",
        str(plan_path),
        str(out_path),
        cwd=REPO_ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.decode()[-3000:]}")
    phases: list[JSON] = json.loads(out_path.read_text())["phases"]
    return phases


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(phases: list[JSON], prefix: str) -> JSON:
    """p50 / p90 / p99 / max in ms, requests/s and the server's CPU per request, over every phase
    whose label starts with ``prefix``."""
    latencies: list[float] = []
    seconds = 0.0
    total = 0
    cpu: float | None = 0.0
    for phase in phases:
        if not phase["label"].startswith(prefix):
            continue
        errors = {k: v for k, v in phase["errors"].items() if not k.endswith("example")}
        if errors:
            raise RuntimeError(f"{phase['label']}: error answers {errors}")
        latencies += phase["latencies_ms"]
        seconds += phase["measured_seconds"]
        total += phase["total_requests"]
        cpu = None if cpu is None or phase["server_cpu_ms"] is None else cpu + phase["server_cpu_ms"]
    return {
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "req_per_s": len(latencies) / seconds if seconds else 0.0,
        # The API process's CPU time per request (warm-up included); for SQLite the queries are in it.
        "server_cpu_ms_per_request": cpu / total if cpu is not None and total else None,
    }


async def run_case(kind: str) -> JSON:
    """Migrate, start the API, sign up, seed, check, load; the figures of one database."""
    rng = random.Random(20_250_601)
    with tempfile.TemporaryDirectory(prefix="agentpod-bench-") as tmp_name:
        tmp = Path(tmp_name)
        async with database(kind, tmp) as url:
            settings = Settings(_env_file=None, dev_mode=True, data_dir=tmp / "var", database_url=url)
            async with api_process(settings, tmp / "var") as (api_url, api_pid):
                async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=30) as client:
                    response = await client.post(
                        "/api/auth/sign-up",
                        json={
                            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
                            "password": "correct horse battery",
                            "name": "Bench",
                        },
                    )
                    response.raise_for_status()
                    token, user_id = response.json()["token"], response.json()["user"]["id"]
                engine = create_engine(url)
                try:
                    sessions, seeding = await seed(engine, kind, user_id, rng)
                finally:
                    await engine.dispose()
                headers = {"Authorization": f"Bearer {token}"}
                checked = await check_pages(api_url, headers, sessions)
                paths, pages = page_requests(sessions, rng, SAMPLE_PATHS)
                host, port = api_url.removeprefix("http://").split(":")
                phases: list[JSON] = [
                    {"label": "warm-up", "kind": "http", "concurrency": CONCURRENCY, "seconds": 3.0, "paths": paths}
                ]
                for n in range(ROUNDS):
                    phases += [
                        {
                            "label": f"me {n}",
                            "kind": "http",
                            "concurrency": CONCURRENCY,
                            "seconds": BASELINE_SECONDS,
                            "warmup": WARMUP_SECONDS,
                            "paths": ["/api/users/me"],
                        },
                        {
                            "label": f"page {n}",
                            "kind": "http",
                            "concurrency": CONCURRENCY,
                            "seconds": PAGE_SECONDS,
                            "warmup": WARMUP_SECONDS,
                            "paths": paths,
                        },
                    ]
                phases += [
                    {
                        "label": "sql",
                        "kind": "sql",
                        "concurrency": CONCURRENCY,
                        "seconds": INFO_SECONDS,
                        "warmup": WARMUP_SECONDS,
                        "pages": pages,
                    },
                    {
                        "label": "single",
                        "kind": "http",
                        "concurrency": 1,
                        "seconds": INFO_SECONDS,
                        "warmup": WARMUP_SECONDS,
                        "paths": paths,
                    },
                    {
                        "label": "high",
                        "kind": "http",
                        "concurrency": HIGH_CONCURRENCY,
                        "seconds": INFO_SECONDS,
                        "warmup": WARMUP_SECONDS,
                        "paths": paths,
                    },
                ]
                load_before = os.getloadavg()[0]
                console.print(
                    f"  load: {ROUNDS} rounds × ({BASELINE_SECONDS:.0f} s /users/me + {PAGE_SECONDS:.0f} s page) at "
                    f"{CONCURRENCY} connections, then the query alone, 1 and {HIGH_CONCURRENCY} connections"
                )
                done = await run_load(
                    {
                        "host": host,
                        "port": int(port),
                        "token": token,
                        "database_url": url,
                        "server_pid": api_pid,
                        "seed": rng.random(),
                        "phases": phases,
                    },
                    tmp,
                )
                load_after = os.getloadavg()[0]
    figures: JSON = {}
    for label in ("me", "page", "sql", "single", "high"):
        figures[label] = summary(done, label)
    figures["messages_seen"] = sorted({n for phase in done for n in phase["messages_seen"]})
    figures["bodies_checked"] = sum(phase["checked"] for phase in done)
    figures["seeding"] = seeding
    figures["check"] = checked
    figures["load_average_1m"] = [load_before, load_after]
    return figures


# --------------------------------------------------------------------------- report


def _line(label: str, figures: JSON) -> str:
    return (
        f"{label}: p50 {figures['p50_ms']:.2f} ms, p90 {figures['p90_ms']:.2f}, p99 {figures['p99_ms']:.2f}, "
        f"max {figures['max_ms']:.1f}; {figures['req_per_s']:,.0f} req/s ({figures['requests']:,} requests)"
        + _cpu(figures)
    )


def _cpu(figures: JSON) -> str:
    cpu = figures["server_cpu_ms_per_request"]
    return "" if cpu is None else f"; API process CPU {cpu:.2f} ms/request"


def results(kind: str, figures: JSON) -> list[Result]:
    """Table rows for one database."""
    name = "SQLite" if kind == "sqlite" else "PostgreSQL"
    page, me, sql, high = figures["page"], figures["me"], figures["sql"], figures["high"]
    single = figures["single"]
    console.print(f"  {_line(f'page @{CONCURRENCY}', page)}")
    console.print(f"  {_line(f'/users/me @{CONCURRENCY}', me)}")
    console.print(f"  {_line(f'message_page() alone @{CONCURRENCY}', {**sql, 'server_cpu_ms_per_request': None})}")
    console.print(f"  {_line('page @1', single)}")
    console.print(f"  {_line(f'page @{HIGH_CONCURRENCY}', high)}")
    console.print(
        f"  page bodies checked: {figures['bodies_checked']}, message counts seen {figures['messages_seen']}; "
        f"load average {figures['load_average_1m'][0]:.2f} → {figures['load_average_1m'][1]:.2f}"
    )
    details = {
        "messages": MESSAGES,
        "sessions": SESSIONS,
        "concurrency": CONCURRENCY,
        "high_concurrency": HIGH_CONCURRENCY,
        **figures,
    }
    tag = f"{MESSAGES / 1e6:g}M msgs" if MESSAGES >= 1_000_000 else f"{MESSAGES:,} msgs"
    return [
        Result(
            f"api {name}: chat page p99 @{CONCURRENCY} conns, {tag} (vs /users/me)",
            page["p99_ms"],
            "ms",
            baseline=me["p99_ms"],
            target=f"≤ {TARGET_P99_MS:.0f} ms",
            passed=page["p99_ms"] <= TARGET_P99_MS,
            details=details,
        ),
        Result(
            f"  {name}: chat page p50 (vs /users/me)",
            page["p50_ms"],
            "ms",
            baseline=me["p50_ms"],
            target="info",
        ),
        Result(
            f"  {name}: chat page throughput (vs /users/me)",
            page["req_per_s"],
            "req/s",
            baseline=me["req_per_s"],
            target="info",
        ),
        Result(
            f"  {name}: page query alone p99, no HTTP (vs whole request)",
            sql["p99_ms"],
            "ms",
            baseline=page["p99_ms"],
            target="info",
        ),
        Result(
            f"  {name}: chat page p99 @1 conn (vs @{CONCURRENCY})",
            single["p99_ms"],
            "ms",
            baseline=page["p99_ms"],
            target="info",
            details={"req_per_s": single["req_per_s"], "p50_ms": single["p50_ms"]},
        ),
        Result(
            f"  {name}: chat page p99 @{HIGH_CONCURRENCY} conns (vs @{CONCURRENCY})",
            high["p99_ms"],
            "ms",
            baseline=page["p99_ms"],
            target="info",
            details={"req_per_s": high["req_per_s"], "p50_ms": high["p50_ms"]},
        ),
    ] + (
        [
            Result(
                f"  {name}: API process CPU per chat page (vs /users/me)",
                page["server_cpu_ms_per_request"],
                "ms",
                baseline=me["server_cpu_ms_per_request"],
                target="info",
            )
        ]
        if page["server_cpu_ms_per_request"] is not None and me["server_cpu_ms_per_request"] is not None
        else []
    )


async def run() -> list[Result]:
    """The page benchmark on SQLite, and on PostgreSQL when configured."""
    kinds = [kind for kind in DATABASES if kind == "sqlite" or (kind == "postgres" and os.environ.get(POSTGRES_ENV))]
    console.print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {MESSAGES:,} messages in {SESSIONS:,} "
        f"sessions; {PAGE}-message pages at {CONCURRENCY} connections (closed loop); databases: {', '.join(kinds)}"
    )
    if "postgres" in DATABASES and "postgres" not in kinds:
        console.print(f"[yellow]PostgreSQL skipped: set {POSTGRES_ENV}[/yellow]")
    rows: list[Result] = []
    for kind in kinds:
        console.print(f"[bold]{kind}[/bold]")
        rows += results(kind, await run_case(kind))
    return rows
