"""chat sessions outlive their sandbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14 10:00:00.000000

``chat_sessions.sandbox_id`` becomes nullable with ON DELETE SET NULL (was CASCADE), and three columns
keep what the deleted sandbox was: ``deleted_sandbox_id``, ``deleted_sandbox_name``,
``sandbox_deleted_at``. Deleting a sandbox row then frees its name and quota slot and keeps its chats.

PostgreSQL alters the table in place. SQLite cannot change a foreign key without rebuilding the
table, and Alembic's batch rebuild drops the old ``chat_sessions``: with foreign keys on, that drop
deletes every row first, and the cascade takes every chat message with it (and nulls the parent links
of the copy, which names ``chat_sessions`` too). So on SQLite both tables are rebuilt by hand, in an
order where nothing references a table while it is dropped: new tables under temporary names that
reference each other, rows copied, old tables dropped (messages first), new ones renamed into place
(SQLite rewrites the references on rename), indexes created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text on SQLite (same as store.base.JSONType, frozen here).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

SESSIONS, MESSAGES = "chat_sessions", "chat_messages"
NEW_SESSIONS, NEW_MESSAGES = "_rebuild_chat_sessions", "_rebuild_chat_messages"
SNAPSHOT_COLUMNS = ("deleted_sandbox_id", "deleted_sandbox_name", "sandbox_deleted_at")
FK_SANDBOX = "fk_chat_sessions_sandbox_id_sandboxes"
SNAPSHOT_INDEX = "ix_chat_sessions_deleted_sandbox_id"

SESSION_COLUMNS = (
    "sandbox_id", "user_id", "source", "opencode_session_id", "acp_session_id", "acp_agent_id",
    "parent_session_id", "title", "status", "message_count", "user_message_count", "assistant_message_count",
    "total_input_tokens", "total_output_tokens", "upstream_created_at", "upstream_updated_at",
    "missing_upstream_at", "last_message_at", "last_synced_at", "id", "created_at", "updated_at",
)
MESSAGE_COLUMNS = (
    "session_id", "external_message_id", "source", "role", "content", "text", "tool_calls", "tool_results",
    "thinking", "model_provider", "model_id", "agent_id", "input_tokens", "output_tokens", "reasoning_tokens",
    "cache_read_tokens", "cache_write_tokens", "cost", "status", "error_message", "upstream_created_at",
    "upstream_completed_at", "missing_upstream_at", "completed_at", "id", "created_at", "updated_at",
)
# (name, table, columns) of every non-unique index of the two tables, as the models declare them.
SESSION_INDEXES = (
    ("ix_chat_sessions_parent_session_id", ["parent_session_id"]),
    ("ix_chat_sessions_sandbox_id_last_message_at", ["sandbox_id", "last_message_at"]),
    ("ix_chat_sessions_user_id", ["user_id"]),
    ("ix_chat_sessions_sandbox_id_updated_at_id", ["sandbox_id", "updated_at", "id"]),
)
MESSAGE_INDEXES = (
    ("ix_chat_messages_session_id_upstream_created_at", ["session_id", "upstream_created_at", "id"]),
    ("ix_chat_messages_updated_at_id", ["updated_at", "id"]),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(kept=True)
        return
    for column in _snapshot_columns():
        op.add_column(SESSIONS, column)
    op.alter_column(SESSIONS, "sandbox_id", existing_type=sa.String(length=36), nullable=True)
    op.drop_constraint(FK_SANDBOX, SESSIONS, type_="foreignkey")
    op.create_foreign_key(FK_SANDBOX, SESSIONS, "sandboxes", ["sandbox_id"], ["id"], ondelete="SET NULL")
    op.create_index(SNAPSHOT_INDEX, SESSIONS, ["deleted_sandbox_id"], unique=False)


def downgrade() -> None:
    # The old schema cannot hold a session without its sandbox: the kept sessions (and their messages)
    # are deleted, which is what deleting their sandbox did before this revision.
    kept = sa.select(sa.column("id")).select_from(sa.table(SESSIONS)).where(sa.column("sandbox_id").is_(None))
    op.execute(sa.table(MESSAGES, sa.column("session_id")).delete().where(sa.column("session_id").in_(kept)))
    op.execute(sa.table(SESSIONS, sa.column("sandbox_id")).delete().where(sa.column("sandbox_id").is_(None)))
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(kept=False)
        return
    op.drop_index(SNAPSHOT_INDEX, table_name=SESSIONS)
    op.drop_constraint(FK_SANDBOX, SESSIONS, type_="foreignkey")
    op.create_foreign_key(FK_SANDBOX, SESSIONS, "sandboxes", ["sandbox_id"], ["id"], ondelete="CASCADE")
    op.alter_column(SESSIONS, "sandbox_id", existing_type=sa.String(length=36), nullable=False)
    for name in SNAPSHOT_COLUMNS:
        op.drop_column(SESSIONS, name)


def _snapshot_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("deleted_sandbox_id", sa.String(length=36), nullable=True),
        sa.Column("deleted_sandbox_name", sa.String(length=100), nullable=True),
        sa.Column("sandbox_deleted_at", sa.DateTime(timezone=True), nullable=True),
    ]


def _create_sessions(kept: bool) -> None:
    """``chat_sessions`` as of this revision (``kept``) or the previous one, under a temporary name."""
    op.create_table(
        NEW_SESSIONS,
        sa.Column('sandbox_id', sa.String(length=36), nullable=kept),
        sa.Column('user_id', sa.String(length=36), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('opencode_session_id', sa.String(length=128), nullable=True),
        sa.Column('acp_session_id', sa.String(length=128), nullable=True),
        sa.Column('acp_agent_id', sa.String(length=64), nullable=True),
        sa.Column('parent_session_id', sa.String(length=36), nullable=True),
        sa.Column('title', sa.String(length=500), nullable=True),
        sa.Column('status', sa.String(length=16), server_default='active', nullable=False),
        sa.Column('message_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('user_message_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('assistant_message_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('total_input_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('total_output_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('upstream_created_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('upstream_updated_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('missing_upstream_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        *(_snapshot_columns() if kept else []),
        sa.CheckConstraint("source IN ('opencode', 'acp_gateway')", name=op.f('ck_chat_sessions_source_valid')),
        sa.CheckConstraint("status IN ('active', 'archived', 'deleted')", name=op.f('ck_chat_sessions_status_valid')),
        sa.CheckConstraint(
            'message_count >= 0 AND user_message_count >= 0 AND assistant_message_count >= 0',
            name=op.f('ck_chat_sessions_counts_not_negative'),
        ),
        # References the table's own new name: SQLite rewrites it to chat_sessions on the rename.
        sa.ForeignKeyConstraint(
            ['parent_session_id'], [f'{NEW_SESSIONS}.id'],
            name=op.f('fk_chat_sessions_parent_session_id_chat_sessions'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['sandbox_id'], ['sandboxes.id'], name=op.f(FK_SANDBOX), ondelete='SET NULL' if kept else 'CASCADE'
        ),
        sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_chat_sessions_user_id_user'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_sessions')),
        sa.UniqueConstraint('sandbox_id', 'acp_session_id', name=op.f('uq_chat_sessions_sandbox_id_acp_session_id')),
        sa.UniqueConstraint(
            'sandbox_id', 'opencode_session_id', name=op.f('uq_chat_sessions_sandbox_id_opencode_session_id')
        ),
    )


def _create_messages() -> None:
    """``chat_messages`` (unchanged), under a temporary name, referencing the new sessions table."""
    op.create_table(
        NEW_MESSAGES,
        sa.Column('session_id', sa.String(length=36), nullable=False),
        sa.Column('external_message_id', sa.String(length=128), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('content', JSON_TYPE, nullable=False),
        sa.Column('text', sa.Text(), nullable=True),
        sa.Column('tool_calls', JSON_TYPE, nullable=True),
        sa.Column('tool_results', JSON_TYPE, nullable=True),
        sa.Column('thinking', sa.Text(), nullable=True),
        sa.Column('model_provider', sa.String(length=128), nullable=True),
        sa.Column('model_id', sa.String(length=256), nullable=True),
        sa.Column('agent_id', sa.String(length=128), nullable=True),
        sa.Column('input_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('output_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('reasoning_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('cache_read_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('cache_write_tokens', sa.Integer(), server_default='0', nullable=False),
        sa.Column('cost', sa.Numeric(precision=14, scale=6), server_default='0', nullable=False),
        sa.Column('status', sa.String(length=16), server_default='streaming', nullable=False),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('upstream_created_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('upstream_completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('missing_upstream_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('user', 'assistant', 'system')", name=op.f('ck_chat_messages_role_valid')),
        sa.CheckConstraint("source IN ('opencode', 'acp_gateway')", name=op.f('ck_chat_messages_source_valid')),
        sa.CheckConstraint(
            "status IN ('streaming', 'complete', 'error', 'cancelled', 'interrupted')",
            name=op.f('ck_chat_messages_status_valid'),
        ),
        sa.ForeignKeyConstraint(
            ['session_id'], [f'{NEW_SESSIONS}.id'], name=op.f('fk_chat_messages_session_id_chat_sessions'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages')),
        sa.UniqueConstraint(
            'session_id', 'external_message_id', name=op.f('uq_chat_messages_session_id_external_message_id')
        ),
    )


def _rebuild_on_sqlite(*, kept: bool) -> None:
    """Rebuild both chat tables in the shape of this revision (``kept``) or the previous one, keeping
    every row. Works whether foreign keys are enforced or not, and changes no other table."""
    # A no-op write first: Python's sqlite3 opens its transaction at the first write, and the DDL
    # below must run inside it, so that a failure half-way leaves the database as it was.
    op.execute("UPDATE alembic_version SET version_num = version_num")
    _create_sessions(kept)
    _create_messages()
    columns = ", ".join(SESSION_COLUMNS)
    # Parent links second: a parent may come after its child in the copy, and the link is checked at once.
    copied = ", ".join("NULL" if name == "parent_session_id" else name for name in SESSION_COLUMNS)
    op.execute(f"INSERT INTO {NEW_SESSIONS} ({columns}) SELECT {copied} FROM {SESSIONS}")
    op.execute(
        f"UPDATE {NEW_SESSIONS} SET parent_session_id = "
        f"(SELECT old.parent_session_id FROM {SESSIONS} AS old WHERE old.id = {NEW_SESSIONS}.id) "
        f"WHERE id IN (SELECT id FROM {SESSIONS} WHERE parent_session_id IS NOT NULL)"
    )
    columns = ", ".join(MESSAGE_COLUMNS)
    op.execute(f"INSERT INTO {NEW_MESSAGES} ({columns}) SELECT {columns} FROM {MESSAGES}")
    # Messages first: while they exist, dropping the sessions would delete them through the cascade.
    op.drop_table(MESSAGES)
    op.drop_table(SESSIONS)
    op.rename_table(NEW_SESSIONS, SESSIONS)
    op.rename_table(NEW_MESSAGES, MESSAGES)
    indexes = [*SESSION_INDEXES, *([(SNAPSHOT_INDEX, ["deleted_sandbox_id"])] if kept else [])]
    for name, columns_of_index in indexes:
        op.create_index(name, SESSIONS, columns_of_index, unique=False)
    for name, columns_of_index in MESSAGE_INDEXES:
        op.create_index(name, MESSAGES, columns_of_index, unique=False)
