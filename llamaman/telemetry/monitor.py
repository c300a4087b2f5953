"""Observability: system and GPU telemetry, Prometheus metrics, the activity log and benchmarks.

``Telemetry`` owns them all for one ``Services``. Its ``observe`` is the relay's observer;
``instance_extra`` adds live CPU, RAM and GPU memory to the instance views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from llamaman.auth.accounts import AuthService
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.exchange import Exchange
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import ManagedInstance, Supervisor
from llamaman.scheduling.router import Router
from llamaman.telemetry.activity import ActivityLog
from llamaman.telemetry.benchmarks import BenchmarkRuns
from llamaman.telemetry.energy import EnergyAttributor
from llamaman.telemetry.gpu import GpuSampler
from llamaman.telemetry.metrics import Metrics
from llamaman.telemetry.system_info import SystemInfo

if TYPE_CHECKING:
    from llamaman.core.events import Event, EventBus

log = logging.getLogger(__name__)


USAGE_INTERVAL = 2.0
# How long instance CPU and memory keep being sampled after someone last asked for them (a page,
# the API, a /metrics scrape); after that the sampler sleeps until the next question.
USAGE_LINGER_S = 60.0
CHILDREN_REFRESH_S = 30.0


class Telemetry:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        runtime: RuntimeConfig,
        events: EventBus,
        supervisor: Supervisor,
        router: Router,
        auth: AuthService,
        *,
        gpu: GpuSampler | None = None,
    ) -> None:
        self.events = events
        self.supervisor = supervisor
        self.router = router
        # Replaceable until start(), e.g. by a sampler on a stand-in NVML in tests.
        self.gpu = gpu or GpuSampler()
        self.system = SystemInfo(settings.models_dir)
        self.energy = EnergyAttributor(
            lambda a, b: self.gpu.energy_between(a, b), lambda: self.gpu.latest_time()
        )
        self.metrics = Metrics(self)
        self.activity = ActivityLog(
            db,
            runtime,
            on_record=self.metrics.record,
            energy=self.energy,
            energy_enabled=lambda: self.gpu.has_power(),
            idle=router.idle,
            wait_idle=router.wait_idle,
            node=settings.node_name,
        )
        self.benchmarks = BenchmarkRuns(db, router, auth)
        # instance id → {"pids": [...], "cpu_percent": float, "rss_bytes": int}, refreshed in the background
        self._usage: dict[str, dict[str, Any]] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._children_seen: dict[int, tuple[float, list[psutil.Process]]] = {}
        self._usage_task: asyncio.Task[None] | None = None
        self._usage_wanted = 0.0
        self._usage_demand: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unlisten: Callable[[], None] | None = None
        self.started = False

    def observe(self, ex: Exchange) -> None:
        """The relay's observer (only queues; see ActivityLog.observe)."""
        self.activity.observe(ex)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self._unlisten = self.events.listen(self._on_state, "instance.state")
        await self.activity.start()
        await self.benchmarks.start()
        try:
            await self.gpu.start()
        except Exception:  # GPU telemetry is optional; nothing else depends on it
            log.exception("GPU telemetry could not start")
        self._loop = asyncio.get_running_loop()
        self._usage_demand = asyncio.Event()
        self._usage_task = asyncio.create_task(self._usage_loop(), name="instance-usage")

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        if self._unlisten:
            self._unlisten()
        await self.benchmarks.stop()
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        await self.gpu.stop()
        await self.activity.stop()

    def _on_state(self, ev: Event) -> None:
        if ev.data.get("new") != InstanceState.HEALTHY.value:
            return
        m = self.supervisor.instances.get(ev.data.get("id", ""))
        if m is not None and m.proc.load_seconds is not None:
            self.metrics.load_seconds.labels(m.record.model_name).observe(m.proc.load_seconds)

    # ---- per-instance usage ------------------------------------------------------------------
    async def _usage_loop(self) -> None:
        assert self._usage_demand is not None
        while True:
            if time.monotonic() - self._usage_wanted > USAGE_LINGER_S:
                # Nobody looked for a while: sleep until someone does instead of sampling on a timer.
                self._usage_demand.clear()
                await self._usage_demand.wait()
            try:
                await self.refresh_usage()
            except Exception:
                log.exception("sampling instance CPU and memory failed")
            await asyncio.sleep(USAGE_INTERVAL)

    def want_usage(self) -> None:
        # Called from the event loop or a worker thread (a /metrics scrape), hence the thread-safe wake.
        self._usage_wanted = time.monotonic()
        demand, loop = self._usage_demand, self._loop
        if demand is not None and loop is not None and not demand.is_set() and not loop.is_closed():
            loop.call_soon_threadsafe(demand.set)

    async def refresh_usage(self) -> None:
        targets = {m.id: m.proc.pid for m in self.supervisor.list() if m.proc.pid}
        self._usage = await asyncio.to_thread(self._sample_usage, targets)

    def _sample_usage(self, targets: dict[str, int]) -> dict[str, dict[str, Any]]:
        # psutil measures CPU % between two calls on the same Process object, so they are kept.
        out: dict[str, dict[str, Any]] = {}
        alive: dict[int, psutil.Process] = {}
        for instance_id, pid in targets.items():
            try:
                root = self._procs.get(pid) or psutil.Process(pid)
                procs = [root, *self._children(root)]
            except psutil.Error:
                continue
            cpu, rss, pids = 0.0, 0, []
            for p in procs:
                p = self._procs.get(p.pid) or p
                try:
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
                alive[p.pid] = p
                pids.append(p.pid)
            out[instance_id] = {"pids": pids, "cpu_percent": round(cpu, 1), "rss_bytes": rss}
        self._procs = alive
        live_roots = set(targets.values())
        self._children_seen = {pid: v for pid, v in self._children_seen.items() if pid in live_roots}
        return out

    def _children(self, root: psutil.Process) -> list[psutil.Process]:
        # Finding children walks all of /proc; a llama-server rarely has any, so the answer is
        # reused for a while instead of paying that walk on every sample (it was most of the
        # idle CPU).
        now = time.monotonic()
        cached = self._children_seen.get(root.pid)
        if cached is not None and now - cached[0] < CHILDREN_REFRESH_S:
            return cached[1]
        kids = root.children(recursive=True)
        self._children_seen[root.pid] = (now, kids)
        return kids

    def instance_extra(self, m: ManagedInstance) -> dict[str, Any]:
        """CPU, RAM (sampled over the last interval) and GPU memory of an instance's process group."""
        self.want_usage()
        out: dict[str, Any] = {}
        usage = self._usage.get(m.id)
        # A sample taken before a restart describes a process that is gone.
        if usage is not None and m.proc.pid in usage["pids"]:
            pids: list[int] = usage["pids"]
            out["cpu_percent"] = usage["cpu_percent"]
            out["rss_bytes"] = usage["rss_bytes"]
        else:
            pids = [m.proc.pid] if m.proc.pid else []
        if self.gpu.available:
            by_pid = self.gpu.memory_by_pid()
            per_gpu: dict[str, int] = {}
            for pid in pids:
                for gpu_index, used in by_pid.get(pid, {}).items():
                    per_gpu[str(gpu_index)] = per_gpu.get(str(gpu_index), 0) + used
            out["gpu_memory_bytes"] = sum(per_gpu.values()) if pids else 0
            out["gpu_memory_by_gpu"] = per_gpu
        else:
            out["gpu_memory_bytes"] = None
        return out

    def pid_owner(self, pid: int) -> str | None:
        """The instance whose process group contains ``pid``."""
        for instance_id, usage in self._usage.items():
            if pid in usage["pids"]:
                return instance_id
        for m in self.supervisor.list():
            if m.proc.pid == pid:
                return m.id
        return None

    def gpu_info(self) -> dict[str, Any]:
        return self.gpu.info(self.pid_owner)
