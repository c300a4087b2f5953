"""The router's side of the scheduler: it builds the world ``plan`` decides on from the instances,
their slots and the waiting requests, and carries the effects out (grant, start with a placement,
drain or stop with a reason, refuse). Footprints, devices and limits live here too.

A mixin of the router, which owns the slots and waiters it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psutil

from llamaman.core.errors import Rejected
from llamaman.core.memory_limit import format_size
from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import ManagedInstance
from llamaman.library.catalog import ModelEntry
from llamaman.library.gguf_meta import LibraryError
from llamaman.scheduling.devices import DeviceInventory, Reading
from llamaman.scheduling.footprint import Footprint, estimate_footprint, flat_footprint, settings_key
from llamaman.scheduling.footprint_store import FootprintStore
from llamaman.scheduling.lease import ModelUnavailable, Waiter
from llamaman.scheduling.placement import CPU, Placement, Policy, place
from llamaman.scheduling.rpc_spread import spread
from llamaman.scheduling.scheduler import Admit, Demand, Effect, Refuse, Resident, Start, Stop, World, plan

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from llamaman.core.events import EventBus
    from llamaman.core.runtime import RuntimeConfig
    from llamaman.instances.launch import LaunchSettings
    from llamaman.instances.supervisor import Supervisor
    from llamaman.scheduling.lease import Slot

log = logging.getLogger(__name__)
S = InstanceState
HOLDS_MEMORY = (S.STARTING, S.HEALTHY, S.STOPPING)
# GPU readings are refreshed at most this often when a decision needs them.
READING_TTL_S = 2.0


class ModelTooLarge(Rejected):
    """The model cannot fit in the memory limits even with nothing else loaded."""


class MemoryPlanner:
    sup: Supervisor
    runtime: RuntimeConfig
    events: EventBus
    request_timeout: float
    waiting: list[Waiter]
    loading: dict[str, bool]
    swaps: int
    evictions: int
    devices: DeviceInventory
    gpu_reader: Callable[[], list[Reading]] | None
    can_offload: Callable[[], bool]  # False when the llama-server build runs on the CPU only
    footprints: dict[str, Footprint]  # settings key → measured footprint
    usage: dict[str, dict[str, int]]  # instance id → bytes accounted per device
    loading_usage: dict[str, dict[str, int]]  # model key → bytes reserved while it starts
    load_seconds: dict[str, float]  # instance id → how long its last load took
    store: FootprintStore
    # Free bytes of each live llama.cpp RPC worker (None: workers are never looked at), and whether
    # this box's llama-server can use them.
    worker_memory: Callable[[], Awaitable[Mapping[str, int]]] | None
    rpc_capable: Callable[[], bool]

    if TYPE_CHECKING:  # provided by the router

        def slot(self, m: ManagedInstance) -> Slot: ...
        def _spawn(self, coro: Any) -> None: ...
        def _grant(self, w: Waiter, m: ManagedInstance) -> None: ...
        def _evictable(self, m: ManagedInstance) -> bool: ...
        def _counts(self, m: ManagedInstance) -> bool: ...
        async def _bring_up(
            self, entry: ModelEntry, placement: Placement | None = None, rpc_workers: tuple[str, ...] = ()
        ) -> None: ...
        async def _unload(self, m: ManagedInstance, *, reason: str) -> None: ...

    def _init_memory(self, env_reserve: str | None, store: FootprintStore) -> None:
        self.store = store
        self.devices = DeviceInventory(env_reserve=env_reserve)
        self.gpu_reader = None
        self.can_offload = lambda: True
        self.worker_memory = None
        self.rpc_capable = lambda: False
        self.footprints = {}
        self.usage = {}
        self.loading_usage = {}
        self.load_seconds = {}
        self._read_at = 0.0

    # ---- devices -----------------------------------------------------------------------------
    def refresh_devices(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._read_at < READING_TTL_S and self.devices.devices:
            self.devices.set_override(self.runtime.current.memory_limit)
            return
        self._read_at = time.monotonic()
        gpus = None
        if self.gpu_reader is not None:
            with contextlib.suppress(Exception):  # a broken sampler must not stop scheduling
                gpus = self.gpu_reader()
        self.devices.override = self.runtime.current.memory_limit
        self.devices.refresh(gpus)

    # ---- footprints --------------------------------------------------------------------------
    def footprint(self, entry: ModelEntry | None, settings: LaunchSettings) -> Footprint:
        known = self.footprints.get(settings_key(settings.model_path, settings))
        if known is not None:
            return known
        if entry is None:
            return flat_footprint(0)
        argv = settings.extra_argv()
        try:
            return estimate_footprint(
                entry,
                ctx_size=settings.ctx_size,
                parallel=settings.parallel,
                cache_type_k=_flag(argv, ("-ctk", "--cache-type-k"), "f16"),
                cache_type_v=_flag(argv, ("-ctv", "--cache-type-v"), "f16"),
            )
        except LibraryError:
            return flat_footprint(entry.size_bytes)

    def demand(self, entry: ModelEntry, settings: LaunchSettings, policy: str | None) -> Demand:
        embedding = settings.embedding
        pinned = _pinned(settings)
        chosen = Policy(policy or Policy.AUTO)
        # A preset that asks for GPUs only keeps asking where there are none: refused, never put in RAM.
        if chosen != Policy.GPU_ONLY and (settings.n_gpu_layers == 0 or not self.can_offload()):
            chosen = Policy.CPU_ONLY
        return Demand(self.footprint(entry, settings), chosen, pinned, not embedding, entry.name)

    async def spread_if_too_large(self, settings: LaunchSettings, demand: Demand) -> Demand:
        """A model that can never fit on this box alone goes over RPC workers when they can hold
        its offloaded layers (``scheduling.rpc_spread``); any other demand stays as it is."""
        if settings.n_gpu_layers == 0 or not self.rpc_capable():
            return demand
        self.refresh_devices()
        limits = self.devices.limits()
        if place(demand.footprint, limits, demand.policy, demand.pinned) is not None:
            return demand  # it fits here: workers are only for what cannot
        named = tuple(settings.rpc_workers)
        if not named and self.worker_memory is None:
            return demand
        try:
            free = {} if named or self.worker_memory is None else await self.worker_memory()
        except Exception as exc:  # the workers table unreadable: decide as if there were none
            log.warning("could not read the RPC workers: %s", exc)
            return demand
        s = spread(demand.footprint, limits, free, named)
        if s is None:
            return demand
        return replace(demand, footprint=s.local, policy=Policy.CPU_ONLY, rpc_workers=s.workers)

    def usage_of(self, m: ManagedInstance) -> dict[str, int]:
        """Bytes accounted to ``m`` per device: what its placement reserved, or from its settings."""
        got = self.usage.get(m.id)
        if got is not None:
            return got
        fp = self.footprint(_entry(self, m), m.settings)
        gpus = [d for d in self.devices.devices if d != CPU]
        if not gpus or m.settings.n_gpu_layers == 0 or not self.can_offload():
            return {CPU: fp.cpu_only}
        pinned = _pinned(m.settings)
        gpu = pinned[0] if pinned else gpus[0]
        if m.settings.n_gpu_layers < 0:
            return {gpu: fp.gpu_full, CPU: fp.host_full}
        g, h = fp.partial(m.settings.n_gpu_layers)
        return {gpu: g, CPU: h}

    async def _load_footprints(self) -> None:
        self.footprints.update(await self.store.load())

    async def _after_load(self, m: ManagedInstance, t0: float) -> None:
        """Remember how long the load took (eviction weighs it) and what it really holds."""
        state = await m.proc.wait_for({S.HEALTHY, S.FAILED, S.STOPPED, S.SLEEPING}, self.request_timeout)
        if state == S.HEALTHY:
            self.load_seconds[m.id] = time.monotonic() - t0
            await self.calibrate(m)
            self._kick()

    async def calibrate(self, m: ManagedInstance) -> None:
        """After a load: what the server really holds replaces the estimate for its settings."""
        pid = m.proc.pid
        if pid is None or any(d != CPU for d in self.usage_of(m)):
            return  # GPU sizes come from NVML per process, read by the telemetry sampler
        if m.settings.rpc_workers:
            return  # its RSS is only the part kept here: it says nothing of the model's whole size
        try:
            rss = await asyncio.to_thread(lambda: psutil.Process(pid).memory_info().rss)
        except (psutil.Error, OSError):
            return
        # Estimate, not the last measurement, as the base: calibrating twice must not compound.
        self.footprints.pop(key := settings_key(m.settings.model_path, m.settings), None)
        fp = self.footprint(_entry(self, m), m.settings).calibrated(host=int(rss))
        self.footprints[key] = fp
        self.usage[m.id] = {CPU: fp.cpu_only}
        await self.store.save(key, m.settings.model_path, fp)

    # ---- the decision ------------------------------------------------------------------------
    def _world(self) -> World:
        self.refresh_devices()
        residents = []
        live_models = set()
        for m in self.sup.list():
            if m.state not in HOLDS_MEMORY:
                continue
            s = self.slot(m)
            live_models.add(m.record.model_path)
            residents.append(
                Resident(
                    id=m.id,
                    model=m.record.model_path,
                    usage=self.usage_of(m),
                    inflight=s.inflight,
                    last_used=m.last_used,
                    load_s=self.load_seconds.get(m.id, 1.0),
                    evictable=self._evictable(m),
                    admissible=m.state in (S.STARTING, S.HEALTHY) and not s.draining,
                    draining=s.draining or m.state == S.STOPPING,
                    counts=self._counts(m),
                )
            )
        loading = {k: u for k, u in self.loading_usage.items() if k in self.loading and k not in live_models}
        waiting = []
        demands: dict[str, Demand] = {}
        for w in self.waiting:
            if w.future.done() or w.demand is None:
                continue
            waiting.append(w.want(self.request_timeout + 1))
            demands[w.key] = w.demand
        return World(
            now=time.monotonic(),
            limits=self.devices.limits(),
            residents=tuple(residents),
            loading=loading,
            loading_counts=frozenset(k for k, counts in self.loading.items() if counts),
            waiting=tuple(waiting),
            demands=demands,
            max_models=self.runtime.current.max_models,
        )

    def _kick(self) -> None:
        """Decide again: grant, start, drain, stop or refuse, as ``plan`` says."""
        self.waiting[:] = [w for w in self.waiting if not w.future.done()]
        if not self.waiting:
            return
        for effect in plan(self._world()):
            self._carry_out(effect)

    def _carry_out(self, effect: Effect) -> None:
        if isinstance(effect, Admit):
            w = self._waiter(effect.want)
            with contextlib.suppress(Exception):
                m = self.sup.get(effect.instance)
                if w is not None:
                    self._grant(w, m)
        elif isinstance(effect, Start):
            w = next((w for w in self.waiting if w.key == effect.model), None)
            if w is None or w.demand is None:
                return
            self.loading[effect.model] = w.demand.counts
            self.loading_usage[effect.model] = dict(effect.placement.device_bytes)
            self._spawn(self._bring_up(w.entry, effect.placement, w.demand.rpc_workers))
        elif isinstance(effect, Stop):
            victim = self.sup.instances.get(effect.instance)
            if victim is None or self.slot(victim).draining:
                return
            self.slot(victim).draining = True
            log.info("%s", effect.reason)
            name = victim.record.model_name
            self.events.publish("router.evict", model=name, instance=victim.id, reason=effect.reason)
            self._spawn(self._unload(victim, reason=effect.reason))
        elif isinstance(effect, Refuse):
            w = self._waiter(effect.want)
            if w is not None:
                self.waiting.remove(w)
                too_large = effect.kind == "never_fits"
                exc = ModelTooLarge(effect.reason) if too_large else ModelUnavailable(effect.reason)
                if not w.future.done():
                    w.future.set_exception(exc)

    def _waiter(self, wid: int) -> Waiter | None:
        return next((w for w in self.waiting if w.id == wid), None)

    def still_wanted(self, key: str) -> bool:
        return any(w.key == key and not w.future.done() for w in self.waiting)

    # ---- views -------------------------------------------------------------------------------
    def queued(self) -> list[dict[str, Any]]:
        """Requests waiting for a model to load or for room, oldest first."""
        now_mono, now = time.monotonic(), time.time()
        return [
            {
                "id": w.id,
                "model": w.entry.name,
                "key": w.key_name,
                "priority": w.priority,
                "enqueued_at": now - (now_mono - w.since),
                "age_s": round(now_mono - w.since, 3),
            }
            for w in self.waiting
            if not w.future.done()
        ]

    def placement_view(self) -> dict[str, Any]:
        """Each device's total, limit, use by our models and by others, free, and who is resident."""
        self.refresh_devices(force=True)
        ours: dict[str, int] = {}
        resident: dict[str, list[dict[str, Any]]] = {}
        for m in self.sup.list():
            if m.state not in HOLDS_MEMORY:
                continue
            usage = self.usage_of(m)
            for d, b in usage.items():
                ours[d] = ours.get(d, 0) + b
                resident.setdefault(d, []).append(
                    {
                        "instance": m.id,
                        "model": m.record.model_name,
                        "bytes": b,
                        "split": usage,
                        "state": m.state.value,
                    }
                )
        out = []
        for dev in self.devices.devices.values():
            used = ours.get(dev.id, 0)
            out.append(
                {
                    "id": dev.id,
                    "name": dev.name,
                    "total": dev.total,
                    "limit": dev.limit,
                    "used_by_models": used,
                    "used_by_others": max(0, dev.total - dev.free - used),
                    "free": dev.free,
                    "models": resident.get(dev.id, []),
                }
            )
        return {"devices": out, "max_models": self.runtime.current.max_models}


