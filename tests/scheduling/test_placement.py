"""Placement over fake devices: one GPU, a split, partial offload, RAM, per policy and pins."""

from __future__ import annotations

from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.placement import Kind, Policy, place

GiB = 1024**3
# 8 GiB offloaded (+0.5 GiB left on the host), 9 GiB all on the host, 33 slots.
FP = Footprint(cpu_only=9 * GiB, gpu_full=8 * GiB, host_full=GiB // 2, slots=33)


def test_one_gpu_when_it_fits_the_roomiest() -> None:
    p = place(FP, {"cpu": 32 * GiB, "gpu0": 10 * GiB, "gpu1": 20 * GiB})
    assert p is not None and p.kind == Kind.GPU and p.gpus == ("gpu1",) and p.gpu_layers == -1
    assert p.device_bytes == {"gpu1": 8 * GiB, "cpu": GiB // 2}


def test_split_over_gpus_in_proportion_to_free_memory() -> None:
    p = place(FP, {"cpu": 32 * GiB, "gpu0": 6 * GiB, "gpu1": 3 * GiB})
    assert p is not None and p.kind == Kind.SPLIT and p.gpus == ("gpu0", "gpu1")
    assert p.tensor_split == (round(6 / 9, 4), round(3 / 9, 4))
    assert p.device_bytes["gpu0"] + p.device_bytes["gpu1"] == 8 * GiB
    assert p.device_bytes["gpu0"] <= 6 * GiB and p.device_bytes["gpu1"] <= 3 * GiB


def test_partial_offload_takes_as_many_layers_as_fit() -> None:
    p = place(FP, {"cpu": 32 * GiB, "gpu0": 4 * GiB})
    assert p is not None and p.kind == Kind.PARTIAL and 0 < p.gpu_layers < FP.slots
    assert p.device_bytes["gpu0"] <= 4 * GiB
    more = FP.partial(p.gpu_layers + 1)[0]
    assert more > 4 * GiB  # one more layer would not fit


def test_ram_when_no_gpu_has_room_and_nothing_when_ram_has_none() -> None:
    assert place(FP, {"cpu": 10 * GiB}) == place(FP, {"cpu": 10 * GiB, "gpu0": 0})
    p = place(FP, {"cpu": 10 * GiB})
    assert p is not None and p.kind == Kind.CPU and p.device_bytes == {"cpu": 9 * GiB}
    assert place(FP, {"cpu": 8 * GiB}) is None


def test_policies_allow_only_their_steps() -> None:
    roomy = {"cpu": 32 * GiB, "gpu0": 20 * GiB}
    cpu = place(FP, roomy, Policy.CPU_ONLY)
    assert cpu is not None and cpu.kind == Kind.CPU
    assert place(FP, {"cpu": 32 * GiB, "gpu0": 4 * GiB}, Policy.GPU_ONLY) is None
    assert place(FP, {"cpu": 32 * GiB}, Policy.GPU_ONLY) is None


def test_pinned_gpus_are_honoured() -> None:
    p = place(FP, {"cpu": 32 * GiB, "gpu0": 10 * GiB, "gpu1": 20 * GiB}, pinned=("gpu0",))
    assert p is not None and p.gpus == ("gpu0",)
