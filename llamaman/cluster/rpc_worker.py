"""``llamaman worker``: one llama.cpp RPC worker, supervised and registered in the workers table.

llama.cpp splits a model over several boxes with ``llama-server --rpc host:port,...``: each
``ggml-rpc-server`` lends its devices (GPUs, or the CPU and its RAM) to the one llama-server that
connects. Its protocol has no authentication and no encryption, so a worker binds to an address the
operator names (a private network); listening on every address needs ``--allow-any-address``.

The worker's row (address, node, memory, devices) is refreshed every ``LLAMAMAN_NODE_HEARTBEAT``
seconds while the server runs; a launch only uses workers heard from within ``LLAMAMAN_NODE_TIMEOUT``
(``cluster.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from llamaman.cluster.rpc_setup import rpc_server_argv
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.tables import RpcWorker
from llamaman.core.tasks import wait_event

log = logging.getLogger(__name__)

# A worker that stayed up this long has recovered: the next crash starts the backoff over.
STABLE_AFTER_S = 60.0


# --- pure parts: the server's start output ------------------------------------------------------


@dataclass(frozen=True)
class RpcDevice:
    """A device the worker lends, with its memory in bytes as the worker reported it at start."""

    name: str
    description: str
    total: int
    free: int

    @property
    def is_cpu(self) -> bool:
        return self.name.upper().startswith("CPU")


_DEVICE = re.compile(r"^\s*([A-Za-z][\w.-]*):\s*(.*?)\s*\((\d+)\s*MiB,\s*(\d+)\s*MiB free\)\s*$")
_ENDPOINT = re.compile(r"^\s*endpoint\s*:\s*(\S+)\s*$")
_VERSION = re.compile(r"RPC server v(\d+(?:\.\d+)*)")
_MIB = 1024 * 1024


def parse_devices(text: str) -> list[RpcDevice]:
    """The devices a ``ggml-rpc-server`` lists under ``Devices:`` when it starts."""
    out: list[RpcDevice] = []
    in_devices = False
    for line in text.splitlines():
        if line.strip() == "Devices:":
            in_devices = True
            continue
        m = _DEVICE.match(line) if in_devices else None
        if m:
            out.append(RpcDevice(m[1], m[2], int(m[3]) * _MIB, int(m[4]) * _MIB))
        elif in_devices and line.strip() and not line.startswith((" ", "\t")):
            in_devices = False
    return out


def parse_endpoint(text: str) -> str | None:
    for line in text.splitlines():
        m = _ENDPOINT.match(line)
        if m:
            return m[1]
    return None


def parse_version(text: str) -> str | None:
    """The RPC protocol version the server announces; llama-server refuses a worker of another."""
    m = _VERSION.search(text)
    return m[1] if m else None


def backoff_delay(failures: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds before restart number ``failures`` (1, 2, 4, ... up to ``cap``)."""
    return min(cap, base * 2 ** max(0, failures - 1))


# --- the process and its row ---------------------------------------------------------------------


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


_W = WorkerState
# What the RPC server's supervisor may go to from each state; anything else is a bug.
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _W.STARTING: frozenset({_W.STARTING, _W.RUNNING, _W.RESTARTING, _W.STOPPED}),
    _W.RUNNING: frozenset({_W.RESTARTING, _W.STOPPED}),
    _W.RESTARTING: frozenset({_W.STARTING, _W.STOPPED}),
    _W.STOPPED: frozenset(),
}


class RpcServerProcess:
    """Runs ``ggml-rpc-server`` and restarts it with backoff when it dies, until stopped."""

    state: WorkerState

    def __init__(self, argv: list[str], host: str, port: int, clock: Callable[[], float] = time.monotonic):
        self.argv = argv
        self.host, self.port = host, port
        self.clock = clock
        self.state = WorkerState.STARTING
        self.devices: list[RpcDevice] = []
        self.version: str | None = None
        self.restarts = 0
        self.pid: int | None = None
        self.last_exit: int | None = None
        self.ready = asyncio.Event()
        self._output: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()

    def _set_state(self, new: WorkerState) -> None:
        if new not in WORKER_TRANSITIONS[self.state]:
            raise RuntimeError(f"RPC server state {self.state} cannot become {new}")
        self.state = new

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = self.clock()
            try:
                code = await self._run_once()
            except OSError as exc:  # the binary went away or cannot run: retry, it may come back
                log.error("cannot start %s: %s", self.argv[0], exc)
                code = -1
            if self._stopping.is_set():
                break
            failures = 1 if self.clock() - started >= STABLE_AFTER_S else failures + 1
            self.restarts += 1
            self._set_state(WorkerState.RESTARTING)
            delay = backoff_delay(failures)
            log.warning("ggml-rpc-server exited with %s; restarting in %.0f s", code, delay)
            await wait_event(self._stopping, delay)
        self._set_state(WorkerState.STOPPED)

    async def _run_once(self) -> int:
        self._output = []
        self.ready.clear()
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches this process, which stops the server in order
        )
        self.pid = proc.pid
        self._set_state(WorkerState.STARTING)
        if self._stopping.is_set():  # stopped while it was being started
            proc.terminate()
        reader = asyncio.create_task(self._read(proc))
        probe = asyncio.create_task(self._wait_listening(proc))
        code = await proc.wait()
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        await reader
        self.ready.clear()
        self.pid, self.last_exit = None, code
        return code

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            del self._output[:-200]
            log.info("rpc-server: %s", line)
            text = "\n".join(self._output)
            self.devices = parse_devices(text) or self.devices
            self.version = parse_version(text) or self.version

    async def _wait_listening(self, proc: asyncio.subprocess.Process) -> None:
        # Ready once the port takes connections; the endpoint line is printed before the bind.
        dial = self.host.strip("[]")
        while proc.returncode is None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(dial, self.port), 2)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._set_state(WorkerState.RUNNING)
            self.ready.set()
            return

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def memory_of(devices: list[RpcDevice]) -> tuple[int, int]:
    """Total and free bytes over the devices; a CPU device's free memory is read now (the server
    reports it only once, at start)."""
    total = free = 0
    for d in devices:
        total += d.total
        free += min(d.total, psutil.virtual_memory().available) if d.is_cpu else d.free
    return total, free


