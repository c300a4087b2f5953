"""The GPU sampler: reads every GPU every couple of seconds in a background thread and keeps the
latest sample, so API calls and Prometheus scrapes never wait on NVML or a subprocess.

It also integrates power into energy (trapezoid rule over consecutive samples), per GPU and in
total; the total's timeline lets the activity log charge each request its share of the joules.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamaman.telemetry.gpu_sources import DRM_ROOT, GpuReading, GpuSource, detect

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
# Energy timeline kept for attributing requests: longer than any request is expected to run.
DEFAULT_HISTORY_S = 900.0


class GpuSampler:
    def __init__(
        self,
        *,
        nvml: Any | None = None,
        drm_root: Path = DRM_ROOT,
        cli: bool = True,
        interval: float = DEFAULT_INTERVAL,
        history_s: float = DEFAULT_HISTORY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``nvml`` is the pynvml module or a stand-in (``llamaman.testing.fake_nvml``); None imports
        pynvml. ``cli`` allows the nvidia-smi / rocm-smi fallbacks."""
        self.nvml = nvml
        self.drm_root = drm_root
        self.cli = cli
        self.interval = interval
        self.history_s = history_s
        self.clock = clock
        self.sources: list[GpuSource] | None = None
        self.reason: str | None = None
        self.readings: list[GpuReading] = []
        self.sampled_at: float | None = None  # wall clock, for the API
        self.sampled_mono: float | None = None
        self.energy_j: dict[str, float] = {}
        self._last_power: dict[str, tuple[float, float]] = {}  # key → (t, watts)
        self._timeline: deque[tuple[float, float]] = deque()  # (t, total joules so far)
        self._total_j = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ---- blocking part (runs in a thread) ----------------------------------------------------
    def open(self) -> None:
        if self.sources is not None:
            return
        self.sources, reasons = detect(self.nvml, self.drm_root, self.cli)
        self.reason = None if self.sources else "no GPU found: " + "; ".join(reasons)
        if self.sources:
            log.info("GPU telemetry from %s", ", ".join(s.name for s in self.sources))

    def sample(self) -> list[GpuReading]:
        """Read every GPU now and fold the power readings into the energy counters."""
        self.open()
        readings: list[GpuReading] = []
        for src in self.sources or []:
            try:
                readings.extend(src.read())
            except Exception as exc:  # one broken source must not hide the others
                log.debug("GPU source %s failed: %s", src.name, exc)
        now = self.clock()
        self._integrate(readings, now)
        self.readings = readings
        self.sampled_at = time.time()
        self.sampled_mono = now
        return readings

    def _integrate(self, readings: list[GpuReading], now: float) -> None:
        seen = set()
        for r in readings:
            seen.add(r.key)
            self.energy_j.setdefault(r.key, 0.0)
            if r.power_w is None:
                self._last_power.pop(r.key, None)
                continue
            prev = self._last_power.get(r.key)
            if prev is not None and now > prev[0]:
                joules = (prev[1] + r.power_w) / 2 * (now - prev[0])
                self.energy_j[r.key] += joules
                self._total_j += joules
            self._last_power[r.key] = (now, r.power_w)
        for gone in set(self._last_power) - seen:
            del self._last_power[gone]
        if readings:
            self._timeline.append((now, self._total_j))
            while self._timeline and self._timeline[0][0] < now - self.history_s:
                self._timeline.popleft()

    def close(self) -> None:
        for src in self.sources or []:
            src.close()
        self.sources = None

    # ---- async lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            await self.refresh()
            self._task = asyncio.create_task(self._loop(), name="gpu-sampler")

    async def refresh(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.sample)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.sources:
                return  # nothing to sample, and GPUs do not appear while running: no idle timer
            try:
                await self.refresh()
            except Exception:
                log.exception("GPU sampling failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.close)

    # ---- queries -----------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return bool(self.sources)

    def has_power(self) -> bool:
        return len(self._timeline) > 0 and any(r.power_w is not None for r in self.readings)

    def latest_time(self) -> float | None:
        return self._timeline[-1][0] if self._timeline else None

    def energy_at(self, t: float) -> float | None:
        """Total joules integrated up to monotonic time ``t`` (linear between samples)."""
        tl = self._timeline
        if not tl or t > tl[-1][0]:
            return None
        if t <= tl[0][0]:
            return tl[0][1]
        i = bisect.bisect_left(tl, (t, float("-inf")))
        (t0, e0), (t1, e1) = tl[i - 1], tl[i]
        return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1

    def energy_between(self, a: float, b: float) -> float | None:
        ea, eb = self.energy_at(a), self.energy_at(b)
        return None if ea is None or eb is None else max(0.0, eb - ea)

    def memory_by_pid(self) -> dict[int, dict[int, int]]:
        """pid → {GPU index → bytes}, from the latest sample."""
        out: dict[int, dict[int, int]] = {}
        for i, r in enumerate(self.readings):
            for pid, used in r.processes:
                if used is not None:
                    out.setdefault(pid, {})[i] = out.get(pid, {}).get(i, 0) + used
        return out

    def info(self, pid_owner: Callable[[int], str | None] | None = None) -> dict[str, Any]:
        """The /api/gpu-info answer; ``pid_owner`` names the instance a GPU process belongs to."""
        gpus = []
        for i, r in enumerate(self.readings):
            pct = (
                round(r.memory_used / r.memory_total * 100, 1)
                if r.memory_used is not None and r.memory_total
                else None
            )
            gpus.append(
                {
                    "index": i,
                    "vendor": r.vendor,
                    "name": r.name,
                    "uuid": r.uuid,
                    "source": r.source,
                    "memory_used_bytes": r.memory_used,
                    "memory_total_bytes": r.memory_total,
                    "memory_percent": pct,
                    "utilization_percent": r.utilization,
                    "temperature_c": r.temperature_c,
                    "power_w": r.power_w,
                    "power_limit_w": r.power_limit_w,
                    "energy_j": round(self.energy_j.get(r.key, 0.0), 3) if r.power_w is not None else None,
                    "processes": [
                        {
                            "pid": pid,
                            "memory_bytes": used,
                            "instance_id": pid_owner(pid) if pid_owner else None,
                        }
                        for pid, used in r.processes
                    ],
                }
            )
        reason = self.reason
        if not gpus and reason is None:
            reason = "GPUs not sampled yet" if self.sources is None else "no GPU answered"
        return {
            "gpus": gpus,
            "reason": None if gpus else reason,
            "sources": [s.name for s in self.sources or []],
            "sampled_at": self.sampled_at,
            "interval_s": self.interval,
            "total_energy_j": round(self._total_j, 3) if self.has_power() else None,
        }
