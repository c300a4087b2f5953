"""The scheduler as a state machine: events in, effects out, the world kept from what it was told.

``plan`` (``scheduling/scheduler.py``) decides; this keeps the bookkeeping a decision needs (who
waits, who is admitted where, what loads, what drains) from events, with the clock passed in. The
router keeps the same facts in its instances and slots and calls ``plan`` directly; this class lets
tests replay any sequence of events against the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
)


@dataclass
class _Instance:
    id: str
    model: str
    usage: Mapping[str, int]
    last_used: float
    load_s: float
    evictable: bool = True
    counts: bool = True
    requests: set[int] = field(default_factory=set)
    draining: bool = False
    stopping: bool = False  # a Stop was issued; it holds memory until it exits


@dataclass
class _Load:
    model: str
    usage: Mapping[str, int]
    started: float
    counts: bool


class Scheduler:
    def __init__(self, limits: Mapping[str, int], *, max_models: int = 0, timeout: float = 300.0) -> None:
        self.limits = dict(limits)
        self.max_models = max_models
        self.timeout = timeout
        self.instances: dict[str, _Instance] = {}
        self.loads: dict[str, _Load] = {}
        self.waiting: dict[int, Want] = {}
        self.demands: dict[str, Demand] = {}
        self.admitted: dict[int, str] = {}  # request → instance
        self._next_instance = 0

    # ---- events ------------------------------------------------------------------------------
    def request_arrived(
        self, rid: int, model: str, demand: Demand, now: float, *, priority: int = 0
    ) -> list[Effect]:
        self.demands[model] = demand
        self.waiting[rid] = Want(rid, model, now, now + self.timeout, priority)
        return self._run(now)

    def request_finished(self, rid: int, now: float) -> list[Effect]:
        inst = self.instances.get(self.admitted.pop(rid, ""))
        effects: list[Effect] = []
        if inst is not None:
            inst.requests.discard(rid)
            inst.last_used = now
            if inst.draining and not inst.requests and not inst.stopping:
                inst.stopping = True
                effects.append(Stop(inst.id, "drained", drain=False))
        return effects + self._run(now)

    def request_cancelled(self, rid: int, now: float) -> list[Effect]:
        """The client went away: out of the queue, or its admitted request ends."""
        if rid in self.waiting:
            del self.waiting[rid]
            return self._run(now)
        return self.request_finished(rid, now)

    def load_finished(
        self, model: str, now: float, *, measured: Mapping[str, int] | None = None
    ) -> list[Effect]:
        load = self.loads.pop(model)
        self._next_instance += 1
        iid = f"{model}#{self._next_instance}"
        self.instances[iid] = _Instance(
            iid, model, dict(measured or load.usage), now, now - load.started, counts=load.counts
        )
        return self._run(now)

    def load_failed(self, model: str, now: float) -> list[Effect]:
        self.loads.pop(model, None)
        effects: list[Effect] = []
        for w in list(self.waiting.values()):
            if w.model == model:
                del self.waiting[w.id]
                effects.append(Refuse(w.id, f"could not start '{model}'", "failed"))
        return effects + self._run(now)

    def instance_exited(self, iid: str, now: float) -> list[Effect]:
        inst = self.instances.pop(iid, None)
        if inst is not None:
            for rid in inst.requests:
                self.admitted.pop(rid, None)
        return self._run(now)

    def memory_changed(self, limits: Mapping[str, int], now: float) -> list[Effect]:
        self.limits = dict(limits)
        return self._run(now)

    def timer(self, now: float) -> list[Effect]:
        return self._run(now)

    def add_manual(self, iid: str, model: str, usage: Mapping[str, int], now: float) -> None:
        """An instance started by hand: it holds memory, takes requests and is never evicted."""
        self.instances[iid] = _Instance(iid, model, dict(usage), now, 1.0, evictable=False)

    # ---- views -------------------------------------------------------------------------------
    def world(self, now: float) -> World:
        residents = tuple(
            Resident(
                i.id,
                i.model,
                i.usage,
                len(i.requests),
                i.last_used,
                i.load_s,
                i.evictable,
                admissible=not i.draining,
                draining=i.draining,
                counts=i.counts,
            )
            for i in self.instances.values()
        )
        return World(
            now=now,
            limits=self.limits,
            residents=residents,
            loading={m: load.usage for m, load in self.loads.items()},
            loading_counts=frozenset(m for m, load in self.loads.items() if load.counts),
            waiting=tuple(self.waiting.values()),
            demands=self.demands,
            max_models=self.max_models,
        )

    def accounted(self) -> dict[str, int]:
        used = dict.fromkeys(self.limits, 0)
        for usage in [i.usage for i in self.instances.values()] + [x.usage for x in self.loads.values()]:
            for d, b in usage.items():
                used[d] = used.get(d, 0) + b
        return used

    # ---- effects -----------------------------------------------------------------------------
    def _run(self, now: float) -> list[Effect]:
        effects = plan(self.world(now))
        for e in effects:
            if isinstance(e, Admit):
                want = self.waiting.pop(e.want)
                self.admitted[want.id] = e.instance
                self.instances[e.instance].requests.add(want.id)
            elif isinstance(e, Start):
                demand = self.demands[e.model]
                self.loads[e.model] = _Load(e.model, dict(e.placement.device_bytes), now, demand.counts)
            elif isinstance(e, Stop):
                inst = self.instances[e.instance]
                inst.draining = True
                inst.stopping = not e.drain
            elif isinstance(e, Refuse):
                self.waiting.pop(e.want, None)
        return effects
