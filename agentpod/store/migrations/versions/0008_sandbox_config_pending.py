"""sandbox config_pending: the user's agent config changed and the running agent has not reloaded it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A NOT NULL column with a default is added in place on SQLite: no rebuild of `sandboxes` (a batch
    # rebuild would cascade-delete rows that reference it).
    op.add_column("sandboxes", sa.Column("config_pending", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("sandboxes", "config_pending")
