"""A throwaway MariaDB server for tests, started without systemd or a system-wide config.

``LLAMAMAN_TEST_MYSQL_URL`` points the tests at an existing server instead (CI services, a
developer's own database); otherwise a private ``mariadbd`` is initialised in a temporary folder,
listens on 127.0.0.1 on a free port and is removed again by :meth:`MariaDBServer.stop`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pymysql

URL_ENV = "LLAMAMAN_TEST_MYSQL_URL"
REQUIRE_ENV = "LLAMAMAN_REQUIRE_MYSQL"
DATABASE = "llamaman_test"
USER = "llamaman"

# Distributions put the server outside the PATH of ordinary users (Debian: /usr/sbin,
# Fedora: /usr/libexec).
_SERVER_NAMES = ("mariadbd", "mysqld")
_INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/mysql/bin", "/usr/local/bin")

# Small InnoDB files and buffers: the data folder stays ~20 MB and starts in well under a second.
_SERVER_TUNING = (
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
)


class MariaDBUnavailable(RuntimeError):
    """No MariaDB server binary here, or it did not come up."""


def mysql_required() -> bool:
    """CI sets LLAMAMAN_REQUIRE_MYSQL so a missing server fails the run instead of skipping tests."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _which(names: tuple[str, ...]) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_DIRS])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


def find_mariadbd() -> str | None:
    return _which(_SERVER_NAMES)


def find_install_db() -> str | None:
    return _which(_INSTALL_NAMES)


def mariadb_available() -> bool:
    """Whether a MySQL-compatible database can be had: an external URL or a local server binary."""
    return bool(os.environ.get(URL_ENV)) or (find_mariadbd() is not None and find_install_db() is not None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class MariaDBServer:
    """A running MariaDB, or a borrowed one when ``LLAMAMAN_TEST_MYSQL_URL`` is set.

    ``url`` is a SQLAlchemy URL for a database the tests own. ``stop()`` is idempotent and only
    touches what this object started.
    """

    def __init__(
        self,
        url: str,
        *,
        process: subprocess.Popen[bytes] | None = None,
        workdir: Path | None = None,
        socket_path: Path | None = None,
        port: int | None = None,
        startup_seconds: float | None = None,
    ) -> None:
        self.url = url
        self.process = process
        self.workdir = workdir
        self.socket_path = socket_path
        self.port = port
        self.startup_seconds = startup_seconds

    @property
    def owned(self) -> bool:
        return self.process is not None

    @classmethod
    def start(cls, timeout: float = 20.0) -> MariaDBServer:
        external = os.environ.get(URL_ENV, "").strip()
        if external:
            return cls(external)
        return _start_local(timeout)

    def root_connection(self) -> pymysql.connections.Connection:
        """Superuser connection over the private socket; only for servers this object started."""
        if self.socket_path is None:
            raise MariaDBUnavailable("no root access to a server given through LLAMAMAN_TEST_MYSQL_URL")
        return pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            # SIGTERM lets InnoDB shut down cleanly and quickly; SIGKILL only if it hangs.
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _start_local(timeout: float) -> MariaDBServer:
    mariadbd = find_mariadbd()
    install_db = find_install_db()
    if mariadbd is None or install_db is None:
        raise MariaDBUnavailable(
            "no MariaDB server found (mariadbd and mariadb-install-db); install it, e.g. "
            f"`apt-get install mariadb-server`, or set {URL_ENV}"
        )
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    # mkdtemp, not the caller's tmp folder: the socket path must stay under the ~108-byte limit.
    workdir = Path(tempfile.mkdtemp(prefix="llamaman-mariadb-"))
    started = time.monotonic()
    try:
        datadir = workdir / "data"
        init = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
                *_SERVER_TUNING,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if init.returncode != 0:
            raise MariaDBUnavailable(
                f"{install_db} failed ({init.returncode}):\n{(init.stdout + init.stderr)[-2000:]}"
            )
        server = _launch(mariadbd, workdir, datadir, as_root, started + timeout)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server.startup_seconds = time.monotonic() - started
    atexit.register(server.stop)
    return server


def _launch(
    mariadbd: str, workdir: Path, datadir: Path, as_root: list[str], deadline: float
) -> MariaDBServer:
    sock = workdir / "mariadb.sock"
    log = workdir / "error.log"
    # The free port may be taken between probing and binding; a second port usually works.
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                *as_root,
                f"--datadir={datadir}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={workdir / 'mariadbd.pid'}",
                f"--log-error={log}",
                f"--tmpdir={workdir}",
                *_SERVER_TUNING,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own process group: a Ctrl-C in the test terminal goes to pytest, which then stops it.
            start_new_session=True,
        )
        server = MariaDBServer("", process=proc, workdir=workdir, socket_path=sock, port=port)
        try:
            if _wait_ready(server, deadline):
                server.url = _create_database(server)
                return server
        except BaseException:
            proc.kill()
            proc.wait(timeout=5)
            raise
        proc.kill()
        proc.wait(timeout=5)
        if "already in use" not in _tail(log, 50):
            break
    raise MariaDBUnavailable(f"mariadbd did not accept connections; error log:\n{_tail(log)}")


def _wait_ready(server: MariaDBServer, deadline: float) -> bool:
    assert server.process is not None and server.socket_path is not None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if server.socket_path.exists():
            with contextlib.suppress(pymysql.err.OperationalError):
                server.root_connection().close()
                return True
        time.sleep(0.05)
    return False


def _create_database(server: MariaDBServer) -> str:
    password = secrets.token_hex(16)
    conn = server.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            # '%' with --skip-name-resolve: TCP clients from 127.0.0.1 match without a DNS lookup.
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (USER, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'%'")
    finally:
        conn.close()
    return f"mysql+pymysql://{USER}:{password}@127.0.0.1:{server.port}/{DATABASE}?charset=utf8mb4"


def start_mariadb(timeout: float = 20.0) -> MariaDBServer:
    """Start a throwaway server (or borrow ``LLAMAMAN_TEST_MYSQL_URL``); call ``stop()`` when done."""
    return MariaDBServer.start(timeout)


@contextlib.contextmanager
def mariadb_url(timeout: float = 20.0) -> Iterator[str]:
    with start_mariadb(timeout) as server:
        yield server.url
