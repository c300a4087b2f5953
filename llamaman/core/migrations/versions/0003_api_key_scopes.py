"""API key scopes, expiry and daily token quota; existing keys become inference keys

Revision ID: 0003
Revises: 5c1f0a9e2b7d
Create Date: 2026-11-29 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "5c1f0a9e2b7d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Keys made before scopes existed could manage LlamaMan; they become inference keys (model
    # endpoints only), the safe side: admin keys are made on purpose afterwards. The server defaults
    # fill the existing rows and are dropped again, so the schema matches the table definitions.
    scope_type = sqlmodel.sql.sqltypes.AutoString(length=16)
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", scope_type, nullable=False, server_default="inference"))
        batch_op.add_column(sa.Column("expires_at", sa.Double(), nullable=True))
        batch_op.add_column(
            sa.Column("daily_token_quota", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.alter_column("scope", server_default=None, existing_type=scope_type)
        batch_op.alter_column("daily_token_quota", server_default=None, existing_type=sa.BigInteger())


def downgrade() -> None:
    with op.batch_alter_table("apikey", schema=None) as batch_op:
        batch_op.drop_column("daily_token_quota")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scope")
