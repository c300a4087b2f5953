"""A stand-in for ``pynvml`` (nvidia-ml-py) with two GPUs, for tests on machines without NVIDIA.

It answers the same functions the GPU sampler calls, with values a test can change between samples:
power draw, memory use and the processes on each GPU. The module itself works as an ``nvml``
argument (it delegates to one shared ``FakeNvml``); tests that want isolation make their own
``FakeNvml()`` and pass that instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0
GIB = 1024**3


class NVMLError(Exception):
    """Same role as ``pynvml.NVMLError``: every NVML failure is one of these."""


@dataclass
class FakeGpu:
    name: str
    uuid: str
    memory_total: int
    memory_used: int = 0
    utilization: int = 0
    memory_utilization: int = 0
    temperature: int = 40
    power_mw: int = 50_000
    power_limit_mw: int = 300_000
    # pid → bytes of GPU memory; None mimics drivers that hide per-process use.
    processes: dict[int, int | None] = field(default_factory=dict)


def default_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            "NVIDIA Fake A100",
            "GPU-00000000-fake-0000-0000-000000000000",
            80 * GIB,
            2 * GIB,
            35,
            10,
            45,
            100_000,
            400_000,
        ),
        FakeGpu(
            "NVIDIA Fake RTX 4090",
            "GPU-11111111-fake-1111-1111-111111111111",
            24 * GIB,
            1 * GIB,
            70,
            20,
            60,
            200_000,
            450_000,
        ),
    ]


class FakeNvml:
    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def __init__(self, gpus: list[FakeGpu] | None = None, *, fail_init: bool = False) -> None:
        self.gpus = gpus if gpus is not None else default_gpus()
        self.fail_init = fail_init
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0

    # ---- knobs for tests ---------------------------------------------------------------------
    def set_power(self, index: int, watts: float) -> None:
        self.gpus[index].power_mw = round(watts * 1000)

    def set_process(self, index: int, pid: int, used_bytes: int | None) -> None:
        self.gpus[index].processes[pid] = used_bytes

    # ---- the pynvml surface ------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self.initialized = False

    def _gpu(self, handle: Any) -> FakeGpu:
        if not self.initialized:
            raise NVMLError("Uninitialized")
        if not isinstance(handle, int) or not 0 <= handle < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return self.gpus[handle]

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise NVMLError("Uninitialized")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        return SimpleNamespace(total=g.memory_total, used=g.memory_used, free=g.memory_total - g.memory_used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        return SimpleNamespace(gpu=g.utilization, memory=g.memory_utilization)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError("Not Supported")
        return self._gpu(handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu(handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu(handle).power_limit_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        g = self._gpu(handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in g.processes.items()]


_default = FakeNvml()


def reset() -> FakeNvml:
    """Fresh default GPUs for the module-level functions."""
    global _default
    _default = FakeNvml()
    return _default


def instance() -> FakeNvml:
    return _default


def nvmlInit() -> None:
    _default.nvmlInit()


def nvmlShutdown() -> None:
    _default.nvmlShutdown()


def nvmlDeviceGetCount() -> int:
    return _default.nvmlDeviceGetCount()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return _default.nvmlDeviceGetHandleByIndex(index)


def nvmlDeviceGetName(handle: int) -> str:
    return _default.nvmlDeviceGetName(handle)


def nvmlDeviceGetUUID(handle: int) -> str:
    return _default.nvmlDeviceGetUUID(handle)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    return _default.nvmlDeviceGetMemoryInfo(handle)


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return _default.nvmlDeviceGetUtilizationRates(handle)


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return _default.nvmlDeviceGetTemperature(handle, sensor)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return _default.nvmlDeviceGetPowerUsage(handle)


def nvmlDeviceGetEnforcedPowerLimit(handle: int) -> int:
    return _default.nvmlDeviceGetEnforcedPowerLimit(handle)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return _default.nvmlDeviceGetComputeRunningProcesses(handle)
