"""Launches over llama.cpp RPC workers: the workers an instance spreads its model over

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 00:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpc_workers", sa.JSON(), nullable=True))
    # Existing instances ran on their own box: an empty list, not NULL, for anything reading raw rows.
    op.execute(sa.text("UPDATE instance SET rpc_workers = '[]' WHERE rpc_workers IS NULL"))


def downgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("rpc_workers")
