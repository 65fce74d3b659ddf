"""Chats outlive their sandbox: the migration that made it so keeps every row, and a deleted sandbox's
sessions stay with its name while its name and quota slot are freed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.store.base import JSONType, UTCDateTime
from agentpod.store.engine import create_engine
from agentpod.store.migrate import alembic_config, upgrade_database
from agentpod.store.sandboxes import SandboxQuota, create, delete_row
from agentpod.store.tables import ChatMessage, ChatSession, Sandbox, User

# The tables as revision 0006 left them (the models have newer columns).
_META = sa.MetaData()
_USERS_0006 = sa.Table(
    "user",
    _META,
    sa.Column("id", sa.String),
    sa.Column("email", sa.String),
    sa.Column("name", sa.String),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
_SANDBOXES_0006 = sa.Table(
    "sandboxes",
    _META,
    sa.Column("id", sa.String),
    sa.Column("user_id", sa.String),
    sa.Column("name", sa.String),
    sa.Column("name_key", sa.String),
    sa.Column("slug", sa.String),
    sa.Column("repo_name", sa.String),
    sa.Column("resource_tier_id", sa.String),
    sa.Column("flavor_id", sa.String),
    sa.Column("addon_ids", JSONType),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
_MESSAGES_0006 = sa.Table(
    "chat_messages",
    _META,
    sa.Column("id", sa.String),
    sa.Column("session_id", sa.String),
    sa.Column("external_message_id", sa.String),
    sa.Column("source", sa.String),
    sa.Column("role", sa.String),
    sa.Column("content", JSONType),
    sa.Column("text", sa.Text),
    sa.Column("tool_calls", JSONType),
    sa.Column("cost", sa.Numeric(14, 6)),
    sa.Column("input_tokens", sa.Integer),
    sa.Column("status", sa.String),
    sa.Column("upstream_created_at", UTCDateTime()),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
_SESSIONS_0006 = sa.Table(
    "chat_sessions",
    _META,
    sa.Column("id", sa.String),
    sa.Column("sandbox_id", sa.String),
    sa.Column("user_id", sa.String),
    sa.Column("source", sa.String),
    sa.Column("opencode_session_id", sa.String),
    sa.Column("acp_session_id", sa.String),
    sa.Column("acp_agent_id", sa.String),
    sa.Column("parent_session_id", sa.String),
    sa.Column("title", sa.String),
    sa.Column("status", sa.String),
    sa.Column("message_count", sa.Integer),
    sa.Column("last_message_at", UTCDateTime()),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def _session(sandbox_id: str, user_id: str, title: str, **extra: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()),
        "sandbox_id": sandbox_id,
        "user_id": user_id,
        "source": "opencode",
        "opencode_session_id": f"ses_{uuid.uuid4().hex}",
        "acp_session_id": None,
        "acp_agent_id": None,
        "parent_session_id": None,
        "title": title,
        "status": "active",
        "message_count": 3,
        "last_message_at": T0,
        "created_at": T0,
        "updated_at": T0,
    }
    return {**row, **extra}


def _messages(session_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "session_id": session_id,
            "external_message_id": f"msg_{index}",
            "source": "opencode",
            "role": "user" if index == 0 else "assistant",
            "content": {"parts": [{"type": "text", "text": f"part {index}"}]},
            "text": f"text {index} of {session_id}",
            "tool_calls": [{"tool": "bash", "input": {"command": "ls"}}] if index == 1 else None,
            "cost": Decimal("0.012345"),
            "input_tokens": 10 * index,
            "status": "complete",
            "upstream_created_at": T0 + timedelta(seconds=index),
            "created_at": T0,
            "updated_at": T0,
        }
        for index in range(3)
    ]


async def _rows(engine: AsyncEngine, table: sa.FromClause, columns: list[str]) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        query = sa.select(*(table.c[name] for name in columns)).order_by(table.c.id)
        return [tuple(row) for row in await conn.execute(query)]


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    config = alembic_config()

    def run(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def test_the_upgrade_keeps_every_session_message_and_link(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine, "0006")
        user_id = str(uuid.uuid4())
        async with engine.begin() as conn:
            stamps = {"created_at": T0, "updated_at": T0}
            await conn.execute(
                _USERS_0006.insert(), [{"id": user_id, "email": f"{user_id}@example.com", "name": "U", **stamps}]
            )
            sandbox = {
                "user_id": user_id,
                "repo_name": "r",
                "resource_tier_id": "starter",
                "flavor_id": "js",
                "addon_ids": [],
                **stamps,
            }
            doomed, staying = str(uuid.uuid4()), str(uuid.uuid4())
            await conn.execute(
                _SANDBOXES_0006.insert(),
                [
                    {**sandbox, "id": doomed, "name": "Doomed", "name_key": "doomed", "slug": "doomed"},
                    {**sandbox, "id": staying, "name": "Staying", "name_key": "staying", "slug": "staying"},
                ],
            )
            # A subagent session stored before its parent: the copy must not trip over the order.
            child = _session(doomed, user_id, "child")
            parent = _session(doomed, user_id, "parent")
            acp = _session(doomed, user_id, "acp", source="acp_gateway", opencode_session_id=None, acp_session_id="a1")
            archived = _session(staying, user_id, "archived", status="archived")
            await conn.execute(_SESSIONS_0006.insert(), [child, parent, acp, archived])
            await conn.execute(
                _SESSIONS_0006.update().where(_SESSIONS_0006.c.id == child["id"]).values(parent_session_id=parent["id"])
            )
            for session in (child, parent, acp, archived):
                await conn.execute(_MESSAGES_0006.insert(), _messages(session["id"]))
        session_columns = list(_SESSIONS_0006.c.keys())
        message_columns = list(_MESSAGES_0006.c.keys())
        sessions_before = await _rows(engine, _SESSIONS_0006, session_columns)
        messages_before = await _rows(engine, _MESSAGES_0006, message_columns)
        assert len(messages_before) == 12

        await upgrade_database(engine)

        assert await _rows(engine, _SESSIONS_0006, session_columns) == sessions_before
        assert await _rows(engine, _MESSAGES_0006, message_columns) == messages_before
        snapshot = ["deleted_sandbox_id", "deleted_sandbox_name", "sandbox_deleted_at"]
        assert set(await _rows(engine, ChatSession.__table__, snapshot)) == {(None, None, None)}
        if engine.dialect.name == "sqlite":
            async with engine.connect() as conn:
                assert (await conn.execute(sa.text("PRAGMA foreign_key_check"))).all() == []
                leftover = sa.text("SELECT name FROM sqlite_master WHERE sql LIKE '%rebuild%' OR name LIKE '%rebuild%'")
                assert (await conn.execute(leftover)).all() == []

        # The new rules hold on the rebuilt tables: the sandbox goes, its chats stay; a session still
        # takes its messages with it.
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as db:
            await delete_row(db, doomed)
            await db.commit()
        kept = await _rows(engine, ChatSession.__table__, ["title", "sandbox_id", "deleted_sandbox_id"])
        assert sorted(kept) == [
            ("acp", None, doomed),
            ("archived", staying, None),
            ("child", None, doomed),
            ("parent", None, doomed),
        ]
        assert len(await _rows(engine, ChatMessage.__table__, ["id"])) == 12
        async with engine.begin() as conn:
            await conn.execute(sa.delete(ChatSession).where(ChatSession.id == acp["id"]))
            assert await conn.scalar(sa.select(sa.func.count()).select_from(ChatMessage)) == 9
            parent_of_child = await conn.scalar(
                sa.select(ChatSession.parent_session_id).where(ChatSession.id == child["id"])
            )
        assert parent_of_child == parent["id"]

        # Back to 0006: it cannot hold a session without a sandbox, so the kept ones go; the rest stays.
        await _downgrade(engine, "0006")
        assert await _rows(engine, _SESSIONS_0006, ["title"]) == [("archived",)]
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(ChatMessage)) == 3
        await upgrade_database(engine)
    finally:
        await engine.dispose()


async def _user_with_sandbox(db: AsyncSession, name: str) -> tuple[str, Sandbox]:
    user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", name="U", password_hash=None)
    db.add(user)
    await db.flush()
    sandbox = Sandbox(user_id=user.id, name=name, slug=name.lower(), repo_name="r", resource_tier_id="starter")
    sandbox.flavor_id = "js"
    db.add(sandbox)
    await db.flush()
    return user.id, sandbox


async def test_a_deleted_sandbox_keeps_its_chats_and_frees_its_name_and_slot(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as db:
        user_id, sandbox = await _user_with_sandbox(db, "Only")
        session = ChatSession(sandbox_id=sandbox.id, user_id=user_id, source="opencode", opencode_session_id="ses_1")
        db.add(session)
        await db.flush()
        db.add(ChatMessage(session_id=session.id, external_message_id="m1", source="opencode", role="user"))
        await db.commit()
        sandbox_id, session_id = sandbox.id, session.id

    async with sessions() as db:
        await delete_row(db, sandbox_id)
        await delete_row(db, sandbox_id)  # a retried activity: nothing more to do
        await db.commit()
    async with sessions() as db:
        kept = await db.get(ChatSession, session_id)
        assert kept is not None
        assert (kept.sandbox_id, kept.deleted_sandbox_id, kept.deleted_sandbox_name) == (None, sandbox_id, "Only")
        assert kept.sandbox_deleted_at is not None
        assert await db.scalar(sa.select(sa.func.count()).select_from(ChatMessage)) == 1
        # The name and the one slot of a quota of one are free again.
        again = await create(
            db,
            user_id=user_id,
            name="only",
            repo_name="r",
            resource_tier_id="starter",
            flavor_id="js",
            quota=SandboxQuota(total=1),
        )
        await db.commit()
        assert again.id != sandbox_id
