"""Whole-account queries: the profile counts, the data export, and the database side of deletion.

Every deletion step here is idempotent (a retried activity, or a step run twice after a crash,
changes nothing the second time) and leaves the transaction to the caller.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, Table, case, delete, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from agentpod.store.archival import scrub_metadata_sql
from agentpod.store.base import Base, utcnow
from agentpod.store.tables import (
    ActivityLog,
    AuthSession,
    ChatMessage,
    ChatSession,
    OAuthAccount,
    ProviderCredential,
    Sandbox,
    User,
    UserOpencodeConfig,
    UserOpencodeFile,
    UserPreferences,
    UserPreferencesHistory,
)
from agentpod.store.users import revoke_all_sessions

EXPORT_FORMAT = "agentpod-account-export"
EXPORT_VERSION = 1
DELETION_ACTION = "account.delete"
_EXPORT_BATCH = 500


# --------------------------------------------------------------------------- profile


async def counts(db: AsyncSession, user_id: str) -> dict[str, int]:
    """How much the user has: sandboxes, chat sessions and messages, providers, files, activity rows."""
    queries: dict[str, Select[int]] = {
        "sandboxes": select(func.count()).where(Sandbox.user_id == user_id),
        "chat_sessions": select(func.count()).where(ChatSession.user_id == user_id),
        "chat_messages": select(func.count())
        .select_from(ChatMessage)
        .join(ChatSession, ChatMessage.session_id == ChatSession.id)
        .where(ChatSession.user_id == user_id),
        "providers": select(func.count()).where(ProviderCredential.user_id == user_id),
        "opencode_files": select(func.count()).where(UserOpencodeFile.user_id == user_id),
        "activity": select(func.count()).where(ActivityLog.user_id == user_id),
    }
    return {name: int(await db.scalar(query) or 0) for name, query in queries.items()}


# --------------------------------------------------------------------------- deletion steps


async def lock(db: AsyncSession, user_id: str) -> int:
    """Lock the account (sign-in refused, tokens dead) and revoke every session; returns how many."""
    await db.execute(update(User).where(User.id == user_id, User.locked_at.is_(None)).values(locked_at=utcnow()))
    return await revoke_all_sessions(db, user_id)


async def sandbox_ids(db: AsyncSession, user_id: str) -> list[str]:
    """The ids of the user's sandboxes."""
    return list((await db.scalars(select(Sandbox.id).where(Sandbox.user_id == user_id).order_by(Sandbox.id))).all())


async def unlock(db: AsyncSession, user_id: str) -> None:
    """Undo :func:`lock` (a deletion cancelled before anything was destroyed). Sessions stay revoked."""
    await db.execute(update(User).where(User.id == user_id).values(locked_at=None))


