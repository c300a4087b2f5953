"""Spreading a model too large for this box over llama.cpp RPC workers: which workers, what stays."""

from __future__ import annotations

from llamaman.app import LlamaMan
from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.rpc_spread import Spread, choose_workers, host_part, spread

MIB = 1024**2
# 600 MiB in all on the host alone; offloaded, 520 MiB leave and 80 MiB stay.
MODEL = Footprint(cpu_only=600 * MIB, gpu_full=520 * MIB, host_full=80 * MIB, slots=25)


def test_the_fewest_workers_that_hold_it_are_chosen_largest_first() -> None:
    free = {"a:1": 300 * MIB, "b:1": 400 * MIB, "c:1": 200 * MIB}
    assert choose_workers(free, 350 * MIB) == ["b:1"]
    assert choose_workers(free, 600 * MIB) == ["b:1", "a:1"]
    assert choose_workers(free, 901 * MIB) == []  # all of them together are not enough
    assert choose_workers({"b:1": 1, "a:1": 1}, 2) == ["a:1", "b:1"]  # a tie goes by address


def test_a_model_spread_keeps_only_its_host_part_here() -> None:
    got = spread(MODEL, {"cpu": 100 * MIB}, {"w:1": 1024 * MIB})
    assert got == Spread(host_part(MODEL), ("w:1",))
    assert got is not None and got.local.cpu_only == got.local.host_full == 80 * MIB


def test_no_spread_when_the_host_part_or_the_workers_fall_short() -> None:
    assert spread(MODEL, {"cpu": 70 * MIB}, {"w:1": 1024 * MIB}) is None  # its own part does not fit
    assert spread(MODEL, {"cpu": 100 * MIB}, {"w:1": 500 * MIB}) is None  # the workers hold too little
    assert spread(MODEL, {"cpu": 100 * MIB}, {}) is None


def test_a_box_with_gpus_never_spreads_by_itself() -> None:
    # llama.cpp would divide the layers between the GPU and the workers: not what the host part says.
    assert spread(MODEL, {"cpu": 100 * MIB, "gpu0": 100 * MIB}, {"w:1": 1024 * MIB}) is None


def test_workers_a_preset_names_are_taken_as_given() -> None:
    got = spread(MODEL, {"cpu": 100 * MIB}, {}, named=["10.0.0.5:50052"])
    assert got is not None and got.workers == ("10.0.0.5:50052",)


async def test_the_router_spreads_only_a_model_that_can_never_fit_here(services: LlamaMan) -> None:
    router = services.router
    asked: list[str] = []

    async def worker_memory() -> dict[str, int]:
        asked.append("workers")
        return {"w:1": 1 << 40}

    router.rpc_capable, router.worker_memory = (lambda: True), worker_memory
    entry = await router.aresolve("tiny-a")
    settings, policy = await router._launch_settings(entry)
    demand = router.demand(entry, settings, policy)
    assert await router.spread_if_too_large(settings, demand) is demand and asked == []  # it fits here
    fp = demand.footprint
    await services.runtime.update({"memory_limit": f"cpu={(fp.host_full + fp.cpu_only) // 2}"})
    spread_out = await router.spread_if_too_large(settings, demand)
    assert spread_out.rpc_workers == ("w:1",) and spread_out.footprint == host_part(fp)
    # A preset that keeps every layer here, or a llama-server without --rpc: nothing to spread.
    kept = settings.model_copy(update={"n_gpu_layers": 0})
    assert await router.spread_if_too_large(kept, demand) is demand
    router.rpc_capable = lambda: False
    assert await router.spread_if_too_large(settings, demand) is demand
