"""Database engine, sessions and migrations.

SQLite (WAL) under DATA_DIR by default; MariaDB/MySQL when DATABASE_URL says so. The schema is
owned by Alembic: ``Database.migrate()`` brings any database to the latest revision at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

from llamaman.core import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class DatabaseError(RuntimeError):
    pass


# MariaDB answers GET_LOCK with ER_NOT_SUPPORTED_YET while wsrep is on (Galera, MDEV-30473).
_NOT_SUPPORTED_YET = 1235


def _migration_lock(conn: Connection) -> bool:
    """Take the named lock that lets one node migrate while the others wait; False where the server
    has no named locks (a Galera node), which then migrates without one."""
    try:
        got = conn.exec_driver_sql("SELECT GET_LOCK('llamaman_migrate', 300)").scalar()
    except DBAPIError as exc:
        if getattr(exc.orig, "args", (None,))[0] != _NOT_SUPPORTED_YET:
            raise
        log.warning(
            "the database refuses named locks (a Galera cluster): migrating without one; after an "
            "upgrade start one node first, then the others"
        )
        return False
    if got != 1:
        raise DatabaseError("another node held the migration lock for 5 minutes")
    return True


def is_unreachable(exc: BaseException) -> bool:
    """Whether a failed write says the database is away (down, restarting, the network), not that
    the write itself is wrong: such a write is kept and tried again, a wrong one is not."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the UI read while the proxy writes the request log.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _private_sqlite_file(path: Path) -> None:
    """Create the database file readable by its owner only (it holds password hashes and key
    digests); SQLite gives its -wal and -shm files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):  # another owner's file: SQLite reports what matters
            if f.exists() and f.stat().st_mode & 0o077:
                f.chmod(0o600)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # pool_pre_ping survives MariaDB's wait_timeout dropping idle connections.
        return create_engine(url, pool_pre_ping=True, pool_recycle=3600)
    raise DatabaseError(
        f"unsupported DATABASE_URL scheme {parsed.drivername!r}: use sqlite:/// or mysql+pymysql://"
    )


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Apply Alembic migrations up to head (blocking; call in a thread from async code)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        # Nodes sharing one MariaDB may start together: a named lock lets one migrate while the
        # others wait, then find the schema at head and do nothing. The lock is held on a
        # connection of its own and released only once the migration's transaction has committed:
        # its last version stamp must be visible to the next node that gets the lock.
        with self.engine.connect() as lock:
            locked = self.backend in ("mysql", "mariadb") and _migration_lock(lock)
            try:
                with self.engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            finally:
                if locked:
                    lock.exec_driver_sql("SELECT RELEASE_LOCK('llamaman_migrate')")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
