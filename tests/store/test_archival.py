"""The archival batch on both databases: anonymized copies, transactional moves, crash safety."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.domain.archival import ArchivePosition
from agentpod.store.archival import ARCHIVE_METADATA_KEYS, archive_batch, scrub_metadata
from agentpod.store.tables import ActivityLog, ActivityLogArchive, User

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=90)


async def _user(db: AsyncSession, name: str = "Ada Lovelace") -> User:
    user = User(email=f"{uuid.uuid4().hex[:8]}.lovelace@example.com", name=name)
    db.add(user)
    await db.flush()
    return user


def _row(user_id: str | None, age: timedelta, **extra: Any) -> ActivityLog:
    return ActivityLog(user_id=user_id, action="sandbox.start", created_at=NOW - age, **extra)


async def _archive_all(sessions: async_sessionmaker[AsyncSession], *, limit: int) -> tuple[int, int, int]:
    """Run batches until one comes back short, like the workflow does; returns (deleted, archived, batches)."""
    after: ArchivePosition | None = None
    deleted = archived = batches = 0
    while True:
        async with sessions.begin() as db:
            result = await archive_batch(db, cutoff=CUTOFF, after=after, limit=limit)
        deleted, archived, batches = deleted + result.deleted, archived + result.archived, batches + 1
        after = result.last or after
        if result.deleted < limit:
            return deleted, archived, batches


async def _ids(sessions: async_sessionmaker[AsyncSession], table: Any) -> list[str]:
    async with sessions() as db:
        return sorted((await db.scalars(select(table.id))).all())


async def test_old_rows_move_to_the_archive_in_batches_young_rows_stay(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as db:
        user = await _user(db)
        old = [_row(user.id, timedelta(days=90, seconds=i + 1)) for i in range(7)]
        # Anonymized by an account deletion: archived like every other row.
        old += [_row(None, timedelta(days=400), anonymized=True, metadata_={"actor": "user"})]
        young = [_row(user.id, timedelta(days=89)), _row(user.id, timedelta(days=90))]  # exactly at the cutoff: kept
        db.add_all(old + young)
    old_ids, young_ids = sorted(row.id for row in old), sorted(row.id for row in young)

    assert await _archive_all(sessions, limit=3) == (8, 8, 3)
    assert await _ids(sessions, ActivityLog) == young_ids
    assert await _ids(sessions, ActivityLogArchive) == old_ids
    async with sessions() as db:
        archived = {row.id: row for row in (await db.scalars(select(ActivityLogArchive))).all()}
    for row in old:
        copy = archived[row.id]
        assert (copy.action, copy.original_created_at) == (row.action, row.created_at)
    assert await _archive_all(sessions, limit=3) == (0, 0, 1)  # a second run finds nothing


async def test_rows_sharing_a_timestamp_are_neither_skipped_nor_repeated_across_batches(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as db:
        rows = [_row(None, timedelta(days=100)) for _ in range(9)] + [_row(None, timedelta(days=120))]
        db.add_all(rows)
    assert await _archive_all(sessions, limit=2) == (10, 10, 6)  # 5 full batches, then an empty one
    assert await _ids(sessions, ActivityLogArchive) == sorted(row.id for row in rows)


async def test_an_id_already_in_the_archive_does_not_block_the_batch(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # The old archiver inserted, then crashed before deleting: the row is in both tables. It used
    # to fail the primary key on every later run, forever.
    async with sessions.begin() as db:
        rows = [_row(None, timedelta(days=100 + i)) for i in range(4)]
        db.add_all(rows)
        await db.flush()
        stuck = rows[0]
        db.add(
            ActivityLogArchive(
                id=stuck.id, action=stuck.action, entity_type=None, metadata_={}, original_created_at=stuck.created_at
            )
        )
    deleted, archived, _ = await _archive_all(sessions, limit=10)
    assert (deleted, archived) == (4, 3)  # one copy already existed: not written twice
    assert await _ids(sessions, ActivityLog) == []
    assert await _ids(sessions, ActivityLogArchive) == sorted(row.id for row in rows)


async def test_a_lost_batch_result_is_harmless_when_retried_from_the_old_position(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # The activity committed, then the worker died before Temporal heard back: the retry starts
    # from the position the workflow knew, finds those rows gone and takes the next ones.
    async with sessions.begin() as db:
        rows = [_row(None, timedelta(days=100, seconds=i)) for i in range(5)]
        db.add_all(rows)
    async with sessions.begin() as db:
        first = await archive_batch(db, cutoff=CUTOFF, after=None, limit=2)
    async with sessions.begin() as db:
        retried = await archive_batch(db, cutoff=CUTOFF, after=None, limit=2)
    assert (first.deleted, retried.deleted) == (2, 2)
    assert await _archive_all(sessions, limit=2) == (1, 1, 1)
    assert await _ids(sessions, ActivityLogArchive) == sorted(row.id for row in rows)


_KILLED_MID_BATCH = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import datetime
    from sqlalchemy import event
    from agentpod.store.archival import archive_batch
    from agentpod.store.engine import create_engine, session_factory

    async def main(url, cutoff, limit):
        engine = create_engine(url)
        copies = 0

        def die_in_second_batch(conn, cursor, statement, *args):
            # The second batch has written its copies (PostgreSQL: and deleted the originals) but
            # not committed: die now, as a killed worker would.
            nonlocal copies
            if "INSERT INTO activity_log_archive" in statement:
                copies += 1
                if copies == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        event.listen(engine.sync_engine, "after_cursor_execute", die_in_second_batch)
        sessions, after = session_factory(engine), None
        while True:
            async with sessions.begin() as db:
                result = await archive_batch(db, cutoff=cutoff, after=after, limit=limit)
            after = result.last or after
            if result.deleted < limit:
                return

    asyncio.run(main(sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])))
    """
)