def describe_placement(p: Placement) -> str:
    parts = ", ".join(f"{d} {format_size(b)}" for d, b in p.device_bytes.items())
    return f"{p.kind.value} ({parts})"


def _flag(argv: list[str], names: tuple[str, ...], default: str) -> str:
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            return argv[i + 1]
        for n in names:
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return default


def _pinned(settings: LaunchSettings) -> tuple[str, ...] | None:
    if not settings.gpu_devices:
        return None
    ids = [x.strip() for x in settings.gpu_devices.split(",") if x.strip().isdigit()]
    return tuple(f"gpu{x}" for x in ids) or None


def _entry(planner: Any, m: ManagedInstance) -> ModelEntry | None:
    library = getattr(planner, "library", None)
    return library.find(m.record.model_path) if library is not None else None


def apply_placement(values: dict[str, Any], p: Placement | None, has_gpu: bool) -> None:
    """Launch settings for a placement; a box without GPUs keeps the preset's as they are."""
    if p is None or not has_gpu:
        return
    if p.kind == "cpu":
        values["n_gpu_layers"] = 0
        return
    values["n_gpu_layers"] = p.gpu_layers
    values["gpu_devices"] = ",".join(g[3:] for g in p.gpus)
    if p.tensor_split:
        split = ",".join(f"{s:g}" for s in p.tensor_split)
        values["extra_args"] = f"{values.get('extra_args') or ''} --tensor-split {split}".strip()


__all__ = ["MemoryPlanner", "ModelTooLarge", "apply_placement", "describe_placement", "place"]
