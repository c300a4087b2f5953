"""requestlog.load_ms: the cold start a request waited through

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requestlog", schema=None) as batch_op:
        batch_op.add_column(sa.Column("load_ms", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requestlog", schema=None) as batch_op:
        batch_op.drop_column("load_ms")
