"""Activity-log archival: 1,000,000 old rows through ``ArchivalWorkflow``, against a row-by-row loop.

For SQLite (a temporary file) and PostgreSQL (a scratch database created next to
``AGENTPOD_TEST_POSTGRES_URL``; the row is skipped when it is unset), the database is migrated and
seeded in SQL with 1,000 users, 1,000,000 rows older than the 90-day retention (spread over ~300
days, 5 % already anonymized, personal metadata, IP, user agent) and 50,000 younger rows that must
stay; ids are random UUIDs, as in production. The measured figure is the wall time of one
``ArchivalWorkflow`` run on a local Temporal dev server with a real worker, in each database's
batch size (``store.archival.BATCH_SIZES``: 20,000 on SQLite, 5,000 on PostgreSQL), each batch
one activity and one transaction, set-based in SQL (PostgreSQL: one statement, delete returning
into an insert of the scrubbed copies; SQLite: insert of the scrubbed copies, then delete).
Afterwards the bench checks that exactly the old rows moved.

**Baseline**, same run, same database: the naive loop (select the old ids, then per row a select,
an insert, a delete and a commit), on ``AGENTPOD_BENCH_BASELINE_ROWS`` (default 20,000) freshly
seeded old rows, extrapolated linearly to 1,000,000 (the per-row cost does not grow with the
table: every statement is a primary-key lookup). Running it on the full million would take many
minutes per database.

Target (activity-log issue): ≤ 60 s per database.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.archival import ArchivalActivities
from activities.resources import WorkerResources
from agentpod.domain.archival import ArchivalInput
from agentpod.settings import Settings
from agentpod.store.archival import BATCH_SIZES, scrub_metadata
from agentpod.store.base import utcnow
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import upgrade_database
from agentpod.store.tables import ActivityLog, ActivityLogArchive
from bench._result import Result, console
from bench._stack import temporal_binary
from workflows.archival import ArchivalWorkflow

OLD_ROWS = int(os.environ.get("AGENTPOD_BENCH_ARCHIVAL_ROWS", "1000000"))
YOUNG_ROWS = 50_000
USERS = 1_000
BASELINE_ROWS = int(os.environ.get("AGENTPOD_BENCH_BASELINE_ROWS", "20000"))
TARGET_SECONDS = 60.0
RETENTION_DAYS = 90
_LOG = cast(Table, ActivityLog.__table__)

# --------------------------------------------------------------------------- seeding, in SQL

_SQLITE_USERS = """
INSERT INTO "user" (id, email, name, email_verified, created_at, updated_at)
WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < :users - 1)
SELECT printf('00000000-0000-4000-8000-%012d', x), printf('user%d@example.com', x), printf('User Number %d', x), 0,
       :now, :now
FROM c
"""
_SQLITE_ROWS = """
INSERT INTO activity_log
    (id, user_id, action, entity_type, entity_id, metadata, ip_address, user_agent, anonymized, created_at)
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-8'
             || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
       CASE WHEN x % 20 = 0 THEN NULL ELSE printf('00000000-0000-4000-8000-%012d', x % :users) END,
       CASE x % 3 WHEN 0 THEN 'sandbox.start' WHEN 1 THEN 'sandbox.stop' ELSE 'auth.login' END,
       'sandbox', printf('sb-%d', x % 5000),
       json_object('name', printf('Project %d', x % 500), 'actor', 'user', 'status', 'running',
                   'fields', json_array('name'), 'email', printf('user%d@example.com', x % :users)),
       CASE WHEN x % 20 = 0 THEN NULL ELSE printf('203.0.%d.%d', (x / 256) % 256, x % 256) END,
       CASE WHEN x % 20 = 0 THEN NULL ELSE 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AgentPod/2.1' END,
       CASE WHEN x % 20 = 0 THEN 1 ELSE 0 END,
       strftime('%Y-%m-%d %H:%M:%S', :newest, printf('-%d seconds', x * :spacing)) || '.000000'
FROM c
"""
_PG_USERS = """
INSERT INTO "user" (id, email, name, email_verified, created_at, updated_at)
SELECT '00000000-0000-4000-8000-' || lpad(x::text, 12, '0'), 'user' || x || '@example.com', 'User Number ' || x,
       false, :now, :now
