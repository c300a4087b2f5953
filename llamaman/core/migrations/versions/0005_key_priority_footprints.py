"""API key priority (who is served first when models must swap) and measured model footprints
(remembered per model and launch settings across restarts)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing keys get the default priority; the server default fills them and is dropped again,
    # so the schema matches the table definitions.
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.alter_column("priority", server_default=None, existing_type=sa.Integer())
    op.create_table(
        "modelfootprint",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("model_path", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("cpu_only", sa.BigInteger(), nullable=False),
        sa.Column("gpu_full", sa.BigInteger(), nullable=False),
        sa.Column("host_full", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("modelfootprint")
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.drop_column("priority")
