"""Several boxes on one database: nodes, RPC workers, static peers, and which node owns an
instance or a download and served a request

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NODE = sqlmodel.sql.sqltypes.AutoString(length=64)


def upgrade() -> None:
    op.create_table(
        "node",
        sa.Column("name", _NODE, nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("heartbeat_at", sa.Double(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(op.f("ix_node_heartbeat_at"), "node", ["heartbeat_at"], unique=False)
    op.create_table(
        "rpcworker",
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("node", _NODE, nullable=False),
        sa.Column("memory_total", sa.BigInteger(), nullable=False),
        sa.Column("memory_free", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.Double(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("address"),
    )
    op.create_table(
        "peer",
        sa.Column("name", _NODE, nullable=False),
        sa.Column("base_url", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("api_key", sa.Text(), nullable=True),
        sa.Column("model_filter", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", _NODE, nullable=True))
        batch_op.create_index(batch_op.f("ix_instance_node"), ["node"], unique=False)
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", _NODE, nullable=True))
        batch_op.create_index(batch_op.f("ix_download_node"), ["node"], unique=False)
    with op.batch_alter_table("requestlog", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", _NODE, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requestlog", schema=None) as batch_op:
        batch_op.drop_column("node")
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_node"))
        batch_op.drop_column("node")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_node"))
        batch_op.drop_column("node")
    op.drop_table("peer")
    op.drop_table("rpcworker")
    op.drop_index(op.f("ix_node_heartbeat_at"), table_name="node")
    op.drop_table("node")
