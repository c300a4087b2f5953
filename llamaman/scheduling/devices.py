"""The memory devices models live on (the host's RAM and each GPU) and the limit on each.

A limit defaults to what was free when LlamaMan started, less a reserve; ``LLAMAMAN_MEMORY_LIMIT``
or the runtime setting ``memory_limit`` name it per device. GPU readings come from the telemetry
sampler through the services wiring (this package sits below telemetry), the host's from psutil.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from llamaman.core.memory_limit import parse_memory_limit
from llamaman.scheduling.placement import CPU

DEFAULT_RESERVE = {CPU: 1024**3, "gpu": 512 * 1024**2}


@dataclass(frozen=True)
class Reading:
    """One device as last measured: bytes in total and free right now."""

    device: str
    total: int
    free: int
    name: str = ""


@dataclass
class Device:
    id: str
    name: str
    total: int
    free: int
    free_at_start: int
    limit: int


def default_limit(free_at_start: int, reserve: int) -> int:
    return max(0, free_at_start - reserve)


def reserve_for(device: str, reserves: Mapping[str, int]) -> int:
    if device in reserves:
        return reserves[device]
    kind = CPU if device == CPU else "gpu"
    return reserves.get(kind, DEFAULT_RESERVE[kind])


@dataclass
class DeviceInventory:
    """The devices and their limits; refreshed from readings, limits from the settings' text."""

    env_limit: str | None = None
    env_reserve: str | None = None
    read_host: Callable[[], Reading] = field(default=lambda: host_reading())
    devices: dict[str, Device] = field(default_factory=dict)
    override: str | None = None  # the runtime setting; wins over the environment
    updated_at: float = 0.0

    def refresh(self, gpus: list[Reading] | None = None) -> None:
        readings = [self.read_host(), *(gpus or [])]
        present = {r.device for r in readings}
        if gpus is None:  # no news about GPUs: keep what we knew
            present |= {d for d in self.devices if d != CPU}
        for r in readings:
            d = self.devices.get(r.device)
            if d is None:
                self.devices[r.device] = Device(r.device, r.name or r.device, r.total, r.free, r.free, 0)
            else:
                d.total, d.free = r.total, r.free
        for gone in set(self.devices) - present:
            del self.devices[gone]
        self.apply_limits()
        self.updated_at = time.time()

    def set_override(self, text: str | None) -> None:
        self.override = text or None
        self.apply_limits()

    def apply_limits(self) -> None:
        reserves = parse_memory_limit(self.env_reserve)
        named = parse_memory_limit(self.env_limit)
        named.update(parse_memory_limit(self.override))
        for d in self.devices.values():
            d.limit = named.get(d.id, default_limit(d.free_at_start, reserve_for(d.id, reserves)))

    def limits(self) -> dict[str, int]:
        return {d.id: d.limit for d in self.devices.values()}

    def has_gpu(self) -> bool:
        return any(d != CPU for d in self.devices)

    def view(self) -> list[dict[str, Any]]:
        return [
            {"id": d.id, "name": d.name, "total": d.total, "free": d.free, "limit": d.limit}
            for d in self.devices.values()
        ]


def host_reading() -> Reading:
    vm = psutil.virtual_memory()
    return Reading(CPU, int(vm.total), int(vm.available), "system RAM")
