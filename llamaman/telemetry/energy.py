"""Charge each finished request its share of the GPUs' energy.

Over the request's lifetime, the energy the GPUs used (the sampler's integral) is split evenly among
the requests running at each moment: alone it gets everything, beside three others a quarter. The
split is exact once every request that overlapped it has finished, so a request is settled when the
proxy has nothing in flight, or after ``settle_s`` at the latest (requests still running then are
left out of its split).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

EnergyBetween = Callable[[float, float], "float | None"]


@dataclass(slots=True)
class Span:
    """A finished request: ``key`` names it to the caller (its log row id), times are monotonic."""

    key: int
    start: float
    end: float


class EnergyAttributor:
    def __init__(
        self,
        energy_between: EnergyBetween,
        latest_sample: Callable[[], float | None],
        *,
        settle_s: float = 60.0,
        history_s: float = 900.0,
    ) -> None:
        self.energy_between = energy_between
        self.latest_sample = latest_sample
        self.settle_s = settle_s
        self.history_s = history_s
        self.pending: list[Span] = []
        self.recent: deque[Span] = deque()  # every span of the last history_s, pending or settled

    def add(self, span: Span) -> None:
        self.pending.append(span)
        self.recent.append(span)

    def discard_pending(self) -> None:
        self.pending.clear()

    def settle(self, now: float, idle: bool) -> dict[int, float]:
        """Joules for each pending span that can be settled now (key → J)."""
        while self.recent and self.recent[0].end < now - self.history_s:
            self.recent.popleft()
        latest = self.latest_sample()
        if latest is None or not self.pending:
            return {}
        done: dict[int, float] = {}
        keep: list[Span] = []
        for span in self.pending:
            # The energy timeline must reach past the end of the request before it can be charged.
            if span.end > latest or not (idle or now - span.end >= self.settle_s):
                keep.append(span)
                continue
            joules = self.share(span)
            if joules is not None:
                done[span.key] = joules
        self.pending = keep
        return done

    def share(self, span: Span) -> float | None:
        others = [o for o in self.recent if o is not span and o.start < span.end and o.end > span.start]
        cuts = sorted(
            {span.start, span.end}
            | {t for o in others for t in (o.start, o.end) if span.start < t < span.end}
        )
        total = 0.0
        for a, b in pairwise(cuts):
            joules = self.energy_between(a, b)
            if joules is None:
                return None
            mid = (a + b) / 2
            running = 1 + sum(1 for o in others if o.start <= mid < o.end)
            total += joules / running
        return total
