"""Pacing of relayed streams: when many stream at once, each passes on what arrived on a shared beat.

Relaying costs CPU for every block passed on (a socket read, a task step, a send, a socket write),
and llama-server streams one token per block. With a few streams that cost is nothing. With dozens
on a machine whose cores llama-server keeps busy, the work for each block preempts one of
llama-server's compute threads, and the others wait for it at the end of their step: the relay then
costs llama-server far more than its own CPU time.

So while at least ``min_streams`` streams are relayed, a stream that has passed on its first two
blocks stops reading after each block until the next beat (one timer for all of them), and then
passes on in one block whatever arrived meanwhile. The first blocks (the answer's start) are never
held, and each later token waits at most one beat.

The beat is ``interval`` long at ``min_streams`` streams and grows in step with their number, up to
``longest``: the blocks relayed per second, and so the relay's wake-ups, then stay as they were at
``min_streams`` however many stream, until the beat reaches ``longest``.

Settings (environment): ``LLAMAMAN_STREAM_PACE_MS`` (the beat at the stream count below, default 20;
0 turns pacing off), ``LLAMAMAN_STREAM_PACE_MIN`` (streams at once before pacing starts, default 8)
and ``LLAMAMAN_STREAM_PACE_MAX_MS`` (the longest beat, default 50).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value >= 0 else default


class Pacer:
    """The beat streams wait on while enough of them run; see the module's description."""

    def __init__(self, interval: float, min_streams: int, longest: float = 0.0) -> None:
        self.interval = interval
        self.min_streams = max(1, min_streams)
        self.longest = max(interval, longest)
        self.streams = 0  # streams being relayed now
        self._waiting: list[asyncio.Future[None]] = []
        self._calls: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def engaged(self) -> bool:
        return self.interval > 0 and self.streams >= self.min_streams

    def beat(self) -> asyncio.Future[None]:
        """A future done at the next beat. Each waiter has its own, so one that is cancelled (its
        client left) leaves the others be; one timer sounds the beat for all of them."""
        loop = self._on(asyncio.get_running_loop())
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        return waiter

    def at_beat(self, call: Callable[[], None]) -> None:
        """Call ``call`` at the next beat (a stream read from the connection's callbacks, which has
        no task to wait)."""
        self._on(asyncio.get_running_loop())
        self._calls.append(call)

    def _on(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        if self._loop is not loop:  # a new event loop (tests run several): the old timer is gone
            self._waiting, self._calls, self._timer, self._loop = [], [], None, loop
        if self._timer is None:
            self._timer = loop.call_later(self.length(), self._sound)
        return loop

    def length(self) -> float:
        """The beat for the streams relayed now (see the module's description)."""
        return min(self.longest, self.interval * max(1.0, self.streams / self.min_streams))

    def _sound(self) -> None:
        waiting, self._waiting, self._timer = self._waiting, [], None
        calls, self._calls = self._calls, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)
        for call in calls:
            call()


PACER = Pacer(
    _env_float("LLAMAMAN_STREAM_PACE_MS", 20.0) / 1000,
    int(_env_float("LLAMAMAN_STREAM_PACE_MIN", 8)),
    _env_float("LLAMAMAN_STREAM_PACE_MAX_MS", 50.0) / 1000,
)
