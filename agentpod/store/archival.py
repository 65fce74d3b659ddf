"""Moving old activity rows into the anonymized archive, one transaction per batch.

A batch takes the next rows in keyset order ``(created_at, id)`` older than the cutoff, writes
anonymized copies to ``activity_log_archive`` (``ON CONFLICT (id) DO NOTHING``) and deletes the
originals, all in one transaction and entirely in SQL: no row travels to Python and back. A process
killed half-way rolls the whole batch back; an id already in the archive (left by an older,
non-transactional archiver) is not written twice and does not block the batch. Rows anonymized by an
account deletion are archived like any other.

The copy keeps the action, entity type, original time and the *safe* part of the metadata; user
id, entity id, IP address and user agent have no column in the archive. The metadata rule is
:func:`scrub_metadata` (the specification, in Python) and its SQL twin for each database; a test
checks on both databases that they agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, literal, literal_column, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.domain.archival import ArchiveBatchResult, ArchivePosition
from agentpod.store.base import UTCDateTime, utcnow
from agentpod.store.tables import ActivityLog, ActivityLogArchive

_LOG = cast(Table, ActivityLog.__table__)
_ARCHIVE = cast(Table, ActivityLogArchive.__table__)

# Rows per batch (one transaction). SQLite writes every touched index page twice (WAL, then
# checkpoint), so larger batches that share pages are much cheaper per row there: 1M rows took
# 78 s at 5,000 and 49 s at 20,000 (holding the write lock ~1 s per batch). PostgreSQL is fastest
# with smaller statements (22 s at 5,000, 27 s at 20,000). See bench/bench_archival.py.
BATCH_SIZES = {"sqlite": 20_000, "postgresql": 5_000}

# Metadata keys whose values describe *what* happened, never *who*: everything else is dropped.
# Adding a key here is a privacy decision: its values must never hold names, emails, addresses,
# free text or identifiers of a person.
ARCHIVE_METADATA_KEYS = frozenset(
    {
        "actor",  # "user" / "operator"
        "status",  # sandbox status after a transition
        "fields",  # names of changed fields
        "auto_start",
        "resource_tier_id",
        "flavor_id",
        "addon_ids",
        "provider_id",
        "auth_type",
        "role",  # chat message role
        "source",  # "opencode" / "acp_gateway"
    }
)
assert all(re.fullmatch(r"[a-z_]+", key) for key in ARCHIVE_METADATA_KEYS)  # inlined into SQL below
MAX_LIST = 32
MAX_TEXT = 64

# Even under an allowed key only short identifiers survive: no spaces, "@", slashes or non-ASCII;
# and nothing shaped like an address or an id (hex digits joined by ".", ":" or "-": IPv4, IPv6,
# UUIDs, MACs).
_TOKEN = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_TEXT}}}")
_HEX_AND_SEPARATORS = re.compile(r"[0-9A-Fa-f.:-]+")


def _safe_text(value: str) -> bool:
    if not _TOKEN.fullmatch(value):
        return False
    return not (_HEX_AND_SEPARATORS.fullmatch(value) and any(sep in value for sep in ".:-"))


def _safe_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and _safe_text(value)


def _safe_value(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) <= MAX_LIST and all(_safe_scalar(item) for item in value)
    return _safe_scalar(value)


def scrub_metadata(metadata: Any) -> dict[str, Any]:
    """The archivable part of a row's metadata: allowlisted keys with identifier-shaped values only."""
    if not isinstance(metadata, Mapping):
        return {}
    return {key: value for key, value in metadata.items() if key in ARCHIVE_METADATA_KEYS and _safe_value(value)}


# ------------------------------------------------------------------ the same rule in SQL

_KEYS = ", ".join(f"'{key}'" for key in sorted(ARCHIVE_METADATA_KEYS))


def _sqlite_safe_text(value: str) -> str:
    return (
        f"(length({value}) BETWEEN 1 AND {MAX_TEXT} AND {value} NOT GLOB '*[^A-Za-z0-9_.:-]*' "
        f"AND ({value} GLOB '*[^0-9A-Fa-f.:-]*' OR {value} NOT GLOB '*[.:-]*'))"
    )


def _sqlite_safe_scalar(alias: str) -> str:
    return (
        f"({alias}.type IN ('null', 'true', 'false', 'integer', 'real') "
        f"OR ({alias}.type = 'text' AND {_sqlite_safe_text(f'{alias}.value')}))"
    )


def _sqlite_scrub(column: str) -> str:
    # json_each reports true/false/null as SQL values: turn them back into JSON for the new object.
    return f"""(SELECT coalesce(json_group_object(j.key, CASE j.type
                WHEN 'true' THEN json('true') WHEN 'false' THEN json('false') WHEN 'null' THEN json('null')
                WHEN 'array' THEN json(j.value) ELSE j.value END), '{{}}')
        FROM json_each({column}) AS j
        WHERE j.key IN ({_KEYS})
          AND ({_sqlite_safe_scalar("j")}
               OR (j.type = 'array' AND json_array_length(j.value) <= {MAX_LIST}
                   AND NOT EXISTS (SELECT 1 FROM json_each(j.value) AS e WHERE NOT {_sqlite_safe_scalar("e")}))))"""


def _pg_safe_scalar(value: str) -> str:
    text = f"({value} #>> '{{}}')"
    return (
        f"(jsonb_typeof({value}) IN ('null', 'boolean', 'number') OR (jsonb_typeof({value}) = 'string' "
        f"AND {text} ~ '^[A-Za-z0-9_.:-]{{1,{MAX_TEXT}}}$' "
        f"AND NOT ({text} ~ '^[0-9A-Fa-f.:-]+$' AND {text} ~ '[.:-]')))"
    )


