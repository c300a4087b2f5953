"""Alembic environment: runs against the connection handed over by ``Database.migrate``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from llamaman.core import tables  # noqa: F401

target_metadata = SQLModel.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("migrations run through llamaman.core.db.Database.migrate()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