class WorkerRegistration:
    """This worker's row in the workers table."""

    def __init__(self, db: Database, address: str, node: str, clock: Callable[[], float] = time.time):
        self.db, self.address, self.node, self.clock = db, address, node, clock

    def write(self, devices: list[RpcDevice], info: Mapping[str, Any]) -> None:
        total, free = memory_of(devices)
        with self.db.session() as s:
            row = s.get(RpcWorker, self.address) or RpcWorker(address=self.address)
            row.node, row.memory_total, row.memory_free = self.node, total, free
            row.heartbeat_at = self.clock()
            row.info = {**info, "devices": [asdict(d) for d in devices]}
            s.add(row)
            s.commit()

    def remove(self) -> None:
        with self.db.session() as s:
            row = s.get(RpcWorker, self.address)
            if row is not None:
                s.delete(row)
                s.commit()


async def heartbeat(
    reg: WorkerRegistration, server: RpcServerProcess, interval: float, info: Mapping[str, Any]
) -> None:
    """Refresh the row while the server takes connections; a down server's row goes stale and is not
    offered. A database away for a while only delays the next write."""
    failing = False
    while True:
        if server.state is WorkerState.RUNNING:
            extra = {"pid": server.pid, "restarts": server.restarts, "state": server.state.value}
            extra["rpc_version"] = server.version
            try:
                await asyncio.to_thread(reg.write, server.devices, {**info, **extra})
                if failing:
                    log.info("worker registration written again")
                failing = False
            except Exception as exc:  # the database restarting: keep serving, write again later
                if not failing:
                    log.warning("worker registration failed: %s", exc)
                failing = True
        await asyncio.sleep(interval)


def node_label(settings: Settings) -> str:
    return settings.node_name or socket.gethostname()


@dataclass(frozen=True)
class WorkerOptions:
    """What ``llamaman worker`` was asked for, checked."""

    host: str
    port: int
    address: str  # as registered: what llama-server dials
    binary: Path
    threads: int | None = None
    cache: bool = False


async def serve(settings: Settings, opts: WorkerOptions, stop: asyncio.Event) -> int:
    """Run, supervise and register the worker until ``stop`` is set; then stop the server and take
    the row away, so no launch picks a worker that is gone."""
    db = Database(settings.effective_database_url)
    try:
        await asyncio.to_thread(db.migrate)  # a worker may be the first to reach a new database
    except Exception as exc:  # the database away: serve anyway, register once it is back
        log.warning("database not reachable (%s); the worker registers once it is", exc)
    server = RpcServerProcess(
        rpc_server_argv(opts.binary, opts.host, opts.port, opts.threads, opts.cache), opts.host, opts.port
    )
    reg = WorkerRegistration(db, opts.address, node_label(settings))
    info = {"binary": str(opts.binary), "threads": opts.threads, "cache": opts.cache, "host": opts.host}
    runner = asyncio.create_task(server.run(), name="rpc-server")
    beats = asyncio.create_task(heartbeat(reg, server, settings.node_heartbeat, info), name="rpc-heartbeat")
    log.info("RPC worker %s (node %s) running %s", opts.address, reg.node, opts.binary)
    stopped = asyncio.create_task(stop.wait())
    code = 0
    try:
        # The supervision loop only ends when told to; if it ends otherwise, the worker is broken.
        await asyncio.wait({stopped, runner}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and not stop.is_set():
            log.error("the RPC server's supervision ended: %r", runner.exception())
            code = 1
    finally:
        stopped.cancel()
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        await server.stop()
        with contextlib.suppress(Exception):
            await runner
        try:
            await asyncio.to_thread(reg.remove)
        except Exception as exc:  # the row goes stale on its own
            log.warning("could not remove the worker's registration: %s", exc)
        db.dispose()
    return code
