"""download resume fields: per-download token, destination folder, Ollama alias

Revision ID: 5c1f0a9e2b7d
Revises: 0001
Create Date: 2026-11-22 01:21:10.138391
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5c1f0a9e2b7d"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hf_token", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("dest_dir", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True)
        )
        batch_op.add_column(sa.Column("alias", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.drop_column("alias")
        batch_op.drop_column("dest_dir")
        batch_op.drop_column("hf_token")