def _pg_scrub(column: str) -> str:
    # CASE, not AND: PostgreSQL may evaluate AND operands in any order, and the array functions
    # raise on non-arrays.
    return f"""(CASE WHEN jsonb_typeof({column}) = 'object' THEN
        (SELECT coalesce(jsonb_object_agg(j.key, j.value), '{{}}'::jsonb)
           FROM jsonb_each({column}) AS j
          WHERE j.key IN ({_KEYS})
            AND CASE WHEN jsonb_typeof(j.value) = 'array' THEN
                     jsonb_array_length(j.value) <= {MAX_LIST}
                     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(j.value) AS e(v)
                                      WHERE NOT {_pg_safe_scalar("e.v")})
                ELSE {_pg_safe_scalar("j.value")} END)
        ELSE '{{}}'::jsonb END)"""


def scrub_metadata_sql(dialect: str, column: str) -> str:
    """:func:`scrub_metadata` as a SQL expression over ``column`` (a JSON column) for ``dialect``."""
    return _pg_scrub(column) if dialect == "postgresql" else _sqlite_scrub(column)


# ------------------------------------------------------------------ the batch


def _after(position: ArchivePosition | None) -> Any:
    if position is None:
        return True
    created_at = _LOG.c.created_at
    # The plain range term comes first so PostgreSQL and SQLite can seek the created_at index.
    return and_(
        created_at >= position.created_at,
        or_(created_at > position.created_at, _LOG.c.id > position.id),
    )


_COPIED = ["id", "action", "entity_type", "metadata", "original_created_at", "archived_at"]


def _last(rows: Sequence[Any]) -> ArchivePosition | None:
    if not rows:
        return None
    newest = max(rows, key=lambda row: (row.created_at, row.id))
    return ArchivePosition(created_at=newest.created_at, id=newest.id)


async def archive_batch(
    db: AsyncSession, *, cutoff: datetime, after: ArchivePosition | None, limit: int | None = None
) -> ArchiveBatchResult:
    """Move up to ``limit`` rows (default: the database's batch size) created before ``cutoff``, and
    after ``after``, into the archive.

    Runs in ``db``'s current transaction; the caller commits. Returns what moved and the newest row
    taken, which is where the next batch starts.
    """
    dialect = db.get_bind().dialect.name
    limit = limit or BATCH_SIZES.get(dialect, 5_000)
    batch = (
        select(_LOG.c.id)
        .where(_LOG.c.created_at < cutoff, _after(after))
        .order_by(_LOG.c.created_at, _LOG.c.id)
        .limit(limit)
        .scalar_subquery()
    )
    archived_at = literal(utcnow(), UTCDateTime())
    if dialect == "postgresql":
        result = await _batch_postgresql(db, batch, archived_at)
    else:
        result = await _batch_sqlite(db, batch, archived_at)
    result.exhausted = result.deleted < limit
    return result


async def _batch_postgresql(db: AsyncSession, batch: Any, archived_at: Any) -> ArchiveBatchResult:
    # One statement: delete returning the rows, insert their scrubbed copies, report.
    moved = (
        delete(_LOG)
        .where(_LOG.c.id.in_(batch))
        .returning(_LOG.c.id, _LOG.c.action, _LOG.c.entity_type, _LOG.c.metadata, _LOG.c.created_at)
        .cte("moved")
    )
    copies = select(
        moved.c.id,
        moved.c.action,
        moved.c.entity_type,
        literal_column(_pg_scrub("moved.metadata")),
        moved.c.created_at,
        archived_at,
    )
    written = (
        postgresql.insert(_ARCHIVE)
        .from_select(_COPIED, copies)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(_ARCHIVE.c.id)
        .cte("written")
    )
    newest = select(moved.c.created_at, moved.c.id).order_by(moved.c.created_at.desc(), moved.c.id.desc()).limit(1)
    report = select(
        select(func.count()).select_from(moved).scalar_subquery().label("deleted"),
        select(func.count()).select_from(written).scalar_subquery().label("archived"),
        newest.with_only_columns(moved.c.created_at).scalar_subquery().label("created_at"),
        newest.with_only_columns(moved.c.id).scalar_subquery().label("id"),
    )
    row = (await db.execute(report)).one()
    return ArchiveBatchResult(deleted=row.deleted, archived=row.archived, last=_last([row]) if row.deleted else None)


async def _batch_sqlite(db: AsyncSession, batch: Any, archived_at: Any) -> ArchiveBatchResult:
    # Insert first: the batch's first statement is a write, so the transaction takes SQLite's write
    # lock up front (waiting on the busy timeout) instead of failing to upgrade a stale read snapshot.
    # Both statements select the same rows: nothing else can write while we hold the lock.
    source = _LOG.alias("l")
    copies = select(
        source.c.id,
        source.c.action,
        source.c.entity_type,
        literal_column(_sqlite_scrub("l.metadata")),
        source.c.created_at,
        archived_at,
    ).where(source.c.id.in_(batch))
    written = await db.execute(
        sqlite.insert(_ARCHIVE).from_select(_COPIED, copies).on_conflict_do_nothing(index_elements=["id"])
    )
    deleted = (await db.execute(delete(_LOG).where(_LOG.c.id.in_(batch)).returning(_LOG.c.created_at, _LOG.c.id))).all()
    return ArchiveBatchResult(deleted=len(deleted), archived=max(written.rowcount, 0), last=_last(deleted))  # type: ignore[attr-defined]