async def anonymize_activity(db: AsyncSession, user_id: str) -> int:
    """Detach the user's activity rows from them: no user id, IP or user agent, no entity id that is the
    user's own (sign-in rows name the user as their entity), and metadata cut down to what the archive
    keeps (a sandbox's name or a session title is the user's data). Returns how many rows changed."""
    dialect = (await db.connection()).dialect.name
    metadata: ColumnElement[Any] = literal_column(scrub_metadata_sql(dialect, f"{ActivityLog.__tablename__}.metadata"))
    result = await db.execute(
        update(ActivityLog)
        .where(or_(ActivityLog.user_id == user_id, ActivityLog.entity_id == user_id))
        .values(
            user_id=None,
            anonymized=True,
            ip_address=None,
            user_agent=None,
            entity_id=case((ActivityLog.entity_id == user_id, None), else_=ActivityLog.entity_id),
            metadata_=metadata,
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def sandbox_rows(db: AsyncSession, user_id: str) -> list[Sandbox]:
    """Every sandbox row of the user."""
    return list((await db.scalars(select(Sandbox).where(Sandbox.user_id == user_id).order_by(Sandbox.id))).all())


async def delete_data(db: AsyncSession, user_id: str) -> dict[str, int]:
    """Delete everything the user owns except sandboxes and the user row; returns rows deleted per kind."""
    sessions_of_user = select(ChatSession.id).where(ChatSession.user_id == user_id).scalar_subquery()
    statements = {
        "provider_keys": delete(ProviderCredential).where(ProviderCredential.user_id == user_id),
        "opencode_files": delete(UserOpencodeFile).where(UserOpencodeFile.user_id == user_id),
        "opencode_config": delete(UserOpencodeConfig).where(UserOpencodeConfig.user_id == user_id),
        "preferences_history": delete(UserPreferencesHistory).where(UserPreferencesHistory.user_id == user_id),
        "preferences": delete(UserPreferences).where(UserPreferences.user_id == user_id),
        # By user, not by sandbox: the sessions kept from deleted sandboxes have none. Messages before
        # their sessions: explicit, rather than trusting every backend's cascade.
        "chat_messages": delete(ChatMessage).where(ChatMessage.session_id.in_(sessions_of_user)),
        "chat_sessions": delete(ChatSession).where(ChatSession.user_id == user_id),
        "linked_accounts": delete(OAuthAccount).where(OAuthAccount.user_id == user_id),
        "auth_sessions": delete(AuthSession).where(AuthSession.user_id == user_id),
    }
    deleted = {}
    for name, statement in statements.items():
        result = await db.execute(statement.execution_options(synchronize_session=False))
        deleted[name] = int(getattr(result, "rowcount", 0) or 0)
    return deleted


async def delete_user(db: AsyncSession, user_id: str) -> bool:
    """Delete the user row; False (nothing done) while a sandbox row remains, since its cascade would
    orphan the container. Activity written since the anonymization (the sandbox workflows record their
    deletions) is anonymized first. An already deleted user is fine."""
    if await db.scalar(select(func.count()).where(Sandbox.user_id == user_id)):
        return False
    await anonymize_activity(db, user_id)
    await db.execute(delete(User).where(User.id == user_id).execution_options(synchronize_session=False))
    return True


def _user_columns() -> Iterable[tuple[Table, str]]:
    """(table, column) of every column that can hold a user id, found from the schema itself, so a
    table added later is covered without anyone remembering this scan."""
    for table in Base.metadata.sorted_tables:
        for column in table.c:
            if column.name == "user_id" or (table.name == "user" and column.name == "id"):
                yield table, column.name
        if table.name == ActivityLog.__tablename__:
            yield table, "entity_id"


async def references(db: AsyncSession, user_id: str) -> list[str]:
    """Every ``table.column`` still holding ``user_id``, with the number of rows (empty: none left)."""
    found = []
    for table, column in _user_columns():
        count = await db.scalar(select(func.count()).select_from(table).where(table.c[column] == user_id))
        if count:
            found.append(f"{table.name}.{column}: {count} row(s)")
    return found


async def record_deletion(db: AsyncSession, event_id: str, counts: dict[str, int]) -> None:
    """The one audit row of a deletion: no user id, IP or user agent — only what was removed."""
    if await db.get(ActivityLog, event_id) is not None:
        return
    db.add(
        ActivityLog(
            id=event_id,
            user_id=None,
            action=DELETION_ACTION,
            entity_type="user",
            entity_id=None,
            metadata_={"removed": counts},
            anonymized=True,
        )
    )
    await db.flush()


# --------------------------------------------------------------------------- export

# Columns an export leaves out: credentials, ciphertexts and bookkeeping that is not the user's data.
_EXPORT_OMIT: dict[str, set[str]] = {
    "user": {"password_hash", "locked_at"},
    "account": {"access_token_encrypted", "refresh_token_encrypted", "user_id"},
    "session": {"token_hash", "user_id"},
    "provider_credentials": {
        "api_key_encrypted",
        "access_token_encrypted",
        "refresh_token_encrypted",
        "key_hint",
        "user_id",
    },
    "user_opencode_config": {"secrets_encrypted", "user_id", "id"},
    "user_opencode_files": {"user_id"},
    "user_preferences": {"user_id", "id"},
    "user_preferences_history": {"user_id"},
    "sandboxes": {"user_id"},
    "chat_sessions": {"user_id"},
    "chat_messages": set(),
    "activity_log": {"user_id", "anonymized"},
}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: cost is NUMERIC, a float would round it
    raise TypeError(f"cannot export {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _columns(table: Table) -> list[Any]:
    omit = _EXPORT_OMIT[table.name]
    return [column for column in table.c if column.name not in omit]


async def _rows(db: AsyncSession, table: Table, *where: Any, order_by: Iterable[Any]) -> list[dict[str, Any]]:
    query = select(*_columns(table)).where(*where).order_by(*order_by)
    return [dict(row._mapping) for row in (await db.execute(query)).all()]


async def _streamed(db: AsyncSession, table: Table, *where: Any, order_by: Iterable[Any]) -> AsyncIterator[str]:
    """A JSON array of the matching rows, streamed in batches (a server-side cursor on PostgreSQL)."""
    query = select(*_columns(table)).where(*where).order_by(*order_by).execution_options(yield_per=_EXPORT_BATCH)
    result = await db.stream(query)
    yield "["
    separator = ""
    async for batch in result.partitions(_EXPORT_BATCH):
        yield separator + ",".join(_dumps(dict(row._mapping)) for row in batch)
        separator = ","
    yield "]"


def _table(model: type[Base]) -> Table:
    return Base.metadata.tables[model.__tablename__]


async def export_document(sessions: async_sessionmaker[AsyncSession], user_id: str) -> AsyncIterator[str]:
    """Everything the user owns as one JSON document, streamed; never a key, token or password hash.

    Small sections are read whole; chat messages and activity are streamed, so the size of a
    history never decides whether the export fits in memory. Layout: docs/account.md.
    """
    user, prefs, history = _table(User), _table(UserPreferences), _table(UserPreferencesHistory)
    config, chat, messages, log = (
        _table(UserOpencodeConfig),
        _table(ChatSession),
        _table(ChatMessage),
        _table(ActivityLog),
    )
    async with sessions() as db:
        profile = await _rows(db, user, user.c.id == user_id, order_by=[user.c.id])
        preferences = await _rows(db, prefs, prefs.c.user_id == user_id, order_by=[prefs.c.user_id])
        opencode = await _rows(db, config, config.c.user_id == user_id, order_by=[config.c.user_id])
        head = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": utcnow(),
            "profile": profile[0] if profile else None,
            "linked_accounts": await _owned(db, _table(OAuthAccount), user_id),
            "devices": await _owned(db, _table(AuthSession), user_id),
            "preferences": preferences[0] if preferences else None,
            "preferences_history": await _rows(db, history, history.c.user_id == user_id, order_by=[history.c.version]),
            "providers": await _owned(db, _table(ProviderCredential), user_id, order="provider_id"),
            "opencode_config": opencode[0] if opencode else None,
            "opencode_files": await _owned(db, _table(UserOpencodeFile), user_id, order="name"),
            "sandboxes": await _owned(db, _table(Sandbox), user_id),
        }
        yield _dumps(head)[:-1]  # the object stays open for the streamed sections
        yield ',"chat_sessions":['
        chat_sessions = await _owned(db, chat, user_id)
        order = [func.coalesce(messages.c.upstream_created_at, messages.c.created_at), messages.c.id]
        for index, session in enumerate(chat_sessions):
            yield ("," if index else "") + _dumps(session)[:-1] + ',"messages":'
            async for chunk in _streamed(db, messages, messages.c.session_id == session["id"], order_by=order):
                yield chunk
            yield "}"
        yield '],"activity":'
        async for chunk in _streamed(db, log, log.c.user_id == user_id, order_by=[log.c.created_at, log.c.id]):
            yield chunk
        yield "}\n"


async def _owned(db: AsyncSession, table: Table, user_id: str, *, order: str = "created_at") -> list[dict[str, Any]]:
    return await _rows(db, table, table.c.user_id == user_id, order_by=[table.c[order], table.c.id])
