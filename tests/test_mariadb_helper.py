from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from llamaman.testing.mariadb import MariaDBServer, mariadb_available, mysql_required, start_mariadb

pytestmark = pytest.mark.mysql


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDBServer]:
    if not mariadb_available() and not mysql_required():
        pytest.skip("no MariaDB server here (install mariadb-server or set LLAMAMAN_TEST_MYSQL_URL)")
    # With LLAMAMAN_REQUIRE_MYSQL set, a missing or broken server raises here and fails the tests.
    server = start_mariadb()
    try:
        yield server
    finally:
        server.stop()


def test_select_one_through_sqlalchemy(mariadb: MariaDBServer) -> None:
    engine = create_engine(mariadb.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            assert conn.execute(text("SELECT DATABASE()")).scalar_one() == "llamaman_test"
    finally:
        engine.dispose()


def test_user_can_create_tables_with_utf8mb4(mariadb: MariaDBServer) -> None:
    engine = create_engine(mariadb.url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE helper_probe (id INT PRIMARY KEY, name VARCHAR(32))"))
            conn.execute(text("INSERT INTO helper_probe VALUES (1, :name)"), {"name": "llama 🦙"})
            assert conn.execute(text("SELECT name FROM helper_probe")).scalar_one() == "llama 🦙"
            conn.execute(text("DROP TABLE helper_probe"))
    finally:
        engine.dispose()


def test_stop_removes_everything() -> None:
    if not mariadb_available() and not mysql_required():
        pytest.skip("no MariaDB server here")
    server = start_mariadb()
    if not server.owned:
        server.stop()
        pytest.skip("LLAMAMAN_TEST_MYSQL_URL points at a server this helper doesn't own")
    process, workdir = server.process, server.workdir
    assert process is not None and workdir is not None and workdir.exists()
    assert server.startup_seconds is not None and server.startup_seconds < 20

    server.stop()

    assert process.poll() is not None
    assert not workdir.exists()
    server.stop()  # idempotent
