"""The scheduling decision, pure: the world as it is (residents, loads under way, waiting requests,
limits) in, effects out (admit, start with a placement, drain or stop with a reason, refuse with a
reason). No I/O and no clock of its own; the router builds the world from its instances and carries
the effects out, and ``Scheduler`` (``scheduling/scheduler_state.py``) keeps a world of its own
from events for the tests that replay thousands of event sequences against these rules.

The rules, in order:
1. A waiting request past its deadline is refused (timed out).
2. Collation: every request for a model with an admissible instance is admitted at once, so a
   loaded model serves its queue before anything swaps.
3. The other models, most urgent first (key priority, plus one for every ``AGE_S`` seconds waited,
   so no queue starves), start if they fit; one that can never fit is refused naming its
   footprint and the limit.
4. The first that does not fit makes room: the cheapest set of idle, evictable instances (least
   recently used, weighted by how long they took to load); with too few idle ones, busy ones drain
   (admit nothing new, stop when their last request ends). Nothing behind it starts meanwhile, so
   small models cannot keep slipping past a big one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from llamaman.core.memory_limit import format_size
from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.placement import Placement, Policy, place, smallest_need

# Seconds of waiting worth one step of key priority.
AGE_S = 10.0


@dataclass(frozen=True)
class Resident:
    """An instance holding memory: live, loading or on its way down."""

    id: str
    model: str
    usage: Mapping[str, int]  # bytes accounted per device
    inflight: int = 0
    last_used: float = 0.0
    load_s: float = 1.0
    evictable: bool = True  # proxy-managed; never manual, pinned or embedding-protected
    admissible: bool = True  # live and not draining: may take a request now
    draining: bool = False  # on its way down (counts as a swap under way)
    counts: bool = True  # takes a slot of the count limit (embedding servers do not)


@dataclass(frozen=True)
class Want:
    """A waiting request."""

    id: int
    model: str
    since: float
    deadline: float
    priority: int = 0


@dataclass(frozen=True)
class Demand:
    """What a waiting model needs to start."""

    footprint: Footprint
    policy: Policy = Policy.AUTO
    pinned: tuple[str, ...] | None = None
    counts: bool = True
    name: str = ""
    # llama.cpp RPC workers that take the offloaded layers (``footprint`` is then what stays here).
    rpc_workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class World:
    now: float
    limits: Mapping[str, int]
    residents: tuple[Resident, ...] = ()
    loading: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # model → bytes reserved
    loading_counts: frozenset[str] = frozenset()  # loads that take a count slot
    waiting: tuple[Want, ...] = ()
    demands: Mapping[str, Demand] = field(default_factory=dict)
    max_models: int = 0  # 0 = no count limit


@dataclass(frozen=True)
class Admit:
    want: int
    instance: str


@dataclass(frozen=True)
class Start:
    model: str
    placement: Placement


@dataclass(frozen=True)
class Stop:
    """Stop an idle instance (``drain``: a busy one, once its requests are done)."""

    instance: str
    reason: str
    drain: bool = False


@dataclass(frozen=True)
class Refuse:
    want: int
    reason: str
    kind: str  # "timeout" | "never_fits" | "blocked"


Effect = Admit | Start | Stop | Refuse


def accounted(world: World) -> dict[str, int]:
    """Bytes held per device: every resident (draining ones until they exit) and every load."""
    used = dict.fromkeys(world.limits, 0)
    for r in world.residents:
        for d, b in r.usage.items():
            used[d] = used.get(d, 0) + b
    for usage in world.loading.values():
        for d, b in usage.items():
            used[d] = used.get(d, 0) + b
    return used


def urgency(w: Want, now: float) -> tuple[float, float, int]:
    """Sort key, most urgent first: priority aged by waiting time, then arrival."""
    return (-(w.priority + max(0.0, now - w.since) / AGE_S), w.since, w.id)


def eviction_cost(r: Resident, now: float) -> float:
    """What stopping ``r`` costs: its reload time, discounted by how long it has been idle."""
    return (r.load_s + 0.1) / (1.0 + max(0.0, now - r.last_used))


def plan(world: World) -> list[Effect]:
    effects: list[Effect] = []
    now = world.now
    pending: list[Want] = []
    for w in world.waiting:
        if now >= w.deadline:
            effects.append(Refuse(w.id, "timed out waiting for the model to load", "timeout"))
        else:
            pending.append(w)

    # 2. Collation: a model with an admissible instance takes its whole queue now.
    open_by_model: dict[str, Resident] = {}
    for r in world.residents:
        if r.admissible and not r.draining:
            best = open_by_model.get(r.model)
            if best is None or r.inflight < best.inflight:
                open_by_model[r.model] = r
    queued: list[Want] = []
    admitted: dict[str, int] = {}
    for w in pending:
        target = open_by_model.get(w.model)
        if target is not None:
            effects.append(Admit(w.id, target.id))
            admitted[target.id] = admitted.get(target.id, 0) + 1
        else:
            queued.append(w)
    if not queued:
        return effects
    if admitted:
        # Requests admitted just now are in flight for the rest of this decision.
        world = replace(
            world,
            residents=tuple(
                replace(r, inflight=r.inflight + admitted[r.id]) if r.id in admitted else r
                for r in world.residents
            ),
        )

    # 3. The rest, model by model, most urgent first.
    order: list[str] = []
    for w in sorted(queued, key=lambda w: urgency(w, now)):
        if w.model not in order:
            order.append(w.model)
    used = accounted(world)
    count = _count_used(world)
    swapping = bool(world.loading) or any(r.draining for r in world.residents)
    wanted = {w.model for w in queued}
    for model in order:
        if model in world.loading:
            continue
        demand = world.demands.get(model)
        if demand is None:
            continue
        free = {d: world.limits[d] - used.get(d, 0) for d in world.limits}
        if place(demand.footprint, world.limits, demand.policy, demand.pinned) is None:
            reason = _never_fits(demand, world.limits)
            effects += [Refuse(w.id, reason, "never_fits") for w in queued if w.model == model]
            continue
        fits = place(demand.footprint, free, demand.policy, demand.pinned)
        count_ok = world.max_models <= 0 or not demand.counts or count < world.max_models
        if fits is not None and count_ok:
            effects.append(Start(model, fits))
            for d, b in fits.device_bytes.items():
                used[d] = used.get(d, 0) + b
            count += 1 if demand.counts else 0
            swapping = True  # what it holds is ours to free later: nobody behind it is blocked for good
            continue
        # 4. No room: the most urgent model that does not fit makes room; the rest wait behind it.
        if not swapping:
            effects += _make_room(world, model, demand, free, count, wanted, queued)
        break
    return effects


def _count_used(world: World) -> int:
    counted = {r.model for r in world.residents if r.counts}
    return sum(1 for r in world.residents if r.counts) + sum(
        1 for m in world.loading_counts if m not in counted
    )


def _make_room(
    world: World,
    model: str,
    demand: Demand,
    free: dict[str, int],
    count: int,
    wanted: set[str],
    queued: list[Want],
) -> list[Effect]:
    now = world.now
    movable = [r for r in world.residents if r.evictable and not r.draining and r.model != model]
    idle = sorted((r for r in movable if r.inflight == 0), key=lambda r: eviction_cost(r, now))
    busy = sorted((r for r in movable if r.inflight > 0), key=lambda r: r.last_used)
    # Idle ones first, those no one waits for before the others; busy ones only if that is not enough.
    tiers = [
        [r for r in idle if r.model not in wanted],
        [r for r in idle if r.model in wanted],
        [r for r in busy if r.model not in wanted],
        [r for r in busy if r.model in wanted],
    ]
    chosen: list[Resident] = []
    for tier in tiers:
        for r in tier:
            chosen.append(r)
            if _fits_without(demand, free, count, world.max_models, chosen):
                return [
                    _stop(r, demand, free) for r in _pruned(demand, free, count, world.max_models, chosen)
                ]
    # Even stopping every instance we may stop leaves too little: the rest is held by instances
    # that are not ours to stop (manual, pinned, embedding), so waiting would only time out.
    need = format_size(smallest_need(demand.footprint, demand.policy, _has_gpu(world)))
    reason = (
        f"'{demand.name or model}' needs {need} but the memory it could use is held by instances "
        "LlamaMan may not stop (manually launched, pinned or embedding); stop one, or allow evicting "
        "manual instances in settings"
    )
    if world.max_models > 0 and count >= world.max_models:
        reason = (
            f"all {world.max_models} model slot(s) (LLAMAMAN_MAX_MODELS) are held by manually launched "
            "instances; stop one, or allow evicting them in settings"
        )
    return [Refuse(w.id, reason, "blocked") for w in queued if w.model == model]


def _has_gpu(world: World) -> bool:
    return any(d != "cpu" for d in world.limits)


def _fits_without(
    demand: Demand, free: Mapping[str, int], count: int, max_models: int, gone: list[Resident]
) -> bool:
    room = dict(free)
    for r in gone:
        for d, b in r.usage.items():
            room[d] = room.get(d, 0) + b
    if max_models > 0 and demand.counts and count - sum(1 for r in gone if r.counts) >= max_models:
        return False
    return place(demand.footprint, room, demand.policy, demand.pinned) is not None


def _pruned(
    demand: Demand, free: Mapping[str, int], count: int, max_models: int, chosen: list[Resident]
) -> list[Resident]:
    """Drop victims the model fits without, most expensive first (the greedy pick may overshoot)."""
    kept = list(chosen)
    for r in sorted(chosen, key=lambda r: (r.inflight == 0, -r.load_s)):
        rest = [x for x in kept if x is not r]
        if _fits_without(demand, free, count, max_models, rest):
            kept = rest
    return kept


def _stop(r: Resident, demand: Demand, free: Mapping[str, int]) -> Stop:
    need = demand.footprint.cpu_only if set(free) == {"cpu"} else demand.footprint.gpu_full
    room = sum(max(v, 0) for v in free.values())
    reason = (
        f"evicted {r.model} to fit {demand.name or '?'} (needs {format_size(need)}, free {format_size(room)})"
    )
    return Stop(r.id, reason, drain=r.inflight > 0)


def _never_fits(demand: Demand, limits: Mapping[str, int]) -> str:
    fp = demand.footprint
    limit = ", ".join(f"{d} {format_size(b)}" for d, b in sorted(limits.items()))
    need = smallest_need(fp, demand.policy, any(d != "cpu" for d in limits))
    return (
        f"model '{demand.name}' needs at least {format_size(need)} with placement '{demand.policy.value}'"
        f" but the memory limit is {limit} (LLAMAMAN_MEMORY_LIMIT / memory_limit); it can never be loaded"
    )
