"""The pure scheduling rules, case by case: world in, effects out."""

from __future__ import annotations

import pytest

from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.placement import Policy
from llamaman.scheduling.scheduler import (
    Admit,
    Demand,
    Effect,
    Refuse,
    Resident,
    Start,
    Stop,
    Want,
    World,
    plan,
    urgency,
)

GiB = 1024**3


def cpu_model(gib: float, name: str = "") -> Demand:
    size = int(gib * GiB)
    return Demand(Footprint(cpu_only=size, gpu_full=size, host_full=0), name=name)


def want(i: int, model: str, since: float = 0.0, priority: int = 0) -> Want:
    return Want(i, model, since, since + 300, priority)


def resident(iid: str, model: str, gib: float, **kw: object) -> Resident:
    return Resident(iid, model, {"cpu": int(gib * GiB)}, **kw)  # type: ignore[arg-type]


def kinds(effects: list[Effect]) -> list[str]:
    out = []
    for e in effects:
        if isinstance(e, Admit):
            out.append(f"admit {e.want}->{e.instance}")
        elif isinstance(e, Start):
            out.append(f"start {e.model}")
        elif isinstance(e, Stop):
            out.append(f"{'drain' if e.drain else 'stop'} {e.instance}")
        elif isinstance(e, Refuse):
            out.append(f"refuse {e.want} {e.kind}")
    return out


CASES = [
    pytest.param(
        World(now=1, limits={"cpu": 10 * GiB}, waiting=(want(1, "a"),), demands={"a": cpu_model(4)}),
        ["start a"],
        id="a model that fits starts",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            waiting=(want(1, "a"), want(2, "a"), want(3, "a")),
            demands={"a": cpu_model(4)},
        ),
        ["start a"],
        id="one load however many wait",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(4)},
            loading={"a": {"cpu": 4 * GiB}},
        ),
        [],
        id="a model already loading is not started again",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("i1", "a", 4, inflight=2),),
            waiting=(want(1, "a"), want(2, "a")),
            demands={"a": cpu_model(4)},
        ),
        ["admit 1->i1", "admit 2->i1"],
        id="a loaded model takes its whole queue",
    ),
    pytest.param(
        World(
            now=5,
            limits={"cpu": 10 * GiB},
            residents=(resident("i1", "b", 4, inflight=1),),
            waiting=(want(1, "a", since=0), want(2, "b", since=1)),
            demands={"a": cpu_model(4), "b": cpu_model(4)},
        ),
        ["admit 2->i1", "start a"],
        id="collation admits the loaded model's later request and starts the other beside it",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("old", "b", 5, last_used=0), resident("new", "c", 4, last_used=0.9)),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(5, "a")},
        ),
        ["stop old"],
        id="the least recently used idle model is evicted, and only as much as needed",
    ),
    pytest.param(
        World(
            now=100,
            limits={"cpu": 10 * GiB},
            residents=(
                resident("slow", "b", 3, last_used=50, load_s=60),
                resident("quick", "c", 3, last_used=60, load_s=1),
                resident("k", "d", 3, last_used=99, load_s=1),
            ),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(3, "a")},
        ),
        ["stop quick"],
        id="eviction weighs reload time against idleness",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("busy", "b", 8, inflight=1),),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(5, "a")},
        ),
        ["drain busy"],
        id="with nothing idle a busy model drains instead of being stopped",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("x", "b", 8, draining=True, admissible=False),),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(5, "a")},
        ),
        [],
        id="while a swap is under way nothing else is stopped",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("m", "b", 8, evictable=False),),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(5, "a")},
        ),
        ["refuse 1 blocked"],
        id="memory held by a manual instance refuses at once instead of timing out",
    ),
    pytest.param(
        World(now=1, limits={"cpu": 4 * GiB}, waiting=(want(1, "a"),), demands={"a": cpu_model(5, "a")}),
        ["refuse 1 never_fits"],
        id="a model bigger than the limit is refused",
    ),
    pytest.param(
        World(now=400, limits={"cpu": 4 * GiB}, waiting=(want(1, "a"),), demands={"a": cpu_model(1)}),
        ["refuse 1 timeout"],
        id="a request past its deadline is refused",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 100 * GiB},
            residents=(resident("i", "b", 1),),
            waiting=(want(1, "a"),),
            demands={"a": cpu_model(1)},
            max_models=1,
        ),
        ["stop i"],
        id="the count limit still caps models when memory is plenty",
    ),
    pytest.param(
        World(
            now=1,
            limits={"cpu": 10 * GiB},
            residents=(resident("i", "b", 8),),
            waiting=(want(1, "a", since=0), want(2, "c", since=0.5)),
            demands={"a": cpu_model(5, "a"), "c": cpu_model(1, "c")},
        ),
        ["stop i"],
        id="a small model does not slip past a big one waiting for room",
    ),
]


@pytest.mark.parametrize(("world", "expected"), CASES)
def test_plan(world: World, expected: list[str]) -> None:
    assert kinds(plan(world)) == expected


def test_eviction_reason_names_both_models_and_the_sizes() -> None:
    world = World(
        now=1,
        limits={"cpu": 10 * GiB},
        residents=(resident("i", "big", 8),),
        waiting=(want(1, "a"),),
        demands={"a": cpu_model(5, "small")},
    )
    [stop] = plan(world)
    assert isinstance(stop, Stop)
    assert stop.reason == "evicted big to fit small (needs 5.0 GiB, free 2.0 GiB)"


def test_never_fits_names_the_footprint_and_the_limit() -> None:
    world = World(now=1, limits={"cpu": 4 * GiB}, waiting=(want(1, "a"),), demands={"a": cpu_model(5, "big")})
    [refuse] = plan(world)
    assert isinstance(refuse, Refuse)
    assert "5.0 GiB" in refuse.reason and "cpu 4.0 GiB" in refuse.reason and "'big'" in refuse.reason


def test_higher_priority_goes_first_and_waiting_ages_past_it() -> None:
    low_old, high_new = want(1, "a", since=0), want(2, "b", since=5, priority=1)
    assert sorted([low_old, high_new], key=lambda w: urgency(w, 6)) == [high_new, low_old]
    # Having waited long enough, the old request outranks a higher-priority one that just came.
    high_later = want(3, "b", since=100, priority=1)
    assert sorted([high_later, low_old], key=lambda w: urgency(w, 100)) == [low_old, high_later]


def test_gpu_only_policy_refuses_instead_of_falling_back_to_ram() -> None:
    fp = Footprint(cpu_only=6 * GiB, gpu_full=5 * GiB, host_full=GiB // 2, slots=20)
    world = World(
        now=1,
        limits={"cpu": 64 * GiB, "gpu0": 4 * GiB},
        waiting=(want(1, "a"),),
        demands={"a": Demand(fp, Policy.GPU_ONLY, name="a")},
    )
    assert kinds(plan(world)) == ["refuse 1 never_fits"]
    auto = World(
        now=1, limits=world.limits, waiting=world.waiting, demands={"a": Demand(fp, Policy.AUTO, name="a")}
    )
    [start] = plan(auto)
    assert isinstance(start, Start) and start.placement.kind == "partial"
