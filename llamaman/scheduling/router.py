"""Which instance serves a model: resolve names, start on demand (one load per model however many
requests wait on it), evict the least recently used model when the box is full, never stop an
instance with requests in flight, collate waiting requests so alternating demand swaps rarely, and
put idle instances to sleep.

Every request holds a ``Lease`` on its instance from before the upstream call until a ``finally``
releases it; eviction and sleep only touch instances without leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from llamaman.core.events import Event, EventBus
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import InstanceError, ManagedInstance, Supervisor
from llamaman.library.catalog import ModelEntry, ModelLibrary
from llamaman.scheduling.gate import Gate, QueueFull
from llamaman.scheduling.idle import IdleSleep
from llamaman.scheduling.lease import Lease, ModelNotFound, ModelUnavailable, Slot, Waiter
from llamaman.scheduling.names import ModelNames
from llamaman.scheduling.presets import PresetStore

log = logging.getLogger(__name__)
S = InstanceState
LIVE = (S.STARTING, S.HEALTHY, S.RESTARTING)  # restarting: back after a crash, requests wait for it


class Router(IdleSleep):
    def __init__(
        self,
        supervisor: Supervisor,
        library: ModelLibrary,
        presets: PresetStore,
        runtime: RuntimeConfig,
        events: EventBus,
        request_timeout: float,
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

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._idle_task = asyncio.create_task(self._idle_loop())
        self._unlisten = self.events.listen(self._forget, "instance.removed")

    def _forget(self, ev: Event) -> None:
        """A removed instance takes its bookkeeping with it (a shared gate stays with its model)."""
        instance_id = ev.data.get("id", "")
        self.slots.pop(instance_id, None)
        self.gates.pop(instance_id, None)

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

    def gate_for(self, m: ManagedInstance) -> Gate:
        key = f"model:{m.record.model_path}" if m.settings.share_queue else m.id
        gate = self.gates.get(key)
        if gate is None:
            gate = self.gates[key] = Gate()
        if m.settings.share_queue:
            replicas = [r for r in self._instances_of(m.record.model_path) if r.settings.share_queue]
            conc = (
                sum(r.settings.max_concurrent for r in replicas)
                if all(r.settings.max_concurrent for r in replicas)
                else 0
            )
            gate.configure(conc, max((r.settings.max_queue_depth for r in replicas), default=0))
        else:
            gate.configure(m.settings.max_concurrent, m.settings.max_queue_depth)
        return gate

    def counters(self, m: ManagedInstance) -> dict[str, Any]:
        s = self.slots.get(m.id)
        expires = None
        if s is not None and s.keep_alive_until is not None:
            # keep_alive -1 (forever) has no expiry at all.
            if math.isfinite(s.keep_alive_until):
                expires = time.time() + (s.keep_alive_until - time.monotonic())
        elif m.state == S.HEALTHY and (t := self.idle_timeout(m)):
            expires = time.time() + t - (time.monotonic() - m.last_used)
        return {
            "active_requests": s.running if s else 0,
            "queued_requests": s.inflight - s.running if s else 0,
            "inflight": s.inflight if s else 0,
            "expires_at": expires,
        }

    def _instances_of(self, model_path: str) -> list[ManagedInstance]:
        return [m for m in self.sup.list() if m.record.model_path == model_path]

    def _counts(self, m: ManagedInstance) -> bool:
        """Instances that take a model slot: everything but embedding servers."""
        return not m.settings.embedding and m.state in (*LIVE, S.STOPPING)

    def _evictable(self, m: ManagedInstance) -> bool:
        if m.settings.embedding or m.state not in LIVE:
            return False
        return m.record.origin == "proxy" or self.runtime.current.evict_manual

    # ---- acquire -----------------------------------------------------------------------------
    async def acquire(self, name: str, *, min_ctx: int | None = None) -> Lease:
        """A lease on a running instance of ``name``, starting or swapping one in if needed."""
        entry = await self.aresolve(name)
        t0 = time.monotonic_ns()
        m = self._admissible(entry)
        waited = m is None or m.state != S.HEALTHY
        if m is None:
            loop = asyncio.get_running_loop()
            w = Waiter(entry.rel_path, entry, loop.create_future())
            self.waiting.append(w)
            self._kick()
            try:
                m = await asyncio.wait_for(asyncio.shield(w.future), self.request_timeout)
            except BaseException:
                if w in self.waiting:
                    self.waiting.remove(w)
                if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                    self._release(w.future.result())  # granted as we gave up
                else:
                    w.future.cancel()
                raise
        else:
            self.slot(m).enter()
        try:
            if min_ctx and m.record.origin == "proxy" and m.settings.request_ctx(_trained(entry)) < min_ctx:
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
        if m.settings.share_queue:
            m = self._hand_to_freest_replica(m)
        self.slot(m).begin()
        self.sup.touch(m)
        return self._new_lease(m, gate, time.monotonic_ns() - t0 if t0 is not None else 0)

    def _new_lease(self, m: ManagedInstance, gate: Gate, load_ns: int) -> Lease:
        def release() -> None:
            self.slot(m).end()
            gate.release()
            self._release(m)

        return Lease(m, gate, load_ns, release=release, keep_alive=lambda s: self.set_keep_alive(m, s))

    def _hand_to_freest_replica(self, m: ManagedInstance) -> ManagedInstance:
        """With a shared queue the request was admitted by the model's gate, not by one replica's:
        give it to whichever healthy replica has the fewest requests running now."""
        replicas = [
            r
            for r in self._instances_of(m.record.model_path)
            if r.settings.share_queue and r.state == S.HEALTHY and not self.slot(r).draining
        ]
        best = min(replicas, key=lambda r: self.slot(r).running, default=m)
        if best is not m:
            self.slot(m).move_to(self.slot(best))
        return best

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

    # ---- scheduling --------------------------------------------------------------------------
    def _kick(self) -> None:
        """Serve the waiting requests in arrival order: grant, wake, start or evict as needed."""
        if not self.waiting:
            return
        cap = self.runtime.current.max_models
        for w in list(self.waiting):
            if w not in self.waiting:
                continue  # granted along with an earlier waiter for the same model
            if w.future.done():
                self.waiting.remove(w)
                continue
            m = self._admissible(w.entry)
            if m is not None:
                self._grant(w, m)
                # Everyone else waiting for this model rides on the same instance.
                for other in list(self.waiting):
                    if other.key == w.key and not other.future.done():
                        self._grant(other, m)
                continue
            if w.key in self.loading:
                continue
            embedding = "embedding" in w.entry.capabilities and "completion" not in w.entry.capabilities
            if embedding or cap <= 0 or self._slots_used() < cap:
                self.loading[w.key] = not embedding
                self._spawn(self._bring_up(w.entry))
                continue
            # Full: drain the least recently used model no earlier waiter still wants.
            if self.loading or any(self.slot(m).draining for m in self.sup.list() if self._counts(m)):
                continue  # a swap is already on its way; it kicks again when done
            wanted = {x.key for x in self.waiting if not x.future.done()}
            candidates = [
                m for m in self.sup.list() if self._evictable(m) and m.record.model_path not in wanted
            ] or [m for m in self.sup.list() if self._evictable(m) and m.record.model_path != w.key]
            if not candidates:
                if not any(self._evictable(m) for m in self.sup.list()):
                    self._fail(
                        w.key,
                        ModelUnavailable(
                            f"all {cap} model slot(s) (LLAMAMAN_MAX_MODELS) are held by manually launched "
                            "instances; stop one, or allow evicting them in settings"
                        ),
                    )
                continue
            victim = min(candidates, key=lambda m: m.last_used)
            self.slot(victim).draining = True
            self._spawn(self._unload(victim, reason=f"make room for {w.entry.name}"))

    def _slots_used(self) -> int:
        """Model slots taken: counted instances plus loads not yet visible as instances."""
        counted = [m for m in self.sup.list() if self._counts(m)]
        paths = {m.record.model_path for m in counted}
        return len(counted) + sum(1 for k, takes in self.loading.items() if takes and k not in paths)

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

    async def _bring_up(self, entry: ModelEntry) -> None:
        """Wake a sleeping instance of the model, or launch one from its preset."""
        try:
            existing = [
                m
                for m in self._instances_of(entry.rel_path)
                if m.state == S.SLEEPING or (m.record.origin == "proxy" and m.state in (S.STOPPED, S.FAILED))
            ]
            if existing:
                m = existing[0]
                self.slot(m).draining = False
                await self.sup.wake(m.id)
            else:
                m = await self.sup.launch(await self._launch_settings(entry), origin="proxy")
            self.swaps += 1
            self.events.publish("router.load", model=entry.name, instance=m.id)
        except (InstanceError, OSError, ValueError) as exc:  # ValueError: a preset the policy refuses
            msg = exc.message if isinstance(exc, InstanceError) else str(exc)
            self._fail(entry.rel_path, ModelUnavailable(f"could not start '{entry.name}': {msg}"))
        finally:
            self.loading.pop(entry.rel_path, None)
            self._kick()

    async def _launch_settings(self, entry: ModelEntry, **overrides: Any) -> LaunchSettings:
        preset = await self.presets.get(entry.rel_path) or {}
        values: dict[str, Any] = {k: v for k, v in preset.items() if k not in ("port", "model_path")}
        if (
            "embedding" not in values
            and "embedding" in entry.capabilities
            and "completion" not in entry.capabilities
        ):
            values["embedding"] = True
        values.update(overrides)
        return LaunchSettings(model_path=entry.rel_path, **values)

    async def _unload(self, m: ManagedInstance, *, reason: str) -> None:
        """Wait for in-flight requests to finish (bounded by REQUEST_TIMEOUT), then stop."""
        s = self.slot(m)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.idle.wait(), self.request_timeout)
            log.info("unloading %s (%s)", m.record.model_name, reason)
            self.evictions += 1
            self.events.publish("router.unload", model=m.record.model_name, instance=m.id, reason=reason)
            # A manual instance sleeps (its owner may want it back); a proxy-started one stops and
            # keeps its record, which the next load reuses.
            if m.record.origin == "proxy":
                await self.sup.stop(m.id)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.idle.wait(), self.request_timeout)
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


__all__ = ["Lease", "ModelNotFound", "ModelUnavailable", "QueueFull", "Router"]