FROM generate_series(0, :users - 1) AS x
"""
_PG_ROWS = """
INSERT INTO activity_log
    (id, user_id, action, entity_type, entity_id, metadata, ip_address, user_agent, anonymized, created_at)
SELECT md5((:offset + x)::text)::uuid::text,
       CASE WHEN x % 20 = 0 THEN NULL ELSE '00000000-0000-4000-8000-' || lpad((x % :users)::text, 12, '0') END,
       CASE x % 3 WHEN 0 THEN 'sandbox.start' WHEN 1 THEN 'sandbox.stop' ELSE 'auth.login' END,
       'sandbox', 'sb-' || (x % 5000),
       jsonb_build_object('name', 'Project ' || (x % 500), 'actor', 'user', 'status', 'running',
                          'fields', jsonb_build_array('name'), 'email', 'user' || (x % :users) || '@example.com'),
       CASE WHEN x % 20 = 0 THEN NULL ELSE '203.0.' || ((x / 256) % 256) || '.' || (x % 256) END,
       CASE WHEN x % 20 = 0 THEN NULL ELSE 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AgentPod/2.1' END,
       x % 20 = 0,
       CAST(:newest AS timestamptz) - make_interval(secs => x * :spacing)
FROM generate_series(1, :n) AS x
"""


async def _seed_rows(engine: AsyncEngine, *, n: int, offset: int, newest: datetime, spacing: int) -> None:
    sqlite = engine.dialect.name == "sqlite"
    stamp = newest.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if sqlite else newest
    async with engine.begin() as conn:
        await conn.execute(
            text(_SQLITE_ROWS if sqlite else _PG_ROWS),
            {"n": n, "offset": offset, "users": USERS, "newest": stamp, "spacing": spacing},
        )


async def _seed(engine: AsyncEngine, now: datetime) -> float:
    began = time.perf_counter()
    sqlite = engine.dialect.name == "sqlite"
    async with engine.begin() as conn:
        stamp: Any = now.strftime("%Y-%m-%d %H:%M:%S.000000") if sqlite else now
        await conn.execute(text(_SQLITE_USERS if sqlite else _PG_USERS), {"users": USERS, "now": stamp})
    oldest_young = now - timedelta(days=RETENTION_DAYS, hours=1)
    # Old rows: from 91 days back to ~400 days back; young rows: the last ~29 days.
    await _seed_rows(engine, n=OLD_ROWS, offset=0, newest=oldest_young, spacing=26)
    await _seed_rows(engine, n=YOUNG_ROWS, offset=OLD_ROWS, newest=now, spacing=50)
    if not sqlite:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE activity_log"))
    return time.perf_counter() - began


async def _count(sessions: async_sessionmaker[AsyncSession], table: Any, cutoff: datetime | None = None) -> int:
    async with sessions() as db:
        query = select(func.count()).select_from(table)
        if cutoff is not None:
            query = query.where(table.c.created_at < cutoff)
        return int(await db.scalar(query) or 0)


# --------------------------------------------------------------------------- the two ways


async def _archive_with_workflow(env: WorkflowEnvironment, sessions: async_sessionmaker[AsyncSession]) -> Any:
    queue = f"bench-archival-{uuid.uuid4().hex[:8]}"
    resources = WorkerResources(settings=Settings(_env_file=None), sessions=sessions)
    async with Worker(
        env.client, task_queue=queue, workflows=[ArchivalWorkflow], activities=ArchivalActivities(resources).all()
    ):
        return await env.client.execute_workflow(
            ArchivalWorkflow.run,
            ArchivalInput(retention_days=RETENTION_DAYS),
            id=f"bench-archival-{uuid.uuid4()}",
            task_queue=queue,
        )


async def _archive_row_by_row(sessions: async_sessionmaker[AsyncSession], cutoff: datetime) -> int:
    """The naive loop: each row selected, copied, deleted and committed on its own."""
    async with sessions() as db:
        ids = (await db.scalars(select(_LOG.c.id).where(_LOG.c.created_at < cutoff))).all()
        dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
        insert = dialect.insert(ActivityLogArchive.__table__).on_conflict_do_nothing(index_elements=["id"])
        for row_id in ids:
            row = (await db.execute(select(_LOG).where(_LOG.c.id == row_id))).one()
            values = {
                "id": row.id,
                "action": row.action,
                "entity_type": row.entity_type,
                "metadata": scrub_metadata(row.metadata),
                "original_created_at": row.created_at,
                "archived_at": utcnow(),
            }
            await db.execute(insert, values)
            await db.execute(delete(_LOG).where(_LOG.c.id == row_id))
            await db.commit()
    return len(ids)


# --------------------------------------------------------------------------- one database


async def _measure(label: str, url: str, env: WorkflowEnvironment) -> list[Result]:
    engine = create_engine(url)
    try:
        await upgrade_database(engine)
        sessions = session_factory(engine)
        now = datetime.now(UTC)
        cutoff = now - timedelta(days=RETENTION_DAYS)
        seed_seconds = await _seed(engine, now)
        console.print(f"{label}: seeded {OLD_ROWS:,} old + {YOUNG_ROWS:,} young rows in {seed_seconds:.1f} s")

        began = time.perf_counter()
        progress = await _archive_with_workflow(env, sessions)
        seconds = time.perf_counter() - began
        left_old = await _count(sessions, _LOG, cutoff)
        left = await _count(sessions, _LOG)
        archived = await _count(sessions, ActivityLogArchive.__table__)
        correct = (progress.deleted, progress.archived, archived, left_old, left) == (
            OLD_ROWS,
            OLD_ROWS,
            OLD_ROWS,
            0,
            YOUNG_ROWS,
        )
        console.print(
            f"{label}: workflow archived {progress.archived:,} rows in {progress.batches} batches, {seconds:.1f} s "
            f"({'correct' if correct else 'WRONG COUNTS'}: {left:,} left, {archived:,} in the archive)"
        )

        await _seed_rows(engine, n=BASELINE_ROWS, offset=10 * OLD_ROWS, newest=cutoff - timedelta(days=1), spacing=1)
        began = time.perf_counter()
        moved = await _archive_row_by_row(sessions, cutoff)
        baseline_measured = time.perf_counter() - began
        baseline = baseline_measured * OLD_ROWS / moved
        console.print(
            f"{label}: row by row moved {moved:,} rows in {baseline_measured:.1f} s "
            f"→ {baseline:.0f} s extrapolated to {OLD_ROWS:,}"
        )
        return [
            Result(
                f"archive {OLD_ROWS:,} rows, {label} (vs row by row)",
                seconds,
                "s",
                baseline=baseline,
                target=f"≤ {TARGET_SECONDS:.0f} s, counts exact",
                passed=seconds <= TARGET_SECONDS and correct,
                details={
                    "rows_per_second": OLD_ROWS / seconds,
                    "batches": progress.batches,
                    "batch_size": BATCH_SIZES[engine.dialect.name],
                    "seed_seconds": seed_seconds,
                    "counts": {"archive": archived, "left": left, "left_old": left_old},
                    "baseline_rows": moved,
                    "baseline_measured_seconds": baseline_measured,
                    "baseline_rows_per_second": moved / baseline_measured,
                },
            ),
            Result(
                f"  {label} rows/s (vs row by row)", OLD_ROWS / seconds, "rows/s", baseline=moved / baseline_measured
            ),
        ]
    finally:
        await engine.dispose()


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
    # Autovacuum (a superuser process FORCE may not end) cleans up after the million deletes for a
    # while: retry until it is done rather than leave the scratch database behind.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = make_url(url).database
    try:
        for _ in range(120):
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return
            except DBAPIError:
                await asyncio.sleep(1)
        console.print(f"[yellow]could not drop the scratch database {name}; drop it by hand[/yellow]")
    finally:
        await admin.dispose()


async def run() -> list[Result]:
    """SQLite and PostgreSQL: the workflow against the row-by-row loop."""
    rows: list[Result] = []
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=temporal_binary()
    )
    async with env:
        with tempfile.TemporaryDirectory(prefix="agentpod-bench-") as tmp:
            rows += await _measure("SQLite", f"sqlite+aiosqlite:///{Path(tmp) / 'agentpod.db'}", env)
        scratch = await _scratch_postgres()
        if scratch is None:
            console.print("[yellow]PostgreSQL skipped: set AGENTPOD_TEST_POSTGRES_URL[/yellow]")
        else:
            admin_url, url = scratch
            try:
                rows += await _measure("PostgreSQL", url, env)
            finally:
                await _drop_postgres(admin_url, url)
    return rows