async def test_a_process_killed_mid_batch_neither_duplicates_nor_loses_a_row(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as db:
        rows = [_row(None, timedelta(days=100, seconds=i)) for i in range(10)]
        db.add_all(rows)
    await engine.dispose()  # the child must be the only writer, as a second worker would be
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_MID_BATCH, database_url, CUTOFF.isoformat(), "3"
    )
    assert await child.wait() == -signal.SIGKILL

    # The first batch committed; the second rolled back as a whole: its rows are still in place.
    archived_before = await _ids(sessions, ActivityLogArchive)
    assert len(archived_before) == 3
    assert len(await _ids(sessions, ActivityLog)) == 7

    await _archive_all(sessions, limit=3)
    assert await _ids(sessions, ActivityLog) == []
    assert await _ids(sessions, ActivityLogArchive) == sorted(row.id for row in rows)
    async with sessions() as db:
        assert await db.scalar(select(func.count()).select_from(ActivityLogArchive)) == 10


async def test_the_archive_holds_no_user_id_email_name_ip_or_user_agent(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ip, ua = "203.0.113.77", "Mozilla/5.0 (X11; Linux x86_64) PrivateBrowser/9.1"
    async with sessions.begin() as db:
        user = await _user(db, name="Augusta Ada King")
        personal = [user.id, user.email, user.name, ip, ua, "198.51.100.4", "2001:db8::1", "ada@home.example"]
        metadata = {
            # What the origin stored and the usual suspects...
            "email": user.email,
            "name": user.name,
            "ip": ip,
            "userAgent": ua,
            "params": {"id": user.id},
            # ...and personal values hidden under keys the archive keeps.
            "status": "ada@home.example",
            "provider_id": "198.51.100.4",
            "source": "2001:db8::1",
            "role": user.id,
            "fields": ["name", user.email],
            "actor": {"email": user.email},
            # Kept: describes what happened, not who.
            "auto_start": True,
            "flavor_id": "python",
        }
        db.add_all(
            [
                _row(user.id, timedelta(days=91), ip_address=ip, user_agent=ua, entity_id=user.id, metadata_=metadata),
                _row(
                    None, timedelta(days=95), anonymized=True, entity_type="user", entity_id=user.id, metadata_=metadata
                ),
            ]
        )
    await _archive_all(sessions, limit=100)

    async with engine.connect() as conn:
        columns = {
            column["name"] for column in await conn.run_sync(lambda c: inspect(c).get_columns("activity_log_archive"))
        }
    assert columns == {"id", "action", "entity_type", "metadata", "original_created_at", "archived_at"}
    async with sessions() as db:
        archived = (await db.scalars(select(ActivityLogArchive))).all()
    assert len(archived) == 2
    for row in archived:
        assert row.metadata_ == {"auto_start": True, "flavor_id": "python"}
        dump = json.dumps({column: str(getattr(row, attribute)) for column, attribute in _ARCHIVE_ATTRIBUTES.items()})
        leaked = [value for value in personal if value.lower() in dump.lower()]
        assert not leaked, f"archive row {row.id} holds personal data: {leaked}"


_ARCHIVE_ATTRIBUTES = {
    "id": "id",
    "action": "action",
    "entity_type": "entity_type",
    "metadata": "metadata_",
    "original_created_at": "original_created_at",
    "archived_at": "archived_at",
}


def test_scrub_keeps_only_allowlisted_keys_with_identifier_values() -> None:
    assert scrub_metadata(None) == {} and scrub_metadata(["a"]) == {}
    kept = {"actor": "operator", "status": "running", "fields": ["name", "flavor_id"], "auto_start": False}
    assert scrub_metadata({**kept, "name": "My App", "request_id": "abc"}) == kept
    assert scrub_metadata({"fields": list(map(str, range(40)))}) == {}  # long lists: dropped
    assert scrub_metadata({"status": "x" * 65}) == {}
    assert scrub_metadata({"status": "10.0.0.1"}) == {}
    assert "name" not in ARCHIVE_METADATA_KEYS and "email" not in ARCHIVE_METADATA_KEYS


# Values the SQL filters must judge exactly as scrub_metadata does.
_CORPUS: list[dict[str, Any]] = [
    {"actor": "user", "status": "running", "auto_start": True, "fields": ["name", "addon_ids"]},
    {"status": False, "role": None, "source": 3, "provider_id": 2.5, "flavor_id": "python3.12"},
    {"status": "10.0.0.1", "role": "fe80::1", "source": "550e8400-e29b-41d4-a716-446655440000"},
    {"status": "aa:bb:cc:dd:ee:ff", "role": "cafe-bad", "source": "12345", "actor": "deadbeef"},
    {"status": "with space", "role": "ada@example.com", "source": "a/b", "actor": "ünï", "flavor_id": ""},
    {"status": "x" * 64, "role": "y" * 65, "source": "line\n", "actor": "tab\t"},
    {"fields": [], "addon_ids": ["vnc", "code-server"], "resource_tier_id": ["ok", "not ok"]},
    {"fields": list(range(32)), "addon_ids": list(range(33)), "source": [["nested"]], "role": [{"a": 1}]},
    {"actor": {"email": "ada@example.com"}, "status": ["x", None, True, 1.5], "email": "ada@example.com"},
    {"name": "Ada", "ip": "203.0.113.1", "userAgent": "Mozilla/5.0"},
    {},
]


async def test_the_sql_filter_agrees_with_the_python_rule(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as db:
        rows = [_row(None, timedelta(days=100, seconds=i), metadata_=metadata) for i, metadata in enumerate(_CORPUS)]
        db.add_all(rows)
    await _archive_all(sessions, limit=100)
    async with sessions() as db:
        archived = {row.id: row.metadata_ for row in (await db.scalars(select(ActivityLogArchive))).all()}
    for row, metadata in zip(rows, _CORPUS, strict=True):
        assert archived[row.id] == scrub_metadata(metadata), metadata
