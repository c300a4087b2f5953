"""Migrating a MariaDB whose nodes run Galera: MariaDB refuses named locks while wsrep is on
(ER_NOT_SUPPORTED_YET, 1235), so the migration goes ahead without one instead of failing every start.

A plain MariaDB cannot be made to refuse GET_LOCK on demand: the refusal is injected on the real
server's connection, right where Galera's would come from.
"""

from __future__ import annotations

from typing import Any

import pymysql
import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from llamaman.core.db import Database
from llamaman.testing.mariadb import MariaDBServer
from tests.core.test_storage import _head_from_files
from tests.helpers import fresh_mysql_database

pytestmark = pytest.mark.mysql


def refuse_named_locks(db: Database, code: int, message: str) -> list[str]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "GET_LOCK" in statement or "RELEASE_LOCK" in statement:
            seen.append(statement)
            raise pymysql.err.NotSupportedError(code, message)

    event.listen(db.engine, "before_cursor_execute", before)
    return seen


def head_of(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_a_galera_node_that_refuses_named_locks_still_migrates_to_the_head(
    mariadb_server: MariaDBServer,
) -> None:
    with fresh_mysql_database(mariadb_server) as url:
        db = Database(url)
        try:
            seen = refuse_named_locks(
                db, 1235, "This version of MariaDB doesn't yet support 'GET_LOCK in cluster'"
            )
            db.migrate()
            db.migrate()  # the next start too
            assert len(seen) == 2 and all(
                "GET_LOCK" in s for s in seen
            )  # no RELEASE_LOCK of a lock never held
            assert head_of(db) == _head_from_files()
        finally:
            db.dispose()


def test_any_other_failure_of_the_lock_still_stops_the_start(mariadb_server: MariaDBServer) -> None:
    with fresh_mysql_database(mariadb_server) as url:
        db = Database(url)
        try:
            refuse_named_locks(db, 1142, "SELECT command denied")
            with pytest.raises(DBAPIError, match="denied"):
                db.migrate()
            assert head_of(db) is None
        finally:
            db.dispose()
