"""Where a model goes: one GPU if it fits; else split over GPUs in proportion to their free memory
(``--tensor-split``); else fewer layers on a GPU (``--n-gpu-layers``); else the host's RAM. Each
step is allowed or not by the preset's ``placement`` policy; pinned GPUs narrow the choice.

Pure functions over "bytes free per device" (``cpu``, ``gpu0``, ``gpu1``, ...): no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from llamaman.scheduling.footprint import Footprint

CPU = "cpu"


class Policy(StrEnum):
    AUTO = "auto"
    GPU_ONLY = "gpu_only"
    CPU_ONLY = "cpu_only"


class Kind(StrEnum):
    GPU = "gpu"
    SPLIT = "split"
    PARTIAL = "partial"
    CPU = "cpu"


@dataclass(frozen=True)
class Placement:
    kind: Kind
    device_bytes: Mapping[str, int]  # what the model is accounted on each device
    gpus: tuple[str, ...] = ()
    gpu_layers: int = 0  # -1 = all
    tensor_split: tuple[float, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.device_bytes.values())


def gpu_ids(devices: Mapping[str, int]) -> list[str]:
    return sorted((d for d in devices if d != CPU), key=lambda d: int(d[3:]) if d[3:].isdigit() else 0)


def place(
    fp: Footprint,
    free: Mapping[str, int],
    policy: Policy | str = Policy.AUTO,
    pinned: tuple[str, ...] | None = None,
) -> Placement | None:
    """The first placement that fits in ``free``, or None when none does."""
    policy = Policy(policy)
    gpus = [g for g in gpu_ids(free) if pinned is None or g in pinned]
    host_free = free.get(CPU, 0)
    if policy != Policy.CPU_ONLY and gpus and fp.host_full <= host_free:
        # One GPU: the one with the most room, so the next model still finds space.
        best = max(gpus, key=lambda g: free[g])
        if fp.gpu_full <= free[best]:
            return Placement(Kind.GPU, {best: fp.gpu_full, CPU: fp.host_full}, (best,), -1)
        room = sum(max(free[g], 0) for g in gpus)
        if len(gpus) > 1 and fp.gpu_full <= room:
            return _split(fp, gpus, free, room)
    if policy == Policy.AUTO and gpus:
        best = max(gpus, key=lambda g: free[g])
        # Most layers whose GPU part fits, and whose host part fits beside it.
        for k in range(fp.slots - 1, 0, -1):
            gpu, host = fp.partial(k)
            if gpu <= free[best] and host <= host_free:
                return Placement(Kind.PARTIAL, {best: gpu, CPU: host}, (best,), k)
    if policy != Policy.GPU_ONLY and fp.cpu_only <= host_free:
        return Placement(Kind.CPU, {CPU: fp.cpu_only}, (), 0)
    return None


def _split(fp: Footprint, gpus: list[str], free: Mapping[str, int], room: int) -> Placement:
    shares = [max(free[g], 0) / room for g in gpus]
    used = {g: int(fp.gpu_full * s) for g, s in zip(gpus, shares, strict=True)}
    # Rounding down loses a few bytes: charge them to the GPU with the most room.
    used[gpus[shares.index(max(shares))]] += fp.gpu_full - sum(used.values())
    kept = [(g, s) for g, s in zip(gpus, shares, strict=True) if used[g] > 0]
    return Placement(
        Kind.SPLIT,
        {**{g: b for g, b in used.items() if b > 0}, CPU: fp.host_full},
        tuple(g for g, _ in kept),
        -1,
        tuple(round(s, 4) for _, s in kept),
    )


def never_fits(
    fp: Footprint, limits: Mapping[str, int], policy: Policy | str, pinned: tuple[str, ...] | None
) -> bool:
    """True when the model cannot be placed even with nothing else loaded."""
    return place(fp, limits, policy, pinned) is None


def smallest_need(fp: Footprint, policy: Policy | str, has_gpu: bool) -> int:
    """The least memory the model could ever take under ``policy`` (for messages)."""
    if Policy(policy) == Policy.CPU_ONLY or not has_gpu:
        return fp.cpu_only
    return fp.gpu_full + fp.host_full
