"""A request's hold on an instance, and the router's bookkeeping around it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llamaman.core.errors import NotFound, Unavailable
from llamaman.instances.supervisor import ManagedInstance
from llamaman.library.catalog import ModelEntry
from llamaman.scheduling.gate import Gate
from llamaman.scheduling.scheduler import Demand, Want


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class ModelUnavailable(Unavailable):
    """The model exists but cannot be served now (failed to load, no slot); worth retrying later."""


@dataclass
class Slot:
    """Router bookkeeping for one instance."""

    inflight: int = 0  # leases held, including those still queued at the gate
    running: int = 0  # leases past the gate
    draining: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    keep_alive_until: float | None = None  # monotonic; None = the idle timeout rules
    unload_after: bool = False

    def __post_init__(self) -> None:
        self.idle.set()

    # The counters change only here, so "idle" is set exactly when no lease is left.
    def enter(self) -> None:
        """A lease is wanted: it counts from now, queued at the gate or not."""
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> bool:
        """A lease is gone; True when none is left."""
        self.inflight = max(0, self.inflight - 1)
        if self.inflight == 0:
            self.idle.set()
        return self.inflight == 0

    def move_to(self, other: Slot) -> None:
        """A queued lease goes to another replica's slot."""
        self.leave()
        other.enter()

    def begin(self) -> None:
        """A lease passed the gate: its request runs."""
        self.running += 1

    def end(self) -> None:
        self.running -= 1


_waiter_ids = itertools.count(1)


@dataclass
class Waiter:
    """A request waiting for its model to load or for room to load it."""

    key: str
    entry: ModelEntry
    future: asyncio.Future[ManagedInstance]
    since: float = field(default_factory=time.monotonic)
    demand: Demand | None = None
    priority: int = 0
    key_name: str | None = None  # the API key's name, for listings
    id: int = field(default_factory=lambda: next(_waiter_ids))

    def want(self, timeout: float) -> Want:
        return Want(self.id, self.key, self.since, self.since + timeout, self.priority)


class Lease:
    """A request's hold on an instance (and on a slot of its gate)."""

    def __init__(
        self,
        instance: ManagedInstance,
        gate: Gate,
        load_ns: int,
        *,
        release: Callable[[], None],
        keep_alive: Callable[[float | None], None],
    ) -> None:
        # The router hands over what a lease may do to its bookkeeping, so a lease never needs it.
        self._on_release = release
        self._on_keep_alive = keep_alive
        self.instance = instance
        self.gate = gate
        self.load_duration_ns = load_ns
        self._released = False

    # What a request sent elsewhere has and a local one has not: a path prefix before the route, more
    # headers, another node's name (see cluster/forward.py, whose leases read the same).
    prefix = ""
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    node: str | None = None

    @property
    def base_url(self) -> str:
        return self.instance.base_url

    @property
    def auth_header(self) -> bytes | None:
        return self.instance.proc.auth_header

    @property
    def connections(self) -> int | None:
        return self.instance.connections

    async def fail_over(self, reason: str) -> bool:
        """Move to the next place that may serve the request; a local instance has none."""
        return False

    def content_for_place(self, content: bytes | None) -> bytes | None:
        return content  # the body was made for this instance

    @property
    def model_name(self) -> str:
        return self.instance.record.model_name

    def keep_alive(self, seconds: float | None) -> None:
        self._on_keep_alive(seconds)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._on_release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
