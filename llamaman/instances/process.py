"""Supervise one llama-server: spawn it in its own process group, tail its log, wait for health,
notice when it dies, stop it without leaving orphans.

llama-server writes straight into its log file rather than into a pipe to us: a pipe would break
when LlamaMan restarts (the next log write would kill the server with SIGPIPE), while a file lets a
new LlamaMan adopt the running server and keep tailing its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psutil

from llamaman.core.state import ACTIVE_STATES, InstanceState, check_transition
from llamaman.instances.launch_policy import ENV_API_KEY, new_server_key
from llamaman.instances.server_log import copy_truncate, shift_backups

log = logging.getLogger(__name__)
S = InstanceState

_CLOSE = {"Connection": "close"}
StateListener = Callable[["LlamaProcess", InstanceState, InstanceState], None]
LineListener = Callable[["LlamaProcess", str], None]
CrashPolicy = Callable[["LlamaProcess"], InstanceState]


class LlamaProcess:
    """One llama-server across its runs (launch, sleep, wake, restart)."""

    def __init__(
        self,
        instance_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        health_url: str,
        http: httpx.AsyncClient,
        load_timeout: float,
        health_timeout: float,
        stop_grace: float,
        ring_lines: int = 2000,
        on_state: StateListener | None = None,
        on_line: LineListener | None = None,
        state: InstanceState = S.STOPPED,
        alias: str | None = None,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 2,
    ) -> None:
        self.instance_id = instance_id
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.health_url = health_url
        self.http = http
        self.load_timeout = load_timeout
        self.health_timeout = health_timeout
        self.stop_grace = stop_grace
        self.ring: deque[str] = deque(maxlen=ring_lines)
        self.on_state = on_state
        self.on_line = on_line
        # What a server that died on its own becomes (restarting or failed); failed when unset.
        self.after_crash: CrashPolicy | None = None
        self.before_healthy: Callable[[LlamaProcess], Awaitable[object]] | None = None  # e.g. a prompt cache
        self.state = state
        # The model name the server was told to serve: the health check confirms it answers to it.
        self.alias = alias
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        # The server's own key (LLAMA_API_KEY in its environment, new for every run): it answers
        # nobody without it, so only LlamaMan reaches it and a foreign server on a reused port
        # cannot pass for it.
        self.api_key: str | None = None
        self.auth_header: bytes | None = None
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.healthy_at: float | None = None
        self.load_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted: psutil.Process | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tail_task: asyncio.Task[None] | None = None
        self._tail_offset = 0
        self._tail_buf = b""
        self._changed = asyncio.Condition()
        self._stopping = False
        self._lock = asyncio.Lock()

    # ---- state -------------------------------------------------------------------------------
    def _set_state(self, new: InstanceState) -> None:
        old = self.state
        if old == new:
            return
        check_transition(old, new)
        self.state = new
        if self.on_state:
            self.on_state(self, old, new)
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, states: Iterable[InstanceState], timeout: float | None = None) -> InstanceState:
        """Wait until the state is one of ``states``; returns it (raises TimeoutError)."""
        wanted = set(states)

        async def _wait() -> InstanceState:
            async with self._changed:
                await self._changed.wait_for(lambda: self.state in wanted)
                return self.state

        return await asyncio.wait_for(_wait(), timeout)

    @property
    def running(self) -> bool:
        return self.state in ACTIVE_STATES

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the server and return at once; health is awaited in the background."""
        async with self._lock:
            if self.running:
                return
            # Reset before announcing "starting": listeners store started_at, error and exit_code.
            self.exit_code = None
            self.error = None
            self._stopping = False
            self.started_at = time.time()
            self.healthy_at = None
            self._set_state(S.STARTING)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.log_path.exists() and self.log_path.stat().st_size >= self.log_max_bytes:
                shift_backups(self.log_path, self.log_backups)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._set_key(new_server_key())
            assert self.api_key is not None
            env = {**self.env, ENV_API_KEY: self.api_key}
            with open(self.log_path, "ab") as fh:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"--- {stamp} launching: {' '.join(self.argv)}\n".encode())
                fh.flush()
                try:
                    self._proc = await asyncio.create_subprocess_exec(
                        *self.argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=fh,
                        stderr=asyncio.subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                except OSError as exc:
                    self.error = f"could not start llama-server: {exc}"
                    self._set_state(S.FAILED)
                    return
            self._adopted = None
            self.pid = self._proc.pid
            self._start_tail(offset)
            self._spawn(self._watch_exit(self._proc))
            self._spawn(self._wait_healthy())

    def fail_without_start(self) -> None:
        """Report a start that was refused before any process ran (``error`` says why)."""
        if self.running:
            return
        self.exit_code = None
        self.started_at = time.time()
        self._set_state(S.STARTING)
        self._set_state(S.FAILED)

    def _set_key(self, key: str | None) -> None:
        self.api_key = key
        self.auth_header = f"Bearer {key}".encode() if key else None

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers for LlamaMan's own calls to this server."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def adopt(self, pid: int) -> bool:
        """Take over a server left running by an earlier LlamaMan; False if it is gone."""
        try:
            proc = psutil.Process(pid)
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return False
            # Its key was handed over in its environment; only its owner (this user) can read it.
            key = proc.environ().get(ENV_API_KEY)
        except psutil.Error:
            return False
        if not key:
            # Started before servers had keys: anyone could reach it, so it is replaced instead.
            return False
        self._set_key(key)
        self._adopted = proc
        self._proc = None
        self.pid = pid
        self._stopping = False
        self.started_at = proc.create_time()
        offset = max(0, self.log_path.stat().st_size - 64_000) if self.log_path.exists() else 0
        self._start_tail(offset)
        # Through the table like any start: the record learns its pid and start time now, not only
        # once the server answers its health check.
        self._set_state(S.STARTING)
        self._spawn(self._watch_adopted(proc))
        self._spawn(self._wait_healthy())
        return True

    async def _wait_healthy(self) -> None:
        started = time.monotonic()
        deadline = started + self.load_timeout
        delay = 0.005
        while self.state == S.STARTING and not self._stopping:
            if self._exited():
                return  # the exit watcher reports the failure
            try:
                # Not kept alive: an open connection makes llama-server linger ~0.1 s on SIGTERM.
                r = await self.http.get(self.health_url, timeout=self.health_timeout, headers=_CLOSE)
                if r.status_code == 200 and await self._is_ours():
                    if self.before_healthy is not None and self.state == S.STARTING:
                        await self.before_healthy(self)
                    if self.state == S.STARTING and not self._stopping:
                        self._read_log()  # what the load wrote comes first: its stages, then "healthy"
                        self.healthy_at = time.time()
                        self.load_seconds = self.healthy_at - (self.started_at or self.healthy_at)
                        self._set_state(S.HEALTHY)
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.error = f"not healthy within MODEL_LOAD_TIMEOUT ({self.load_timeout:g} s)"
                await self._terminate()
                if self.state == S.STARTING:
                    self._set_state(S.FAILED)
                return
            await asyncio.sleep(delay)
            # Small models are ready within tens of ms: poll tightly at first (a swap waits on
            # this), then back off for the big ones that take seconds or minutes.
            if time.monotonic() - started > 0.5:
                delay = min(delay * 1.5, 0.25)

    async def _is_ours(self) -> bool:
        """Whether the server answering on our port is the one we started: it must refuse a caller
        without our key, accept ours, and serve the model we asked for. Another server left on a
        reused port fails one of these."""
        props_url = self.health_url.rsplit("/", 1)[0] + "/props"
        try:
            anon = await self.http.get(props_url, timeout=self.health_timeout, headers=_CLOSE)
            if anon.status_code != 401:
                log.warning("%s: %s answers without a key: not ours", self.instance_id, props_url)
                return False
            r = await self.http.get(
                props_url, timeout=self.health_timeout, headers={**_CLOSE, **self.auth_headers}
            )
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            log.warning("%s: the server on %s refused our key: not ours", self.instance_id, props_url)
            return False
        if self.alias is None:
            return True
        try:
            served = r.json().get("model_alias")
        except (ValueError, AttributeError):
            return False
        return served == self.alias or self.alias in str(served or "").split(",")

    def _exited(self) -> bool:
        """Whether no process of this server's last run is alive (its ports are free for others)."""
        if self._proc is not None:
            return self._proc.returncode is not None
        if self._adopted is not None:
            try:
                return not self._adopted.is_running() or self._adopted.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                return True
        return True

    exited = _exited

    # ---- exit detection ----------------------------------------------------------------------
    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        await self._on_exit(proc, code)

    async def _watch_adopted(self, proc: psutil.Process) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self._adopted is not proc:
                return
            try:
                # psutil has no type hints: the identity check above leaves mypy a needless None.
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:  # type: ignore[union-attr]
                    break
            except psutil.Error:
                break
        await self._on_exit(proc, None)

    async def _on_exit(self, proc: Any, code: int | None) -> None:
        if proc is not self._proc and proc is not self._adopted:
            return  # an older run
        await self._drain_tail()
        self.exit_code = code
        self.pid = None
        if self._stopping or self.state not in (S.STARTING, S.HEALTHY):
            return
        # The server died on its own: keep the exit code and its last words.
        last = "\n".join(list(self.ring)[-20:])
        how = f"exit code {code}" if code is not None else "exited"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-code).name}"
        self.error = f"llama-server {how}" + (f"\n{last}" if last else "")
        self._kill_group(signal.SIGKILL)  # children it may have left behind
        self._set_state(self.after_crash(self) if self.after_crash else S.FAILED)

    # ---- stop --------------------------------------------------------------------------------
    async def stop(self, final: InstanceState = S.STOPPED) -> None:
        """SIGTERM the process group, SIGKILL after the grace period; end in ``final``."""
        async with self._lock:
            if self.state in (S.STOPPED, S.SLEEPING, S.FAILED) and self._exited():
                if self.state != final and final in (S.STOPPED, S.SLEEPING):
                    if self.state == S.FAILED or (self.state == S.SLEEPING and final == S.STOPPED):
                        self._set_state(S.STOPPED)
                return
            self._stopping = True
            if self.state != S.STOPPING:
                self._set_state(S.STOPPING)
            await self._terminate()
            await self._drain_tail()
            self._set_state(final)

    async def _terminate(self) -> None:
        self._stopping = True
        if self._exited():
            self._kill_group(signal.SIGKILL)
            return
        self._kill_group(signal.SIGTERM)
        if self._proc is not None:
            # Our own child: its exit wakes us at once (a model swap waits on this).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), self.stop_grace)
        else:
            deadline = time.monotonic() + self.stop_grace
            while time.monotonic() < deadline and not self._exited():
                await asyncio.sleep(0.02)
        # Anything left in the group (the server or a child of it) is killed outright.
        self._kill_group(signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self._proc.wait(), 5)
        self.pid = None

    def _kill_group(self, sig: signal.Signals) -> None:
        pid = self._proc.pid if self._proc is not None else (self._adopted.pid if self._adopted else None)
        if pid is None:
            return
        # start_new_session made the server its own group leader: its pgid is its pid, which
        # stays valid for the group even after the leader itself has exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    # ---- logs --------------------------------------------------------------------------------
    def _start_tail(self, offset: int) -> None:
        if self._tail_task is not None:
            self._tail_task.cancel()
        self._tail_offset = offset
        self._tail_buf = b""
        self._tail_task = asyncio.ensure_future(self._tail())

    def _read_log(self) -> bool:
        """Read whatever the log file gained since last time; True if anything was read."""
        try:
            with open(self.log_path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self._tail_offset:
                    self._tail_offset = 0  # emptied or replaced under us
                fh.seek(self._tail_offset)
                chunk = fh.read()
        except OSError:
            return False
        if not chunk:
            return False
        self._tail_offset += len(chunk)
        *lines, self._tail_buf = (self._tail_buf + chunk).split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))
        return True

    async def _tail(self) -> None:
        while True:
            if not self._read_log():
                # Fast while loading (its log tells how far it got), relaxed once it serves.
                await asyncio.sleep(0.05 if self.state == S.STARTING else 0.5)
            elif self._tail_offset >= self.log_max_bytes:
                rest = await asyncio.to_thread(
                    copy_truncate, self.log_path, self.log_backups, self._tail_offset
                )
                if rest is not None:
                    self._tail_offset = 0
                if rest:
                    *lines, self._tail_buf = (self._tail_buf + rest).split(b"\n")
                    for raw in lines:
                        self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    async def _drain_tail(self) -> None:
        """Stop tailing and read what the log file still holds so the last lines are in the ring."""
        task, self._tail_task = self._tail_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._read_log()
        if self._tail_buf:
            self._line(self._tail_buf.decode("utf-8", "replace"))
            self._tail_buf = b""

    def _line(self, line: str) -> None:
        self.ring.append(line)
        if self.on_line:
            self.on_line(self, line)

    def tail(self, lines: int = 100) -> list[str]:
        return list(self.ring)[-lines:] if lines > 0 else []

    # ---- resources ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Forget background work (used at shutdown after stop)."""
        if self._tail_task is not None:
            self._tail_task.cancel()
        for t in list(self._tasks):
            t.cancel()
