"""Which instance serves a model: resolve names, start on demand (one load per model however many
requests wait on it), evict the least recently used model when the box is full, never stop an
instance with requests in flight, collate waiting requests so alternating demand swaps rarely, and
put idle instances to sleep.

Every request holds a ``Lease`` on its instance from before the upstream call until a ``finally``
releases it; eviction and sleep only touch instances without leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from llamaman.core.db import Database
from llamaman.core.events import Event, EventBus
from llamaman.core.identity import current_identity
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.state import InstanceState
from llamaman.core.tasks import wait_event
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import InstanceError, ManagedInstance, Supervisor
from llamaman.library.catalog import ModelEntry, ModelLibrary
from llamaman.scheduling.footprint_store import FootprintStore
from llamaman.scheduling.gate import Gate, QueueFull
from llamaman.scheduling.idle import IdleSleep
from llamaman.scheduling.lease import Lease, ModelNotFound, ModelUnavailable, Slot, Waiter
from llamaman.scheduling.memory import MemoryPlanner, ModelTooLarge, apply_placement, describe_placement
from llamaman.scheduling.names import ModelNames
from llamaman.scheduling.placement import Placement
from llamaman.scheduling.presets import PresetStore
from llamaman.scheduling.replica_gates import ReplicaGates

log = logging.getLogger(__name__)
S = InstanceState
LIVE = (S.STARTING, S.HEALTHY, S.RESTARTING)  # restarting: back after a crash, requests wait for it


class Router(ReplicaGates, IdleSleep, MemoryPlanner):
    def __init__(
        self,
        supervisor: Supervisor,
        library: ModelLibrary,
        presets: PresetStore,
        runtime: RuntimeConfig,
        events: EventBus,
        request_timeout: float,
        *,
        memory_reserve: str | None = None,
        db: Database | None = None,
    ) -> None:
        self.sup = supervisor
        self.library = library
        self.presets = presets
        self.runtime = runtime
        self.events = events
        self.request_timeout = request_timeout
        self.names = ModelNames(library)
        self.slots: dict[str, Slot] = {}
        self.gates: dict[str, Gate] = {}
        self.waiting: list[Waiter] = []
        # Model keys with a start in progress → whether that model takes a slot (not embedding).
        self.loading: dict[str, bool] = {}
        self.swaps = 0
        self.evictions = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle_task: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._init_memory(memory_reserve, FootprintStore(db))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.refresh_devices(force=True)  # "free at start" is measured now, before any model loads
        self._spawn(self._load_footprints())
        self._idle_task = asyncio.create_task(self._idle_loop())
        self._unlisten = self.events.listen(self._forget, "instance.removed")

    def _forget(self, ev: Event) -> None:
        """A removed instance takes its bookkeeping with it (a shared gate stays with its model)."""
        instance_id = ev.data.get("id", "")
        self.slots.pop(instance_id, None)
        self.gates.pop(instance_id, None)
        self.usage.pop(instance_id, None)

    async def stop(self) -> None:
        if self._unlisten:
            self._unlisten()
            self._unlisten = None
        if self._idle_task:
            self._idle_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        for w in self.waiting:
            if not w.future.done():
                w.future.set_exception(ModelUnavailable("LlamaMan is shutting down"))
        self.waiting.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- names -------------------------------------------------------------------------------
    @property
    def aliases(self) -> dict[str, str]:
        return self.names.aliases

    @aliases.setter
    def aliases(self, value: dict[str, str]) -> None:
        self.names.aliases = value

    def resolve(self, name: str) -> ModelEntry | None:
        """A model by file stem, relative path or alias, with or without ``:latest``."""
        return self.names.resolve(name)

    async def aresolve(self, name: str) -> ModelEntry:
        entry = self.resolve(name)
        if entry is None:
            await self.library.ascan()  # a file dropped into MODELS_DIR since the last scan
            entry = self.resolve(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    # ---- bookkeeping -------------------------------------------------------------------------
    def slot(self, m: ManagedInstance) -> Slot:
        s = self.slots.get(m.id)
        if s is None:
            s = self.slots[m.id] = Slot()
        return s

    def _instances_of(self, model_path: str) -> tuple[ManagedInstance, ...]:
        return self.sup.of_model(model_path)

    def _counts(self, m: ManagedInstance) -> bool:
        """Instances that take a model slot: everything but embedding servers."""
        return not m.settings.embedding and m.state in (*LIVE, S.STOPPING)

    def _evictable(self, m: ManagedInstance) -> bool:
        if m.settings.embedding or m.state not in LIVE:
            return False
        return m.record.origin == "proxy" or self.runtime.current.evict_manual

    # ---- acquire -----------------------------------------------------------------------------
    async def acquire(
        self,
        name: str,
        *,
        min_ctx: int | None = None,
        priority: int | None = None,
        key_name: str | None = None,
    ) -> Lease:
        """A lease on a running instance of ``name``, starting or swapping one in if needed.

        Cancelling the awaiting task takes the request out of the queue (and a load nobody waits
        for any more is abandoned if it has not started)."""
        entry = await self.aresolve(name)
        t0 = time.monotonic_ns()
        m = self._admissible(entry)
        waited = m is None or m.state != S.HEALTHY
        if m is None:
            caller = current_identity()  # set by the auth middleware for this request
            if priority is None:
                priority = caller.priority if caller is not None else 0
            if key_name is None and caller is not None:
                key_name = caller.name
            try:
                settings, policy = await self._launch_settings(entry)
            except ValueError as exc:  # a preset the policy refuses: the load would fail the same way
                raise ModelUnavailable(f"could not start '{entry.name}': {exc}") from None
            demand = await self.spread_if_too_large(settings, self.demand(entry, settings, policy))
            loop = asyncio.get_running_loop()
            w = Waiter(
                entry.rel_path,
                entry,
                loop.create_future(),
                demand=demand,
                priority=priority,
                key_name=key_name,
            )
            self.waiting.append(w)
            self._kick()
            try:
                # Not ``wait_for``, which on Python 3.11 may swallow a cancel that lands as the
                # place is granted: the cancelled request would then run anyway.
                async with asyncio.timeout(self.request_timeout):
                    m = await asyncio.shield(w.future)
            except BaseException:
                if w in self.waiting:
                    self.waiting.remove(w)
                if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                    self._release(w.future.result())  # granted as we gave up
                else:
                    w.future.cancel()
                    self._kick()  # what it held back (a swap, a queue position) is free for others
                raise
        else:
            self.slot(m).enter()
        try:
            if min_ctx and self._too_short(m, entry, min_ctx):
                m = await self._relaunch_with_ctx(m, entry, min_ctx)
            return await self._lease(m, t0 if waited else None, f"model '{name}' failed to load")
        except BaseException:
            self._release(m)
            raise

    async def _lease(self, m: ManagedInstance, t0: int | None, failure: str) -> Lease:
        """Wait for ``m`` to be healthy and for a place at its gate (the caller holds a slot)."""
        if m.state != S.HEALTHY:
            state = await m.proc.wait_for({S.HEALTHY, S.FAILED, S.STOPPED, S.SLEEPING}, self.request_timeout)
            if state != S.HEALTHY:
                raise ModelUnavailable(f"{failure}: {m.proc.error or state.value}")
        gate = self.gate_for(m)
        await gate.acquire()
        return self._begin(m, gate, time.monotonic_ns() - t0 if t0 is not None else 0)

    def waits_at_gate(self, name: str) -> bool:
        """Whether ``acquire`` would find the model's instance healthy and wait only for a place at
        its gate (full, or with others queued): nothing to load, start or relaunch."""
        entry = self.resolve(name)
        if entry is None:
            return False
        m = self._admissible(entry)
        return m is not None and m.state == S.HEALTHY and not self.gate_for(m).open_now()

    def lease_now(self, name: str, *, min_ctx: int | None = None) -> Lease | None:
        """The lease ``acquire`` would grant without waiting for anything (a healthy instance with
        room at its gate), or None: ``acquire`` then queues, loads or waits as it always does."""
        entry = self.resolve(name)
        if entry is None:
            return None
        m = self._admissible(entry)
        if m is None or m.state != S.HEALTHY or (min_ctx and self._too_short(m, entry, min_ctx)):
            return None
        gate = self.gate_for(m)
        if not gate.try_acquire():
            return None
        self.slot(m).enter()
        return self._begin(m, gate, 0)

    def _begin(self, m: ManagedInstance, gate: Gate, load_ns: int) -> Lease:
        if m.settings.share_queue:
            m = self._hand_to_freest_replica(m)
        self.slot(m).begin()
        self.sup.touch(m)
        return self._new_lease(m, gate, load_ns)

    def _too_short(self, m: ManagedInstance, entry: ModelEntry, min_ctx: int) -> bool:
        """A proxy-started instance whose context is below what the request needs: relaunched."""
        return m.record.origin == "proxy" and m.settings.request_ctx(_trained(entry)) < min_ctx

    def _new_lease(self, m: ManagedInstance, gate: Gate, load_ns: int) -> Lease:
        def release() -> None:
            self.slot(m).end()
            gate.release()
            self._release(m)

        return Lease(m, gate, load_ns, release=release, keep_alive=lambda s: self.set_keep_alive(m, s))

    async def acquire_instance(self, m: ManagedInstance) -> Lease:
        """A lease on one given instance (its own listener port), waking it if it sleeps."""
        t0 = time.monotonic_ns() if m.state != S.HEALTHY else None
        slot = self.slot(m)
        slot.enter()
        try:
            if m.state in (S.SLEEPING, S.STOPPED, S.FAILED):
                await self.sup.wake(m.id)
            return await self._lease(m, t0, f"instance {m.id} failed to start")
        except BaseException:
            self._release(m)
            raise

    def _admissible(self, entry: ModelEntry) -> ManagedInstance | None:
        """A live instance of the model that may take one more request right now."""
        best: ManagedInstance | None = None
        for m in self._instances_of(entry.rel_path):
            if m.state not in LIVE:
                continue
            s = self.slot(m)
            if s.draining:
                continue
            if best is None or (m.state == S.HEALTHY, -s.inflight) > (
                best.state == S.HEALTHY,
                -self.slot(best).inflight,
            ):
                best = m
        return best

    def _release(self, m: ManagedInstance) -> None:
        s = self.slot(m)
        idle = s.leave()
        self.sup.touch(m)
        if idle:
            if s.unload_after and not s.draining:
                s.unload_after = False
                s.draining = True
                self._spawn(self._unload(m, reason="keep_alive 0"))
        self._kick()

    # ---- scheduling (the decision is scheduling/scheduler.py, carried out by memory.py) ------
    def _grant(self, w: Waiter, m: ManagedInstance) -> None:
        if w in self.waiting:
            self.waiting.remove(w)
        if not w.future.done():
            self.slot(m).enter()
            w.future.set_result(m)

    def _fail(self, key: str, exc: Exception) -> None:
        for w in list(self.waiting):
            if w.key == key:
                self.waiting.remove(w)
                if not w.future.done():
                    w.future.set_exception(exc)

    async def _bring_up(
        self, entry: ModelEntry, placement: Placement | None = None, rpc_workers: tuple[str, ...] = ()
    ) -> None:
        """Wake a sleeping instance of the model, or launch one from its preset where placed (over
        ``rpc_workers`` when the scheduler spread it over them)."""
        t0 = time.monotonic()
        try:
            existing = [
                m
                for m in self._instances_of(entry.rel_path)
                if m.state == S.SLEEPING or (m.record.origin == "proxy" and m.state in (S.STOPPED, S.FAILED))
            ]
            if not self.still_wanted(entry.rel_path):
                return  # every client that asked has gone: nothing to load for
            if existing:
                m = existing[0]
                self.slot(m).draining = False
                await self.sup.wake(m.id)
            else:
                spread = {"rpc_workers": list(rpc_workers), "n_gpu_layers": -1} if rpc_workers else {}
                settings, _ = await self._launch_settings(entry, placement=placement, **spread)
                if not self.still_wanted(entry.rel_path):
                    return
                m = await self.sup.launch(settings, origin="proxy")
            if placement is not None:
                self.usage[m.id] = dict(placement.device_bytes)
            self.swaps += 1
            where = f" on {describe_placement(placement)}" if placement is not None else ""
            where += f" with RPC workers {', '.join(rpc_workers)}" if rpc_workers else ""
            log.info("loading %s%s", entry.name, where)
            self.events.publish("router.load", model=entry.name, instance=m.id)
            self._spawn(self._after_load(m, t0))
        except (InstanceError, OSError, ValueError) as exc:  # ValueError: a preset the policy refuses
            msg = exc.message if isinstance(exc, InstanceError) else str(exc)
            self._fail(entry.rel_path, ModelUnavailable(f"could not start '{entry.name}': {msg}"))
        finally:
            self.loading.pop(entry.rel_path, None)
            self.loading_usage.pop(entry.rel_path, None)
            self._kick()

    async def _launch_settings(
        self, entry: ModelEntry, placement: Placement | None = None, **overrides: Any
    ) -> tuple[LaunchSettings, str | None]:
        """The model's launch settings from its preset, and the preset's placement policy."""
        preset = await self.presets.get(entry.rel_path) or {}
        values: dict[str, Any] = {k: v for k, v in preset.items() if k not in ("port", "model_path")}
        policy = values.pop("placement", None)
        if (
            "embedding" not in values
            and "embedding" in entry.capabilities
            and "completion" not in entry.capabilities
        ):
            values["embedding"] = True
        apply_placement(values, placement, self.devices.has_gpu())
        values.update(overrides)
        return LaunchSettings(model_path=entry.rel_path, **values), policy

    async def _unload(self, m: ManagedInstance, *, reason: str) -> None:
        """Wait for in-flight requests to finish (bounded by REQUEST_TIMEOUT), then stop."""
        s = self.slot(m)
        try:
            await wait_event(s.idle, self.request_timeout)
            if reason.startswith("evicted") and not any(not w.future.done() for w in self.waiting):
                log.info("kept %s: nobody waits any more for the model it made room for", m.record.model_name)
                return
            log.info("unloading %s (%s)", m.record.model_name, reason)
            self.evictions += 1
            self.events.publish("router.unload", model=m.record.model_name, instance=m.id, reason=reason)
            # A manual instance sleeps (its owner may want it back); a proxy-started one stops and
            # keeps its record, which the next load reuses.
            if m.record.origin == "proxy":
                await self.sup.stop(m.id, keep_prompt_cache=reason.startswith("evicted"))
            else:
                await self.sup.sleep(m.id)
        finally:
            s.draining = False
            s.keep_alive_until = None
            self._kick()

    async def _relaunch_with_ctx(self, m: ManagedInstance, entry: ModelEntry, ctx: int) -> ManagedInstance:
        """Ollama relaunches a model whose running context is smaller than a request's num_ctx."""
        s = self.slot(m)
        s.draining = True
        s.leave()  # our own lease must not block the drain
        try:
            await wait_event(s.idle, self.request_timeout)
            await self.sup.relaunch_with_context(m, ctx * max(1, m.settings.parallel))
        finally:
            s.draining = False
            s.enter()
        return m

    async def unload(self, name: str) -> list[str]:
        """Stop every instance of a model now (Ollama keep_alive 0, router-mode /models/unload)."""
        entry = await self.aresolve(name)
        done = []
        for m in self._instances_of(entry.rel_path):
            if m.state in LIVE:
                self.slot(m).draining = True
                await self._unload(m, reason="unload requested")
                done.append(m.id)
        return done

    async def load(self, name: str) -> ManagedInstance:
        lease = await self.acquire(name)
        lease.release()
        return lease.instance

    def status(self, entry: ModelEntry) -> str:
        """loaded / loading / sleeping / unloaded, as llama.cpp's router mode reports models."""
        states = {m.state for m in self._instances_of(entry.rel_path)}
        if S.HEALTHY in states:
            return "loaded"
        if S.STARTING in states or S.RESTARTING in states or entry.rel_path in self.loading:
            return "loading"
        if S.SLEEPING in states:
            return "sleeping"
        return "unloaded"


def _trained(entry: ModelEntry) -> int | None:
    return entry.info.context_length if entry.info else None


__all__ = ["Lease", "ModelNotFound", "ModelTooLarge", "ModelUnavailable", "QueueFull", "Router"]
