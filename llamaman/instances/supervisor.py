"""All instances: validate and launch, stop, restart, sleep and wake, restore after a restart.

The supervisor is the one owner of llama-server processes and of both port pools. Others (the REST
API, the router, the UI) ask it; nobody else spawns or kills a server.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.state import ACTIVE_STATES, InstanceState
from llamaman.core.tables import Instance, new_id
from llamaman.instances import instance as kinds
from llamaman.instances import launch_policy
from llamaman.instances.instance import InstanceError, ManagedInstance
from llamaman.instances.launch import LaunchSettings, SamplingOverrides, build_argv, settings_from_record
from llamaman.instances.launch_policy import LaunchPolicyError, Policy, check_args
from llamaman.instances.llama_bin import LlamaServerBinary, aresolve_llama_server
from llamaman.instances.load_progress import LoadTracker
from llamaman.instances.model_files import relative_to, resolve_model
from llamaman.instances.ownership import end_process_group, instance_environment, is_our_server, kill_strays
from llamaman.instances.ports import PortClaims, PortPoolExhausted
from llamaman.instances.process import LlamaProcess
from llamaman.instances.prompt_cache import PromptCache
from llamaman.instances.recovery import CrashRecovery, RestartPolicy
from llamaman.instances.roster import Roster
from llamaman.instances.store import InstanceStore
from llamaman.library.catalog import ModelLibrary

log = logging.getLogger(__name__)
S = InstanceState


ListenerHook = Callable[[ManagedInstance], Awaitable[None]]


class Supervisor(Roster):
    def __init__(
        self,
        settings: Settings,
        db: Database,
        events: EventBus,
        library: ModelLibrary,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.db = db
        self.events = events
        self.library = library
        self.http = http
        self.claims = PortClaims(settings)
        self.ports, self.internal_ports = self.claims.ports, self.claims.internal_ports
        super().__init__()  # the roster: ``instances``, changed only by ``_manage`` and ``remove``
        self.binary: LlamaServerBinary | None = None
        self.binary_error: str | None = None
        # Set by the proxy: opens and closes LlamaMan's own listener on an instance's public port.
        self.open_listener: ListenerHook | None = None
        self.close_listener: ListenerHook | None = None
        # When true every instance gets a listener (e.g. because API keys guard instance ports).
        self.always_listen = False
        # Set by the services: refuses a launch over RPC workers that are unknown, silent or unusable.
        self.check_rpc: Callable[[LaunchSettings, LlamaServerBinary], Awaitable[None]] | None = None
        # Called just before a server is told to stop (e.g. to drop kept-alive connections to it).
        self.on_stopping: list[Callable[[ManagedInstance], None]] = []
        self._owner = str(settings.data_dir)
        # The launch-argument policy this LlamaMan applies (also what LaunchSettings validation uses).
        self.policy = Policy(settings.models_dir.resolve(), settings.allow_unsafe_args)
        launch_policy.configure(settings.models_dir, settings.allow_unsafe_args)
        self.store = InstanceStore(db, lambda iid: iid in self.instances, settings.node_name)
        policy = RestartPolicy(settings.restart_max, settings.restart_backoff, settings.restart_backoff_max)
        self.recovery = CrashRecovery(policy, self.wake)
        self.loads = LoadTracker(events, self.instances)
        self.prompt_cache = PromptCache(settings.data_dir / "prompt-cache", http, self.instances)
        self._lock = asyncio.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.store.start()
        self.loads.start()
        await self.resolve_binary()
        await self.restore()

    async def resolve_binary(self) -> LlamaServerBinary | None:
        try:
            self.binary = await aresolve_llama_server(self.settings)
            self.binary_error = None
        except Exception as exc:  # a missing binary must not stop the UI from starting
            self.binary, self.binary_error = None, str(exc)
            log.warning("%s", exc)
        return self.binary

    async def shutdown(self) -> None:
        """Stop every server (they come back at the next start: desired_running is kept)."""
        await self.recovery.close()
        self.loads.stop()
        await asyncio.gather(*(self._stop_proc(m, S.STOPPED, keep_desired=True) for m in self.list()))
        for m in self.list():
            await m.proc.close()
        await self.store.stop()

    # ---- queries -----------------------------------------------------------------------------
    def next_port(self) -> int:
        return self.claims.next_port()

    # ---- launch ------------------------------------------------------------------------------
    async def launch(self, ls: LaunchSettings, origin: str = "manual") -> ManagedInstance:
        """Validate, store and start a new instance. Invalid settings store and start nothing."""
        if self.binary is None and await self.resolve_binary() is None:
            raise kinds.InstanceUnavailable(self.binary_error or "no llama-server binary found")
        if ls.rpc_workers and self.check_rpc is not None and self.binary is not None:
            await self.check_rpc(ls, self.binary)
        async with self._lock:
            path, name, mmproj = resolve_model(self.library, ls)
            self.checked_extra(ls)
            if ls.port is not None:
                self.claims.check(ls.port)
            iid = new_id()
            port = self.ports.take(ls.port if ls.port is not None else self.next_port(), iid)
            internal: int | None = None
            try:
                if self.always_listen or ls.needs_listener():
                    internal = self.internal_ports.take(None, iid)
            except PortPoolExhausted as exc:
                self.ports.release(port, iid)
                raise kinds.InstanceConflict(str(exc)) from None
            stored = ls.model_copy(update={"port": port, "model_path": relative_to(self.library, path)})
            record = Instance(
                **stored.model_dump(exclude={"sampling"}),
                id=iid,
                model_name=name,
                internal_port=internal,
                sampling=stored.sampling.active(),
                origin=origin,
                node=self.settings.node_name,
                state=S.STOPPED.value,
                desired_running=True,
            )
            m = self._manage(record, stored, mmproj)
            self._save(record)
        await self._open_listener(m)
        await self._start_proc(m)
        self.events.publish("instance.created", id=m.id)
        return m

    def checked_extra(self, ls: LaunchSettings) -> builtins.list[str]:
        """The extra flags as this LlamaMan's policy lets them through (paths made absolute)."""
        try:
            return check_args(ls.extra_argv(), self.policy)
        except (LaunchPolicyError, ValueError) as exc:
            raise kinds.InstanceRejected(str(exc)) from None

    def _argv(self, record: Instance, ls: LaunchSettings, mmproj: str | None) -> builtins.list[str]:
        assert self.binary is not None
        return build_argv(
            self.binary.argv_prefix,
            model_file=str(self.settings.models_dir / record.model_path),
            host="127.0.0.1" if record.internal_port else self.settings.host,
            port=record.internal_port or record.port,
            alias=record.model_name,
            settings=ls,
            mmproj_file=mmproj,
            extra=[*self.checked_extra(ls), *self.prompt_cache.args(record, ls)],
        )

    def _manage(
        self, record: Instance, ls: LaunchSettings, mmproj: str | None, state: S = S.STOPPED
    ) -> ManagedInstance:
        refused: str | None = None
        try:
            argv = self._argv(record, ls, mmproj)
        except InstanceError as exc:
            # A record stored before the launch policy existed: kept visible, never run.
            refused = f"refused by the launch policy: {exc.message}"
            argv = list(record.command or [])
        listen_port = record.internal_port or record.port
        proc = LlamaProcess(
            record.id,
            argv,
            env=instance_environment(record.id, self._owner, ls.gpu_devices, self.settings),
            log_path=self.settings.logs_dir / f"{record.id}.log",  # type: ignore[operator]
            health_url=f"http://127.0.0.1:{listen_port}/health",
            http=self.http,
            load_timeout=self.settings.model_load_timeout,
            health_timeout=self.settings.health_check_timeout,
            stop_grace=self.settings.stop_grace_seconds,
            ring_lines=self.settings.log_ring_lines,
            on_state=self._on_state,
            on_line=self._on_line,
            state=S.FAILED if refused else state,
            alias=record.model_name,
            log_max_bytes=self.settings.llama_log_max_bytes,
            log_backups=self.settings.llama_log_backups,
        )
        if refused:
            proc.error = record.error = refused
        record.command = argv
        proc.after_crash, proc.before_healthy = self.recovery.after_crash, self.prompt_cache.restore
        m = ManagedInstance(record, ls, proc)
        self.instances[record.id] = m
        self._changed()
        return m

    async def _start_proc(self, m: ManagedInstance) -> None:
        # The policy is checked again right before every spawn: a record or preset stored under an
        # older (or lifted) policy cannot run what the current one refuses.
        try:
            self._rebuild(m)
        except InstanceError as exc:
            m.proc.error = m.record.error = f"refused by the launch policy: {exc.message}"
            m.proc.fail_without_start()
            self._save(m.record)
            raise
        if m.record.internal_port is None and not self.ports.held_by(m.record.port, m.id):
            self.ports.take(m.record.port, m.id)
        await m.proc.start()

    async def _open_listener(self, m: ManagedInstance) -> None:
        if m.record.internal_port and self.open_listener and not m.listener_active:
            try:
                await self.open_listener(m)
                m.listener_active = True
            except OSError as exc:
                log.warning("listener on port %s for %s failed: %s", m.record.port, m.id, exc)

    async def _close_listener(self, m: ManagedInstance) -> None:
        if m.listener_active and self.close_listener:
            m.listener_active = False
            await self.close_listener(m)

    # ---- state changes -----------------------------------------------------------------------
    def _on_state(self, proc: LlamaProcess, old: InstanceState, new: InstanceState) -> None:
        m = self.instances.get(proc.instance_id)
        if m is None:
            return
        r = m.record
        r.state = new.value
        r.pid = proc.pid if new in ACTIVE_STATES else None
        r.exit_code = proc.exit_code
        r.error = proc.error
        if new == S.STARTING:
            r.started_at = proc.started_at
        if new in (S.STOPPED, S.FAILED, S.SLEEPING, S.RESTARTING):
            r.stopped_at = time.time()
            r.last_log = "\n".join(proc.tail(50))
        self._save(r)
        self.events.publish("instance.state", id=r.id, old=old.value, new=new.value, error=proc.error)

    def _on_line(self, proc: LlamaProcess, line: str) -> None:
        self.events.publish("instance.log", id=proc.instance_id, line=line)

    # ---- actions -----------------------------------------------------------------------------
    async def stop(self, instance_id: str, *, keep_prompt_cache: bool = False) -> ManagedInstance:
        """Stop for good; ``keep_prompt_cache`` (an eviction) saves its slots for its next load."""
        m = self.get(instance_id)
        if keep_prompt_cache and m.state == S.HEALTHY:
            await self.prompt_cache.save(m)
        await self._stop_proc(m, S.STOPPED)
        return m

    async def _stop_proc(
        self, m: ManagedInstance, final: InstanceState, *, keep_desired: bool = False
    ) -> None:
        if not keep_desired:
            m.record.desired_running = final == S.SLEEPING
        self.recovery.forget(m.id)
        self._before_stop(m)
        await m.proc.stop(final)
        if final == S.STOPPED:
            await self._close_listener(m)
            self._release_ports(m)
        self._save(m.record)

    def _release_ports(self, m: ManagedInstance) -> None:
        """Give the ports back once the server is really gone; one still alive keeps them."""
        if not m.proc.exited():
            log.warning("%s: its llama-server has not exited yet; keeping its ports", m.id)
            return
        self.claims.release(m.record)

    async def sleep(self, instance_id: str) -> ManagedInstance:
        """Stop the process but keep the port (and its listener) so the next request wakes it."""
        m = self.get(instance_id)
        if m.state in (S.HEALTHY, S.STARTING):
            await self._stop_proc(m, S.SLEEPING)
        return m

    async def wake(self, instance_id: str) -> ManagedInstance:
        m = self.get(instance_id)
        if m.state in (S.SLEEPING, S.STOPPED, S.FAILED, S.RESTARTING):
            m.record.desired_running = True
            await self._reserve_ports(m)
            await self._open_listener(m)
            await self._start_proc(m)
        return m

    async def _reserve_ports(self, m: ManagedInstance) -> None:
        if self.claims.reserve(m.record):
            m.settings = m.settings.model_copy(update={"port": m.record.port})
            self._rebuild(m)

    def _rebuild(self, m: ManagedInstance) -> None:
        """Re-derive argv after a port change, keeping the process object (and its log ring)."""
        m.proc.argv = m.record.command = self._argv(m.record, m.settings, self._mmproj_for(m))
        m.proc.health_url = f"http://127.0.0.1:{m.upstream_port}/health"

    def _mmproj_for(self, m: ManagedInstance) -> str | None:
        with contextlib.suppress(InstanceError):
            return resolve_model(self.library, m.settings)[2]
        return None

    def _before_stop(self, m: ManagedInstance) -> None:
        for hook in self.on_stopping:
            try:
                hook(m)
            except Exception:
                log.exception("stop hook failed for %s", m.id)

    async def relaunch_with_context(self, m: ManagedInstance, ctx_size: int) -> None:
        """Stop ``m`` and start it again with a larger context (a request asked for more)."""
        await self.stop(m.id)
        m.settings = m.settings.model_copy(update={"ctx_size": ctx_size})
        m.record.ctx_size = ctx_size
        self._rebuild(m)
        await self.wake(m.id)

    async def restart(self, instance_id: str) -> ManagedInstance:
        m = self.get(instance_id)
        self.recovery.forget(m.id)
        if m.proc.running:
            self._before_stop(m)
            await m.proc.stop(S.STOPPED)
        return await self.wake(instance_id)

    async def forget_stopped(self, cutoff: float) -> builtins.list[str]:
        """Remove the stopped instances whose stop is older than ``cutoff`` (epoch seconds)."""
        gone = []
        for m in self.list():
            stopped = m.record.stopped_at
            if m.state == S.STOPPED and stopped is not None and stopped < cutoff:
                await self.remove(m.id)
                gone.append(m.id)
        return gone

    async def remove(self, instance_id: str) -> None:
        m = self.get(instance_id)
        await self._stop_proc(m, S.STOPPED)
        await m.proc.close()
        del self.instances[instance_id]
        self._changed()
        await self.store.delete(instance_id)
        self.events.publish("instance.removed", id=instance_id)

    def apply_sampling(self, model_path: str, sampling: dict[str, Any]) -> builtins.list[str]:
        """Force new sampling overrides onto the running instances of a model (a preset was saved):
        the proxy and the listeners read them per request, so they hold from the next request on."""
        overrides = SamplingOverrides(**sampling)
        changed = []
        for m in self.list():
            if m.record.model_path != model_path:
                continue
            m.settings = m.settings.model_copy(update={"sampling": overrides})
            m.record.sampling = overrides.active()
            self._save(m.record)
            changed.append(m.id)
        return changed

    def touch(self, m: ManagedInstance) -> None:
        m.last_used = time.monotonic()

    # ---- restore after a restart -------------------------------------------------------------
    async def restore(self) -> None:
        records = await self.store.load()
        adopted: set[int] = set()
        for r in records:
            ls = settings_from_record(r)
            was = S(r.state) if r.state in S._value2member_map_ else S.STOPPED
            if self.binary is None:
                # Without a binary nothing can run; keep the records visible as they were.
                continue
            state = S.SLEEPING if was == S.SLEEPING else (S.FAILED if was == S.FAILED else S.STOPPED)
            try:
                mmproj = resolve_model(self.library, ls)[2]
            except InstanceError as exc:
                m = self._manage(r, ls, None, state=S.FAILED if was in ACTIVE_STATES else state)
                m.proc.error = m.record.error = exc.message
                continue
            m = self._manage(r, ls, mmproj, state=state)
            m.proc.error, m.proc.exit_code = r.error, r.exit_code
            if r.last_log:
                m.proc.ring.extend(r.last_log.splitlines())
            if was == S.SLEEPING:
                with contextlib.suppress(InstanceError):
                    await self._reserve_ports(m)
                    await self._open_listener(m)
                continue
            # A graceful shutdown leaves records "stopped" with desired_running kept; a crash leaves
            # them in an active state. Either way they should run again. A user's stop clears
            # desired_running; a failure stays failed until someone restarts it.
            if not r.desired_running or was == S.FAILED:
                continue
            if r.pid and is_our_server(r.pid, r.id, self._owner):
                self.ports.claim(r.port, r.id)
                if r.internal_port:
                    self.internal_ports.claim(r.internal_port, r.id)
                await self._open_listener(m)
                if m.proc.adopt(r.pid):
                    adopted.add(r.pid)
                    log.info("adopted llama-server pid %s for %s", r.pid, r.id)
                    continue
                # Ours but not adoptable (started before servers had keys): it goes, and its ports
                # are free again before the new one starts.
                await asyncio.to_thread(end_process_group, r.pid)
            try:
                await self._reserve_ports(m)
            except InstanceError as exc:
                # The table has no stopped → failed: a failure belongs to a start. This is one,
                # refused before any process ran (its port is taken), reported like a start the
                # launch policy refuses; the state callback stores the record with the reason.
                m.proc.error = exc.message
                m.proc.fail_without_start()
                continue
            await self._open_listener(m)
            with contextlib.suppress(InstanceError):  # refused: the record shows why
                await self._start_proc(m)
        kill_strays(self._owner, keep=adopted | {m.proc.pid for m in self.list() if m.proc.pid})

    # ---- persistence -------------------------------------------------------------------------
    def _save(self, record: Instance) -> None:
        self.store.save(record)

    async def flush(self) -> None:
        """Wait until every queued record write is in the database."""
        await self.store.flush()
