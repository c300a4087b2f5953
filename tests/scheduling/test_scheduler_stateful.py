"""Randomized event sequences against the scheduler's rules (hypothesis stateful testing).

Invariants after every event: accounted memory never exceeds a device's limit; nothing is stopped
with a request in flight; one load per model however many wait; no request waits past its
deadline; nothing is left waiting while nothing is under way that could serve it.
"""

from __future__ import annotations

import heapq
import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.scheduler import Admit, Demand, Effect, Refuse, Start, Stop
from llamaman.scheduling.scheduler_state import Scheduler

GiB = 1024**3
LIMIT = {"cpu": 10 * GiB}
TIMEOUT = 60.0
SIZES = {"a": 3, "b": 4, "c": 5, "d": 7, "huge": 12}
MODELS = sorted(SIZES)
PRIORITIES = [0, 0, 0, 1, 5]
TICKS = [0.1, 1.0, 5.0, 30.0, 61.0]


def demand(model: str, counts: bool = True) -> Demand:
    size = SIZES[model] * GiB
    return Demand(Footprint(size, size, 0), counts=counts, name=model)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.next_id = 0
        self.sched = Scheduler(LIMIT, timeout=TIMEOUT)

    @initialize(manual=st.sampled_from([0, 0, 1, 2]), max_models=st.sampled_from([0, 0, 1, 2, 3]))
    def setup(self, manual: int, max_models: int) -> None:
        self.sched.max_models = max_models
        if manual:
            # Memory held by a hand-started instance LlamaMan may never stop.
            self.sched.add_manual("manual", "m", {"cpu": manual * GiB}, self.now)

    def apply(self, event: str, effects: list[Effect], before_loads: set[str]) -> None:
        starts = [e.model for e in effects if isinstance(e, Start)]
        assert len(starts) == len(set(starts)), f"{event}: two loads of one model at once"
        for model in starts:
            assert model not in before_loads, f"{event}: {model} started while already loading"
            live = [i for i in self.sched.instances.values() if i.model == model and not i.draining]
            assert not live, f"{event}: {model} started while an instance of it takes requests"
        for e in effects:
            if isinstance(e, Stop) and not e.drain:
                inst = self.sched.instances[e.instance]
                assert not inst.requests, f"{event}: stopped {e.instance} with requests in flight"
            if isinstance(e, Admit):
                assert not self.sched.instances[e.instance].stopping

    def step(self, event: str, run: object) -> None:
        before = set(self.sched.loads)
        effects = run()  # type: ignore[operator]
        self.apply(event, effects, before)

    # ---- events (the hypothesis rules below and the seeded walks both send them) ----------------
    def do_arrive(self, model: str, priority: int) -> None:
        self.next_id += 1
        rid = self.next_id
        self.step(
            "arrive",
            lambda: self.sched.request_arrived(rid, model, demand(model), self.now, priority=priority),
        )

    def do_finish(self, rid: int) -> None:
        self.step("finish", lambda: self.sched.request_finished(rid, self.now))

    def do_cancel(self, rid: int) -> None:
        self.step("cancel", lambda: self.sched.request_cancelled(rid, self.now))

    def do_load(self, model: str, ok: bool) -> None:
        if ok:
            self.step("loaded", lambda: self.sched.load_finished(model, self.now))
        else:
            self.step("load failed", lambda: self.sched.load_failed(model, self.now))

    def do_exit(self, iid: str) -> None:
        self.step("exit", lambda: self.sched.instance_exited(iid, self.now))

    def do_tick(self, dt: float) -> None:
        self.now += dt
        self.step("timer", lambda: self.sched.timer(self.now))

    def cancellable(self) -> list[int]:
        return sorted([*self.sched.admitted, *self.sched.waiting])

    def stopping(self) -> list[str]:
        return sorted(i.id for i in self.sched.instances.values() if i.stopping)

    def check(self) -> None:
        self.memory_within_limits()
        self.nobody_waits_past_the_deadline()
        self.waiting_means_something_is_under_way()
        self.count_limit_holds()

    # ---- hypothesis rules ------------------------------------------------------------------------
    @rule(model=st.sampled_from(MODELS), priority=st.sampled_from(PRIORITIES))
    def arrive(self, model: str, priority: int) -> None:
        self.do_arrive(model, priority)

    @precondition(lambda self: self.sched.admitted)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        self.do_finish(data.draw(st.sampled_from(sorted(self.sched.admitted))))

    @precondition(lambda self: self.sched.admitted or self.sched.waiting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.do_cancel(data.draw(st.sampled_from(self.cancellable())))

    @precondition(lambda self: self.sched.loads)
    @rule(data=st.data(), ok=st.sampled_from([True, True, True, False]))
    def load_done(self, data: st.DataObject, ok: bool) -> None:
        self.do_load(data.draw(st.sampled_from(sorted(self.sched.loads))), ok)

    @precondition(lambda self: any(i.stopping for i in self.sched.instances.values()))
    @rule(data=st.data())
    def exit(self, data: st.DataObject) -> None:
        self.do_exit(data.draw(st.sampled_from(self.stopping())))

    @rule(dt=st.sampled_from(TICKS))
    def tick(self, dt: float) -> None:
        self.do_tick(dt)

    @invariant()
    def memory_within_limits(self) -> None:
        used = self.sched.accounted()
        for d, limit in LIMIT.items():
            # Hand-started instances count too: what LlamaMan starts fits beside them.
            assert used[d] <= limit, f"{d}: {used[d]} > {limit}"

    @invariant()
    def nobody_waits_past_the_deadline(self) -> None:
        late = [w for w in self.sched.waiting.values() if w.deadline <= self.now]
        assert not late

    @invariant()
    def waiting_means_something_is_under_way(self) -> None:
        if not self.sched.waiting:
            return
        busy = any(i.requests or i.draining for i in self.sched.instances.values())
        assert self.sched.loads or busy, f"stuck: {self.sched.waiting} with nothing under way"

    @invariant()
    def count_limit_holds(self) -> None:
        cap = self.sched.max_models
        if cap:
            models = {i.model for i in self.sched.instances.values() if i.evictable} | set(self.sched.loads)
            assert len(models) <= cap + 1  # one may be draining while its successor loads


SchedulerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_random_event_sequences_keep_the_invariants = SchedulerMachine.TestCase


def walk(seed: int, steps: int) -> None:
    """One seeded sequence of events through the machine, invariants checked after each."""
    rng = random.Random(seed)
    m = SchedulerMachine()
    m.setup(rng.choice([0, 0, 1, 2]), rng.choice([0, 0, 1, 2, 3]))
    for _ in range(steps):
        # Arrivals and time as often as the others together, so queues both build and drain.
        moves = ["arrive", "tick"] * 2
        moves += ["finish"] * 3 if m.sched.admitted else []
        moves += ["cancel"] if m.cancellable() else []
        moves += ["load"] * 3 if m.sched.loads else []
        moves += ["exit"] * 2 if m.stopping() else []
        move = rng.choice(moves)
        if move == "arrive":
            m.do_arrive(rng.choice(MODELS), rng.choice(PRIORITIES))
        elif move == "tick":
            m.do_tick(rng.choice(TICKS))
        elif move == "finish":
            m.do_finish(rng.choice(sorted(m.sched.admitted)))
        elif move == "cancel":
            m.do_cancel(rng.choice(m.cancellable()))
        elif move == "load":
            m.do_load(rng.choice(sorted(m.sched.loads)), rng.random() > 0.1)
        else:
            m.do_exit(rng.choice(m.stopping()))
        m.check()


def test_thousands_of_seeded_event_sequences_keep_the_invariants() -> None:
    # Hypothesis shrinks a failure to its smallest case; these cover more ground per second.
    for seed in range(2000):
        walk(seed, steps=30)


# ---- collation against first-come-first-served -------------------------------------------------


def simulate(trace: list[tuple[float, str]], load_s: float, serve_s: float) -> tuple[int, int]:
    """Replay arrivals with one model's room; returns (loads, requests served)."""
    sched = Scheduler({"cpu": 5 * GiB}, timeout=10_000)
    queue: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, arg: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (t, seq, kind, arg))

    for i, (t, model) in enumerate(trace):
        push(t, "arrive", (i, model))
    loads = served = 0
    while queue:
        now, _, kind, arg = heapq.heappop(queue)
        if kind == "arrive":
            rid, model = arg  # type: ignore[misc]
            effects = sched.request_arrived(rid, model, demand(model), now)
        elif kind == "loaded":
            effects = sched.load_finished(str(arg), now)
        elif kind == "done":
            served += 1
            effects = sched.request_finished(int(arg), now)  # type: ignore[call-overload]
        else:
            effects = sched.instance_exited(str(arg), now)
        for e in effects:
            if isinstance(e, Start):
                loads += 1
                push(now + load_s, "loaded", e.model)
            elif isinstance(e, Admit):
                push(now + serve_s, "done", e.want)
            elif isinstance(e, Stop) and not e.drain:
                push(now + 0.01, "exit", e.instance)
            elif isinstance(e, Refuse):
                raise AssertionError(f"refused {e}")
    return loads, served


@given(
    models=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30),
    gaps=st.lists(st.sampled_from([0.0, 0.1, 0.5, 2.0]), min_size=30, max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_collation_never_swaps_more_than_first_come_first_served(
    models: list[str], gaps: list[float]
) -> None:
    t, trace = 0.0, []
    for model, gap in zip(models, gaps, strict=False):
        t += gap
        trace.append((t, model))
    loads, served = simulate(trace, load_s=1.0, serve_s=0.3)
    fifo_swaps = 1 + sum(1 for x, y in itertools.pairwise(models) if x != y)
    assert served == len(trace)
    assert loads <= fifo_swaps
