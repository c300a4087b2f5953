"""MariaDB stopped and started again while requests keep coming to a node: every request is
answered, the heartbeat fails and comes back, and every activity row and every request counted
against the key is in the database exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from sqlmodel import func, select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.state import InstanceState
from llamaman.core.tables import KeyUsage, RequestLog
from llamaman.instances.launch import LaunchSettings
from llamaman.testing import mariadb as helper
from llamaman.testing.mariadb import MariaDBServer, mariadb_available, mysql_required
from tests.helpers import asgi

pytestmark = pytest.mark.mysql
CLIENTS = 3


@pytest.fixture
def server() -> Iterator[MariaDBServer]:
    if not mariadb_available() and not mysql_required():
        pytest.skip("no MariaDB server here (install mariadb-server or set LLAMAMAN_TEST_MYSQL_URL)")
    db = MariaDBServer.start()
    try:
        if not db.owned:
            pytest.skip("needs a MariaDB this test starts: it stops and starts it")
        yield db
    finally:
        db.stop()


def stop_keeping_data(db: MariaDBServer) -> None:
    """Shut the server down as an operator's restart would; its data folder stays."""
    assert db.process is not None
    db.process.terminate()
    db.process.wait(timeout=30)


def start_again(db: MariaDBServer) -> None:
    """The same server, data and port back up (what ``MariaDBServer`` started, started once more)."""
    assert db.workdir is not None and db.port is not None
    mariadbd = helper.find_mariadbd()
    assert mariadbd is not None
    workdir = db.workdir
    db.process = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            *(["--user=root"] if os.geteuid() == 0 else []),
            f"--datadir={workdir / 'data'}",
            f"--socket={db.socket_path}",
            f"--port={db.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={workdir / 'mariadbd.pid'}",
            f"--log-error={workdir / 'error.log'}",
            f"--tmpdir={workdir}",
            *helper._SERVER_TUNING,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert helper._wait_ready(db, time.monotonic() + 30), helper._tail(workdir / "error.log")


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_rows_and_usage_made_while_mariadb_was_down_are_all_written_once(
    server: MariaDBServer,
    make_settings: Callable[..., Settings],
    fake_server_bin: Callable[[str], str],
) -> None:
    settings = make_settings(
        DATABASE_URL=server.url,
        LLAMA_SERVER_BIN=fake_server_bin("ok"),
        LLAMAMAN_NODE_NAME="alpha",
        LLAMAMAN_NODE_URL="http://127.0.0.1:1",
        LLAMAMAN_NODE_SECRET="d" * 20,
    )
    app = LlamaMan(settings)
    await app.start()
    activity = app.telemetry.activity
    activity.batch_delay = 0.02
    answered: list[int] = []
    stop = asyncio.Event()
    try:
        m = await app.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
        assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=30) == (
            InstanceState.HEALTHY
        ), m.proc.error
        record, key = await app.auth.keys.create("outage")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

        async def client() -> None:
            async with asgi(app, "proxy") as http:
                while not stop.is_set():
                    r = await http.post("/v1/chat/completions", json=body, headers=headers)
                    answered.append(r.status_code)

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await until(lambda: activity.written >= 10, 30, "rows written before the outage")

        await asyncio.to_thread(stop_keeping_data, server)
        before = len(answered)
        await until(lambda: activity.db_error is not None, 30, "a write to fail")
        await until(lambda: app.nodes.last_error is not None, 30, "a heartbeat to fail")
        with pytest.raises(Exception):  # noqa: B017  (whatever the driver raises: usage stays pending)
            await app.auth.keys.flush(force=True)
        await until(lambda: len(answered) >= before + 20, 30, "requests served without the database")

        await asyncio.to_thread(start_again, server)
        await until(lambda: activity.db_error is None, 30, "the waiting rows to be written")
        await until(lambda: app.nodes.last_error is None, 30, "the heartbeat to come back")
        at_return = len(answered)
        await until(lambda: len(answered) >= at_return + 10, 30, "requests after the return")
        stop.set()
        await asyncio.gather(*clients)

        await activity.flush()
        await app.auth.keys.flush(force=True)
    finally:
        stop.set()
        await app.stop()

    assert set(answered) == {200}
    reader = Database(server.url)
    try:
        with reader.session() as s:
            mine = RequestLog.key_name == "outage"
            rows = s.exec(select(func.count()).select_from(RequestLog).where(mine)).one()
            nodes = set(s.exec(select(RequestLog.node).where(mine)).all())
            usage = s.exec(select(func.sum(KeyUsage.requests)).where(KeyUsage.key_id == record.id)).one()
    finally:
        reader.dispose()
    assert (rows, usage, activity.dropped) == (len(answered), len(answered), 0)
    assert nodes == {"alpha"}  # the node that answered each of them
