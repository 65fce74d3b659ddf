"""The schema: migrations match the models on both databases, the catalog is seeded, rules hold."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import agentpod.store.tables  # noqa: F401
from agentpod.settings import Settings
from agentpod.store.base import Base
from agentpod.store.catalog import list_addons, list_flavors, list_tiers
from agentpod.store.engine import create_engine
from agentpod.store.migrate import SchemaOutOfDateError, assert_schema_current, head_revision, upgrade_database
from agentpod.store.tables import Sandbox, User, UserPreferences
from api.app import create_app


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_upgrade_is_idempotent_and_reaches_head(engine: AsyncEngine) -> None:
    await upgrade_database(engine)  # second run: nothing to do, nothing breaks
    await assert_schema_current(engine)
    assert head_revision() is not None


async def test_catalog_is_seeded(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as db:
        tiers = {t.id: (t.cpu_cores, t.memory_gb, t.storage_gb, t.is_default) for t in await list_tiers(db)}
        flavors = {f.id: f.is_default for f in await list_flavors(db)}
        addons = {a.id for a in await list_addons(db)}
    assert tiers == {
        "micro": (1, 1, 10, False),
        "starter": (1, 2, 20, True),
        "builder": (2, 4, 30, False),
        "creator": (4, 8, 50, False),
        "power": (8, 16, 100, False),
    }
    assert set(flavors) == {"bare", "js", "python", "go", "rust", "fullstack", "polyglot"}
    assert [f for f, default in flavors.items() if default] == ["fullstack"]
    assert addons == {"code-server", "vnc"}


async def _user(db: AsyncSession) -> User:
    user = User(email="x@example.com", name="X", password_hash=None)
    db.add(user)
    await db.flush()
    return user


@pytest.mark.parametrize(
    "bad",
    [
        {"theme_mode": "neon"},
        {"auto_refresh_interval": 1},
        {"auto_refresh_interval": 10_000},
        {"default_resource_tier_id": "no-such-tier"},  # foreign key to the catalog
    ],
)
async def test_preference_checks_are_enforced_by_the_database(
    sessions: async_sessionmaker[AsyncSession], bad: dict[str, Any]
) -> None:
    async with sessions() as db:
        user = await _user(db)
        db.add(UserPreferences(user_id=user.id, **bad))
        with pytest.raises(IntegrityError):
            await db.flush()


async def test_sandbox_status_and_slug_rules(sessions: async_sessionmaker[AsyncSession]) -> None:
    def sandbox(user_id: str, **extra: Any) -> Sandbox:
        fields = {
            "name": "A",
            "slug": "a",
            "repo_name": "a",
            "resource_tier_id": "starter",
            "flavor_id": "js",
        }
        return Sandbox(user_id=user_id, **{**fields, **extra})

    async with sessions() as db:
        user = await _user(db)
        db.add(sandbox(user.id, status="exploded"))
        with pytest.raises(IntegrityError):
            await db.flush()
    async with sessions() as db:
        user = await _user(db)
        db.add(sandbox(user.id))
        await db.flush()
        db.add(sandbox(user.id))  # same slug for the same user
        with pytest.raises(IntegrityError):
            await db.flush()


async def test_deleting_a_user_cascades_through_foreign_keys(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # On SQLite this only holds with PRAGMA foreign_keys=ON on every connection.
    async with sessions() as db:
        user = await _user(db)
        db.add(UserPreferences(user_id=user.id))
        await db.commit()
        await db.delete(user)
        await db.commit()
        assert (await db.execute(text("SELECT count(*) FROM user_preferences"))).scalar_one() == 0


async def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_api_refuses_to_serve_an_out_of_date_schema(database_url: str, tmp_path: Any) -> None:
    settings = Settings(dev_mode=True, data_dir=tmp_path, database_url=database_url)
    app = create_app(settings)
    with pytest.raises(SchemaOutOfDateError, match="agentpod db upgrade"):
        async with app.router.lifespan_context(app):
            pass
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine, "head")
    finally:
        await engine.dispose()
    async with app.router.lifespan_context(app):
        pass
