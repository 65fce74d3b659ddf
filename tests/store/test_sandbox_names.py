"""Sandbox names: unique per user by the database (caseless), and the migration that made them so."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.store.base import JSONType, UTCDateTime
from agentpod.store.engine import create_engine
from agentpod.store.migrate import alembic_config, upgrade_database
from agentpod.store.sandboxes import delete_row
from agentpod.store.tables import Sandbox, User

# The tables as revision 0005 left them (the models already have the newer columns).
_META = sa.MetaData()
_USERS = sa.Table(
    "user",
    _META,
    sa.Column("id", sa.String),
    sa.Column("email", sa.String),
    sa.Column("name", sa.String),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
_SANDBOXES = sa.Table(
    "sandboxes",
    _META,
    sa.Column("id", sa.String),
    sa.Column("user_id", sa.String),
    sa.Column("name", sa.String),
    sa.Column("slug", sa.String),
    sa.Column("repo_name", sa.String),
    sa.Column("resource_tier_id", sa.String),
    sa.Column("flavor_id", sa.String),
    sa.Column("addon_ids", JSONType),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
_CHAT_SESSIONS = sa.Table(
    "chat_sessions",
    _META,
    sa.Column("id", sa.String),
    sa.Column("sandbox_id", sa.String),
    sa.Column("user_id", sa.String),
    sa.Column("source", sa.String),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)


def _sandbox(user_id: str, name: str, **extra: Any) -> Sandbox:
    fields: dict[str, Any] = {"slug": uuid.uuid4().hex[:8], "repo_name": "r", "resource_tier_id": "starter"}
    return Sandbox(user_id=user_id, name=name, flavor_id="js", **{**fields, **extra})


def _row(user_id: str, name: str, slug: str, **extra: Any) -> dict[str, Any]:
    """A sandbox row for a core insert (only what revision 0005 requires)."""
    now = datetime.now(UTC)
    fields = {"resource_tier_id": "starter", "flavor_id": "js", "addon_ids": [], "created_at": now, "updated_at": now}
    return {
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "name": name,
        "slug": slug,
        "repo_name": "r",
        **fields,
        **extra,
    }


async def _user(db: AsyncSession) -> str:
    user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", name="X", password_hash=None)
    db.add(user)
    await db.flush()
    return user.id


async def test_the_database_refuses_a_second_sandbox_with_the_same_name(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as db:
        user_id, other_id = await _user(db), await _user(db)
        db.add_all([_sandbox(user_id, "Café"), _sandbox(other_id, "Café")])  # another user may use it
        await db.commit()
        db.add(_sandbox(user_id, "CAFE\u0301"))  # capitals and a combining accent: the same name
        with pytest.raises(IntegrityError):
            await db.flush()


async def test_a_name_is_free_again_once_its_sandbox_is_deleted(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as db:
        user_id = await _user(db)
        first = _sandbox(user_id, "reused")
        db.add(first)
        await db.commit()
        await delete_row(db, first.id)  # what the delete workflow does last
        db.add(_sandbox(user_id, "Reused"))
        await db.commit()


async def test_bulk_inserts_that_give_only_the_name_get_its_key(engine: AsyncEngine) -> None:
    # Benchmarks and imports load rows with core inserts: they must not slip past the unique index.
    async with engine.begin() as conn:
        user_id = str(uuid.uuid4())
        await conn.execute(sa.insert(User), [{"id": user_id, "email": "b@example.com", "name": "B"}])
        with pytest.raises(IntegrityError):
            await conn.execute(sa.insert(Sandbox), [_row(user_id, "Bulk", "a"), _row(user_id, "BULK", "b")])


async def test_upgrading_a_database_with_duplicate_names_renames_the_later_ones(database_url: str) -> None:
    # Neither the upgrade nor a downgrade may lose the sandboxes' chat history (a SQLite table rebuild would).
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine, "0005")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        owner, other = str(uuid.uuid4()), str(uuid.uuid4())
        # Created in this order; "app (2)" already exists, so the first renamed copy becomes "app (3)".
        names = [(owner, "App"), (owner, "app (2)"), (owner, "app"), (owner, "APP"), (owner, "solo"), (other, "app")]
        ids = [str(uuid.uuid4()) for _ in names]
        async with engine.begin() as conn:
            await conn.execute(
                _USERS.insert(),
                [
                    {"id": u, "email": f"{u}@example.com", "name": "U", "created_at": start, "updated_at": start}
                    for u in (owner, other)
                ],
            )
            await conn.execute(
                _SANDBOXES.insert(),
                [
                    _row(user_id, name, f"s{n}", id=sandbox_id, created_at=start + timedelta(minutes=n))
                    for n, (sandbox_id, (user_id, name)) in enumerate(zip(ids, names, strict=True))
                ],
            )
            await conn.execute(
                _CHAT_SESSIONS.insert(),
                {
                    "id": str(uuid.uuid4()),
                    "sandbox_id": ids[2],
                    "user_id": owner,
                    "source": "opencode",
                    "created_at": start,
                    "updated_at": start,
                },
            )

        await upgrade_database(engine)

        async with engine.connect() as conn:
            renamed = dict((await conn.execute(sa.select(Sandbox.id, Sandbox.name))).all())
            kept_chats = await conn.scalar(sa.select(sa.func.count()).select_from(_CHAT_SESSIONS))
        assert [renamed[sandbox_id] for sandbox_id in ids] == ["App", "app (2)", "app (3)", "APP (4)", "solo", "app"]
        assert kept_chats == 1  # the in-place upgrade did not cascade through the sandboxes' children
        async with engine.begin() as conn:
            with pytest.raises(IntegrityError):
                await conn.execute(sa.insert(Sandbox), _row(owner, "SOLO", "x"))

        await _downgrade(engine, "0005")
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(_CHAT_SESSIONS)) == 1
        await upgrade_database(engine)
    finally:
        await engine.dispose()


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    config = alembic_config()

    def run(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
