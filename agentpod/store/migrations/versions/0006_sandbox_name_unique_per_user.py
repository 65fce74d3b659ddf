"""sandbox names unique per user

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 15:00:00.000000
"""

from __future__ import annotations

import logging
import unicodedata
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

NAME_MAX = 100
NAME_KEY_MAX = 400

sandboxes = sa.table(
    "sandboxes",
    sa.column("id", sa.String()),
    sa.column("user_id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("name_key", sa.String()),
    sa.column("created_at", sa.DateTime()),
)


def name_key(name: str) -> str:
    """Unicode caseless, canonical-equivalent form of a name (store.tables.sandboxes, frozen here)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def _free_name(name: str, reserved: set[str]) -> str:
    """``name (n)`` with the smallest n >= 2 whose key is not in ``reserved``."""
    n = 2
    while True:
        candidate = f"{name[: NAME_MAX - len(f' ({n})')]} ({n})"
        if name_key(candidate) not in reserved:
            return candidate
        n += 1


def _backfill_keys() -> None:
    """Write every row's key; a user's later duplicates (by creation, then id) get ``name (n)``."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(sandboxes.c.id, sandboxes.c.user_id, sandboxes.c.name).order_by(
            sandboxes.c.user_id, sandboxes.c.created_at, sandboxes.c.id
        )
    ).all()
    # Every existing name stays reserved, so a renamed duplicate never takes a name a later row holds.
    reserved: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        reserved[row.user_id].add(name_key(row.name))
    kept: dict[str, set[str]] = defaultdict(set)
    values: list[dict[str, str]] = []
    for row in rows:
        name, key = row.name, name_key(row.name)
        if key in kept[row.user_id]:
            name = _free_name(row.name, reserved[row.user_id])
            key = name_key(name)
            reserved[row.user_id].add(key)
            log.warning("sandbox %s: its owner already has one named %r; renamed to %r", row.id, row.name, name)
        kept[row.user_id].add(key)
        values.append({"row_id": row.id, "new_name": name, "new_key": key})
    if values:
        connection.execute(
            sandboxes.update()
            .where(sandboxes.c.id == sa.bindparam("row_id"))
            .values(name=sa.bindparam("new_name"), name_key=sa.bindparam("new_key")),
            values,
        )


def upgrade() -> None:
    # Added NOT NULL with a default, then filled: SQLite adds such a column in place, where a batch
    # rebuild of `sandboxes` would cascade-delete chat history (foreign keys are on).
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name_key', sa.String(length=NAME_KEY_MAX), server_default='', nullable=False))

    _backfill_keys()

    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.create_index('uq_sandboxes_user_id_name_key', ['user_id', 'name_key'], unique=True)


def downgrade() -> None:
    # Duplicates renamed by the upgrade keep their new names. A plain DROP COLUMN (SQLite 3.35+), not
    # a batch rebuild: that would cascade-delete the sandboxes' chat history on SQLite.
    with op.batch_alter_table('sandboxes', schema=None) as batch_op:
        batch_op.drop_index('uq_sandboxes_user_id_name_key')
    op.drop_column('sandboxes', 'name_key')
